"""The simulator's counters wrap a node's gossip hooks without replacing what the node itself does there."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from protocol.identity import Identity
from sim.runner import SimNode, Simulation
from sim.scenario import parse_scenario

from .test_runs import tiny


async def test_instrumenting_a_node_keeps_its_own_advert_callback(tmp_path: Path) -> None:
    """The node learns peers' addresses in ``on_advert``; counting deliveries must not switch that off."""
    sim = Simulation(parse_scenario(tiny()), 1, tmp_path)
    learnt: list = []

    async def push_msg(forwarder, msg) -> None:  # pragma: no cover - not called here
        pass

    gossip = SimpleNamespace(
        on_advert=learnt.append,
        pubsub=SimpleNamespace(push_msg=push_msg, my_id=b"me", _is_msg_seen=lambda msg: False),
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
