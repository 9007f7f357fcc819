"""The simulated network: hosts with fake IPv4 addresses joined by links with latency, jitter, bandwidth
and loss, plus partitions, crashes and restarts. Bytes move through in-memory pipes timed by trio's clock.

Loss is modelled the way TCP shows it to an application: a lost segment is retransmitted, so it *stalls*
the byte stream (head-of-line blocking) instead of vanishing, and a hopeless link *drops* the connection.
Bytes never disappear inside a connection, which Noise could not survive.

One-way delay of a write = queueing behind earlier writes on the same directed link + ``len/bandwidth``
(serialisation) + ``latency`` (+ a uniform jitter draw, + a stall when the loss draw hits). Arrivals on
one connection stay in order. The writer returns once its bytes are serialised (a one-segment send
buffer), so bandwidth pushes back on senders.

``quantum`` (seconds, default 0 = exact) rounds arrival times up to a grid: with jittered links nearly
every delivery otherwise gets its own instant, and trio's scheduler pays one loop turn per instant.

Every random draw comes from a per-directed-link RNG seeded from the network seed and the two addresses,
so a link's draws do not depend on what other links did. With trio's deterministic scheduling (see
`sim.clock`) the same seed gives the same event trace.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import trio

from .pipe import Pipe, Segment, SimConnection, SimStream

PartitionMode = Literal["stall", "drop"]
EPHEMERAL_PORTS = 49152


class Unreachable(OSError):
    """A dial that cannot succeed: no route (partition, crashed dialer) or nobody listening (refused)."""


@dataclass(frozen=True)
class LinkSpec:
    """How one direction of a link behaves. Times in seconds, bandwidth in bytes per second."""

    latency: float = 0.0
    jitter: float = 0.0  # each write's delay gets a uniform draw in [-jitter, +jitter]; never below 0
    bandwidth: float | None = None  # None: no serialisation delay
    loss: float = 0.0  # probability that a write stalls for `stall` seconds (a retransmission)
    stall: float = 0.2
    drop: float = 0.0  # probability that a write resets the connection

    def __post_init__(self) -> None:
        if self.latency < 0 or self.jitter < 0 or self.stall < 0:
            raise ValueError("latency, jitter and stall are >= 0")
        if self.bandwidth is not None and self.bandwidth <= 0:
            raise ValueError("bandwidth is > 0 bytes/s or None")
        if not (0 <= self.loss <= 1 and 0 <= self.drop <= 1):
            raise ValueError("loss and drop are probabilities")


@dataclass
class _Uplink:
    bandwidth: float
    tx_free_at: float = 0.0


@dataclass
class _DirectedLink:
    spec: LinkSpec
    rng: random.Random
    tx_free_at: float = 0.0


@dataclass(eq=False)
class Partition:
    """A cut between two sets of addresses. Undo with `SimNetwork.heal`."""

    side_a: frozenset[str]
    side_b: frozenset[str]
    mode: PartitionMode

    def cuts(self, x: str, y: str) -> bool:
        return (x in self.side_a and y in self.side_b) or (x in self.side_b and y in self.side_a)


class SimNetwork:
    """Nodes (fake IPv4 addresses), their listeners and connections, and the links between them.

    Not thread-safe: use it from the trio thread only. All methods that change the network are
    synchronous and take effect at the current virtual time.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        default_link: LinkSpec | Callable[[str, str], LinkSpec] | None = None,
        record_trace: bool = False,
        quantum: float = 0.0,
    ) -> None:
        if quantum < 0:
            raise ValueError("quantum is >= 0 seconds")
        self.seed = seed
        self.quantum = quantum
        # A LinkSpec for every pair, or a function of (src, dst) asked once per directed pair, so
        # large scenarios can derive latency from, say, node coordinates without N^2 set_link calls.
        self.default_link = default_link or LinkSpec()
        self._uplinks: dict[str, _Uplink] = {}
        # Every event feeds a running hash (cheap, constant memory); the full list only on request.
        self.trace: list[tuple] | None = [] if record_trace else None
        self.counts: Counter[str] = Counter()  # events by kind: connect, send, reset, crash, ...
        self._trace_hash = hashlib.sha256()
        self._specs: dict[tuple[str, str], LinkSpec] = {}
        self._links: dict[tuple[str, str], _DirectedLink] = {}
        self._up: dict[str, bool] = {}
        self._next_port: dict[str, int] = {}
        self._listeners: dict[tuple[str, int], object] = {}
        self._conns: dict[int, SimConnection] = {}
        self._partitions: list[Partition] = []
        self._conn_ids = 0
        self.bytes_sent = 0
        # Arrival wake-ups: (arrival, order, pipe). One system task sleeps until the earliest and notifies
        # the pipe's reader, so readers wait on an event alone and trio registers one deadline per distinct
        # arrival instant instead of one per read (a deadline per read was a third of the CPU in a 200-node profile).
        self._wakeups: list[tuple[float, int, Pipe]] = []
        self._wakeup_order = 0
        self._waker_scope: trio.CancelScope | None = None
        self._waker_kick = trio.Event()
        self._waker_run: object = None  # the trio run the waker task lives in

    # -- topology -------------------------------------------------------------------------------------

    def add_node(self, ip: str | None = None) -> str:
        """Register a node and return its address (``10.a.b.c``, allocated in order unless given)."""
        if ip is None:
            n = len(self._up) + 1
            ip = f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
        if ip in self._up:
            raise ValueError(f"address {ip} is already taken")
        self._up[ip] = True
        self._next_port[ip] = EPHEMERAL_PORTS
        return ip

    @property
    def nodes(self) -> list[str]:
        return list(self._up)

    def set_link(self, x: str, y: str, spec: LinkSpec, *, both_ways: bool = True) -> None:
        """Set how bytes travel from ``x`` to ``y`` (and back, unless ``both_ways`` is false)."""
        pairs = [(x, y), (y, x)] if both_ways else [(x, y)]
        for pair in pairs:
            self._specs[pair] = spec
            if pair in self._links:
                self._links[pair].spec = spec

    def link(self, x: str, y: str) -> LinkSpec:
        spec = self._specs.get((x, y))
        if spec is None:
            spec = self.default_link(x, y) if callable(self.default_link) else self.default_link
            self._specs[(x, y)] = spec
        return spec

    def set_uplink(self, ip: str, bandwidth: float | None) -> None:
        """Cap everything ``ip`` sends, over all its links together, at ``bandwidth`` bytes/s (None: no cap).
        A write then serialises at the slower of the node's uplink and the link."""
        if bandwidth is not None and bandwidth <= 0:
            raise ValueError("bandwidth is > 0 bytes/s or None")
        if bandwidth is None:
            self._uplinks.pop(ip, None)
        else:
            self._uplinks.setdefault(ip, _Uplink(bandwidth)).bandwidth = bandwidth

    def _directed(self, x: str, y: str) -> _DirectedLink:
        link = self._links.get((x, y))
        if link is None:
            digest = hashlib.sha256(f"{self.seed}|{x}|{y}".encode()).digest()
            link = _DirectedLink(self.link(x, y), random.Random(int.from_bytes(digest[:8], "big")))
            self._links[(x, y)] = link
        return link

    # -- faults ---------------------------------------------------------------------------------------

    def is_up(self, ip: str) -> bool:
        return self._up.get(ip, False)

    def is_cut(self, x: str, y: str) -> bool:
        return any(p.cuts(x, y) for p in self._partitions)

    def partition(
        self, side_a: Iterable[str], side_b: Iterable[str], *, mode: PartitionMode = "stall"
    ) -> Partition:
        """Cut ``side_a`` from ``side_b``. New dials across fail at once. Open connections across either
        stall (bytes are held and delivered after `heal`, as TCP retransmissions would) or are reset
        (``mode="drop"``)."""
        part = Partition(frozenset(side_a), frozenset(side_b), mode)
        self._partitions.append(part)
        self._record("partition", ",".join(sorted(part.side_a)), ",".join(sorted(part.side_b)), mode)
        if mode == "drop":
            for conn in list(self._conns.values()):
                if part.cuts(conn.a[0], conn.b[0]):
                    conn.do_reset()
        return part

    def heal(self, part: Partition) -> None:
        """Undo one partition; bytes it held leave now (one latency later they arrive, in order)."""
        if part not in self._partitions:
            return
        self._partitions.remove(part)
        self._record("heal", ",".join(sorted(part.side_a)), ",".join(sorted(part.side_b)), part.mode)
        now = trio.current_time()
        for conn in list(self._conns.values()):
            for pipe in (conn.a_to_b, conn.b_to_a):
                if self.is_cut(pipe.src, pipe.dst):
                    continue
                for seg in pipe.segments:
                    if seg.arrival is None:
                        seg.arrival = pipe.last_arrival = max(
                            self._quantize(now + self._delay(self._directed(pipe.src, pipe.dst))),
                            pipe.last_arrival,
                        )
                        self._wake_at(pipe, seg.arrival)

    def crash(self, ip: str) -> None:
        """The node's process dies: its listeners go, its own ends of connections close, and each
        peer reads EOF one latency later (the kernel closes the sockets of a dead process)."""
        self._down(ip, "crash")

    def stop(self, ip: str) -> None:
        """The node's process exits: to the network the same as `crash`, but traced as a stop."""
        self._down(ip, "stop")

    def _down(self, ip: str, kind: str) -> None:
        if not self._up.get(ip):
            return
        self._up[ip] = False
        self._record(kind, ip, "", 0)
        for key in [k for k in self._listeners if k[0] == ip]:
            del self._listeners[key]
        for conn in list(self._conns.values()):
            for side, pipe in (("a", conn.a_to_b), ("b", conn.b_to_a)):
                end = conn.a if side == "a" else conn.b
                if end[0] == ip and side not in conn.closed and not conn.reset:
                    conn.closed.add(side)
                    self._transmit(conn, pipe, b"", force=True)
                    (conn.b_to_a if side == "a" else conn.a_to_b).notify()
            if len(conn.closed) == 2:
                self._forget(conn)

    def restart(self, ip: str) -> None:
        """Bring a crashed or stopped node back; its software must listen again (a new host, same address)."""
        if ip not in self._up:
            raise ValueError(f"unknown address {ip}")
        if not self._up[ip]:
            self._up[ip] = True
            self._record("restart", ip, "", 0)

    # -- connections ----------------------------------------------------------------------------------

    def listen(self, ip: str, port: int, listener: object) -> int:
        """Register ``listener`` (anything with ``accept(stream)``) on ``ip:port``; port 0 picks one."""
        if not self.is_up(ip):
            raise Unreachable(f"{ip} is down or unknown")
        if port == 0:
            port = self._ephemeral(ip)
        if (ip, port) in self._listeners:
            raise OSError(f"address in use: {ip}:{port}")
        self._listeners[(ip, port)] = listener
        return port

    def unlisten(self, ip: str, port: int, listener: object) -> None:
        if self._listeners.get((ip, port)) is listener:
            del self._listeners[(ip, port)]

    async def connect(self, src: str, dst: str, port: int) -> SimStream:
        """Open a connection from ``src`` to ``dst:port``; returns the dialer's end after one round trip.
        Raises `Unreachable` when the dialer is down, the pair is partitioned, or nobody listens."""
        if not self.is_up(src) or dst not in self._up or self.is_cut(src, dst):
            self._record("unreachable", src, dst, port)
            await trio.lowlevel.checkpoint()
            raise Unreachable(f"no route from {src} to {dst}")
        # SYN there, SYN-ACK back.
        rtt = self._delay(self._directed(src, dst)) + self._delay(self._directed(dst, src))
        await trio.sleep_until(self._quantize(trio.current_time() + rtt))
        listener = self._listeners.get((dst, port))
        if listener is None or not self.is_up(src) or self.is_cut(src, dst):
            self._record("refused", src, dst, port)
            raise Unreachable(f"connection refused by {dst}:{port}")
        self._conn_ids += 1
        conn = SimConnection(self, (src, self._ephemeral(src)), (dst, port), self._conn_ids)
        self._conns[conn.id] = conn
        self._record("connect", src, dst, conn.id)
        mine, theirs = conn.ends()
        listener.accept(theirs)  # type: ignore[attr-defined]
        return mine

    def connections_of(self, ip: str) -> list[SimConnection]:
        return [c for c in self._conns.values() if ip in (c.a[0], c.b[0])]

    # -- internals ------------------------------------------------------------------------------------

    def _ephemeral(self, ip: str) -> int:
        port = self._next_port[ip]
        self._next_port[ip] = port + 1 if port < 65535 else EPHEMERAL_PORTS
        return port

    def _quantize(self, t: float) -> float:
        # Rounding arrivals up to a grid lets trio wake many tasks per clock jump instead of one.
        if self.quantum <= 0:
            return t
        return math.ceil(t / self.quantum - 1e-6) * self.quantum

    def _delay(self, link: _DirectedLink) -> float:
        spec = link.spec
        delay = spec.latency
        if spec.jitter:
            delay = max(0.0, delay + link.rng.uniform(-spec.jitter, spec.jitter))
        if spec.loss and link.rng.random() < spec.loss:
            delay += spec.stall
        return delay

    def _transmit(self, conn: SimConnection, pipe: Pipe, data: bytes, *, force: bool = False) -> float:
        """Queue ``data`` (b"" = FIN) on ``pipe``; returns when the sender has finished serialising."""
        now = trio.current_time()
        link = self._directed(pipe.src, pipe.dst)
        spec = link.spec
        uplink = self._uplinks.get(pipe.src)
        start = max(now, link.tx_free_at, uplink.tx_free_at if uplink else now)
        rates = [r for r in (spec.bandwidth, uplink.bandwidth if uplink else None) if r]
        done = start + (len(data) / min(rates) if rates else 0.0)
        link.tx_free_at = done
        if uplink is not None:
            uplink.tx_free_at = done
        if data and spec.drop and link.rng.random() < spec.drop and not force:
            conn.do_reset()
            return done
        if self.is_cut(pipe.src, pipe.dst):
            arrival: float | None = None
        else:
            arrival = pipe.last_arrival = max(self._quantize(done + self._delay(link)), pipe.last_arrival)
        if not data:
            pipe.fin_sent = True
        pipe.segments.append(Segment(arrival, data))
        self.bytes_sent += len(data)
        self._record("send" if data else "fin", pipe.src, pipe.dst, len(data))
        if arrival is not None:
            self._wake_at(pipe, arrival)
        return done

    def _wake_at(self, pipe: Pipe, arrival: float) -> None:
        """Have ``pipe``'s reader notified at virtual time ``arrival``."""
        run = trio.lowlevel.current_root_task()
        if self._waker_run is not run:  # first use in this trio run (a network may outlive one run)
            self._waker_run = run
            self._wakeups.clear()
            self._waker_scope = None
            self._waker_kick = trio.Event()
            trio.lowlevel.spawn_system_task(self._waker, name="sim-net-waker")
        self._wakeup_order += 1
        heapq.heappush(self._wakeups, (arrival, self._wakeup_order, pipe))
        scope = self._waker_scope
        if scope is None:
            self._waker_kick.set()
        elif arrival < scope.deadline:
            scope.deadline = arrival

    async def _waker(self) -> None:
        heap = self._wakeups
        while True:
            now = trio.current_time()
            woken: set[int] = set()
            while heap and heap[0][0] <= now:
                _t, _order, pipe = heapq.heappop(heap)
                if id(pipe) not in woken:
                    woken.add(id(pipe))
                    pipe.notify()
            if heap:
                with trio.move_on_at(heap[0][0]) as scope:
                    self._waker_scope = scope
                    await trio.sleep_forever()
                self._waker_scope = None
            else:
                self._waker_kick = trio.Event()
                await self._waker_kick.wait()

    def _forget(self, conn: SimConnection) -> None:
        self._conns.pop(conn.id, None)

    def _record(self, kind: str, x: str, y: str, n: object) -> None:
        event = (round(trio.current_time(), 9), kind, x, y, n)
        self.counts[kind] += 1
        self._trace_hash.update(repr(event).encode())
        if self.trace is not None:
            self.trace.append(event)

    def trace_digest(self) -> str:
        """A short hash of every event so far (time, kind, addresses, size), for comparing runs."""
        return self._trace_hash.hexdigest()[:16]
