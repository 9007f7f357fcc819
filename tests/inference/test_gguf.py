"""GGUF checkpoints: a make-tiny model converted to GGUF gives the same logits as transformers."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from node.inference.config import ModelConfig, ModelLoadError
from node.inference.weights import Checkpoint
from tests.inference.conftest import PROMPT, hf_logits, run_chain

pytestmark = pytest.mark.oracle

_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _s(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


def write_gguf(path, cfg: ModelConfig, tensors: dict[str, np.ndarray]) -> None:
    """A minimal GGUF v3 writer (F32 tensors), written from the format description, for this test only."""
    a = cfg.arch
    kv = [
        ("general.architecture", 8, a),
        (f"{a}.block_count", 4, cfg.num_layers),
        (f"{a}.embedding_length", 4, cfg.hidden_size),
        (f"{a}.feed_forward_length", 4, cfg.intermediate_size),
        (f"{a}.attention.head_count", 4, cfg.num_heads),
        (f"{a}.attention.head_count_kv", 4, cfg.num_kv_heads),
        (f"{a}.attention.layer_norm_rms_epsilon", 6, cfg.rms_norm_eps),
        (f"{a}.rope.freq_base", 6, cfg.rope_theta),
        (f"{a}.context_length", 4, cfg.max_position_embeddings),
    ]
    out = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(kv))]
    for key, typ, val in kv:
        out.append(_s(key) + struct.pack("<I", typ))
        out.append(_s(val) if typ == 8 else struct.pack("<I" if typ == 4 else "<f", val))
    blobs, offset = [], 0
    for name, arr in tensors.items():
        out.append(
            _s(name) + struct.pack("<I", arr.ndim) + struct.pack(f"<{arr.ndim}Q", *reversed(arr.shape))
        )
        out.append(struct.pack("<IQ", 0, offset))
        blob = np.ascontiguousarray(arr, np.float32).tobytes()
        blob += b"\0" * (-len(blob) % 32)
        blobs.append(blob)
        offset += len(blob)
    head = b"".join(out)
    path.write_bytes(head + b"\0" * (-len(head) % 32) + b"".join(blobs))


def _to_gguf(src, dst) -> None:
    ck = Checkpoint(src)
    cfg = ck.config
    tensors = {}
    for name in ck.entries:
        arr = ck.read(name)
        if name.startswith("model.layers."):
            i, rest = name[len("model.layers.") :].split(".", 1)
            gname = f"blk.{i}.{_LAYER[rest]}"
            if rest in ("self_attn.q_proj.weight", "self_attn.k_proj.weight"):
                # llama.cpp's conversion interleaves the rotary halves of each head's rows
                n = cfg.num_heads if "q_proj" in rest else cfg.num_kv_heads
                arr = arr.reshape(n, 2, cfg.head_dim // 2, -1).swapaxes(1, 2).reshape(arr.shape)
        else:
            gname = _NAMES[name]
        tensors[gname] = arr
    write_gguf(dst, cfg, tensors)


def test_a_gguf_copy_of_a_checkpoint_matches_transformers_for_a_layer_range_chain(
    tiny_models, tmp_path, hf_oracle
):
    from node.inference.worker import AsyncShard

    path = tmp_path / "tiny.gguf"
    _to_gguf(tiny_models["llama"], path)
    kw = {"max_sessions": 1, "max_context": 32, "chunk": 8, "warmup": False}
    chain = [
        AsyncShard.load_sync(path, start=0, end=2, **kw),
        AsyncShard.load_sync(path, start=2, end=3, **kw),
    ]
    assert np.abs(run_chain(chain, PROMPT) - hf_logits(hf_oracle("llama"), PROMPT)).max() <= 1e-4


def test_a_corrupt_gguf_file_fails_with_the_file_named(tmp_path):
    from node.inference.gguf import GGUFCheckpoint

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 40)
    with pytest.raises(ModelLoadError, match=r"bad\.gguf"):
        GGUFCheckpoint(bad)
