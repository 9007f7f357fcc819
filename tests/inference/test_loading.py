"""Checkpoint loading: make-tiny output loads in transformers, bad checkpoints fail with clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.inference.config import ModelConfig, ModelLoadError
from node.inference.maketiny import make_tiny
from node.inference.tokenizer import TextTokenizer
from node.inference.weights import Checkpoint, model_reference, read_safetensors_header
from tests.inference.conftest import PROMPT, TINY, hf_logits


@pytest.mark.oracle
@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_make_tiny_writes_a_checkpoint_transformers_loads(arch, tmp_path):
    transformers = pytest.importorskip("transformers")
    make_tiny(tmp_path, arch=arch, layers=1, hidden=32, heads=2, kv_heads=1, vocab=300)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.config.model_type == arch
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = TextTokenizer(tmp_path)
    text = "the cat sat on a mat, zabeka!"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ours.encode(text)
    msgs = [{"role": "user", "content": "hello"}]
    assert hf_tok.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True
    ) == ours.apply_chat_template(msgs)
    assert ours.decode(ours.encode(text)) == text


@pytest.mark.oracle
@pytest.mark.parametrize("arch", ["mistral", "qwen3"])
def test_mistral_and_qwen3_with_tied_embeddings_match_transformers(arch, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from node.inference.worker import AsyncShard
    from tests.inference.conftest import run_chain

    make_tiny(tmp_path, arch=arch, tie_embeddings=True, seed=3, **TINY)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    shard = AsyncShard.load_sync(tmp_path, max_sessions=1, max_context=32, chunk=8, warmup=False)
    assert np.abs(run_chain([shard], PROMPT) - hf_logits(hf, PROMPT)).max() <= 1e-4


@pytest.mark.oracle
def test_bf16_checkpoint_in_several_files_loads_exactly_like_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from node.inference.worker import AsyncShard
    from tests.inference.conftest import run_chain

    make_tiny(tmp_path, arch="qwen2", dtype="bfloat16", files=3, **TINY)
    assert (tmp_path / "model.safetensors.index.json").exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    want = hf_logits(hf, PROMPT)
    # bf16 values widened to fp32 are exact, and so is keeping the matrices in bf16 (half the bytes)
    for weight_dtype in ("float32", "bfloat16"):
        shard = AsyncShard.load_sync(
            tmp_path, max_sessions=1, max_context=32, chunk=8, warmup=False, weight_dtype=weight_dtype
        )
        assert np.abs(run_chain([shard], PROMPT) - want).max() <= 1e-4


def test_model_reference_is_the_sha256_of_the_weight_files_and_tracks_changes(tmp_path):
    make_tiny(tmp_path, layers=1, hidden=32, heads=2, kv_heads=1, vocab=300)
    ref = model_reference(tmp_path)
    assert len(ref) == 64 and ref == model_reference(tmp_path)
    f = tmp_path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    assert model_reference(tmp_path) != ref


@pytest.fixture
def tiny(tmp_path):
    make_tiny(tmp_path / "m", layers=2, hidden=32, heads=2, kv_heads=1, vocab=300)
    return tmp_path / "m"


def test_an_unknown_architecture_is_refused_naming_config_json(tiny):
    cfg = json.loads((tiny / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (tiny / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"config\.json.*unknown architecture 'gpt2'"):
        Checkpoint(tiny)


def test_a_layer_range_out_of_bounds_is_refused(tiny):
    ck = Checkpoint(tiny)
    for start, end in [(0, 3), (2, 2), (-1, 1), (1, 0)]:
        with pytest.raises(ModelLoadError, match="out of bounds"):
            ck.validate(start, end, True, True)


def _rewrite(path, drop=None, reshape=None):
    from node.inference.maketiny import write_safetensors

    ck_entries = read_safetensors_header(path)
    tensors = {}
    ck = Checkpoint(path.parent)
    for name in ck_entries:
        if name == drop:
            continue
        arr = ck.read(name)
        tensors[name] = arr.reshape(reshape) if name == (reshape and "model.norm.weight") else arr
    write_safetensors(path, tensors, "float32")


def test_a_missing_tensor_is_named_in_the_error(tiny):
    _rewrite(tiny / "model.safetensors", drop="model.layers.1.mlp.up_proj.weight")
    ck = Checkpoint(tiny)
    ck.validate(0, 1, True, False)  # the first layer alone does not need it
    with pytest.raises(ModelLoadError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        ck.validate(1, 2, False, True)


def test_a_tensor_of_the_wrong_shape_is_named_with_its_file(tiny):
    _rewrite(tiny / "model.safetensors", reshape=(2, 16))
    with pytest.raises(
        ModelLoadError, match=r"model\.safetensors: tensor 'model\.norm\.weight' has shape \(2, 16\)"
    ):
        Checkpoint(tiny).validate(0, 2, True, True)


@pytest.mark.parametrize("keep", [0, 5, 100, -8])
def test_a_truncated_weight_file_is_refused_naming_the_file(tiny, keep):
    f = tiny / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: (truncated|header)"):
        Checkpoint(tiny)


def test_a_missing_config_or_weights_is_reported(tiny, tmp_path):
    shutil.copy(tiny / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        Checkpoint(tmp_path)
    with pytest.raises(ModelLoadError, match="no config.json"):
        ModelConfig.load(tmp_path / "nowhere")


def test_config_parsing_covers_the_llama_family_fields():
    base = {
        "vocab_size": 10,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    assert ModelConfig.from_dict({**base, "model_type": "qwen2"}).qkv_bias
    q3 = ModelConfig.from_dict({**base, "model_type": "qwen3", "head_dim": 8, "num_key_value_heads": 1})
    assert q3.qk_norm and q3.head_dim == 8 and q3.num_kv_heads == 1
    assert ModelConfig.from_dict({**base, "model_type": "llama", "eos_token_id": [1, 2]}).eos_token_ids == (
        1,
        2,
    )
    with pytest.raises(ModelLoadError, match="missing or invalid field"):
        ModelConfig.from_dict({"model_type": "llama"})


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz")
    make_tiny(out, layers=1, hidden=32, heads=2, kv_heads=1, vocab=300)
    return (out / "model.safetensors").read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_weight_files_fail_only_with_model_load_error(small_weights, tmp_path_factory, data):
    blob = bytearray(small_weights)
    header_len = 8 + int.from_bytes(blob[:8], "little")
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, header_len + 16))
        blob[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(blob))))
    path = tmp_path_factory.mktemp("mut") / "model.safetensors"
    path.write_bytes(bytes(blob[:cut] if cut is not None else blob))
    try:
        entries = read_safetensors_header(path)
    except ModelLoadError:
        return
    assert all(e.start + e.nbytes <= len(blob if cut is None else blob[:cut]) for e in entries.values())
