"""An EVM chain in process: py-evm's Chain API (Prague) over a sqlite WAL file, with funded dev accounts.

Transactions wait in a pending list and are mined together by `EmbeddedChain.mine` (one block per batch:
py-evm applies transactions one at a time at 10-20 tx/s, a batch at hundreds). A block, its state and its
log index entries are committed before `mine` returns, so a reopened chain (after a restart or SIGKILL)
has every mined block and nothing half-written; pending transactions are not persisted.

Thread-safe: every public method takes the chain's lock. Calls block; from trio use `trio.to_thread`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rlp
from eth._utils.address import generate_contract_address
from eth.abc import SignedTransactionAPI
from eth.chains.base import MiningChain
from eth.vm.forks.prague import PragueVM
from eth.vm.spoof import SpoofTransaction
from eth_hash.auto import keccak
from eth_utils import ValidationError, to_canonical_address, to_checksum_address

from node.ledger.abc import LedgerError
from node.ledger.sqlitedb import SqliteAtomicDB, connect
from node.logging import get_logger
from protocol.errors import ConfigError

DEFAULT_CHAIN_ID = 1337
GAS_LIMIT = 30_000_000
GENESIS_BASE_FEE = 1_000_000_000
DEV_BALANCE = 10**24  # a million ether each
DEV_ACCOUNTS = 10
CHAIN_FILE = "chain.sqlite"


def log():  # looked up at each use: a logger bound at import would miss configure_logging
    return get_logger("ledger.embedded")


class InvalidTransaction(LedgerError):
    """A submitted transaction cannot be included (bad encoding, chain id, nonce, fee or balance)."""


def dev_key(index: int) -> bytes:
    """The private key of dev account ``index`` (deterministic, public: for development chains only)."""
    return keccak(b"steppe devnet account " + str(index).encode())


@dataclass(frozen=True, slots=True)
class CallResult:
    success: bool
    output: bytes  # return data, or revert data when not successful
    gas_used: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS logs (
    block INTEGER NOT NULL, log_index INTEGER NOT NULL, tx_index INTEGER NOT NULL, tx_hash BLOB NOT NULL,
    address BLOB NOT NULL, topic0 BLOB, topic1 BLOB, topic2 BLOB, topic3 BLOB, data BLOB NOT NULL,
    PRIMARY KEY (block, log_index)
);
CREATE INDEX IF NOT EXISTS logs_address ON logs (address, block);
"""


