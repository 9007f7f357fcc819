"""Generation over a chain of shards (in-process here; the client runs the same loop across peers)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import numpy as np
import trio

from node.inference.sampling import Sampler
from node.inference.worker import AsyncShard
from protocol.hidden import decode_hidden_untrusted, encode_hidden


async def chain_forward(
    chain: Sequence[AsyncShard], sessions: Sequence[int], inputs: np.ndarray, start_pos: int, wire_dtype: str
) -> np.ndarray:
    """Run `inputs` through every shard; hidden states between shards go through the wire format."""
    x = inputs
    for shard, sid in zip(chain, sessions, strict=True):
        if x.dtype.kind == "f":
            wire = encode_hidden(x, wire_dtype)
            x = decode_hidden_untrusted(wire, max_bytes=len(wire))
        x = await shard.forward(sid, x, start_pos)
    return x


async def generate(
    chain: Sequence[AsyncShard],
    prompt: list[int],
    max_new_tokens: int,
    sampler: Sampler,
    wire_dtype: str = "float32",
) -> AsyncIterator[int]:
    """Yield new tokens one by one until `max_new_tokens` or a stop token (which is not yielded).

    Opens one session per shard and always closes them, also on cancellation.
    """
    if not chain[-1].has_head:
        raise ValueError("the last shard of a chain must have the head")
    total = len(prompt) + max_new_tokens
    sessions: list[int] = []
    try:
        for shard in chain:
            sessions.append(await shard.open_session(total))
        history = list(prompt)
        logits = await chain_forward(chain, sessions, np.asarray(prompt, np.int32), 0, wire_dtype)
        for _ in range(max_new_tokens):
            tok = sampler(logits[-1], history)
            if sampler.is_stop(tok):
                return
            yield tok
            history.append(tok)
            if len(history) >= total:
                return
            logits = await chain_forward(
                chain, sessions, np.asarray([tok], np.int32), len(history) - 1, wire_dtype
            )
    finally:
        with trio.CancelScope(shield=True):
            for shard, sid in zip(chain, sessions, strict=False):
                await shard.close_session(sid)
