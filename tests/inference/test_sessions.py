"""Sessions, limits, idle eviction, the async facade and the CLI."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import trio
from typer.testing import CliRunner

from node.inference.generate import generate
from node.inference.sampling import Sampler, SamplingParams
from node.inference.shard import SessionError
from tests.inference.conftest import PROMPT


def test_session_limits_are_enforced(load_shard):
    s = load_shard("llama", 0, 3)
    shard = s.shard
    sids = [shard.open_session(32) for _ in range(3)]
    try:
        with pytest.raises(SessionError, match="slots are busy"):
            shard.open_session(8)
        with pytest.raises(SessionError, match="positions"):
            s.worker.run_sync(shard.forward, sids[0], np.arange(5, dtype=np.int32), 1)  # skips ahead
        with pytest.raises(SessionError, match="positions"):
            s.worker.run_sync(shard.forward, sids[0], np.arange(33, dtype=np.int32), 0)  # beyond max_tokens
        with pytest.raises(SessionError, match="out of range"):
            s.worker.run_sync(shard.forward, sids[0], np.array([10_000], np.int32), 0)
        with pytest.raises(SessionError, match="max_tokens"):
            shard.open_session(10_000)
    finally:
        for sid in sids:
            shard.close_session(sid)
    with pytest.raises(SessionError, match="unknown"):
        s.worker.run_sync(shard.forward, sids[0], np.arange(2, dtype=np.int32), 0)


def test_idle_sessions_are_evicted_and_free_their_slot(load_shard):
    shard = load_shard("llama", 0, 3).shard
    sids = [shard.open_session(16) for _ in range(3)]
    assert shard.describe()["free_sessions"] == 0
    assert shard.evict_idle(now=time.monotonic()) == []
    assert sorted(shard.evict_idle(now=time.monotonic() + shard.idle_timeout_s + 1)) == sorted(sids)
    sid = shard.open_session(16)
    shard.close_session(sid)


def test_a_shard_without_embedding_refuses_token_ids(load_shard):
    s = load_shard("llama", 1, 3)
    sid = s.shard.open_session(8)
    try:
        with pytest.raises(SessionError, match="no embedding"):
            s.worker.run_sync(s.shard.forward, sid, np.array([1, 2], np.int32), 0)
    finally:
        s.shard.close_session(sid)


async def test_concurrent_trio_generations_on_one_shard_match_sequential_ones(load_shard):
    chain = [load_shard("qwen2", 0, 2), load_shard("qwen2", 2, 3)]

    async def run(prompt, out):
        out.extend(
            [t async for t in generate(chain, prompt, 12, Sampler(SamplingParams(temperature=0.9, seed=5)))]
        )

    alone_a, alone_b = [], []
    await run(PROMPT[:4], alone_a)
    await run(PROMPT[5:9], alone_b)
    both_a, both_b = [], []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, PROMPT[:4], both_a)
        nursery.start_soon(run, PROMPT[5:9], both_b)
    assert (both_a, both_b) == (alone_a, alone_b)
    assert len(alone_a) == 12


def test_cli_makes_a_tiny_model_and_generates_from_it_as_a_chain(tmp_path):
    from node.cli import app

    runner = CliRunner()
    out = tmp_path / "m"
    res = runner.invoke(
        app,
        [
            "model",
            "make-tiny",
            "--out",
            str(out),
            "--arch",
            "qwen2",
            "--layers",
            "2",
            "--hidden",
            "32",
            "--heads",
            "2",
            "--kv-heads",
            "1",
            "--vocab",
            "300",
        ],
    )
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.output)["sha256"]) == 64
    args = ["generate", "--model", str(out), "--max-tokens", "6", "--json", "the cat"]
    one = runner.invoke(app, args)
    assert one.exit_code == 0, one.output
    two = runner.invoke(app, [*args[:-1], "--split", "2", "--wire-dtype", "float16", "the cat"])
    assert two.exit_code == 0, two.output
    a, b = json.loads(one.stdout.strip().splitlines()[-1]), json.loads(two.stdout.strip().splitlines()[-1])
    assert a["tokens"] == b["tokens"] and len(a["tokens"]) <= 6
    assert a["ttft_after_start_s"] > 0


def test_steppe_generate_streams_text_in_a_fresh_process_with_device_auto_detection(tiny_models):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "DEV"}
    cmd = [
        sys.executable,
        "-c",
        "from node.cli import main; main()",
        "generate",
        "--model",
        str(tiny_models["llama"]),
    ]
    out = subprocess.run(
        [*cmd, "--max-tokens", "5", "--seed", "1", "--temperature", "0.7", "the cat"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    stats = json.loads(out.stderr.strip().splitlines()[-1])
    assert stats["prompt_tokens"] > 0 and stats["ttft_after_start_s"] > 0
    bad = subprocess.run([*cmd, "--layers", "0:1", "x"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--layers" in bad.stderr
