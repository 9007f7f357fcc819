"""How the report counts advert deliveries: the population, the window, and superseded adverts."""

from __future__ import annotations

from sim.collect import Collector, Published, _propagation


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
