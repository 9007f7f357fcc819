"""A provider's per-step billing with concurrent sessions on one channel, on the real contract (py-evm)."""

from __future__ import annotations

import trio

from node.ledger.channels import ChannelClient, deploy
from node.ledger.connect import open_ledger
from node.ledger.embedded import dev_key
from node.payments import PaymentSettings, StepBilling, start_payments
from protocol.identity import Identity
from protocol.voucher import sign_voucher


async def test_vouchers_accepted_at_once_by_two_sessions_are_counted_once(tmp_path) -> None:
    """Two sessions of one client share a channel. Their vouchers (and a resent one) arriving together
    must add up to the highest voucher, as the chain will pay: counting each against the amount read
    before the other's acceptance counted the same wei twice (a simulated run showed earned > paid). And a
    voucher found stale while the newer one is still being counted must not see the step as unpaid."""
    home = tmp_path / "chain"
    ledger = await trio.to_thread.run_sync(lambda: open_ledger(home))
    contract, _ = await trio.to_thread.run_sync(deploy, ledger, dev_key(0))
    ledger.close()
    pay = await start_payments(
        Identity.from_int(41), PaymentSettings(rpc_url="", contract=contract, state_dir=home)
    )
    try:
        payer = ChannelClient(pay.client.ledger, contract, dev_key(1))
        expires = pay.client.ledger.timestamp() + 24 * 3600
        channel, _ = await trio.to_thread.run_sync(payer.open, pay.client.address, 10**6, expires)

        def voucher(paid: int) -> bytes:
            return sign_voucher(dev_key(1), pay.chain_id, contract, channel, paid).to_bytes()

        # The worst order, made to happen: the newer voucher is stored, but its session resumes late; the
        # older voucher (found stale) and the newer one resent are answered meanwhile.
        accept, stored = pay.receiver.accept, {2000: trio.Event(), 3500: trio.Event()}

        async def accept_in_worst_order(v):
            newer = 2000 if v.amount <= 2000 else 3500
            if v.amount != newer or stored[newer].is_set():
                with trio.move_on_after(0.5):  # a lock held by the waiting session would block the newer
                    await stored[newer].wait()
                return await accept(v)
            state = await accept(v)
            stored[newer].set()
            await trio.sleep(0.1)
            return state

        pay.receiver.accept = accept_in_worst_order  # type: ignore[method-assign]
        sessions = [StepBilling(pay, price_per_row=700, credit_steps=1) for _ in range(3)]
        async with trio.open_nursery() as nursery:  # first sight of the channel, all at once
            nursery.start_soon(sessions[0].charge, 1, voucher(1000))
            nursery.start_soon(sessions[1].charge, 1, voucher(2000))
            nursery.start_soon(sessions[2].charge, 1, voucher(2000))
        assert pay.earned_wei == 2000 and pay.covered[channel] == 2000
        async with trio.open_nursery() as nursery:  # and again once the channel is known
            nursery.start_soon(sessions[0].charge, 1, voucher(3000))
            nursery.start_soon(sessions[1].charge, 1, voucher(3500))
            nursery.start_soon(sessions[2].charge, 1, voucher(3500))
        assert pay.earned_wei == 3500 and pay.covered[channel] == 3500
        assert sum(pay.charged.values()) == 6 * 700
    finally:
        pay.store.close()
