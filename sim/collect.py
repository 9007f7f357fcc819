"""What a simulation run records, and its summary into the metrics of `metrics.json`.

Every record is stamped with *virtual* time; nothing here reads a wall clock, so the summary of a run is a
pure function of the scenario and the seed. `summarise` rounds floats and sorts everything it emits.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

#: Delivery within this many virtual seconds counts an advert as delivered to a node.
DELIVERY_WINDOW_S = 10.0


def r(x: float, digits: int = 4) -> float | None:
    """Round for the report; None for NaN/inf (JSON has no spelling for them)."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), digits)


def quantile(values: list[float], q: float) -> float:
    """The nearest-rank quantile (no interpolation, so results are values that occurred); NaN if empty."""
    if not values:
        return math.nan
    s = sorted(values)
    k = min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))
    return s[k]


@dataclass
class Generation:
    t_start: float
    t_end: float
    gateway: int
    role: str  # "honest", "free_rider" or "eclipse_target"
    ok: bool
    reason: str
    tokens: int
    correct: bool
    failovers: int
    liars_caught: int
    spot_checks: int
    paid_wei: int
    detail: str = ""  # the error's message when the generation failed
    honest_accused: int = 0  # honest providers the client's spot checks banned as liars


@dataclass
class Published:
    peer_index: int
    issued_ms: int
    expires_ms: int
    population: frozenset[int]  # honest nodes up at publication and through the delivery window


