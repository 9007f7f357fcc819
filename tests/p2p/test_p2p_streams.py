from __future__ import annotations

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from libp2p.custom_types import TProtocol

from node.p2p.protocols import PING_PROTOCOL
from node.p2p.streams import ProtocolServer, RemoteError, StreamProtocol, open_stream, request
from protocol import codec
from protocol.errors import MalformedMessage
from protocol.p2pmsg import AdvertRequest, Chunk, ErrorReply, Ping, Pong

from .p2p_driver import open_swarm


async def test_ping_round_trips_many_times_on_one_stream_and_on_fresh_streams() -> None:
    async with open_swarm(2) as (alice, bob):
        assert await bob.p2p.ping(alice.p2p.host.get_id(), b"hello") > 0
        async with open_stream(bob.p2p.host, alice.p2p.host.get_id(), PING_PROTOCOL) as s:
            for nonce in range(20):
                await s.send(Ping(nonce, bytes([nonce]) * 100))
                assert await s.expect(Pong) == Pong(nonce, bytes([nonce]) * 100)


async def test_a_peer_over_its_concurrency_limit_gets_a_busy_error() -> None:
    release = trio.Event()
    proto = StreamProtocol("/steppe/test-slow/1", inbound=(Ping,), outbound=(Pong,), per_peer_limit=2)

    async def slow(stream):
        msg = await stream.expect(Ping)
        await release.wait()
        await stream.send(Pong(msg.nonce))

    async with open_swarm(2) as (alice, bob):
        ProtocolServer(alice.p2p.host, proto, slow)
        target = alice.p2p.host.get_id()
        results: list[object] = []

        async def one(i: int) -> None:
            try:
                results.append(await request(bob.p2p.host, target, proto, Ping(i)))
            except RemoteError as exc:
                results.append(exc.code)

        async with trio.open_nursery() as nursery:
            for i in range(2):
                nursery.start_soon(one, i)
            await trio.sleep(0.5)
            await one(99)  # the third concurrent request is refused at once
            assert results == ["busy"]
            release.set()
        assert sorted(r.nonce for r in results if isinstance(r, Pong)) == [0, 1]


async def test_an_oversized_frame_is_refused_before_its_body_is_read() -> None:
    proto = StreamProtocol("/steppe/test-small/1", inbound=(Ping,), outbound=(Pong,), max_frame=32)
    handled = []

    async def handler(stream):
        handled.append(await stream.expect(Ping))

    async with open_swarm(2) as (alice, bob):
        ProtocolServer(alice.p2p.host, proto, handler)
        async with open_stream(bob.p2p.host, alice.p2p.host.get_id(), proto) as s:
            # Only the header goes out: the server must refuse on the declared length alone.
            header = codec.HEADER.pack(10_000, Ping.TYPE_ID, Ping.VERSION)
            await s.stream.write(header)
            with pytest.raises(RemoteError) as err:
                await s.receive()
        assert err.value.code == "malformed" and handled == []


async def test_a_request_of_a_type_the_protocol_does_not_take_gets_a_malformed_error() -> None:
    async with open_swarm(2) as (alice, bob):
        async with open_stream(bob.p2p.host, alice.p2p.host.get_id(), PING_PROTOCOL) as s:
            await s.stream.write(codec.encode_frame(Chunk(b"x")))
            with pytest.raises(RemoteError, match="malformed"):
                await s.receive()


async def test_a_silent_client_is_cut_off_after_the_read_timeout() -> None:
    proto = StreamProtocol("/steppe/test-timeout/1", inbound=(Ping,), outbound=(Pong,), read_timeout=0.3)

    async def handler(stream):
        await stream.expect(Ping)

    async with open_swarm(2) as (alice, bob):
        server = ProtocolServer(alice.p2p.host, proto, handler)
        stream = await bob.p2p.host.new_stream(alice.p2p.host.get_id(), [TProtocol(proto.protocol_id)])
        with trio.fail_after(5):
            while server.errors["timeout"] == 0:
                await trio.sleep(0.05)
        await stream.reset()


async def test_asking_for_an_advert_returns_the_peers_current_signed_advert() -> None:
    async with open_swarm(2) as (alice, bob):
        with trio.fail_after(10):
            while alice.p2p.advert is None:
                await trio.sleep(0.05)
        info = alice.p2p.host.get_peerstore().peer_info(alice.p2p.host.get_id())
        advert = await bob.p2p.fetch_advert(info)
        assert advert.peer_id == alice.peer_id and advert.seq >= 1
        reply = await request(bob.p2p.host, alice.p2p.host.get_id(), PING_PROTOCOL, Ping(5))
        assert reply == Pong(5)


@given(st.binary(max_size=200))
def test_random_bytes_decode_to_a_stream_message_or_raise_malformed(data: bytes) -> None:
    allowed = (Ping, Pong, AdvertRequest, Chunk, ErrorReply)
    try:
        codec.decode_frame_untrusted(data, allowed)
    except MalformedMessage:
        pass
