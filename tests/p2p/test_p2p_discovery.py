from __future__ import annotations

import pytest
from libp2p.kad_dht.kad_dht import _encode_key
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr

from node.p2p.clock import WallClock
from node.p2p.discovery import AdvertRecordValidator, Discovery, advert_value_key, blocks_of, provider_key
from node.p2p.gossip import TOPIC
from protocol.advert import AdvertBody, encode_advert, make_advert
from protocol.identity import Identity

from .p2p_driver import MODEL, model_body, open_swarm, open_test_node, view_ids, wait_for


@pytest.mark.parametrize(
    ("start", "end", "blocks"),
    [(0, 8, [0]), (0, 9, [0, 1]), (4, 12, [0, 1]), (8, 16, [1]), (3, 3, []), (15, 16, [1])],
)
def test_a_layer_range_maps_to_every_block_it_touches(start: int, end: int, blocks: list[int]) -> None:
    assert list(blocks_of(start, end)) == blocks


def test_provider_keys_differ_per_model_and_block_and_are_sha256_multihashes() -> None:
    keys = {provider_key(MODEL.sha256, b) for b in range(4)} | {provider_key(bytes(32), 0)}
    assert len(keys) == 5 and all(k.startswith("1220") and len(k) == 68 for k in keys)


def test_the_dht_advert_validator_accepts_only_a_valid_advert_under_its_own_key() -> None:
    clock = WallClock()
    alice, bob = Identity.from_int(1), Identity.from_int(2)
    validator = AdvertRecordValidator(clock)
    old = encode_advert(make_advert(alice, AdvertBody(addrs=()), seq=1, now_ms=clock.now_ms()))
    new = encode_advert(make_advert(alice, AdvertBody(addrs=()), seq=2, now_ms=clock.now_ms()))
    validator.validate(advert_value_key(alice.peer_id), new)
    assert validator.select(advert_value_key(alice.peer_id), [old, b"junk", new]) == 2
    with pytest.raises(ValueError):
        validator.validate(advert_value_key(bob.peer_id), new)
    with pytest.raises(ValueError):
        validator.validate(advert_value_key(alice.peer_id), new[:-1] + bytes([new[-1] ^ 1]))


async def test_a_newcomer_without_gossip_finds_a_blocks_providers_through_the_dht_alone() -> None:
    bodies = {1: model_body(0, 8), 2: model_body(4, 16), 3: model_body(8, 16)}
    async with open_swarm(4, bodies=bodies) as nodes:
        await wait_for(lambda: all(len(view_ids(n)) == 3 for n in nodes), 15)
        async with open_test_node(9, bootstrap=(nodes[0].p2p.addrs()[0],), gossip=False) as late:
            await wait_for(lambda: late.p2p.discovery.routing_table_size() >= 1, 10)
            for block, expected in (
                (0, {nodes[1].peer_id, nodes[2].peer_id}),
                (1, {nodes[2].peer_id, nodes[3].peer_id}),
            ):
                found = []
                for _ in range(20):
                    found = await late.p2p.find_providers(MODEL.sha256, block)
                    if {a.peer_id for a in found} == expected:
                        break
                ids = [a.peer_id for a in found]
                assert set(ids) == expected and len(ids) == len(set(ids))
            assert view_ids(late) == {nodes[1].peer_id, nodes[2].peer_id, nodes[3].peer_id}
            assert TOPIC not in late.p2p.gossip.pubsub.topic_ids  # it never joined the gossip topic


async def test_a_provider_finds_the_other_providers_of_its_own_block() -> None:
    # The library answers from the local provider store whenever it holds a record. In a large swarm a
    # provider's store often holds only its own record for its block: it must still find the others.
    bodies = {1: model_body(0, 8), 2: model_body(0, 8), 3: model_body(4, 16)}
    async with open_swarm(4, bodies=bodies) as nodes:
        await wait_for(lambda: all(len(view_ids(n)) == 3 for n in nodes), 15)
        key = _encode_key(provider_key(MODEL.sha256, 0))
        stores = [n.p2p.discovery.dht.provider_store for n in nodes]
        await wait_for(lambda: all(len(s.get_providers(key)) == 3 for s in stores), 15)
        own = stores[1].providers[key]
        for pid in [p for p in own if p != nodes[1].peer_id]:
            del own[pid]  # as if it were far from the key: only its own record is local
        assert [str(p.peer_id) for p in stores[1].get_providers(key)] == [nodes[1].peer_id]
        found = await nodes[1].p2p.find_providers(MODEL.sha256, 0)
        assert {a.peer_id for a in found} == {nodes[2].peer_id, nodes[3].peer_id}


