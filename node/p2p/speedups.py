"""py-libp2p 0.8.1 hot spots, fixed in place: found by profiling hundreds of nodes in one process.

Each costs a busy real node the same CPU per message as it cost the simulator. `install` applies them once;
importing `node.p2p.host` installs them. None changes what goes on the wire except fewer WINDOW_UPDATEs.

**Yamux credit in batches.** Yamux is credit-based: a stream's sender may have at most a window (256 KiB) of
bytes unacknowledged, and the receiver hands credit back with WINDOW_UPDATE frames; when is the receiver's
choice. py-libp2p sends one after nearly every read, and reads are small (its length-prefixed readers read
the varint prefix one byte per call). In an 84-node simulation Yamux sent 2.9 WINDOW_UPDATE frames per DATA
frame with the library's default, and 1.4 with its own batching switch (``PY_YAMUX_RELEASE_ON_READ=0``),
whose "partial slack" branch still answers nearly every read. Each such frame is a Noise message, a write,
a read and several scheduler turns on both ends. Here, bytes consumed by reads accumulate and go back in one
WINDOW_UPDATE once they reach half the receive window, as go-yamux does (with the library's auto-tuning,
which may double the window of a fast bulk stream). A reader that keeps up never leaves its sender waiting
for credit; one that stops reading stops its sender after a window, which is what flow control is for. The
check takes the stream's window lock only when an update is due, so a read costs no extra scheduler turn.

**A task's parent in O(1).** The library's service manager records which task spawned each task, and finds
it by walking every task of the service (every peer's writer, reader, each message in flight) and comparing
trio tasks: pubsub spawns a task per received message, so each message paid a walk over hundreds of tasks
(about 5% of the simulator's CPU). Here each running task is remembered by its trio task, and the answer is
checked to be attached, link by link, to this manager's tree, so it is exactly what the walk would find.

**Locks that do not yield when free.** A trio ``Lock`` is a scheduling point even when nobody holds it:
acquiring it parks the task for one scheduler turn. Yamux and the stream wrapper take four such locks per
frame written (stream state, the stream's writer lock and window lock, the connection's write lock) and
two per read, so a gossip message paid several scheduler turns in lock acquisitions alone. The locks of
those modules are replaced by `FastLock`/`FastSemaphore`: trio's semantics (fair hand-off, owner checks),
but a free lock is taken at once, without the owner bookkeeping trio keeps in its scheduler. Cancellation
is still checked on every acquire, and every frame written still passes a scheduling point (the socket's
send), so no loop runs without yielding.

**Yamux's write path without per-frame bookkeeping.** Each frame written decoded its own header and built
lists of flag names for a debug line, took the stream's write lock through a generator-based context
manager, and after the write yielded to the scheduler once more. The write itself is a scheduling point
(trio's socket yields on every send; the simulator's on every 16th, see docs/sim.md), so the second one
only cost a scheduler turn and a resumption of the writer's await chain: 42% of all trio task steps in a
200-node simulation. The frame is now written as is, under a plain context manager around the same
semaphore, and the write is the frame's one yield.

**A frame body already in hand is read without a timer.** Yamux reads each DATA frame's body under a 60 s
deadline (a cancel scope registered with trio's deadline heap, per frame). The sender writes header and body
as one Noise message, so once the header is read the body is nearly always buffered already; then it is
taken at once, and only a body still on its way gets the library's timed read.

**Recent messages replayed in one RPC.** When a peer subscribes, GossipSub hands it the messages of its
recent window (about 3 s), each in an RPC of its own with the sender's record attached; a node meets a new
peer every few seconds under churn. They now go together, up to `REPLAY_BATCH` per RPC, filtered by the
peer's score exactly as before.

**The sender's signed record, rebuilt every ten seconds.** Every pubsub RPC and DHT message carries the sender's
signed peer record, and the library rebuilt the host's address list (multiaddr parsing) and re-decoded the
cached record on every message to check that the addresses had not changed. The envelope is now reused for
up to `SENDER_RECORD_RECHECK_S` of trio time per host, so a change of address reaches peers within it.

**Signed records in DHT replies, checked once per distinct record.** Every Kademlia message carries its
sender's signed peer record and each peer in a reply carries its own; the library decodes each one and
verifies its signature (an Ed25519 check, protobuf and multiaddr parsing) every time, though a lookup sees
the same few hundred records again and again. Decoding is a function of the bytes alone, so the result for
identical bytes is reused (`ENVELOPE_CACHE_SIZE` distinct records; a record that fails is checked again
each time). What each host does with a record (the peer-id match, storing it unless an older sequence
number) still runs for every message.

**Duplicates dropped where they are read.** GossipSub delivers each message to a node about six times (once
per mesh peer). The library's read loop spawned a task for every copy, whose first act was to find the
message already seen and return (84% of copies in a 200-node run). A copy whose id is already in the
seen-cache is now dropped in the read loop; the rest are handled exactly as before, seen-check included.

**No task per no-op notification.** The swarm tells every notifee of every stream opened and closed, each
call in a task of its own inside a fresh nursery. The library's notifees and ours do nothing on stream
events, and a call that does nothing is now not made (a method is skipped only if its body is empty, or it
is one of the two pubsub methods that only checkpoint); connection events still reach every notifee.

**A length-prefixed message in hand is read in one go.** Pubsub and the DHT read each message as a varint
length, one byte per read, then the body: three trips through the stream wrapper, Yamux's stream and its
buffer lock, each trip with its state checks and debug-log formatting. When the stream's receive buffer
already holds a whole message (nearly always: a frame carries one), prefix and body are taken in one read.
A partial message, a bad prefix or one over the size limit go through the library's reader, which raises
as before.

**Forwarding without comparing every peer one by one.** After sending a message on, GossipSub queues it
for peers it cannot send to yet (not identified, or not subscribed yet), and found them by comparing every
pubsub peer with the forwarder and with a new `ID` built from the message's origin, then testing set
membership one peer at a time: a node with 60 peers did that for every message it forwarded (about 4% of a
200-node simulation). The same peers are now found by set differences, over the hashes the sets and dicts
already hold; each peer's queue gets the same messages. The choice of peers to send to skipped nothing but
first collected the topic's floodsub peers by looking up every peer's protocol; with no floodsub peer
connected it now builds the same set (in the same order) without that pass. Both are checked against the
library's own code on drawn states (`tests/p2p/test_p2p_speedups_pure.py`).

**Identify's address bookkeeping once per address.** Each identify exchange records the address the peer
sees us at, splitting it and our own listen addresses into IP/transport and the rest with multiaddr
parsing, about 1 ms per connection. The helpers are functions of the addresses' bytes, so their answers
are reused (`ADDRESS_CACHE_SIZE` distinct addresses).

**Cheaper peer-ID comparisons and free locks.** `ID.__eq__` tested for a string and for bytes before an
`ID`, the case of nearly all of its millions of calls; it now tests for an `ID` first. The fast locks read
trio's own cancellation state before deciding to await ``checkpoint_if_cancelled`` (a cancelled task still
raises at once, as before), so a free acquire is one call.

**Task ids from a counter.** The service manager gave every task, one per received pubsub message among
them, a random UUID (an ``os.urandom`` call) used only for hashing and equality; ids now come from a
process-wide counter, equally unique.
"""

