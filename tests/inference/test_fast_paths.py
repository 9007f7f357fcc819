"""The engine's fast CPU paths against transformers: the row split of wide matmuls (>= 1024 output rows)
and the direct jit replay with helper threads. The rest of the suite runs with one thread and narrow
layers, so these paths need their own oracle check, in a fresh process with two threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from node.inference.maketiny import make_tiny

PROMPT = "the cat sat on the wide steppe and"


def test_wide_layers_with_two_threads_generate_what_transformers_generates(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = tmp_path / "wide"
    # intermediate 1536 and vocab 1100: both above the 1024-row split threshold
    make_tiny(
        model, arch="llama", layers=2, hidden=128, heads=4, kv_heads=2, vocab=1100, intermediate=1536, seed=9
    )
    env = {**os.environ, "NUM_CPU_THREADS": "2", "DEV": "CPU:LLVM"}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from node.cli import main; main()",
            "generate",
            "--model",
            str(model),
            "--max-tokens",
            "16",
            "--json",
            "--temperature",
            "0",
            PROMPT,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])["tokens"]

    from node.inference.config import ModelConfig
    from node.inference.tokenizer import TextTokenizer

    ids = TextTokenizer(model).encode(PROMPT)
    hf = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf.generate(
            torch.tensor([ids]),
            max_new_tokens=16,
            min_new_tokens=16,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0, len(ids) :].tolist()
    eos = set(ModelConfig.load(model).eos_token_ids)
    cut = next((i for i, t in enumerate(want) if t in eos), len(want))
    assert got == want[:cut]
