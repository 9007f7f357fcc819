"""What `/steppe/infer/1` hands to libp2p is sealed: no prompt token or hidden state is readable in it,
and a replayed or reordered step is refused. The libp2p stream is replaced by an in-memory pipe that
records every byte written (a unit test of serving + client; the real network is in test_network.py)."""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import msgspec
import numpy as np
import pytest
import trio

from node.client import HopFailed, start_hop_session
from node.inference.maketiny import make_tiny
from node.inference.weights import model_reference
from node.inference.worker import AsyncShard
from node.p2p.streams import FramedStream
from node.serving import InferService
from protocol import infer
from protocol.advert import ModelRef
from protocol.errors import MalformedMessage, OutOfOrderMessage, ReplayedMessage
from protocol.identity import Identity
from protocol.route import Hop


class MemStream:
    """One end of an in-memory duplex byte pipe with the parts of a libp2p stream FramedStream uses."""

    def __init__(
        self, send: trio.MemorySendChannel, recv: trio.MemoryReceiveChannel, peer: str, wire: list[bytes]
    ):
        self._send, self._recv, self.wire = send, recv, wire
        self.muxed_conn = SimpleNamespace(peer_id=peer)

    async def write(self, data: bytes) -> None:
        self.wire.append(bytes(data))
        await self._send.send(bytes(data))

    async def read(self, _n: int) -> bytes:
        try:
            return await self._recv.receive()
        except trio.EndOfChannel:
            raise EOFError from None

    async def close(self) -> None:
        await self._send.aclose()

    async def reset(self) -> None:
        await self._send.aclose()


def pipe(wire: list[bytes]) -> tuple[MemStream, MemStream]:
    a_send, b_recv = trio.open_memory_channel(64)
    b_send, a_recv = trio.open_memory_channel(64)
    return MemStream(a_send, a_recv, "client", wire), MemStream(b_send, b_recv, "hop", wire)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, ModelRef]:
    path = tmp_path_factory.mktemp("m") / "tiny"
    make_tiny(path, arch="llama", layers=2, hidden=64, heads=4, kv_heads=2, vocab=384, seed=3)
    return path, ModelRef("tiny", bytes.fromhex(model_reference(path)), 2)


@pytest.fixture(scope="module")
def second_half(tiny) -> AsyncShard:
    return AsyncShard.load_sync(
        tiny[0], start=1, end=2, max_sessions=2, max_context=32, chunk=8, warmup=False
    )


@pytest.fixture(scope="module")
def first_half(tiny) -> AsyncShard:
    return AsyncShard.load_sync(
        tiny[0], start=0, end=1, max_sessions=2, max_context=32, chunk=8, warmup=False
    )


def _contains_floats(wire: bytes, rows: np.ndarray) -> bool:
    """Does any row of ``rows`` appear in ``wire`` as raw fp32 or fp16 bytes (16 values are plenty)?"""
    for row in rows:
        for dt in ("<f4", "<f2"):
            if row[:16].astype(dt).tobytes() in wire:
                return True
    return False


async def test_prompt_tokens_and_hidden_states_never_appear_in_the_bytes_on_the_wire(
    tiny, first_half, second_half
) -> None:
    path, ref = tiny
    hop_id = Identity.from_int(42)
    service = InferService(hop_id, second_half, ref.sha256)
    prompt = [101, 202, 303, 44, 55, 66, 77, 88, 99, 111, 222, 333]
    # The hidden states the client sends to the hop are the first half's outputs for the prompt.
    sid = await first_half.open_session(len(prompt) + 1)
    hidden = await first_half.forward(sid, np.asarray(prompt, np.int32), 0)
    await first_half.close_session(sid)

    wire: list[bytes] = []
    client_end, hop_end = pipe(wire)
    proto = service.protocol
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.handle, FramedStream(hop_end, proto, incoming=True))
        stream = FramedStream(client_end, proto, incoming=False)
        hop = Hop(hop_id.peer_id, 1, 2, 0.0, 0.0, 0)
        session = await start_hop_session(stream, hop, ref, len(prompt) + 1, "float32")
        logits = await session.forward(0, hidden, wire_dtype="float32")
        await stream.close()
    assert logits.shape == (1, 384)
    everything = b"".join(wire)
    assert _contains_floats(b"".join([hidden.astype("<f4").tobytes()]), hidden)  # the probe itself works
    assert not _contains_floats(everything, hidden)
    assert not _contains_floats(everything, logits)
    assert msgspec.msgpack.encode(tuple(prompt)) not in everything
    assert struct.pack("<12i", *prompt) not in everything


