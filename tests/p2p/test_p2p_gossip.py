"""Adverts on the gossip topic: honest ones spread, bad ones are refused and counted, flooders are cut off."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

import msgspec
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from node.p2p.clock import WallClock
from node.p2p.gossip import TOPIC, AdvertGossip
from node.p2p.host import build_host, open_host, parse_listen_addr
from protocol import codec
from protocol.advert import AdvertBody, SwarmView, encode_advert, make_advert
from protocol.identity import Identity

from .p2p_driver import LOOPBACK, model_body, open_swarm, view_ids, wait_for


class Attacker:
    """A real libp2p peer on the topic with no validator: it publishes whatever bytes it is given."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.listen = [parse_listen_addr(LOOPBACK)]
        self.host = build_host(identity, self.listen)
        self.router = GossipSub(
            [PROTOCOL_ID_V11], degree=6, degree_low=4, degree_high=12, heartbeat_interval=1
        )
        self.pubsub = Pubsub(self.host, self.router)

    async def publish(self, data: bytes) -> None:
        # An attacker ignores PRUNE: every connected topic peer stays in its mesh and gets the message.
        self.router.mesh.setdefault(TOPIC, set()).update(self.pubsub.peer_topics.get(TOPIC, set()))
        await self.pubsub.publish(TOPIC, data)


@asynccontextmanager
async def open_attacker(n: int, *victims) -> AsyncIterator[Attacker]:
    attacker = Attacker(Identity.from_int(n))
    async with open_host(attacker.host, attacker.listen):
        try:
            async with background_trio_service(attacker.pubsub), background_trio_service(attacker.router):
                await attacker.pubsub.wait_until_ready()
                await attacker.pubsub.subscribe(TOPIC)
                for victim in victims:
                    await attacker.host.connect(
                        PeerInfo(victim.p2p.host.get_id(), victim.p2p.host.get_addrs())
                    )
                await wait_for(
                    lambda: all(attacker.host.get_id() in v.p2p.gossip.topic_peers() for v in victims), 10
                )
                yield attacker
        finally:
            attacker.pubsub.seen_messages.stop()


def _now() -> int:
    from node.p2p.clock import WallClock

    return WallClock().now_ms()


async def test_forged_expired_oversized_replayed_and_garbage_adverts_are_rejected_and_counted() -> None:
    async with open_swarm(2) as (alice, bob):
        await wait_for(lambda: view_ids(alice) == {bob.peer_id}, 10)
        old_copy = encode_advert(alice.p2p.view.get(bob.peer_id, _now()))
        bob.p2p.set_advert_body(model_body(0, 8))  # bob republishes: the copy above is now a replay
        await wait_for(lambda: alice.p2p.view.get(bob.peer_id, _now()).body.model is not None, 10)
        before = dict(alice.p2p.view.rejected)

        # Two attackers, three bad messages each: enough to be pruned, not yet banned, so all six arrive.
        async with open_attacker(66, alice) as mallory, open_attacker(68, alice) as trudy:
            ident = mallory.identity
            good = make_advert(ident, AdvertBody(addrs=()), seq=_now(), now_ms=_now())
            forged_sig = msgspec.structs.replace(good, sig=bytes(64))
            in_bobs_name = msgspec.structs.replace(good, peer_id=bob.peer_id)
            expired = make_advert(ident, AdvertBody(addrs=()), seq=1, now_ms=_now() - 300_000)
            # Expired a second ago: late, as an honest relay or a stall of ours can make it; nobody's fault.
            late = make_advert(ident, AdvertBody(addrs=()), seq=2, now_ms=_now() - 6000, ttl_ms=5000)
            oversized = codec.HEADER.pack(9000, 1, 1) + bytes(9000)
            garbage = os.urandom(300)
            for sender, data in (
                (mallory, encode_advert(forged_sig)),
                (mallory, encode_advert(in_bobs_name)),
                (mallory, encode_advert(expired)),
                (mallory, encode_advert(late)),
                (trudy, oversized),
                (trudy, old_copy),
                (trudy, garbage),
            ):
                await sender.publish(data)
                await trio.sleep(0.2)  # in order
            after = lambda k: alice.p2p.view.rejected[k] - before.get(k, 0)  # noqa: E731
            await wait_for(
                lambda: (after("invalid"), after("malformed"), after("stale"), after("late")) == (3, 2, 1, 1),
                10,
            )
            # Forged, long-expired, oversized and garbage count against their sender; a replay of an authentic
            # advert or one that expired on its way is refused without blame (an honest relay can cross a
            # newer copy, or be slow).
            assert alice.p2p.gossip.rejected_from[str(mallory.host.get_id())] == 3
            assert alice.p2p.gossip.rejected_from[str(trudy.host.get_id())] == 2
            assert alice.p2p.view.get(bob.peer_id, _now()).body.model is not None  # the newer copy stays
            # A valid advert from a scored-down sender is still judged on its merits.
            await trudy.publish(
                encode_advert(make_advert(trudy.identity, AdvertBody(addrs=()), seq=_now(), now_ms=_now()))
            )
            await wait_for(lambda: trudy.identity.peer_id in view_ids(alice), 10)
        assert view_ids(alice) >= {bob.peer_id}


