"""A loaded shard with sessions: the synchronous engine the device worker drives.

`Shard.forward` accepts any number of tokens or hidden rows and feeds them through the compiled decode
step (one row) or the compiled prefill chunk (padded to `chunk` rows; padding only writes cache positions
that later steps overwrite before reading). Not thread-safe: use it through `node.inference.worker`.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from node.inference.config import ModelConfig
from node.inference.model import ShardModel
from node.inference.weights import Checkpoint, LazyTensors
from node.logging import get_logger
from protocol.errors import ConfigError, SteppeError

log = get_logger("inference.shard")


class SessionError(SteppeError):
    """A session request is not allowed: unknown session, limits reached, or a position out of range."""


@dataclass
class Session:
    id: int
    slot: int
    max_tokens: int
    pos: int = 0
    last_used: float = field(default_factory=time.monotonic)


def default_device() -> str:
    """The best available tinygrad device: `DEV` if set, else CUDA, AMD or METAL, else the LLVM CPU backend.

    Must run before the CPU device is first used (tinygrad picks a device's compiler when it opens it),
    and on the tinygrad worker thread like every other tinygrad call.
    """
    from tinygrad import Device, Tensor
    from tinygrad.helpers import DEV

    if os.environ.get("DEV"):
        return Device.DEFAULT
    for dev in ("CUDA", "AMD", "METAL"):
        try:
            Device[dev]
            return dev
        except Exception:  # any failure to open a backend (missing library, no GPU) means "not available"
            continue
    try:
        DEV.value = "CPU:LLVM"  # the fastest CPU backend, when libLLVM is installed
        (Tensor.ones(2, device="CPU") + 1).realize()
    except Exception:
        DEV.value = "CPU"
    return "CPU"


def parse_devices(spec: str | None) -> list[str] | None:
    """`"CPU:0,CPU:1"` -> ["CPU:0", "CPU:1"]; None/empty -> None (auto-detect on the worker thread).

    Does not touch tinygrad, so it is safe on any thread. Raises `ConfigError`.
    """
    if not spec:
        return None
    devs = [d.strip() for d in spec.split(",") if d.strip()]
    if not devs:
        raise ConfigError(f"--devices {spec!r}: no device named")
    return devs


class Shard:
    """Layers [start, end) of a checkpoint, plus the embedding (`embed`) and/or final norm + head (`head`)."""

    def __init__(
        self,
        model_dir: Path,
        start: int = 0,
        end: int | None = None,
        *,
        embed: bool | None = None,
        head: bool | None = None,
        devices: list[str] | None = None,
        max_sessions: int = 4,
        max_context: int = 512,
        max_cache_tokens: int | None = None,
        idle_timeout_s: float = 300.0,
        chunk: int = 32,
        dtype: str = "float32",
        weight_dtype: str | None = None,
        warmup: bool = True,
    ):
        t0 = time.monotonic()
        if Path(model_dir).suffix == ".gguf":
            from node.inference.gguf import GGUFCheckpoint

            ckpt: Checkpoint | GGUFCheckpoint = GGUFCheckpoint(Path(model_dir))
        else:
            ckpt = Checkpoint(Path(model_dir))
        cfg: ModelConfig = ckpt.config
        end = cfg.num_layers if end is None else end
        ckpt.check_range(start, end)
        self.embed = start == 0 if embed is None else embed
        self.head = end == cfg.num_layers if head is None else head
        max_context = min(max_context, cfg.max_position_embeddings)
        entries = ckpt.validate(start, end, self.embed, self.head)
        weights = LazyTensors(ckpt, list(entries))
        self.config, self.start, self.end, self.dir = cfg, start, end, Path(model_dir)
        self.devices = devices or [default_device()]
        self.model = ShardModel(
            cfg,
            start,
            end,
            weights,
            embed=self.embed,
            head=self.head,
            devices=self.devices,
            slots=max_sessions,
            max_context=max_context,
            chunk=chunk,
            dtype=dtype,
            weight_dtype=weight_dtype,
        )
        self.max_context, self.max_sessions, self.dtype = max_context, max_sessions, dtype
        self.max_cache_tokens = max_cache_tokens or max_sessions * max_context
        self.idle_timeout_s = idle_timeout_s
        self.sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self.load_seconds = time.monotonic() - t0
        self.warmup_seconds = 0.0
        if warmup:
            self.warmup()
        log.info(
            "shard_loaded",
            layers=f"{start}:{end}",
            embed=self.embed,
            head=self.head,
            devices=self.devices,
            load_s=round(self.load_seconds, 2),
            warmup_s=round(self.warmup_seconds, 2),
        )

    @property
    def free_cache_tokens(self) -> int:
        return self.max_cache_tokens - sum(s.max_tokens for s in self.sessions.values())

    def describe(self) -> dict[str, object]:
        """What an advert needs to say about this shard (the model reference is `weights.model_reference`)."""
        return {
            "arch": self.config.arch,
            "layers": (self.start, self.end),
            "embed": self.embed,
            "head": self.head,
            "devices": list(self.devices),
            "dtype": self.dtype,
            "max_context": self.max_context,
            "free_sessions": self.max_sessions - len(self.sessions),
            "free_cache_tokens": self.free_cache_tokens,
        }

    def warmup(self) -> None:
        """Compile and capture the jits this shard will use, so the first request starts fast."""
        t0 = time.monotonic()
        h = self.config.hidden_size
        # A shard with the embedding is fed token ids, any other shard hidden states: warm only that path.
        for kind in ["tokens" if self.embed else "hidden"]:
            for t in (self.model.chunk, 1):
                inp = np.zeros(t, np.int32) if kind == "tokens" else np.zeros((t, h), np.float32)
                self.model.run(inp, self.max_sessions - 1, 0)  # compiles and captures; later calls replay
        self.warmup_seconds = time.monotonic() - t0

    def open_session(self, max_tokens: int) -> int:
        """Reserve a slot for up to `max_tokens` positions. Raises `SessionError` when limits are reached."""
        if not 0 < max_tokens <= self.max_context:
            raise SessionError(f"max_tokens must be in 1..{self.max_context}")
        self.evict_idle()
        used = {s.slot for s in self.sessions.values()}
        free = [i for i in range(self.max_sessions) if i not in used]
        if not free:
            raise SessionError(f"all {self.max_sessions} session slots are busy")
        if max_tokens > self.free_cache_tokens:
            raise SessionError(f"only {self.free_cache_tokens} cache tokens free, {max_tokens} asked")
        sid = next(self._ids)
        self.sessions[sid] = Session(sid, free[0], max_tokens)
        return sid

    def close_session(self, sid: int) -> None:
        self.sessions.pop(sid, None)

    def evict_idle(self, now: float | None = None) -> list[int]:
        now = time.monotonic() if now is None else now
        gone = [s.id for s in self.sessions.values() if now - s.last_used > self.idle_timeout_s]
        for sid in gone:
            del self.sessions[sid]
            log.info("session_evicted", session=sid)
        return gone

    def forward(self, sid: int, inputs: np.ndarray, start_pos: int) -> np.ndarray:
        """Run token ids (1-D ints) or hidden rows ((n, hidden) floats) at positions [start_pos, start_pos+n).

        `start_pos` may rewind (the cache is reset by position), never skip ahead. Returns (n, hidden) hidden
        states, or (n, vocab) logits when this shard has the head. Raises `SessionError`.
        """
        s = self.sessions.get(sid)
        if s is None:
            raise SessionError(f"unknown or expired session {sid}")
        tokens = inputs.dtype.kind in "iu"
        n = inputs.shape[0]
        if tokens and not self.embed:
            raise SessionError("this shard has no embedding: send hidden states")
        if not tokens and (inputs.ndim != 2 or inputs.shape[1] != self.config.hidden_size):
            raise SessionError(f"hidden states must have shape (n, {self.config.hidden_size})")
        if tokens and (
            inputs.ndim != 1 or inputs.min(initial=0) < 0 or inputs.max(initial=0) >= self.config.vocab_size
        ):
            raise SessionError("token ids out of range")
        if n == 0 or not 0 <= start_pos <= s.pos or start_pos + n > s.max_tokens:
            raise SessionError(
                f"positions {start_pos}..{start_pos + n} not allowed (at {s.pos}, max {s.max_tokens})"
            )
        c = self.model.chunk
        outs, i = [], 0
        while i < n:
            if n - i == 1:
                outs.append(self.model.run(inputs[i : i + 1], s.slot, start_pos + i))
                i += 1
                continue
            m = min(c, n - i)
            piece = inputs[i : i + m]
            if m < c:
                pad = np.zeros((c - m, *piece.shape[1:]), piece.dtype)
                piece = np.concatenate([piece, pad])
            outs.append(self.model.run(piece, s.slot, start_pos + i)[:m])
            i += m
        s.pos = start_pos + n
        s.last_used = time.monotonic()
        return outs[0] if len(outs) == 1 else np.concatenate(outs)
