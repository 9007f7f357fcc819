"""The provider's acceptance rule: only a higher voucher, within the deposit, on an open unexpired channel
of the right chain and contract, signed by the channel's payer. Each refusal is its own error."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.ledger.embedded import dev_key
from protocol.errors import InvalidSignature, MalformedMessage, SteppeError
from protocol.evm import address_of_private_key
from protocol.voucher import (
    VOUCHER_WIRE_SIZE,
    ChannelExpired,
    ChannelNotOpen,
    ChannelState,
    StaleVoucher,
    Voucher,
    VoucherOverDeposit,
    VoucherRefused,
    WrongChannelDomain,
    WrongVoucherSigner,
    accept_voucher,
    sign_voucher,
)

CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
OTHER_CONTRACT = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
PAYER_KEY, STRANGER_KEY = dev_key(1), dev_key(3)
NOW = 1_800_000_000


@pytest.fixture
def state() -> ChannelState:
    return ChannelState(
        chain_id=1337,
        contract=CONTRACT,
        channel_id=7,
        payer=address_of_private_key(PAYER_KEY),
        payee=address_of_private_key(dev_key(2)),
        deposit=1000,
        expires_at=NOW + 3600,
    )


def voucher(
    amount: int, *, key: bytes = PAYER_KEY, chain_id: int = 1337, contract: str = CONTRACT, channel: int = 7
) -> Voucher:
    return sign_voucher(key, chain_id, contract, channel, amount)


def test_the_provider_accepts_growing_vouchers_up_to_the_deposit(state: ChannelState) -> None:
    for amount in (1, 10, 999, 1000):
        state = accept_voucher(state, voucher(amount), now=NOW)
        assert state.paid == amount


def test_provider_refuses_a_voucher_below_the_last_one(state: ChannelState) -> None:
    state = accept_voucher(state, voucher(50), now=NOW)
    for amount in (50, 49, 0):
        with pytest.raises(StaleVoucher):
            accept_voucher(state, voucher(amount), now=NOW)
    assert state.paid == 50


def test_provider_refuses_a_voucher_over_the_deposit(state: ChannelState) -> None:
    with pytest.raises(VoucherOverDeposit):
        accept_voucher(state, voucher(1001), now=NOW)


def test_provider_refuses_a_closed_or_expired_channel(state: ChannelState) -> None:
    with pytest.raises(ChannelNotOpen):
        accept_voucher(dataclasses.replace(state, open=False), voucher(1), now=NOW)
    with pytest.raises(ChannelExpired):
        accept_voucher(state, voucher(1), now=NOW + 3600)
    with pytest.raises(ChannelExpired):  # inside the safety margin the payee could not close in time
        accept_voucher(state, voucher(1), now=NOW + 3500, margin=100)


def test_provider_refuses_a_voucher_for_another_chain_contract_or_channel(state: ChannelState) -> None:
    for wrong in (voucher(1, chain_id=1), voucher(1, contract=OTHER_CONTRACT), voucher(1, channel=8)):
        with pytest.raises(WrongChannelDomain):
            accept_voucher(state, wrong, now=NOW)


def test_provider_refuses_a_voucher_signed_by_anyone_but_the_payer(state: ChannelState) -> None:
    with pytest.raises(WrongVoucherSigner):
        accept_voucher(state, voucher(1, key=STRANGER_KEY), now=NOW)
    good = voucher(1)
    # The same voucher with its amount changed no longer recovers the payer.
    with pytest.raises(WrongVoucherSigner):
        accept_voucher(state, dataclasses.replace(good, amount=2), now=NOW)
    with pytest.raises(InvalidSignature):
        accept_voucher(state, dataclasses.replace(good, signature=good.signature[:64] + b"\x1d"), now=NOW)


def test_every_refusal_is_a_steppe_error_with_a_distinct_type() -> None:
    kinds = {
        StaleVoucher,
        VoucherOverDeposit,
        ChannelNotOpen,
        ChannelExpired,
        WrongChannelDomain,
        WrongVoucherSigner,
    }
    assert all(issubclass(k, SteppeError) for k in kinds)
    assert all(issubclass(k, VoucherRefused) for k in kinds - {WrongVoucherSigner})
    assert issubclass(WrongVoucherSigner, InvalidSignature)


def test_a_voucher_survives_its_wire_encoding() -> None:
    v = voucher(123456789)
    data = v.to_bytes()
    assert len(data) == VOUCHER_WIRE_SIZE
    assert Voucher.from_bytes_untrusted(data) == v


@given(st.binary(max_size=2 * VOUCHER_WIRE_SIZE))
def test_decoding_random_bytes_raises_only_malformed_message(data: bytes) -> None:
    try:
        decoded = Voucher.from_bytes_untrusted(data)
    except MalformedMessage:
        return
    assert decoded.to_bytes() == data
