"""Benchmark: tinygrad shard vs PyTorch eager (transformers) on the same random checkpoint, same threads.

Prints decode tokens/s, 128-token prefill time, time-to-first-token after start, peak RSS and the ratios
tinygrad/torch measured in interleaved rounds of this very run, plus the fraction of the memory-bandwidth
roofline decode reaches (bytes of weights per token / measured copy bandwidth).

    python bench/inference.py [--threads 2] [--rounds 5] [--tokens 16] [--chunk 32] [--model DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from node.logging import configure_logging


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def copy_bandwidth_gbs(np) -> float:
    a = np.ones(64 * 1024 * 1024 // 4, np.float32)  # 64 MiB, well past the caches
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best / 1e9  # read + write


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="steppe-bench-")
    try:
        run(Path(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(tmp: Path) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=16, help="decode tokens per round per engine")
    ap.add_argument("--model", type=Path, default=None, help="checkpoint folder (default: make a ~100M one)")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=16000)
    ap.add_argument("--chunk", type=int, default=32, help="compiled prefill chunk (rows)")
    args = ap.parse_args()
    configure_logging("console", "warning")
    os.environ.setdefault("DEV", "CPU:LLVM")
    os.environ["NUM_CPU_THREADS"] = str(args.threads)

    import numpy as np

    t_start = time.monotonic()
    model_dir = args.model
    if model_dir is None:
        from node.inference.maketiny import make_tiny

        model_dir = tmp / "model"
        make_tiny(
            model_dir,
            arch="llama",
            layers=args.layers,
            hidden=args.hidden,
            heads=12,
            kv_heads=4,
            vocab=args.vocab,
            intermediate=2048,
            seed=0,
        )
        t_start = time.monotonic()  # start = the node starting with the files on disk
    from node.inference.shard import Shard

    rss0 = rss_mb()
    shard = Shard(model_dir, max_sessions=1, max_context=512, chunk=args.chunk)
    rng = np.random.default_rng(0)
    cfg = shard.config
    prompt = rng.integers(0, cfg.vocab_size, 128).astype(np.int32)
    sid = shard.open_session(512)
    logits = shard.forward(sid, prompt[:8], 0)
    first = int(np.argmax(logits[-1]))
    ttft_after_start = time.monotonic() - t_start
    tg_peak = peak_rss_mb()
    tg_rss = rss_mb() - rss0

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    params = sum(p.numel() for p in hf.parameters())
    weight_bytes = params * 4

    # The lower-precision weight path: matrices kept in bfloat16 (half the bytes), compute in float32.
    # Lossless for bf16 checkpoints; this fp32 checkpoint is rounded, so only speed is compared here.
    shard16 = Shard(model_dir, max_sessions=1, max_context=512, chunk=args.chunk, weight_dtype="bfloat16")
    sid16 = shard16.open_session(512)

    def tg_decode(n: int, sh: Shard = shard, s: int = sid) -> float:
        sh.forward(s, prompt[:16], 0)
        tok = first
        t = time.perf_counter()
        for i in range(n):
            tok = int(np.argmax(sh.forward(s, np.array([tok], np.int32), 16 + i)[-1]))
        return (time.perf_counter() - t) / n

    def torch_decode(n: int) -> float:
        with torch.no_grad():
            out = hf(torch.tensor([prompt[:16].tolist()]), use_cache=True)
            past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
            t = time.perf_counter()
            for _ in range(n):
                out = hf(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
            return (time.perf_counter() - t) / n

    def tg_prefill() -> float:
        t = time.perf_counter()
        shard.forward(sid, prompt, 0)
        return time.perf_counter() - t

    def torch_prefill() -> float:
        with torch.no_grad():
            t = time.perf_counter()
            hf(torch.tensor([prompt.tolist()]), use_cache=True)
            return time.perf_counter() - t

    tg_decode(2), tg_decode(2, shard16, sid16), torch_decode(2), tg_prefill(), torch_prefill()  # warm all
    res: dict[str, list[float]] = {"tg_dec": [], "tg16_dec": [], "pt_dec": [], "tg_pre": [], "pt_pre": []}
    for _ in range(args.rounds):
        res["tg_dec"].append(tg_decode(args.tokens))
        res["tg16_dec"].append(tg_decode(args.tokens, shard16, sid16))
        res["pt_dec"].append(torch_decode(args.tokens))
        res["tg_pre"].append(tg_prefill())
        res["pt_pre"].append(torch_prefill())
    med = {k: statistics.median(v) for k, v in res.items()}
    bw = copy_bandwidth_gbs(np)
    tg_bw = weight_bytes / med["tg_dec"] / 1e9
    print(
        f"model: llama {params / 1e6:.1f}M params, fp32 weights {weight_bytes / 1e6:.0f} MB, threads {args.threads}, "
        f"device {shard.devices}"
    )
    print(
        f"decode  tinygrad {1 / med['tg_dec']:7.1f} tok/s ({med['tg_dec'] * 1e3:.1f} ms)   torch eager "
        f"{1 / med['pt_dec']:7.1f} tok/s ({med['pt_dec'] * 1e3:.1f} ms)   ratio tinygrad/torch "
        f"{med['pt_dec'] / med['tg_dec']:.2f}x"
    )
    bf = weight_bytes / 2 / med["tg16_dec"] / 1e9
    print(
        f"decode  tinygrad bf16 weights {1 / med['tg16_dec']:7.1f} tok/s ({med['tg16_dec'] * 1e3:.1f} ms)   "
        f"ratio vs torch fp32 {med['pt_dec'] / med['tg16_dec']:.2f}x   streams {bf:.1f} GB/s = {bf / bw:.0%} of copy bw"
    )
    print(
        f"prefill 128 tokens (chunks of {args.chunk}) tinygrad {med['tg_pre']:.3f} s   torch {med['pt_pre']:.3f} s   ratio "
        f"{med['pt_pre'] / med['tg_pre']:.2f}x"
    )
    print(
        f"startup: load {shard.load_seconds:.2f} s + warm-up {shard.warmup_seconds:.2f} s; "
        f"time to first token after start {ttft_after_start:.2f} s"
    )
    print(
        f"memory: tinygrad shard RSS {tg_rss:.0f} MB, peak process RSS before torch {tg_peak:.0f} MB, "
        f"after torch {peak_rss_mb():.0f} MB"
    )
    print(
        f"roofline: copy bandwidth {bw:.1f} GB/s; tinygrad decode streams {tg_bw:.1f} GB/s of weights = "
        f"{tg_bw / bw:.0%} of it (torch {weight_bytes / med['pt_dec'] / 1e9 / bw:.0%})"
    )
    print("rounds (ms/token):", {k: [round(x * 1e3, 1) for x in v] for k, v in res.items() if "dec" in k})
    sys.stdout.flush()


if __name__ == "__main__":
    main()
