"""The library fixes of `node.p2p.speedups`, checked on real hosts over real TCP where they touch the wire."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo
from libp2p.stream_muxer.yamux import yamux as yamux_module
from libp2p.tools.anyio_service import Service, background_trio_service
from libp2p.tools.anyio_service.trio_tasks import FunctionTask

from node.p2p import speedups
from node.p2p.host import IHost, build_host, open_host, parse_listen_addr
from protocol.identity import Identity

from .p2p_driver import LOOPBACK

PROTO = TProtocol("/steppe/test-bytes/1")
WINDOW = yamux_module.DEFAULT_WINDOW_SIZE


@asynccontextmanager
async def _pair(handler) -> AsyncIterator[tuple[IHost, IHost]]:  # type: ignore[no-untyped-def]
    a = build_host(Identity.from_int(81), [parse_listen_addr(LOOPBACK)])
    b = build_host(Identity.from_int(82), [parse_listen_addr(LOOPBACK)])
    async with open_host(a, [parse_listen_addr(LOOPBACK)]), open_host(b, [parse_listen_addr(LOOPBACK)]):
        b.set_stream_handler(PROTO, handler)
        await a.connect(PeerInfo(b.get_id(), b.get_addrs()))
        yield a, b


@pytest.fixture
def window_updates(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Increments of the plain WINDOW_UPDATE frames (no SYN/ACK/FIN/RST flag) every host writes."""
    sent: list[int] = []
    original = yamux_module.Yamux._write_frame

    async def counting(self, data: bytes) -> None:  # type: ignore[no-untyped-def]
        _, typ, flags, _sid, length = struct.unpack(yamux_module.YAMUX_HEADER_FORMAT, data[:12])
        if typ == yamux_module.TYPE_WINDOW_UPDATE and flags == 0:
            sent.append(length)
        await original(self, data)

    monkeypatch.setattr(yamux_module.Yamux, "_write_frame", counting)
    return sent


