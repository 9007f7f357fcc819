"""A py-evm key-value database in one sqlite file (WAL): every atomic batch is one sqlite transaction.

py-evm 0.12 ships only an in-memory database. Its chain code writes state and blocks through
``atomic_batch()``, so committing each batch as one sqlite transaction is enough for the chain to reopen
consistent after a crash or SIGKILL: a block is either fully there (and canonical) or not at all.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from eth.abc import AtomicWriteBatchAPI
from eth.db.backends.base import BaseAtomicDB, BaseDB

_DELETED = object()


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode with fsync on every commit; shared by threads under the caller's lock."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
    return conn


class SqliteAtomicDB(BaseAtomicDB):
    """`AtomicDatabaseAPI` over the ``kv`` table. Single writes commit at once; batches commit together."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = threading.RLock()

    def __getitem__(self, key: bytes) -> bytes:
        row = self._conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return bytes(row[0])

    def __setitem__(self, key: bytes, value: bytes) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, value))

    def __delitem__(self, key: bytes) -> None:
        with self._lock:
            if self._conn.execute("DELETE FROM kv WHERE k = ?", (key,)).rowcount == 0:
                raise KeyError(key)

    def _exists(self, key: bytes) -> bool:
        return self._conn.execute("SELECT 1 FROM kv WHERE k = ?", (key,)).fetchone() is not None

    @contextmanager
    def atomic_batch(self) -> Iterator[AtomicWriteBatchAPI]:
        batch = _Batch(self)
        try:
            yield batch
        except BaseException:
            batch.changes = None
            raise
        changes, batch.changes = batch.changes, None
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)",
                    [(k, v) for k, v in changes.items() if v is not _DELETED],
                )
                self._conn.executemany(
                    "DELETE FROM kv WHERE k = ?", [(k,) for k, v in changes.items() if v is _DELETED]
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")


class _Batch(BaseDB, AtomicWriteBatchAPI):
    """Pending writes of one batch; reads see them over the committed database."""

    def __init__(self, db: SqliteAtomicDB) -> None:
        self._db = db
        self.changes: dict[bytes, object] | None = {}

    def _live(self) -> dict[bytes, object]:
        if self.changes is None:
            raise RuntimeError("atomic batch used outside its context")
        return self.changes

    def __getitem__(self, key: bytes) -> bytes:
        value = self._live().get(key)
        if value is _DELETED:
            raise KeyError(key)
        if value is None:
            return self._db[key]
        return value  # type: ignore[return-value]

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._live()[key] = value

    def __delitem__(self, key: bytes) -> None:
        if key not in self:
            raise KeyError(key)
        self._live()[key] = _DELETED

    def _exists(self, key: bytes) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True
