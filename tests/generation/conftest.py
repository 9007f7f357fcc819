"""Fixtures for distributed generation: a tiny checkpoint, its transformers oracle, devnets."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.inference.maketiny import make_tiny

LAYERS = 6


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gen") / "tiny-gen"
    make_tiny(path, arch="llama", layers=LAYERS, hidden=64, heads=4, kv_heads=2, vocab=384, seed=11)
    return path


@pytest.fixture(scope="session")
def oracle(tiny_model):
    """Greedy continuation by transformers: (text prompt, n) -> generated text, cut at the first EOS."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from node.inference.config import ModelConfig
    from node.inference.tokenizer import TextTokenizer

    torch.set_num_threads(1)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    tok = TextTokenizer(tiny_model)
    eos = set(ModelConfig.load(tiny_model).eos_token_ids)

    def greedy(prompt: str, n: int) -> tuple[list[int], str]:
        ids = tok.encode(prompt)
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )[0, len(ids) :].tolist()
        for i, t in enumerate(out):
            if t in eos:
                out = out[:i]
                break
        return out, tok.decode(out)

    return greedy
