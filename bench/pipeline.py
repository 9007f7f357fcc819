"""Per-token latency of a 3-hop chain over loopback vs the same model in one process, same run.

    .venv/bin/python bench/pipeline.py [--tokens 48] [--layers 6] [--hidden 256] [--nodes 3]

Reference: the whole model as one in-process shard (tinygrad, one worker thread). Network: `--nodes` real
`steppe run` processes on 127.0.0.1 plus a gateway, a greedy completion through the OpenAI API; the
client reports per-hop wall time and the hop's own compute time, whose difference is the per-hop overhead
(sealing, framing, libp2p, the round trip). Both sides use one tinygrad thread per process. Prints the
ratio (goal <= 1.15x) and the per-hop overhead (goal <= 3 ms).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DEV", "CPU:LLVM")
os.environ["NUM_CPU_THREADS"] = "1"

import httpx
import numpy as np
import trio

from node.devnet import Devnet
from node.inference.generate import generate
from node.inference.maketiny import make_tiny
from node.inference.sampling import Sampler, SamplingParams
from node.inference.tokenizer import TextTokenizer
from node.inference.worker import AsyncShard
from node.logging import configure_logging

PROMPT = "the steppe is wide and the wind"


def local_ms_per_token(model: Path, n: int) -> tuple[float, list[int]]:
    ids = TextTokenizer(model).encode(PROMPT)

    async def run() -> tuple[float, list[int]]:
        shard = await AsyncShard.load(model, max_sessions=1, max_context=len(ids) + n + 8)
        times, out = [], []
        t = time.perf_counter()
        async for tok in generate([shard], ids, n, Sampler(SamplingParams())):
            now = time.perf_counter()
            times.append(now - t)
            t = now
            out.append(tok)
        return 1000 * float(np.median(times[1:])), out

    return trio.run(run)


def network_run(model: Path, root: Path, nodes: int, tokens: int, *, price: int) -> dict:
    """One warm-up completion, then the measured one, through a fresh devnet."""
    with Devnet(model=model, nodes=nodes, root=root, env={"NUM_CPU_THREADS": "1"}, price=price) as net:
        body = {"model": "model", "prompt": PROMPT, "max_tokens": tokens, "temperature": 0}
        httpx.post(net.api_url + "/v1/completions", json=body, timeout=300).raise_for_status()
        return httpx.post(net.api_url + "/v1/completions", json=body, timeout=300).json()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--paid", action="store_true", help="also run with payments on and print their cost")
    args = ap.parse_args()
    configure_logging("console", "warning")
    root = Path(tempfile.mkdtemp(prefix="steppe-bench-"))
    model = root / "model"
    make_tiny(
        model, arch="llama", layers=args.layers, hidden=args.hidden, heads=8, kv_heads=4, vocab=2048, seed=5
    )
    local_ms, local_tokens = local_ms_per_token(model, args.tokens)
    reply = network_run(model, root / "net", args.nodes, args.tokens, price=0)
    paid = network_run(model, root / "paid", args.nodes, args.tokens, price=10**9) if args.paid else None
    stats = reply["steppe"]
    net_ms = 1000 / stats["tokens_per_s"]
    hops = stats["hops"]
    overhead = [h["overhead_ms"] for h in hops]
    print(f"model: {args.layers} layers, hidden {args.hidden}; {args.tokens} greedy tokens; {len(hops)} hops")
    print(f"in one process      : {local_ms:7.2f} ms/token")
    print(f"{len(hops)}-hop chain (loopback): {net_ms:7.2f} ms/token")
    print(f"ratio               : {net_ms / local_ms:7.2f}x   (goal <= 1.15x)")
    for h in hops:
        print(f"  hop {h['layers']:>6}: {h['avg_ms']:6.2f} ms/step, overhead {h['overhead_ms']:5.2f} ms")
    print(f"per-hop overhead    : {np.mean(overhead):7.2f} ms mean (goal <= 3 ms)")
    print(f"same tokens as local: {reply['usage']['completion_tokens'] == len(local_tokens)}")
    if paid is not None:
        paid_ms = 1000 / paid["steppe"]["tokens_per_s"]
        print(
            f"with payments       : {paid_ms:7.2f} ms/token (a voucher per hop per step, stored before serving)"
        )
        print(
            f"payment cost        : {(paid_ms - net_ms) / net_ms * 100:6.1f}% of the per-token latency (goal < 1%)"
        )


if __name__ == "__main__":
    main()
