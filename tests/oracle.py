"""The outside oracle: Hugging Face transformers (CPU torch) on the same checkpoint as the code under test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def load_hf(path: Path):
    """The checkpoint as a transformers model in fp32 eval mode; skips the test without the oracle extra."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(1)
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    """Exactly ``n`` greedy tokens after ``ids`` (EOS does not stop it)."""
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(ids) :].tolist()
