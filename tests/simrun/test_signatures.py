"""`sim.signatures.shared_signature_checks`: identical Ed25519 checks share one answer, and only that."""

from __future__ import annotations

import nacl.bindings
import nacl.exceptions
import nacl.signing
import pytest
from libp2p.crypto.ed25519 import Ed25519PublicKey

from sim.signatures import shared_signature_checks


@pytest.fixture
def arithmetic(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Messages whose signature was actually checked."""
    checked: list[bytes] = []
    original = nacl.bindings.crypto_sign_open

    def counting(signed: bytes, key: bytes) -> bytes:
        checked.append(signed)
        return original(signed, key)

    monkeypatch.setattr(nacl.bindings, "crypto_sign_open", counting)
    return checked


def test_an_identical_check_is_made_once_and_a_bad_one_every_time(arithmetic: list[bytes]) -> None:
    signer = nacl.signing.SigningKey(b"\x01" * 32)
    key = signer.verify_key
    good = signer.sign(b"advert").signature
    bad = bytes([good[0] ^ 1]) + good[1:]
    original = nacl.signing.VerifyKey.verify
    with shared_signature_checks() as kept:
        assert nacl.signing.VerifyKey.verify is not original
        for _ in range(3):
            assert nacl.signing.VerifyKey(bytes(key)).verify(b"advert", good) == b"advert"
        assert len(arithmetic) == 1 and len(kept) == 1
        for _ in range(2):
            with pytest.raises(nacl.exceptions.BadSignatureError):
                key.verify(b"advert", bad)
            with pytest.raises(nacl.exceptions.BadSignatureError):
                key.verify(b"advert!", good)  # other bytes under a kept signature
        assert len(arithmetic) == 5 and len(kept) == 1
        # libp2p's key type goes through the same check, and answers as before
        libp2p_key = Ed25519PublicKey.from_bytes(bytes(key))
        assert libp2p_key.verify(b"advert", good) and not libp2p_key.verify(b"advert", bad)
        assert len(arithmetic) == 6
        # the combined form (signature first) is another input, checked on its own
        assert key.verify(good + b"advert") == b"advert"
        assert len(arithmetic) == 7
    assert nacl.signing.VerifyKey.verify is original
    key.verify(b"advert", good)
    assert len(arithmetic) == 8


def test_the_kept_answers_are_bounded(arithmetic: list[bytes]) -> None:
    signer = nacl.signing.SigningKey(b"\x02" * 32)
    signed = [(m, signer.sign(m).signature) for m in (b"a", b"b", b"c")]
    with shared_signature_checks(kept=2) as kept:
        for message, signature in signed:
            signer.verify_key.verify(message, signature)
        assert len(kept) == 2 and len(arithmetic) == 3
        signer.verify_key.verify(*signed[0])  # the oldest was dropped: checked again
        signer.verify_key.verify(*signed[2])
        assert len(arithmetic) == 4
