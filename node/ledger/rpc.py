"""`Ledger` over Ethereum JSON-RPC with web3.py: any EVM node (anvil, a public chain, `steppe chain serve`)."""

from __future__ import annotations

import threading
from typing import Any

from eth_account import Account
from eth_utils import to_checksum_address
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError, TimeExhausted, Web3Exception

from node.ledger.abc import Ledger, LedgerError, Log, Receipt
from node.ledger.embedded_ledger import DEFAULT_GAS, DEPLOY_GAS, reverted, sign_transaction


def _revert_data(exc: Exception) -> bytes:
    data = getattr(exc, "data", None)
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            return b""
    return bytes(data) if isinstance(data, bytes | bytearray) else b""


class RpcLedger(Ledger):
    """Raises `LedgerError` when the node is unreachable or refuses a transaction."""

    def __init__(self, url: str, *, timeout: float = 30.0, receipt_timeout: float = 60.0) -> None:
        self.w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}))
        self._receipt_timeout = receipt_timeout
        self._lock = threading.Lock()  # one nonce sequence per ledger object
        try:
            self.chain_id = self.w3.eth.chain_id
        except Exception as exc:  # requests/aiohttp/web3 errors all mean the same thing here
            raise LedgerError(f"cannot reach the JSON-RPC node at {url}: {exc}") from exc

    def block_number(self) -> int:
        return self.w3.eth.block_number

    def timestamp(self) -> int:
        return self.w3.eth.get_block("latest")["timestamp"]

    def balance(self, address: str) -> int:
        return self.w3.eth.get_balance(to_checksum_address(address))

    def code(self, address: str) -> bytes:
        return bytes(self.w3.eth.get_code(to_checksum_address(address)))

    def call(self, to: str, data: bytes, *, sender: str | None = None, value: int = 0) -> bytes:
        tx: dict[str, Any] = {"to": to_checksum_address(to), "data": data, "value": value}
        if sender:
            tx["from"] = to_checksum_address(sender)
        try:
            return bytes(self.w3.eth.call(tx))  # type: ignore[arg-type]
        except (ContractCustomError, ContractLogicError) as exc:
            raise reverted("call", _revert_data(exc)) from exc

    def _fees(self) -> tuple[int, int]:
        base = self.w3.eth.get_block("latest").get("baseFeePerGas", 0)
        try:
            priority = self.w3.eth.max_priority_fee
        except Web3Exception:
            priority = 0
        return 2 * base + priority, priority

    def transact(
        self, private_key: bytes, to: str | None, data: bytes = b"", *, value: int = 0, gas: int | None = None
    ) -> Receipt:
        sender = Account.from_key(private_key).address
        if to is not None:
            self.call(to, data, sender=sender, value=value)  # raises TransactionReverted, nothing sent
        with self._lock:
            max_fee, priority = self._fees()
            raw = sign_transaction(
                private_key,
                chain_id=self.chain_id,
                nonce=self.w3.eth.get_transaction_count(sender, "pending"),
                to=to,
                data=data,
                value=value,
                gas=gas or (DEPLOY_GAS if to is None else DEFAULT_GAS),
                max_fee=max_fee,
                priority_fee=priority,
            )
            try:
                tx_hash = self.w3.eth.send_raw_transaction(raw)
            except Web3Exception as exc:
                raise LedgerError(f"the node refused the transaction: {exc}") from exc
        try:
            r = self.w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=self._receipt_timeout, poll_latency=0.05
            )
        except TimeExhausted as exc:
            raise LedgerError(f"transaction {tx_hash.hex()} not mined in {self._receipt_timeout} s") from exc
        receipt = Receipt(
            tx_hash=bytes(tx_hash),
            block_number=r["blockNumber"],
            status=r["status"],
            gas_used=r["gasUsed"],
            effective_gas_price=r.get("effectiveGasPrice", 0),
            contract_address=r.get("contractAddress"),
            logs=tuple(self._log(entry) for entry in r["logs"]),
        )
        if receipt.status != 1:
            raise reverted(f"transaction {tx_hash.hex()}", b"")
        return receipt

    @staticmethod
    def _log(entry: Any) -> Log:
        return Log(
            address=to_checksum_address(entry["address"]),
            topics=tuple(bytes(t) for t in entry["topics"]),
            data=bytes(entry["data"]),
            block_number=entry["blockNumber"],
            tx_hash=bytes(entry["transactionHash"]),
            log_index=entry["logIndex"],
        )

    def logs(
        self,
        address: str,
        *,
        topics: list[bytes | None] | None = None,
        from_block: int = 0,
        to_block: int | None = None,
    ) -> list[Log]:
        params: dict[str, Any] = {
            "address": to_checksum_address(address),
            "fromBlock": from_block,
            "toBlock": "latest" if to_block is None else to_block,
        }
        if topics:
            params["topics"] = [None if t is None else "0x" + t.hex() for t in topics]
        return [self._log(entry) for entry in self.w3.eth.get_logs(params)]  # type: ignore[arg-type]

    def increase_time(self, seconds: int) -> None:
        response = self.w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
        if "error" in response:
            raise LedgerError(f"this node cannot move time: {response['error']}")
        self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
