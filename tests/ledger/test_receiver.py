"""The provider persists each voucher before acknowledging it, settles before expiry and after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from node.ledger.aio import AsyncLedger
from node.ledger.channels import ChannelClient, deploy
from node.ledger.embedded import EmbeddedChain, dev_key
from node.ledger.embedded_ledger import EmbeddedLedger
from node.ledger.receiver import PaymentReceiver
from node.ledger.store import VoucherStore
from protocol.voucher import (
    ChannelNotOpen,
    StaleVoucher,
    VoucherOverDeposit,
    WrongChannelDomain,
    sign_voucher,
)

ROOT = Path(__file__).resolve().parents[2]
ETHER = 10**18
PAYER, PAYEE = dev_key(1), dev_key(2)


def setup_chain(path: Path | None = None) -> tuple[EmbeddedLedger, str, int]:
    ledger = EmbeddedLedger(EmbeddedChain(path))
    contract, _ = deploy(ledger, dev_key(0))
    channel_id, _ = ChannelClient(ledger, contract, PAYER).open(
        ChannelClient(ledger, contract, PAYEE).address, ETHER, ledger.timestamp() + 3600
    )
    return ledger, contract, channel_id


async def test_the_receiver_accepts_persists_and_settles_what_is_due(tmp_path: Path) -> None:
    ledger, contract, channel_id = setup_chain()
    payee = ChannelClient(ledger, contract, PAYEE)
    clock = [float(ledger.timestamp())]
    receiver = PaymentReceiver(
        payee,
        VoucherStore(tmp_path / "vouchers.sqlite"),
        margin=600,
        check_every=0.01,
        clock=lambda: clock[0],
    )
    for amount in (10, 20, 30):
        state = await receiver.accept(sign_voucher(PAYER, ledger.chain_id, contract, channel_id, amount))
    assert state.paid == 30
    with pytest.raises(StaleVoucher):
        await receiver.accept(sign_voucher(PAYER, ledger.chain_id, contract, channel_id, 30))
    with pytest.raises(VoucherOverDeposit):
        await receiver.accept(sign_voucher(PAYER, ledger.chain_id, contract, channel_id, ETHER + 1))
    with pytest.raises(ChannelNotOpen):
        await receiver.accept(sign_voucher(PAYER, ledger.chain_id, contract, 99, 1))
    with pytest.raises(WrongChannelDomain):
        await receiver.accept(sign_voucher(PAYER, ledger.chain_id + 1, contract, channel_id, 40))

    payer_before = ledger.balance(ChannelClient(ledger, contract, PAYER).address)
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.run)
        await trio.sleep(0.05)
        assert payee.channel(channel_id).open  # not due yet
        clock[0] += 3600 - 600  # inside the safety margin: the watcher closes it
        with trio.fail_after(10):
            while payee.channel(channel_id).open:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert ledger.balance(ChannelClient(ledger, contract, PAYER).address) == payer_before + ETHER - 30
    closed = [e for e in payee.events() if e.name == "ChannelClosed"]
    assert closed[0].args["paid"] == 30
    assert receiver.store.open_channels() == []


async def test_the_async_facade_runs_ledger_calls_off_the_event_loop() -> None:
    ledger, contract, channel_id = setup_chain()
    facade = AsyncLedger(ledger)
    before = await facade.block_number()
    await facade.increase_time(10)
    assert await facade.block_number() == before + 1
    assert await facade.balance(ChannelClient(ledger, contract, PAYER).address) > 0


# Accepts ever-higher vouchers and prints "ack N" only after `accept` returned (the voucher is on disk).
PROVIDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from node.ledger.store import VoucherStore
    from protocol.voucher import ChannelState, sign_voucher
    from node.ledger.embedded import dev_key
    chain_id, contract, channel_id, payer, payee, expires = int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6], int(sys.argv[7])
    store = VoucherStore(Path(sys.argv[1]))
    store.track(ChannelState(chain_id, contract, channel_id, payer, payee, 10**18, expires))
    amount = 0
    while True:
        amount += 7
        store.accept(sign_voucher(dev_key(1), chain_id, contract, channel_id, amount), now=int(time.time()))
        print("ack", amount, flush=True)
    """
)


def test_a_provider_killed_mid_stream_settles_exactly_the_last_voucher_it_acknowledged(
    tmp_path: Path,
) -> None:
    ledger, contract, channel_id = setup_chain()
    payer, payee = ChannelClient(ledger, contract, PAYER), ChannelClient(ledger, contract, PAYEE)
    path = tmp_path / "vouchers.sqlite"
    c = payee.channel(channel_id)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PROVIDER,
            str(path),
            str(ledger.chain_id),
            contract,
            str(channel_id),
            c.payer,
            c.payee,
            str(c.expires_at),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    acks: list[int] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.startswith("ack "):
                acks.append(int(line.split()[1]))
                if acks[-1] >= 7 * 40:
                    break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # Whatever it printed before dying is still in the pipe: the last of it is its last acknowledgement.
    acks += [int(line.split()[1]) for line in proc.stdout.read().splitlines() if line.startswith("ack ")]
    last_ack = acks[-1]

    store = VoucherStore(path)
    (state,) = store.open_channels()
    # Never less than acknowledged; at most the one voucher committed between its last ack and the kill.
    assert state.paid in (last_ack, last_ack + 7)
    before = ledger.balance(payer.address)
    receipt = payee.close(state.best)
    assert payee.decode_logs(receipt.logs)[0].args["paid"] == state.paid
    assert ledger.balance(payer.address) == before + ETHER - state.paid
