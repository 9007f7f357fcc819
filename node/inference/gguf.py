"""GGUF checkpoints (llama.cpp's format) read with tinygrad's GGUF parser.

tinygrad reads the **whole file** into memory (no layer-range laziness, unlike safetensors); quantized
tensors (Q4_0..Q8_0, K-quants) are dequantized to float32 when a shard takes them. The tokenizer inside a
GGUF is not used: serve GGUF shards behind a shard that has the Hugging Face tokenizer, or use safetensors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from node.inference.config import ModelConfig, ModelLoadError

_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def _hf_name(name: str) -> str | None:
    if name in _GLOBAL:
        return _GLOBAL[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER:
        return f"model.layers.{int(parts[1])}.{_LAYER[parts[2]]}"
    return None


class GGUFCheckpoint:
    """Same interface as `weights.Checkpoint` (config, check_range, validate, read) over one GGUF file."""

    def __init__(self, path: Path):
        from tinygrad.llm.gguf import gguf_load

        self.dir = self.path = Path(path)
        try:
            kv, sd = gguf_load(str(self.path))
        except FileNotFoundError as exc:
            raise ModelLoadError(f"{self.path}: no such GGUF file") from exc
        except Exception as exc:  # the parser raises struct/Value/Key/Unicode errors on bad bytes
            raise ModelLoadError(
                f"{self.path}: not a readable GGUF file: {type(exc).__name__}: {exc}"
            ) from exc
        self.tensors = {hf: t for name, t in sd.items() if (hf := _hf_name(name)) is not None}
        arch = kv.get("general.architecture")
        g = lambda k, d=None: kv.get(f"{arch}.{k}", d)  # noqa: E731
        try:
            heads = int(g("attention.head_count"))
            hidden = int(g("embedding_length"))
            vocab = len(kv["tokenizer.ggml.tokens"]) if "tokenizer.ggml.tokens" in kv else None
            if vocab is None and "model.embed_tokens.weight" in self.tensors:
                vocab = int(self.tensors["model.embed_tokens.weight"].shape[0])
            raw = {
                "model_type": arch,
                "vocab_size": vocab,
                "hidden_size": hidden,
                "intermediate_size": int(g("feed_forward_length")),
                "num_hidden_layers": int(g("block_count")),
                "num_attention_heads": heads,
                "num_key_value_heads": int(g("attention.head_count_kv", heads)),
                "head_dim": int(g("attention.key_length", hidden // heads)),
                "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-6)),
                "rope_theta": float(g("rope.freq_base", 10000.0)),
                "max_position_embeddings": int(g("context_length", 2048)),
                "tie_word_embeddings": "lm_head.weight" not in self.tensors,
                "attention_bias": "model.layers.0.self_attn.q_proj.bias" in self.tensors,
            }
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"{self.path}: GGUF metadata is incomplete: {exc}") from exc
        self.config = ModelConfig.from_dict(raw, str(self.path))

    def check_range(self, start: int, end: int) -> None:
        n = self.config.num_layers
        if not 0 <= start < end <= n:
            raise ModelLoadError(
                f"{self.path}: layer range {start}:{end} is out of bounds (model has {n} layers)"
            )

    def validate(self, start: int, end: int, embed: bool, head: bool) -> dict[str, tuple[int, ...]]:
        self.check_range(start, end)
        need = self.config.tensor_shapes(start, end, embed, head)
        for name, shape in need.items():
            if name not in self.tensors:
                raise ModelLoadError(f"{self.path}: missing tensor {name!r}")
            if tuple(self.tensors[name].shape) != shape:
                got = tuple(self.tensors[name].shape)
                raise ModelLoadError(
                    f"{self.path}: tensor {name!r} has shape {got}, the metadata implies {shape}"
                )
        return need

    def read(self, name: str) -> np.ndarray:
        """Dequantize one tensor to float32, in Hugging Face layout (llama q/k rows un-interleaved)."""
        arr = self.tensors[name].float().numpy()
        cfg = self.config
        # llama.cpp stores llama q/k rows interleaved per rotary pair; Hugging Face uses half-split rows.
        if cfg.arch in ("llama", "mistral") and name.endswith(("q_proj.weight", "k_proj.weight")):
            n = cfg.num_heads if name.endswith("q_proj.weight") else cfg.num_kv_heads
            arr = arr.reshape(n, cfg.head_dim // 2, 2, -1).swapaxes(1, 2).reshape(arr.shape)
        return np.ascontiguousarray(arr)
