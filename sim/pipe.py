"""Simulated TCP connections: two ordered byte pipes whose segments arrive at times `sim.net` sets.

`SimStream` is one end, with the semantics libp2p's TCP stream wrapper exposes: reads return ``b""`` at
EOF, a reset raises `ConnectionReset`, and a cancelled read never loses bytes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import trio

if TYPE_CHECKING:
    from .net import SimNetwork


#: A send that does not wait for the link is a schedule point only once per this many on the stream.
YIELD_EVERY_SENDS = 16


class ConnectionReset(OSError):
    """The connection was reset (drop draw, partition in "drop" mode, or a crash on this side)."""


@dataclass
class Segment:
    arrival: float | None  # None: held back by a stalled partition
    data: bytes  # b"" marks the sender's FIN


class Pipe:
    """One direction of a connection: segments in arrival order."""

    def __init__(self, src: str, dst: str) -> None:
        self.src, self.dst = src, dst
        self.segments: deque[Segment] = deque()
        self.last_arrival = 0.0
        self.changed = trio.Event()
        self.fin_sent = False

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


@dataclass(eq=False)
class SimConnection:
    """Both directions of one simulated TCP connection between ``(a_ip, a_port)`` and ``(b_ip, b_port)``."""

    net: SimNetwork
    a: tuple[str, int]
    b: tuple[str, int]
    id: int
    a_to_b: Pipe = field(init=False)
    b_to_a: Pipe = field(init=False)
    reset: bool = False
    closed: set[str] = field(default_factory=set)  # which ends ("a"/"b") closed locally

    def __post_init__(self) -> None:
        self.a_to_b = Pipe(self.a[0], self.b[0])
        self.b_to_a = Pipe(self.b[0], self.a[0])

    def ends(self) -> tuple[SimStream, SimStream]:
        return SimStream(self, "a"), SimStream(self, "b")

    def do_reset(self) -> None:
        if not self.reset:
            self.reset = True
            self.net._record("reset", self.a[0], self.b[0], self.id)
            self.a_to_b.notify()
            self.b_to_a.notify()
            self.net._forget(self)


class SimStream:
    """One end of a `SimConnection`, with the byte-stream semantics libp2p's TCP stream has.

    ``read`` returns ``b""`` at EOF or after a local close; both ``read`` and ``write`` raise
    `ConnectionReset` once the connection is reset; ``write`` after a local close is silently ignored;
    ``write`` after the peer closed resets the connection (TCP's RST) and raises `ConnectionReset`.
    """

    def __init__(self, conn: SimConnection, side: Literal["a", "b"]) -> None:
        self.conn = conn
        self.side = side
        self.local = conn.a if side == "a" else conn.b
        self.remote = conn.b if side == "a" else conn.a
        self._rx = conn.b_to_a if side == "a" else conn.a_to_b
        self._tx = conn.a_to_b if side == "a" else conn.b_to_a
        self._sends = 0

    @property
    def closed(self) -> bool:
        return self.side in self.conn.closed

    async def send(self, data: bytes) -> None:
        if self.conn.reset:
            raise ConnectionReset("connection reset")
        if self.closed or not data:
            await trio.lowlevel.checkpoint()
            return
        if ("b" if self.side == "a" else "a") in self.conn.closed:
            # The peer closed (or died): like TCP answering with RST, the connection is reset.
            self.conn.do_reset()
            raise ConnectionReset("connection reset by peer")
        await trio.lowlevel.checkpoint_if_cancelled()
        done = self.conn.net._transmit(self.conn, self._tx, bytes(data))
        if done > trio.current_time():
            await trio.sleep_until(done)
            return
        # A send that fits in the link returns at once, like a socket's send into a free buffer; every
        # `YIELD_EVERY_SENDS`-th one is a schedule point so that no loop of sends runs without yielding.
        # (Yamux, which makes nearly all sends, yields after each frame anyway; a schedule point per send
        # doubled the scheduler turns of every message.)
        self._sends += 1
        if self._sends % YIELD_EVERY_SENDS == 0:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` (default 64 KiB) of what has arrived, waiting for a segment if none has.

        Scheduling is trio's socket's: a read that finds data is a checkpoint; one that had to wait returns
        as soon as it is woken, without a second trip through the scheduler."""
        limit = max_bytes if max_bytes is not None else 65536
        waited = False
        while True:
            if self.conn.reset:
                raise ConnectionReset("connection reset")
            if self.closed:
                await trio.lowlevel.checkpoint()
                return b""
            now = trio.current_time()
            rx = self._rx
            if rx.segments and rx.segments[0].arrival is not None and rx.segments[0].arrival <= now:
                # Take a cancellation *before* consuming bytes, never after: lost bytes would break Noise.
                await trio.lowlevel.checkpoint_if_cancelled()
                if rx.segments[0].data == b"":  # FIN: stays queued so later reads see EOF too
                    return b""
                out = bytearray()
                while rx.segments and len(out) < limit:
                    head = rx.segments[0]
                    if head.arrival is None or head.arrival > now or head.data == b"":
                        break
                    take = head.data[: limit - len(out)]
                    out += take
                    if len(take) == len(head.data):
                        rx.segments.popleft()
                    else:
                        head.data = head.data[len(take) :]
                if not waited:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return bytes(out)
            # Set when a segment arrives (the network's waker task), on reset, on close and on a heal.
            await rx.changed.wait()
            waited = True

    async def aclose(self) -> None:
        """Close this end: the peer reads EOF after the data already sent. Idempotent."""
        if not self.closed and not self.conn.reset:
            self.conn.closed.add(self.side)
            self.conn.net._transmit(self.conn, self._tx, b"")
            if len(self.conn.closed) == 2:
                self.conn.net._forget(self.conn)
        else:
            self.conn.closed.add(self.side)
        self._rx.notify()
        await trio.lowlevel.checkpoint()
