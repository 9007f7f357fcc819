"""The libp2p host, built our way: Noise only, Yamux only, one connection per peer, our identity.

py-libp2p's API moves fast, so everything the rest of the node needs from the library goes through this
module and its siblings; nothing else in ``node/`` imports ``libp2p`` directly except the parts here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetwork, INotifee, IRawConnection, ITransport
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.transport.tcp.tcp import TCP

from node.p2p import speedups as _speedups  # noqa: F401  (library fixes, installed on import)
from protocol.errors import ConfigError
from protocol.identity import Identity

__all__ = [
    "ID",
    "IHost",
    "PeerInfo",
    "build_host",
    "dialable_addrs",
    "key_pair_of",
    "open_host",
    "parse_peer_addr",
]


def key_pair_of(identity: Identity) -> KeyPair:
    """The libp2p Ed25519 key pair of ``identity``: same seed, hence the same PeerID."""
    return create_new_key_pair(identity.seed)


def parse_listen_addr(text: str) -> multiaddr.Multiaddr:
    """Raises `ConfigError` for anything but ``/ip4|ip6/…/tcp/PORT``."""
    try:
        addr = multiaddr.Multiaddr(text)
        names = [p.name for p in addr.protocols()]
    except Exception as exc:  # multiaddr raises several unrelated types
        raise ConfigError(f"listen address {text!r} is not a multiaddr: {exc}") from exc
    if len(names) != 2 or names[0] not in ("ip4", "ip6") or names[1] != "tcp":
        raise ConfigError(f"listen address {text!r} must look like /ip4/127.0.0.1/tcp/4001")
    return addr


def parse_peer_addr(text: str) -> PeerInfo:
    """A multiaddr ending in ``/p2p/<PeerID>``. Raises `ConfigError`."""
    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(text))
    except Exception as exc:  # multiaddr / peer id parsing raise several types
        raise ConfigError(
            f"peer address {text!r} must be a multiaddr ending in /p2p/<PeerID>: {exc}"
        ) from exc


def dialable_addrs(host: IHost) -> list[str]:
    """The host's listen addresses with ``/p2p/<PeerID>``; a wildcard (0.0.0.0, ::) becomes one address per
    interface, loopback last, since peers cannot dial a wildcard."""
    from libp2p.utils.address_validation import expand_wildcard_address

    suffix = f"/p2p/{host.get_id()}"
    out: list[str] = []
    for addr in host.get_addrs():
        base = str(addr).split("/p2p/")[0]
        if base.startswith(("/ip4/0.0.0.0/", "/ip6/::/")):
            expanded = [str(a) for a in expand_wildcard_address(multiaddr.Multiaddr(base))]
            expanded.sort(key=lambda a: a.startswith(("/ip4/127.", "/ip6/::1/")))
        else:
            expanded = [base]
        out.extend(a + suffix for a in expanded if a + suffix not in out)
    return out


def build_host(
    identity: Identity,
    listen: Sequence[multiaddr.Multiaddr],
    *,
    transport: ITransport | None = None,
    mdns: bool = False,
) -> IHost:
    """A host that speaks only Noise and Yamux. ``transport`` defaults to TCP (the simulator passes its own)."""
    key_pair = key_pair_of(identity)
    # Only Noise: the library's default also offers /plaintext/2.0.0, TLS and secio.
    security = {
        TProtocol(NOISE_PROTOCOL_ID): NoiseTransport(
            key_pair, noise_privkey=create_x25519_key_pair().private_key
        )
    }
    return new_host(
        key_pair=key_pair,
        sec_opt=security,
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        listen_addrs=list(listen),
        transports=[transport if transport is not None else TCP()],
        enable_mDNS=mdns,
        # With more than one connection per peer the library waits 250 ms per dial for a second one.
        connection_config=ConnectionConfig(
            max_connections_per_peer=1,
            # The library's auto-connector dials toward (low + high) / 2 open connections, and does so
            # again after every disconnect: with 16/192 that was 104, so each crash in a churning swarm
            # set off a storm of Noise handshakes. A Steppe node needs a dozen or so (its own dialler keeps
            # `target_peers`); above `high_watermark` the library prunes the least useful connections.
            min_connections=4,
            low_watermark=8,
            high_watermark=24,
            max_connections=256,
        ),
    )


class _ConnectionTracker(INotifee):
    """Remembers every raw connection so shutdown can close any the library forgets.

    A connection dialled moments before shutdown is sometimes left open (in CLOSE-WAIT) by
    ``Swarm.close()``; closing the raw connection ourselves is idempotent.
    """

    def __init__(self) -> None:
        self.raw: list[IRawConnection] = []

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        obj, depth = getattr(conn, "muxed_conn", None), 0
        # muxer -> secure session -> (noise read-writer ->) raw connection; names differ per layer.
        while obj is not None and depth < 6:
            if isinstance(obj, IRawConnection):
                self.raw.append(obj)
                return
            obj = next(
                (getattr(obj, n) for n in ("secured_conn", "conn", "read_writer") if hasattr(obj, n)), None
            )
            depth += 1

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        pass

    async def opened_stream(self, network: INetwork, stream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr) -> None:
        pass


@asynccontextmanager
async def open_host(host: IHost, listen: Sequence[multiaddr.Multiaddr]) -> AsyncIterator[IHost]:
    """Listen on ``listen`` for the duration of the block; every listener and connection is closed after."""
    tracker = _ConnectionTracker()
    host.get_network().register_notifee(tracker)
    try:
        async with host.run(listen_addrs=list(listen)):
            yield host
    finally:
        # host.run() leaves listeners open when it exits; close the swarm ourselves.
        with trio.move_on_after(5, shield=True):
            # host.run() stops mDNS (zeroconf threads) only when its block ends without an exception;
            # a cancelled node skips that, so stop it here (idempotent in the library).
            stop_services = getattr(host, "_shutdown_background_services", None)
            if stop_services is not None:
                await stop_services()
            await host.get_network().close()
            for raw in tracker.raw:
                try:
                    await raw.close()
                except Exception:  # already closed by the library: that is the normal case
                    pass
