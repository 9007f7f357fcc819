"""The model architecture, read from a Hugging Face `config.json`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.errors import ConfigError, SteppeError


class ModelLoadError(SteppeError):
    """A checkpoint could not be loaded. The message names the file and the problem."""


# model_type -> (attention q/k/v bias, per-head q/k RMS norm)
ARCHITECTURES: dict[str, tuple[bool, bool]] = {
    "llama": (False, False),
    "mistral": (False, False),
    "qwen2": (True, False),
    "qwen3": (False, True),
}


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    torch_dtype: str = "float32"
    rope_scaling: dict[str, Any] | None = field(default=None, compare=False)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Build from a parsed config.json. Raises `ModelLoadError` naming `source` on any problem."""
        arch = raw.get("model_type")
        if arch not in ARCHITECTURES:
            raise ModelLoadError(
                f"{source}: unknown architecture {arch!r}; supported: {', '.join(sorted(ARCHITECTURES))}"
            )
        qkv_bias, qk_norm = ARCHITECTURES[arch]
        if arch == "llama" and raw.get("attention_bias"):
            qkv_bias = True
        try:
            heads = int(raw["num_attention_heads"])
            hidden = int(raw["hidden_size"])
            eos = raw.get("eos_token_id")
            eos_ids = (
                tuple(int(e) for e in eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
            )
            cfg = cls(
                arch=arch,
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(raw["intermediate_size"]),
                num_layers=int(raw["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(raw.get("num_key_value_heads") or heads),
                head_dim=int(raw.get("head_dim") or hidden // heads),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                rope_theta=float(raw.get("rope_theta", 10000.0)),
                max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                qkv_bias=qkv_bias,
                qk_norm=qk_norm,
                torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
                rope_scaling=raw.get("rope_scaling"),
                bos_token_id=raw.get("bos_token_id"),
                eos_token_ids=eos_ids,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{source}: missing or invalid field: {exc}") from exc
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
        ):
            if getattr(cfg, name) <= 0:
                raise ModelLoadError(f"{source}: {name} must be positive")
        if cfg.num_heads % cfg.num_kv_heads:
            raise ModelLoadError(f"{source}: num_attention_heads is not a multiple of num_key_value_heads")
        return cfg

    @classmethod
    def load(cls, model_dir: Path) -> ModelConfig:
        """Read `model_dir/config.json`. Raises `ModelLoadError`."""
        path = Path(model_dir) / "config.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ModelLoadError(f"{path}: no config.json in the model folder") from exc
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path}: unreadable: {exc}") from exc
        if not isinstance(raw, dict):
            raise ModelLoadError(f"{path}: not a JSON object")
        return cls.from_dict(raw, str(path))

    def layer_tensor_shapes(self, i: int) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the Hugging Face tensors of decoder layer `i`."""
        h, hd = self.hidden_size, self.head_dim
        q, kv = self.num_heads * hd, self.num_kv_heads * hd
        p = f"model.layers.{i}."
        shapes = {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (self.intermediate_size, h),
            p + "mlp.up_proj.weight": (self.intermediate_size, h),
            p + "mlp.down_proj.weight": (h, self.intermediate_size),
        }
        if self.qkv_bias:
            shapes |= {
                p + "self_attn.q_proj.bias": (q,),
                p + "self_attn.k_proj.bias": (kv,),
                p + "self_attn.v_proj.bias": (kv,),
            }
        if self.qk_norm:
            shapes |= {p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,)}
        return shapes

    def tensor_shapes(self, start: int, end: int, embed: bool, head: bool) -> dict[str, tuple[int, ...]]:
        """Every tensor a shard of layers [start, end) needs, with its expected shape."""
        shapes: dict[str, tuple[int, ...]] = {}
        if embed or (head and self.tie_word_embeddings):
            shapes["model.embed_tokens.weight"] = (self.vocab_size, self.hidden_size)
        for i in range(start, end):
            shapes |= self.layer_tensor_shapes(i)
        if head:
            shapes["model.norm.weight"] = (self.hidden_size,)
            if not self.tie_word_embeddings:
                shapes["lm_head.weight"] = (self.vocab_size, self.hidden_size)
        return shapes

    def param_count(self) -> int:
        total = 0
        for shape in self.tensor_shapes(0, self.num_layers, True, True).values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total


def parse_layers(spec: str, num_layers: int) -> tuple[int, int]:
    """``"A:B"`` (either side may be empty) → (A, B). Raises `ConfigError` for anything out of range."""
    try:
        a, b = spec.split(":")
        start, end = (int(a) if a else 0), (int(b) if b else num_layers)
    except ValueError as exc:
        raise ConfigError(f"layer range {spec!r} must look like 0:16") from exc
    if not 0 <= start < end <= num_layers:
        raise ConfigError(f"layer range {spec!r} is outside the model's {num_layers} layers")
    return start, end
