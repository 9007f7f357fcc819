"""The provider's durable record of its channels and the best voucher on each (sqlite, WAL, fsync per commit).

`VoucherStore.accept` checks a voucher with the pure rule (`protocol.voucher.accept_voucher`) and commits it
before returning: once it returns, the voucher survives a crash or SIGKILL, so a provider may acknowledge
(and serve) only after it. Thread-safe; calls block on disk, so call them from a worker thread under trio.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from protocol.voucher import ChannelNotOpen, ChannelState, Voucher, accept_voucher

_SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (
    chain_id INTEGER NOT NULL, contract TEXT NOT NULL, channel_id TEXT NOT NULL,
    payer TEXT NOT NULL, payee TEXT NOT NULL, deposit TEXT NOT NULL, expires_at INTEGER NOT NULL,
    open INTEGER NOT NULL, best_amount TEXT, best_signature BLOB, settled_tx BLOB,
    PRIMARY KEY (chain_id, contract, channel_id)
)
"""
Key = tuple[int, str, int]


class VoucherStore:
    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        """``fsync=True``: every commit is fsynced (survives power loss; costs a disk flush per voucher).
        ``fsync=False``: commits reach the OS before `accept` returns (survives SIGKILL, not power loss)."""
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        self._conn.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @staticmethod
    def key(state: ChannelState | Voucher) -> Key:
        return state.chain_id, state.contract, state.channel_id

    def _row_to_state(self, row: tuple) -> ChannelState:
        chain_id, contract, channel_id, payer, payee, deposit, expires_at, is_open, amount, signature, _ = row
        best = None
        if amount is not None:
            best = Voucher(chain_id, contract, int(channel_id), int(amount), bytes(signature))
        return ChannelState(
            chain_id, contract, int(channel_id), payer, payee, int(deposit), expires_at, bool(is_open), best
        )

    def get(self, key: Key) -> ChannelState | None:
        chain_id, contract, channel_id = key
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM channels WHERE chain_id = ? AND contract = ? AND channel_id = ?",
                (chain_id, contract, str(channel_id)),
            ).fetchone()
        return None if row is None else self._row_to_state(row)

    def track(self, state: ChannelState) -> ChannelState:
        """Record a channel read from the chain; a channel already known keeps its stored best voucher,
        with the deposit and expiry refreshed (a top-up only ever raises them)."""
        with self._lock:
            self._conn.execute(
                "INSERT INTO channels VALUES (?,?,?,?,?,?,?,?,NULL,NULL,NULL) "
                "ON CONFLICT DO UPDATE SET deposit = excluded.deposit, expires_at = excluded.expires_at, "
                "open = excluded.open",
                (
                    state.chain_id,
                    state.contract,
                    str(state.channel_id),
                    state.payer,
                    state.payee,
                    str(state.deposit),
                    state.expires_at,
                    int(state.open),
                ),
            )
        stored = self.get(self.key(state))
        assert stored is not None
        return stored

    def accept(self, voucher: Voucher, *, now: int, margin: int = 0) -> ChannelState:
        """Check ``voucher`` against the stored channel and persist it. Raises `ChannelNotOpen` for a
        channel never tracked, and every refusal of `accept_voucher`; nothing is written then."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self._conn.execute(
                    "SELECT * FROM channels WHERE chain_id = ? AND contract = ? AND channel_id = ?",
                    (voucher.chain_id, voucher.contract, str(voucher.channel_id)),
                ).fetchone()
                if row is None:
                    raise ChannelNotOpen(f"channel {voucher.channel_id} is unknown to this provider")
                state = accept_voucher(self._row_to_state(row), voucher, now=now, margin=margin)
                self._conn.execute(
                    "UPDATE channels SET best_amount = ?, best_signature = ? "
                    "WHERE chain_id = ? AND contract = ? AND channel_id = ?",
                    (
                        str(voucher.amount),
                        voucher.signature,
                        voucher.chain_id,
                        voucher.contract,
                        str(voucher.channel_id),
                    ),
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        return state

    def mark_closed(self, key: Key, tx_hash: bytes) -> None:
        chain_id, contract, channel_id = key
        with self._lock:
            self._conn.execute(
                "UPDATE channels SET open = 0, settled_tx = ? WHERE chain_id = ? AND contract = ? AND channel_id = ?",
                (tx_hash, chain_id, contract, str(channel_id)),
            )

    def open_channels(self) -> list[ChannelState]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM channels WHERE open = 1 ORDER BY expires_at").fetchall()
        return [self._row_to_state(r) for r in rows]

    def due(self, *, now: int, margin: int) -> list[ChannelState]:
        """Open channels holding a voucher that expire within ``margin`` seconds of ``now``: close them now."""
        return [s for s in self.open_channels() if s.best is not None and s.expires_at - margin <= now]
