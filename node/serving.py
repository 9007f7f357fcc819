"""Serving `/steppe/infer/1`: sealed sessions over a loaded shard.

One stream is one session. The hop opens every client frame with its own X25519 key and seals every reply
to the client's per-session key, so neither prompts nor activations are readable outside the two ends.
Limits: the shard's session slots and cache tokens (a full node answers ``busy`` at once, never hangs),
the protocol's frame size, one step at a time per session, and an idle timeout after which the session is
closed and its cache slot freed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import trio

from node.inference.shard import SessionError
from node.inference.worker import AsyncShard
from node.logging import get_logger
from node.p2p.streams import FramedStream, ProtocolServer, StreamProtocol
from node.payments import PaymentRequired, Payments, StepBilling
from protocol import infer
from protocol.errors import MalformedMessage
from protocol.hidden import decode_hidden_untrusted, encode_hidden
from protocol.identity import Identity
from protocol.seal import Opener, Sealer

log = get_logger("steppe.serving")


def infer_protocol(
    read_timeout_s: float = 60.0, write_timeout_s: float = 30.0, per_peer_limit: int = 16
) -> StreamProtocol:
    """`/steppe/infer/1`. On a hop the read timeout is the session's idle timeout; on a client, the time a
    step may take before the hop counts as stalled."""
    return StreamProtocol(
        infer.PROTOCOL_ID,
        inbound=(infer.InferFrame,),
        outbound=(infer.InferFrame,),
        max_frame=infer.InferFrame.MAX_SIZE,
        read_timeout=read_timeout_s,
        write_timeout=write_timeout_s,
        per_peer_limit=per_peer_limit,
    )


@dataclass
class ServingStats:
    sessions_opened: int = 0
    sessions_active: int = 0
    steps: int = 0
    tokens_served: int = 0
    compute_s: float = 0.0
    refused: Counter[str] = field(default_factory=Counter)
    #: Called with each step's compute seconds (the metrics' latency histogram attaches here).
    on_step: Callable[[float], None] | None = None


class InferService:
    """Serves one shard. ``lie`` (tests and the simulator only) perturbs outputs like a dishonest provider."""

    def __init__(
        self,
        identity: Identity,
        shard: AsyncShard,
        model_sha256: bytes,
        *,
        idle_timeout_s: float = 60.0,
        lie: bool = False,
        payments: Payments | None = None,
        price_wei_per_token_layer: int = 0,
        credit_steps: int = 1,
    ) -> None:
        self.identity = identity
        self.shard = shard
        self.model_sha256 = model_sha256
        self.protocol = infer_protocol(idle_timeout_s)
        self.lie = lie
        self.payments = payments if price_wei_per_token_layer > 0 else None
        self.price = price_wei_per_token_layer
        self.credit_steps = credit_steps
        self.stats = ServingStats()
        self.accepting = True
        cfg = shard.shard.config
        # A forward carries at most MAX_ROWS rows of hidden fp32; refuse bigger before decoding.
        self.max_hidden_bytes = 64 + infer.MAX_ROWS * cfg.hidden_size * 4

    def install(self, host) -> ProtocolServer:
        return ProtocolServer(host, self.protocol, self.handle)

    @property
    def layers(self) -> tuple[int, int]:
        return self.shard.shard.start, self.shard.shard.end

    async def handle(self, stream: FramedStream) -> None:
        """One session. Raises `MalformedMessage` (the server answers it) or stream errors."""
        first = await stream.expect(infer.InferFrame)
        assert isinstance(first, infer.InferFrame)
        opener = Opener(
            self.identity.x25519_private,
            self.identity.x25519_public,
            protocol=infer.PROTOCOL_ID,
            session_id=first.session,
        )
        request = infer.decode_inner_untrusted(opener.open_untrusted(first.sealed), (infer.OpenSession,))
        assert isinstance(request, infer.OpenSession)
        sealer = Sealer(request.reply_key, protocol=infer.PROTOCOL_ID, session_id=first.session)

        async def reply(msg) -> None:
            await stream.send(infer.InferFrame(first.session, sealer.seal(infer.encode_inner(msg))))

        refusal = self._check_open(request)
        if refusal is not None:
            self.stats.refused[refusal.code] += 1
            await reply(refusal)
            return
        try:
            sid = await self.shard.open_session(request.max_tokens)
        except SessionError as exc:
            self.stats.refused["busy"] += 1
            await reply(infer.InferError("busy", str(exc)))
            return
        self.stats.sessions_opened += 1
        self.stats.sessions_active += 1
        try:
            start, end = self.layers
            payee = self.payments.client.address if self.payments is not None else ""
            await reply(
                infer.SessionOpened(start, end, self.shard.has_head, request.max_tokens, self.price, payee)
            )
            await self._steps(stream, opener, reply, sid, request)
        finally:
            self.stats.sessions_active -= 1
            with trio.CancelScope(shield=True):
                await self.shard.close_session(sid)

    def _check_open(self, request: infer.OpenSession) -> infer.InferError | None:
        if not self.accepting:
            return infer.InferError("busy", "node is shutting down")
        if request.model_sha256 != self.model_sha256:
            return infer.InferError("bad_request", "this node serves another model")
        start, end = self.layers
        if (request.layer_start, request.layer_end) != (start, end):
            return infer.InferError(
                "bad_request",
                f"this node serves layers {start}:{end}, not {request.layer_start}:{request.layer_end}",
            )
        return None

    async def _steps(
        self, stream: FramedStream, opener: Opener, reply, sid: int, request: infer.OpenSession
    ) -> None:
        start, end = self.layers
        billing = None
        if self.payments is not None:
            billing = StepBilling(self.payments, self.price * (end - start), self.credit_steps)
        while True:
            frame = await stream.receive()
            if frame is None:
                return
            assert isinstance(frame, infer.InferFrame)
            if frame.session != opener.session_id:
                raise MalformedMessage("frame for another session on this stream")
            msg = infer.decode_inner_untrusted(
                opener.open_untrusted(frame.sealed), (infer.Forward, infer.CloseSession)
            )
            if isinstance(msg, infer.CloseSession):
                return
            assert isinstance(msg, infer.Forward)
            if msg.tokens:
                inputs = np.asarray(msg.tokens, dtype=np.int32)
            else:
                inputs = decode_hidden_untrusted(msg.hidden, self.max_hidden_bytes)
            if billing is not None:
                try:
                    # The voucher is on disk before the step runs and long before it is answered.
                    await billing.charge(int(inputs.shape[0]), msg.voucher)
                except PaymentRequired as exc:
                    self.stats.refused["payment"] += 1
                    await reply(infer.InferError("payment", str(exc)[:500]))
                    continue
            t0 = trio.current_time()
            try:
                out = await self.shard.forward(sid, inputs, msg.start_pos)
            except SessionError as exc:
                self.stats.refused["session"] += 1
                await reply(infer.InferError("session", str(exc)))
                continue
            elapsed = trio.current_time() - t0
            if self.shard.has_head and msg.last_only:
                out = out[-1:]
            if self.lie:
                out = out + np.float32(0.5)
            self.stats.steps += 1
            self.stats.tokens_served += int(inputs.shape[0])
            self.stats.compute_s += elapsed
            if self.stats.on_step is not None:
                self.stats.on_step(elapsed)
            await reply(
                infer.ForwardResult(
                    encode_hidden(out, "float32" if self.shard.has_head else request.wire_dtype),
                    is_logits=self.shard.has_head,
                    compute_us=int(elapsed * 1e6),
                )
            )
