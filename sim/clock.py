"""Virtual time and seeded randomness for libp2p running under ``trio.testing.MockClock``.

py-libp2p reads the wall clock directly (``time.time()``/``time.monotonic()``, ~300 calls: TTLs, backoff,
rate limits, seen-caches, peer scores; ``datetime.now()`` for DHT record stamps). Under a mock clock
those reads would disagree with trio's virtual time, so `virtual_time` swaps the ``time`` and
``datetime`` names inside every loaded ``libp2p`` module for stand-ins that answer from the mock clock
(other attributes fall through to the real ones).

The pubsub seen-caches sweep expired ids on an OS thread every ``sweep_interval`` *real* seconds, which
would make behaviour depend on the wall clock and keep a thread per node. Inside `virtual_time` those
caches start no thread; instead each cache sweeps itself, lazily, before any access that comes after a
sweep instant, with that instant as the cut-off — exactly what the thread would have done, but in
virtual time and without a thread.

`seeded` makes the rest reproducible: Python's global ``random`` (gossipsub peer sampling, dial jitter),
the ``secrets`` name in libp2p modules (DHT refresh keys, ping payloads) and trio's scheduler tie-breaks.
Both context managers undo everything on exit. Neither is thread-safe: enter them from the thread that
runs trio, around the code that builds and runs the hosts (objects built earlier keep the real clock).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import itertools
import random
import sys
import threading
import time as _real_time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import trio
import trio.testing
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID as PeerID

# Virtual t=0 reads as this wall-clock instant (2024-01-01T00:00:00Z): far from 0, so code that
# subtracts timestamps or checks expiry behaves as it does in production.
EPOCH = 1_704_067_200.0

# libp2p modules whose clock matters; importing them first makes sure they get patched.
_PRELOAD = (
    "libp2p",
    "libp2p.network.swarm",
    "libp2p.host.basic_host",
    "libp2p.host.ping",
    "libp2p.pubsub.pubsub",
    "libp2p.pubsub.gossipsub",
    "libp2p.kad_dht.kad_dht",
    "libp2p.kad_dht.routing_table",
    "libp2p.tools.timed_cache.base_timed_cache",
    "libp2p.tools.timed_cache.last_seen_cache",
    "libp2p.tools.timed_cache.first_seen_cache",
)


def sim_clock() -> trio.testing.MockClock:
    """``MockClock(autojump_threshold=0)`` that answers the time without reading the real clock.

    At rate 0 (every simulation) ``MockClock.current_time`` still reads ``time.perf_counter`` and multiplies
    the offset by zero: ten million times per 100 virtual s at 200 nodes (libp2p's clock reads and every
    ``trio.current_time()``). The answer is the clock's virtual base, which this returns directly. (trio
    forbids subclassing ``MockClock``, so the method is replaced on the instance.)"""
    clock = trio.testing.MockClock(autojump_threshold=0)
    measured = clock.current_time

    def current_time() -> float:
        if clock._rate == 0:
            return clock._virtual_base
        return measured()

    clock.current_time = current_time  # type: ignore[method-assign]
    return clock


def _libp2p_modules() -> list[ModuleType]:
    for name in _PRELOAD:
        importlib.import_module(name)
    return [m for n, m in sorted(sys.modules.items()) if n.startswith("libp2p") and m is not None]


class VirtualTimeModule:
    """Looks like the ``time`` module but tells virtual time from ``clock`` (any object with
    ``current_time()``, e.g. a ``MockClock``; safe to read from other threads)."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock

    def monotonic(self) -> float:
        return self._clock.current_time()

    perf_counter = monotonic

    def time(self) -> float:
        return EPOCH + self._clock.current_time()

    def monotonic_ns(self) -> int:
        return int(self.monotonic() * 1e9)

    perf_counter_ns = monotonic_ns

    def time_ns(self) -> int:
        return int(self.time() * 1e9)

    def __getattr__(self, name: str) -> Any:
        return getattr(_real_time, name)


