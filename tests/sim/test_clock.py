"""libp2p's clock reads follow trio's mock clock inside `virtual_time`, and only there; randomness is seeded."""

from __future__ import annotations

import random
import threading
import time

import libp2p.kad_dht.common as dht_common
import libp2p.kad_dht.routing_table as routing_table
import libp2p.pubsub.gossipsub as gossipsub
import libp2p.pubsub.pubsub as pubsub
import pytest
import trio
from libp2p.tools.timed_cache.last_seen_cache import LastSeenCache

from sim.clock import EPOCH, seeded, sim_clock, virtual_time


async def test_libp2p_reads_virtual_time_inside_the_context_and_real_time_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    await trio.sleep(1000)
    with virtual_time(autojump_clock):
        assert gossipsub.time.time() == EPOCH + trio.current_time()
        assert pubsub.time.monotonic() == trio.current_time()
        await trio.sleep(3600)  # an hour passes in no time at all
        assert pubsub.time.monotonic() == trio.current_time()
        assert pubsub.time.sleep is time.sleep  # everything else is the real module
        stamp = dht_common.parse_time_received(dht_common.format_time_rfc3339())
        assert stamp == pytest.approx(EPOCH + trio.current_time(), abs=1e-3)  # DHT record stamps too
    assert gossipsub.time is time and pubsub.time is time


async def test_the_seen_cache_starts_no_thread_and_forgets_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    threads = threading.active_count()
    with virtual_time(autojump_clock):
        cache = LastSeenCache(ttl=120, sweep_interval=60)
        assert threading.active_count() == threads
        t0 = trio.current_time()  # sweeps at t0+60, t0+120, ...; every access sets expiry = now + 120
        cache.add(b"id")
        for at, present in ((100, True), (200, True), (330, True), (520, False)):
            await trio.sleep_until(t0 + at)
            # At 330 the entry (expiry 320) is stale but the last sweep (300) came before it expired,
            # so it is still there, as with the real sweeper thread. The sweep at 480 removes it.
            assert cache.has(b"id") is present, at

        cache.stop()


async def test_the_same_seed_draws_the_same_libp2p_randomness(autojump_clock: trio.testing.MockClock) -> None:
    def draws(seed: int) -> tuple:
        with seeded(seed) as rng:
            return random.random(), routing_table.secrets.randbelow(10**9), rng.random()

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)
    assert routing_table.secrets.__name__ == "secrets"  # restored


def test_the_simulation_clock_tells_the_mock_clocks_time_without_reading_the_real_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = sim_clock()
    seen: list[float] = []

    async def main() -> None:
        seen.append(trio.current_time())
        await trio.sleep(12.5)  # autojump: no real waiting
        seen.append(trio.current_time())
        clock.jump(0.25)
        seen.append(trio.current_time())

    trio.run(main, clock=clock)
    assert seen == [0.0, 12.5, 12.75]

    def no_real_clock() -> float:
        raise AssertionError("read the real clock")

    monkeypatch.setattr(clock, "_real_clock", no_real_clock)
    assert clock.current_time() == 12.75  # at rate 0
    monkeypatch.undo()
    clock.rate = 2.0  # a running mock clock still measures real time
    assert clock.current_time() >= 12.75
