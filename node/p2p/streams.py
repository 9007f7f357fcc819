"""Request/response and streaming over libp2p streams, framed with `protocol.codec`.

A `StreamProtocol` names a protocol id, the message types each side may send, a max frame size and
timeouts. `serve` installs a handler that enforces a per-peer concurrency limit and answers problems with
an `ErrorReply`; `open_stream` / `request` are the client side. Every read and write has a timeout.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from node.logging import get_logger
from protocol import codec
from protocol.errors import MalformedMessage, SteppeError
from protocol.p2pmsg import ErrorReply

log = get_logger("steppe.p2p.streams")
_READ_SIZE = 256 * 1024


class StreamError(SteppeError):
    """A stream failed: closed, reset, timed out, or the peer could not be reached."""


class StreamTimeout(StreamError):
    """A read or a write did not complete within the protocol's timeout."""


class RemoteError(StreamError):
    """The peer answered with an `ErrorReply`; ``code`` says why (see `protocol.p2pmsg.ERROR_CODES`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"peer replied {code}: {message}")
        self.code = code


@dataclass(frozen=True)
class StreamProtocol:
    """One stream protocol. ``inbound``: what the dialer sends; ``outbound``: what the listener sends."""

    protocol_id: str
    inbound: tuple[type[codec.Message], ...]
    outbound: tuple[type[codec.Message], ...]
    max_frame: int = 1024 * 1024
    read_timeout: float = 10.0
    write_timeout: float = 10.0
    per_peer_limit: int = 8


class FramedStream:
    """A libp2p stream carrying our frames. Not safe for two concurrent readers (or writers)."""

    def __init__(self, stream: INetStream, proto: StreamProtocol, *, incoming: bool) -> None:
        self.stream = stream
        self.proto = proto
        self.peer_id: ID = stream.muxed_conn.peer_id
        # What we may receive: the dialer receives the listener's types (plus errors) and vice versa.
        self._allowed = proto.inbound if incoming else (*proto.outbound, ErrorReply)
        self._buf = bytearray()

    async def send(self, msg: codec.Message) -> None:
        """Raises `StreamTimeout` or `StreamError`."""
        data = codec.encode_frame(msg)
        if len(data) - codec.HEADER_SIZE > self.proto.max_frame and not isinstance(msg, ErrorReply):
            raise ValueError(f"{type(msg).__name__} exceeds {self.proto.protocol_id}'s frame limit")
        with trio.move_on_after(self.proto.write_timeout) as scope:
            try:
                await self.stream.write(data)
            except Exception as exc:  # the library raises many stream/muxer error types
                raise StreamError(f"write failed: {exc!r}") from exc
        if scope.cancelled_caught:
            raise StreamTimeout(f"write timed out after {self.proto.write_timeout} s")

    async def _fill(self, n: int) -> bool:
        """Buffer at least ``n`` bytes. False on a clean end of stream before any byte of the frame."""
        while len(self._buf) < n:
            try:
                chunk = await self.stream.read(_READ_SIZE)
            except EOFError:  # the library's StreamEOF: the peer closed its side
                if not self._buf:
                    return False
                raise MalformedMessage("stream ended inside a frame") from None
            except Exception as exc:  # reset/closed streams raise several library error types
                raise StreamError(f"read failed: {exc!r}") from exc
            if not chunk:
                if not self._buf:
                    return False
                raise MalformedMessage("stream ended inside a frame")
            self._buf += chunk
        return True

    async def receive(self) -> codec.Message | None:
        """The next message, or None at a clean end of stream.

        Raises `MalformedMessage` (bad or oversized frame), `RemoteError` (the peer sent an `ErrorReply`),
        `StreamTimeout` or `StreamError`.
        """
        with trio.move_on_after(self.proto.read_timeout) as scope:
            if not await self._fill(codec.HEADER_SIZE):
                return None
            cls, length = codec.parse_header_untrusted(bytes(self._buf[: codec.HEADER_SIZE]), self._allowed)
            if length > self.proto.max_frame and cls is not ErrorReply:  # ErrorReply has its own small limit
                raise MalformedMessage(f"frame of {length} bytes exceeds {self.proto.max_frame}")
            await self._fill(codec.HEADER_SIZE + length)
        if scope.cancelled_caught:
            raise StreamTimeout(f"read timed out after {self.proto.read_timeout} s")
        body = bytes(self._buf[codec.HEADER_SIZE : codec.HEADER_SIZE + length])
        del self._buf[: codec.HEADER_SIZE + length]
        msg = codec.decode_body_untrusted(cls, body)
        if isinstance(msg, ErrorReply):
            raise RemoteError(msg.code, msg.message)
        return msg

    async def expect(self, *types: type[codec.Message]) -> codec.Message:
        """Receive one message of one of ``types``. Raises like `receive`, plus `StreamError` at end of stream."""
        msg = await self.receive()
        if msg is None:
            raise StreamError("stream closed before the expected message")
        if types and not isinstance(msg, types):
            raise MalformedMessage(
                f"expected {', '.join(t.__name__ for t in types)}, got {type(msg).__name__}"
            )
        return msg

    async def close(self) -> None:
        with trio.move_on_after(self.proto.write_timeout):
            try:
                await self.stream.close()
            except Exception:  # already reset or closed by the peer: nothing left to release
                log.debug("stream_close_failed", protocol=self.proto.protocol_id)

    async def reset(self) -> None:
        with trio.move_on_after(self.proto.write_timeout):
            try:
                await self.stream.reset()
            except Exception:  # already gone
                log.debug("stream_reset_failed", protocol=self.proto.protocol_id)


Handler = Callable[[FramedStream], Awaitable[None]]


class ProtocolServer:
    """Installs a handler for one protocol on a host and enforces its per-peer concurrency limit."""

    def __init__(self, host: IHost, proto: StreamProtocol, handler: Handler) -> None:
        self.proto = proto
        self.handler = handler
        self.active: Counter[ID] = Counter()
        self.errors: Counter[str] = Counter()
        host.set_stream_handler(TProtocol(proto.protocol_id), self._on_stream)

    async def _on_stream(self, stream: INetStream) -> None:
        framed = FramedStream(stream, self.proto, incoming=True)
        peer = framed.peer_id
        if self.active[peer] >= self.proto.per_peer_limit:
            self.errors["busy"] += 1
            await self._fail(
                framed, "busy", f"at most {self.proto.per_peer_limit} concurrent streams per peer"
            )
            return
        self.active[peer] += 1
        try:
            await self.handler(framed)
        except MalformedMessage as exc:
            self.errors["malformed"] += 1
            log.info(
                "stream_request_malformed", protocol=self.proto.protocol_id, peer_id=str(peer), error=str(exc)
            )
            await self._fail(framed, "malformed", str(exc)[:500])
        except StreamTimeout:
            self.errors["timeout"] += 1
            await framed.reset()
        except StreamError as exc:
            self.errors["stream"] += 1
            log.debug("stream_failed", protocol=self.proto.protocol_id, peer_id=str(peer), error=str(exc))
            await framed.reset()
        except Exception:  # a bug in a handler must not take the node down; the peer learns it failed
            self.errors["internal"] += 1
            log.exception("stream_handler_failed", protocol=self.proto.protocol_id, peer_id=str(peer))
            await self._fail(framed, "internal", "the handler failed")
        else:
            await framed.close()
        finally:
            self.active[peer] -= 1
            if not self.active[peer]:
                del self.active[peer]

    async def _fail(self, framed: FramedStream, code: str, message: str) -> None:
        try:
            await framed.send(ErrorReply(code, message))
        except StreamError:
            pass  # the peer is gone; nothing more to tell it
        await framed.close()


@asynccontextmanager
async def open_stream(host: IHost, peer_id: ID, proto: StreamProtocol) -> AsyncIterator[FramedStream]:
    """A new stream to ``peer_id`` (connected or in the peerstore). Closed (or reset on error) after the block.

    Raises `StreamError` if the peer cannot be reached or does not speak the protocol.
    """
    with trio.move_on_after(proto.read_timeout) as scope:
        try:
            stream = await host.new_stream(peer_id, [TProtocol(proto.protocol_id)])
        except Exception as exc:  # dial, negotiation and muxer failures all surface here
            raise StreamError(f"cannot open {proto.protocol_id} to {peer_id}: {exc!r}") from exc
    if scope.cancelled_caught:
        raise StreamTimeout(f"opening {proto.protocol_id} to {peer_id} timed out")
    framed = FramedStream(stream, proto, incoming=False)
    try:
        yield framed
    except BaseException:
        await framed.reset()
        raise
    await framed.close()


async def request(host: IHost, peer_id: ID, proto: StreamProtocol, msg: codec.Message) -> codec.Message:
    """One request, one response on a fresh stream. Raises `StreamError`, `RemoteError`, `MalformedMessage`."""
    async with open_stream(host, peer_id, proto) as framed:
        await framed.send(msg)
        return await framed.expect(*proto.outbound)
