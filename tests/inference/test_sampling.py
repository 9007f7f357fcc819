"""Sampling: greedy, temperature, top-k, top-p, repetition penalty, stop tokens, seeds."""

from __future__ import annotations

import numpy as np

from node.inference.sampling import Sampler, SamplingParams

LOGITS = np.array([0.1, 2.0, 1.9, -1.0, 0.5, 1.0])


def draws(params: SamplingParams, n: int = 200, history=()) -> list[int]:
    s = Sampler(params)
    return [s(LOGITS, list(history)) for _ in range(n)]


def test_greedy_picks_the_largest_logit():
    assert set(draws(SamplingParams(), 5)) == {1}


def test_the_same_seed_gives_the_same_tokens_and_another_seed_differs():
    p = SamplingParams(temperature=1.0, seed=7)
    assert draws(p) == draws(p)
    assert draws(p) != draws(SamplingParams(temperature=1.0, seed=8))


def test_top_k_and_top_p_restrict_the_candidates():
    assert set(draws(SamplingParams(temperature=5.0, top_k=2, seed=1))) == {1, 2}
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.5, seed=1))) <= {1, 2}
    assert set(draws(SamplingParams(temperature=1.0, top_k=1, seed=1))) == {1}


def test_a_high_temperature_spreads_the_choices():
    assert len(set(draws(SamplingParams(temperature=10.0, seed=3)))) == len(LOGITS)


def test_repetition_penalty_demotes_tokens_already_generated():
    assert draws(SamplingParams(repetition_penalty=2.0), 1, history=[1]) == [2]


def test_stop_tokens_are_recognised():
    s = Sampler(SamplingParams(stop_tokens=frozenset({4})))
    assert s.is_stop(4) and not s.is_stop(1)
