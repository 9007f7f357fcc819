from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import codec
from protocol.advert import (
    ADVERT_MAX_SIZE,
    LATE_GRACE_MS,
    AdvertBody,
    ModelRef,
    SignedAdvert,
    SwarmView,
    decode_advert_untrusted,
    encode_advert,
    make_advert,
    verify_advert,
)
from protocol.errors import InvalidAdvert, LateAdvert, MalformedMessage, StaleAdvert
from protocol.identity import Identity

NOW = 1_700_000_000_000


def body(**kw) -> AdvertBody:
    base = dict(
        addrs=("/ip4/127.0.0.1/tcp/4001",),
        model=ModelRef("tiny-llama", b"\xab" * 32, 8),
        layer_start=0,
        layer_end=4,
        serves_embedding=True,
        dtype="float32",
        device="CPU:LLVM",
        tokens_per_s=55.5,
        free_cache_tokens=4096,
        free_sessions=8,
        price_wei_per_token_layer=10**9,
        chain_id=1337,
        contract="0x" + "11" * 20,
        software="steppe/0.1.0",
    )
    base.update(kw)
    return AdvertBody(**base)


def test_a_fresh_advert_verifies_and_round_trips(alice: Identity) -> None:
    adv = make_advert(alice, body(), seq=1, now_ms=NOW)
    assert adv.body.payment_address == alice.evm_address
    again = decode_advert_untrusted(encode_advert(adv))
    assert again == adv
    verify_advert(again, NOW + 1)


def test_a_forged_signature_is_refused(alice: Identity, bob: Identity) -> None:
    adv = make_advert(alice, body(), seq=1, now_ms=NOW)
    forged = msgspec.structs.replace(adv, body=msgspec.structs.replace(adv.body, price_wei_per_token_layer=1))
    with pytest.raises(InvalidAdvert, match="signature"):
        verify_advert(forged, NOW)
    # Bob signs an advert but claims Alice's PeerID.
    bobs = make_advert(bob, body(), seq=1, now_ms=NOW)
    with pytest.raises(InvalidAdvert, match="signature"):
        verify_advert(msgspec.structs.replace(bobs, peer_id=alice.peer_id), NOW)


def test_a_missing_or_foreign_evm_binding_is_refused(alice: Identity, bob: Identity) -> None:
    no_binding = body(payment_address=alice.evm_address, evm_binding=b"")
    with pytest.raises(InvalidAdvert, match="EVM binding"):
        verify_advert(make_advert(alice, no_binding, seq=1, now_ms=NOW), NOW)
    # Alice claims Bob's address with Bob's binding (which binds Bob's PeerID, not Alice's).
    stolen = body(payment_address=bob.evm_address, evm_binding=bob.evm_binding())
    with pytest.raises(InvalidAdvert, match="binding"):
        verify_advert(make_advert(alice, stolen, seq=1, now_ms=NOW), NOW)


def test_expired_and_far_future_and_overlong_adverts_are_refused(alice: Identity) -> None:
    adv = make_advert(alice, body(), seq=1, now_ms=NOW, ttl_ms=1000)
    # Just expired: late (an honest relay can deliver it so), a kind of invalid that blames nobody.
    for now in (NOW + 1000, NOW + 1000 + LATE_GRACE_MS):
        with pytest.raises(LateAdvert, match="expired"):
            verify_advert(adv, now)
    # Long expired: a replay of an old copy.
    with pytest.raises(InvalidAdvert, match="expired") as exc:
        verify_advert(adv, NOW + 1001 + LATE_GRACE_MS)
    assert not isinstance(exc.value, LateAdvert)
    view = SwarmView()
    with pytest.raises(LateAdvert):
        view.accept(adv, NOW + 1500)
    assert view.rejected == {"late": 1} and view.get(alice.peer_id, NOW) is None
    future = make_advert(alice, body(), seq=1, now_ms=NOW + 3_600_000)
    with pytest.raises(InvalidAdvert, match="future"):
        verify_advert(future, NOW)
    forever = make_advert(alice, body(), seq=1, now_ms=NOW, ttl_ms=10**9)
    with pytest.raises(InvalidAdvert, match="lifetime"):
        verify_advert(forever, NOW)


def test_unknown_version_is_refused(alice: Identity) -> None:
    adv = make_advert(alice, body(), seq=1, now_ms=NOW)
    with pytest.raises(InvalidAdvert, match="version"):
        verify_advert(msgspec.structs.replace(adv, version=2), NOW)


def test_an_oversized_advert_is_refused_before_decoding(alice: Identity) -> None:
    adv = make_advert(alice, body(), seq=1, now_ms=NOW)
    frame = encode_advert(adv)
    huge = codec.HEADER.pack(ADVERT_MAX_SIZE + 100, SignedAdvert.TYPE_ID, 1) + b"\0" * (ADVERT_MAX_SIZE + 100)
    with pytest.raises(MalformedMessage):
        decode_advert_untrusted(huge)
    with pytest.raises(MalformedMessage):
        decode_advert_untrusted(frame + b"\0")


def test_a_layer_range_beyond_the_model_is_malformed() -> None:
    with pytest.raises(ValueError):
        body(layer_start=0, layer_end=9)
    with pytest.raises(ValueError):
        body(layer_start=3, layer_end=2)


def test_the_view_refuses_a_replayed_or_older_seq_and_counts_it(alice: Identity) -> None:
    view = SwarmView()
    first = encode_advert(make_advert(alice, body(), seq=5, now_ms=NOW))
    older = encode_advert(make_advert(alice, body(), seq=4, now_ms=NOW))
    view.accept_untrusted(first, NOW)
    for data in (first, older):
        with pytest.raises(StaleAdvert):
            view.accept_untrusted(data, NOW)
    assert view.rejected["stale"] == 2
    newer = make_advert(alice, body(free_sessions=1), seq=6, now_ms=NOW)
    view.accept_untrusted(encode_advert(newer), NOW)
    assert view.get(alice.peer_id, NOW) == newer


def test_the_view_forgets_expired_adverts_but_remembers_their_seq(alice: Identity) -> None:
    view = SwarmView()
    adv = make_advert(alice, body(), seq=5, now_ms=NOW, ttl_ms=1000)
    view.accept_untrusted(encode_advert(adv), NOW)
    assert view.adverts(NOW + 999) == [adv]
    assert view.adverts(NOW + 1000) == []
    assert view.expire(NOW + 1000) == [alice.peer_id]
    with pytest.raises(StaleAdvert):
        view.accept(adv, NOW + 500)


def test_the_view_counts_garbage_as_malformed() -> None:
    view = SwarmView()
    with pytest.raises(MalformedMessage):
        view.accept_untrusted(b"\x00\x01garbage", NOW)
    assert view.rejected["malformed"] == 1


@given(st.data())
def test_mutated_adverts_are_refused_with_malformed_message_only(data: st.DataObject) -> None:
    ident = Identity.from_int(11)
    frame = bytearray(encode_advert(make_advert(ident, body(), seq=1, now_ms=NOW)))
    pos = data.draw(st.integers(0, len(frame) - 1))
    frame[pos] ^= data.draw(st.integers(1, 255))
    original = make_advert(ident, body(), seq=1, now_ms=NOW)
    view = SwarmView()
    try:
        accepted = view.accept_untrusted(bytes(frame), NOW)
    except MalformedMessage:
        return
    # Only a different encoding of the very same signed content may pass.
    assert accepted == original, f"mutated advert at byte {pos} was accepted with other content"
