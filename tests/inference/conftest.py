"""Fixtures for the inference tests: tiny random checkpoints and their transformers oracles.

tinygrad reads DEV and NUM_CPU_THREADS at import, so they are set here before anything imports it.
"""

from __future__ import annotations

import os

os.environ.setdefault("DEV", "CPU:LLVM")
os.environ.setdefault("NUM_CPU_THREADS", "1")

import numpy as np
import pytest

from node.inference.maketiny import make_tiny
from tests.oracle import hf_greedy, hf_logits, load_hf

__all__ = ["hf_greedy", "hf_logits"]

TINY = {"layers": 3, "hidden": 64, "heads": 4, "kv_heads": 2, "vocab": 384}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("models")
    out = {}
    for arch, seed in (("llama", 1), ("qwen2", 2)):
        make_tiny(root / arch, arch=arch, seed=seed, **TINY)
        out[arch] = root / arch
    return out


@pytest.fixture(scope="session")
def hf_oracle(tiny_models):
    cache = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = load_hf(tiny_models[arch])
        return cache[arch]

    return get


# 21 tokens: more than one prefill chunk plus a remainder
PROMPT = [5, 17, 200, 33, 9, 100, 42, 7, 8, 300, 11, 250, 3, 99, 120, 64, 1, 2, 77, 310, 45]


@pytest.fixture(scope="session")
def load_shard(tiny_models):
    """Loaded shards shared across tests (compiling is the slow part); tests must close their sessions."""
    from node.inference.worker import AsyncShard

    cache: dict = {}

    def get(arch: str, start: int, end: int, devices: tuple[str, ...] | None = None, **kw):
        key = (arch, start, end, devices, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = AsyncShard.load_sync(
                tiny_models[arch],
                start=start,
                end=end,
                devices=list(devices) if devices else None,
                max_sessions=3,
                max_context=96,
                chunk=8,
                warmup=False,
                **kw,
            )
        return cache[key]

    return get


def run_chain(chain, ids: list[int], wire_dtype: str = "float32") -> np.ndarray:
    """Logits of every position of `ids` through a chain of shards, run on the tinygrad worker."""
    from protocol.hidden import decode_hidden_untrusted, encode_hidden

    def work():
        sids = [s.shard.open_session(len(ids)) for s in chain]
        try:
            x = np.asarray(ids, np.int32)
            for s, sid in zip(chain, sids, strict=True):
                if x.dtype.kind == "f":
                    wire = encode_hidden(x, wire_dtype)
                    x = decode_hidden_untrusted(wire, len(wire))
                # prompt in one call (chunk + remainder), then the last two tokens as decode steps
                x = np.concatenate(
                    [
                        s.shard.forward(sid, x[:-2], 0),
                        s.shard.forward(sid, x[-2:-1], len(ids) - 2),
                        s.shard.forward(sid, x[-1:], len(ids) - 1),
                    ]
                )
            return x
        finally:
            for s, sid in zip(chain, sids, strict=True):
                s.shard.close_session(sid)

    return chain[0].worker.run_sync(work)
