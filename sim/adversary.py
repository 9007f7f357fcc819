"""Adversaries: real nodes (same wiring as honest ones) that misbehave on the advert topic or in serving.

- **forger**: republishes other peers' adverts with a tampered body (signature no longer matches) or
  re-signed with its own key under the victim's PeerID; every forged body says ``software = "forged…"``,
  so an honest node that ever accepts one is counted.
- **flooder**: publishes random bytes on the advert topic at ``flood_per_s``.
- **replayer**: keeps every authentic advert it has seen and republishes old ones (older seq than the
  peer's current advert, or from before a peer's withdrawal); an honest node accepting an advert older
  than one it already accepted from that peer is counted as a replay that got in.
- **eclipse**: sybils that all bootstrap to one gateway, dial it, relay nothing and accept nothing.
- Wrong activations (``lie = true`` providers) and free-riders (gateways with ``stop_paying_after``) are
  configured in the scenario's node groups: the node code itself implements them.

The counters go to `Collector.adversary`; `outcomes` adds the end-of-run view (bans, eclipse coverage).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import trio

from node.p2p.gossip import TOPIC
from protocol.advert import SignedAdvert, encode_advert, make_advert

if TYPE_CHECKING:
    from .runner import SimNode, Simulation


def start(sim: Simulation, sn: SimNode, nursery: trio.Nursery) -> None:
    """Start ``sn``'s misbehaviour (if any) in ``nursery`` (the node's own, cancelled with it)."""
    adv = sim.sc.adversaries
    if sn.role == "forger" and adv.forge_per_s > 0:
        nursery.start_soon(_forge, sim, sn, 1.0 / adv.forge_per_s)
    elif sn.role == "flooder" and adv.flood_per_s > 0:
        nursery.start_soon(_flood, sim, sn, 1.0 / adv.flood_per_s)
    elif sn.role == "replayer" and adv.replay_per_s > 0:
        nursery.start_soon(_replay, sim, sn, 1.0 / adv.replay_per_s)
    elif sn.role == "eclipse":
        _go_dark(sn)


async def _publish(sn: SimNode, data: bytes) -> bool:
    node = sn.node
    assert node is not None
    try:
        await node.p2p.gossip.pubsub.publish(TOPIC, data)
    except Exception:  # the library raises assorted errors with no peers; an attacker shrugs
        return False
    return True


def _others(sim: Simulation, sn: SimNode) -> list[SignedAdvert]:
    node = sn.node
    assert node is not None
    adverts = node.p2p.view.adverts(node.p2p.clock.now_ms())
    return sorted((a for a in adverts if a.peer_id != sn.identity.peer_id), key=lambda a: a.peer_id)


async def _forge(sim: Simulation, sn: SimNode, interval: float) -> None:
    await trio.sleep_until(sim.sc.warmup_s)
    k = 0
    while True:
        await trio.sleep(interval)
        victims = _others(sim, sn)
        if not victims:
            continue
        victim = victims[sim.rng.randrange(len(victims))]
        body = msgspec.structs.replace(victim.body, software=f"forged/{k}", price_wei_per_token_layer=1)
        if k % 2 == 0:
            # Same signature, other body: the victim's key does not sign this.
            forged = msgspec.structs.replace(victim, body=body, seq=victim.seq + 1)
        else:
            # Signed, but by the forger's key, under the victim's PeerID.
            own = make_advert(sn.identity, body, seq=victim.seq + 1, now_ms=sn.node.p2p.clock.now_ms())
            forged = msgspec.structs.replace(own, peer_id=victim.peer_id)
        k += 1
        if await _publish(sn, encode_advert(forged)):
            sim.c.adversary["forged_adverts_sent"] += 1


async def _flood(sim: Simulation, sn: SimNode, interval: float) -> None:
    await trio.sleep_until(sim.sc.warmup_s)
    while True:
        await trio.sleep(interval)
        garbage = sim.rng.randbytes(32 + sim.rng.randrange(480))
        if await _publish(sn, garbage):
            sim.c.adversary["garbage_messages_sent"] += 1


async def _replay(sim: Simulation, sn: SimNode, interval: float) -> None:
    archive: dict[tuple[str, int], SignedAdvert] = {}
    while True:
        await trio.sleep(min(interval, 1.0))
        for a in _others(sim, sn):
            archive.setdefault((a.peer_id, a.seq), a)
        if trio.current_time() < sim.sc.warmup_s:
            continue
        node = sn.node
        assert node is not None
        now = node.p2p.clock.now_ms()
        current = {a.peer_id: a.seq for a in _others(sim, sn)}
        stale = [
            a
            for key, a in sorted(archive.items())
            if a.expires_at > now and a.seq < current.get(a.peer_id, 1 << 62)
        ]
        if not stale:
            continue
        old = stale[sim.rng.randrange(len(stale))]
        if await _publish(sn, encode_advert(old)):
            sim.c.adversary["replayed_adverts_sent"] += 1
        await trio.sleep(max(0.0, interval - 1.0))


def _go_dark(sn: SimNode) -> None:
    """Accept (and so forward) nothing but our own messages: the target hears nothing through us."""
    node = sn.node
    assert node is not None
    own = node.p2p.gossip.pubsub.my_id
    node.p2p.gossip.pubsub.set_topic_validator(TOPIC, lambda forwarder, _msg: forwarder == own, False)


def outcomes(sim: Simulation) -> None:
    """End-of-run adversary figures: who got banned, how the eclipse target's view compares."""
    c = sim.c
    for role in ("forger", "flooder", "replayer", "eclipse"):
        n = sum(1 for s in sim.nodes if s.role == role)
        if n:
            c.adversary[f"{role}_nodes"] = n
    liars = [s for s in sim.nodes if s.role == "provider" and not s.honest]
    if liars:
        c.adversary["liar_nodes"] = len(liars)
        c.adversary["liar_tokens_served"] = sum(s.tokens_served for s in liars)
        c.adversary["liars_caught_by_spot_checks"] = sum(
            g.liars_caught - g.honest_accused for g in c.generations
        )
        c.adversary["honest_providers_accused"] = sum(g.honest_accused for g in c.generations)
        c.adversary["wrong_generations_returned"] = sum(1 for g in c.generations if g.ok and not g.correct)
    riders = [s for s in sim.nodes if s.free_rider]
    if riders:
        c.adversary["free_rider_nodes"] = len(riders)
        c.adversary["free_rider_generations_completed"] = sum(
            1 for g in c.generations if g.role == "free_rider" and g.ok
        )
        c.adversary["payment_refusals"] = sum(s.refused.get("payment", 0) for s in sim.nodes)
    for key in ("forged_adverts_accepted", "replayed_adverts_accepted"):
        c.adversary.setdefault(key, 0)
    if sim.sc.adversaries.eclipse_attackers:
        target = sim.eclipse_target()
        mine = [key for key, p in c.published.items() if target.index in p.population]
        got = sum(1 for key in mine if target.index in c.delivered.get(key, {}))
        should = len(mine)
        c.adversary["eclipse_target_adverts_received"] = got
        c.adversary["eclipse_target_adverts_expected"] = should
