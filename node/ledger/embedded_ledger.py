"""`Ledger` over an in-process `EmbeddedChain`: each transaction is simulated, signed and mined at once."""

from __future__ import annotations

from eth_account import Account
from eth_utils import to_checksum_address

from node.ledger.abc import Ledger, Log, Receipt, TransactionReverted
from node.ledger.artifact import revert_name
from node.ledger.embedded import EmbeddedChain

DEFAULT_GAS = 500_000
DEPLOY_GAS = 3_000_000


def sign_transaction(
    private_key: bytes,
    *,
    chain_id: int,
    nonce: int,
    to: str | None,
    data: bytes,
    value: int,
    gas: int,
    max_fee: int,
    priority_fee: int = 0,
) -> bytes:
    """An EIP-1559 transaction, signed, as raw bytes."""
    tx = {
        "type": 2,
        "chainId": chain_id,
        "nonce": nonce,
        "maxFeePerGas": max_fee,
        "maxPriorityFeePerGas": priority_fee,
        "gas": gas,
        "to": to or b"",
        "value": value,
        "data": data,
    }
    return bytes(Account.sign_transaction(tx, private_key).raw_transaction)


def reverted(what: str, data: bytes) -> TransactionReverted:
    name = revert_name(data)
    return TransactionReverted(f"{what} reverted: {name or data.hex() or 'no reason'}", error=name, data=data)


class EmbeddedLedger(Ledger):
    def __init__(self, chain: EmbeddedChain) -> None:
        self.chain = chain
        self.chain_id = chain.chain_id

    def block_number(self) -> int:
        return self.chain.head().block_number

    def timestamp(self) -> int:
        return self.chain.head().timestamp

    def balance(self, address: str) -> int:
        return self.chain.balance(address)

    def code(self, address: str) -> bytes:
        return self.chain.code(address)

    def call(self, to: str, data: bytes, *, sender: str | None = None, value: int = 0) -> bytes:
        result = self.chain.call(to, data, sender=sender, value=value)
        if not result.success:
            raise reverted("call", result.output)
        return result.output

    def transact(
        self, private_key: bytes, to: str | None, data: bytes = b"", *, value: int = 0, gas: int | None = None
    ) -> Receipt:
        sender = Account.from_key(private_key).address
        with self.chain._lock:  # simulate, send and mine as one step so nothing slips in between
            result = self.chain.call(to, data, sender=sender, value=value)
            if not result.success:
                raise reverted("transaction", result.output)
            raw = sign_transaction(
                private_key,
                chain_id=self.chain_id,
                nonce=self.chain.pending_nonce(sender),
                to=to,
                data=data,
                value=value,
                gas=gas or (DEPLOY_GAS if to is None else DEFAULT_GAS),
                max_fee=2 * self.chain.next_base_fee(),
            )
            tx_hash = self.chain.submit_raw(raw)
            self.chain.mine()
            return self._receipt(tx_hash)

    def _receipt(self, tx_hash: bytes) -> Receipt:
        r = self.chain.receipt(tx_hash)
        assert r is not None, "a mined transaction has a receipt"
        number = r["block"].header.block_number
        receipt = Receipt(
            tx_hash=tx_hash,
            block_number=number,
            status=r["status"],
            gas_used=r["gas_used"],
            effective_gas_price=r["effective_gas_price"],
            contract_address=to_checksum_address(r["contract_address"]) if r["contract_address"] else None,
            logs=tuple(
                Log(to_checksum_address(addr), topics, data, number, tx_hash, index)
                for index, addr, topics, data in r["logs"]
            ),
        )
        if receipt.status != 1:
            raise TransactionReverted(f"transaction {tx_hash.hex()} reverted once mined")
        return receipt

    def logs(
        self,
        address: str,
        *,
        topics: list[bytes | None] | None = None,
        from_block: int = 0,
        to_block: int | None = None,
    ) -> list[Log]:
        return [
            Log(to_checksum_address(addr), tops, data, block, tx_hash, index)
            for block, index, _, tx_hash, addr, tops, data in self.chain.logs(
                address=address, topics=topics, from_block=from_block, to_block=to_block
            )
        ]

    def increase_time(self, seconds: int) -> None:
        self.chain.increase_time(seconds)

    def close(self) -> None:
        self.chain.close()
