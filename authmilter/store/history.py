"""Report history: one record per evaluated message, and the bookkeeping of the reports sent
from it (which domain and day is done, which destination is failing, who sends).

`HistoryStore` is the interface; `SqliteHistory` (here) is the embedded default, safe with
several worker processes of one host. PostgreSQL and Redis implementations, for several MX
hosts, live in `history_pg` and `history_redis`. Every implementation keeps the same JSON line
(`core.history.dumps`) with the columns a report needs to find its records without reading
the others: the time, and the policy domain of a reportable record.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from authmilter.core.history import HistoryError, HistoryRecord, dumps, loads
from authmilter.store.base import StoreError

__all__ = ["HistoryStore", "SqliteHistory", "report_key"]


def report_key(domain: str, day: str) -> str:
    return f"{domain.lower()}/{day}"


class HistoryStore(Protocol):
    """What the milter, `report send` and `policy preview` ask of the history.

    Times are seconds since the epoch; `day` is a UTC date, "YYYY-MM-DD". Every method raises
    StoreError when the store cannot answer.
    """

    def append(self, records: Sequence[HistoryRecord]) -> None:
        """Keep these records (one write for all of them)."""

    def records(self, since: int, until: int, policy_domain: str | None = None) -> Iterator[HistoryRecord]:
        """The records with since <= time < until, oldest first; only those reportable to
        `policy_domain` when it is given. A record that cannot be read is skipped (and logged)."""
        ...

    def policy_domains(self, since: int, until: int) -> list[str]:
        """The policy domains that have reportable records in [since, until), sorted."""
        ...

    def prune(self, before: int) -> int:
        """Forget records older than `before`; how many were removed."""
        ...

    def claim_report(self, domain: str, day: str, report_id: str, now: float) -> bool:
        """Take the report of (domain, day) for sending: True for the first claim only, so that
        no domain ever gets two reports for one day, whatever hosts or runs ask."""
        ...

    def reports(self, day: str) -> dict[str, tuple[str, str]]:
        """The claimed reports of `day`: domain -> (report_id, status)."""
        ...

    def set_report_status(self, domain: str, day: str, status: str) -> None:
        """"sent", "failed: ...", "skipped: ..." for a claimed report."""

    def destination(self, uri: str) -> tuple[int, float]:
        """(consecutive failures, earliest next attempt) of a report destination."""
        ...

    def record_delivery(self, uri: str, ok: bool, now: float, next_attempt: float) -> None:
        """A delivery to `uri` worked (failures reset) or failed (one more, and when to retry)."""

    def acquire_lock(self, name: str, holder: str, ttl: float, now: float) -> bool:
        """Hold `name` for `ttl` seconds unless another holder has it; True when held."""
        ...

    def release_lock(self, name: str, holder: str) -> None:
        ...

    def close(self) -> None:
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    t INTEGER NOT NULL,
    policy_domain TEXT NOT NULL,   -- '' when the record is not reportable
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_t ON history (t);
-- Not a partial index: SQLite cannot prove that `policy_domain = ?` implies a partial index's
-- WHERE, and a report per domain would then scan the whole history once per domain.
CREATE INDEX IF NOT EXISTS history_domain_t ON history (policy_domain, t);
CREATE TABLE IF NOT EXISTS reports (
    key TEXT PRIMARY KEY,
    domain TEXT NOT NULL,
    day TEXT NOT NULL,
    report_id TEXT NOT NULL,
    status TEXT NOT NULL,
    claimed REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS destinations (
    uri TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    next_attempt REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS locks (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires REAL NOT NULL
);
"""


