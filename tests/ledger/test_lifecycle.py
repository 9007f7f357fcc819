"""The same channel lifecycle on every chain: the embedded py-evm chain, anvil and `steppe chain serve`."""

from __future__ import annotations

import pytest

from node.ledger.abc import Ledger, TransactionReverted
from node.ledger.channels import ChannelClient
from node.ledger.embedded import dev_key
from protocol.voucher import accept_voucher, sign_voucher

ETHER = 10**18
PAYER, PAYEE, STRANGER = dev_key(1), dev_key(2), dev_key(3)


def test_a_channel_opens_tops_up_and_closes_with_the_payers_voucher(ledger: Ledger, contract: str) -> None:
    payer, payee = ChannelClient(ledger, contract, PAYER), ChannelClient(ledger, contract, PAYEE)
    now = ledger.timestamp()
    channel_id, opened = payer.open(payee.address, ETHER, now + 3600)
    payer.top_up(channel_id, ETHER // 2, now + 7200)
    state = payee.state(channel_id)
    assert (state.payer, state.deposit, state.expires_at, state.open) == (
        payer.address,
        3 * ETHER // 2,
        now + 7200,
        True,
    )

    # The provider accepts a growing series of vouchers off-chain, then settles the best one.
    for amount in (ETHER // 10, ETHER // 5, ETHER // 3):
        state = accept_voucher(
            state, sign_voucher(PAYER, ledger.chain_id, contract, channel_id, amount), now=now
        )
    payer_before, payee_before = ledger.balance(payer.address), ledger.balance(payee.address)
    closed = payee.close(state.best)

    assert ledger.balance(payee.address) == payee_before + ETHER // 3 - closed.fee
    assert ledger.balance(payer.address) == payer_before + 3 * ETHER // 2 - ETHER // 3
    assert not payee.channel(channel_id).open
    names = [e.name for e in payer.decode_logs(opened.logs + closed.logs)]
    assert names == ["ChannelOpened", "ChannelClosed"]
    closed_event = payer.decode_logs(closed.logs)[0]
    assert closed_event.args == {
        "channelId": channel_id,
        "paid": ETHER // 3,
        "refunded": 3 * ETHER // 2 - ETHER // 3,
    }

    with pytest.raises(TransactionReverted) as refused:
        payee.close(state.best)  # a closed channel cannot be closed again
    assert refused.value.error == "ChannelNotOpen"
    again, _ = payer.open(payee.address, ETHER, now + 3600)
    assert again == channel_id + 1  # ids only grow, never reused


def test_the_payer_reclaims_an_unclosed_channel_only_after_expiry(ledger: Ledger, contract: str) -> None:
    payer, payee = ChannelClient(ledger, contract, PAYER), ChannelClient(ledger, contract, PAYEE)
    channel_id, _ = payer.open(payee.address, ETHER, ledger.timestamp() + 600)
    voucher = sign_voucher(PAYER, ledger.chain_id, contract, channel_id, ETHER // 4)
    with pytest.raises(TransactionReverted) as early:
        payer.reclaim(channel_id)
    assert early.value.error == "ChannelNotExpired"

    ledger.increase_time(601)
    with pytest.raises(TransactionReverted) as late:
        payee.close(voucher)  # too late: the payee should have closed before expiry
    assert late.value.error == "ChannelExpired"
    before = ledger.balance(payer.address)
    receipt = payer.reclaim(channel_id)
    assert ledger.balance(payer.address) == before + ETHER - receipt.fee
    assert [e.name for e in payer.decode_logs(receipt.logs)] == ["ChannelReclaimed"]


def test_the_contract_refuses_what_the_provider_would_refuse(ledger: Ledger, contract: str) -> None:
    payer, payee = ChannelClient(ledger, contract, PAYER), ChannelClient(ledger, contract, PAYEE)
    stranger = ChannelClient(ledger, contract, STRANGER)
    now = ledger.timestamp()
    channel_id, _ = payer.open(payee.address, ETHER, now + 3600)
    cases = [
        (
            lambda: payee.close(sign_voucher(PAYER, ledger.chain_id, contract, channel_id, ETHER + 1)),
            "AmountOverDeposit",
        ),
        (
            lambda: payee.close(sign_voucher(STRANGER, ledger.chain_id, contract, channel_id, 1)),
            "BadSignature",
        ),
        (lambda: stranger.close(sign_voucher(PAYER, ledger.chain_id, contract, channel_id, 1)), "NotPayee"),
        (lambda: stranger.top_up(channel_id, 1, now + 7200), "NotPayer"),
        (lambda: payer.top_up(channel_id, 1, now + 10), "ExpiryMovedEarlier"),
        (lambda: payer.open(payee.address, 0, now + 3600), "ZeroDeposit"),
        (lambda: payer.open(payee.address, 1, now - 1), "ExpiryInPast"),
        (lambda: payer.reclaim(999), "UnknownChannel"),
        (lambda: payer.withdraw_owed(), "NothingOwed"),
    ]
    for action, error in cases:
        with pytest.raises(TransactionReverted) as refused:
            action()
        assert refused.value.error == error
