"""Hidden-state wire format: a 14-byte header followed by raw little-endian fp16 or fp32 values.

    magic b"STPH" | version u8 | dtype u8 (1 = fp32, 2 = fp16) | rows u32 | cols u32 | rows*cols values

Conversion happens in numpy (microseconds), never on the accelerator. Pure: no I/O.
"""

from __future__ import annotations

import struct

import numpy as np

from protocol.errors import MalformedMessage

MAGIC = b"STPH"
VERSION = 1
HEADER = struct.Struct("<4sBBII")
DTYPES: dict[int, np.dtype] = {1: np.dtype("<f4"), 2: np.dtype("<f2")}
_CODES = {"float32": 1, "float16": 2}


def encode_hidden(hidden: np.ndarray, dtype: str = "float32") -> bytes:
    """Encode a (rows, cols) float array, converted to `dtype` ("float32" or "float16"). Raises `ValueError`."""
    if dtype not in _CODES:
        raise ValueError(f"dtype must be float32 or float16, not {dtype!r}")
    arr = np.asarray(hidden)
    if arr.ndim != 2:
        raise ValueError("hidden states must be a 2-D (rows, cols) array")
    code = _CODES[dtype]
    body = np.ascontiguousarray(arr, dtype=DTYPES[code]).tobytes()
    return HEADER.pack(MAGIC, VERSION, code, arr.shape[0], arr.shape[1]) + body


def decode_hidden_untrusted(data: bytes, max_bytes: int) -> np.ndarray:
    """Decode peer bytes into a float32 (rows, cols) array. Raises only `MalformedMessage`.

    The length is checked against `max_bytes` and against the header before any value is converted.
    """
    try:
        if len(data) > max_bytes:
            raise MalformedMessage(f"hidden-state message of {len(data)} bytes exceeds the limit {max_bytes}")
        if len(data) < HEADER.size:
            raise MalformedMessage("hidden-state message shorter than its header")
        magic, version, code, rows, cols = HEADER.unpack_from(data)
        if magic != MAGIC or version != VERSION:
            raise MalformedMessage("not a hidden-state message of a known version")
        dt = DTYPES.get(code)
        if dt is None:
            raise MalformedMessage(f"unknown hidden-state dtype code {code}")
        if rows == 0 or cols == 0 or len(data) - HEADER.size != rows * cols * dt.itemsize:
            raise MalformedMessage("hidden-state body length does not match its header")
        arr = np.frombuffer(data, dtype=dt, offset=HEADER.size).reshape(rows, cols).astype(np.float32)
        if not np.isfinite(arr).all():
            raise MalformedMessage("hidden states contain NaN or infinity")
        return arr
    except MalformedMessage:
        raise
    except (struct.error, ValueError, TypeError) as exc:
        raise MalformedMessage(f"bad hidden-state message: {exc}") from exc
