"""The hidden-state wire format (protocol/hidden.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import MalformedMessage
from protocol.hidden import HEADER, decode_hidden_untrusted, encode_hidden


def test_fp32_hidden_states_round_trip_exactly_and_fp16_within_half_precision():
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    wire = encode_hidden(x, "float32")
    assert len(wire) == HEADER.size + x.nbytes
    assert np.array_equal(decode_hidden_untrusted(wire, 1 << 20), x)
    half = encode_hidden(x, "float16")
    assert len(half) == HEADER.size + x.nbytes // 2
    assert np.allclose(decode_hidden_untrusted(half, 1 << 20), x, atol=4e-3)


def test_a_message_over_the_limit_is_refused_before_decoding():
    wire = encode_hidden(np.zeros((4, 8), np.float32))
    with pytest.raises(MalformedMessage, match="exceeds"):
        decode_hidden_untrusted(wire, len(wire) - 1)


@pytest.mark.parametrize("cut", [0, 5, HEADER.size, HEADER.size + 3])
def test_truncated_or_padded_messages_are_malformed(cut):
    wire = encode_hidden(np.ones((2, 8), np.float32))
    with pytest.raises(MalformedMessage):
        decode_hidden_untrusted(wire[:cut], 1 << 20)
    with pytest.raises(MalformedMessage):
        decode_hidden_untrusted(wire + b"\0", 1 << 20)


def test_non_finite_values_are_malformed():
    with pytest.raises(MalformedMessage, match="NaN"):
        decode_hidden_untrusted(encode_hidden(np.array([[1.0, np.nan]])), 1 << 20)


@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_malformed_message(data):
    try:
        decode_hidden_untrusted(data, 150)
    except MalformedMessage:
        pass


@given(st.integers(0, 200), st.integers(0, 255), st.binary(max_size=8))
def test_mutated_messages_never_raise_anything_but_malformed_message(pos, byte, extra):
    wire = bytearray(encode_hidden(np.ones((3, 8), np.float32), "float16"))
    if pos < len(wire):
        wire[pos] = byte
    try:
        out = decode_hidden_untrusted(bytes(wire) + extra, 1 << 16)
        assert out.dtype == np.float32 and out.ndim == 2
    except MalformedMessage:
        pass
