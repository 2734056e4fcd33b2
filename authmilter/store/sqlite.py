"""The embedded store: one SQLite file that every worker process of one host shares.

WAL journal (readers never block the writer), a busy timeout (a worker waits for another's
transaction instead of failing at once) and `BEGIN IMMEDIATE` around every read-modify-write, so
two processes counting the same triplet never both read the old record. Rows past their expiry
are deleted lazily, a bounded batch every PURGE_EVERY operations, in the transaction at hand.

A connection belongs to the process that opened it: after fork (the pre-fork pool) the child
opens its own on first use. Within one process a lock serialises threads on the connection.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from authmilter.store.base import (
    GreyState,
    RateState,
    StoreError,
    bucket_step,
    check_count_args,
    check_grey_args,
    check_rate_args,
    count_step,
    grey_step,
)

PURGE_EVERY = 256  # operations between lazy purges, per process
PURGE_BATCH = 1000  # rows deleted per table and purge at most
PASSES_KEPT = 50_000  # passed triplets remembered per process (about 14 MB at most)
_TABLES = ("greylist", "buckets", "counters")

SCHEMA = """
CREATE TABLE IF NOT EXISTS greylist (
    key TEXT PRIMARY KEY, first_seen REAL NOT NULL, passes INTEGER NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS greylist_expires ON greylist (expires_at);
CREATE TABLE IF NOT EXISTS buckets (
    key TEXT PRIMARY KEY, tokens REAL NOT NULL, updated_at REAL NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS buckets_expires ON buckets (expires_at);
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS counters_expires ON counters (expires_at);
"""

_GREY_SELECT = "SELECT first_seen, passes, expires_at FROM greylist WHERE key = ?"


def _grey_record(row: tuple[Any, ...] | None) -> tuple[float, int, float] | None:
    return None if row is None else (float(row[0]), int(row[1]), float(row[2]))


class SqliteStore:
    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 5.0) -> None:
        """Open (creating if need be) the database at `path`; StoreError when that fails.

        `timeout`: seconds to wait for another process's transaction before giving up."""
        self.path = Path(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._ops = 0
        self._inherited: list[sqlite3.Connection] = []  # never used nor closed after fork
        self._passes: dict[str, tuple[float, int, float]] = {}  # key -> passed record as last seen
        with self._lock:
            self._connection()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._conn is not None:
            # SQLite forbids using a connection across fork; closing it here could touch the
            # parent's locks, so it is only forgotten.
            self._inherited.append(self._conn)
            self._conn = None
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL journal mode (got {mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(SCHEMA)
        except sqlite3.Error as e:
            if conn is not None:
                conn.close()
            raise StoreError(f"{self.path}: {e}") from e
        except StoreError:
            if conn is not None:
                conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _purge(self, conn: sqlite3.Connection, now: float) -> None:
        for table in _TABLES:
            conn.execute(f"DELETE FROM {table} WHERE rowid IN "
                         f"(SELECT rowid FROM {table} WHERE expires_at <= ? LIMIT ?)", (now, PURGE_BATCH))

    @contextlib.contextmanager
    def _immediate(self, now: float | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error) on this
        process's connection, under the thread lock; sqlite3 errors become StoreError. With
        `now`, the lazy purge gets its turn inside the same transaction."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    if now is not None:
                        self._housekeeping(conn, now)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise StoreError(f"{self.path}: {e}") from e

    def _read(self, select: str, key: str) -> Any:
        """One row by key, outside any transaction: a read needs no write lock, WAL gives it a
        consistent snapshot."""
        with self._lock:
            try:
                return self._connection().execute(select, (key,)).fetchone()
            except sqlite3.Error as e:
                raise StoreError(f"{self.path}: {e}") from e

    def purge_expired(self, now: float) -> None:
        """Delete every row expired at `now` (housekeeping; the operations do it in batches)."""
        with self._immediate() as conn:
            for table in _TABLES:
                conn.execute(f"DELETE FROM {table} WHERE expires_at <= ?", (now,))

    def greylist(self, key: str, now: float, delay: float, retry_window: float,
                 lifetime: float) -> GreyState:
        check_grey_args(delay, retry_window, lifetime)
        # A pass this process read or wrote stands until its refresh is due, and nothing another
        # process does meanwhile can undo it: it can only write the pass again, and the row
        # cannot expire before the refresh. So it is answered from memory, without SQLite (whose
        # every call lets go of the GIL, which the next libmilter thread takes).
        known = self._passes.get(key)
        if known is not None:
            state, write = grey_step(known, now, delay, retry_window, lifetime)
            if write is None and state.passed:
                return state
        # Most attempts change nothing (a pass written back recently, a retry too early): a read
        # outside any transaction settles those without the write lock, as if it came just before
        # whatever another process is writing. Only an attempt that writes takes the lock and
        # reads again.
        record = _grey_record(self._read(_GREY_SELECT, key))
        state, write = grey_step(record, now, delay, retry_window, lifetime)
        if write is None:
            self._remember(key, state, record)
            return state
        with self._immediate(now) as conn:
            row = conn.execute(_GREY_SELECT, (key,)).fetchone()
            record = _grey_record(row)
            state, write = grey_step(record, now, delay, retry_window, lifetime)
            if write is not None:
                conn.execute("INSERT OR REPLACE INTO greylist (key, first_seen, passes, expires_at)"
                             " VALUES (?, ?, ?, ?)", (key, *write))
        self._remember(key, state, write or record)
        return state

    def _remember(self, key: str, state: GreyState, record: tuple[float, int, float] | None) -> None:
        if not state.passed or record is None:
            return
        if len(self._passes) >= PASSES_KEPT:
            self._passes.clear()  # bounded; the next attempts read the file again
        self._passes[key] = record

    def take_tokens(self, key: str, now: float, rate_per_s: float, burst: float,
                    cost: float = 1.0) -> RateState:
        check_rate_args(rate_per_s, burst, cost)
        with self._immediate(now) as conn:
            row = conn.execute("SELECT tokens, updated_at, expires_at FROM buckets WHERE key = ?",
                               (key,)).fetchone()
            record = None if row is None or now >= row[2] else (float(row[0]), float(row[1]))
            state, write = bucket_step(record, now, rate_per_s, burst, cost)
            conn.execute("INSERT OR REPLACE INTO buckets (key, tokens, updated_at, expires_at)"
                         " VALUES (?, ?, ?, ?)", (key, *write))
        return state

    def count(self, key: str, now: float, add: int, lifetime: float) -> int:
        check_count_args(add, lifetime)
        select = "SELECT value, expires_at FROM counters WHERE key = ?"
        if add == 0:
            row = self._read(select, key)
            return count_step(None if row is None else (int(row[0]), float(row[1])), now, 0, lifetime)[0]
        with self._immediate(now) as conn:
            row = conn.execute(select, (key,)).fetchone()
            value, write = count_step(None if row is None else (int(row[0]), float(row[1])),
                                      now, add, lifetime)
            if write is not None:
                conn.execute("INSERT OR REPLACE INTO counters (key, value, expires_at) VALUES (?, ?, ?)",
                             (key, *write))
        return value

    def _housekeeping(self, conn: sqlite3.Connection, now: float) -> None:
        self._ops += 1
        if self._ops % PURGE_EVERY == 0:
            self._purge(conn, now)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                try:
                    self._conn.close()
                except sqlite3.Error as e:
                    raise StoreError(f"{self.path}: {e}") from e
            self._conn = None
