"""The cost-model backend: deterministic, agreeing across providers, costing virtual time, refusing like a
real shard."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from node.inference.config import ModelConfig
from node.inference.maketiny import make_tiny
from node.inference.shard import SessionError
from sim.backend import CostModel, CostModelShard, cost_forward, reference_generation


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> ModelConfig:
    path = tmp_path_factory.mktemp("cost") / "m"
    make_tiny(path, layers=4, hidden=16, heads=4, kv_heads=2, vocab=300, seed=1)
    return ModelConfig.load(path)


async def test_two_providers_of_one_span_return_identical_rows_and_pay_virtual_time(
    config: ModelConfig, autojump_clock
) -> None:
    cost = CostModel(per_token_layer_s=0.01, base_s=0.005)
    a = CostModelShard(config, 0, 2, cost=cost)
    b = CostModelShard(config, 0, 2, cost=cost)
    tokens = np.asarray([5, 6, 7], np.int32)
    sa, sb = await a.open_session(16), await b.open_session(16)
    t0 = trio.current_time()
    out_a = await a.forward(sa, tokens, 0)
    assert trio.current_time() - t0 == pytest.approx(0.005 + 0.01 * 3 * 2)
    out_b = await b.forward(sb, tokens, 0)
    assert out_a.shape == (3, config.hidden_size) and out_a.dtype == np.float32
    assert np.array_equal(out_a, out_b)
    # Another position or another input gives other rows.
    assert not np.array_equal(out_a[1:], await a.forward(sa, tokens[:2], 1))


async def test_the_head_returns_logits_and_the_last_shard_takes_hidden_rows(config, autojump_clock) -> None:
    head = CostModelShard(config, 2, 4, cost=CostModel())
    assert head.has_head and not head.shard.embed
    sid = await head.open_session(8)
    logits = await head.forward(sid, np.zeros((2, config.hidden_size), np.float32), 0)
    assert logits.shape == (2, config.vocab_size)
    with pytest.raises(SessionError):
        await head.forward(sid, np.asarray([1], np.int32), 2)  # token ids to a shard without the embedding


async def test_session_limits_refuse_like_a_shard(config, autojump_clock) -> None:
    shard = CostModelShard(config, 0, 4, cost=CostModel(), max_sessions=1, max_context=8)
    sid = await shard.open_session(8)
    with pytest.raises(SessionError, match="busy"):
        await shard.open_session(4)
    with pytest.raises(SessionError, match="not allowed"):
        await shard.forward(sid, np.asarray([1, 2], np.int32), 3)  # skips ahead of position 0
    await shard.close_session(sid)
    assert shard.shard.free_cache_tokens == 8


def test_the_reference_generation_is_the_chain_of_spans(config: ModelConfig) -> None:
    prompt = [10, 20, 30]
    got = reference_generation(config, [(0, 2), (2, 4)], prompt, 4)
    assert len(got) == 4 and got == reference_generation(config, [(0, 2), (2, 4)], prompt, 4)
    # By hand: the first token is the argmax of the head's last row for the prompt.
    hidden = cost_forward(config, (0, 2), False, np.asarray(prompt, np.int32), 0)
    logits = cost_forward(config, (2, 4), True, hidden, 0)
    assert got[0] == int(np.argmax(logits[-1]))
    assert not set(got) & set(config.eos_token_ids)
