"""Wire codec: typed, frozen, versioned messages in length-prefixed frames.

Frame layout (big-endian)::

    u32 body_length | u16 type_id | u8 version | body (msgpack, array-like struct)

Each message type has a unique ``TYPE_ID``, a ``VERSION`` and a ``MAX_SIZE`` for its body. A reader parses
the 7-byte header first (`parse_header_untrusted`) and checks the length against the type's limit *before*
reading the body, then decodes the body (`decode_body_untrusted`). Both raise only `MalformedMessage`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import ClassVar, TypeVar

import msgspec

from .errors import MalformedMessage

HEADER = struct.Struct(">IHB")
HEADER_SIZE = HEADER.size
#: No message of any type may exceed this, whatever its own limit says.
ABSOLUTE_MAX_SIZE = 16 * 1024 * 1024


class Message(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """Base of every wire message. Subclasses set ``TYPE_ID``, ``MAX_SIZE`` and (optionally) ``VERSION``."""

    TYPE_ID: ClassVar[int] = 0
    VERSION: ClassVar[int] = 1
    MAX_SIZE: ClassVar[int] = 0


M = TypeVar("M", bound=Message)
_REGISTRY: dict[int, type[Message]] = {}
_DECODERS: dict[type[Message], msgspec.msgpack.Decoder] = {}
_ENCODER = msgspec.msgpack.Encoder()


def register(cls: type[M]) -> type[M]:
    """Class decorator: make ``cls`` known to the codec. Type ids are unique across the project."""
    if not 0 < cls.TYPE_ID < 0x10000:
        raise ValueError(f"{cls.__name__}.TYPE_ID must be in 1..65535")
    if not 0 < cls.MAX_SIZE <= ABSOLUTE_MAX_SIZE:
        raise ValueError(f"{cls.__name__}.MAX_SIZE must be in 1..{ABSOLUTE_MAX_SIZE}")
    other = _REGISTRY.get(cls.TYPE_ID)
    if other is not None and other is not cls:
        raise ValueError(f"type id {cls.TYPE_ID} used by {other.__name__} and {cls.__name__}")
    _REGISTRY[cls.TYPE_ID] = cls
    _DECODERS[cls] = msgspec.msgpack.Decoder(cls)
    return cls


def registered_types() -> dict[int, type[Message]]:
    return dict(_REGISTRY)


def encode_body(msg: Message) -> bytes:
    return _ENCODER.encode(msg)


def encode_frame(msg: Message) -> bytes:
    """Header + body. Raises `ValueError` if the body exceeds the type's ``MAX_SIZE`` (our own bug)."""
    cls = type(msg)
    if cls not in _DECODERS:
        raise ValueError(f"{cls.__name__} is not registered")
    body = _ENCODER.encode(msg)
    if len(body) > cls.MAX_SIZE:
        raise ValueError(f"{cls.__name__} body of {len(body)} bytes exceeds MAX_SIZE {cls.MAX_SIZE}")
    return HEADER.pack(len(body), cls.TYPE_ID, cls.VERSION) + body


def parse_header_untrusted(
    header: bytes, allowed: Iterable[type[Message]] | None = None
) -> tuple[type[Message], int]:
    """Parse a frame header; returns (message type, body length). Raises `MalformedMessage`."""
    if len(header) != HEADER_SIZE:
        raise MalformedMessage(f"frame header must be {HEADER_SIZE} bytes, got {len(header)}")
    length, type_id, version = HEADER.unpack(header)
    cls = _REGISTRY.get(type_id)
    if cls is None or (allowed is not None and cls not in allowed):
        raise MalformedMessage(f"unexpected message type id {type_id}")
    if version != cls.VERSION:
        raise MalformedMessage(f"{cls.__name__} version {version} is not supported (want {cls.VERSION})")
    if length > cls.MAX_SIZE:
        raise MalformedMessage(f"{cls.__name__} of {length} bytes exceeds the limit of {cls.MAX_SIZE}")
    return cls, length


def decode_body_untrusted(cls: type[M], body: bytes) -> M:
    """Decode a body of type ``cls``. Raises `MalformedMessage`."""
    if len(body) > cls.MAX_SIZE:
        raise MalformedMessage(f"{cls.__name__} of {len(body)} bytes exceeds the limit of {cls.MAX_SIZE}")
    try:
        return _DECODERS[cls].decode(body)
    except (msgspec.MsgspecError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise MalformedMessage(f"bad {cls.__name__}: {exc}") from exc


def decode_frame_untrusted(data: bytes, allowed: Iterable[type[Message]] | None = None) -> Message:
    """Decode one whole frame held in memory (e.g. a gossip message). Raises `MalformedMessage`."""
    cls, length = parse_header_untrusted(bytes(data[:HEADER_SIZE]), allowed)
    if len(data) != HEADER_SIZE + length:
        raise MalformedMessage(f"frame says {length} body bytes, has {len(data) - HEADER_SIZE}")
    return decode_body_untrusted(cls, bytes(data[HEADER_SIZE:]))
