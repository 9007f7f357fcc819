"""The embedded chain survives restarts and SIGKILL: a reopened chain is consistent and carries on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from eth_account import Account

from node.ledger.channels import ChannelClient, deploy
from node.ledger.embedded import DEV_BALANCE, EmbeddedChain, dev_key
from node.ledger.embedded_ledger import EmbeddedLedger

ROOT = Path(__file__).resolve().parents[2]

# Deploys the contract, then mines blocks of 20 channel opens as fast as it can, printing each mined
# block number only after `mine` returned (that block is durable from then on).
WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from eth_account import Account
    from node.ledger.channels import ChannelClient, deploy
    from node.ledger.embedded import EmbeddedChain, dev_key
    from node.ledger.embedded_ledger import EmbeddedLedger, sign_transaction

    chain = EmbeddedChain(Path(sys.argv[1]))
    ledger = EmbeddedLedger(chain)
    contract, _ = deploy(ledger, dev_key(0))
    client = ChannelClient(ledger, contract, dev_key(1))
    payee = Account.from_key(dev_key(2)).address
    print("contract", contract, flush=True)
    nonce = chain.nonce(client.address)
    while True:
        for _ in range(20):
            data = client.calldata("open", payee, 4_000_000_000)
            raw = sign_transaction(dev_key(1), chain_id=chain.chain_id, nonce=nonce, to=contract, data=data,
                                   value=1, gas=200_000, max_fee=2 * chain.next_base_fee())
            chain.submit_raw(raw)
            nonce += 1
        chain.mine()
        print("mined", chain.head().block_number, flush=True)
    """
)


def test_a_chain_reopens_with_its_state_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "chain.sqlite"
    ledger = EmbeddedLedger(EmbeddedChain(path))
    contract, _ = deploy(ledger, dev_key(0))
    channel_id, _ = ChannelClient(ledger, contract, dev_key(1)).open(
        Account.from_key(dev_key(2)).address, 5, ledger.timestamp() + 60
    )
    ledger.increase_time(3600)
    head, stamp = ledger.block_number(), ledger.timestamp()
    ledger.close()

    reopened = EmbeddedLedger(EmbeddedChain(path))
    assert (reopened.block_number(), reopened.timestamp()) == (head, stamp)
    client = ChannelClient(reopened, contract, dev_key(1))
    assert client.channel(channel_id).deposit == 5
    assert reopened.timestamp() >= client.channel(channel_id).expires_at  # the time shift was kept
    client.reclaim(channel_id)
    assert [e.name for e in client.events()] == ["ChannelOpened", "ChannelReclaimed"]


def test_a_chain_killed_while_mining_reopens_consistent(tmp_path: Path) -> None:
    path = tmp_path / "chain.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    contract, last_mined = None, 0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if len(parts) != 2 or parts[0] not in ("contract", "mined"):
                continue  # log lines
            word, value = parts
            if word == "contract":
                contract = value
            else:
                last_mined = int(value)
                if last_mined >= 8:
                    break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.stdout is not None
    for line in proc.stdout.read().splitlines():  # printed before the kill, not read yet
        if line.startswith("mined "):
            last_mined = int(line.split()[1])
    assert contract is not None and last_mined >= 8

    ledger = EmbeddedLedger(EmbeddedChain(path))
    client = ChannelClient(ledger, contract, dev_key(1))
    # Nothing acknowledged was lost; at most the block being mined at the kill made it too.
    assert ledger.block_number() in (last_mined, last_mined + 1)
    opened = client.next_channel_id() - 1
    assert opened == 20 * (ledger.block_number() - 1)  # block 1 deployed, every later one holds 20 opens
    # Blocks are all-or-nothing: state, nonces, balances and the event index agree with each other.
    assert ledger.chain.nonce(client.address) == opened
    assert ledger.balance(client.address) <= DEV_BALANCE - opened
    events = client.events()
    assert [e.args["channelId"] for e in events] == list(range(1, opened + 1))
    # And the chain carries on from there.
    channel_id, _ = client.open(Account.from_key(dev_key(2)).address, 1, ledger.timestamp() + 60)
    assert channel_id == opened + 1


def test_a_batch_with_a_transaction_that_became_invalid_still_mines_the_valid_ones() -> None:
    from node.ledger.embedded_ledger import sign_transaction

    chain = EmbeddedChain(None)
    ledger = EmbeddedLedger(chain)
    poor = Account.create()
    fee = 2 * chain.next_base_fee()
    ledger.transact(dev_key(0), poor.address, value=21_000 * fee * 2 + 10, gas=21_000)
    fee = 2 * chain.next_base_fee()
    spend_all = [
        sign_transaction(
            poor.key,
            chain_id=chain.chain_id,
            nonce=n,
            to=Account.from_key(dev_key(3)).address,
            data=b"",
            value=10 + 21_000 * fee,
            gas=21_000,
            max_fee=fee,
        )
        for n in range(2)
    ]
    hashes = [chain.submit_raw(raw) for raw in spend_all]  # each fits the balance alone, not both together
    mined = chain.mine()
    assert mined == hashes[:1]
    assert chain.receipt(hashes[0]) is not None and chain.receipt(hashes[1]) is None
    assert chain.nonce(poor.address) == 1
