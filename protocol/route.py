"""Route choice: which peers compute which layers of a generation. Pure, no I/O.

A route is a chain of hops ``(peer, start, end)`` that covers a span of layers ``[a, b)`` contiguously. The
client drives the chain (it sends the hidden state to each hop and gets it back), so a hop costs one round
trip to the client plus the hop's compute time; a hop may serve any sub-range of its server's layers.

The objective, per generated token, is ``sum(latency + compute) + λ·price`` over the hops, subject to free
capacity (a free session slot and enough free cache tokens for the request, per hop). It is solved exactly
as a shortest path over ``(peer, layer)`` nodes, the graph of Petals' min-latency router with price added;
only when that path visits a server more often than it has room for does a bounded repair search take over.
See docs/routing.md for the model, the fallbacks for unknown measurements and the tie-breaking rule.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from .advert import SignedAdvert
from .errors import SteppeError

#: Costs are whole nanoseconds so that sums are exact: ties are real ties and the tie-breaking rule holds.
NS_PER_MS = 1_000_000
#: Over-full routes the capacity repair expands before it falls back to a greedy cover (bounds the work).
_MAX_REPAIRS = 64
#: The DP packs (cost, hops) into one int: cost in the high bits, hop count in the low ones.
_HOP_BITS = 20


class NoRoute(SteppeError):
    """No chain of usable servers covers the requested layers.

    ``start``/``end`` is the first maximal run of layers that no usable server covers; the message starts
    with ``no route for layers START:END`` and says why the servers that hold those layers were not usable.
    In the rare case where every layer is covered but only by visiting a server more often than it has
    sessions for, ``start``/``end`` is the whole requested span.
    """

    def __init__(self, start: int, end: int, reason: str) -> None:
        super().__init__(f"no route for layers {start}:{end}: {reason}")
        self.start = start
        self.end = end


@dataclass(frozen=True, slots=True)
class Candidate:
    """A server as the router sees it: an advert's numbers plus the client's own latency measurement.

    ``tokens_per_s`` is the throughput measured over the server's whole range ``[start, end)``; ``None``
    (unknown) falls back to `RouteParams.default_layer_ms`. ``latency_ms`` is the client↔server round trip
    (what a ping measures); ``None`` falls back to `RouteParams.default_latency_ms`.
    Raises ``ValueError`` for an inverted range or a negative or non-finite measurement.
    """

    peer_id: str
    start: int
    end: int
    free_sessions: int
    free_cache_tokens: int
    price_wei: int  # per token per layer
    tokens_per_s: float | None = None
    latency_ms: float | None = None
    serves_embedding: bool = False
    serves_head: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"bad layer range {self.start}:{self.end} for {self.peer_id}")
        if self.price_wei < 0 or self.free_sessions < 0 or self.free_cache_tokens < 0:
            raise ValueError(f"negative price or capacity for {self.peer_id}")
        if self.tokens_per_s is not None and not (self.tokens_per_s > 0 and math.isfinite(self.tokens_per_s)):
            raise ValueError(f"tokens_per_s must be positive and finite (or None) for {self.peer_id}")
        if self.latency_ms is not None and not (self.latency_ms >= 0 and math.isfinite(self.latency_ms)):
            raise ValueError(f"latency_ms must be non-negative and finite (or None) for {self.peer_id}")

    @classmethod
    def from_advert(cls, advert: SignedAdvert, latency_ms: float | None = None) -> Candidate:
        """A candidate from a verified advert. An advertised throughput of 0 means "not measured"."""
        body = advert.body
        return cls(
            peer_id=advert.peer_id,
            start=body.layer_start,
            end=body.layer_end,
            free_sessions=body.free_sessions,
            free_cache_tokens=body.free_cache_tokens,
            price_wei=body.price_wei_per_token_layer,
            tokens_per_s=body.tokens_per_s or None,
            latency_ms=latency_ms,
            serves_embedding=body.serves_embedding,
            serves_head=body.serves_head,
        )


@dataclass(frozen=True, slots=True)
class RouteParams:
    """Weights and fallbacks of the objective. Raises ``ValueError`` for negative or non-finite values.

    ``price_weight`` is λ in milliseconds per wei: how many ms of latency the user would trade for one wei
    per token. Unknown latencies get ``default_latency_ms``, deliberately pessimistic so that a measured peer
    wins over an unmeasured one of the same advertised quality. ``hop_overhead_ms`` is charged once per hop
    (sealing, framing, scheduling) and makes fewer hops win when everything else is equal.
    """

    price_weight: float = 0.0
    default_latency_ms: float = 200.0
    default_layer_ms: float = 5.0
    hop_overhead_ms: float = 1.0
    #: Servers only run their whole advertised range (Steppe's shards do): a hop enters at a server's first
    #: layer and leaves after its last, and a route is a tiling of the span by whole ranges.
    whole_ranges: bool = False

    def __post_init__(self) -> None:
        for name in ("price_weight", "default_latency_ms", "default_layer_ms", "hop_overhead_ms"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be non-negative and finite, got {value}")

    def latency_ms(self, c: Candidate) -> float:
        return self.default_latency_ms if c.latency_ms is None else c.latency_ms

    def layer_ms(self, c: Candidate) -> float:
        if c.tokens_per_s is None or c.end == c.start:
            return self.default_layer_ms
        return 1000.0 / (c.tokens_per_s * (c.end - c.start))

    def entry_cost(self, c: Candidate) -> int:
        """Cost (ns) of using ``c`` as a hop at all: one round trip plus the per-hop overhead."""
        return round((self.latency_ms(c) + self.hop_overhead_ms) * NS_PER_MS)

    def layer_cost(self, c: Candidate) -> int:
        """Cost (ns) of each layer ``c`` computes: its compute time plus λ times its price."""
        return round((self.layer_ms(c) + self.price_weight * c.price_wei) * NS_PER_MS)

    def hop_cost(self, c: Candidate, start: int, end: int) -> int:
        return self.entry_cost(c) + (end - start) * self.layer_cost(c)


@dataclass(frozen=True, slots=True)
class Avoid:
    """Do not let ``peer_id`` compute any layer in ``[start, end)`` (e.g. the span it failed or lied on)."""

    peer_id: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Hop:
    peer_id: str
    start: int
    end: int
    latency_ms: float  # the round trip plus per-hop overhead assumed for this hop
    compute_ms: float  # per token, for this hop's layers
    price_wei: int  # per token, for this hop's layers


@dataclass(frozen=True, slots=True)
class Route:
    """Hops covering ``[start, end)`` in order; ``cost`` is the objective in ns (exact, see `RouteParams`)."""

    start: int
    end: int
    hops: tuple[Hop, ...]
    cost: int

    @property
    def cost_ms(self) -> float:
        return self.cost / NS_PER_MS

    @property
    def time_ms(self) -> float:
        """Estimated time per token through the whole chain (latency plus compute)."""
        return sum(h.latency_ms + h.compute_ms for h in self.hops)

    @property
    def price_wei(self) -> int:
        """Price per token through the whole chain."""
        return sum(h.price_wei for h in self.hops)

    @property
    def peers(self) -> tuple[str, ...]:
        return tuple(h.peer_id for h in self.hops)

    def describe(self) -> str:
        """``0:16 via …abc123 => 16:32 via …def456`` (for logs and ``--verbose``)."""
        return " => ".join(f"{h.start}:{h.end} via …{h.peer_id[-6:]}" for h in self.hops)


def choose_route(
    candidates: Iterable[Candidate],
    num_layers: int,
    *,
    max_tokens: int,
    params: RouteParams | None = None,
    banned: Iterable[str] = (),
    avoid: Iterable[Avoid] = (),
) -> Route:
    """The cheapest route over all ``num_layers`` layers. Raises `NoRoute`; ``ValueError`` on bad input."""
    return route_span(
        candidates, 0, num_layers, max_tokens=max_tokens, params=params, banned=banned, avoid=avoid
    )


def route_span(
    candidates: Iterable[Candidate],
    start: int,
    end: int,
    *,
    max_tokens: int,
    params: RouteParams | None = None,
    banned: Iterable[str] = (),
    avoid: Iterable[Avoid] = (),
) -> Route:
    """The cheapest route over layers ``[start, end)`` only: the whole model, or a replacement for one span.

    ``max_tokens`` is the request's prompt plus new tokens: a hop needs that many free cache tokens and a
    free session slot. ``banned`` peers are never used; an `Avoid` keeps one peer off one span. Ties are
    broken deterministically, whatever the order of ``candidates`` (see docs/routing.md).
    Raises `NoRoute` naming the first uncovered layers, ``ValueError`` for an empty/inverted span or
    duplicate peer ids. An empty span (``start == end``) gives a route without hops.
    """
    params = params or RouteParams()
    if not 0 <= start <= end:
        raise ValueError(f"bad span {start}:{end}")
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    candidates, banned, avoid = list(candidates), set(banned), list(avoid)
    servers = _usable_layers(candidates, start, end, max_tokens, banned, avoid)
    if start == end:
        return Route(start, end, (), 0)
    gap = _first_gap(servers, start, end)
    if gap is not None:
        raise NoRoute(gap[0], gap[1], _why_uncovered(candidates, gap[0], max_tokens, banned, avoid))
    if params.whole_ranges:
        return _shortest_whole(servers, start, end, params)
    return _within_slots(servers, start, end, params, max_tokens)


def choose_checker(
    candidates: Iterable[Candidate],
    start: int,
    end: int,
    *,
    served_by: Iterable[str],
    max_tokens: int,
    params: RouteParams | None = None,
    banned: Iterable[str] = (),
    single_hop: bool = True,
    rng: random.Random | None = None,
) -> Route:
    """A provider to re-run ``[start, end)`` for a spot check: not one of ``served_by`` nor banned.

    With ``single_hop`` (the default) it is one server covering the whole span, so a disagreement points
    at one peer; otherwise any route over the span. Pass both earlier providers in ``served_by`` to find the
    third that decides. Raises `NoRoute` when there is none.

    Without ``rng`` the cheapest eligible server is picked. With it, any eligible server, uniformly: the
    checker is then not predictable, so providers that lie alike cannot arrange to check each other (the
    cheapest-first rule let a cheap liar be the checker of every other liar).
    """
    candidates = list(candidates)
    excluded = set(banned) | set(served_by)
    if not single_hop:
        return route_span(candidates, start, end, max_tokens=max_tokens, params=params, banned=excluded)
    params = params or RouteParams()
    if not 0 <= start < end or max_tokens < 1:
        raise ValueError(f"bad span {start}:{end} or max_tokens {max_tokens}")
    eligible: list[tuple[int, str, Candidate]] = []
    for c in _unique(candidates):
        if c.peer_id in excluded or not _has_capacity(c, max_tokens) or not c.start <= start < end <= c.end:
            continue
        if params.whole_ranges and (c.start, c.end) != (start, end):
            continue
        eligible.append((params.hop_cost(c, start, end), c.peer_id, c))
    if not eligible:
        raise NoRoute(start, end, "no other single provider with free capacity serves all of them")
    eligible.sort(key=lambda e: e[:2])
    cost, _, c = eligible[rng.randrange(len(eligible))] if rng is not None else eligible[0]
    return Route(start, end, (_hop(c, start, end, params),), cost)


# --- internals -------------------------------------------------------------------------------------------

#: Usable servers (sorted by peer id) with, per layer of the span, whether each may compute it.
Servers = list[tuple[Candidate, list[bool]]]


def _unique(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Candidates sorted by peer id, so that results never depend on the caller's order."""
    out = sorted(candidates, key=lambda c: c.peer_id)
    for a, b in zip(out, out[1:], strict=False):
        if a.peer_id == b.peer_id:
            raise ValueError(f"duplicate candidate {a.peer_id}: pass one entry per peer")
    return out


