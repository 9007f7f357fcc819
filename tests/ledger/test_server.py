"""`steppe chain serve` speaks standard Ethereum JSON-RPC: web3.py drives it like any node."""

from __future__ import annotations

import httpx
from eth_account import Account
from web3 import Web3

from node.ledger.artifact import load_artifact
from node.ledger.embedded import dev_key
from node.ledger.embedded_ledger import sign_transaction


def rpc(url: str, method: str, *params: object) -> dict:
    return httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).json()


def test_web3_deploys_and_transacts_with_the_unlocked_dev_accounts(served_url: str) -> None:
    w3 = Web3(Web3.HTTPProvider(served_url))
    payer, payee = w3.eth.accounts[5], w3.eth.accounts[6]
    artifact = load_artifact()
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    deployed = w3.eth.wait_for_transaction_receipt(
        factory.constructor().transact({"from": payer}), poll_latency=0.05
    )
    contract = w3.eth.contract(address=deployed["contractAddress"], abi=artifact.abi)
    assert w3.eth.get_code(contract.address) == artifact.deployed_bytecode

    expires = w3.eth.get_block("latest")["timestamp"] + 3600
    before = w3.eth.get_balance(payer)
    tx = contract.functions.open(payee, expires).transact({"from": payer, "value": 12345})
    receipt = w3.eth.wait_for_transaction_receipt(tx, poll_latency=0.05)
    assert receipt["status"] == 1
    fee = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert w3.eth.get_balance(payer) == before - 12345 - fee
    (event,) = contract.events.ChannelOpened().process_receipt(receipt)
    channel_id = event["args"]["channelId"]
    logs = contract.events.ChannelOpened().get_logs(from_block=0)
    assert [e["args"]["channelId"] for e in logs] == [channel_id]
    assert contract.functions.channels(channel_id).call()[4] == 12345
    assert w3.eth.get_transaction(tx)["from"] == payer
    # Historical state: the balance before the open is still readable at the previous block.
    assert w3.eth.get_balance(payer, receipt["blockNumber"] - 1) == before


def test_a_batch_of_raw_transactions_is_mined_into_one_block(served_url: str) -> None:
    key = dev_key(7)
    sender = Account.from_key(key).address
    nonce = int(rpc(served_url, "eth_getTransactionCount", sender, "pending")["result"], 16)
    fee = int(rpc(served_url, "eth_gasPrice")["result"], 16)
    batch = [
        {
            "jsonrpc": "2.0",
            "id": i,
            "method": "eth_sendRawTransaction",
            "params": [
                "0x"
                + sign_transaction(
                    key, chain_id=1337, nonce=nonce + i, to=sender, data=b"", value=1, gas=21_000, max_fee=fee
                ).hex()
            ],
        }
        for i in range(20)
    ]
    hashes = [r["result"] for r in httpx.post(served_url, json=batch).json()]
    w3 = Web3(Web3.HTTPProvider(served_url))
    blocks = {w3.eth.wait_for_transaction_receipt(h, poll_latency=0.05)["blockNumber"] for h in hashes}
    assert len(blocks) == 1


def test_malformed_and_unsupported_calls_get_json_rpc_errors(served_url: str) -> None:
    assert httpx.post(served_url, content=b"{not json").json()["error"]["code"] == -32700
    assert httpx.post(served_url, json={"id": 1, "method": "eth_chainId"}).json()["error"]["code"] == -32600
    assert rpc(served_url, "eth_mining_rigs")["error"]["code"] == -32601
    assert rpc(served_url, "eth_getBalance", "0x1234")["error"]["code"] == -32602
    assert rpc(served_url, "eth_getBalance")["error"]["code"] == -32602
    assert rpc(served_url, "eth_sendRawTransaction", "0xdeadbeef")["error"]["code"] == -32000
    unknown = Account.create().address
    sent = rpc(served_url, "eth_sendTransaction", {"from": unknown, "to": unknown, "value": "0x1"})
    assert sent["error"]["code"] == -32000
    # A revert carries the contract's revert data, like geth and anvil.
    w3 = Web3(Web3.HTTPProvider(served_url))
    artifact = load_artifact()
    deployed = w3.eth.wait_for_transaction_receipt(
        w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        .constructor()
        .transact({"from": w3.eth.accounts[8]}),
        poll_latency=0.05,
    )
    reclaim = artifact.selector("reclaim") + (5).to_bytes(32, "big")
    reverted = rpc(
        served_url, "eth_call", {"to": deployed["contractAddress"], "data": "0x" + reclaim.hex()}, "latest"
    )
    assert reverted["error"]["code"] == 3
    assert artifact.errors[bytes.fromhex(reverted["error"]["data"][2:])] == "UnknownChannel"
    assert httpx.get(served_url).status_code == 405


def test_several_clients_share_one_served_chain(served_url: str) -> None:
    """Like several node processes on one devnet: concurrent payers each get their channels, ids distinct."""
    import threading

    from node.ledger.channels import ChannelClient, deploy
    from node.ledger.rpc import RpcLedger

    contract, _ = deploy(RpcLedger(served_url), dev_key(0))
    payee = Account.from_key(dev_key(9)).address
    results: dict[int, list[tuple[int, int]]] = {}

    def payer(index: int) -> None:
        ledger = RpcLedger(served_url)  # each client its own connection and nonce sequence
        client = ChannelClient(ledger, contract, dev_key(index))
        results[index] = []
        for _ in range(3):
            channel_id, receipt = client.open(payee, 1000 + index, ledger.timestamp() + 3600)
            results[index].append((channel_id, receipt.block_number))

    threads = [threading.Thread(target=payer, args=(i,)) for i in (1, 2, 3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    ids = [cid for opened in results.values() for cid, _ in opened]
    assert sorted(ids) == list(range(1, 13))
    reader = ChannelClient(RpcLedger(served_url), contract, dev_key(0))
    assert {reader.channel(cid).payer for cid in ids} == {
        Account.from_key(dev_key(i)).address for i in (1, 2, 3, 4)
    }
