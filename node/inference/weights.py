"""Checkpoint files: validate safetensors headers (untrusted input), read only the tensors a shard needs.

Reading is lazy by construction: each tensor's byte range is read from disk on its own, so a shard of half
the layers touches about half the bytes. Shapes, dtypes and offsets are checked against config.json and
the file size before any data is read.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from node.inference.config import ModelConfig, ModelLoadError

MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2)}


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def read_safetensors_header(path: Path) -> dict[str, TensorEntry]:
    """Parse and check one safetensors header. Raises `ModelLoadError` naming the file and the problem."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelLoadError(f"{path}: truncated file (no header)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise ModelLoadError(f"{path}: truncated file or bad header length {n}")
            raw = json.loads(f.read(n))
    except OSError as exc:
        raise ModelLoadError(f"{path}: unreadable: {exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: header is not valid JSON") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: header is not a JSON object")
    entries = {}
    for name, meta in raw.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (lo, hi) = meta["dtype"], tuple(int(d) for d in meta["shape"]), meta["data_offsets"]
            lo, hi = int(lo), int(hi)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{path}: tensor {name!r} has a malformed header entry") from exc
        if dtype not in _DTYPES:
            raise ModelLoadError(
                f"{path}: tensor {name!r} has unsupported dtype {dtype} (need F32, F16 or BF16)"
            )
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if min(shape, default=1) < 0 or hi - lo != count * _DTYPES[dtype][1] or lo < 0:
            raise ModelLoadError(f"{path}: tensor {name!r} byte range does not match its shape {shape}")
        if 8 + n + hi > size:
            raise ModelLoadError(f"{path}: truncated file: tensor {name!r} ends past the end of the file")
        entries[name] = TensorEntry(path, dtype, shape, 8 + n + lo, hi - lo)
    return entries


def weight_files(model_dir: Path) -> list[Path]:
    """The checkpoint's weight files (one file, the shards named by the index, or a .gguf file).

    Raises `ModelLoadError`.
    """
    model_dir = Path(model_dir)
    if model_dir.suffix == ".gguf" and model_dir.is_file():
        return [model_dir]
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelLoadError(f"{index}: malformed index: {exc}") from exc
        for name in names:
            if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
                raise ModelLoadError(f"{index}: weight file name {name!r} is not a plain file name")
        return [model_dir / n for n in names]
    single = model_dir / "model.safetensors"
    if single.exists():
        return [single]
    raise ModelLoadError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


def model_reference(model_dir: Path) -> str:
    """sha256 over the weight files' bytes, in file-name order: the model reference adverts carry."""
    h = hashlib.sha256()
    for path in weight_files(model_dir):
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


class Checkpoint:
    """A validated view of a checkpoint folder: config plus the index of every tensor's location."""

    def __init__(self, model_dir: Path):
        self.dir = Path(model_dir)
        self.config = ModelConfig.load(self.dir)
        self.entries: dict[str, TensorEntry] = {}
        for path in weight_files(self.dir):
            if not path.exists():
                raise ModelLoadError(f"{path}: weight file named by the index is missing")
            self.entries |= read_safetensors_header(path)

    def check_range(self, start: int, end: int) -> None:
        n = self.config.num_layers
        if not 0 <= start < end <= n:
            raise ModelLoadError(
                f"{self.dir / 'config.json'}: layer range {start}:{end} is out of bounds (model has {n} layers)"
            )

    def validate(self, start: int, end: int, embed: bool, head: bool) -> dict[str, TensorEntry]:
        """Check that every tensor the shard needs is present with the right shape. Raises `ModelLoadError`."""
        self.check_range(start, end)
        need = self.config.tensor_shapes(start, end, embed, head)
        for name, shape in need.items():
            entry = self.entries.get(name)
            if entry is None:
                raise ModelLoadError(f"{self.dir}: missing tensor {name!r} in the weight files")
            if entry.shape != shape:
                raise ModelLoadError(
                    f"{entry.file}: tensor {name!r} has shape {entry.shape}, config.json implies {shape}"
                )
        return {name: self.entries[name] for name in need}

    def read(self, name: str) -> np.ndarray:
        """Read one tensor's bytes from disk and return it as float32 (bf16/fp16 widened exactly)."""
        e = self.entries[name]
        np_dtype, _ = _DTYPES[e.dtype]
        with open(e.file, "rb") as f:
            f.seek(e.start)
            buf = f.read(e.nbytes)
        if len(buf) != e.nbytes:
            raise ModelLoadError(f"{e.file}: truncated file while reading {name!r}")
        arr = np.frombuffer(buf, dtype=np_dtype).reshape(e.shape)
        if e.dtype == "BF16":
            return (arr.astype(np.uint32) << 16).view(np.float32)
        return arr.astype(np.float32, copy=False) if e.dtype == "F16" else arr


def file_bytes(entries: dict[str, TensorEntry]) -> int:
    return sum(e.nbytes for e in entries.values())


class LazyTensors:
    """Dict-like view of the tensors a shard needs; each one is read from disk only when taken."""

    def __init__(self, ckpt: Checkpoint, names: list[str]):
        self._ckpt, self._names = ckpt, list(names)

    def __iter__(self):
        return iter(list(self._names))

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        return self._ckpt.read(name)

    def pop(self, name: str) -> np.ndarray:
        arr = self[name]
        self._names.remove(name)
        return arr

    def clear(self) -> None:
        self._names.clear()