def _slots(c: Candidate, max_tokens: int) -> int:
    """How many hops of one route ``c`` can take: each hop is a session holding up to ``max_tokens`` tokens."""
    return min(c.free_sessions, c.free_cache_tokens // max_tokens)


def _has_capacity(c: Candidate, max_tokens: int) -> bool:
    return _slots(c, max_tokens) >= 1


def _usable_layers(
    candidates: Iterable[Candidate],
    start: int,
    end: int,
    max_tokens: int,
    banned: set[str],
    avoid: Iterable[Avoid],
) -> Servers:
    """Each usable server with, per layer of ``[start, end)``, whether it may compute that layer."""
    avoided: dict[str, list[Avoid]] = {}
    for a in avoid:
        avoided.setdefault(a.peer_id, []).append(a)
    out = []
    for c in _unique(candidates):
        lo, hi = max(c.start, start), min(c.end, end)
        if lo >= hi or c.peer_id in banned or not _has_capacity(c, max_tokens):
            continue
        ok = [lo <= layer < hi for layer in range(start, end)]
        for a in avoided.get(c.peer_id, ()):
            for layer in range(max(a.start, lo), min(a.end, hi)):
                ok[layer - start] = False
        if any(ok):
            out.append((c, ok))
    return out


def _first_gap(servers: Servers, start: int, end: int) -> tuple[int, int] | None:
    covered = [any(ok[i] for _, ok in servers) for i in range(end - start)]
    if all(covered):
        return None
    first = covered.index(False)
    last = first
    while last < len(covered) and not covered[last]:
        last += 1
    return start + first, start + last


def _why_uncovered(
    candidates: Iterable[Candidate], layer: int, max_tokens: int, banned: set[str], avoid: Iterable[Avoid]
) -> str:
    """Why each server holding ``layer`` was not usable, as a short sentence a user can act on."""
    avoid = list(avoid)
    holders = [c for c in candidates if c.start <= layer < c.end]
    if not holders:
        return "no server serves them"

    def is_excluded(c: Candidate) -> bool:
        return c.peer_id in banned or any(a.peer_id == c.peer_id and a.start <= layer < a.end for a in avoid)

    excluded = sum(map(is_excluded, holders))
    rest = [c for c in holders if not is_excluded(c)]
    busy = sum(c.free_sessions < 1 for c in rest)
    short = sum(c.free_sessions >= 1 and c.free_cache_tokens < max_tokens for c in rest)
    parts = [
        f"{n} {what}"
        for n, what in (
            (excluded, "banned or avoided"),
            (busy, "without a free session"),
            (short, f"without {max_tokens} free cache tokens"),
        )
        if n
    ]
    return f"{len(holders)} server(s) hold them but are unusable: " + ", ".join(parts)


def _hop(c: Candidate, start: int, end: int, params: RouteParams) -> Hop:
    return Hop(
        peer_id=c.peer_id,
        start=start,
        end=end,
        latency_ms=params.latency_ms(c) + params.hop_overhead_ms,
        compute_ms=(end - start) * params.layer_ms(c),
        price_wei=(end - start) * c.price_wei,
    )


def _within_slots(servers: Servers, start: int, end: int, params: RouteParams, max_tokens: int) -> Route:
    """The shortest route that gives no server more hops than it has slots (see `_slots`).

    The shortest path may visit a server twice (leave it for a cheaper one, come back): each visit is a
    session. When a server gets more visits than it has slots, a best-first search over restricted graphs
    tries, for that server, each of: keep it off one of its hops; make it carry the gap between two of its
    hops itself (others kept off the gap). The first route within every server's slots wins: it is the
    optimum whenever the plain shortest path fits (the usual case), else the best route the search found.
    Raises `NoRoute` when neither the search nor a greedy cover finds a route within the slots.
    """
    slots = {c.peer_id: _slots(c, max_tokens) for c, _ in servers}
    first = _shortest(servers, start, end, params)
    heap: list[tuple[int, int, int, Route, Servers]] = [(first.cost, len(first.hops), 0, first, servers)]
    pushed = expanded = 0
    while heap and expanded < _MAX_REPAIRS:
        *_, route, graph = heapq.heappop(heap)
        over = sorted(p for p, n in Counter(route.peers).items() if n > slots[p])
        if not over:
            return route
        expanded += 1
        for alt in _restrictions(graph, route, over[0], start):
            if _first_gap(alt, start, end) is None:
                found = _shortest(alt, start, end, params)
                pushed += 1
                heapq.heappush(heap, (found.cost, len(found.hops), pushed, found, alt))
    route = _greedy_cover(servers, start, end, params, slots)
    if route is None:
        raise NoRoute(
            start, end, "every layer is served, but not without giving a server more hops than it has slots"
        )
    return route


def _restrictions(graph: Servers, route: Route, peer: str, start: int) -> list[Servers]:
    """Sub-graphs that each rule out the current over-use of ``peer`` (see `_within_slots`)."""
    k = next(i for i, (c, _) in enumerate(graph) if c.peer_id == peer)
    visits = [h for h in route.hops if h.peer_id == peer]
    out = []
    for h in visits:
        ok = list(graph[k][1])
        ok[h.start - start : h.end - start] = [False] * (h.end - h.start)
        out.append([*graph[:k], (graph[k][0], ok), *graph[k + 1 :]])
    for h1, h2 in zip(visits, visits[1:], strict=False):
        gap = range(h1.end - start, h2.start - start)
        if all(graph[k][1][i] for i in gap):
            alt = []
            for i, (c, ok) in enumerate(graph):
                if i != k and any(ok[j] for j in gap):
                    ok = [v and j not in gap for j, v in enumerate(ok)]
                alt.append((c, ok))
            out.append(alt)
    return out


def _greedy_cover(
    servers: Servers, start: int, end: int, params: RouteParams, slots: dict[str, int]
) -> Route | None:
    """Fewest hops within the slots: from each layer, the server whose usable run reaches furthest."""
    left = dict(slots)
    hops, cost, i, n = [], 0, 0, end - start
    while i < n:
        best: tuple[int, str, Candidate] | None = None
        for c, ok in servers:
            if ok[i] and left[c.peer_id] > 0:
                j = i
                while j < n and ok[j]:
                    j += 1
                if best is None or (-j, c.peer_id) < (-best[0], best[1]):
                    best = (j, c.peer_id, c)
        if best is None:
            return None
        j, _, c = best
        left[c.peer_id] -= 1
        hops.append(_hop(c, start + i, start + j, params))
        cost += params.hop_cost(c, start + i, start + j)
        i = j
    return Route(start, end, tuple(hops), cost)


def _shortest(servers: Servers, start: int, end: int, params: RouteParams) -> Route:
    """Exact shortest path over the layer graph; the caller has checked that every layer is covered.

    Nodes: ``B(l)``, the hidden state back at the client after layer ``l``, and ``(p, l)``, inside server
    ``p`` having computed up to layer ``l``. Edges: enter ``B(l) -> (p, l+1)`` (round trip + one layer),
    stay ``(p, l) -> (p, l+1)`` (one layer), leave ``(p, l) -> B(l)`` (free). Every edge moves forward in
    layers or leaves to the hub at the same layer, so the graph is acyclic: relaxing it backwards in layer
    order gives Dijkstra's distances in linear time, and lets the forward walk apply the tie-breaking rule.
    A value packs (cost, hops) so that, at equal cost, fewer hops win.
    """
    n = end - start
    inf = math.inf
    oks = [ok for _, ok in servers]
    enter = [(params.entry_cost(c) << _HOP_BITS) + 1 for c, _ in servers]
    step = [params.layer_cost(c) << _HOP_BITS for c, _ in servers]
    at: list[list[int]] = [[] for _ in range(n)]  # servers that may compute layer start + i, by peer id
    for k, ok in enumerate(oks):
        for i in range(n):
            if ok[i]:
                at[i].append(k)
    # hub[i]: best value from B(start + i) to the end; inside[k][i]: from (server k, start + i).
    hub: list[float] = [inf] * (n + 1)
    hub[n] = 0
    inside: list[list[float]] = [[inf] * (n + 1) for _ in servers]
    for i in range(n - 1, -1, -1):
        nxt = i + 1
        best = inf
        for k in at[i]:
            stay = step[k] + inside[k][nxt + 1] if nxt < n and oks[k][nxt] else inf
            after = inside[k][nxt] = min(stay, hub[nxt])
            v = enter[k] + step[k] + after
            if v < best:
                best = v
        hub[i] = best
    # Forward walk: at the hub take the smallest peer id among optimal entries; inside a server, stay
    # rather than leave when both are optimal (longest first hop). Servers are sorted by peer id.
    hops: list[Hop] = []
    i = 0
    while i < n:
        k = next(k for k in at[i] if enter[k] + step[k] + inside[k][i + 1] == hub[i])
        c, ok = servers[k]
        j = i + 1
        while j < n and ok[j] and step[k] + inside[k][j + 1] == inside[k][j]:
            j += 1
        hops.append(_hop(c, start + i, start + j, params))
        i = j
    return Route(start, end, tuple(hops), int(hub[0]) >> _HOP_BITS)


def _shortest_whole(servers: Servers, start: int, end: int, params: RouteParams) -> Route:
    """Shortest tiling of ``[start, end)`` by servers' whole ranges (see `RouteParams.whole_ranges`).

    Nodes are layer boundaries; a server is an edge from its first layer to its end, usable only if it may
    compute every layer of its range. Boundaries only grow, so each server is used at most once and one
    backward pass is exact. Ties: lowest cost, then fewest hops, then the smallest peer ids hop by hop.
    Raises `NoRoute` naming the layers after the furthest boundary a tiling can reach.
    """
    edges: dict[int, list[tuple[Candidate, int]]] = {}
    for c, ok in servers:
        if start <= c.start and c.end <= end and all(ok[c.start - start : c.end - start]):
            edges.setdefault(c.start, []).append((c, c.end))
    # best[b]: (cost, hops, peer ids) from boundary b to the end.
    best: dict[int, tuple[int, int, tuple[str, ...]]] = {end: (0, 0, ())}
    for b in sorted(edges, reverse=True):
        for c, nxt in edges[b]:
            if nxt in best:
                cost, hops, ids = best[nxt]
                cand = (cost + params.hop_cost(c, b, nxt), hops + 1, (c.peer_id, *ids))
                if b not in best or cand < best[b]:
                    best[b] = cand
    if start not in best:
        reach, frontier = {start}, [start]
        while frontier:
            b = frontier.pop()
            for _c, nxt in edges.get(b, ()):
                if nxt not in reach:
                    reach.add(nxt)
                    frontier.append(nxt)
        stuck = max(reach)
        raise NoRoute(stuck, end, "no chain of servers' whole layer ranges continues from there")
    by_id = {c.peer_id: c for c, _ in servers}
    hops, b = [], start
    for peer in best[start][2]:
        c = by_id[peer]
        hops.append(_hop(c, b, c.end, params))
        b = c.end
    return Route(start, end, tuple(hops), best[start][0])
