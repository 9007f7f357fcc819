"""Route choice: properties against a brute-force search over every hop sequence, plus worked examples."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from protocol.advert import AdvertBody, ModelRef, make_advert
from protocol.errors import SteppeError
from protocol.identity import Identity
from protocol.route import (
    Avoid,
    Candidate,
    NoRoute,
    Route,
    RouteParams,
    choose_checker,
    choose_route,
    route_span,
)

# --- an oracle written from the spec, not from the implementation ---------------------------------------

Hops = tuple[tuple[Candidate, int, int], ...]


def spec_hop_cost(c: Candidate, a: int, b: int, p: RouteParams) -> int:
    """docs/routing.md: round trip + overhead once, then per layer compute + λ·price; whole nanoseconds."""
    latency = p.default_latency_ms if c.latency_ms is None else c.latency_ms
    per_layer = (
        p.default_layer_ms if c.tokens_per_s is None else 1000.0 / (c.tokens_per_s * (c.end - c.start))
    )
    return round((latency + p.hop_overhead_ms) * 1e6) + (b - a) * round(
        (per_layer + p.price_weight * c.price_wei) * 1e6
    )


def may_serve(c: Candidate, a: int, b: int, max_tokens: int, banned: set[str], avoid: list[Avoid]) -> bool:
    return (
        c.peer_id not in banned
        and c.free_sessions >= 1
        and c.free_cache_tokens >= max_tokens
        and c.start <= a < b <= c.end
        and not any(x.peer_id == c.peer_id and x.start < b and a < x.end for x in avoid)
    )


def every_route(cands: list[Candidate], a: int, b: int, max_tokens: int, banned, avoid) -> Iterator[Hops]:
    """Every chain of hops from layer a to b, peers repeated or not: exponential, for tiny instances."""
    if a == b:
        yield ()
        return
    for c in cands:
        for e in range(a + 1, b + 1):
            if may_serve(c, a, e, max_tokens, banned, avoid):
                for rest in every_route(cands, e, b, max_tokens, banned, avoid):
                    yield ((c, a, e), *rest)


def fits_slots(hops: Hops, max_tokens: int) -> bool:
    """Each visit to a peer is a session holding up to max_tokens tokens."""
    visits = Counter(c.peer_id for c, _, _ in hops)
    by_id = {c.peer_id: c for c, _, _ in hops}
    return all(
        n <= min(by_id[p].free_sessions, by_id[p].free_cache_tokens // max_tokens) for p, n in visits.items()
    )


def spec_key(hops: Hops, p: RouteParams) -> tuple:
    """Cost, then fewer hops, then hop by hop: smaller peer id, then the longer hop."""
    cost = sum(spec_hop_cost(c, a, b, p) for c, a, b in hops)
    return cost, len(hops), tuple((c.peer_id, -b) for c, _, b in hops)


def first_gap(cands, a, b, max_tokens, banned, avoid) -> tuple[int, int] | None:
    covered = [any(may_serve(c, x, x + 1, max_tokens, banned, avoid) for c in cands) for x in range(a, b)]
    if all(covered):
        return None
    i = covered.index(False)
    j = i
    while j < len(covered) and not covered[j]:
        j += 1
    return a + i, a + j


def as_hops(route: Route, cands: list[Candidate]) -> Hops:
    by_id = {c.peer_id: c for c in cands}
    return tuple((by_id[h.peer_id], h.start, h.end) for h in route.hops)


# --- hypothesis strategies --------------------------------------------------------------------------------


@st.composite
def instances(draw, max_layers: int = 6, max_servers: int = 5):
    num_layers = draw(st.integers(1, max_layers))
    ids = draw(st.lists(st.text("abcdef", min_size=1, max_size=2), max_size=max_servers, unique=True))
    cands = []
    for pid in ids:
        start = draw(st.integers(0, num_layers - 1))
        cands.append(
            Candidate(
                peer_id=pid,
                start=start,
                end=draw(st.integers(start + 1, num_layers)),
                free_sessions=draw(st.sampled_from([0, 1, 1, 1, 3])),
                free_cache_tokens=draw(st.sampled_from([0, 64, 512, 512, 4096])),
                price_wei=draw(st.integers(0, 4)),
                tokens_per_s=draw(st.none() | st.sampled_from([10.0, 100.0]) | st.floats(1, 1000)),
                latency_ms=draw(st.none() | st.sampled_from([0.0, 20.0]) | st.floats(0, 300)),
            )
        )
    a = draw(st.integers(0, num_layers))
    b = draw(st.integers(a, num_layers))
    if draw(st.booleans()):
        a, b = 0, num_layers
    banned = set(draw(st.lists(st.sampled_from(ids), max_size=2))) if ids else set()
    avoid = []
    if ids:
        for pid in draw(st.lists(st.sampled_from(ids), max_size=2)):
            s = draw(st.integers(0, num_layers - 1))
            avoid.append(Avoid(pid, s, draw(st.integers(s + 1, num_layers))))
    params = RouteParams(
        price_weight=draw(st.sampled_from([0.0, 0.5, 3.0, 1e6])),
        hop_overhead_ms=draw(st.sampled_from([0.0, 1.0])),
    )
    max_tokens = draw(st.sampled_from([1, 100, 1000]))
    return cands, a, b, max_tokens, banned, avoid, params


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def revisit_instances(draw):
    """A big server around smaller, cheaper ones: the unconstrained shortest route leaves and re-enters it."""
    num_layers = draw(st.integers(3, 7))
    big = Candidate(
        "m",
        0,
        num_layers,
        free_sessions=draw(st.integers(1, 3)),
        free_cache_tokens=draw(st.sampled_from([100, 200, 300, 10_000])),
        price_wei=draw(st.integers(3, 9)),
        tokens_per_s=draw(st.sampled_from([10.0, 100.0])),
        latency_ms=draw(st.sampled_from([0.0, 5.0, 50.0])),
    )
    cands = [big]
    for pid in draw(st.lists(st.sampled_from("abcd"), min_size=1, max_size=3, unique=True)):
        start = draw(st.integers(1, num_layers - 2))
        cands.append(
            Candidate(
                pid,
                start,
                draw(st.integers(start + 1, num_layers - 1)),
                free_sessions=draw(st.integers(0, 2)),
                free_cache_tokens=10_000,
                price_wei=draw(st.integers(0, 2)),
                tokens_per_s=draw(st.sampled_from([10.0, 100.0])),
                latency_ms=draw(st.sampled_from([0.0, 5.0, 50.0, 200.0])),
            )
        )
    params = RouteParams(price_weight=draw(st.sampled_from([1.0, 10.0, 100.0])))
    return cands, 0, num_layers, 100, set(), [], params


@FAST
@given(st.one_of(instances(), revisit_instances()))
def test_route_is_optimal_and_valid_or_no_route_names_the_first_gap(inst):
    cands, a, b, max_tokens, banned, avoid, params = inst
    routes = list(every_route(cands, a, b, max_tokens, banned, avoid))
    valid = [r for r in routes if fits_slots(r, max_tokens)]
    if not valid:
        with pytest.raises(NoRoute) as err:
            route_span(cands, a, b, max_tokens=max_tokens, params=params, banned=banned, avoid=avoid)
        assert isinstance(err.value, SteppeError)
        gap = first_gap(cands, a, b, max_tokens, banned, avoid) if not routes else (a, b)
        assert gap is not None
        assert (err.value.start, err.value.end) == gap
        assert str(err.value).startswith(f"no route for layers {gap[0]}:{gap[1]}")
        return
    route = route_span(cands, a, b, max_tokens=max_tokens, params=params, banned=banned, avoid=avoid)
    # Contiguous, no gaps or overlaps, exactly [a, b).
    assert (route.start, route.end) == (a, b)
    edges = [a] + [h.end for h in route.hops]
    assert [h.start for h in route.hops] == edges[:-1] and edges[-1] == b
    assert all(h.start < h.end for h in route.hops)
    hops = as_hops(route, cands)
    for c, s, e in hops:
        assert may_serve(c, s, e, max_tokens, banned, avoid)  # in range, not banned/avoided/full
    assert fits_slots(hops, max_tokens)  # a peer visited twice needs two sessions' worth of room
    assert route.cost == spec_key(hops, params)[0]  # the reported cost is the objective
    # Optimal, with the documented tie-breaking, whenever the unconstrained shortest route fits the slots;
    # otherwise the capacity repair is a heuristic (docs/routing.md) and only has to be valid.
    relaxed = min(routes, key=lambda r: spec_key(r, params))
    if fits_slots(relaxed, max_tokens):
        assert spec_key(hops, params) == spec_key(relaxed, params)
    else:
        best = min(spec_key(r, params)[0] for r in valid)
        event(f"capacity repair found the optimum: {route.cost == best}")


@FAST
@given(instances(), st.randoms(use_true_random=False))
def test_the_route_does_not_depend_on_the_order_of_candidates(inst, rnd):
    cands, a, b, max_tokens, banned, avoid, params = inst
    shuffled = list(cands)
    rnd.shuffle(shuffled)
    try:
        expected = route_span(cands, a, b, max_tokens=max_tokens, params=params, banned=banned, avoid=avoid)
    except NoRoute as exc:
        with pytest.raises(NoRoute, match=re.escape(str(exc))):
            route_span(shuffled, a, b, max_tokens=max_tokens, params=params, banned=banned, avoid=avoid)
        return
    assert (
        route_span(shuffled, a, b, max_tokens=max_tokens, params=params, banned=banned, avoid=avoid)
        == expected
    )


@FAST
@given(instances(), st.randoms(use_true_random=False))
def test_with_lambda_zero_prices_do_not_change_the_min_latency_route(inst, rnd):
    cands, a, b, max_tokens, banned, avoid, _ = inst
    params = RouteParams(price_weight=0.0)
    repriced = [
        Candidate(**{**{f: getattr(c, f) for f in c.__slots__}, "price_wei": rnd.randint(0, 10**6)})
        for c in cands
    ]
    try:
        route = route_span(cands, a, b, max_tokens=max_tokens, params=params, banned=banned, avoid=avoid)
    except NoRoute:
        return
    other = route_span(repriced, a, b, max_tokens=max_tokens, params=params, banned=banned, avoid=avoid)
    assert (other.peers, [h.end for h in other.hops], other.cost) == (
        route.peers,
        [h.end for h in route.hops],
        route.cost,
    )
    latencies = [
        sum(spec_hop_cost(c, s, e, params) for c, s, e in r)
        for r in every_route(cands, a, b, max_tokens, banned, avoid)
    ]
    assert route.cost == min(latencies)


@FAST
@given(instances())
def test_with_a_huge_lambda_the_route_is_the_cheapest_in_wei(inst):
    cands, a, b, max_tokens, banned, avoid, _ = inst
    params = RouteParams(price_weight=1e6)  # 1 wei outweighs any latency these instances can have
    # Only routes within every server's session slots are feasible (a revisit is another session).
    routes = [r for r in every_route(cands, a, b, max_tokens, banned, avoid) if fits_slots(r, max_tokens)]
    if not routes:
        return
    route = route_span(cands, a, b, max_tokens=max_tokens, params=params, banned=banned, avoid=avoid)
    assert route.price_wei == min(sum(c.price_wei * (e - s) for c, s, e in r) for r in routes)


# --- worked examples --------------------------------------------------------------------------------------


def server(pid: str, start: int, end: int, **kw) -> Candidate:
    base = dict(free_sessions=4, free_cache_tokens=4096, price_wei=1, tokens_per_s=100.0, latency_ms=10.0)
    return Candidate(pid, start, end, **{**base, **kw})


def test_a_single_server_holding_every_layer_is_one_hop():
    route = choose_route([server("a", 0, 8)], 8, max_tokens=100)
    assert [(h.peer_id, h.start, h.end) for h in route.hops] == [("a", 0, 8)]
    assert route.cost_ms == pytest.approx(10 + 1 + 8 * (1000 / (100 * 8) + 0))


def test_a_hop_enters_and_leaves_inside_its_servers_range():
    # b is much faster per layer on 4:8, so a serves only 0:4 of its 0:8 and c only 8:10 of its 6:12.
    cands = [server("a", 0, 8, tokens_per_s=10.0), server("b", 4, 8, tokens_per_s=1000.0), server("c", 6, 12)]
    route = choose_route(cands, 10, max_tokens=100)
    assert [(h.peer_id, h.start, h.end) for h in route.hops] == [("a", 0, 4), ("b", 4, 8), ("c", 8, 10)]


def test_lambda_zero_takes_the_fast_provider_and_a_large_lambda_the_cheap_one():
    cands = [
        server("fast", 0, 4, latency_ms=5.0, price_wei=100),
        server("slow", 0, 4, latency_ms=80.0, price_wei=1),
    ]
    assert choose_route(cands, 4, max_tokens=1).peers == ("fast",)
    assert choose_route(cands, 4, max_tokens=1, params=RouteParams(price_weight=1.0)).peers == ("slow",)
    # The break-even: 75 ms of latency against 4 layers x 99 wei.
    assert choose_route(cands, 4, max_tokens=1, params=RouteParams(price_weight=75 / 396 - 1e-3)).peers == (
        "fast",
    )
    assert choose_route(cands, 4, max_tokens=1, params=RouteParams(price_weight=75 / 396 + 1e-3)).peers == (
        "slow",
    )


def test_an_unmeasured_latency_counts_as_the_pessimistic_default():
    measured, unknown = server("m", 0, 4, latency_ms=150.0), server("u", 0, 4, latency_ms=None)
    assert choose_route([measured, unknown], 4, max_tokens=1).peers == ("m",)
    slower = server("m", 0, 4, latency_ms=250.0)
    assert choose_route([slower, unknown], 4, max_tokens=1).peers == ("u",)
    route = choose_route([unknown], 4, max_tokens=1, params=RouteParams(default_latency_ms=42.0))
    assert route.hops[0].latency_ms == 42.0 + 1.0


def test_an_unmeasured_throughput_uses_the_default_time_per_layer():
    route = choose_route([server("a", 0, 4, tokens_per_s=None)], 4, max_tokens=1)
    assert route.hops[0].compute_ms == 4 * RouteParams().default_layer_ms


def test_servers_without_a_free_session_or_enough_cache_are_skipped():
    cands = [
        server("a", 0, 4, free_sessions=0),
        server("b", 0, 4, free_cache_tokens=10),
        server("c", 0, 4, latency_ms=99.0),
    ]
    assert choose_route(cands, 4, max_tokens=100).peers == ("c",)
    assert choose_route(cands, 4, max_tokens=10).peers == ("b",)
    with pytest.raises(
        NoRoute, match=r"^no route for layers 0:4: .*1 without a free session, 2 without 5000 free cache"
    ):
        choose_route(cands, 4, max_tokens=5000)


def test_equal_routes_are_broken_by_peer_id_whatever_the_order():
    twins = [server(pid, 0, 4) for pid in ("zed", "bob", "amy")]
    for _ in range(5):
        random.shuffle(twins)
        assert choose_route(twins, 4, max_tokens=1).peers == ("amy",)


def test_failover_replaces_only_the_span_of_the_dead_hop():
    cands = [
        server("a", 0, 8),
        server("b", 8, 16),
        server("c", 16, 24),
        server("spare", 8, 16, latency_ms=50.0),
    ]
    route = choose_route(cands, 24, max_tokens=100)
    assert route.peers == ("a", "b", "c")
    dead = route.hops[1]
    replacement = route_span(cands, dead.start, dead.end, max_tokens=100, banned={dead.peer_id})
    assert [(h.peer_id, h.start, h.end) for h in replacement.hops] == [("spare", 8, 16)]
    without_spare = [c for c in cands if c.peer_id != "spare"]
    with pytest.raises(NoRoute, match=r"^no route for layers 8:16: 1 server\(s\) hold them .*1 banned"):
        route_span(without_spare, 8, 16, max_tokens=100, banned={"b"})
    with pytest.raises(NoRoute, match=r"^no route for layers 8:16: no server serves them"):
        choose_route([c for c in without_spare if c.peer_id != "b"], 24, max_tokens=100)


def test_an_avoided_span_keeps_the_peer_off_those_layers_only():
    cands = [server("a", 0, 12), server("b", 4, 8, latency_ms=90.0)]
    assert choose_route(cands, 12, max_tokens=1).peers == ("a",)
    route = choose_route(cands, 12, max_tokens=1, avoid=[Avoid("a", 4, 8)])
    assert [(h.peer_id, h.start, h.end) for h in route.hops] == [("a", 0, 4), ("b", 4, 8), ("a", 8, 12)]


def test_a_server_is_revisited_only_if_it_has_a_session_for_each_visit():
    # m holds every layer but is dear; c is cheap on 4:8. The shortest route leaves m and comes back to it.
    params = RouteParams(price_weight=10.0)
    cheap = server("c", 4, 8, price_wei=0)
    two = choose_route(
        [server("m", 0, 12, price_wei=5, free_sessions=2), cheap], 12, max_tokens=100, params=params
    )
    assert [(h.peer_id, h.start, h.end) for h in two.hops] == [("m", 0, 4), ("c", 4, 8), ("m", 8, 12)]
    one = choose_route(
        [server("m", 0, 12, price_wei=5, free_sessions=1), cheap], 12, max_tokens=100, params=params
    )
    assert one.peers == ("m",) and one.cost > two.cost
    # Cache counts too: two sessions of 100 tokens do not fit in 150 free tokens.
    tight = server("m", 0, 12, price_wei=5, free_sessions=2, free_cache_tokens=150)
    assert choose_route([tight, cheap], 12, max_tokens=100, params=params).peers == ("m",)
    # Kept off 4:8 with a single session, m cannot serve both ends: no route, not an over-full one.
    with pytest.raises(NoRoute, match=r"^no route for layers 0:12: every layer is served, but"):
        choose_route(
            [server("m", 0, 12, free_sessions=1), cheap], 12, max_tokens=100, avoid=[Avoid("m", 4, 8)]
        )


def test_an_empty_span_is_a_route_without_hops_and_a_bad_span_is_refused():
    assert route_span([server("a", 0, 4)], 2, 2, max_tokens=1).hops == ()
    with pytest.raises(ValueError):
        route_span([server("a", 0, 4)], 3, 2, max_tokens=1)
    with pytest.raises(ValueError, match="duplicate"):
        choose_route([server("a", 0, 4), server("a", 0, 4)], 4, max_tokens=1)


def test_the_spot_checker_is_another_single_provider_for_the_same_span():
    cands = [
        server("a", 0, 8),
        server("b", 0, 8, latency_ms=30.0),
        server("c", 2, 6, latency_ms=20.0),
        server("d", 0, 3),
        server("e", 5, 8),
    ]
    check = choose_checker(cands, 2, 6, served_by=["a"], max_tokens=100)
    assert [(h.peer_id, h.start, h.end) for h in check.hops] == [("c", 2, 6)]
    decider = choose_checker(cands, 2, 6, served_by=["a", "c"], max_tokens=100)
    assert decider.peers == ("b",)
    with pytest.raises(NoRoute, match=r"^no route for layers 0:8"):
        choose_checker(cands, 0, 8, served_by=["a"], max_tokens=100, banned=["b"])
    chained = choose_checker(cands, 0, 8, served_by=["a"], max_tokens=100, banned=["b"], single_hop=False)
    assert "a" not in chained.peers and (chained.start, chained.end) == (0, 8)


def test_a_random_spot_checker_can_be_any_eligible_provider_so_liars_cannot_arrange_to_check_each_other():
    # "liar2" is the cheapest: cheapest-first would make it the checker of every other 0:8 provider.
    cands = [server("liar1", 0, 8), server("liar2", 0, 8, latency_ms=1.0)]
    cands += [server(f"h{i}", 0, 8, latency_ms=40.0) for i in range(4)]
    assert choose_checker(cands, 0, 8, served_by=["liar1"], max_tokens=100).peers == ("liar2",)
    rng = random.Random(5)
    picked = Counter(
        choose_checker(cands, 0, 8, served_by=["liar1"], max_tokens=100, rng=rng).peers[0] for _ in range(500)
    )
    assert set(picked) == {"liar2", "h0", "h1", "h2", "h3"}  # each eligible one, never the checked one
    assert max(picked.values()) < 150  # about uniform: 100 each
    assert choose_checker(cands, 0, 8, served_by=["liar1", "h0"], max_tokens=100, rng=rng).peers[0] not in (
        "liar1",
        "h0",
    )


def test_a_candidate_is_read_from_a_signed_advert():
    ident = Identity.from_int(7)
    body = AdvertBody(
        addrs=("/ip4/127.0.0.1/tcp/4001",),
        model=ModelRef("tiny", b"\x01" * 32, 8),
        layer_start=2,
        layer_end=6,
        tokens_per_s=0.0,
        free_cache_tokens=2048,
        free_sessions=3,
        price_wei_per_token_layer=10**9,
    )
    cand = Candidate.from_advert(make_advert(ident, body, seq=1, now_ms=1_700_000_000_000), latency_ms=12.5)
    assert (cand.peer_id, cand.start, cand.end) == (ident.peer_id, 2, 6)
    assert (cand.free_sessions, cand.free_cache_tokens, cand.price_wei) == (3, 2048, 10**9)
    assert cand.tokens_per_s is None and cand.latency_ms == 12.5  # 0 tok/s in an advert means "not measured"


def test_nonsense_measurements_are_refused():
    for bad in (
        dict(latency_ms=-1.0),
        dict(latency_ms=float("inf")),
        dict(tokens_per_s=0.0),
        dict(price_wei=-1),
    ):
        with pytest.raises(ValueError):
            server("a", 0, 4, **bad)
    with pytest.raises(ValueError):
        RouteParams(price_weight=float("nan"))


# --- whole ranges (Steppe's shards serve exactly their advertised range) ----------------------------------


def _whole(peer: str, start: int, end: int, **kw) -> Candidate:
    base = dict(free_sessions=4, free_cache_tokens=10_000, price_wei=1, latency_ms=10.0, tokens_per_s=100.0)
    base.update(kw)
    return Candidate(peer, start, end, **base)


def test_whole_range_routes_use_each_server_from_its_first_to_its_last_layer() -> None:
    params = RouteParams(whole_ranges=True)
    cands = [_whole("a", 0, 4), _whole("b", 2, 8), _whole("c", 4, 8), _whole("d", 0, 2)]
    route = choose_route(cands, 8, max_tokens=16, params=params)
    assert [(h.peer_id, h.start, h.end) for h in route.hops] == [("a", 0, 4), ("c", 4, 8)]
    # Without whole ranges, "b" could be entered in the middle; with them only d(0:2) + b(2:8) also tiles.
    slow_a = [_whole("a", 0, 4, latency_ms=500.0), *cands[1:]]
    route = choose_route(slow_a, 8, max_tokens=16, params=params)
    assert [(h.peer_id, h.start, h.end) for h in route.hops] == [("d", 0, 2), ("b", 2, 8)]


def test_whole_range_routing_names_the_layers_no_tiling_reaches() -> None:
    params = RouteParams(whole_ranges=True)
    cands = [_whole("a", 0, 4), _whole("b", 3, 8)]  # every layer covered, but no tiling
    with pytest.raises(NoRoute, match="no route for layers 4:8"):
        choose_route(cands, 8, max_tokens=16, params=params)
    with pytest.raises(NoRoute, match="no route for layers 4:8"):
        route_span([_whole("a", 0, 4), _whole("b", 4, 8)], 0, 8, max_tokens=16, params=params, banned=["b"])


def test_whole_range_replacement_and_checker_need_the_same_range() -> None:
    params = RouteParams(whole_ranges=True)
    cands = [_whole("a", 0, 4), _whole("b", 4, 8), _whole("spare", 4, 8), _whole("wide", 2, 8)]
    span = route_span(cands, 4, 8, max_tokens=16, params=params, avoid=[Avoid("b", 4, 8)])
    assert span.peers == ("spare",)
    checker = choose_checker(cands, 4, 8, served_by=["b"], max_tokens=16, params=params)
    assert checker.peers == ("spare",)
    with pytest.raises(NoRoute):
        choose_checker(cands, 4, 8, served_by=["b", "spare"], max_tokens=16, params=params)
