"""The declared cost-model backend: deterministic fake compute that costs virtual time, not CPU.

A `CostModelShard` stands in for `node.inference.worker.AsyncShard` so that hundreds of serving nodes fit
on a few cores. It is **not a model**: each output row is a pseudo-random vector drawn from a hash of
(layer span, position, input row), so

- every honest provider of one span returns bit-identical rows (spot checks agree),
- a ``lie=True`` provider (the serving code adds 0.5 to its output) disagrees,
- greedy generation is a pure function of the prompt, computable offline (`reference_generation`),

and each forward waits ``base_s + per_token_layer_s × rows × layers`` of *virtual* time. The session
bookkeeping (slots, cache tokens, positions) follows `node.inference.shard.Shard`, so the serving code sees
the same refusals it would see from tinygrad.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import trio

from node.inference.config import ModelConfig
from node.inference.shard import SessionError

#: What reports call this backend, so nobody mistakes its numbers for a real model's.
LABEL = "cost model (deterministic fake compute; virtual-time cost per token per layer)"


@dataclass(frozen=True)
class CostModel:
    """Virtual seconds a forward costs: ``base_s + per_token_layer_s * rows * layers``."""

    per_token_layer_s: float = 0.002
    base_s: float = 0.001

    def seconds(self, rows: int, layers: int) -> float:
        return self.base_s + self.per_token_layer_s * rows * layers


def _row_seed(span: tuple[int, int], pos: int, row: bytes) -> int:
    digest = hashlib.blake2b(row, digest_size=8, person=b"steppe-sim-cost", salt=_salt(span, pos)).digest()
    return int.from_bytes(digest, "big")


def _salt(span: tuple[int, int], pos: int) -> bytes:
    return (
        (span[0] & 0xFFFF).to_bytes(2, "big")
        + (span[1] & 0xFFFF).to_bytes(2, "big")
        + pos.to_bytes(12, "big")
    )


def cost_forward(
    config: ModelConfig, span: tuple[int, int], head: bool, inputs: np.ndarray, start_pos: int
) -> np.ndarray:
    """The pure function every provider of ``span`` computes: (n, hidden) float32, or (n, vocab) logits
    when ``head`` (stop tokens pushed down, so generations run to their full length)."""
    width = config.vocab_size if head else config.hidden_size
    out = np.empty((inputs.shape[0], width), np.float32)
    for i in range(inputs.shape[0]):
        row = np.ascontiguousarray(inputs[i]).tobytes()
        rng = np.random.default_rng(_row_seed(span, start_pos + i, row))
        out[i] = rng.standard_normal(width, dtype=np.float32)
    if head and config.eos_token_ids:
        # Far below any N(0, 1) draw, yet small: the client's spot-check tolerance scales with max |logit|.
        out[:, list(config.eos_token_ids)] = -8.0
    return out


@dataclass
class _Session:
    max_tokens: int
    pos: int = 0


@dataclass
class _Engine:
    """The attributes serving code reads from ``AsyncShard.shard``."""

    config: ModelConfig
    start: int
    end: int
    embed: bool
    head: bool
    max_sessions: int
    max_context: int
    devices: list[str] = field(default_factory=lambda: ["SIM:COST"])
    sessions: dict[int, _Session] = field(default_factory=dict)

    @property
    def free_cache_tokens(self) -> int:
        return self.max_sessions * self.max_context - sum(s.max_tokens for s in self.sessions.values())


class CostModelShard:
    """`AsyncShard`'s interface over `cost_forward`. Raises `SessionError` like `Shard` does."""

    def __init__(
        self,
        config: ModelConfig,
        start: int,
        end: int,
        *,
        cost: CostModel,
        max_sessions: int = 8,
        max_context: int = 2048,
    ) -> None:
        if not 0 <= start < end <= config.num_layers:
            raise ValueError(f"layers {start}:{end} outside the model's {config.num_layers}")
        self.shard = _Engine(
            config, start, end, start == 0, end == config.num_layers, max_sessions, max_context
        )
        self.cost = cost
        self._ids = itertools.count(1)
        self.rows_computed = 0

    @property
    def has_head(self) -> bool:
        return self.shard.head

    async def open_session(self, max_tokens: int) -> int:
        eng = self.shard
        await trio.lowlevel.checkpoint()
        if not 0 < max_tokens <= eng.max_context:
            raise SessionError(f"max_tokens must be in 1..{eng.max_context}")
        if len(eng.sessions) >= eng.max_sessions:
            raise SessionError(f"all {eng.max_sessions} session slots are busy")
        if max_tokens > eng.free_cache_tokens:
            raise SessionError(f"only {eng.free_cache_tokens} cache tokens free, {max_tokens} asked")
        sid = next(self._ids)
        eng.sessions[sid] = _Session(max_tokens)
        return sid

    async def close_session(self, session: int) -> None:
        self.shard.sessions.pop(session, None)
        await trio.lowlevel.checkpoint()

    async def evict_idle(self) -> list[int]:
        await trio.lowlevel.checkpoint()
        return []

    async def forward(self, session: int, inputs: np.ndarray, start_pos: int) -> np.ndarray:
        eng = self.shard
        s = eng.sessions.get(session)
        if s is None:
            raise SessionError(f"unknown or expired session {session}")
        n = int(inputs.shape[0])
        tokens = inputs.dtype.kind in "iu"
        if tokens != eng.embed:
            raise SessionError("token ids go to the first shard, hidden states to the others")
        if not tokens and (inputs.ndim != 2 or inputs.shape[1] != eng.config.hidden_size):
            raise SessionError(f"hidden states must have shape (n, {eng.config.hidden_size})")
        if n == 0 or not 0 <= start_pos <= s.pos or start_pos + n > s.max_tokens:
            raise SessionError(f"positions {start_pos}..{start_pos + n} not allowed (at {s.pos})")
        await trio.sleep(self.cost.seconds(n, eng.end - eng.start))
        s.pos = max(s.pos, start_pos + n)
        self.rows_computed += n
        return cost_forward(eng.config, (eng.start, eng.end), eng.head, inputs, start_pos)


