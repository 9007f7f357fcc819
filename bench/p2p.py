"""P2P benchmark: our stream helper over libp2p (Noise + Yamux) against raw trio TCP, and gossip latency.

Prints, from one run on 127.0.0.1 (both ends in this process):
  * request/response round trip on one stream (and on a fresh stream per request) vs a raw TCP echo: ratio
  * bulk throughput over one stream (64 KiB frames) vs raw TCP (64 KiB writes): ratio
  * advert gossip delivery latency p50/p99 across 10 in-process nodes

Usage: python bench/p2p.py [--rounds 500] [--megabytes 64] [--nodes 10]
"""

from __future__ import annotations

import argparse
import statistics
import struct
import time
from contextlib import AsyncExitStack

import trio
from libp2p.custom_types import TProtocol

from node.app import open_node, p2p_settings_of
from node.config import Config
from node.logging import configure_logging
from node.p2p.protocols import BULK_PROTOCOL, PING_PROTOCOL, serve_bulk_sink
from node.p2p.streams import ProtocolServer, open_stream
from protocol.advert import AdvertBody, ModelRef
from protocol.identity import Identity
from protocol.p2pmsg import Chunk, Ping, Pong

PAYLOAD = b"x" * 64
CHUNK = 64 * 1024


async def _raw_echo_server(stream: trio.SocketStream) -> None:
    try:
        while data := await stream.receive_some(256 * 1024):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