class SqliteHistory:
    """The history in one SQLite file (WAL), shared by the worker processes of one host."""

    def __init__(self, path: str, *, timeout: float = 5.0) -> None:
        self.path = path
        self._local = threading.local()
        self._timeout = timeout
        try:
            db = self._db()
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"history {path}: {exc}") from exc

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def _run(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"history {self.path}: {exc}") from exc

    def append(self, records: Sequence[HistoryRecord]) -> None:
        if not records:
            return
        rows = [(r.time, r.policy.domain.lower() if r.reportable and r.policy else "", dumps(r))
                for r in records]
        try:
            db = self._db()
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT INTO history (t, policy_domain, record) VALUES (?, ?, ?)", rows)
        except sqlite3.Error as exc:
            raise StoreError(f"history {self.path}: {exc}") from exc

    def records(self, since: int, until: int, policy_domain: str | None = None) -> Iterator[HistoryRecord]:
        if policy_domain is None:
            sql, args = "SELECT record FROM history WHERE t >= ? AND t < ? ORDER BY t", (since, until)
        else:
            sql = ("SELECT record FROM history WHERE policy_domain = ? AND t >= ? AND t < ? "
                   "ORDER BY t")
            args = (policy_domain.lower(), since, until)  # type: ignore[assignment]
        try:
            cursor = self._db().execute(sql, args)
            while True:
                rows = cursor.fetchmany(2000)
                if not rows:
                    return
                for (text,) in rows:
                    record = read_record(str(text))
                    if record is not None:
                        yield record
        except sqlite3.Error as exc:
            raise StoreError(f"history {self.path}: {exc}") from exc

    def policy_domains(self, since: int, until: int) -> list[str]:
        rows = self._run("SELECT DISTINCT policy_domain FROM history WHERE policy_domain != '' "
                         "AND t >= ? AND t < ? ORDER BY policy_domain", (since, until))
        return [str(r[0]) for r in rows]

    def prune(self, before: int) -> int:
        try:
            db = self._db()
            return db.execute("DELETE FROM history WHERE t < ?", (before,)).rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"history {self.path}: {exc}") from exc

    def claim_report(self, domain: str, day: str, report_id: str, now: float) -> bool:
        try:
            cur = self._db().execute(
                "INSERT OR IGNORE INTO reports (key, domain, day, report_id, status, claimed) "
                "VALUES (?, ?, ?, ?, 'claimed', ?)",
                (report_key(domain, day), domain.lower(), day, report_id, now))
            return cur.rowcount == 1
        except sqlite3.Error as exc:
            raise StoreError(f"history {self.path}: {exc}") from exc

    def reports(self, day: str) -> dict[str, tuple[str, str]]:
        rows = self._run("SELECT domain, report_id, status FROM reports WHERE day = ?", (day,))
        return {str(d): (str(i), str(s)) for d, i, s in rows}

    def set_report_status(self, domain: str, day: str, status: str) -> None:
        self._run("UPDATE reports SET status = ? WHERE key = ?", (status, report_key(domain, day)))

    def destination(self, uri: str) -> tuple[int, float]:
        rows = self._run("SELECT failures, next_attempt FROM destinations WHERE uri = ?", (uri,))
        if not rows:
            return 0, 0.0
        return int(rows[0][0]), float(rows[0][1])

    def record_delivery(self, uri: str, ok: bool, now: float, next_attempt: float) -> None:
        if ok:
            self._run("DELETE FROM destinations WHERE uri = ?", (uri,))
            return
        self._run("INSERT INTO destinations (uri, failures, next_attempt) VALUES (?, 1, ?) "
                  "ON CONFLICT (uri) DO UPDATE SET failures = failures + 1, next_attempt = ?",
                  (uri, next_attempt, next_attempt))

    def acquire_lock(self, name: str, holder: str, ttl: float, now: float) -> bool:
        try:
            db = self._db()
            with db:
                db.execute("BEGIN IMMEDIATE")
                row = db.execute("SELECT holder, expires FROM locks WHERE name = ?", (name,)).fetchone()
                if row is not None and row[0] != holder and float(row[1]) > now:
                    return False
                db.execute("INSERT OR REPLACE INTO locks (name, holder, expires) VALUES (?, ?, ?)",
                           (name, holder, now + ttl))
                return True
        except sqlite3.Error as exc:
            raise StoreError(f"history {self.path}: {exc}") from exc

    def release_lock(self, name: str, holder: str) -> None:
        self._run("DELETE FROM locks WHERE name = ? AND holder = ?", (name, holder))

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def read_record(text: str) -> HistoryRecord | None:
    try:
        return loads(text)
    except HistoryError as exc:
        _skipped(str(exc))
        return None


_last_skip_log = [0.0]


def _skipped(why: str) -> None:
    import logging

    now = time.monotonic()
    if now - _last_skip_log[0] > 60:
        _last_skip_log[0] = now
        logging.getLogger("authmilter.history").warning("history record skipped: %s", why)