from __future__ import annotations

import dis
import functools
import itertools
import logging
import types
import uuid
import weakref
from typing import Any

import libp2p.host.observed_addr_manager as _observed_module
import libp2p.kad_dht.utils as _dht_utils_module
import libp2p.network.stream.net_stream as _net_stream_module
import libp2p.network.swarm as _swarm_module
import libp2p.peer.id as _id_module
import libp2p.peer.peerstore as _peerstore_module
import libp2p.pubsub.gossipsub as _gossipsub_module
import libp2p.stream_muxer.rw_lock as _rw_lock_module
import libp2p.stream_muxer.yamux.yamux as _yamux_module
import libp2p.tools.anyio_service.trio_tasks as _trio_tasks_module
import libp2p.utils.varint as _varint_module
import trio
from libp2p.exceptions import ParseError
from libp2p.io.exceptions import IncompleteReadError
from libp2p.io.utils import read_exactly
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.pubsub_notifee import PubsubNotifee
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream
from libp2p.tools.anyio_service.trio_manager import TrioManager
from libp2p.tools.anyio_service.trio_tasks import FunctionTask

__all__ = [
    "ENVELOPE_CACHE_SIZE",
    "REPLAY_BATCH",
    "SENDER_RECORD_RECHECK_S",
    "FastLock",
    "FastSemaphore",
    "install",
    "release_threshold",
]

