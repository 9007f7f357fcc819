"""Fixtures for distributed generation: a tiny checkpoint, its transformers oracle, devnets."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.inference.maketiny import make_tiny
from tests.oracle import hf_greedy, load_hf

LAYERS = 6


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gen") / "tiny-gen"
    make_tiny(path, arch="llama", layers=LAYERS, hidden=64, heads=4, kv_heads=2, vocab=384, seed=11)
    return path


@pytest.fixture(scope="session")
def oracle(tiny_model):
    """Greedy continuation by transformers: (text prompt, n) -> generated text, cut at the first EOS."""
    from node.inference.config import ModelConfig
    from node.inference.tokenizer import TextTokenizer

    model = load_hf(tiny_model)
    tok = TextTokenizer(tiny_model)
    eos = set(ModelConfig.load(tiny_model).eos_token_ids)

    def greedy(prompt: str, n: int) -> tuple[list[int], str]:
        out = hf_greedy(model, tok.encode(prompt), n)
        for i, t in enumerate(out):
            if t in eos:
                out = out[:i]
                break
        return out, tok.decode(out)

    return greedy