def greedy_chain(
    forwards: list[Callable[[np.ndarray, int], np.ndarray]], prompt: list[int], max_new_tokens: int
) -> list[int]:
    """Greedy tokens of a chain of ``forward(rows, start_pos)`` steps: the prompt at once, then one token at
    a time, each through every step in order."""
    out: list[int] = []
    pos, x = 0, np.asarray(prompt, np.int32)
    for _ in range(max_new_tokens):
        y: np.ndarray = x
        for forward in forwards:
            y = forward(y, pos)
        tok = int(np.argmax(y[-1]))
        out.append(tok)
        pos, x = pos + int(x.shape[0]), np.asarray([tok], np.int32)
    return out


def reference_generation(
    config: ModelConfig, spans: list[tuple[int, int]], prompt: list[int], max_new_tokens: int
) -> list[int]:
    """Greedy tokens an honest chain over ``spans`` (tiling ``0:num_layers``) produces for ``prompt``.

    Rows are computed position by position, so the result does not depend on how a route splits the layers
    as long as the spans match what providers serve (each span is its own hash domain)."""
    forwards = [
        functools.partial(
            lambda x, pos, span: cost_forward(config, span, span[1] == config.num_layers, x, pos), span=span
        )
        for span in spans
    ]
    return greedy_chain(forwards, prompt, max_new_tokens)


#: What reports call the real backend.
TINYGRAD_LABEL = (
    "real tinygrad engine (random-weight make-tiny checkpoint), run inline: compute costs no virtual time, "
    "each forward waits the cost model's virtual time on top"
)


def _on_tinygrad_thread(fn, *args, **kwargs):
    """Run ``fn`` on the process's one tinygrad thread (tinygrad's state, its compile cache included, is
    bound to the thread that first used it) while *blocking* the trio thread: the mock clock sees a busy
    scheduler, not an idle one, so no virtual time passes while the CPU computes."""
    from node.inference.worker import tinygrad_worker

    return tinygrad_worker().run_sync(fn, *args, **kwargs)


class InlineShard:
    """The real tinygrad `Shard` behind `AsyncShard`'s interface, computed while the trio thread waits.

    The node awaits tinygrad's worker thread; under the mock clock a task awaiting a thread counts as idle,
    so virtual time would jump (and timeouts fire) while the CPU computes. Here compute takes no virtual
    time; each forward then waits ``cost`` like `CostModelShard`, so latencies stay declared.
    """

    def __init__(self, shard, cost: CostModel) -> None:  # shard: node.inference.shard.Shard
        self.shard = shard
        self.cost = cost
        self.rows_computed = 0

    @classmethod
    def load(cls, model_dir, start: int, end: int, *, cost: CostModel, **kwargs) -> InlineShard:
        from node.inference.shard import Shard

        return cls(_on_tinygrad_thread(Shard, model_dir, start, end, **kwargs), cost)

    @property
    def has_head(self) -> bool:
        return self.shard.head

    async def open_session(self, max_tokens: int) -> int:
        await trio.lowlevel.checkpoint()
        return _on_tinygrad_thread(self.shard.open_session, max_tokens)

    async def forward(self, session: int, inputs: np.ndarray, start_pos: int) -> np.ndarray:
        out = _on_tinygrad_thread(self.shard.forward, session, inputs, start_pos)
        n = int(inputs.shape[0])
        await trio.sleep(self.cost.seconds(n, self.shard.end - self.shard.start))
        self.rows_computed += n
        return out

    async def close_session(self, session: int) -> None:
        _on_tinygrad_thread(self.shard.close_session, session)
        await trio.lowlevel.checkpoint()

    async def evict_idle(self) -> list[int]:
        await trio.lowlevel.checkpoint()
        return []  # the engine's idle clock is the wall clock; a run ends long before it would matter

    async def describe(self) -> dict[str, object]:
        return _on_tinygrad_thread(self.shard.describe)


class TinygradReference:
    """Greedy tokens of an honest chain of real shards over ``spans`` (the same kernels providers run, fp32
    on the wire), computed inline once per prompt: what a correct generation must return token for token."""

    def __init__(self, model_dir, spans: list[tuple[int, int]], max_context: int) -> None:
        from node.inference.shard import Shard

        self.shards = [
            _on_tinygrad_thread(Shard, model_dir, a, b, max_sessions=1, max_context=max_context)
            for a, b in spans
        ]
        self._cache: dict[tuple[tuple[int, ...], int], list[int]] = {}

    def generate(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        key = (tuple(prompt), max_new_tokens)
        if key not in self._cache:
            self._cache[key] = _on_tinygrad_thread(self._generate, prompt, max_new_tokens)
        return self._cache[key]

    def _generate(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        sids = [s.open_session(len(prompt) + max_new_tokens) for s in self.shards]
        try:
            forwards = [
                functools.partial(lambda x, pos, shard, sid: shard.forward(sid, x, pos), shard=shard, sid=sid)
                for shard, sid in zip(self.shards, sids, strict=True)
            ]
            return greedy_chain(forwards, prompt, max_new_tokens)
        finally:
            for shard, sid in zip(self.shards, sids, strict=True):
                shard.close_session(sid)
