"""`node.p2p.speedups` replacements that must behave exactly as the library code they replace: checked
against the library's own functions on drawn inputs (no network needed)."""

from __future__ import annotations

import random
import types
from types import SimpleNamespace
from typing import Any

import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.host import observed_addr_manager as observed
from libp2p.peer.id import ID
from libp2p.pubsub import floodsub
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from multiaddr import Multiaddr

from node.p2p import speedups

PEERS = [ID(bytes([0, 36, 8, 1]) + bytes([i]) * 32) for i in range(12)]
TOPIC = "t"
subsets = st.sets(st.integers(0, len(PEERS) - 1))


@st.composite
def router_states(draw: Any) -> dict[str, Any]:
    return {
        "peers": draw(subsets),
        "topic_peers": draw(st.none() | subsets),
        "identified": draw(
            st.dictionaries(st.integers(0, len(PEERS) - 1), st.sampled_from(["gs", "gs", "fs"]))
        ),
        "direct": draw(subsets),
        "mesh": draw(st.none() | subsets),
        "fanout": draw(st.none() | subsets),
        "unwanted": draw(subsets),
        "scored": draw(st.booleans()),
        "no_gossip": draw(subsets),
        "graylisted": draw(subsets),
        "no_publish": draw(subsets),
        "forwarder": draw(st.integers(0, len(PEERS) - 1)),
        "origin": draw(st.integers(0, len(PEERS) - 1)),
        "seed": draw(st.integers(0, 2**16)),
    }


def _router(state: dict[str, Any], sent: list[ID]) -> GossipSub:
    router = GossipSub([PROTOCOL_ID_V11], degree=3, degree_low=2, degree_high=4)
    peer_topics = {} if state["topic_peers"] is None else {TOPIC: {PEERS[i] for i in state["topic_peers"]}}
    router.pubsub = SimpleNamespace(  # type: ignore[assignment]
        peers={PEERS[i]: None for i in sorted(state["peers"])},
        peer_topics=peer_topics,
        get_message_id=lambda m: m.from_id + m.seqno,
    )
    router.peer_protocol = {
        PEERS[i]: floodsub.PROTOCOL_ID if p == "fs" else PROTOCOL_ID_V11
        for i, p in state["identified"].items()
    }
    router.direct_peers = {PEERS[i] for i in state["direct"]}
    if state["mesh"] is not None:
        router.mesh[TOPIC] = {PEERS[i] for i in state["mesh"]}
    if state["fanout"] is not None:
        router.fanout[TOPIC] = {PEERS[i] for i in state["fanout"]}
    msg_id = PEERS[state["origin"]].to_bytes() + b"\x01"
    for i in state["unwanted"]:
        router.dont_send_message_ids[PEERS[i]] = {msg_id}
    if state["scored"]:  # gates by drawn sets, standing in for the score thresholds
        router.scorer = SimpleNamespace(  # type: ignore[assignment]
            allow_gossip=lambda p, topics: PEERS.index(p) not in state["no_gossip"],
            is_graylisted=lambda p, topics: PEERS.index(p) in state["graylisted"],
            allow_publish=lambda p, topics: PEERS.index(p) not in state["no_publish"],
        )
    router.send_rpc = lambda peer, rpc, priority=False: sent.append(peer)  # type: ignore[method-assign]
    return router


def _publish_with(library: bool, state: dict[str, Any]) -> tuple[Any, ...]:
    sent: list[ID] = []
    router = _router(state, sent)
    publish = speedups._publish
    if library:
        publish = speedups._original_publish
        router._get_peers_to_send = types.MethodType(speedups._original_get_peers_to_send, router)  # type: ignore[method-assign]
    msg = rpc_pb2.Message(
        from_id=PEERS[state["origin"]].to_bytes(), seqno=b"\x01", data=b"x", topicIDs=[TOPIC]
    )
    random.seed(state["seed"])  # the fanout's choice of peers is random
    trio.run(publish, router, PEERS[state["forwarder"]], msg)
    pending = {peer: len(queue) for peer, queue in router._pending_messages.items()}  # (each peer's own)
    return sent, pending, {t: sorted(p, key=ID.to_bytes) for t, p in router.fanout.items()}, dict(router.mesh)


@settings(max_examples=300, deadline=None)
@given(router_states())
def test_forwarding_a_message_does_what_the_library_does(state: dict[str, Any]) -> None:
    """The same peers sent to, in the same order; the same messages queued for peers not identified or
    not subscribed yet; the same fanout. Floodsub peers among the identified exercise the fallback."""
    assert _publish_with(False, state) == _publish_with(True, state)
    # and the patched class method is the replacement
    assert GossipSub.publish is speedups._publish


ADDRS = [
    "/ip4/10.0.0.1/tcp/4001",
    "/ip4/0.0.0.0/tcp/4001",
    "/ip4/127.0.0.1/tcp/4001",
    "/ip4/10.1.2.3/tcp/5000/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
    "/ip6/::1/tcp/4001",
    "/ip6/64:ff9b::1/tcp/4001",
    "/ip4/10.0.0.2/udp/4001/quic-v1",
    "/ip4/10.0.0.3/tcp/4002/ws",
    "/dns4/example.org/tcp/443",
]


def test_address_answers_are_the_library_answers_and_stay_bounded() -> None:
    for name in ("extract_thin_waist", "is_valid_observation"):
        cached = getattr(observed, name)
        assert cached.steppe_cached
        for text in ADDRS * 2:
            assert cached(Multiaddr(text)) == cached.__wrapped__(Multiaddr(text)), (name, text)
    match = observed._match_local_thin_waist
    local = [Multiaddr(a) for a in ADDRS[:2] + ADDRS[6:]]
    for text in ADDRS:
        tw = observed.extract_thin_waist.__wrapped__(Multiaddr(text))
        if tw is not None:
            assert match(tw[0], local) == match.__wrapped__(tw[0], local)
            assert match(tw[0], local[1:]) == match.__wrapped__(tw[0], local[1:])
    extract = observed.extract_thin_waist
    for port in range(speedups.ADDRESS_CACHE_SIZE + 10):
        extract(Multiaddr(f"/ip4/10.9.0.1/tcp/{port}"))
    assert extract(Multiaddr("/ip4/10.9.0.1/tcp/7")) == extract.__wrapped__(Multiaddr("/ip4/10.9.0.1/tcp/7"))


def test_peer_id_equality_is_unchanged() -> None:
    a, same, other = ID(b"\x00\x01abc"), ID(b"\x00\x01abc"), ID(b"\x00\x01abd")
    assert a == same and not a != same and a != other
    assert a == b"\x00\x01abc" and a == a.to_base58() and a != "nope"
    assert a.__eq__(3) is NotImplemented
    assert {a: 1}[same] == 1
