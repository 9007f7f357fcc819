"""Many real hosts on the simulated network: GossipSub delivers, Kad-DHT finds, and a seed replays a run."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import threading

import pytest
import trio
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.tools.anyio_service import background_trio_service

from protocol.identity import Identity
from sim.bench_net import run_gossip
from sim.clock import simulation
from sim.host import SimHost, open_sim_host
from sim.net import LinkSpec, SimNetwork


def test_gossipsub_delivers_every_message_to_all_sixteen_hosts() -> None:
    threads = threading.active_count()
    result = run_gossip(16, seed=2, seconds=5)
    assert threading.active_count() == threads  # no seen-cache sweeper threads were started
    assert result.published == 5
    assert result.delivery == 1.0
    assert 0.03 <= min(result.latencies)  # nothing beats the 50 - 20 ms link floor
    assert max(result.latencies) < 1.0  # a few hops of <= 70 ms each


def test_the_same_seed_replays_the_same_event_trace_and_another_seed_does_not() -> None:
    lossy = LinkSpec(latency=0.05, jitter=0.02, loss=0.02)
    first = run_gossip(8, seed=3, seconds=3, link=lossy)
    second = run_gossip(8, seed=3, seconds=3, link=lossy)
    other = run_gossip(8, seed=4, seconds=3, link=lossy)
    assert first.trace_digest == second.trace_digest
    assert first.latencies == second.latencies
    assert first.bytes_sent == second.bytes_sent
    assert other.trace_digest != first.trace_digest


async def dht_scenario(clock: trio.testing.MockClock, seed: int) -> SimNetwork:
    """12 DHT servers on a sparse graph; one provides a key and another stores a value; a late joiner
    that stored nothing and knows one peer must find both across the network."""
    n = 12
    with simulation(clock, seed=seed) as rng:
        net = SimNetwork(seed=seed, default_link=LinkSpec(latency=0.03, jitter=0.01))
        async with contextlib.AsyncExitStack() as stack:
            hosts: list[SimHost] = []
            dhts: list[KadDHT] = []
            for i in range(n + 1):
                hosts.append(await stack.enter_async_context(open_sim_host(net, Identity.from_int(i))))
                dhts.append(KadDHT(hosts[-1].host, DHTMode.SERVER))
                await stack.enter_async_context(background_trio_service(dhts[-1]))
            # Everyone knows host 0 and two random others, not the whole swarm.
            for i in range(1, n):
                for j in {0, *rng.sample(range(1, n), 2)} - {i}:
                    await hosts[i].host.connect(hosts[j].info)
                    await dhts[i].add_peer(hosts[j].host.get_id())
                    await dhts[j].add_peer(hosts[i].host.get_id())

            key = "1220" + hashlib.sha256(b"model block 7").hexdigest()
            assert await dhts[n - 1].provide(key)
            await dhts[2].put_value("/v/steppe", b"hello")
            assert dhts[2].value_store.get(b"/v/steppe") is not None

            late, late_dht = hosts[n], dhts[n]
            await late.host.connect(hosts[0].info)
            await late_dht.add_peer(hosts[0].host.get_id())
            assert late_dht.value_store.get(b"/v/steppe") is None
            providers = await late_dht.find_providers(key)
            assert {p.peer_id for p in providers} == {hosts[n - 1].host.get_id()}
            assert await late_dht.get_value("/v/steppe") == b"hello"
    return net


async def test_kad_dht_providers_and_values_are_found_across_twelve_hosts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    await dht_scenario(autojump_clock, seed=5)


def test_a_dht_run_replays_the_same_event_trace_under_the_same_seed() -> None:
    def digest(seed: int) -> str:
        clock = trio.testing.MockClock(autojump_threshold=0)
        return trio.run(dht_scenario, clock, seed, clock=clock).trace_digest()

    assert digest(5) == digest(5)


@pytest.mark.slow
def test_sixty_hosts_gossip_every_message_to_everyone() -> None:
    result = run_gossip(60, seed=1, seconds=20)
    print(
        f"60 nodes: {result.virtual_s:.1f} virtual s in {result.wall_s:.1f} wall s, ratio {result.ratio:.2f}"
    )
    assert result.delivery >= 0.99


def test_a_run_repeats_in_another_process_with_another_hash_seed() -> None:
    # Set iteration order of str/bytes keys changes with PYTHONHASHSEED; the trace must not.
    code = "from sim.bench_net import run_gossip; print(run_gossip(6, seed=9, seconds=2).trace_digest)"
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        digests.add(out.stdout.strip().splitlines()[-1])
    assert len(digests) == 1