async def _read_exactly(stream: INetStream, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = await stream.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


async def test_small_reads_return_credit_in_half_window_batches(window_updates: list[int]) -> None:
    # 3000 messages of 100 bytes, each read with a 1-byte prefix read first, as the library's readers do.
    # The library's default answered nearly every read with a WINDOW_UPDATE (thousands here).
    got = trio.Event()
    received = bytearray()

    async def handler(stream: INetStream) -> None:
        for _ in range(3000):
            prefix = await _read_exactly(stream, 1)
            received.extend(prefix + await _read_exactly(stream, prefix[0]))
        got.set()

    async with _pair(handler) as (a, b):
        stream = await a.new_stream(b.get_id(), [PROTO])
        payload = b"".join(bytes([99]) + bytes([i % 251]) * 99 for i in range(3000))
        for i in range(0, len(payload), 100):
            await stream.write(payload[i : i + 100])
        with trio.fail_after(20):
            await got.wait()
        assert bytes(received) == payload
        # 300 000 bytes consumed: two batches of at least half a window each, nothing per read.
        assert 1 <= len(window_updates) <= 3
        assert all(n >= WINDOW // 2 for n in window_updates)


async def test_a_transfer_many_windows_long_completes_intact() -> None:
    size = 8 * WINDOW + 12345
    payload = hashlib.shake_256(b"bulk").digest(size)
    digest = trio.Event()
    seen: list[bytes] = []

    async def handler(stream: INetStream) -> None:
        seen.append(await _read_exactly(stream, size))
        digest.set()

    async with _pair(handler) as (a, b):
        stream = await a.new_stream(b.get_id(), [PROTO])
        with trio.fail_after(30):
            await stream.write(payload)
            await digest.wait()
        assert seen == [payload]


async def test_a_writer_of_many_frames_still_lets_other_tasks_run() -> None:
    # The frame's write to the socket is its scheduling point (Yamux's extra one after it is gone).
    got = bytearray()
    done = trio.Event()

    async def handler(stream: INetStream) -> None:
        got.extend(await _read_exactly(stream, 200 * 64))
        done.set()

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0)

    async with _pair(handler) as (a, b), trio.open_nursery() as nursery:
        stream = await a.new_stream(b.get_id(), [PROTO])
        nursery.start_soon(ticker)
        await trio.sleep(0)
        before = ticks
        for i in range(200):
            await stream.write(bytes([i % 256]) * 64)
        assert ticks - before >= 100  # the ticker ran between the writes
        with trio.fail_after(10):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert bytes(got) == b"".join(bytes([i % 256]) * 64 for i in range(200))


async def test_a_reader_that_stops_reading_stops_its_sender_after_one_window() -> None:
    reading = trio.Event()
    got: list[bytes] = []
    size = 4 * WINDOW

    async def handler(stream: INetStream) -> None:
        await reading.wait()
        got.append(await _read_exactly(stream, size))

    async with _pair(handler) as (a, b):
        stream = await a.new_stream(b.get_id(), [PROTO])
        written = 0
        done = trio.Event()

        async def writer() -> None:
            nonlocal written
            for _ in range(size // 16384):
                await stream.write(b"x" * 16384)
                written += 16384
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await trio.sleep(1.0)
            assert written <= WINDOW + 16384  # flow control holds the sender at one window
            assert not done.is_set()
            reading.set()
            with trio.fail_after(20):
                await done.wait()
        with trio.fail_after(10):
            while not got:
                await trio.sleep(0.01)
        assert got == [b"x" * size]


async def test_a_free_fast_lock_is_taken_without_letting_another_task_run() -> None:
    lock = speedups.FastLock()
    ran: list[int] = []

    async def other() -> None:
        ran.append(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        async with lock:
            assert ran == []  # no scheduler turn happened
            assert lock.locked()
        await trio.sleep(0)
    assert ran == [1] and not lock.locked()


async def test_a_held_fast_lock_is_handed_over_in_order_and_honours_cancellation() -> None:
    lock = speedups.FastLock()
    order: list[int] = []

    async def take(i: int) -> None:
        async with lock:
            order.append(i)
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        await lock.acquire()
        for i in range(3):
            nursery.start_soon(take, i)
            await trio.sleep(0.001)
        lock.release()
    assert order == [0, 1, 2]

    with trio.CancelScope() as scope:
        scope.cancel()
        await lock.acquire()  # a cancelled acquire raises even when the lock is free
    assert scope.cancelled_caught and not lock.locked()


async def test_a_fast_lock_checks_its_owner_and_skips_a_cancelled_waiter() -> None:
    lock = speedups.FastLock()
    got: list[str] = []
    scopes: list[trio.CancelScope] = []

    async def take(name: str) -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            async with lock:
                got.append(name)

    await lock.acquire()
    with pytest.raises(RuntimeError):
        await lock.acquire()  # no re-entry
    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "cancelled")
        await trio.sleep(0.001)
        nursery.start_soon(take, "second")
        await trio.sleep(0.01)
        assert lock.statistics().tasks_waiting == 2

        async def stranger() -> None:
            with pytest.raises(RuntimeError):
                lock.release()  # not the owner

        nursery.start_soon(stranger)
        await trio.sleep(0.01)
        scopes[0].cancel()
        await trio.sleep(0.01)
        assert lock.statistics().tasks_waiting == 1
        lock.release()
    assert got == ["second"] and not lock.locked()


async def test_the_stream_write_lock_admits_one_writer_at_a_time() -> None:
    from libp2p.stream_muxer.rw_lock import ReadWriteLock

    assert ReadWriteLock.write_lock is speedups._write_lock
    rw = ReadWriteLock()
    inside: list[int] = []
    most = 0

    async def write(i: int) -> None:
        nonlocal most
        async with rw.write_lock():
            inside.append(i)
            most = max(most, len(inside))
            await trio.sleep(0.01)
            inside.remove(i)

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(write, i)
    assert most == 1
    with pytest.raises(ZeroDivisionError):
        async with rw.write_lock():
            1 / 0  # noqa: B018
    async with rw.write_lock():  # released on the error
        pass


async def test_fast_semaphore_counts_tokens() -> None:
    sem = speedups.FastSemaphore(2)
    await sem.acquire()
    async with sem:
        assert sem.value == 0
        with pytest.raises(trio.WouldBlock):
            sem.acquire_nowait()
    sem.release()
    assert sem.value == 2

    bounded = speedups.FastSemaphore(1, max_value=1)
    with pytest.raises(ValueError):
        bounded.release()
    order: list[int] = []

    async def take(i: int) -> None:
        async with bounded:
            order.append(i)
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(take, i)
            await trio.sleep(0.001)
    assert order == [0, 1, 2] and bounded.value == 1


class _Tree(Service):
    """A service whose tasks spawn tasks; each records the parent the manager finds for its children."""

    def __init__(self) -> None:
        self.found: list[tuple[object, object]] = []
        self.done = trio.Event()

    async def run(self) -> None:
        self.manager.run_task(self._level, 0)
        await self.done.wait()

    async def _level(self, depth: int) -> None:
        me = trio.lowlevel.current_task()
        walked = next(
            (
                t
                for t in FunctionTask.iterate_tasks(*self.manager._root_tasks)
                if t.has_trio_task and t.trio_task is me
            ),
            None,
        )
        self.found.append((self.manager._find_parent_task(me), walked))
        if depth < 3:
            for _ in range(2):
                self.manager.run_task(self._level, depth + 1)
            await trio.sleep(0.05)
        else:
            await trio.sleep(0.01)
        if depth == 0:
            self.done.set()


async def test_a_cancelled_acquire_raises_on_a_free_semaphore_too() -> None:
    semaphore = speedups.FastSemaphore(1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await semaphore.acquire()
    assert scope.cancelled_caught and semaphore.value == 1


async def test_a_task_parent_is_found_as_the_full_walk_finds_it() -> None:
    tree = _Tree()
    async with background_trio_service(tree) as manager:
        with trio.fail_after(5):
            await tree.done.wait()
        outsider = manager._find_parent_task(trio.lowlevel.current_task())
    assert outsider is None  # a task that is not one of the service's
    assert len(tree.found) == 15
    for fast, walked in tree.found:
        assert fast is walked and isinstance(fast, FunctionTask)


async def test_the_sender_record_is_reused_for_a_while_then_rechecked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = build_host(Identity.from_int(83), [parse_listen_addr(LOOPBACK)])
    calls = []
    real = host.get_addrs

    def counted():  # type: ignore[no-untyped-def]
        calls.append(1)
        return real()

    monkeypatch.setattr(host, "get_addrs", counted)
    monkeypatch.setattr(speedups, "SENDER_RECORD_RECHECK_S", 0.3)  # (10 s in use)
    async with open_host(host, [parse_listen_addr(LOOPBACK)]):
        first, _ = speedups._env_to_send_in_rpc(host)
        n = len(calls)
        for _ in range(50):
            assert speedups._env_to_send_in_rpc(host)[0] == first
        assert len(calls) == n  # no address rebuild within the interval
        await trio.sleep(speedups.SENDER_RECORD_RECHECK_S + 0.05)
        assert speedups._env_to_send_in_rpc(host)[0] == first  # same addresses: same record
        assert len(calls) > n


def _gossip_nodes(*ns: int) -> list:
    """(host, GossipSub router, Pubsub) for each identity number; nothing started yet."""
    from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
    from libp2p.pubsub.pubsub import Pubsub

    nodes = []
    for n in ns:
        host = build_host(Identity.from_int(n), [parse_listen_addr(LOOPBACK)])
        router = GossipSub([PROTOCOL_ID_V11], degree=6, degree_low=4, degree_high=12, heartbeat_interval=1)
        nodes.append((host, router, Pubsub(host, router)))
    return nodes


@asynccontextmanager
async def _running(nodes: list) -> AsyncIterator[None]:
    """The hosts listening and their pubsub services ready."""
    async with AsyncExitStack() as stack:
        for host, router, pubsub in nodes:
            await stack.enter_async_context(open_host(host, [parse_listen_addr(LOOPBACK)]))
            await stack.enter_async_context(background_trio_service(pubsub))
            await stack.enter_async_context(background_trio_service(router))
        for _, _, pubsub in nodes:
            await pubsub.wait_until_ready()
        yield


async def test_recent_messages_reach_a_new_subscriber_in_one_rpc(monkeypatch: pytest.MonkeyPatch) -> None:
    from libp2p.pubsub.pubsub import Pubsub

    topic = "/steppe/test-replay/1"
    rpcs_with_publish: list[int] = []
    original = Pubsub.write_msg

    async def counting(self, stream, rpc) -> bool:  # type: ignore[no-untyped-def]
        if rpc.publish:
            rpcs_with_publish.append(len(rpc.publish))
        return await original(self, stream, rpc)

    monkeypatch.setattr(Pubsub, "write_msg", counting)
    peers = _gossip_nodes(84, 85)
    (a, _, pa), (b, _, pb) = peers
    async with _running(peers):
        await pa.subscribe(topic)
        for i in range(5):
            await pa.publish(topic, b"recent %d" % i)  # nobody listens yet: only the message cache has them
        sub = await pb.subscribe(topic)
        await b.connect(PeerInfo(a.get_id(), a.get_addrs()))
        got = []
        with trio.fail_after(10):
            while len(got) < 5:
                got.append((await sub.get()).data)
    assert sorted(got) == [b"recent %d" % i for i in range(5)]
    assert rpcs_with_publish == [5]  # one replay RPC, not five


@asynccontextmanager
async def _pubsub_pair(topic: str) -> AsyncIterator[tuple[object, object, object]]:
    """Two connected GossipSub nodes subscribed to ``topic``: (publisher's pubsub, receiver's, receiver's
    subscription)."""
    peers = _gossip_nodes(86, 87)
    (a, _, pa), (b, _, pb) = peers
    async with _running(peers):
        await pa.subscribe(topic)
        sub = await pb.subscribe(topic)
        await a.connect(PeerInfo(b.get_id(), b.get_addrs()))
        with trio.fail_after(10):
            while b.get_id() not in pa.peers or topic not in pa.peer_topics or not pa.peer_topics[topic]:
                await trio.sleep(0.01)
        yield pa, pb, sub


async def test_a_copy_of_a_seen_message_is_dropped_where_it_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.pubsub.pubsub import Pubsub

    topic = "/steppe/test-dup/1"
    pushed: list[bytes] = []
    original = Pubsub.push_msg

    async def counting(self, forwarder, msg) -> None:  # type: ignore[no-untyped-def]
        pushed.append(msg.data)
        await original(self, forwarder, msg)

    monkeypatch.setattr(Pubsub, "push_msg", counting)
    async with _pubsub_pair(topic) as (pa, pb, sub):
        await pa.publish(topic, b"once")
        with trio.fail_after(10):
            msg = await sub.get()
        n = len(pushed)  # the publisher's own push, and the receiver's of the first copy
        stream = pa.peers[pb.host.get_id()]
        for _ in range(3):  # the same message again, as other mesh peers would forward it
            await pa.write_msg(stream, rpc_pb2.RPC(publish=[msg]))
        await pa.publish(topic, b"next")  # written after the copies on the same stream: read after them
        with trio.fail_after(10):
            assert (await sub.get()).data == b"next"
    assert pushed[n:] == [b"next", b"next"]  # no task for the three copies


async def test_no_task_is_spawned_for_a_stream_event_nobody_handles() -> None:
    from libp2p.abc import INotifee

    spawned: list[str] = []
    opened: list[object] = []

    class Spawns(trio.abc.Instrument):
        def task_spawned(self, task: trio.lowlevel.Task) -> None:
            spawned.append(task.name)

    class Watcher(INotifee):  # a notifee that does act on a stream opening still hears of it
        async def opened_stream(self, network, stream) -> None:  # type: ignore[no-untyped-def]
            opened.append(stream)

        async def closed_stream(self, network, stream) -> None:  # type: ignore[no-untyped-def]
            pass

        async def connected(self, network, conn) -> None:  # type: ignore[no-untyped-def]
            pass

        async def disconnected(self, network, conn) -> None:  # type: ignore[no-untyped-def]
            pass

        async def listen(self, network, multiaddr) -> None:  # type: ignore[no-untyped-def]
            pass

        async def listen_close(self, network, multiaddr) -> None:  # type: ignore[no-untyped-def]
            pass

    async def handler(stream: INetStream) -> None:
        await stream.close()

    async with _pair(handler) as (a, b):
        stream = await a.new_stream(b.get_id(), [PROTO])  # warm: identify and the like are done
        await stream.close()
        await trio.sleep(0.2)
        trio.lowlevel.add_instrument(counter := Spawns())
        try:
            for _ in range(5):
                stream = await a.new_stream(b.get_id(), [PROTO])
                await stream.close()
        finally:
            trio.lowlevel.remove_instrument(counter)
        assert not [name for name in spawned if "_notify" in name]
        a.get_network().register_notifee(Watcher())
        stream = await a.new_stream(b.get_id(), [PROTO])
        await stream.close()
    assert opened == [stream]


def test_a_signed_record_in_a_dht_message_is_decoded_once_and_a_bad_one_each_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from libp2p.kad_dht import utils as dht_utils
    from libp2p.kad_dht.pb.kademlia_pb2 import Message
    from libp2p.peer.peerstore import env_to_send_in_RPC

    sender = build_host(Identity.from_int(88), [parse_listen_addr(LOOPBACK)])
    receiver = build_host(Identity.from_int(89), [parse_listen_addr(LOOPBACK)])
    calls = []
    real = speedups._original_consume_envelope
    monkeypatch.setattr(speedups, "_original_consume_envelope", lambda *a: calls.append(1) or real(*a))
    record = env_to_send_in_RPC(sender)[0]
    msg = Message(senderRecord=record)
    for _ in range(3):
        assert dht_utils.maybe_consume_signed_record(msg, receiver, sender.get_id())
    assert len(calls) == 1
    assert not dht_utils.maybe_consume_signed_record(msg, receiver, receiver.get_id())  # not the sender's
    bad = Message(senderRecord=record[:-1] + bytes([record[-1] ^ 1]))
    for _ in range(2):
        assert not dht_utils.maybe_consume_signed_record(bad, receiver, sender.get_id())
    assert len(calls) == 3


def test_task_ids_are_distinct_and_need_no_randomness(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    def no_urandom(n: int) -> bytes:
        raise AssertionError("os.urandom called for a task id")

    monkeypatch.setattr(os, "urandom", no_urandom)
    tasks = [FunctionTask(f"t{i}", False, None, trio.sleep, (0,)) for i in range(3)]
    assert len({hash(t) for t in tasks}) == 3 and tasks[0] != tasks[1]


async def test_a_whole_prefixed_message_in_the_buffer_is_read_in_one_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import libp2p.pubsub.pubsub as pubsub_module
    from libp2p.network.stream.net_stream import NetStream
    from libp2p.utils.varint import MessageTooLarge, encode_uvarint

    read = pubsub_module.read_varint_prefixed_bytes_limited
    sizes = [0, 1, 127, 128, 300, 5000, 70000, 3]
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    got: list[bytes] = []
    calls: list[int] = []
    done = trio.Event()
    original = NetStream.read

    async def counting(self, n=None):  # type: ignore[no-untyped-def]
        calls.append(n)
        return await original(self, n)

    async def handler(stream: INetStream) -> None:
        await trio.sleep(0.3)  # let everything arrive first
        monkeypatch.setattr(NetStream, "read", counting)
        for _ in payloads:
            got.append(await read(stream, 1 << 20))
        with pytest.raises(MessageTooLarge):
            await read(stream, 10)  # over the limit: the library's reader, and its error
        done.set()

    async with _pair(handler) as (a, b):
        stream = await a.new_stream(b.get_id(), [PROTO])
        await stream.write(
            b"".join(encode_uvarint(len(p)) + p for p in payloads) + encode_uvarint(11) + b"x" * 11
        )
        with trio.fail_after(10):
            await done.wait()
    assert got == payloads
    # The 70000-byte message spans frames and is read the library's way; the others in one call each.
    assert len([n for n in calls if n is not None]) < len(payloads) + 8
    assert calls[:5] == [1, 1 + 1, 1 + 127, 2 + 128, 2 + 300]  # prefix and body together
