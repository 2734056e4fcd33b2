"""Report history in PostgreSQL, shared by several MX hosts: the `HistoryStore` of
store/history.py, with SqliteHistory's semantics statement by statement.

Every decision that must hold across hosts is one statement, so PostgreSQL's row locking makes it
race-free without explicit transactions: a report is claimed by `INSERT ... ON CONFLICT DO
NOTHING` (one row, one winner), a lock is taken by an upsert whose `WHERE` only lets the holder
or an expired lock be overwritten. The connections are autocommit; the only transactions are the
schema creation (serialised by an advisory lock, so two hosts starting at once do not race on
CREATE) and the read of `records()`, whose server-side cursor needs one.

Each thread gets its own connection (the milter's writer thread, the CLI), made again after the
server went away. `records()` reads on a connection of its own, so that whatever the caller does
between two records (claim a report, record a delivery) is never part of, nor rolled back with,
the read's transaction.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import psycopg.conninfo
from psycopg import sql

from authmilter.core.history import HistoryRecord, dumps
from authmilter.store.base import StoreError
from authmilter.store.history import read_record, report_key

__all__ = ["PostgresHistory"]

# Rows per FETCH of the records() cursor, and per DELETE of prune(): big enough that the round
# trips do not dominate, small enough that neither memory nor one statement's time grows with
# the table.
BATCH = 2000
PRUNE_BATCH = 10000
# Readers kept per thread between records() calls; a nested records() (a report reading one
# domain while a preview reads all) opens one more.
IDLE_READERS = 2

_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
# libpq echoes a DSN it cannot parse; these hide what would be a password in it.
_SECRETS = ((re.compile(r"(password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\S+)", re.I), r"\1***"),
            (re.compile(r"(://[^:/@\s]*:)[^@\s]*@"), r"\1***@"))

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS {history} ("
    " t bigint NOT NULL,"
    " policy_domain text NOT NULL,"  # '' when the record is not reportable
    " record text NOT NULL)",
    "CREATE INDEX IF NOT EXISTS {history_t} ON {history} (t)",
    "CREATE INDEX IF NOT EXISTS {history_domain_t} ON {history} (policy_domain, t)"
    " WHERE policy_domain <> ''",
    "CREATE TABLE IF NOT EXISTS {reports} ("
    " key text PRIMARY KEY, domain text NOT NULL, day text NOT NULL, report_id text NOT NULL,"
    " status text NOT NULL, claimed double precision NOT NULL)",
    "CREATE INDEX IF NOT EXISTS {reports_day} ON {reports} (day)",
    "CREATE TABLE IF NOT EXISTS {destinations} ("
    " uri text PRIMARY KEY, failures integer NOT NULL, next_attempt double precision NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {locks} ("
    " name text PRIMARY KEY, holder text NOT NULL, expires double precision NOT NULL)",
)

_SQL = {
    "append": "INSERT INTO {history} (t, policy_domain, record) VALUES (%s, %s, %s)",
    "records": "SELECT record FROM {history} WHERE t >= %s AND t < %s ORDER BY t",
    "records_domain": "SELECT record FROM {history} WHERE policy_domain = %s AND t >= %s AND t < %s"
                      " ORDER BY t",
    "domains": "SELECT DISTINCT policy_domain FROM {history} WHERE policy_domain <> ''"
               " AND t >= %s AND t < %s ORDER BY policy_domain",
    # ctid batches keep each DELETE short: the writer prunes weeks of mail of a busy site while
    # the hosts keep appending.
    "prune": "DELETE FROM {history} WHERE ctid = ANY (ARRAY("
             "SELECT ctid FROM {history} WHERE t < %s LIMIT %s))",
    "claim": "INSERT INTO {reports} (key, domain, day, report_id, status, claimed)"
             " VALUES (%s, %s, %s, %s, 'claimed', %s) ON CONFLICT (key) DO NOTHING",
    "reports": "SELECT domain, report_id, status FROM {reports} WHERE day = %s",
    "status": "UPDATE {reports} SET status = %s WHERE key = %s",
    "destination": "SELECT failures, next_attempt FROM {destinations} WHERE uri = %s",
    "delivered": "DELETE FROM {destinations} WHERE uri = %s",
    "failed": "INSERT INTO {destinations} (uri, failures, next_attempt) VALUES (%s, 1, %s)"
              " ON CONFLICT (uri) DO UPDATE SET failures = {destinations}.failures + 1,"
              " next_attempt = EXCLUDED.next_attempt",
    # On a conflict the row is locked and the WHERE judged on its committed version, so of two
    # hosts asking at once the second sees the first's holder and gets no row back.
    "acquire": "INSERT INTO {locks} (name, holder, expires) VALUES (%s, %s, %s)"
               " ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires = EXCLUDED.expires"
               " WHERE {locks}.holder = EXCLUDED.holder OR {locks}.expires <= %s RETURNING 1",
    "release": "DELETE FROM {locks} WHERE name = %s AND holder = %s",
}


class PostgresHistory:
    """The history in PostgreSQL tables named `<table_prefix>history` and so on.

    `dsn` is a libpq connection string or a postgresql:// URL. `timeout` bounds connecting and
    each statement (a server slower than that counts as down). The schema is created when the
    store is opened; StoreError when that cannot be done.
    """

    def __init__(self, dsn: str, *, timeout: float = 5.0, table_prefix: str = "authmilter_") -> None:
        if not _PREFIX.fullmatch(table_prefix):
            raise ValueError(f"table_prefix {table_prefix!r}: letters, digits and _ only (at most 40)")
        try:
            params: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.Error as exc:
            raise StoreError(f"history postgresql: bad DSN: {_scrub(str(exc), '')}") from None
        self._password = str(params.get("password") or "")
        self._where = " ".join(f"{k}={params[k]}" for k in ("host", "port", "dbname") if params.get(k))
        # The DSN's own settings win; these are defaults only.
        params.setdefault("connect_timeout", str(max(2, math.ceil(timeout))))  # libpq: whole s, >= 2
        # A host that vanished mid-statement would otherwise hold a thread for TCP's ~15 minutes.
        params.setdefault("tcp_user_timeout", str(int(max(timeout, 1.0) * 2000)))
        params.setdefault("fallback_application_name", "authmilter")
        self._conninfo = psycopg.conninfo.make_conninfo("", **params)
        self._statement_timeout = str(max(1, int(timeout * 1000)))
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[psycopg.Connection[Any]] = set()
        names = {n: sql.Identifier(table_prefix + n) for n in (
            "history", "history_t", "history_domain_t", "reports", "reports_day", "destinations",
            "locks")}
        self._sql = {k: sql.SQL(v).format(**names) for k, v in _SQL.items()}
        schema = [sql.SQL(s).format(**names) for s in _SCHEMA]
        try:
            conn = self._conn()
            with conn.transaction():
                # Two processes creating the same tables at once fail on the catalog's unique
                # index despite IF NOT EXISTS; the lock makes the second wait and find them.
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                             ("authmilter history schema " + table_prefix,))
                for statement in schema:
                    conn.execute(statement)
        except psycopg.Error as exc:
            raise self._error(exc) from None

    def __repr__(self) -> str:
        return f"PostgresHistory({self._where or 'default server'})"

    # --- connections ------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self._conninfo, autocommit=True)
        try:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (self._statement_timeout,))
        except psycopg.Error:
            conn.close()
            raise
        with self._lock:
            self._open.add(conn)
        return conn

    def _conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                self._discard(conn)
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _discard(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            self._open.discard(conn)
        with contextlib.suppress(psycopg.Error):  # it is thrown away because it is broken
            conn.close()

    def _error(self, exc: BaseException) -> StoreError:
        where = f" {self._where}" if self._where else ""
        return StoreError(f"history postgresql{where}: {_scrub(str(exc).strip(), self._password)}")

    def _run(self, name: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        try:
            cur = self._conn().execute(self._sql[name], args)
            return cur.fetchall() if cur.description is not None else []
        except psycopg.Error as exc:
            raise self._error(exc) from None

    def _rowcount(self, name: str, args: Sequence[object]) -> int:
        try:
            return self._conn().execute(self._sql[name], args).rowcount
        except psycopg.Error as exc:
            raise self._error(exc) from None

    # --- HistoryStore ---------------------------------------------------------------------------

    def append(self, records: Sequence[HistoryRecord]) -> None:
        if not records:
            return
        rows = [(r.time, r.policy.domain.lower() if r.reportable and r.policy else "", dumps(r))
                for r in records]
        try:
            conn = self._conn()
            # One transaction: a batch is written whole or not at all, like SQLite's.
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(self._sql["append"], rows)
        except psycopg.Error as exc:
            raise self._error(exc) from None

    def records(self, since: int, until: int, policy_domain: str | None = None) -> Iterator[HistoryRecord]:
        if policy_domain is None:
            return self._stream("records", (since, until))
        return self._stream("records_domain", (policy_domain.lower(), since, until))

    def _stream(self, name: str, args: Sequence[object]) -> Iterator[HistoryRecord]:
        conn: psycopg.Connection[Any] | None = None
        try:
            conn = self._reader()
            with conn.transaction(), conn.cursor("authmilter_records") as cur:
                cur.itersize = BATCH
                cur.execute(self._sql[name], args)
                for (text,) in cur:
                    record = read_record(str(text))
                    if record is not None:
                        yield record
        except psycopg.Error as exc:
            raise self._error(exc) from None
        finally:
            if conn is not None:
                self._give_back(conn)

    def _reader(self) -> psycopg.Connection[Any]:
        idle: list[psycopg.Connection[Any]] = self._local.__dict__.setdefault("readers", [])
        while idle:
            conn = idle.pop()
            if not (conn.closed or conn.broken):
                return conn
            self._discard(conn)
        return self._connect()

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        idle: list[psycopg.Connection[Any]] = self._local.__dict__.setdefault("readers", [])
        healthy = not (conn.closed or conn.broken) and (
            conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE)
        if healthy and len(idle) < IDLE_READERS:
            idle.append(conn)
        else:
            self._discard(conn)

    def policy_domains(self, since: int, until: int) -> list[str]:
        return [str(r[0]) for r in self._run("domains", (since, until))]

    def prune(self, before: int) -> int:
        removed = 0
        while True:
            n = self._rowcount("prune", (before, PRUNE_BATCH))
            removed += max(n, 0)
            if n < PRUNE_BATCH:
                return removed

    def claim_report(self, domain: str, day: str, report_id: str, now: float) -> bool:
        return self._rowcount("claim", (report_key(domain, day), domain.lower(), day, report_id, now)) == 1

    def reports(self, day: str) -> dict[str, tuple[str, str]]:
        return {str(d): (str(i), str(s)) for d, i, s in self._run("reports", (day,))}

    def set_report_status(self, domain: str, day: str, status: str) -> None:
        self._run("status", (status, report_key(domain, day)))

    def destination(self, uri: str) -> tuple[int, float]:
        rows = self._run("destination", (uri,))
        if not rows:
            return 0, 0.0
        return int(rows[0][0]), float(rows[0][1])

    def record_delivery(self, uri: str, ok: bool, now: float, next_attempt: float) -> None:
        if ok:
            self._run("delivered", (uri,))
        else:
            self._run("failed", (uri, next_attempt))

    def acquire_lock(self, name: str, holder: str, ttl: float, now: float) -> bool:
        return bool(self._run("acquire", (name, holder, now + ttl, now)))

    def release_lock(self, name: str, holder: str) -> None:
        self._run("release", (name, holder))

    def close(self) -> None:
        """Close every connection of this store, whichever thread made it."""
        with self._lock:
            conns, self._open = self._open, set()
        for conn in conns:
            with contextlib.suppress(psycopg.Error):  # a dead server's is closed already
                conn.close()


def _scrub(text: str, password: str) -> str:
    if password:
        text = text.replace(password, "***")
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text
