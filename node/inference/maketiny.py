"""`steppe model make-tiny`: a random-weight checkpoint in Hugging Face format (numpy, safetensors, tokenizers).

It is the demo model and the test fixture: `transformers` loads it, and the oracle tests compare against it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from node.inference.config import ARCHITECTURES, ModelConfig, ModelLoadError

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def _to_dtype_bytes(a: np.ndarray, dtype: str) -> bytes:
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dtype == "float32":
        return a.tobytes()
    if dtype == "float16":
        return a.astype(np.float16).tobytes()
    # bfloat16: the top half of the float32 bits, rounded to nearest even
    bits = a.view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return bits.astype(np.uint16).tobytes()


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str) -> None:
    """Write `tensors` (float arrays) in the safetensors format, converting to `dtype` (incl. bfloat16)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, arr in tensors.items():
        blob = _to_dtype_bytes(arr, dtype)
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)


def _corpus(rng: np.random.Generator, n_words: int) -> list[str]:
    # Pronounceable pseudo-words give the BPE trainer plenty of merges without any downloaded text.
    syll = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words = ["".join(rng.choice(syll, size=rng.integers(1, 4))) for _ in range(400)]
    common = (
        "the a of to and in is it you that he was for on are with as I his they be at one have this".split()
    )
    vocab = words + common * 8
    lines = []
    for _ in range(n_words // 12):
        lines.append(" ".join(rng.choice(vocab, size=12)) + ".")
    return lines


def build_tokenizer(vocab_size: int, seed: int):
    """A byte-level BPE tokenizer with exactly `vocab_size` entries, trained offline on a synthetic corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(
        _corpus(np.random.default_rng(seed), min(200_000, max(20_000, vocab_size * 20))), trainer
    )
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:
        # A small corpus runs out of merges: fill the id space so every id the model can emit decodes.
        tok.add_special_tokens([f"<|extra_{i}|>" for i in range(missing)])
    return tok


def make_tiny(
    out: Path,
    arch: str = "llama",
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 512,
    intermediate: int | None = None,
    seed: int = 0,
    dtype: str = "float32",
    max_positions: int = 2048,
    tie_embeddings: bool = False,
    files: int = 1,
) -> ModelConfig:
    """Write a random checkpoint to `out`. Raises `ModelLoadError` for an impossible shape."""
    if arch not in ARCHITECTURES:
        raise ModelLoadError(
            f"make-tiny: unknown architecture {arch!r}; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    if dtype not in _SAFETENSORS_DTYPES:
        raise ModelLoadError(f"make-tiny: dtype must be one of {', '.join(_SAFETENSORS_DTYPES)}")
    if vocab < 260:
        raise ModelLoadError("make-tiny: vocab must be at least 260 (256 bytes + special tokens)")
    if hidden % heads or heads % kv_heads:
        raise ModelLoadError("make-tiny: hidden must be a multiple of heads, heads a multiple of kv-heads")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(vocab, seed)
    tok.save(str(out / "tokenizer.json"))
    eos_id = tok.token_to_id("<|im_end|>")
    raw = {
        "architectures": [
            {
                "llama": "LlamaForCausalLM",
                "mistral": "MistralForCausalLM",
                "qwen2": "Qwen2ForCausalLM",
                "qwen3": "Qwen3ForCausalLM",
            }[arch]
        ],
        "model_type": arch,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate or hidden * 8 // 3 // 16 * 16 or hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": max_positions,
        "tie_word_embeddings": tie_embeddings,
        "torch_dtype": dtype,
        "bos_token_id": tok.token_to_id("<|endoftext|>"),
        "eos_token_id": eos_id,
        "attention_bias": False,
        "use_sliding_window": False,
        "sliding_window": None,
    }
    cfg = ModelConfig.from_dict(raw)
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for name, shape in cfg.tensor_shapes(0, layers, True, True).items():
        if name.endswith("norm.weight"):
            arr = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            arr = 0.1 * rng.standard_normal(shape)
        elif name == "model.embed_tokens.weight":
            arr = rng.standard_normal(shape)
        else:  # scaled so activations stay O(1) and logits spread wide enough for unambiguous greedy picks
            arr = rng.standard_normal(shape) / np.sqrt(shape[1])
        tensors[name] = arr.astype(np.float32)
    _write_weights(out, tensors, dtype, files)
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": raw["bos_token_id"], "eos_token_id": eos_id})
    )
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": None,
                "add_bos_token": False,
                "chat_template": CHAT_TEMPLATE,
                "model_max_length": max_positions,
            },
            indent=2,
        )
    )
    return cfg


def _write_weights(out: Path, tensors: dict[str, np.ndarray], dtype: str, files: int) -> None:
    if files <= 1:
        write_safetensors(out / "model.safetensors", tensors, dtype)
        return
    names = list(tensors)
    per = -(-len(names) // files)
    weight_map = {}
    for k in range(files):
        fname = f"model-{k + 1:05d}-of-{files:05d}.safetensors"
        part = {n: tensors[n] for n in names[k * per : (k + 1) * per]}
        write_safetensors(out / fname, part, dtype)
        weight_map |= dict.fromkeys(part, fname)
    total = sum(a.size for a in tensors.values()) * (4 if dtype == "float32" else 2)
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
