from __future__ import annotations

import os
import socket
import threading

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

from node.p2p.host import build_host, key_pair_of, open_host, parse_listen_addr
from protocol.identity import Identity, peer_id_of_ed25519

from .p2p_driver import LOOPBACK, open_test_node, wait_for


@pytest.mark.parametrize("n", [1, 2, 77, 12345])
def test_the_libp2p_peer_id_equals_the_identity_peer_id(n: int) -> None:
    ident = Identity.from_int(n)
    host = build_host(ident, [parse_listen_addr(LOOPBACK)])
    assert host.get_id().to_base58() == ident.peer_id
    # An outside oracle: the library's own key serialisation gives the same raw public key.
    assert peer_id_of_ed25519(key_pair_of(ident).public_key.to_bytes()) == ident.peer_id


async def test_a_plaintext_only_client_is_refused_and_a_noise_client_is_accepted() -> None:
    async with open_test_node(1) as node:
        target = PeerInfo(node.p2p.host.get_id(), node.p2p.host.get_addrs())
        ident = Identity.from_int(9)
        kp = key_pair_of(ident)
        plaintext = new_host(
            key_pair=kp,
            sec_opt={TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(kp)},
            listen_addrs=[multiaddr.Multiaddr(LOOPBACK)],
        )
        async with open_host(plaintext, [multiaddr.Multiaddr(LOOPBACK)]):
            with pytest.raises(Exception):  # noqa: B017 - the library raises its own dial error types
                with trio.fail_after(15):
                    await plaintext.connect(target)
            assert plaintext.get_id() not in node.p2p.host.get_connected_peers()
        noise = build_host(Identity.from_int(10), [parse_listen_addr(LOOPBACK)])
        async with open_host(noise, [parse_listen_addr(LOOPBACK)]):
            await noise.connect(target)
            await wait_for(lambda: noise.get_id() in node.p2p.host.get_connected_peers(), 5)


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def _two_node_life(api: bool) -> list[int]:
    ports = []
    async with open_test_node(1, api="127.0.0.1:0" if api else None) as a:
        async with open_test_node(2, bootstrap=(a.p2p.addrs()[0],)) as b:
            await wait_for(lambda: len(b.p2p.view.adverts(b.p2p.clock.now_ms())) == 1, 10)
            await b.p2p.ping(a.p2p.host.get_id())
            ports = [
                int(x.value_for_protocol("tcp")) for x in (*a.p2p.host.get_addrs(), *b.p2p.host.get_addrs())
            ]
            if a.api_url:
                ports.append(int(a.api_url.rsplit(":", 1)[1]))
    return ports


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
async def test_a_node_leaves_no_thread_socket_or_listener_behind() -> None:
    await _two_node_life(api=True)  # the first life loads modules and lazily-created globals
    threads, fds = threading.active_count(), _fds()
    for _ in range(2):
        ports = await _two_node_life(api=True)
    await trio.sleep(0.2)
    assert threading.active_count() == threads, [t.name for t in threading.enumerate()]
    assert _fds() - fds == set()
    assert all(_port_free(p) for p in ports)


async def test_a_node_with_mdns_stops_its_zeroconf_threads_on_exit() -> None:
    # Discovery itself needs multicast beyond loopback, so only the clean shutdown is checked here.
    threads = threading.active_count()
    async with open_test_node(1, mdns=True) as node:
        assert node.p2p.host.mDNS is not None
        await trio.sleep(0.5)
    assert threading.active_count() == threads, [t.name for t in threading.enumerate()]


async def test_a_node_listening_on_every_interface_advertises_dialable_addresses() -> None:
    async with open_test_node(1, listen=("/ip4/0.0.0.0/tcp/0",)) as node:
        addrs = node.p2p.addrs()
    assert addrs and not any("/0.0.0.0/" in a for a in addrs)
    assert all(a.endswith("/p2p/" + node.peer_id) for a in addrs)
