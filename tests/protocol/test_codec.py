from __future__ import annotations

from typing import Annotated

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import codec
from protocol.advert import AdvertBody, SignedAdvert, make_advert
from protocol.errors import MalformedMessage
from protocol.identity import Identity


@codec.register
class _Probe(codec.Message, frozen=True):
    TYPE_ID = 65000
    MAX_SIZE = 256
    name: Annotated[str, msgspec.Meta(max_length=32)]
    values: tuple[int, ...] = ()


def _all_samples() -> list[codec.Message]:
    ident = Identity.from_int(7)
    return [
        _Probe("x", (1, 2, 3)),
        make_advert(ident, AdvertBody(addrs=("/ip4/127.0.0.1/tcp/4001",)), seq=5, now_ms=10_000),
    ]


@pytest.mark.parametrize("msg", _all_samples(), ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips_through_a_frame(msg: codec.Message) -> None:
    frame = codec.encode_frame(msg)
    assert codec.decode_frame_untrusted(frame) == msg


def test_every_registered_type_has_a_sample_here() -> None:
    # A new message type must be added to _all_samples (or its own module's round-trip test).
    sampled = {type(m) for m in _all_samples()}
    own = {t for t in codec.registered_types().values() if t.__module__ in ("protocol.advert", __name__)}
    assert own <= sampled


def test_length_is_checked_against_the_type_limit_before_the_body_is_read() -> None:
    header = codec.HEADER.pack(_Probe.MAX_SIZE + 1, _Probe.TYPE_ID, 1)
    with pytest.raises(MalformedMessage, match="exceeds the limit"):
        codec.parse_header_untrusted(header)


def test_unknown_type_and_version_and_disallowed_type_are_refused() -> None:
    with pytest.raises(MalformedMessage, match="type id"):
        codec.parse_header_untrusted(codec.HEADER.pack(1, 64999, 1))
    with pytest.raises(MalformedMessage, match="version"):
        codec.parse_header_untrusted(codec.HEADER.pack(1, _Probe.TYPE_ID, 9))
    with pytest.raises(MalformedMessage, match="type id"):
        codec.parse_header_untrusted(codec.HEADER.pack(1, _Probe.TYPE_ID, 1), allowed=(SignedAdvert,))


def test_encoding_an_oversized_message_is_our_bug_and_raises_value_error() -> None:
    with pytest.raises(ValueError):
        codec.encode_frame(_Probe("x", tuple(range(1000))))


def test_type_ids_are_unique() -> None:
    class Clash(codec.Message, frozen=True):
        TYPE_ID = _Probe.TYPE_ID
        MAX_SIZE = 10

    with pytest.raises(ValueError, match="used by"):
        codec.register(Clash)


@given(st.binary(max_size=600))
def test_random_bytes_never_raise_anything_but_malformed_message(data: bytes) -> None:
    try:
        codec.decode_frame_untrusted(data)
    except MalformedMessage:
        pass


@given(st.sampled_from(_all_samples()), st.data())
def test_mutated_frames_never_raise_anything_but_malformed_message(
    msg: codec.Message, data: st.DataObject
) -> None:
    frame = bytearray(codec.encode_frame(msg))
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if not frame:
            break
        pos = data.draw(st.integers(0, len(frame) - 1))
        if op == "flip":
            frame[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del frame[pos:]
        else:
            frame[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    try:
        codec.decode_frame_untrusted(bytes(frame))
    except MalformedMessage:
        pass