#: How long a host's signed peer record is reused before its addresses are compared again (trio seconds).
SENDER_RECORD_RECHECK_S = 10.0
#: Most recent messages replayed to a newly subscribed peer in one RPC.
REPLAY_BATCH = 32
#: Distinct signed peer records whose decoding the DHT reuses.
ENVELOPE_CACHE_SIZE = 4096


def release_threshold(stream: YamuxStream) -> int:
    """Consumed bytes that make a WINDOW_UPDATE due: half the stream's current receive window."""
    return max(stream.target_recv_window // 2, 1)


async def _release_credit(self: YamuxStream, *, bytes_read: int = 0) -> None:
    if bytes_read > 0:
        self._pending_recv_release += bytes_read
    if self._pending_recv_release < release_threshold(self):
        return
    async with self.window_lock:
        pending = self._pending_recv_release
        if pending < release_threshold(self):  # another reader released it meanwhile
            return
        self._pending_recv_release = 0
        self.recv_window += pending
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        increment = pending + self._apply_autotune_epoch(buffered)
    await self.send_window_update(increment, skip_lock=True)


# The FunctionTask each running trio task executes (set when it starts, dropped when it ends).
_running: dict[trio.lowlevel.Task, FunctionTask] = {}


def _get_trio_task(self: FunctionTask) -> trio.lowlevel.Task:
    return _trio_task_property.fget(self)  # type: ignore[misc]


def _set_trio_task(self: FunctionTask, value: trio.lowlevel.Task) -> None:
    _trio_task_property.fset(self, value)  # type: ignore[misc]
    _running[value] = self


async def _run(self: FunctionTask) -> None:
    try:
        await _original_run(self)
    finally:
        if self._trio_task is not None and _running.get(self._trio_task) is self:
            del _running[self._trio_task]


def _find_parent_task(self: TrioManager, trio_task: trio.lowlevel.Task):  # type: ignore[no-untyped-def]
    task = _running.get(trio_task)
    if task is None:
        return None
    node = task
    while node.parent is not None:  # reachable from this manager's roots, as the walk requires
        if node not in node.parent.children:
            return None
        node = node.parent
    return task if node in self._root_tasks else None


def _may_be_cancelled(task: trio.lowlevel.Task) -> bool:
    """Whether ``checkpoint_if_cancelled`` could raise in ``task``: trio's own test, read without the call
    and await (a free acquire is otherwise nearly free, and there are millions). Another trio's internals
    send every acquire through the real check."""
    try:
        return task._cancel_status.effectively_cancelled or task._runner.ki_pending  # type: ignore[attr-defined,no-any-return]
    except AttributeError:
        return True


class FastLock:
    """A `trio.Lock` whose acquire parks the task only when the lock is held (see the module notes).

    Same semantics as trio's: one owner, re-acquiring or releasing another task's lock raises
    ``RuntimeError``, waiters get the lock handed over in arrival order, and a cancelled acquire raises
    even when the lock is free. Unlike trio's it does not track owners in the scheduler to raise
    ``BrokenResourceError`` in waiters when an owner exits without releasing (libp2p takes these locks only
    in ``async with``); that bookkeeping was a third of the cost of a free acquire."""

    __slots__ = ("_lot", "_owner")

    def __init__(self) -> None:
        self._owner: trio.lowlevel.Task | None = None
        self._lot = trio.lowlevel.ParkingLot()

    def locked(self) -> bool:
        return self._owner is not None

    def acquire_nowait(self) -> None:
        task = trio.lowlevel.current_task()
        if self._owner is task:
            raise RuntimeError("attempt to re-acquire an already held Lock")
        if self._owner is not None or self._lot:
            raise trio.WouldBlock
        self._owner = task

    async def acquire(self) -> None:
        task = trio.lowlevel.current_task()
        if _may_be_cancelled(task):
            await trio.lowlevel.checkpoint_if_cancelled()
        if self._owner is None and not self._lot:
            self._owner = task
            return
        if self._owner is task:
            raise RuntimeError("attempt to re-acquire an already held Lock")
        await self._lot.park()  # `release` makes us the owner before waking us

    def release(self) -> None:
        if trio.lowlevel.current_task() is not self._owner:
            raise RuntimeError("can't release a Lock you don't own")
        if self._lot:
            (self._owner,) = self._lot.unpark(count=1)
        else:
            self._owner = None

    def statistics(self) -> trio.LockStatistics:
        return trio.LockStatistics(locked=self.locked(), owner=self._owner, tasks_waiting=len(self._lot))

    __aenter__ = acquire  # the same coroutine, not one awaiting another: this runs millions of times

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class FastSemaphore:
    """A `trio.Semaphore` whose acquire parks the task only when no token is free; tokens go to waiters
    in arrival order, and a cancelled acquire raises even when a token is free."""

    __slots__ = ("_lot", "_max_value", "_value")

    def __init__(self, initial_value: int, *, max_value: int | None = None) -> None:
        if not isinstance(initial_value, int) or initial_value < 0:
            raise ValueError("initial value must be a non-negative integer")
        if max_value is not None and (not isinstance(max_value, int) or max_value < initial_value):
            raise ValueError("max_value must be None or an integer >= initial_value")
        self._value = initial_value
        self._max_value = max_value
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def value(self) -> int:
        return self._value

    @property
    def max_value(self) -> int | None:
        return self._max_value

    def acquire_nowait(self) -> None:
        if self._value <= 0:
            raise trio.WouldBlock
        self._value -= 1

    async def acquire(self) -> None:
        if _may_be_cancelled(trio.lowlevel.current_task()):
            await trio.lowlevel.checkpoint_if_cancelled()
        if self._value > 0:
            self._value -= 1
            return
        await self._lot.park()  # `release` passes its token straight to us

    def release(self) -> None:
        if self._max_value is not None and self._value == self._max_value:
            raise ValueError("semaphore released too many times")
        if self._lot:
            self._lot.unpark(count=1)
        else:
            self._value += 1

    def statistics(self) -> Any:
        return trio.lowlevel.ParkingLotStatistics(tasks_waiting=len(self._lot))

    __aenter__ = acquire

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class _WriteLocked:
    """``ReadWriteLock.write_lock()`` as a plain async context manager (the library's is a generator-based
    ``asynccontextmanager``: a generator, its frame and two extra calls per Yamux frame written)."""

    __slots__ = ("_rw",)

    def __init__(self, rw: Any) -> None:
        self._rw = rw

    async def __aenter__(self) -> None:
        await self._rw.acquire_write()

    async def __aexit__(self, *exc: object) -> None:
        self._rw.release_write()


def _write_lock(self: Any) -> _WriteLocked:
    return _WriteLocked(self)


async def _write_frame(self: Yamux, data: bytes) -> None:
    """The library's ``_write_frame`` without its per-frame header decoding, which only fed a debug log, and
    without its trailing scheduling point: the write below already is one (trio's socket yields on every
    send), so each frame cost a second scheduler turn and a resumption of the writer's whole await chain."""
    async with self._write_lock:
        await self.secured_conn.write(data)


def _trio_with_fast_locks() -> types.ModuleType:
    """A stand-in for the ``trio`` name inside a library module: trio itself, but with our locks."""
    proxy = types.ModuleType("trio")
    proxy.__dict__.update(trio.__dict__)
    proxy.Lock = FastLock  # type: ignore[attr-defined]
    proxy.Semaphore = FastSemaphore  # type: ignore[attr-defined]
    proxy.steppe_fast_locks = True  # type: ignore[attr-defined]
    return proxy


_LOCKED_MODULES = (_yamux_module, _net_stream_module, _rw_lock_module)


async def _read_data_body(self: Yamux, length: int) -> bytes:
    conn = self.secured_conn
    buffered = getattr(conn, "high_watermark", 0) - getattr(conn, "low_watermark", 0)
    if buffered >= length:
        return await read_exactly(conn, length)
    return await _original_read_data_body(self, length)


_original_read_data_body = Yamux._read_data_body
_original_env_to_send = _peerstore_module.env_to_send_in_RPC
# host -> (signed record bytes, trio time it was last checked against the host's addresses)
_sender_records: weakref.WeakKeyDictionary[Any, tuple[bytes, float]] = weakref.WeakKeyDictionary()


def _env_to_send_in_rpc(host: Any) -> tuple[bytes, bool]:
    try:
        now = trio.current_time()
    except RuntimeError:  # outside trio: no clock to age the cache by
        return _original_env_to_send(host)
    hit = _sender_records.get(host)
    if hit is not None and now - hit[1] < SENDER_RECORD_RECHECK_S:
        return hit[0], False
    record, fresh = _original_env_to_send(host)
    _sender_records[host] = (record, now)
    return record, fresh


async def _send_recent_messages(self: Any, peer_id: Any, topic: str) -> None:
    pubsub = self.pubsub
    if pubsub is None or peer_id not in pubsub.peers:
        return
    messages = []
    for mid in self.mcache.window(topic):
        msg = self.mcache.get(mid)
        if msg is None:
            continue
        if self.scorer is not None and not self.scorer.allow_publish(peer_id, list(msg.topicIDs)):
            continue
        messages.append(msg)
    stream = pubsub.peers[peer_id]
    for start in range(0, len(messages), REPLAY_BATCH):
        rpc = _gossipsub_module.rpc_pb2.RPC(publish=messages[start : start + REPLAY_BATCH])
        rpc.senderRecord = _env_to_send_in_rpc(pubsub.host)[0]
        try:
            await pubsub.write_msg(stream, rpc)
        except Exception:  # the library logs and moves on too: the peer may be gone
            return


_original_publish = _gossipsub_module.GossipSub.publish


async def _publish(self: Any, msg_forwarder: Any, pubsub_msg: Any) -> None:
    """`GossipSub.publish` (forward a validated message) with the same steps in the same order; only the
    tests of the peers waiting for identify or subscription are cheaper (see the module's docstring)."""
    gs = _gossipsub_module
    if not self._check_spam_protection(msg_forwarder, pubsub_msg):
        return
    if not self._check_equivocation(pubsub_msg):
        return
    self.mcache.put(pubsub_msg)
    pubsub = self.pubsub
    msg_id = (
        pubsub.get_message_id(pubsub_msg) if pubsub is not None else pubsub_msg.from_id + pubsub_msg.seqno
    )
    origin = gs.ID(pubsub_msg.from_id)
    peers_gen = self._get_peers_to_send(
        pubsub_msg.topicIDs, msg_forwarder=msg_forwarder, origin=origin, msg_id=msg_id
    )
    rpc_msg = gs.rpc_pb2.RPC(publish=[pubsub_msg])
    if isinstance(pubsub, gs.Pubsub):
        rpc_msg.senderRecord = gs.env_to_send_in_RPC(pubsub.host)[0]
    await self._emit_idontwant_for_message(msg_id, pubsub_msg.topicIDs)
    await self._notify_observers(pubsub_msg.topicIDs, msg_id)
    scorer = self.scorer
    for peer_id in peers_gen:
        if pubsub is None:
            raise gs.NoPubsubAttached
        if peer_id not in pubsub.peers:
            continue
        if scorer is not None and not scorer.allow_publish(peer_id, list(pubsub_msg.topicIDs)):
            continue
        self.send_rpc(peer_id, rpc_msg)
    if pubsub is not None:
        # Peers not identified yet, or whose subscription has not arrived, get the message queued. The
        # library compared every pubsub peer with the forwarder and a new `ID` of the origin, one by one;
        # set differences reuse the hashes the sets and dicts already hold. A peer's queue is its own, so
        # the order in which peers are queued does not matter.
        identified, direct, skip = self.peer_protocol, self.direct_peers, {msg_forwarder, origin}
        queued: set[Any] = set()
        for topic in pubsub_msg.topicIDs:
            topic_peers = pubsub.peer_topics.get(topic)
            waiting = topic_peers.difference(identified, direct, queued, skip) if topic_peers else set()
            waiting.update(set(pubsub.peers).difference(topic_peers or (), direct, queued, waiting, skip))
            for peer_id in waiting:
                self._prune_pending_messages(peer_id)
                self._pending_messages[peer_id].append((gs.time.time(), rpc_msg))
            queued |= waiting
    for topic in pubsub_msg.topicIDs:
        self.time_since_last_publish[topic] = int(gs.time.time())
        self.recent_message_deliveries[topic].append(gs.time.time())


_original_get_peers_to_send = _gossipsub_module.GossipSub._get_peers_to_send


def _get_peers_to_send(self: Any, topic_ids: Any, msg_forwarder: Any, origin: Any, msg_id: Any = None) -> Any:
    """The library's choice of peers to forward to, which first collects the topic's floodsub peers by
    looking up the protocol of every peer in the topic: with no floodsub peer at all (the usual case) it
    gets the same set with nothing to collect, built the same way (so iterated in the same order)."""
    if _FLOODSUB in self.peer_protocol.values() or self.pubsub is None:
        yield from _original_get_peers_to_send(self, topic_ids, msg_forwarder, origin, msg_id)
    else:
        yield from _peers_without_floodsub(self, topic_ids, msg_forwarder, origin, msg_id)


def _peers_without_floodsub(self: Any, topic_ids: Any, msg_forwarder: Any, origin: Any, msg_id: Any) -> Any:
    pubsub = self.pubsub
    send_to: set[Any] = set()
    for topic in topic_ids:
        if topic not in pubsub.peer_topics:
            continue
        send_to.update({peer for peer in self.direct_peers})  # a copy first, as the library: same order
        if topic in self.mesh:
            chosen = self.mesh[topic]
        else:
            fanout = self.fanout[topic] if topic in self.fanout else set()
            have = len(fanout)
            if topic not in self.fanout or have < self.degree:
                fanout.update(
                    self._get_in_topic_gossipsub_peers_from_minus(topic, self.degree - have, fanout)
                )
            self.fanout[topic] = fanout
            chosen = fanout
        scorer = self.scorer
        if scorer is not None and chosen:
            send_to.update(
                {
                    p
                    for p in chosen
                    if scorer.allow_gossip(p, [topic]) and not scorer.is_graylisted(p, [topic])
                }
            )
        else:
            send_to.update(chosen)
    peers = send_to.difference([msg_forwarder, origin])
    if msg_id is not None:
        unwanted = self.dont_send_message_ids
        peers = {p for p in peers if p not in unwanted or msg_id not in unwanted[p]}
    yield from peers


_FLOODSUB = _gossipsub_module.floodsub.PROTOCOL_ID


_original_id_eq = _id_module.ID.__eq__


def _id_eq(self: Any, other: object) -> Any:
    """`ID.__eq__` with its common case (another `ID`) tested first: the library tests for a string, then
    bytes, then an ID, and pubsub compares peer IDs millions of times."""
    if type(other) is _id_module.ID:
        return self._bytes == other._bytes
    return _original_id_eq(self, other)


#: Distinct addresses whose thin-waist split identify's observed-address bookkeeping reuses.
ADDRESS_CACHE_SIZE = 4096


def _by_address(function: Any) -> Any:
    """``function`` of multiaddrs (one, or one and a list), answered once per distinct bytes; the answer
    (a bool, a string, or a multiaddr and a string, none of them changed by their users) is shared."""
    answers: dict[Any, Any] = {}

    @functools.wraps(function)
    def cached(addr: Any, *more: Any) -> Any:
        key = (addr.to_bytes(), *(tuple(a.to_bytes() for a in m) for m in more))
        try:
            return answers[key]
        except KeyError:
            pass
        answer = answers[key] = function(addr, *more)
        if len(answers) > ADDRESS_CACHE_SIZE:
            del answers[next(iter(answers))]
        return answer

    cached.steppe_cached = True  # type: ignore[attr-defined]
    return cached


_original_consume_envelope = _dht_utils_module.consume_envelope


@functools.lru_cache(maxsize=ENVELOPE_CACHE_SIZE)
def _consume_envelope_once(data: bytes, domain: str) -> Any:
    return _original_consume_envelope(data, domain)


def _consume_envelope(data: bytes, domain: str) -> Any:
    return _consume_envelope_once(bytes(data), domain)


class _CountingUuid(types.ModuleType):
    """The ``uuid`` name in the task module: `uuid4` returns ids from a counter (see module docs)."""

    def __init__(self) -> None:
        super().__init__("uuid")
        self.__dict__.update(uuid.__dict__)
        counter = itertools.count(1)
        self.uuid4 = lambda: uuid.UUID(int=next(counter))  # type: ignore[method-assign]


def _peek_uvarint(buf: bytearray) -> tuple[int, int] | None:
    """(value, size) of the unsigned varint at the start of ``buf``, or None if it is not all there."""
    value = shift = 0
    for i in range(min(len(buf), 10)):
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    return None


async def _read_varint_prefixed_bytes_limited(reader: Any, max_length: int) -> bytes:
    muxed = getattr(reader, "muxed_stream", None)
    if type(muxed) is YamuxStream and max_length > 0:
        buf = muxed.conn.stream_buffers.get(muxed.stream_id)
        head = _peek_uvarint(buf) if buf else None
        if head is not None and head[0] <= max_length and head[0] + head[1] <= len(buf):  # type: ignore[arg-type]
            length, size = head
            data = await reader.read(size + length)
            if len(data) == size + length:
                return data[size:]
            # Not what the buffer held (another reader of this stream came first): finish the library's way.
            if len(data) >= size:
                body = bytearray(data[size:])
                while len(body) < length:
                    chunk = await reader.read(length - len(body))
                    if not chunk:
                        raise IncompleteReadError(
                            f"Incomplete message: expected {length}, got {len(body)}",
                            expected_bytes=length,
                            received_bytes=len(body),
                        )
                    body.extend(chunk)
                return bytes(body)
            raise ParseError("varint length prefix cut short")
    return await _original_read_prefixed(reader, max_length)


_original_read_prefixed = _varint_module.read_varint_prefixed_bytes_limited


def _wanted(self: Pubsub, msg: Any) -> bool:
    """The read loop's test before it hands a received message on: a topic of ours, and not seen yet."""
    return any(topic in self.topic_ids for topic in msg.topicIDs) and not self._is_msg_seen(msg)


_log = logging.getLogger("libp2p.network.swarm")
#: Notifee methods known to do nothing (besides the empty ones `_does_nothing` recognises).
_NOTHING_DONE = {PubsubNotifee.opened_stream, PubsubNotifee.closed_stream}
_EMPTY_BODY_OPS = {
    "RESUME",
    "RETURN_GENERATOR",
    "POP_TOP",
    "NOP",
    "RETURN_VALUE",
    "LOAD_CONST",
    "RETURN_CONST",
}


@functools.lru_cache(maxsize=256)
def _does_nothing(function: Any) -> bool:
    if function in _NOTHING_DONE:
        return True
    code = getattr(function, "__code__", None)
    if code is None:
        return False
    return all(
        i.opname in _EMPTY_BODY_OPS and (i.opname not in ("LOAD_CONST", "RETURN_CONST") or i.argval is None)
        for i in dis.get_instructions(code)
    )


async def _notify(self: Any, method: str, *args: Any) -> None:
    calls = [getattr(n, method) for n in self.notifees if not _does_nothing(getattr(type(n), method, None))]
    if not calls:
        return
    async with trio.open_nursery() as nursery:
        for call in calls:

            async def _call(call: Any = call) -> None:
                try:
                    await call(self, *args)
                except Exception:  # isolated, as the library does
                    _log.exception("Notifee %s raised", getattr(call, "__qualname__", call))

            nursery.start_soon(_call)


def _modules_importing(name: str, original: Any, preload: tuple[str, ...]) -> list[types.ModuleType]:
    """The loaded ``libp2p.*`` modules (after importing ``preload``) that hold ``original`` as ``name``:
    those that imported it by name, so patching it means replacing it in each of them."""
    import importlib
    import sys

    for module_name in preload:
        importlib.import_module(module_name)
    return [
        m
        for n, m in sorted(sys.modules.items())
        if n.startswith("libp2p.") and getattr(m, name, None) is original
    ]


def _libp2p_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("libp2p")
    except PackageNotFoundError:
        return "unknown"


_trio_task_property = FunctionTask.trio_task
_original_run = FunctionTask.run


#: The py-libp2p release these fixes were written against; with any other the library runs unpatched.
FOR_LIBP2P = "0.8.1"


def install() -> None:
    """Apply the fixes (idempotent). They replace library internals, so only on the release they were
    written for: with another one the node runs the library as it is (slower, still correct), and the
    tests in ``tests/p2p/test_p2p_speedups.py`` fail to say so."""
    if getattr(YamuxStream._auto_tune_and_send_window_update, "steppe_batched", False):
        return
    if _libp2p_version() != FOR_LIBP2P:
        return
    _release_credit.steppe_batched = True  # type: ignore[attr-defined]
    YamuxStream._auto_tune_and_send_window_update = _release_credit  # type: ignore[method-assign]
    FunctionTask.trio_task = property(_get_trio_task, _set_trio_task)  # type: ignore[method-assign,assignment]
    FunctionTask.run = _run  # type: ignore[method-assign]
    TrioManager._find_parent_task = _find_parent_task  # type: ignore[method-assign]
    Yamux._read_data_body = _read_data_body  # type: ignore[method-assign]
    Yamux._write_frame = _write_frame  # type: ignore[method-assign]
    _rw_lock_module.ReadWriteLock.write_lock = _write_lock  # type: ignore[method-assign,assignment]
    _gossipsub_module.GossipSub.send_recent_messages = _send_recent_messages  # type: ignore[method-assign]
    _gossipsub_module.GossipSub.publish = _publish  # type: ignore[method-assign]
    _gossipsub_module.GossipSub._get_peers_to_send = _get_peers_to_send  # type: ignore[method-assign]
    env_users = (
        "libp2p.pubsub.pubsub",
        "libp2p.pubsub.gossipsub",
        "libp2p.kad_dht.kad_dht",
        "libp2p.kad_dht.peer_routing",
        "libp2p.kad_dht.provider_store",
        "libp2p.kad_dht.value_store",
        "libp2p.identity.identify.identify",
    )
    for module in _modules_importing("env_to_send_in_RPC", _original_env_to_send, env_users):
        module.env_to_send_in_RPC = _env_to_send_in_rpc  # type: ignore[attr-defined]
    _dht_utils_module.consume_envelope = _consume_envelope  # type: ignore[assignment]
    _trio_tasks_module.uuid = _CountingUuid()  # type: ignore[attr-defined]
    Pubsub._is_subscribed_to_msg = _wanted  # type: ignore[method-assign]
    prefixed_users = ("libp2p.pubsub.pubsub", "libp2p.kad_dht.kad_dht", "libp2p.kad_dht.peer_routing")
    for module in _modules_importing(
        "read_varint_prefixed_bytes_limited", _original_read_prefixed, prefixed_users
    ):
        if module is _varint_module:
            continue  # the definition itself stays
        module.read_varint_prefixed_bytes_limited = _read_varint_prefixed_bytes_limited  # type: ignore[attr-defined]
    _swarm_module.Swarm._notify = _notify  # type: ignore[method-assign]
    _id_module.ID.__eq__ = _id_eq  # type: ignore[method-assign]
    for name in ("extract_thin_waist", "is_valid_observation", "_match_local_thin_waist"):
        setattr(_observed_module, name, _by_address(getattr(_observed_module, name)))
    fast_trio = _trio_with_fast_locks()
    for module in _LOCKED_MODULES:
        module.trio = fast_trio  # type: ignore[attr-defined]


install()
