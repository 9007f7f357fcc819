"""The simulated network's byte pipes, timed by trio's mock clock: latency, bandwidth, jitter, loss,
partitions and crashes, observed through the libp2p-facing transport (``SimTransport``/``SimListener``)."""

from __future__ import annotations

import pytest
import trio
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.transport.exceptions import OpenConnectionError
from libp2p.transport.tcp.tcp import TCP
from multiaddr import Multiaddr

from sim.net import LinkSpec, SimNetwork
from sim.transport import SimReadWriteCloser, SimTransport

PORT = 4001


async def read_exactly(stream: SimReadWriteCloser, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = await stream.read(n - len(out))
        if not chunk:
            raise EOFError(f"EOF after {len(out)} of {n} bytes")
        out += chunk
    return out


class Pair:
    """A dialer ``a`` and a listener ``b``; ``b``'s accepted streams arrive on ``inbound``."""

    def __init__(self, net: SimNetwork, nursery: trio.Nursery) -> None:
        self.net = net
        self.a, self.b = net.add_node(), net.add_node()
        self.send_inbound, self.inbound = trio.open_memory_channel[SimReadWriteCloser](10)
        self.nursery = nursery

    async def _accepted(self, stream: SimReadWriteCloser) -> None:
        await self.send_inbound.send(stream)

    async def start(self) -> None:
        self.listener = SimTransport(self.net, self.b).create_listener(self._accepted)
        self.listener.background_nursery = self.nursery
        await self.listener.listen(Multiaddr(f"/ip4/{self.b}/tcp/{PORT}"))

    async def dial(self) -> tuple[SimReadWriteCloser, SimReadWriteCloser]:
        raw = await SimTransport(self.net, self.a).dial(Multiaddr(f"/ip4/{self.b}/tcp/{PORT}"))
        return raw.stream, await self.inbound.receive()  # type: ignore[return-value]


@pytest.fixture
async def pair(nursery: trio.Nursery) -> Pair:
    p = Pair(SimNetwork(seed=7), nursery)
    await p.start()
    return p


async def echo_once(stream: SimReadWriteCloser, n: int) -> None:
    await stream.write(await read_exactly(stream, n))


async def test_a_round_trip_takes_twice_the_latency_plus_the_serialisation_delay(
    pair: Pair, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    pair.net.set_link(pair.a, pair.b, LinkSpec(latency=0.05, bandwidth=1000.0))
    client, server = await pair.dial()
    nursery.start_soon(echo_once, server, 100)
    start = trio.current_time()
    await client.write(b"x" * 100)
    assert await read_exactly(client, 100) == b"x" * 100
    # 100 bytes at 1000 B/s each way (0.1 s + 0.1 s) plus 50 ms each way.
    assert trio.current_time() - start == pytest.approx(2 * 0.05 + 2 * 0.1, abs=1e-9)


async def test_dialing_takes_one_round_trip(pair: Pair, autojump_clock: trio.testing.MockClock) -> None:
    pair.net.set_link(pair.a, pair.b, LinkSpec(latency=0.03))
    start = trio.current_time()
    await pair.dial()
    assert trio.current_time() - start == pytest.approx(0.06, abs=1e-9)


async def test_bandwidth_queues_writes_behind_each_other(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    pair.net.set_link(pair.a, pair.b, LinkSpec(latency=0.01, bandwidth=10_000.0))
    client, server = await pair.dial()
    start = trio.current_time()
    for _ in range(10):
        await client.write(b"y" * 1000)
    assert trio.current_time() - start == pytest.approx(1.0, abs=1e-9)  # the writer was held back
    assert await read_exactly(server, 10_000) == b"y" * 10_000
    assert trio.current_time() - start == pytest.approx(1.01, abs=1e-9)


async def test_jitter_and_loss_delay_bytes_but_never_reorder_or_lose_them(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    pair.net.set_link(pair.a, pair.b, LinkSpec(latency=0.05, jitter=0.04, loss=0.3, stall=0.2))
    client, server = await pair.dial()
    start = trio.current_time()
    sent = b"".join(i.to_bytes(2, "big") for i in range(300))
    for i in range(0, len(sent), 2):
        await client.write(sent[i : i + 2])
    assert await read_exactly(server, len(sent)) == sent
    # Without a stall no write takes over 90 ms; some of the 300 stalled 200 ms, holding back the rest.
    assert trio.current_time() - start > 0.2


async def test_a_drop_probability_resets_connections_on_both_sides(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    pair.net.set_link(pair.a, pair.b, LinkSpec(latency=0.01, drop=0.2))
    client, server = await pair.dial()
    with pytest.raises(ConnectionClosedError):
        for _ in range(200):
            await client.write(b"z")
    with pytest.raises(ConnectionClosedError):
        await server.read(10)


async def test_a_partition_refuses_new_dials_and_stalls_open_connections_until_healed(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    pair.net.set_link(pair.a, pair.b, LinkSpec(latency=0.05))
    client, server = await pair.dial()
    cut = pair.net.partition([pair.a], [pair.b])
    with pytest.raises(OpenConnectionError):
        await pair.dial()
    await client.write(b"held")
    with trio.move_on_after(30) as waited:
        await server.read(10)
    assert waited.cancelled_caught  # nothing crosses the cut, however long we wait
    await trio.sleep(1.0)
    healed_at = trio.current_time()
    pair.net.heal(cut)
    assert await server.read(10) == b"held"
    assert trio.current_time() - healed_at == pytest.approx(0.05, abs=1e-9)
    await pair.dial()  # new dials work again


async def test_a_dropping_partition_resets_open_connections(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    client, server = await pair.dial()
    pair.net.partition([pair.a], [pair.b], mode="drop")
    with pytest.raises(ConnectionClosedError):
        await server.read(10)
    with pytest.raises(ConnectionClosedError):
        await client.write(b"gone")


async def test_a_crash_closes_the_peers_streams_and_removes_the_listener(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    pair.net.set_link(pair.a, pair.b, LinkSpec(latency=0.02))
    client, server = await pair.dial()
    await server.write(b"last words")
    crashed_at = trio.current_time()
    pair.net.crash(pair.b)
    assert await read_exactly(client, 10) == b"last words"  # what left before the crash arrives
    assert await client.read(10) == b""  # then EOF
    assert trio.current_time() - crashed_at == pytest.approx(0.02, abs=1e-9)
    assert await server.read(10) == b""  # the dead side's own end is closed
    with pytest.raises(OpenConnectionError):
        await pair.dial()
    pair.net.restart(pair.b)
    with pytest.raises(OpenConnectionError):
        await pair.dial()  # the software has not listened again yet
    await pair.start()  # a restarted node listens on its old address again
    client, server = await pair.dial()
    await client.write(b"back")
    assert await read_exactly(server, 4) == b"back"


def test_the_simulated_transport_keeps_tcp_address_handling() -> None:
    transport = SimTransport(SimNetwork(), "10.0.0.1")
    assert isinstance(transport, TCP)
    assert transport.can_dial(Multiaddr("/ip4/10.0.0.2/tcp/4001"))
    assert not transport.can_dial(Multiaddr("/ip4/10.0.0.2/tcp/4001/ws"))
    assert not transport.can_dial(Multiaddr("/ip4/10.0.0.2/udp/4001/quic-v1"))


async def test_a_listener_reports_its_simulated_address_and_refuses_foreign_ones(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    assert pair.listener.get_addrs() == (Multiaddr(f"/ip4/{pair.b}/tcp/{PORT}"),)
    other = SimTransport(pair.net, pair.b).create_listener(pair._accepted)
    with pytest.raises(OpenConnectionError):
        await other.listen(Multiaddr(f"/ip4/{pair.b}/tcp/{PORT}"))  # port taken
    with pytest.raises(OpenConnectionError):
        await other.listen(Multiaddr(f"/ip4/{pair.a}/tcp/{PORT}"))  # not this node's address
    await other.listen(Multiaddr("/ip4/0.0.0.0/tcp/0"))
    (addr,) = other.get_addrs()
    assert addr.value_for_protocol("ip4") == pair.b


async def test_an_uplink_cap_is_shared_by_all_of_a_nodes_links(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    net = SimNetwork(seed=1, default_link=LinkSpec(latency=0.01))
    sender = net.add_node()
    pairs = []
    for _ in range(2):
        p = Pair(net, nursery)
        p.a = sender
        await p.start()
        pairs.append(p)
    streams = [await p.dial() for p in pairs]
    net.set_uplink(sender, 1000.0)
    start = trio.current_time()
    async with trio.open_nursery() as inner:
        for client, _ in streams:
            inner.start_soon(client.write, b"u" * 500)
    # 2 x 500 bytes through one 1000 B/s uplink: the second write waits for the first.
    assert trio.current_time() - start == pytest.approx(1.0, abs=1e-9)
    for _, server in streams:
        assert await read_exactly(server, 500) == b"u" * 500
    assert trio.current_time() - start == pytest.approx(1.01, abs=1e-9)


async def test_a_link_model_function_sets_each_pairs_link_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    asked: list[tuple[str, str]] = []

    def model(src: str, dst: str) -> LinkSpec:
        asked.append((src, dst))
        return LinkSpec(latency=0.001 * int(dst.rsplit(".", 1)[1]))

    net = SimNetwork(default_link=model)
    a, b, c = net.add_node(), net.add_node(), net.add_node()
    assert net.link(a, c).latency == pytest.approx(0.003)
    assert net.link(a, c).latency == pytest.approx(0.003)
    assert net.link(c, b).latency == pytest.approx(0.002)
    assert asked == [(a, c), (c, b)]


async def test_reading_sees_eof_after_a_close_and_writing_to_a_closed_peer_resets(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    client, server = await pair.dial()
    await client.write(b"bye")
    await client.close()
    assert await read_exactly(server, 3) == b"bye"
    assert await server.read(10) == b""
    assert await client.read(10) == b""  # reading a locally closed end: EOF, like libp2p's TCP stream
    await client.write(b"ignored")  # writing to it: silently ignored, like libp2p's TCP stream
    with pytest.raises(ConnectionClosedError):
        await server.write(b"anyone there?")


async def test_a_cancelled_read_consumes_nothing(pair: Pair, autojump_clock: trio.testing.MockClock) -> None:
    client, server = await pair.dial()
    await client.write(b"keep me")
    await trio.sleep(1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await server.read(100)
    assert scope.cancelled_caught
    assert await read_exactly(server, 7) == b"keep me"


async def test_reads_are_served_from_what_arrived_without_a_scheduler_turn(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    """Noise reads a 2-byte length and then the body: once one segment is in, the second read of it must
    not go through the scheduler again (it did, a turn per message), and no byte may be lost or reordered."""
    client, server = await pair.dial()
    await client.write(b"\x00\x05hello" + b"\x00\x03bye")
    assert await server.read(2) == b"\x00\x05"  # waits for the segment, takes all of it
    task = trio.lowlevel.current_task()
    steps = []

    class Count(trio.abc.Instrument):
        def before_task_step(self, t: trio.lowlevel.Task) -> None:
            if t is task:
                steps.append(t)

    trio.lowlevel.add_instrument(counter := Count())
    try:
        assert await server.read(5) == b"hello"
        assert await server.read(2) == b"\x00\x03"
        assert await server.read(100) == b"bye"
    finally:
        trio.lowlevel.remove_instrument(counter)
    assert steps == []  # served from the buffer: never left the CPU


async def test_bytes_read_ahead_are_dropped_by_a_local_close_or_a_crash(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    """A node that closed its end, or whose process died, reads nothing more, even bytes already taken."""
    client, server = await pair.dial()
    await client.write(b"\x00\x05hello")
    assert await server.read(2) == b"\x00\x05"
    await server.close()
    assert await server.read(5) == b""
    client, server = await pair.dial()
    await client.write(b"\x00\x05hello")
    assert await server.read(2) == b"\x00\x05"
    pair.net.crash(pair.b)
    assert await server.read(5) == b""


async def test_a_loop_of_writes_still_yields(pair: Pair, autojump_clock: trio.testing.MockClock) -> None:
    """A send that fits the link returns without a scheduler turn, but not always: a task that only writes
    must let others run."""
    client, _server = await pair.dial()
    ran = trio.Event()

    async def other() -> None:
        ran.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        for _ in range(100):
            if ran.is_set():
                break
            await client.write(b"x")
        assert ran.is_set()
