"""Oracle-exact tests: tinygrad shards against Hugging Face transformers on make-tiny checkpoints (fp32)."""

from __future__ import annotations

import numpy as np
import pytest

from node.inference.generate import generate
from node.inference.sampling import Sampler, SamplingParams
from tests.inference.conftest import PROMPT, hf_greedy, hf_logits, run_chain

pytestmark = pytest.mark.oracle
CHAINS = {1: [(0, 3)], 2: [(0, 2), (2, 3)], 3: [(0, 1), (1, 2), (2, 3)]}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("parts", [1, 2, 3])
def test_shard_chain_logits_match_transformers(arch, parts, load_shard, hf_oracle):
    chain = [load_shard(arch, a, b) for a, b in CHAINS[parts]]
    got = run_chain(chain, PROMPT)
    want = hf_logits(hf_oracle(arch), PROMPT)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4


async def _greedy(chain, ids, n, wire_dtype="float32"):
    return [t async for t in generate(chain, ids, n, Sampler(SamplingParams()), wire_dtype)]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
async def test_greedy_32_tokens_equal_transformers_generate(arch, load_shard, hf_oracle):
    want = hf_greedy(hf_oracle(arch), PROMPT[:7], 32)
    assert await _greedy([load_shard(arch, 0, 3)], PROMPT[:7], 32) == want
    assert await _greedy([load_shard(arch, a, b) for a, b in CHAINS[3]], PROMPT[:7], 32) == want


async def test_fp16_hidden_states_between_shards_give_the_same_greedy_tokens(load_shard, hf_oracle):
    want = hf_greedy(hf_oracle("llama"), PROMPT[:5], 32)
    chain = [load_shard("llama", a, b) for a, b in CHAINS[2]]
    assert await _greedy(chain, PROMPT[:5], 32, wire_dtype="float16") == want


def test_two_interleaved_sessions_give_the_same_logits_as_run_alone(load_shard):
    s = load_shard("qwen2", 0, 3)
    a_ids, b_ids = PROMPT[:12], PROMPT[9:]

    def interleaved():
        a, b = s.shard.open_session(32), s.shard.open_session(32)
        try:
            out_a = [s.shard.forward(a, np.asarray(a_ids[:10], np.int32), 0)]
            out_b = [s.shard.forward(b, np.asarray(b_ids[:9], np.int32), 0)]
            for i in range(10, 12):
                out_a.append(s.shard.forward(a, np.asarray([a_ids[i]], np.int32), i))
                out_b.append(s.shard.forward(b, np.asarray([b_ids[i - 1]], np.int32), i - 1))
            return np.concatenate(out_a), np.concatenate(out_b)
        finally:
            s.shard.close_session(a)
            s.shard.close_session(b)

    got_a, got_b = s.worker.run_sync(interleaved)
    alone_a, alone_b = run_chain([s], a_ids), run_chain([s], b_ids[:11])
    assert np.array_equal(got_a, alone_a)
    assert np.array_equal(got_b, alone_b)


def test_rewinding_a_session_recomputes_from_that_position(load_shard, hf_oracle):
    s = load_shard("llama", 0, 3)
    other = [PROMPT[0], PROMPT[1], 42, 43, 44]

    def work():
        sid = s.shard.open_session(32)
        try:
            s.shard.forward(sid, np.asarray(PROMPT[:10], np.int32), 0)
            return s.shard.forward(sid, np.asarray(other[2:], np.int32), 2)
        finally:
            s.shard.close_session(sid)

    got = s.worker.run_sync(work)
    assert np.abs(got - hf_logits(hf_oracle("llama"), other)[2:]).max() <= 1e-4


def test_a_shard_split_over_two_cpu_devices_matches_transformers(load_shard, hf_oracle):
    s = load_shard("llama", 0, 3, devices=("CPU:0", "CPU:1"))
    assert {layer.device for layer in s.shard.model.layers} == {"CPU:0", "CPU:1"}
    got = run_chain([s], PROMPT)
    assert np.abs(got - hf_logits(hf_oracle("llama"), PROMPT)).max() <= 1e-4


def test_fp16_compute_stays_close_to_transformers_and_picks_the_same_tokens(load_shard, hf_oracle):
    got = run_chain([load_shard("llama", 0, 3, dtype="float16")], PROMPT)
    want = hf_logits(hf_oracle("llama"), PROMPT)
    assert np.abs(got - want).max() <= 0.05
    assert np.array_equal(got.argmax(-1), want.argmax(-1))
