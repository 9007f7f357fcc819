"""Real libp2p hosts on the simulated network, for the simulator's own tests and tools.

The node's wiring function builds production hosts; it accepts a transport, so the simulator hands it a
`SimTransport`. This module builds the same kind of host (Noise only, Yamux, one connection per peer)
without depending on the node package, so the network can be tested on its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import trio
from libp2p import create_yamux_muxer_option, new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import X25519PrivateKey
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from protocol.identity import Identity

from .net import SimNetwork
from .transport import SimTransport

LISTEN_PORT = 4001


def key_pair_of(identity: Identity) -> KeyPair:
    """The libp2p Ed25519 key pair of a Steppe identity (same seed, so the same PeerID)."""
    return create_new_key_pair(identity.seed)


def noise_key_of(identity: Identity) -> X25519PrivateKey:
    """A static Noise key derived from the identity seed, so simulated runs repeat."""
    return X25519PrivateKey.from_bytes(hashlib.sha256(b"steppe-sim-noise:" + identity.seed).digest())


def build_host(identity: Identity, transport: SimTransport) -> IHost:
    """A host like a production node's, over ``transport``: Noise only, Yamux, one connection per peer."""
    key_pair = key_pair_of(identity)
    return new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=noise_key_of(identity))},
        muxer_opt=create_yamux_muxer_option(),
        connection_config=ConnectionConfig(max_connections_per_peer=1),
        transports=[transport],
    )


@dataclass
class SimHost:
    """A running host on the simulated network."""

    identity: Identity
    ip: str
    host: IHost
    transport: SimTransport

    @property
    def addr(self) -> Multiaddr:
        return Multiaddr(f"/ip4/{self.ip}/tcp/{LISTEN_PORT}")

    @property
    def info(self) -> PeerInfo:
        return PeerInfo(self.host.get_id(), [self.addr])


@contextlib.asynccontextmanager
async def open_sim_host(net: SimNetwork, identity: Identity, ip: str | None = None) -> AsyncIterator[SimHost]:
    """Add a node to ``net`` (or reuse a stopped or crashed node's ``ip``), run a host listening on
    ``/ip4/<ip>/tcp/4001``; on exit stop it and close what the process would leave behind (libp2p
    leaves listeners open; the OS closes the sockets of an exiting process, so peers read EOF)."""
    if ip is None:
        ip = net.add_node()
    net.restart(ip)
    transport = SimTransport(net, ip)
    host = build_host(identity, transport)
    sim_host = SimHost(identity, ip, host, transport)
    async with host.run([sim_host.addr]):
        try:
            yield sim_host
        finally:
            net.stop(ip)  # first: synchronous, so it happens even when the host is being cancelled
            for listener in list(host.get_network().listeners.values()):
                await listener.close()


class SimNode:
    """A host that can crash and come back: `run` under a nursery, `crash` kills it mid-flight.

    After `crash`, ``nursery.start(node.run)`` again restarts it with the same identity and address.
    """

    def __init__(self, net: SimNetwork, identity: Identity, ip: str | None = None) -> None:
        self.net = net
        self.identity = identity
        self.ip = ip if ip is not None else net.add_node()
        self.sim_host: SimHost | None = None
        self._scope: trio.CancelScope | None = None

    @property
    def host(self) -> IHost:
        if self.sim_host is None:
            raise RuntimeError("node is not running")
        return self.sim_host.host

    @property
    def info(self) -> PeerInfo:
        return PeerInfo(ID.from_pubkey(key_pair_of(self.identity).public_key), [self.addr])

    @property
    def addr(self) -> Multiaddr:
        return Multiaddr(f"/ip4/{self.ip}/tcp/{LISTEN_PORT}")

    async def run(self, *, task_status: trio.TaskStatus[SimHost] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as self._scope:
            async with open_sim_host(self.net, self.identity, self.ip) as sim_host:
                self.sim_host = sim_host
                task_status.started(sim_host)
                try:
                    await trio.sleep_forever()
                finally:
                    self.sim_host = None

    def crash(self) -> None:
        """Kill the node now: the network drops its listeners and connections, its tasks are cancelled."""
        self.net.crash(self.ip)
        if self._scope is not None:
            self._scope.cancel()


@contextlib.asynccontextmanager
async def open_gossipsub(host: IHost, *, heartbeat: int = 1) -> AsyncIterator[Pubsub]:
    """GossipSub ``/meshsub/1.1.0`` (D=6, D_lo=4, D_hi=12, 1 s heartbeat) on ``host``, running until exit."""
    router = GossipSub(
        [PROTOCOL_ID_V11], degree=6, degree_low=4, degree_high=12, heartbeat_interval=heartbeat
    )
    pubsub = Pubsub(host, router)
    async with background_trio_service(pubsub), background_trio_service(router):
        await pubsub.wait_until_ready()
        try:
            yield pubsub
        finally:
            pubsub.seen_messages.stop()  # a thread outside `sim.clock.virtual_time`


async def connect_random(hosts: Sequence[SimHost], k: int, rng: random.Random) -> int:
    """Each host dials ``k`` others drawn from ``rng`` (all at once); returns how many dials succeeded."""
    done = 0

    async def dial(src: SimHost, dst: SimHost) -> None:
        nonlocal done
        with contextlib.suppress(Exception):  # a refused or failed dial is a measured outcome
            await src.host.connect(dst.info)
            done += 1

    async with trio.open_nursery() as nursery:
        for i, src in enumerate(hosts):
            for j in rng.sample([j for j in range(len(hosts)) if j != i], min(k, len(hosts) - 1)):
                nursery.start_soon(dial, src, hosts[j])
    return done
