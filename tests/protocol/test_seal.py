from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import (
    MalformedMessage,
    OutOfOrderMessage,
    ReplayedMessage,
    TamperedPayload,
    TruncatedPayload,
    WrongRecipient,
)
from protocol.identity import Identity
from protocol.seal import HEADER_SIZE, OVERHEAD, Opener, Sealer, open_untrusted, seal

PROTO = "/steppe/infer/1"
SID = b"session-0001"


def pair(ident: Identity, session_id: bytes = SID) -> tuple[Sealer, Opener]:
    return (
        Sealer(ident.x25519_public, protocol=PROTO, session_id=session_id),
        Opener(ident.x25519_private, ident.x25519_public, protocol=PROTO, session_id=session_id),
    )


def test_sealed_messages_open_in_order(alice: Identity) -> None:
    sealer, opener = pair(alice)
    msgs = [b"", b"hello", bytes(range(256)) * 100]
    for m in msgs:
        sealed = sealer.seal(m)
        assert len(sealed) == len(m) + OVERHEAD
        assert opener.open_untrusted(sealed) == m


def test_the_plaintext_does_not_appear_in_the_sealed_bytes(alice: Identity) -> None:
    secret = b"the prompt nobody else may read" * 4
    assert secret not in Sealer(alice.x25519_public, protocol=PROTO, session_id=SID).seal(secret)


def test_a_replay_is_refused_as_a_replay(alice: Identity) -> None:
    sealer, opener = pair(alice)
    first = sealer.seal(b"a")
    opener.open_untrusted(first)
    opener.open_untrusted(sealer.seal(b"b"))
    with pytest.raises(ReplayedMessage):
        opener.open_untrusted(first)


def test_reordering_is_refused_as_out_of_order(alice: Identity) -> None:
    sealer, opener = pair(alice)
    zero, one = sealer.seal(b"0"), sealer.seal(b"1")
    with pytest.raises(OutOfOrderMessage):
        opener.open_untrusted(one)
    assert opener.open_untrusted(zero) == b"0"
    assert opener.open_untrusted(one) == b"1"


def test_tampering_anywhere_is_refused_as_tampered(alice: Identity) -> None:
    sealer, _ = pair(alice)
    sealed = bytearray(sealer.seal(b"payload bytes"))
    for pos in [HEADER_SIZE - 1, HEADER_SIZE, len(sealed) - 1, 20]:  # nonce, body, tag, eph key
        bad = bytearray(sealed)
        bad[pos] ^= 1
        with pytest.raises(TamperedPayload):
            open_untrusted(
                alice.x25519_private, alice.x25519_public, bytes(bad), protocol=PROTO, session_id=SID
            )


def test_a_body_moved_to_another_session_or_protocol_or_position_is_refused(alice: Identity) -> None:
    sealed = seal(alice.x25519_public, b"x", protocol=PROTO, session_id=SID, seq=3)
    with pytest.raises(TamperedPayload):
        open_untrusted(alice.x25519_private, alice.x25519_public, sealed, protocol=PROTO, session_id=b"other")
    with pytest.raises(TamperedPayload):
        open_untrusted(alice.x25519_private, alice.x25519_public, sealed, protocol="/other/1", session_id=SID)
    moved = bytearray(sealed)
    moved[9:17] = (2).to_bytes(8, "big")  # claim seq 2
    with pytest.raises(TamperedPayload):
        open_untrusted(
            alice.x25519_private, alice.x25519_public, bytes(moved), protocol=PROTO, session_id=SID
        )


def test_the_wrong_key_is_refused_as_wrong_recipient(alice: Identity, bob: Identity) -> None:
    sealed = Sealer(alice.x25519_public, protocol=PROTO, session_id=SID).seal(b"for alice")
    with pytest.raises(WrongRecipient):
        open_untrusted(bob.x25519_private, bob.x25519_public, sealed, protocol=PROTO, session_id=SID)


def test_truncation_is_refused_as_truncated_or_tampered(alice: Identity) -> None:
    sealed = Sealer(alice.x25519_public, protocol=PROTO, session_id=SID).seal(b"0123456789")
    with pytest.raises(TruncatedPayload):
        open_untrusted(
            alice.x25519_private, alice.x25519_public, sealed[: OVERHEAD - 1], protocol=PROTO, session_id=SID
        )
    with pytest.raises(TamperedPayload):
        open_untrusted(alice.x25519_private, alice.x25519_public, sealed[:-1], protocol=PROTO, session_id=SID)


@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_malformed_message(data: bytes) -> None:
    ident = Identity.from_int(5)
    try:
        Opener(ident.x25519_private, ident.x25519_public, protocol=PROTO, session_id=SID).open_untrusted(data)
    except MalformedMessage:
        pass


@given(st.integers(0, 200), st.binary(min_size=1, max_size=8))
def test_mutated_sealed_payloads_never_open(pos: int, noise: bytes) -> None:
    ident = Identity.from_int(5)
    sealer, opener = pair(ident)
    sealed = bytearray(sealer.seal(b"some hidden state bytes" * 4))
    pos %= len(sealed)
    sealed[pos : pos + len(noise)] = bytes(
        a ^ (b or 1) for a, b in zip(sealed[pos : pos + len(noise)], noise, strict=False)
    )
    with pytest.raises(MalformedMessage):
        opener.open_untrusted(bytes(sealed))