async def test_the_routing_table_is_filled_from_connected_peers() -> None:
    async with open_swarm(3) as nodes:
        await wait_for(lambda: all(n.p2p.discovery.routing_table_size() >= 2 for n in nodes), 15)
        assert isinstance(nodes[0].p2p.discovery, Discovery)


async def test_a_node_with_a_few_cached_records_of_departed_providers_still_finds_the_live_ones() -> None:
    # A node caches the providers a lookup found, and the library answers from that cache alone. Under
    # churn the cache can hold just providers that have left: with fewer than a few, the network is asked.
    bodies = {1: model_body(0, 8), 2: model_body(0, 8)}
    async with open_swarm(3, bodies=bodies) as nodes:
        key = _encode_key(provider_key(MODEL.sha256, 0))
        store = nodes[0].p2p.discovery.dht.provider_store
        await wait_for(
            lambda: all(len(n.p2p.discovery.dht.provider_store.get_providers(key)) == 2 for n in nodes), 15
        )
        store.providers[key].clear()
        gone = ID.from_base58(Identity.from_int(77).peer_id)
        store.add_provider(key, PeerInfo(gone, [Multiaddr("/ip4/127.0.0.1/tcp/9")]))
        assert [p.peer_id for p in store.get_providers(key)] == [gone]
        found = {a.peer_id for a in await nodes[0].p2p.find_providers(MODEL.sha256, 0)}
        assert {nodes[1].peer_id, nodes[2].peer_id} <= found


def test_the_library_waits_at_most_our_query_timeout_for_one_dht_peer() -> None:
    # Its lookups go in lock-step rounds: one silent peer costs the whole round this long.
    from libp2p.kad_dht import kad_dht, peer_routing, provider_store

    from node.p2p.discovery import DHT_QUERY_TIMEOUT_S

    for module in (kad_dht, peer_routing, provider_store):
        assert module.QUERY_TIMEOUT == DHT_QUERY_TIMEOUT_S < 10


async def test_a_restarted_peer_is_dialable_again_once_its_new_advert_arrives() -> None:
    # g fails to dial c while c is down: the swarm then refuses to dial c for 60 s ("negative cache").
    # c comes back (new port) and its fresh advert reaches g through the hub: that lifts the refusal.
    async with open_test_node(1) as hub:
        boot = (hub.p2p.addrs()[0],)
        async with open_test_node(2, bootstrap=boot) as g:
            c_id = Identity.from_int(3).peer_id
            async with open_test_node(3, bootstrap=boot) as c:
                await wait_for(lambda: c_id in view_ids(g), 15)
                old = PeerInfo(ID.from_base58(c_id), c.p2p.host.get_addrs())
            swarm = g.p2p.host.get_network()
            await wait_for(lambda: ID.from_base58(c_id) not in g.p2p.host.get_connected_peers(), 10)
            with pytest.raises(Exception):  # noqa: B017 - the library raises its own dial error types
                await g.p2p.host.connect(old)
            assert swarm._negative_peer_cache.is_blocked(c_id)
            # c left with a short-lived withdrawal advert; once it lapses g holds no advert of c.
            await wait_for(lambda: g.p2p.view.get(c_id, g.p2p.clock.now_ms()) is None, 10)
            async with open_test_node(3, bootstrap=boot):
                await wait_for(lambda: g.p2p.view.get(c_id, g.p2p.clock.now_ms()) is not None, 15)
                assert not swarm._negative_peer_cache.is_blocked(c_id)
