"""Route choice: time to route an 80-layer model over 10/100/1000 servers, against references in the same run.

References: a naive greedy cover (at each layer take the server that reaches furthest: fewest hops, blind to
latency and price), timed and scored on the same objective; and, on tiny instances where it is feasible, a
brute-force search over every hop sequence (checks optimality and shows what exhaustive search would cost).

    python bench/route.py [--seed N] [--repeat N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Iterator

from node.logging import configure_logging
from protocol.route import Candidate, Route, RouteParams, choose_route

NUM_LAYERS = 80
SHARD_SIZES = (4, 8, 10, 16, 20, 40)


def swarm(rng: random.Random, n: int, num_layers: int = NUM_LAYERS) -> list[Candidate]:
    """``n`` servers with realistic shard sizes; the first few tile the model so a route always exists."""
    out: list[Candidate] = []
    tiles = min(5, n)
    tile = -(-num_layers // tiles)
    for i in range(n):
        tiling = i < tiles
        if tiling:
            start, size = i * tile, tile
        else:
            size = min(rng.choice(SHARD_SIZES), num_layers)
            start = rng.randrange(0, num_layers - size + 1)
        out.append(
            Candidate(
                peer_id=f"peer{i:05d}",
                start=start,
                end=min(start + size, num_layers),
                free_sessions=8 if tiling else rng.choice((0, 1, 2, 8, 8, 8, 8, 8, 8, 8)),
                free_cache_tokens=8192 if tiling else rng.choice((1024, 8192, 8192, 8192)),
                price_wei=rng.randrange(0, 1000),
                tokens_per_s=None if rng.random() < 0.1 else rng.uniform(5.0, 100.0),
                latency_ms=None if rng.random() < 0.1 else rng.uniform(2.0, 150.0),
            )
        )
    return out


def greedy(cands: list[Candidate], num_layers: int, max_tokens: int, params: RouteParams) -> tuple[list, int]:
    """Fewest hops: at each layer the usable server reaching furthest (ties: lower latency, then id)."""
    usable = [c for c in cands if c.free_sessions >= 1 and c.free_cache_tokens >= max_tokens]
    hops, layer = [], 0
    while layer < num_layers:
        here = [c for c in usable if c.start <= layer < c.end]
        if not here:
            raise RuntimeError(f"greedy found no server for layer {layer}")
        c = min(here, key=lambda c: (-c.end, params.latency_ms(c), c.peer_id))
        hops.append((c, layer, min(c.end, num_layers)))
        layer = min(c.end, num_layers)
    return hops, sum(params.hop_cost(c, a, b) for c, a, b in hops)


def brute_force(cands: list[Candidate], num_layers: int, max_tokens: int, params: RouteParams) -> int:
    """The minimum objective over every hop sequence (exponential)."""
    usable = [c for c in cands if c.free_sessions >= 1 and c.free_cache_tokens >= max_tokens]

    def chains(layer: int) -> Iterator[int]:
        if layer == num_layers:
            yield 0
            return
        for c in usable:
            if c.start <= layer < c.end:
                for end in range(layer + 1, min(c.end, num_layers) + 1):
                    head = params.hop_cost(c, layer, end)
                    for rest in chains(end):
                        yield head + rest

    return min(chains(0))


def per_call_s(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    configure_logging("console", "warning")
    rng = random.Random(args.seed)
    params = RouteParams(price_weight=0.01)  # 100 wei per token per layer ~ 1 ms
    max_tokens = 2048

    print(f"route choice, {NUM_LAYERS} layers, λ={params.price_weight} ms/wei, median of {args.repeat} runs")
    latency_only = RouteParams()
    print(
        f"{'servers':>8} {'route ms':>9} {'greedy ms':>10} {'time ratio':>11} {'greedy/route cost':>18}"
        f" {'same, λ=0':>10} {'hops':>5}"
    )
    for n in (10, 100, 1000):
        cands = swarm(rng, n)
        route: Route = choose_route(cands, NUM_LAYERS, max_tokens=max_tokens, params=params)
        g_hops, g_cost = greedy(cands, NUM_LAYERS, max_tokens, params)
        lat_ratio = (
            greedy(cands, NUM_LAYERS, max_tokens, latency_only)[1]
            / choose_route(cands, NUM_LAYERS, max_tokens=max_tokens, params=latency_only).cost
        )
        t_route = per_call_s(
            lambda c=cands: choose_route(c, NUM_LAYERS, max_tokens=max_tokens, params=params), args.repeat
        )
        t_greedy = per_call_s(lambda c=cands: greedy(c, NUM_LAYERS, max_tokens, params), args.repeat)
        print(
            f"{n:>8} {t_route * 1e3:>9.2f} {t_greedy * 1e3:>10.2f} {t_route / t_greedy:>10.1f}x"
            f" {g_cost / route.cost:>17.2f}x {lat_ratio:>9.2f}x {len(route.hops):>2}/{len(g_hops):<2}"
        )

    # Brute force is exponential in the number of layers: only tiny models are feasible.
    small_layers, small_n = 8, 6
    cands = swarm(rng, small_n, small_layers)
    route = choose_route(cands, small_layers, max_tokens=max_tokens, params=params)
    best = brute_force(cands, small_layers, max_tokens, params)
    t_route = per_call_s(
        lambda: choose_route(cands, small_layers, max_tokens=max_tokens, params=params), args.repeat
    )
    t_brute = per_call_s(lambda: brute_force(cands, small_layers, max_tokens, params), 1)
    print(
        f"brute force ({small_layers} layers, {small_n} servers): route {t_route * 1e3:.3f} ms, "
        f"brute {t_brute * 1e3:.1f} ms, speed-up {t_brute / t_route:.0f}x, same cost: {route.cost == best}"
    )


if __name__ == "__main__":
    main()