async def test_a_garbage_flooder_is_scored_down_pruned_and_cut_off_while_honest_adverts_flow() -> None:
    async with open_swarm(3) as (alice, bob, carol):
        await wait_for(lambda: view_ids(alice) == {bob.peer_id, carol.peer_id}, 10)
        async with open_attacker(67, alice) as mallory:
            mid = mallory.host.get_id()
            await wait_for(lambda: mid in alice.p2p.gossip.mesh_peers(), 10)
            async with trio.open_nursery() as nursery:

                async def flood() -> None:
                    while True:
                        await mallory.publish(os.urandom(200))
                        await trio.sleep(0.125)

                nursery.start_soon(flood)
                await wait_for(lambda: alice.p2p.gossip.pruned[str(mid)] >= 1, 15)
                assert alice.p2p.gossip.score(mid) < 0
                await wait_for(lambda: mid not in alice.p2p.host.get_connected_peers(), 15)
                # Honest adverts keep flowing during the flood.
                carol.p2p.set_advert_body(model_body(8, 16))
                await wait_for(lambda: alice.p2p.view.get(carol.peer_id, _now()).body.layer_start == 8, 10)
                nursery.cancel_scope.cancel()
        assert mid not in alice.p2p.gossip.mesh_peers()
        assert alice.p2p.view.rejected["malformed"] >= 5


@pytest.fixture(scope="module")
def lone_gossip():
    """An AdvertGossip on an unstarted host: enough to drive its validator directly."""
    host = build_host(Identity.from_int(70), [parse_listen_addr(LOOPBACK)])
    gossip = AdvertGossip(host, SwarmView(), WallClock())
    yield gossip
    gossip.pubsub.seen_messages.stop()


@settings(max_examples=200, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=600),
        st.builds(lambda b: codec.HEADER.pack(len(b), 1, 1) + b, st.binary(max_size=400)),
    )
)
def test_the_topic_validator_answers_false_for_any_bytes_and_never_raises(lone_gossip, data: bytes) -> None:
    msg = SimpleNamespace(data=data)
    assert lone_gossip._validate(ID.from_base58(Identity.from_int(72).peer_id), msg) is False


def test_a_poor_mesh_health_rating_keeps_the_one_second_heartbeat(lone_gossip) -> None:
    # py-libp2p's "adaptive gossip" stretches the heartbeat to 30-60 s when it rates the mesh below 0.7,
    # which routine churn does: meshes then go unrepaired for a minute. We switch it off.
    router = lone_gossip.router
    router.network_health_score = 0.3
    router._adapt_gossip_parameters()
    assert router.heartbeat_interval == 1


def test_a_busy_honest_forwarder_is_not_rate_limited(lone_gossip) -> None:
    # The library's per-forwarder limit runs after local delivery and only stops the onward forward (and
    # penalises the forwarder): at a few hundred nodes it cut honest propagation. It is off.
    router = lone_gossip.router
    peer = ID.from_base58(Identity.from_int(73).peer_id)
    msg = SimpleNamespace(topicIDs=[TOPIC])
    assert all(router._check_spam_protection(peer, msg) for _ in range(1000))


