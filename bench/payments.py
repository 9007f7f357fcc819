"""Payments benchmark: voucher sign/verify rates, the provider's durable acceptance, gas per contract
operation and embedded-chain throughput. Each rate is printed with a reference measured in the same run.

    .venv/bin/python bench/payments.py [--seconds 1.0] [--token-ms 60] [--anvil]

References: eth-account's EIP-712 signing and recovery (the usual Python way to do the same thing) for
vouchers; one transaction per block for the chain's batched mining. ``--token-ms`` is the per-token
latency the payment cost is compared with (the tinygrad CPU decode of a 100M model measured ~60 ms/token).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from eth_account import Account
from eth_account.messages import encode_typed_data

from node.ledger.abc import Ledger
from node.ledger.channels import ChannelClient, deploy
from node.ledger.embedded import EmbeddedChain, dev_key
from node.ledger.embedded_ledger import EmbeddedLedger, sign_transaction
from node.ledger.store import VoucherStore
from node.logging import configure_logging
from protocol.voucher import ChannelState, accept_voucher, sign_voucher, typed_data

CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
KEY = dev_key(1)
PAYER = Account.from_key(KEY).address


def rate(fn: Callable[[int], object], seconds: float) -> float:
    """Calls per second of ``fn(i)`` over about ``seconds``."""
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            fn(n)
            n += 1
    return n / elapsed


def typed(amount: int) -> dict:
    return typed_data(1337, CONTRACT, 1, amount)


def vouchers(seconds: float, token_ms: float) -> None:
    print("== vouchers (per second, higher is better)")
    ours_sign = rate(lambda i: sign_voucher(KEY, 1337, CONTRACT, 1, i + 1), seconds)
    ref_sign = rate(
        lambda i: Account.sign_message(encode_typed_data(full_message=typed(i + 1)), KEY), seconds
    )
    print(
        f"sign      steppe {ours_sign:9.0f}/s   eth-account EIP-712 {ref_sign:9.0f}/s   ratio {ours_sign / ref_sign:5.1f}x"
    )

    signed = [sign_voucher(KEY, 1337, CONTRACT, 1, i + 1) for i in range(1000)]
    ref_signed = [
        (encode_typed_data(full_message=typed(i + 1)), bytes(sign.signature))
        for i, sign in enumerate(
            Account.sign_message(encode_typed_data(full_message=typed(i + 1)), KEY) for i in range(1000)
        )
    ]
    ours_verify = rate(lambda i: signed[i % 1000].signer(), seconds)
    ref_verify = rate(
        lambda i: Account.recover_message(ref_signed[i % 1000][0], signature=ref_signed[i % 1000][1]), seconds
    )
    print(
        f"verify    steppe {ours_verify:9.0f}/s   eth-account EIP-712 {ref_verify:9.0f}/s   ratio {ours_verify / ref_verify:5.1f}x"
    )

    state = ChannelState(1337, CONTRACT, 1, PAYER, PAYER, 10**30, 2**40)
    accept = rate(lambda i: accept_voucher(state, signed[i % 1000], now=0), seconds)
    stored = {}
    for fsync in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            store = VoucherStore(Path(tmp) / "v.sqlite", fsync=fsync)
            store.track(state)
            amounts = iter(range(1, 10**9))
            stored[fsync] = rate(
                lambda i: store.accept(sign_voucher(KEY, 1337, CONTRACT, 1, next(amounts)), now=0), seconds
            )
            store.close()
    print(f"accept    in memory (verify + rule) {accept:7.0f}/s")
    print(
        f"          stored, sign+verify+sqlite commit: fsync {stored[True]:6.0f}/s   no fsync (SIGKILL-safe) {stored[False]:6.0f}/s"
    )
    print(
        f"payment cost per token (one voucher per step: client signs, provider verifies and stores), vs a {token_ms:g} ms token (goal < 1%):"
    )
    for label, per_s in (
        ("fsync per voucher", stored[True]),
        ("no fsync", stored[False]),
        ("sign+verify only", 1 / (1 / ours_sign + 1 / accept)),
    ):
        us = 1e6 / per_s
        print(f"          {label:18} {us:7.0f} us = {us / (token_ms * 1000):6.2%}")


def gas_table(ledger: Ledger) -> dict[str, int]:
    contract, deployed = deploy(ledger, dev_key(0))
    payer = ChannelClient(ledger, contract, dev_key(1))
    payee = ChannelClient(ledger, contract, dev_key(2))
    now = ledger.timestamp()
    gas = {"deploy": deployed.gas_used}
    cid, r = payer.open(payee.address, 10**18, now + 3600)
    gas["open (first)"] = r.gas_used
    cid2, r = payer.open(payee.address, 10**18, now + 3600)
    gas["open (later)"] = r.gas_used
    gas["topUp"] = payer.top_up(cid, 10**17, now + 7200).gas_used
    gas["close (partial)"] = payee.close(
        sign_voucher(dev_key(1), ledger.chain_id, contract, cid, 10**17)
    ).gas_used
    gas["close (full)"] = payee.close(
        sign_voucher(dev_key(1), ledger.chain_id, contract, cid2, 10**18)
    ).gas_used
    cid3, _ = payer.open(payee.address, 10**18, ledger.timestamp() + 60)
    ledger.increase_time(61)
    gas["reclaim"] = payer.reclaim(cid3).gas_used
    return gas


def chain_throughput(n: int) -> None:
    print("== embedded chain throughput (sqlite WAL on disk)")
    with tempfile.TemporaryDirectory() as tmp:
        chain = EmbeddedChain(Path(tmp) / "c.sqlite")
        ledger = EmbeddedLedger(chain)
        contract, _ = deploy(ledger, dev_key(0))
        client = ChannelClient(ledger, contract, dev_key(1))
        payee = Account.from_key(dev_key(2)).address
        data = client.calldata("open", payee, 2**40)

        def submit(count: int) -> None:
            nonce = chain.pending_nonce(client.address)
            for i in range(count):
                chain.submit_raw(
                    sign_transaction(
                        dev_key(1),
                        chain_id=chain.chain_id,
                        nonce=nonce + i,
                        to=contract,
                        data=data,
                        value=1,
                        gas=200_000,
                        max_fee=2 * chain.next_base_fee(),
                    )
                )

        start = time.perf_counter()
        for _ in range(n // 4):
            submit(1)
            chain.mine()
        single = (n // 4) / (time.perf_counter() - start)
        start = time.perf_counter()
        submit(n)
        chain.mine()
        batched = n / (time.perf_counter() - start)
        chain.close()
    print(
        f"channel opens: {batched:6.0f} tx/s batched into one block vs {single:6.0f} tx/s one per block "
        f"(ratio {batched / single:4.1f}x; signing included in both)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per rate measurement")
    parser.add_argument("--token-ms", type=float, default=60.0, help="per-token latency to compare with")
    parser.add_argument(
        "--anvil", default="", help="JSON-RPC URL of an anvil node to repeat the gas table on"
    )
    parser.add_argument("--tokens-per-channel", type=int, default=10_000)
    parser.add_argument("--hops", type=int, default=3)
    args = parser.parse_args()
    configure_logging("console", "warning")

    vouchers(args.seconds, args.token_ms)
    print("== gas per contract operation")
    anvil = None
    if args.anvil:
        from node.ledger.rpc import RpcLedger

        anvil = RpcLedger(args.anvil)
    # Same chain id as the reference node: the vouchers, hence close's calldata, are then byte-identical.
    embedded_chain = EmbeddedChain(None, chain_id=anvil.chain_id if anvil else 1337)
    tables = {"embedded py-evm": gas_table(EmbeddedLedger(embedded_chain))}
    if anvil:
        for i in range(3):
            anvil.w3.provider.make_request(
                "anvil_setBalance", [Account.from_key(dev_key(i)).address, hex(10**24)]
            )
        tables["anvil"] = gas_table(anvil)
    print(f"{'operation':18}" + "".join(f"{name:>18}" for name in tables))
    for op in tables["embedded py-evm"]:
        print(f"{op:18}" + "".join(f"{t[op]:>18,}" for t in tables.values()))
    chain_throughput(200)
    per_1000 = args.hops * 2 * 1000 / args.tokens_per_channel
    print(
        f"== chain transactions per 1,000 paid tokens: {per_1000:.2f} "
        f"({args.hops} hops, one open + one close per hop per {args.tokens_per_channel:,} tokens; vouchers are off-chain)"
    )


if __name__ == "__main__":
    main()