@dataclass
class Collector:
    """Raw observations, appended to by the runner and the adversaries while the simulation runs."""

    epoch_ms: int
    # (advert peer index, seq) -> publication facts; (peer index, seq) -> {receiver: virtual s of delivery}
    published: dict[tuple[int, int], Published] = field(default_factory=dict)
    delivered: dict[tuple[int, int], dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    received_copies: Counter[int] = field(default_factory=Counter)  # node -> topic messages received
    duplicate_copies: Counter[int] = field(default_factory=Counter)  # node -> of those, already seen
    generations: list[Generation] = field(default_factory=list)
    #: (t, outcome, peers queried, seconds taken); outcome: "ok" (a live provider found), "timeout" (nothing
    #: within the lookup's deadline), "none" (an answer without providers), "gone" (only departed providers).
    lookups: list[tuple[float, str, int, float]] = field(default_factory=list)
    #: lookups whose asker crashed, left or restarted before the lookup ended: no answer could reach it, so
    #: they are counted here and not in `lookups`.
    lookups_asker_gone: int = 0
    churn_events: list[tuple[float, str, int]] = field(default_factory=list)  # (t, kind, node)
    adversary: Counter[str] = field(default_factory=Counter)
    # receiver -> advert peer -> highest seq it has accepted (to spot replays that got in)
    max_seq_seen: dict[int, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    honest_rejected: Counter[str] = field(default_factory=Counter)
    payments: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def t_of_ms(self, ms: int) -> float:
        return (ms - self.epoch_ms) / 1000.0


def _advert_samples(c: Collector, end_s: float) -> list[tuple[list[float], int]]:
    """Per measured advert: sorted delivery delays within the window, and the population size.

    The population is the honest nodes up when the advert was signed, less those that crashed or left
    within the delivery window (a node that is gone cannot be reached; partitions are not excused).
    An advert is state: a node that receives a *newer* advert of the same origin first (the origin
    superseded it, e.g. a restarted node republishing once its mesh forms) has been delivered to then.
    """
    downs: dict[int, list[float]] = defaultdict(list)
    for t, kind, node in c.churn_events:
        if kind in ("crash", "leave"):
            downs[node].append(t)
    by_origin: dict[int, list[tuple[int, dict[int, float]]]] = defaultdict(list)
    for (origin, seq), got in c.delivered.items():
        by_origin[origin].append((seq, got))
    samples = []
    for key, pub in sorted(c.published.items()):
        t0 = c.t_of_ms(pub.issued_ms)
        if t0 + DELIVERY_WINDOW_S > end_s:
            continue
        pop = [
            n for n in sorted(pub.population) if not any(t0 <= t <= t0 + DELIVERY_WINDOW_S for t in downs[n])
        ]
        if len(pop) < 2:
            continue
        got: dict[int, float] = {}
        for seq, delivered in by_origin.get(key[0], ()):
            if seq >= key[1]:
                for n, t in delivered.items():
                    got[n] = min(t, got.get(n, math.inf))
        times = sorted(got[n] - t0 for n in pop if n in got and got[n] - t0 <= DELIVERY_WINDOW_S)
        samples.append((times, len(pop)))
    return samples


def _reach(times: list[float], population: int, share: float) -> float:
    need = math.ceil(share * population)
    return times[need - 1] if len(times) >= need else math.inf


def _propagation(c: Collector, end_s: float) -> dict:
    samples = _advert_samples(c, end_s)
    reach_99 = [_reach(t, n, 0.99) for t, n in samples]
    reach_50 = [_reach(t, n, 0.5) for t, n in samples]
    latencies = [x for t, _n in samples for x in t]
    pairs = sum(n for _t, n in samples)
    return {
        "adverts_published": len(c.published),
        "adverts_measured": len(samples),
        "delivery_ratio": r(len(latencies) / pairs if pairs else math.nan),
        "time_to_99pct_p50_s": r(quantile(reach_99, 0.5)),
        "time_to_99pct_p99_s": r(quantile(reach_99, 0.99)),
        "time_to_50pct_p50_s": r(quantile(reach_50, 0.5)),
        "adverts_reaching_99pct": sum(1 for x in reach_99 if math.isfinite(x)),
        "per_node_latency_p50_s": r(quantile(latencies, 0.5)),
        "per_node_latency_p99_s": r(quantile(latencies, 0.99)),
        "window_s": DELIVERY_WINDOW_S,
    }


def propagation_curves(c: Collector, end_s: float) -> tuple[list[float], list[float]]:
    """(time to reach 99% for each measured advert, sorted; every per-node delivery latency, sorted)."""
    samples = _advert_samples(c, end_s)
    reach = sorted(_reach(t, n, 0.99) for t, n in samples)
    return reach, sorted(x for t, _n in samples for x in t)


#: Failed generations listed one by one in the metrics (the counts cover all of them).
MAX_FAILED_LISTED = 20


def _generations(c: Collector, role: str | None) -> dict:
    gens = [g for g in c.generations if role is None or g.role == role]
    ok = [g for g in gens if g.ok]
    return {
        "started": len(gens),
        "completed": len(ok),
        "success_ratio": r(len(ok) / len(gens)) if gens else None,
        "correct": sum(1 for g in ok if g.correct),
        "tokens": sum(g.tokens for g in gens),
        "failovers": sum(g.failovers for g in gens),
        "liars_caught": sum(g.liars_caught for g in gens),
        "spot_checks": sum(g.spot_checks for g in gens),
        "latency_p50_s": r(quantile([g.t_end - g.t_start for g in ok], 0.5)),
        "latency_p99_s": r(quantile([g.t_end - g.t_start for g in ok], 0.99)),
        "failures": dict(sorted(Counter(g.reason for g in gens if not g.ok).items())),
        # Each failure with its start time and message (there are few; a pattern shows in the messages).
        "failed": [
            {"t_s": r(g.t_start, 3), "reason": g.reason, "detail": g.detail} for g in gens if not g.ok
        ][:MAX_FAILED_LISTED],
    }


def success_over_time(c: Collector, bucket_s: float, end_s: float) -> list[dict]:
    """Per bucket of virtual time (by generation start): started, completed, churn events."""
    n = max(1, math.ceil(end_s / bucket_s))
    rows = [{"t_s": r(i * bucket_s, 3), "started": 0, "completed": 0, "churn": 0} for i in range(n)]
    for g in c.generations:
        if g.role != "honest":
            continue
        row = rows[min(n - 1, int(g.t_start // bucket_s))]
        row["started"] += 1
        row["completed"] += int(g.ok)
    for t, kind, _node in c.churn_events:
        if kind in ("crash", "leave", "join"):
            rows[min(n - 1, int(t // bucket_s))]["churn"] += 1
    return rows


def summarise(c: Collector, *, end_s: float, scenario: dict) -> dict:
    """The content of `metrics.json` (wall-clock free, rounded, sorted by the writer)."""
    lookups_ok = [took for _t, outcome, _q, took in c.lookups if outcome == "ok"]
    hops = Counter(q for _t, _o, q, _s in c.lookups)
    received = sum(c.received_copies.values())
    dups = sum(c.duplicate_copies.values())
    first = received - dups
    return {
        "scenario": scenario,
        "virtual_s": r(end_s, 3),
        "advert_propagation": _propagation(c, end_s),
        "duplicate_amplification": {
            "copies_received": received,
            "duplicates": dups,
            "first_deliveries": first,
            "copies_per_delivered_advert": r(received / first) if first else None,
        },
        "dht": {
            "lookups": len(c.lookups),
            "successful": len(lookups_ok),
            "success_ratio": r(len(lookups_ok) / len(c.lookups)) if c.lookups else None,
            "peers_queried_histogram": {str(k): v for k, v in sorted(hops.items())},
            "peers_queried_mean": r(sum(q for _t, _o, q, _s in c.lookups) / len(c.lookups))
            if c.lookups
            else None,
            "failures": dict(sorted(Counter(o for _t, o, _q, _s in c.lookups if o != "ok").items())),
            "not_counted_asker_gone": c.lookups_asker_gone,
            "successful_s": {"p50": r(quantile(lookups_ok, 0.5), 3), "p99": r(quantile(lookups_ok, 0.99), 3)}
            if lookups_ok
            else None,
        },
        "generations": {
            "honest": _generations(c, "honest"),
            "free_riders": _generations(c, "free_rider"),
            "eclipse_target": _generations(c, "eclipse_target"),
            "over_time": success_over_time(c, 10.0, end_s),
        },
        "churn": dict(sorted(Counter(k for _t, k, _n in c.churn_events).items())),
        "payments": c.payments,
        "adversaries": dict(sorted(c.adversary.items())),
        "honest_rejections": dict(sorted(c.honest_rejected.items())),
        **{k: v for k, v in sorted(c.extra.items())},
    }