async def _recv_exactly(stream: trio.SocketStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = await stream.receive_some(n - len(buf))
        if not data:
            raise EOFError
        buf += data
    return bytes(buf)


async def raw_tcp(rounds: int, megabytes: int) -> tuple[float, float]:
    """(median round trip s, throughput MB/s) over a plain loopback TCP connection."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            trio.serve_tcp,
            _raw_echo_server,
            0,
        )
        port = listeners[0].socket.getsockname()[1]
        rtts = []
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            msg = struct.pack(">I", len(PAYLOAD)) + PAYLOAD
            for _ in range(rounds):
                t = time.perf_counter()
                await stream.send_all(msg)
                await _recv_exactly(stream, len(msg))
                rtts.append(time.perf_counter() - t)
        sink_done = trio.Event()
        total = megabytes * 1024 * 1024
        received = 0

        async def sink(stream: trio.SocketStream) -> None:
            nonlocal received
            while received < total:
                data = await stream.receive_some(256 * 1024)
                if not data:
                    break
                received += len(data)
            sink_done.set()

        sink_listeners = await nursery.start(trio.serve_tcp, sink, 0)
        sink_port = sink_listeners[0].socket.getsockname()[1]
        block = b"y" * CHUNK
        t = time.perf_counter()
        async with await trio.open_tcp_stream("127.0.0.1", sink_port) as stream:
            for _ in range(total // CHUNK):
                await stream.send_all(block)
            await sink_done.wait()
        seconds = time.perf_counter() - t
        nursery.cancel_scope.cancel()
    return statistics.median(rtts), megabytes / seconds


async def libp2p_streams(rounds: int, megabytes: int) -> tuple[float, float, float, float]:
    """(median round trip on one stream, with a new stream each, throughput MB/s, bare-stream round trip)."""
    config = Config()
    p2p = p2p_settings_of(config, listen=("/ip4/127.0.0.1/tcp/0",))
    async with open_node(config, Identity.from_int(1), p2p=p2p) as alice:
        boot = p2p_settings_of(config, listen=("/ip4/127.0.0.1/tcp/0",), bootstrap=(alice.p2p.addrs()[0],))
        async with open_node(config, Identity.from_int(2), p2p=boot) as bob:
            ProtocolServer(alice.p2p.host, BULK_PROTOCOL, serve_bulk_sink)
            target = alice.p2p.host.get_id()
            with trio.fail_after(10):
                while target not in bob.p2p.host.get_connected_peers():
                    await trio.sleep(0.05)
            alice.p2p.host.set_stream_handler(TProtocol("/steppe/bench-echo/1"), _bare_echo)
            bare_stream = await bob.p2p.host.new_stream(target, [TProtocol("/steppe/bench-echo/1")])
            bare = []
            frame = bytes(len(PAYLOAD) + 7)
            for _ in range(rounds):
                t = time.perf_counter()
                await bare_stream.write(frame)
                await bare_stream.read(65536)
                bare.append(time.perf_counter() - t)
            await bare_stream.close()
            rtts = []
            async with open_stream(bob.p2p.host, target, PING_PROTOCOL) as s:
                for i in range(rounds):
                    t = time.perf_counter()
                    await s.send(Ping(i, PAYLOAD))
                    await s.expect(Pong)
                    rtts.append(time.perf_counter() - t)
            fresh = []
            for _ in range(max(rounds // 5, 20)):
                t = time.perf_counter()
                await bob.p2p.ping(target, PAYLOAD)
                fresh.append(time.perf_counter() - t)
            block = b"y" * CHUNK
            total = megabytes * 1024 * 1024
            t = time.perf_counter()
            async with open_stream(bob.p2p.host, target, BULK_PROTOCOL) as s:
                for _ in range(total // CHUNK):
                    await s.send(Chunk(block))
                await s.send(Chunk(b""))
                await s.expect(Chunk)  # the sink has read everything
            seconds = time.perf_counter() - t
    return statistics.median(rtts), statistics.median(fresh), megabytes / seconds, statistics.median(bare)


async def _bare_echo(stream) -> None:
    """Echo on a libp2p stream without our framing: the library's own floor."""
    try:
        while data := await stream.read(65536):
            await stream.write(data)
    except EOFError:  # the library's StreamEOF when the dialer closes
        pass
    await stream.close()


async def gossip_latency(count: int, rounds: int) -> list[float]:
    """Seconds from a body change on one node to its acceptance at each other node."""
    config = Config()
    samples: list[float] = []
    published: dict[tuple[str, int], float] = {}
    async with AsyncExitStack() as stack:
        nodes = []
        for i in range(count):
            boot = (nodes[0].p2p.addrs()[0],) if nodes else ()
            p2p = p2p_settings_of(config, listen=("/ip4/127.0.0.1/tcp/0",), bootstrap=boot)
            nodes.append(
                await stack.enter_async_context(open_node(config, Identity.from_int(100 + i), p2p=p2p))
            )
        delivered: set[tuple[str, str, int]] = set()
        for node in nodes:
            accept = node.p2p.view.accept

            def timed(advert, now_ms, _accept=accept, _me=node.peer_id):
                result = _accept(advert, now_ms)
                key = (advert.peer_id, advert.body.free_sessions)
                sent = published.get(key)
                if sent is not None and (_me, *key) not in delivered:  # later republishes are not news
                    delivered.add((_me, *key))
                    samples.append(time.perf_counter() - sent)
                return result

            node.p2p.view.accept = timed  # type: ignore[method-assign]
        with trio.fail_after(60):
            while not all(len(n.p2p.view.adverts(n.p2p.clock.now_ms())) == count - 1 for n in nodes):
                await trio.sleep(0.2)
        model = ModelRef(name="bench", sha256=bytes(32), num_layers=8)
        for r in range(rounds):
            node = nodes[r % count]
            published[(node.peer_id, r + 1)] = time.perf_counter()
            node.p2p.set_advert_body(AdvertBody(addrs=(), model=model, layer_end=8, free_sessions=r + 1))
            await trio.sleep(1.2)  # one publish per node per second keeps us far from the rate limit
        await trio.sleep(2)
        meshes = [len(n.p2p.gossip.mesh_peers()) for n in nodes]
        conns = [len(n.p2p.host.get_connected_peers()) for n in nodes]
        print(f"gossip mesh sizes {meshes}, connections {conns}")
    return samples


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main(args: argparse.Namespace) -> None:
    raw_rtt, raw_mbs = await raw_tcp(args.rounds, args.megabytes)
    rtt, fresh_rtt, mbs, bare_rtt = await libp2p_streams(args.rounds, args.megabytes)
    print(
        f"round trip, one stream:   {rtt * 1e3:7.3f} ms  vs raw TCP {raw_rtt * 1e3:7.3f} ms  ratio {rtt / raw_rtt:5.1f}x (goal <= 3x)"
    )
    print(
        f"  of which py-libp2p:     {bare_rtt * 1e3:7.3f} ms  (bare libp2p stream echo, no framing; helper adds"
        f" {(rtt / bare_rtt - 1) * 100:.0f}%)"
    )
    print(
        f"round trip, fresh stream: {fresh_rtt * 1e3:7.3f} ms  vs raw TCP {raw_rtt * 1e3:7.3f} ms  ratio {fresh_rtt / raw_rtt:5.1f}x"
    )
    print(
        f"bulk, one stream:         {mbs:7.1f} MB/s vs raw TCP {raw_mbs:7.1f} MB/s ratio {mbs / raw_mbs:5.3f} (goal >= 30 MB/s)"
    )
    samples = await gossip_latency(args.nodes, args.gossip_rounds)
    expected = args.gossip_rounds * (args.nodes - 1)
    print(
        f"gossip delivery, {args.nodes} nodes:  p50 {_pct(samples, 0.5) * 1e3:6.1f} ms  p99 {_pct(samples, 0.99) * 1e3:6.1f} ms"
        f"  ({len(samples)}/{expected} deliveries)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--gossip-rounds", type=int, default=20)
    configure_logging("console", "error")
    trio.run(main, parser.parse_args())