def _sender_record_check(monkeypatch, sender_n: int, receiver_n: int):  # type: ignore[no-untyped-def]
    """Two hosts, an RPC carrying the sender's record, pubsub's record check, and a list counting the
    signature verifications it makes."""
    import libp2p.pubsub.pubsub as pubsub_module
    import libp2p.pubsub.utils as utils
    from libp2p.peer.peerstore import env_to_send_in_RPC
    from libp2p.pubsub.pb import rpc_pb2

    sender = build_host(Identity.from_int(sender_n), [parse_listen_addr(LOOPBACK)])
    receiver = build_host(Identity.from_int(receiver_n), [parse_listen_addr(LOOPBACK)])
    calls: list[int] = []
    real = utils.consume_envelope
    monkeypatch.setattr(utils, "consume_envelope", lambda *a: calls.append(1) or real(*a))
    rpc = rpc_pb2.RPC(senderRecord=env_to_send_in_RPC(sender)[0])
    return pubsub_module.maybe_consume_signed_record, rpc, sender, receiver, calls


def test_a_sender_record_is_verified_once_and_a_changed_one_again(monkeypatch) -> None:
    from libp2p.pubsub.pb import rpc_pb2

    consume, rpc, sender, receiver, calls = _sender_record_check(monkeypatch, 74, 75)
    assert consume(rpc, receiver, sender.get_id()) and consume(rpc, receiver, sender.get_id())
    assert len(calls) == 1
    # Another peer presenting the same record is checked (and refused: the record names the sender).
    assert not consume(rpc, receiver, ID.from_base58(Identity.from_int(76).peer_id))
    record = bytes(rpc.senderRecord)
    tampered = rpc_pb2.RPC(
        senderRecord=record[:-1] + bytes([record[-1] ^ 1])
    )  # (setting 0 did nothing 1 in 256)
    assert not consume(tampered, receiver, sender.get_id())
    assert len(calls) == 3


def test_forgetting_a_peer_whose_peerstore_entry_expired_clears_it_without_raising(monkeypatch) -> None:
    """The gossip guard forgets a banned peer's addresses. py-libp2p's ``clear_addrs`` raised for a peer
    whose entry had outlived its TTL and held a signed record, which ended the guard and its node."""
    import libp2p.peer.peerdata as peerdata
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.envelope import seal_record
    from libp2p.peer.peer_record import PeerRecord
    from libp2p.peer.peerstore import PeerStore, PeerStoreError
    from multiaddr import Multiaddr

    from node.p2p.gossip import forget_addrs

    keys = create_new_key_pair(b"\x07" * 32)
    peer = ID.from_pubkey(keys.public_key)
    record = PeerRecord(peer, [Multiaddr("/ip4/10.0.0.7/tcp/4001")])
    store = PeerStore()
    assert store.consume_peer_record(seal_record(record, keys.private_key), ttl=30)
    assert store.addrs(peer) and store.get_peer_record(peer) is not None
    later = peerdata.time.time() + 60
    monkeypatch.setattr(peerdata.time, "time", lambda: later)  # the entry's TTL has passed
    with pytest.raises(PeerStoreError):  # the library's own call, as the guard made it
        PeerStore.clear_addrs(store, peer)
    store = PeerStore()
    monkeypatch.undo()
    assert store.consume_peer_record(seal_record(record, keys.private_key), ttl=30)
    monkeypatch.setattr(peerdata.time, "time", lambda: later)
    forget_addrs(store, peer)
    assert store.get_peer_record(peer) is None and not store.peer_data_map[peer].get_addrs()


async def test_a_verified_sender_record_expires_on_trios_clock(monkeypatch, autojump_clock) -> None:
    """The reuse window of a verified sender record runs on trio's clock: on the wall clock, a simulated
    run re-verified records (and refreshed the peerstore) at moments set by how fast the machine was, so
    two runs of one seed differed."""
    from node.p2p.gossip import SENDER_RECORD_REUSE_S

    consume, rpc, sender, receiver, calls = _sender_record_check(monkeypatch, 77, 78)
    assert consume(rpc, receiver, sender.get_id())
    await trio.sleep(SENDER_RECORD_REUSE_S / 2)
    assert consume(rpc, receiver, sender.get_id()) and len(calls) == 1
    await trio.sleep(SENDER_RECORD_REUSE_S)
    assert consume(rpc, receiver, sender.get_id()) and len(calls) == 2