_active: VirtualTimeModule | None = None  # the clock inside `virtual_time`, for the seen-cache sweeps


def _virtual_now() -> float:
    return _active.monotonic() if _active is not None else _real_time.monotonic()


class _VirtualDatetime(datetime.datetime):
    """``datetime`` whose ``now``/``utcnow`` tell virtual time (the DHT stamps records with it)."""

    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> datetime.datetime:  # type: ignore[override]
        return datetime.datetime.fromtimestamp(EPOCH + _virtual_now(), tz)

    @classmethod
    def utcnow(cls) -> datetime.datetime:  # type: ignore[override]
        return datetime.datetime.fromtimestamp(EPOCH + _virtual_now(), datetime.UTC).replace(tzinfo=None)


class _NoThread:
    """Stands in for the seen-cache sweeper thread: starts nothing, schedules virtual-time sweeps."""

    def __init__(self, target: Any = None, daemon: bool | None = None, **_: Any) -> None:
        self._cache = getattr(target, "__self__", None)
        if self._cache is not None:
            self._cache._sim_next_sweep = _virtual_now() + self._cache.sweep_interval

    def start(self) -> None:
        return None

    def join(self, timeout: float | None = None) -> None:
        return None


class _ThreadingWithoutThreads:
    Lock = staticmethod(threading.Lock)
    Event = threading.Event
    Thread = _NoThread


def _sweep_due(cache: Any) -> None:
    """Run the sweeps a background thread would have run by now (cut-off = the last sweep instant)."""
    due = getattr(cache, "_sim_next_sweep", None)
    if due is None or cache._stop_event.is_set():
        return
    now = _virtual_now()
    if now < due:
        return
    interval = cache.sweep_interval
    last = due + interval * int((now - due) // interval)
    cutoff = EPOCH + last
    with cache.lock:
        for key in [k for k, expiry in cache.cache.items() if expiry < cutoff]:
            del cache.cache[key]
    cache._sim_next_sweep = last + interval


@contextlib.contextmanager
def virtual_time(clock: Any) -> Iterator[VirtualTimeModule]:
    """Point libp2p's clock reads at ``clock`` and run its seen-cache sweeps in virtual time.

    Yields the stand-in ``time`` module (``.time()`` is `EPOCH` + virtual seconds). Undone on exit.
    """
    global _active
    fake = VirtualTimeModule(clock)
    from libp2p.tools.timed_cache import base_timed_cache, first_seen_cache, last_seen_cache

    saved: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, value: Any) -> None:
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    real = _real_time
    previous = _active
    try:
        for module in _libp2p_modules():
            if getattr(module, "time", None) is real:
                patch(module, "time", fake)
            if getattr(module, "datetime", None) is datetime.datetime:
                patch(module, "datetime", _VirtualDatetime)
        patch(base_timed_cache, "threading", _ThreadingWithoutThreads)
        for cls in (last_seen_cache.LastSeenCache, first_seen_cache.FirstSeenCache):
            for method in ("add", "has"):
                patch(cls, method, _sweeping(getattr(cls, method)))
        _active = fake
        yield fake
    finally:
        _active = previous
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def _sweeping(method: Any) -> Any:
    def wrapper(self: Any, key: bytes) -> bool:
        # (`_sweep_due` checks all this again; the check here is inlined because it runs on every
        # pubsub message, and a sweep is due about once a minute per cache)
        due = self.__dict__.get("_sim_next_sweep")
        if due is not None and _active is not None and _active.monotonic() >= due:
            _sweep_due(self)
        return method(self, key)

    wrapper.__wrapped__ = method  # type: ignore[attr-defined]
    return wrapper


