"""The simulator's counters wrap a node's gossip hooks without replacing what the node itself does there."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from node.p2p.gossip import TOPIC
from protocol.identity import Identity
from sim.runner import SimNode, Simulation
from sim.scenario import parse_scenario

from .test_runs import tiny


async def test_instrumenting_a_node_keeps_its_own_advert_callback(tmp_path: Path) -> None:
    """The node learns peers' addresses in ``on_advert``; counting deliveries must not switch that off."""
    sim = Simulation(parse_scenario(tiny()), 1, tmp_path)
    learnt: list = []

    gossip = SimpleNamespace(
        on_advert=learnt.append,
        pubsub=SimpleNamespace(_is_subscribed_to_msg=lambda msg: True, _is_msg_seen=lambda msg: False),
    )
    node = SimpleNamespace(p2p=SimpleNamespace(gossip=gossip, _sign=lambda ttl_ms: None))
    sn = SimNode(index=0, ip="10.0.0.1", identity=Identity.generate(), role="relay", node=node)
    sim.nodes.append(sn)
    sim._instrument(sn)
    assert gossip.on_advert is not learnt.append  # the counter is in place...

    advert = SimpleNamespace(peer_id="someone", seq=3, body=SimpleNamespace(software="steppe"))
    gossip.on_advert(advert)
    assert learnt == [advert]  # ...and the node's own callback still ran
    assert sim.c.max_seq_seen[0] == {"someone": 3}


async def test_copies_are_counted_where_the_read_loop_sees_them(tmp_path: Path) -> None:
    """Each received copy is counted once, as a duplicate when already seen, before the node's own test."""
    sim = Simulation(parse_scenario(tiny()), 1, tmp_path)
    seen: set = set()
    asked: list = []

    def wanted(msg) -> bool:
        asked.append(msg.id)
        return msg.id not in seen

    pubsub = SimpleNamespace(_is_subscribed_to_msg=wanted, _is_msg_seen=lambda msg: msg.id in seen)
    gossip = SimpleNamespace(on_advert=None, pubsub=pubsub)
    node = SimpleNamespace(p2p=SimpleNamespace(gossip=gossip, _sign=lambda ttl_ms: None))
    sn = SimNode(index=0, ip="10.0.0.1", identity=Identity.generate(), role="relay", node=node)
    sim.nodes.append(sn)
    sim._instrument(sn)
    first = SimpleNamespace(id=1, topicIDs=[TOPIC])
    assert pubsub._is_subscribed_to_msg(first)
    seen.add(1)
    assert not pubsub._is_subscribed_to_msg(first)
    pubsub._is_subscribed_to_msg(SimpleNamespace(id=2, topicIDs=["other"]))  # not our topic: not counted
    assert asked == [1, 1, 2]
    assert sim.c.received_copies[0] == 2 and sim.c.duplicate_copies[0] == 1