async def test_a_replayed_or_reordered_step_is_refused(tiny, second_half) -> None:
    path, ref = tiny
    hop_id = Identity.from_int(43)
    service = InferService(hop_id, second_half, ref.sha256)
    rows = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)

    for attack, error in (("replay", ReplayedMessage), ("reorder", OutOfOrderMessage)):
        wire: list[bytes] = []
        client_end, hop_end = pipe(wire)
        stream = FramedStream(client_end, service.protocol, incoming=False)
        hop_stream = FramedStream(hop_end, service.protocol, incoming=True)
        refused: list[Exception] = []

        async def serve(hop_stream=hop_stream, refused=refused) -> None:
            try:
                await service.handle(hop_stream)
            except MalformedMessage as exc:
                refused.append(exc)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                session = await start_hop_session(
                    stream, Hop(hop_id.peer_id, 1, 2, 0, 0, 0), ref, 8, "float32"
                )
                await session.forward(0, rows, wire_dtype="float32")
                if attack == "replay":
                    # Resend the exact bytes of the step just answered.
                    await client_end.write(wire[-2])
                else:
                    # Seal step 3 while the hop expects step 2.
                    session._sealer.next_seq += 1
                    await session.stream.send(
                        infer.InferFrame(
                            session.session,
                            session._sealer.seal(infer.encode_inner(infer.Forward(1, hidden=b"x"))),
                        )
                    )
        assert len(refused) == 1 and isinstance(refused[0], error), refused
        assert service.stats.sessions_active == 0


async def test_a_full_hop_answers_busy_at_once_and_frees_the_slot_when_a_session_ends(
    tiny, second_half
) -> None:
    path, ref = tiny
    hop_id = Identity.from_int(44)
    service = InferService(hop_id, second_half, ref.sha256)
    hop = Hop(hop_id.peer_id, 1, 2, 0.0, 0.0, 0)
    free = second_half.shard.max_sessions - len(second_half.shard.sessions)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            streams = []
            for _ in range(free):
                client_end, hop_end = pipe([])
                nursery.start_soon(service.handle, FramedStream(hop_end, service.protocol, incoming=True))
                stream = FramedStream(client_end, service.protocol, incoming=False)
                await start_hop_session(stream, hop, ref, 8, "float32")
                streams.append(stream)
            client_end, hop_end = pipe([])
            nursery.start_soon(service.handle, FramedStream(hop_end, service.protocol, incoming=True))
            with pytest.raises(HopFailed) as info:
                await start_hop_session(
                    FramedStream(client_end, service.protocol, incoming=False), hop, ref, 8, "float32"
                )
            assert info.value.busy and "busy" in str(info.value)
            for stream in streams:
                await stream.close()
    assert service.stats.refused["busy"] == 1 and service.stats.sessions_active == 0
    assert len(second_half.shard.sessions) == 0


async def test_a_hop_refuses_another_model_or_other_layers(tiny, second_half) -> None:
    path, ref = tiny
    hop_id = Identity.from_int(45)
    service = InferService(hop_id, second_half, ref.sha256)
    for hop, model in (
        (Hop(hop_id.peer_id, 0, 2, 0, 0, 0), ref),
        (Hop(hop_id.peer_id, 1, 2, 0, 0, 0), ModelRef("x", b"\1" * 32, 2)),
    ):
        client_end, hop_end = pipe([])
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(service.handle, FramedStream(hop_end, service.protocol, incoming=True))
                with pytest.raises(HopFailed, match="bad_request"):
                    await start_hop_session(
                        FramedStream(client_end, service.protocol, incoming=False), hop, model, 8, "float32"
                    )
