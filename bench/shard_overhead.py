"""Fixed per-call cost of a shard: a chain of small in-process shards vs the same layers in one shard.

    .venv/bin/python bench/shard_overhead.py [--layers 6] [--hidden 256] [--split 3] [--tokens 40] [--rounds 5]

The same random checkpoint is run as one shard (all layers, embedding and head) and as `--split` shards
of consecutive layers, one decode token at a time, in interleaved rounds of one process with one tinygrad
thread (like one node of bench/pipeline.py). Each extra shard adds one `Shard.forward` call (input
copy-in, compiled-step replay, output copy-out, Python checks) and nothing else, so
(chain - whole) / (split - 1) is the fixed cost of one call. Both engines are measured in the same run:
tinygrad's own jit replay and the shard's direct CPU replay (`ShardModel.fast_cpu`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DEV", "CPU:LLVM")
os.environ.setdefault("NUM_CPU_THREADS", "1")

import numpy as np

from node.inference.maketiny import make_tiny
from node.inference.shard import Shard


def load(model: Path, layers: int, split: int, fast: bool) -> list[tuple[Shard, int]]:
    bounds = [round(i * layers / split) for i in range(split + 1)]
    ranges = [(0, layers)] + list(zip(bounds, bounds[1:], strict=False))
    out = []
    for a, b in ranges:
        shard = Shard(model, a, b, max_sessions=1, max_context=512, warmup=False)
        shard.model.fast_cpu = fast
        shard.warmup()
        out.append((shard, shard.open_session(512)))
    return out


def ms_per_token(chain: list[tuple[Shard, int]], n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        x: np.ndarray = np.array([i % 100 + 1], np.int32)
        for shard, sid in chain:
            x = shard.forward(sid, x, i)
    return (time.perf_counter() - t) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--split", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="steppe-bench-"))
    try:
        model = root / "model"
        make_tiny(
            model,
            arch="llama",
            layers=args.layers,
            hidden=args.hidden,
            heads=8,
            kv_heads=4,
            vocab=2048,
            seed=5,
        )
        engines = {
            name: load(model, args.layers, args.split, fast)
            for name, fast in (("tinygrad", False), ("direct", True))
        }
        res: dict[str, list[float]] = {}
        for shards in engines.values():  # warm
            ms_per_token(shards[:1], 3), ms_per_token(shards[1:], 3)
        for _ in range(args.rounds):
            for name, shards in engines.items():
                res.setdefault(name + " whole", []).append(ms_per_token(shards[:1], args.tokens))
                res.setdefault(name + " chain", []).append(ms_per_token(shards[1:], args.tokens))
        med = {k: statistics.median(v) for k, v in res.items()}
        print(
            f"model: {args.layers} layers, hidden {args.hidden}; whole vs {args.split} chained shards; "
            f"threads {os.environ['NUM_CPU_THREADS']}"
        )
        for name in engines:
            whole, chain = med[name + " whole"], med[name + " chain"]
            per_call = (chain - whole) / (args.split - 1)
            print(
                f"{name:>8} replay: whole {whole:6.2f} ms/token, chain {chain:6.2f} ms/token, ratio chain/whole "
                f"{chain / whole:.2f}x, fixed cost per call {per_call:5.2f} ms"
            )
        base, new = med["tinygrad whole"], med["direct whole"]
        print(f"direct replay vs tinygrad replay (whole model): {base / new:.2f}x faster")
        print("rounds (ms/token):", {k: [round(x, 2) for x in v] for k, v in res.items()})
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