class _SeededSecrets:
    """The parts of ``secrets`` libp2p uses, drawn from a seeded RNG. For simulation only."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def token_bytes(self, n: int = 32) -> bytes:
        return self._rng.randbytes(n)

    def token_hex(self, n: int = 32) -> str:
        return self.token_bytes(n).hex()

    def randbelow(self, n: int) -> int:
        return self._rng.randrange(n)

    def randbits(self, k: int) -> int:
        return self._rng.getrandbits(k)

    def choice(self, seq: Any) -> Any:
        return self._rng.choice(seq)


def _stable_peer_id_hash(self: Any) -> int:
    """A peer ID's hash from its own bytes (the key's last 8), the same in every process. The library hashes
    the bytes with Python's ``hash``, which ``PYTHONHASHSEED`` salts: sets of peer IDs then iterate in
    another order in another process, and choices made from them (gossip targets, DHT peers) differ.
    Cached on the ID (tens of millions of dict lookups in a 200-node run)."""
    try:
        return self._stable_hash  # type: ignore[no-any-return]
    except AttributeError:
        value = self._stable_hash = int.from_bytes(self._bytes[-8:], "big") >> 2
        return value


def _connection_order(conn: Any) -> int:
    """A connection's place in the order in which `_stable_best_connection` first met it."""
    order = conn.__dict__.get("_sim_order")
    if order is None:
        order = conn.__dict__["_sim_order"] = next(_connection_orders)
    return order


_connection_orders = itertools.count()


def _stable_best_connection(self: Any, connections: list[Any]) -> Any:
    """The swarm's choice among several connections to one peer, as the library makes it (direct before
    relayed, then more open streams), with a tie broken by the order in which connections were first met
    instead of by ``id(conn)``. A memory address differs between processes, and so did which of two
    connections carried a stream, and every arrival time after it."""
    from libp2p.connection_types import ConnectionType

    def key(conn: Any) -> tuple[bool, int, int]:
        try:
            direct = conn.get_connection_type() == ConnectionType.DIRECT
        except Exception:
            direct = True
        try:
            streams = len(conn.get_streams())
        except Exception:
            streams = 0
        return (direct, streams, _connection_order(conn))

    return max(connections, key=key)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[random.Random]:
    """Seed every source of randomness libp2p and trio's scheduler use; yields an RNG for the caller.

    Cryptographic keys that libp2p makes itself (Noise ephemeral keys) stay random: they change bytes
    but never lengths or timing, so traces still repeat. Undone on exit.
    """
    import trio._core._run as trio_run  # private knob: the scheduler's tie-break RNG and its mode

    state = random.getstate()
    sched_state = trio_run._r.getstate()
    sched_mode = trio_run._ALLOW_DETERMINISTIC_SCHEDULING
    id_hash = PeerID.__hash__
    best_connection = Swarm._best_connection
    saved: list[tuple[ModuleType, Any]] = []
    secrets_rng = random.Random(f"secrets|{seed}")
    global _connection_orders
    _connection_orders = itertools.count()
    try:
        random.seed(f"global|{seed}")
        trio_run._r.seed(f"trio|{seed}")
        trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
        PeerID.__hash__ = _stable_peer_id_hash  # type: ignore[method-assign]
        Swarm._best_connection = _stable_best_connection  # type: ignore[method-assign]
        fake = _SeededSecrets(secrets_rng)
        for module in _libp2p_modules():
            real = getattr(module, "secrets", None)
            if isinstance(real, ModuleType) and real.__name__ == "secrets":
                saved.append((module, real))
                module.secrets = fake  # type: ignore[attr-defined]
        yield random.Random(f"caller|{seed}")
    finally:
        for module, real in saved:
            module.secrets = real  # type: ignore[attr-defined]
        PeerID.__hash__ = id_hash  # type: ignore[method-assign]
        Swarm._best_connection = best_connection  # type: ignore[method-assign]
        trio_run._ALLOW_DETERMINISTIC_SCHEDULING = sched_mode  # type: ignore[misc]
        trio_run._r.setstate(sched_state)
        random.setstate(state)


@contextlib.contextmanager
def simulation(clock: trio.testing.MockClock, seed: int) -> Iterator[random.Random]:
    """`virtual_time` and `seeded` together; yields the caller's seeded RNG."""
    with virtual_time(clock), seeded(seed) as rng:
        yield rng
