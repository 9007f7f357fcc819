"""The chain interface the payment code uses, with two implementations: `EmbeddedLedger` (py-evm in
process) and `RpcLedger` (web3.py over JSON-RPC to any EVM node, including `steppe chain serve`).

Calls block (disk, HTTP, EVM execution): from trio code run them with `trio.to_thread.run_sync`, or use
`AsyncLedger`. An implementation is safe to call from several threads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from protocol.errors import SteppeError


class LedgerError(SteppeError):
    """A chain operation failed (node unreachable, transaction rejected). The message says which."""


class TransactionReverted(LedgerError):
    """The contract refused a call or transaction. ``error`` is its custom error name when known."""

    def __init__(self, message: str, *, error: str | None = None, data: bytes = b"") -> None:
        super().__init__(message)
        self.error = error
        self.data = data


@dataclass(frozen=True, slots=True)
class Log:
    address: str  # checksummed
    topics: tuple[bytes, ...]
    data: bytes
    block_number: int
    tx_hash: bytes
    log_index: int


@dataclass(frozen=True, slots=True)
class Receipt:
    tx_hash: bytes
    block_number: int
    status: int  # 1 success, 0 reverted
    gas_used: int
    effective_gas_price: int
    contract_address: str | None
    logs: tuple[Log, ...]

    @property
    def fee(self) -> int:
        return self.gas_used * self.effective_gas_price


class Ledger(ABC):
    """A chain we can read and send transactions to, signing with our own private keys."""

    chain_id: int

    @abstractmethod
    def block_number(self) -> int: ...

    @abstractmethod
    def timestamp(self) -> int:
        """The latest block's timestamp: the chain's notion of now for expiry checks."""

    @abstractmethod
    def balance(self, address: str) -> int: ...

    @abstractmethod
    def code(self, address: str) -> bytes: ...

    @abstractmethod
    def call(self, to: str, data: bytes, *, sender: str | None = None, value: int = 0) -> bytes:
        """Execute without a transaction. Raises `TransactionReverted` with the revert data."""

    @abstractmethod
    def transact(
        self, private_key: bytes, to: str | None, data: bytes = b"", *, value: int = 0, gas: int | None = None
    ) -> Receipt:
        """Sign, send and wait until mined. ``to=None`` deploys ``data``.

        Simulates first: a call the chain would revert raises `TransactionReverted` and nothing is sent.
        A transaction that still reverts once mined raises `TransactionReverted` too (its fee is spent).
        """

    @abstractmethod
    def logs(
        self,
        address: str,
        *,
        topics: list[bytes | None] | None = None,
        from_block: int = 0,
        to_block: int | None = None,
    ) -> list[Log]: ...

    @abstractmethod
    def increase_time(self, seconds: int) -> None:
        """Development chains only: move the clock forward and mine a block at the new time."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files or connections."""
