"""The node's own small stream protocols: ping (echo), advert fetch, and bulk (for benchmarks).

Each handler takes a `FramedStream` from `streams.ProtocolServer`, which answers errors and limits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node.p2p.streams import FramedStream, StreamProtocol
from protocol.advert import ADVERT_MAX_SIZE, SignedAdvert
from protocol.p2pmsg import CHUNK_MAX, PING_MAX_PAYLOAD, AdvertRequest, Chunk, ErrorReply, Ping, Pong

if TYPE_CHECKING:
    from node.p2p.node import P2PNode

PING_PROTOCOL = StreamProtocol(
    "/steppe/ping/1", inbound=(Ping,), outbound=(Pong,), max_frame=PING_MAX_PAYLOAD + 64, read_timeout=10.0
)
ADVERT_PROTOCOL = StreamProtocol(
    "/steppe/advert/1",
    inbound=(AdvertRequest,),
    outbound=(SignedAdvert,),
    max_frame=ADVERT_MAX_SIZE,
    read_timeout=5.0,
)
BULK_PROTOCOL = StreamProtocol(
    "/steppe/bulk/1",
    inbound=(Chunk,),
    outbound=(Chunk,),
    max_frame=CHUNK_MAX + 16,
    read_timeout=30.0,
    per_peer_limit=2,
)


async def serve_ping(stream: FramedStream) -> None:
    """Echo every ping on the stream until the dialer closes it (one stream can carry many round trips)."""
    while True:
        msg = await stream.receive()
        if msg is None:
            return
        assert isinstance(msg, Ping)
        await stream.send(Pong(msg.nonce, msg.payload))


async def serve_advert(stream: FramedStream, node: P2PNode) -> None:
    await stream.expect(AdvertRequest)
    advert = node.advert
    if advert is None or advert.expires_at <= node.clock.now_ms():
        await stream.send(ErrorReply("unavailable", "no current advert yet"))
        return
    await stream.send(advert)


async def serve_bulk_sink(stream: FramedStream) -> None:
    """Read chunks until an empty one, then answer with an empty chunk (the receiver's acknowledgement)."""
    while True:
        msg = await stream.expect(Chunk)
        assert isinstance(msg, Chunk)
        if not msg.data:
            await stream.send(Chunk(b""))
            return
