"""How the report counts advert deliveries (the population, the window, superseded adverts) and DHT lookups."""

from __future__ import annotations

from types import SimpleNamespace

import trio
import trio.testing

from sim.collect import Collector, Published, _propagation, summarise
from sim.drivers import Drivers


def _collector() -> Collector:
    c = Collector(epoch_ms=0)
    everyone = frozenset(range(1, 5))
    # Node 0 signs seq 10 at 1 s; it reaches 1 and 2. Seq 11 (at 2 s) supersedes it and reaches 3 and 4.
    c.published[(0, 10)] = Published(0, 1000, 61_000, everyone)
    c.published[(0, 11)] = Published(0, 2000, 62_000, everyone)
    c.delivered[(0, 10)].update({1: 1.1, 2: 1.2})
    c.delivered[(0, 11)].update({1: 2.1, 2: 2.2, 3: 2.3, 4: 12.5})  # node 4: outside seq 10's window
    return c


def test_a_newer_advert_of_the_same_origin_delivers_an_older_one() -> None:
    prop = _propagation(_collector(), end_s=100.0)
    # seq 10: nodes 1, 2 directly, node 3 by seq 11 at 2.3 s; node 4 only after the 10 s window.
    # seq 11: nodes 1-3 in time, node 4 at 10.5 s after signing: late.
    assert prop["adverts_measured"] == 2
    assert prop["delivery_ratio"] == 6 / 8
    assert prop["adverts_reaching_99pct"] == 0


def test_an_older_advert_never_stands_in_for_a_newer_one() -> None:
    c = _collector()
    c.delivered[(0, 11)].pop(3)
    c.delivered[(0, 10)][3] = 1.3
    prop = _propagation(c, end_s=100.0)
    assert prop["delivery_ratio"] == 5 / 8  # node 3 got seq 10 only: delivered for seq 10, not for seq 11


class _Store:
    async def _get_providers_from_peer_with_closers(self, peer_id: object, key: bytes) -> tuple[list, list]:
        return [], []


class _Asker:
    """A node whose lookup answers nothing and, if ``crash`` is set, goes down while waiting for it."""

    def __init__(self, crash: bool) -> None:
        self.up = True
        self.crash = crash
        self.node = SimpleNamespace(p2p=SimpleNamespace(discovery=self))
        self.dht = SimpleNamespace(provider_store=_Store())

    async def find_providers(self, model_sha256: bytes, block: int) -> list:
        await trio.sleep(1)
        if self.crash:
            self.up = False
        return []


async def test_a_lookup_whose_asker_goes_down_meanwhile_is_set_aside_not_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    drivers = Drivers()
    drivers.c = Collector(epoch_ms=0)
    drivers.model_ref = SimpleNamespace(sha256=b"\0" * 32)
    drivers.by_peer = {}
    await drivers._lookup(_Asker(crash=True), 0)
    assert drivers.c.lookups == [] and drivers.c.lookups_asker_gone == 1
    await drivers._lookup(_Asker(crash=False), 0)
    assert [outcome for _t, outcome, _q, _s in drivers.c.lookups] == ["none"]
    dht = summarise(drivers.c, end_s=10.0, scenario={})["dht"]
    assert dht["success_ratio"] == 0.0 and dht["not_counted_asker_gone"] == 1
