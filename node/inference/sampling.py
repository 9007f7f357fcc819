"""Choosing the next token from logits (numpy, on the caller's thread; cheap next to a forward step)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop_tokens: frozenset[int] = field(default_factory=frozenset)
    seed: int | None = None


class Sampler:
    """Stateful sampler for one generation: a seeded RNG makes the whole sequence reproducible."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, history: list[int]) -> int:
        p = self.params
        x = np.asarray(logits, dtype=np.float64).copy()
        if p.repetition_penalty != 1.0 and history:
            # Same rule as the common implementations: shrink positive logits, grow negative ones.
            idx = np.unique(np.asarray(history, dtype=np.int64))
            vals = x[idx]
            x[idx] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if p.temperature <= 0.0:
            return int(np.argmax(x))
        x = x / p.temperature
        if 0 < p.top_k < x.size:
            kth = np.partition(x, -p.top_k)[-p.top_k]
            x[x < kth] = -np.inf
        probs = np.exp(x - np.max(x))
        probs /= probs.sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cum = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cum, p.top_p) + 1)]
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask / mask.sum()
        return int(self.rng.choice(probs.size, p=probs))

    def is_stop(self, token: int) -> bool:
        return token in self.params.stop_tokens