class EmbeddedChain:
    """A development chain. ``path=None`` keeps it in memory. Raises `ConfigError` on a chain-id mismatch."""

    def __init__(
        self, path: Path | None = None, *, chain_id: int = DEFAULT_CHAIN_ID, dev_accounts: int = DEV_ACCOUNTS
    ) -> None:
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection = connect(path) if path else connect(Path(":memory:"))
        self._conn.executescript(_SCHEMA)
        self.dev_keys = [dev_key(i) for i in range(dev_accounts)]
        chain_class = MiningChain.configure(
            __name__="SteppeDevChain", vm_configuration=((0, PragueVM),), chain_id=chain_id
        )
        db = SqliteAtomicDB(self._conn)
        stored = self._meta("chain_id")
        if stored is None:
            from eth_account import Account

            genesis_state = {
                to_canonical_address(Account.from_key(k).address): {
                    "balance": DEV_BALANCE,
                    "nonce": 0,
                    "code": b"",
                    "storage": {},
                }
                for k in self.dev_keys
            }
            genesis = {
                "difficulty": 0,
                "gas_limit": GAS_LIMIT,
                "timestamp": int(time.time()),
                "coinbase": b"\x00" * 20,
                "base_fee_per_gas": GENESIS_BASE_FEE,
            }
            self._chain = chain_class.from_genesis(db, genesis, genesis_state)
            self._set_meta("chain_id", str(chain_id))
        elif int(stored) != chain_id:
            raise ConfigError(f"the chain database was created with chain id {stored}, not {chain_id}")
        else:
            self._chain = chain_class(db)
        self.chain_id = chain_id
        self._pending: list[SignedTransactionAPI] = []
        self._next_timestamp: int | None = None
        self._index_logs_to_head()

    # -- metadata ---------------------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (key, value))

    @property
    def time_offset(self) -> int:
        return int(self._meta("time_offset") or 0)

    # -- reads ------------------------------------------------------------------------------------------

    def head(self) -> Any:
        with self._lock:
            return self._chain.get_canonical_head()

    def block_by_number(self, number: int) -> Any:
        with self._lock:
            return self._chain.get_canonical_block_by_number(number)

    def block_by_hash(self, block_hash: bytes) -> Any:
        with self._lock:
            return self._chain.get_block_by_hash(block_hash)

    def _state(self, at: int | None = None) -> Any:
        """State after block ``at`` (default: the latest). py-evm never prunes, so any block works."""
        head = self._chain.get_canonical_head()
        header = (
            head
            if at is None or at >= head.block_number
            else self._chain.get_canonical_block_header_by_number(at)
        )
        return self._chain.get_vm(header).state

    def balance(self, address: str, at: int | None = None) -> int:
        with self._lock:
            return self._state(at).get_balance(to_canonical_address(address))

    def nonce(self, address: str, at: int | None = None) -> int:
        with self._lock:
            return self._state(at).get_nonce(to_canonical_address(address))

    def pending_nonce(self, address: str) -> int:
        with self._lock:
            raw = to_canonical_address(address)
            return self._state().get_nonce(raw) + sum(1 for t in self._pending if t.sender == raw)

    def code(self, address: str, at: int | None = None) -> bytes:
        with self._lock:
            return self._state(at).get_code(to_canonical_address(address))

    def storage(self, address: str, slot: int, at: int | None = None) -> int:
        with self._lock:
            return self._state(at).get_storage(to_canonical_address(address), slot)

    def next_base_fee(self) -> int:
        with self._lock:
            return self._chain.header.base_fee_per_gas

    # -- execution without a transaction ------------------------------------------------------------------

    def _spoof(self, sender: str | None, to: str | None, data: bytes, value: int, gas: int | None) -> Any:
        vm = self._chain.get_vm()
        from_ = to_canonical_address(sender) if sender else b"\x00" * 20
        unsigned = vm.create_unsigned_transaction(
            nonce=self._state().get_nonce(from_),
            gas_price=0,
            gas=gas or GAS_LIMIT,
            to=to_canonical_address(to) if to else b"",
            value=value,
            data=data,
        )
        return SpoofTransaction(unsigned, from_=from_)

    def call(
        self,
        to: str | None,
        data: bytes,
        *,
        sender: str | None = None,
        value: int = 0,
        gas: int | None = None,
        at: int | None = None,
    ) -> CallResult:
        """Run on the state after block ``at`` (default latest), in the next block's context; nothing is kept."""
        with self._lock:
            head = self._chain.get_canonical_head()
            if at is not None and at < head.block_number:
                head = self._chain.get_canonical_block_header_by_number(at)
            with self._chain.get_vm(head).in_costless_state() as state:
                computation = state.costless_execute_transaction(self._spoof(sender, to, data, value, gas))
            return CallResult(not computation.is_error, computation.output, computation.get_gas_used())

    def estimate_gas(self, to: str | None, data: bytes, *, sender: str | None = None, value: int = 0) -> int:
        """Gas a transaction needs. Raises `LedgerError` when it would fail."""
        with self._lock:
            try:
                return self._chain.estimate_gas(self._spoof(sender, to, data, value, None))
            except Exception as exc:  # py-evm raises VMError subclasses or ValidationError
                raise LedgerError(f"gas estimation failed: {exc!r}") from exc

    # -- transactions -----------------------------------------------------------------------------------

    def decode_transaction(self, raw: bytes) -> SignedTransactionAPI:
        try:
            return self._chain.get_vm().get_transaction_builder().decode(raw)
        except (rlp.DecodingError, rlp.DeserializationError, ValidationError, ValueError, IndexError) as exc:
            raise InvalidTransaction(f"cannot decode transaction: {exc}") from exc

    def submit_raw(self, raw: bytes) -> bytes:
        """Queue a signed transaction for the next block; returns its hash. Raises `InvalidTransaction`."""
        with self._lock:
            tx = self.decode_transaction(raw)
            try:
                tx.validate()
                sender = tx.sender
            except (ValidationError, ValueError) as exc:
                raise InvalidTransaction(f"invalid transaction: {exc}") from exc
            if tx.chain_id != self.chain_id:
                raise InvalidTransaction(
                    f"transaction is for chain {tx.chain_id}, this is chain {self.chain_id}"
                )
            expected = self.pending_nonce(to_checksum_address(sender))
            if tx.nonce != expected:
                raise InvalidTransaction(f"nonce {tx.nonce} is not the next one ({expected})")
            if tx.gas > GAS_LIMIT:
                raise InvalidTransaction(f"gas {tx.gas} is above the block gas limit {GAS_LIMIT}")
            base_fee = self._chain.header.base_fee_per_gas
            if tx.max_fee_per_gas < base_fee:
                raise InvalidTransaction(f"max fee {tx.max_fee_per_gas} is below the base fee {base_fee}")
            cost = tx.gas * tx.max_fee_per_gas + tx.value
            if self._state().get_balance(sender) < cost:
                raise InvalidTransaction("insufficient funds for gas * fee + value")
            self._pending.append(tx)
            return tx.hash

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def _timestamp_for_next_block(self, parent_timestamp: int) -> int:
        wanted = self._next_timestamp or int(time.time()) + self.time_offset
        return max(parent_timestamp + 1, wanted)

    def mine(self) -> list[bytes]:
        """Mine every pending transaction into one block (an empty block if none). Returns their hashes."""
        with self._lock:
            txs, self._pending = self._pending, []
            parent = self._chain.get_canonical_head()
            timestamp = self._timestamp_for_next_block(parent.timestamp)
            self._next_timestamp = None
            self._chain.header = self._chain.create_header_from_parent(parent).copy(timestamp=timestamp)
            started = time.perf_counter()
            try:
                self._chain.mine_all(txs)
            except ValidationError as exc:
                # A transaction became invalid after it was queued: mine the good ones, drop the rest.
                log().warning("block_rejected_retrying", txs=len(txs), error=str(exc))
                self._chain.header = self._chain.create_header_from_parent(parent).copy(timestamp=timestamp)
                txs = self._mine_valid_subset(txs, parent, timestamp)
            self._index_logs_to_head()
            log().debug("block_mined", txs=len(txs), seconds=round(time.perf_counter() - started, 4))
            return [t.hash for t in txs]

    def _mine_valid_subset(self, txs: list[SignedTransactionAPI], parent: Any, timestamp: int) -> list[Any]:
        good: list[SignedTransactionAPI] = []
        for tx in txs:
            vm = self._chain.get_vm(self._chain.create_header_from_parent(parent).copy(timestamp=timestamp))
            try:
                vm.apply_all_transactions([*good, tx], vm.get_header())
            except ValidationError:
                continue
            good.append(tx)
        self._chain.header = self._chain.create_header_from_parent(parent).copy(timestamp=timestamp)
        self._chain.mine_all(good)
        return good

    def set_next_timestamp(self, timestamp: int) -> None:
        with self._lock:
            self._next_timestamp = timestamp

    def increase_time(self, seconds: int) -> int:
        """Shift this chain's clock forward (kept across restarts) and mine a block at the new time."""
        with self._lock:
            # Relative to the chain's time, which runs ahead of the wall clock when blocks come faster
            # than one a second (each block is at least one second after its parent).
            target = self._chain.get_canonical_head().timestamp + seconds
            offset = max(self.time_offset + seconds, target - int(time.time()))
            self._set_meta("time_offset", str(offset))
            self._next_timestamp = target
            self.mine()
            return offset

    # -- receipts and logs ------------------------------------------------------------------------------

    def transaction_location(self, tx_hash: bytes) -> tuple[int, int] | None:
        with self._lock:
            try:
                return self._chain.get_canonical_transaction_index(tx_hash)
            except Exception:  # TransactionNotFound: unknown or not yet mined
                return None

    def receipt(self, tx_hash: bytes) -> dict[str, Any] | None:
        """Everything a JSON-RPC receipt needs, or None while the transaction is pending or unknown."""
        with self._lock:
            where = self.transaction_location(tx_hash)
            if where is None:
                return None
            number, index = where
            block = self._chain.get_canonical_block_by_number(number)
            receipts = block.get_receipts(self._chain.chaindb)
            tx = block.transactions[index]
            previous = receipts[index - 1].gas_used if index else 0
            first_log = sum(len(r.logs) for r in receipts[:index])
            created = generate_contract_address(tx.sender, tx.nonce) if not tx.to else None
            base_fee = block.header.base_fee_per_gas
            return {
                "tx": tx,
                "block": block,
                "index": index,
                "status": 1 if receipts[index].state_root == b"\x01" else 0,
                "gas_used": receipts[index].gas_used - previous,
                "cumulative_gas_used": receipts[index].gas_used,
                "effective_gas_price": min(tx.max_fee_per_gas, base_fee + tx.max_priority_fee_per_gas),
                "contract_address": created,
                "bloom": receipts[index].bloom,
                "logs": [
                    (
                        first_log + i,
                        entry.address,
                        tuple(t.to_bytes(32, "big") for t in entry.topics),
                        entry.data,
                    )
                    for i, entry in enumerate(receipts[index].logs)
                ],
            }

    def _index_logs_to_head(self) -> None:
        head = self._chain.get_canonical_head().block_number
        done = int(self._meta("logs_indexed_to") or 0)
        for number in range(done + 1, head + 1):
            block = self._chain.get_canonical_block_by_number(number)
            rows = []
            log_index = 0
            for tx_index, (tx, receipt) in enumerate(
                zip(block.transactions, block.get_receipts(self._chain.chaindb), strict=True)
            ):
                for entry in receipt.logs:
                    topics = [t.to_bytes(32, "big") for t in entry.topics] + [None] * (4 - len(entry.topics))
                    rows.append((number, log_index, tx_index, tx.hash, entry.address, *topics, entry.data))
                    log_index += 1
            # The rows and the high-water mark commit together, so a crash never indexes a block twice.
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("INSERT OR REPLACE INTO logs VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            self._conn.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES ('logs_indexed_to', ?)", (str(number),)
            )
            self._conn.execute("COMMIT")

    def logs(
        self,
        *,
        address: str | list[str] | None = None,
        topics: list[bytes | list[bytes] | None] | None = None,
        from_block: int = 0,
        to_block: int | None = None,
    ) -> list[tuple[int, int, int, bytes, bytes, tuple[bytes, ...], bytes]]:
        """(block, log_index, tx_index, tx_hash, address, topics, data) matching the standard filter rules."""
        where, args = ["block >= ?"], [from_block]
        if to_block is not None:
            where.append("block <= ?")
            args.append(to_block)
        if address:
            addresses = [address] if isinstance(address, str) else address
            where.append(f"address IN ({','.join('?' * len(addresses))})")
            args.extend(to_canonical_address(a) for a in addresses)
        for i, topic in enumerate(topics or []):
            if topic is None:
                continue
            options = topic if isinstance(topic, list) else [topic]
            where.append(f"topic{i} IN ({','.join('?' * len(options))})")
            args.extend(options)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT * FROM logs WHERE {' AND '.join(where)} ORDER BY block, log_index", args
            ).fetchall()
        return [
            (
                r[0],
                r[1],
                r[2],
                bytes(r[3]),
                bytes(r[4]),
                tuple(bytes(t) for t in r[5:9] if t is not None),
                bytes(r[9]),
            )
            for r in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_chain_at_home(home: Path, *, chain_id: int = DEFAULT_CHAIN_ID) -> EmbeddedChain:
    """The embedded chain stored under a node's home directory (created on first use)."""
    home.mkdir(parents=True, exist_ok=True)
    return EmbeddedChain(home / CHAIN_FILE, chain_id=chain_id)
