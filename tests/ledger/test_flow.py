"""A payer pays three providers per token per layer; they settle; every wei is accounted for.

The ledger half of the paid-generation flow: the inference protocol carries these vouchers in its steps.
"""

from __future__ import annotations

from pathlib import Path

from node.ledger.channels import ChannelClient, deploy
from node.ledger.embedded import EmbeddedChain, dev_key
from node.ledger.embedded_ledger import EmbeddedLedger
from node.ledger.receiver import PaymentReceiver
from node.ledger.sender import PaymentSender
from node.ledger.store import VoucherStore

PAYER = dev_key(1)
PROVIDERS = [
    (dev_key(4), 4, 1_000),
    (dev_key(5), 8, 2_500),
    (dev_key(6), 4, 7),
]  # key, layers, wei/token/layer
TOKENS = 50


def burned_fees(chain: EmbeddedChain, first_block: int) -> int:
    total = 0
    for number in range(first_block, chain.head().block_number + 1):
        for tx in chain.block_by_number(number).transactions:
            r = chain.receipt(tx.hash)
            assert r is not None
            total += r["gas_used"] * r["effective_gas_price"]
    return total


async def test_providers_are_paid_price_times_tokens_times_layers_and_value_is_conserved(
    tmp_path: Path,
) -> None:
    chain = EmbeddedChain(None)
    ledger = EmbeddedLedger(chain)
    contract, _ = deploy(ledger, dev_key(0))
    payer_client = ChannelClient(ledger, contract, PAYER)
    receivers = {}
    for i, (key, _layers, _price) in enumerate(PROVIDERS):
        client = ChannelClient(ledger, contract, key)
        receivers[client.address] = PaymentReceiver(
            client, VoucherStore(tmp_path / f"p{i}.sqlite"), margin=60
        )
    per_token = {ChannelClient(ledger, contract, k).address: layers * price for k, layers, price in PROVIDERS}
    # Deposits for 20 tokens: a 50-token generation needs top-ups along the way.
    sender = PaymentSender(payer_client, PAYER, deposit_for=lambda payee: per_token[payee] * 20)

    accounts = [payer_client.address, *receivers]
    start_block = chain.head().block_number + 1
    before = {a: ledger.balance(a) for a in accounts}

    for _ in range(TOKENS):
        for payee, receiver in receivers.items():
            voucher = await sender.pay(payee, per_token[payee])
            await receiver.accept(voucher)  # durable before the provider would serve the step

    for receiver in receivers.values():
        assert await receiver.settle_all() == 1

    paid = {}
    for event in payer_client.events():
        if event.name == "ChannelClosed":
            payee = payer_client.channel(event.args["channelId"]).payee
            paid[payee] = paid.get(payee, 0) + event.args["paid"]
    assert paid == {payee: per_token[payee] * TOKENS for payee in receivers}
    assert all(not c.open for c in (payer_client.channel(ch.channel_id) for ch in sender.channels.values()))

    fees = burned_fees(chain, start_block)
    after = {a: ledger.balance(a) for a in accounts}
    assert sum(after.values()) - sum(before.values()) == -fees  # conserved to the wei, fees aside
    assert sender.transactions < 3 * TOKENS / 10  # opens and top-ups only; vouchers are off-chain


async def test_the_sender_replaces_a_channel_near_expiry_and_reclaims_it_later() -> None:
    ledger = EmbeddedLedger(EmbeddedChain(None))
    contract, _ = deploy(ledger, dev_key(0))
    clock = [float(ledger.timestamp())]
    sender = PaymentSender(
        ChannelClient(ledger, contract, PAYER),
        PAYER,
        deposit_for=lambda _: 1000,
        lifetime=600,
        min_left=100,
        clock=lambda: clock[0],
    )
    payee = ChannelClient(ledger, contract, dev_key(4)).address
    first = await sender.pay(payee, 10)
    clock[0] += 550
    second = await sender.pay(payee, 10)
    assert second.channel_id != first.channel_id and second.amount == 10
    assert await sender.reclaim_expired() == 0  # not expired yet: kept for later
    ledger.increase_time(600)
    clock[0] = ledger.timestamp()
    assert await sender.reclaim_expired() == 1000  # the payee never closed it: the whole deposit comes back
    assert sender.retired == []
