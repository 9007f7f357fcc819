from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.peer.id import ID

from protocol import evm
from protocol.errors import InvalidSignature, MalformedMessage
from protocol.identity import (
    Identity,
    b58decode,
    b58encode,
    ed25519_of_peer_id_untrusted,
    verify_evm_binding,
    x25519_of_ed25519_public,
)


@given(st.binary(min_size=32, max_size=32))
def test_peer_id_equals_what_py_libp2p_computes_for_the_same_seed(seed: bytes) -> None:
    ident = Identity(seed=seed, evm_key=b"\x01" * 32)
    theirs = ID.from_pubkey(Ed25519PrivateKey.from_bytes(seed).get_public_key()).to_base58()
    assert ident.peer_id == theirs
    assert ident.peer_id.startswith("12D3KooW")


def test_public_key_round_trips_through_the_peer_id(alice: Identity) -> None:
    assert ed25519_of_peer_id_untrusted(alice.peer_id) == alice.public_key


@pytest.mark.parametrize(
    "bad", ["", "0OIl", "12D3KooW" + "1" * 200, "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"]
)
def test_a_peer_id_that_is_not_an_inlined_ed25519_key_is_malformed(bad: str) -> None:
    with pytest.raises(MalformedMessage):
        ed25519_of_peer_id_untrusted(bad)


@given(st.binary(max_size=64))
def test_base58_round_trips(data: bytes) -> None:
    assert b58decode(b58encode(data)) == data


def test_x25519_key_pair_matches_and_agrees_with_the_ed25519_public_key(alice: Identity) -> None:
    import nacl.bindings as sodium

    assert sodium.crypto_scalarmult_base(alice.x25519_private) == alice.x25519_public
    assert x25519_of_ed25519_public(alice.public_key) == alice.x25519_public


def test_evm_address_is_checksummed_and_matches_eth_account(alice: Identity) -> None:
    from eth_account import Account

    assert alice.evm_address == Account.from_key(alice.evm_key).address


def test_evm_binding_verifies_and_matches_eth_account_personal_sign(alice: Identity) -> None:
    from eth_account import Account
    from eth_account.messages import encode_defunct

    from protocol.identity import binding_message

    sig = alice.evm_binding()
    verify_evm_binding(alice.peer_id, alice.evm_address, sig)
    recovered = Account.recover_message(encode_defunct(binding_message(alice.peer_id)), signature=sig)
    assert recovered == alice.evm_address


def test_evm_binding_for_another_peer_or_address_is_refused(alice: Identity, bob: Identity) -> None:
    with pytest.raises(InvalidSignature):
        verify_evm_binding(bob.peer_id, alice.evm_address, alice.evm_binding())
    with pytest.raises(InvalidSignature):
        verify_evm_binding(alice.peer_id, bob.evm_address, alice.evm_binding())


def test_a_verified_binding_is_recovered_once_and_a_bad_one_every_time(
    alice: Identity, bob: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    recoveries = []
    real = evm.recover_personal
    monkeypatch.setattr(evm, "recover_personal", lambda m, s: recoveries.append(1) or real(m, s))
    sig = alice.evm_binding()
    for _ in range(3):
        verify_evm_binding(alice.peer_id, alice.evm_address, sig)
    assert len(recoveries) <= 1  # at most once: an earlier test may have verified this very binding
    before = len(recoveries)
    for _ in range(3):
        with pytest.raises(InvalidSignature):
            verify_evm_binding(alice.peer_id, bob.evm_address, sig)
    assert len(recoveries) == before + 3


def test_high_s_and_bad_v_signatures_are_refused(alice: Identity) -> None:
    digest = b"\x11" * 32
    sig = evm.sign_hash(alice.evm_key, digest)
    assert evm.recover_address(digest, sig) == alice.evm_address
    s = int.from_bytes(sig[32:64], "big")
    flipped = sig[:32] + (evm.SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    with pytest.raises(InvalidSignature, match="high s"):
        evm.recover_address(digest, flipped)
    with pytest.raises(InvalidSignature, match="v must be"):
        evm.recover_address(digest, sig[:64] + b"\x01")
    with pytest.raises(InvalidSignature):
        evm.recover_address(digest, sig[:10])


def test_identity_repr_never_shows_secrets(alice: Identity) -> None:
    assert alice.seed.hex() not in repr(alice)
    assert alice.evm_key.hex() not in repr(alice)
