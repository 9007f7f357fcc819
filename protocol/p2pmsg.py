"""Wire messages of the node's small stream protocols (type ids 10-49).

Pure: structs only. The stream helper in ``node.p2p.streams`` frames them with `protocol.codec`.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from . import codec

#: Largest payload a ping may echo; the benchmark uses it for round trips.
PING_MAX_PAYLOAD = 64 * 1024
#: Largest chunk of a bulk transfer.
CHUNK_MAX = 1024 * 1024


@codec.register
class ErrorReply(codec.Message, frozen=True):
    """Sent instead of a response when a request cannot be served. ``code`` is one of `ERROR_CODES`."""

    TYPE_ID = 10
    MAX_SIZE = 1024

    code: Annotated[str, msgspec.Meta(max_length=32)]
    message: Annotated[str, msgspec.Meta(max_length=512)] = ""


#: busy: the per-peer concurrency limit was reached; malformed: the request did not decode;
#: unsupported: a message type this protocol does not take; timeout: the request came too slowly;
#: unavailable: the node has nothing to answer with (e.g. no advert yet); internal: our bug.
ERROR_CODES = ("busy", "malformed", "unsupported", "timeout", "unavailable", "internal")


@codec.register
class Ping(codec.Message, frozen=True):
    TYPE_ID = 11
    MAX_SIZE = PING_MAX_PAYLOAD + 64

    nonce: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    payload: Annotated[bytes, msgspec.Meta(max_length=PING_MAX_PAYLOAD)] = b""


@codec.register
class Pong(codec.Message, frozen=True):
    TYPE_ID = 12
    MAX_SIZE = PING_MAX_PAYLOAD + 64

    nonce: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    payload: Annotated[bytes, msgspec.Meta(max_length=PING_MAX_PAYLOAD)] = b""


@codec.register
class AdvertRequest(codec.Message, frozen=True):
    """Ask a peer for its current signed advert; the answer is a `protocol.advert.SignedAdvert` frame."""

    TYPE_ID = 13
    MAX_SIZE = 16


@codec.register
class Chunk(codec.Message, frozen=True):
    """One piece of a bulk stream; an empty ``data`` ends the stream."""

    TYPE_ID = 14
    MAX_SIZE = CHUNK_MAX + 16

    data: Annotated[bytes, msgspec.Meta(max_length=CHUNK_MAX)]
