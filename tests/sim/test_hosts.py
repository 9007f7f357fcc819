"""Real libp2p hosts (Noise, Yamux, Identify) on the simulated network, under trio's mock clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF, StreamReset

from protocol.identity import Identity
from sim.clock import simulation
from sim.host import SimNode
from sim.net import LinkSpec, SimNetwork

ECHO = TProtocol("/steppe-test/echo/1")


async def echo(stream: INetStream) -> None:
    try:
        while data := await stream.read(65536):
            await stream.write(data)
    except (StreamEOF, StreamReset):
        pass


# Each test names `autojump_clock` too: pytest-trio only installs a clock the test itself asks for.
@pytest.fixture
async def net(autojump_clock: trio.testing.MockClock) -> AsyncIterator[SimNetwork]:
    with simulation(autojump_clock, seed=11):
        yield SimNetwork(seed=11, record_trace=True)


async def start(nursery: trio.Nursery, net: SimNetwork, n: int) -> SimNode:
    node = SimNode(net, Identity.from_int(n))
    await nursery.start(node.run)
    node.host.set_stream_handler(ECHO, echo)
    return node


async def test_a_round_trip_over_noise_and_yamux_costs_two_latencies_plus_serialisation(
    net: SimNetwork, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob = await start(nursery, net, 1), await start(nursery, net, 2)
    net.set_link(alice.ip, bob.ip, LinkSpec(latency=0.04, bandwidth=50_000.0))
    await alice.host.connect(bob.info)
    stream = await alice.host.new_stream(bob.host.get_id(), [ECHO])
    await trio.sleep(5)  # let Identify and friends finish
    assert net.trace is not None
    mark, start_at = len(net.trace), trio.current_time()
    await stream.write(b"ping" * 100)
    got = b""
    while len(got) < 400:
        got += await stream.read(400 - len(got))
    elapsed = trio.current_time() - start_at
    sent = sum(n for (_, kind, _, _, n) in net.trace[mark:] if kind == "send")
    # Exactly what crossed the wire, Noise and Yamux framing included, at 50 kB/s, plus 2 x 40 ms.
    assert sent > 800
    assert elapsed == pytest.approx(2 * 0.04 + sent / 50_000.0, abs=1e-9)


async def test_a_crash_closes_streams_on_the_peer_side_and_a_restart_comes_back(
    net: SimNetwork, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob = await start(nursery, net, 1), await start(nursery, net, 2)
    await alice.host.connect(bob.info)
    stream = await alice.host.new_stream(bob.host.get_id(), [ECHO])
    bob.crash()
    with pytest.raises((StreamEOF, StreamReset)):
        with trio.fail_after(30):
            await stream.read(10)
    with trio.fail_after(30):
        while alice.host.get_network().get_connections(bob.info.peer_id):
            await trio.sleep(0.1)
    with pytest.raises(Exception):  # noqa: B017  # libp2p wraps dial failures in several types
        await alice.host.connect(bob.info)
    await trio.sleep(61)  # libp2p's 60 s dial backoff after a failure expires, in virtual time
    await nursery.start(bob.run)  # same identity, same address
    bob.host.set_stream_handler(ECHO, echo)
    await alice.host.connect(bob.info)
    stream = await alice.host.new_stream(bob.host.get_id(), [ECHO])
    await stream.write(b"again")
    assert await stream.read(10) == b"again"


async def test_a_partition_cuts_hosts_apart_and_healing_lets_them_reconnect(
    net: SimNetwork, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob, carol = [await start(nursery, net, i) for i in (1, 2, 3)]
    await alice.host.connect(bob.info)
    cut = net.partition([alice.ip], [bob.ip, carol.ip], mode="drop")
    with trio.fail_after(30):
        while alice.host.get_network().get_connections(bob.info.peer_id):
            await trio.sleep(0.1)
    with pytest.raises(Exception):  # noqa: B017
        await alice.host.connect(carol.info)
    await bob.host.connect(carol.info)  # same side: unaffected
    net.heal(cut)
    await trio.sleep(61)  # libp2p's dial backoff for carol, in virtual time
    await alice.host.connect(carol.info)
    stream = await alice.host.new_stream(carol.host.get_id(), [ECHO])
    await stream.write(b"healed")
    assert await stream.read(10) == b"healed"
