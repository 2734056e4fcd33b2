"""One behaviour suite for every report-history store: SqliteHistory on a temp file,
PostgresHistory against a real PostgreSQL server and RedisHistory against a real redis-server,
both started here on loopback high ports (tests/pgserver.py, tests/redisserver.py).

What a store must do is what SqliteHistory does: the suite states it once and runs it on all
three, with each "host" a store object of its own on the same backend."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import pytest

from authmilter.core.history import HistoryRecord, PublishedPolicy, SpfEntry
from authmilter.store.base import StoreError
from authmilter.store.history import HistoryStore, SqliteHistory
from authmilter.store.history_pg import PostgresHistory
from authmilter.store.history_redis import RedisHistory
from tests.pgserver import PostgresServer, PostgresUnavailable
from tests.pgserver import ensure_installed as pg_installed
from tests.redisserver import RedisSentinel, RedisServer, RedisUnavailable, free_port
from tests.redisserver import ensure_installed as redis_installed

INSTALL_TIMEOUT = 300.0
DAY = 86400
D0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC
DAY0, DAY1 = "2026-01-01", "2026-01-02"
WAIT = 10.0  # the longest any racing thread may take


def rec(t: int, domain: str | None = "example.com", dmarc: str = "pass", qid: str = "") -> HistoryRecord:
    """A record at time t; reportable to `domain` unless domain is None or dmarc is not
    pass/fail."""
    policy = None if domain is None else PublishedPolicy(
        domain=domain, p="reject", sp=None, np=None, adkim="r", aspf="r", testing=False, psd=None,
        rua=(f"mailto:dmarc@{domain}",))
    return HistoryRecord(
        time=t, client_ip="192.0.2.1", envelope_from="sender.example", envelope_to=("rcpt.example",),
        header_from=domain or "", spf=(SpfEntry("sender.example", "mfrom", "pass"),), dkim=(),
        dmarc=dmarc, dkim_aligned=False, spf_aligned=dmarc == "pass", policy=policy,
        requested="reject" if domain else "", disposition="pass" if domain else "", override="",
        action="accept", rule="", stage="eom", facts={"stage": "eom", "client_ip": "192.0.2.1"},
        queue_id=qid)


@dataclass
class Backend:
    """One store kind: `open()` makes another host's store on the same data, `corrupt(t,
    domain, text)` stores an unreadable line as the store itself would, `down()` opens a store
    on a backend that is not there (a password in its address that must not show)."""

    name: str
    open: Callable[[], HistoryStore]
    corrupt: Callable[[int, str, str], None]
    down: Callable[[], HistoryStore]


# --- servers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    try:
        done = pg_installed(timeout=INSTALL_TIMEOUT)
    except PostgresUnavailable as e:
        pytest.skip(f"postgresql unavailable: {e}")
    if done != "already installed":
        warnings.warn(f"tests/integration: {done}", stacklevel=1)
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    try:
        done = redis_installed(timeout=INSTALL_TIMEOUT)
    except RedisUnavailable as e:
        pytest.skip(f"redis-server unavailable: {e}")
    if done != "already installed":
        warnings.warn(f"tests/integration: redis {done}", stacklevel=1)
    with RedisServer() as server:
        yield server


def _closed_port() -> int:
    return free_port()  # nothing listens there once the probe socket is closed


def _sqlite(tmp_path: Path) -> Backend:
    path = str(tmp_path / "history.db")

    def corrupt(t: int, domain: str, text: str) -> None:
        with sqlite3.connect(path) as db:
            db.execute("INSERT INTO history (t, policy_domain, record) VALUES (?, ?, ?)", (t, domain, text))

    return Backend("sqlite", lambda: SqliteHistory(path), corrupt,
                   lambda: SqliteHistory(str(tmp_path / "missing" / "history.db")))


def _postgres(server: PostgresServer) -> Backend:
    prefix = f"t{uuid.uuid4().hex[:8]}_"  # fresh tables per test on the shared server

    def corrupt(t: int, domain: str, text: str) -> None:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute(f"INSERT INTO {prefix}history (t, policy_domain, record) VALUES (%s, %s, %s)",
                         (t, domain, text))

    return Backend("postgresql", lambda: PostgresHistory(server.dsn, table_prefix=prefix), corrupt,
                   lambda: PostgresHistory(f"host=127.0.0.1 port={_closed_port()} user=u password=s3cret",
                                           timeout=2.0))


def _redis(server: RedisServer) -> Backend:
    prefix = f"test-{uuid.uuid4().hex[:8]}:"

    def corrupt(t: int, domain: str, text: str) -> None:
        # The layout of store/history_redis.py: the line in the day's hash, its id in the sets.
        day = time.strftime("%Y-%m-%d", time.gmtime(t))
        rid = f"{t:012d}:corrupt{uuid.uuid4().hex[:6]}"
        server.command("HSET", f"{prefix}history:{day}:rec", rid, text)
        server.command("ZADD", f"{prefix}history:{day}:all", "0", rid)
        server.command("ZADD", f"{prefix}history:{day}:dom:{domain}", "0", rid)
        server.command("SADD", f"{prefix}history:{day}:domains", domain)
        server.command("ZADD", f"{prefix}history:days", str(t - t % DAY), day)

    return Backend("redis", lambda: RedisHistory(server.url, prefix=prefix), corrupt,
                   lambda: RedisHistory(f"redis://:s3cret@127.0.0.1:{_closed_port()}/0", timeout=0.5))


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The backend, with every store it opened closed at the end."""
    if request.param == "sqlite":
        made = _sqlite(tmp_path)
    elif request.param == "postgresql":
        made = _postgres(request.getfixturevalue("pg_server"))
    else:
        made = _redis(request.getfixturevalue("redis_server"))
    opened: list[HistoryStore] = []
    lock = threading.Lock()

    def open_() -> HistoryStore:
        store = made.open()
        with lock:
            opened.append(store)
        return store

    yield Backend(made.name, open_, made.corrupt, made.down)
    for store in opened:
        store.close()


@pytest.fixture
def store(backend: Backend) -> HistoryStore:
    return backend.open()


def race(n: int, stores: list[HistoryStore], call: Callable[[HistoryStore], bool]) -> list[bool]:
    """`call` on n threads, each with its own store (host), released at one instant."""
    barrier = threading.Barrier(n, timeout=WAIT)

    def one(s: HistoryStore) -> bool:
        barrier.wait()
        return call(s)

    with ThreadPoolExecutor(n) as pool:
        return [f.result(timeout=WAIT) for f in [pool.submit(one, s) for s in stores]]


# --- the behaviour every store has ---------------------------------------------------------------


def test_is_a_history_store(store: HistoryStore) -> None:
    assert isinstance(store, SqliteHistory | PostgresHistory | RedisHistory)


def test_round_trip_in_time_order(store: HistoryStore) -> None:
    # Out of order, across a day boundary, and two identical records in one second.
    batch = [rec(D0 + 30), rec(D0 + 10, qid="a"), rec(D0 - 1), rec(D0 + DAY, "example.org"),
             rec(D0 + 10, qid="a"), rec(D0 + DAY - 1, None)]
    store.append(batch)
    store.append([])
    store.append([rec(D0 + 20, dmarc="fail")])
    got = list(store.records(0, 2**40))
    assert [r.time for r in got] == [D0 - 1, D0 + 10, D0 + 10, D0 + 20, D0 + 30, D0 + DAY - 1, D0 + DAY]
    assert sorted(got, key=lambda r: (r.time, r.queue_id, r.dmarc)) == sorted(
        [*batch, rec(D0 + 20, dmarc="fail")], key=lambda r: (r.time, r.queue_id, r.dmarc))


def test_time_range_is_half_open(store: HistoryStore) -> None:
    store.append([rec(t) for t in (D0 - 1, D0, D0 + 5, D0 + DAY - 1, D0 + DAY, D0 + 2 * DAY)])
    assert [r.time for r in store.records(D0, D0 + DAY)] == [D0, D0 + 5, D0 + DAY - 1]
    assert [r.time for r in store.records(D0 + 5, D0 + DAY + 1)] == [D0 + 5, D0 + DAY - 1, D0 + DAY]
    assert [r.time for r in store.records(D0 + 1, D0 + 5)] == []
    assert list(store.records(D0 + 5, D0 + 5)) == []
    assert list(store.records(D0 + 10 * DAY, D0 + 11 * DAY)) == []


def test_per_domain_records_are_the_reportable_ones(store: HistoryStore) -> None:
    store.append([
        rec(D0 + 1, "example.com"),
        rec(D0 + 2, "Example.COM", dmarc="fail"),
        rec(D0 + 3, "example.com", dmarc="none"),  # not evaluated under the policy
        rec(D0 + 4, "example.com", dmarc="temperror"),
        rec(D0 + 5, None),  # no DMARC record
        rec(D0 + 6, "example.org"),
        rec(D0 + DAY + 7, "example.com"),
    ])
    assert [r.time for r in store.records(D0, D0 + 2 * DAY, "EXAMPLE.com")] == [D0 + 1, D0 + 2, D0 + DAY + 7]
    assert [r.time for r in store.records(D0, D0 + DAY, "example.com")] == [D0 + 1, D0 + 2]
    assert [r.time for r in store.records(D0, D0 + DAY, "example.org")] == [D0 + 6]
    assert list(store.records(D0, D0 + DAY, "example.net")) == []
    assert len(list(store.records(D0, D0 + 2 * DAY))) == 7


def test_policy_domains(store: HistoryStore) -> None:
    store.append([rec(D0 + 1, "b.example"), rec(D0 + 2, "A.example"), rec(D0 + 3, "b.example"),
                  rec(D0 + 4, "c.example", dmarc="none"), rec(D0 + 5, None),
                  rec(D0 + DAY + 1, "d.example")])
    assert store.policy_domains(D0, D0 + DAY) == ["a.example", "b.example"]
    assert store.policy_domains(D0 + 3, D0 + DAY + 2) == ["b.example", "d.example"]
    assert store.policy_domains(D0 + 4, D0 + DAY) == []
    assert store.policy_domains(0, 2**40) == ["a.example", "b.example", "d.example"]


def test_prune(store: HistoryStore) -> None:
    times = [D0 - DAY, D0 - 5, D0, D0 + 100, D0 + 200, D0 + DAY + 1]
    store.append([rec(t, "example.com" if i % 2 else "example.org") for i, t in enumerate(times)])
    assert store.prune(D0 - 2 * DAY) == 0
    assert store.prune(D0 + 150) == 4  # whole days and part of one
    assert [r.time for r in store.records(0, 2**40)] == [D0 + 200, D0 + DAY + 1]
    assert [r.time for r in store.records(0, 2**40, "example.org")] == [D0 + 200]
    assert store.policy_domains(0, D0 + DAY) == ["example.org"]
    assert store.prune(D0 + 150) == 0
    assert store.prune(2**40) == 2
    assert list(store.records(0, 2**40)) == []
    assert store.policy_domains(0, 2**40) == []


def test_claim_report_once(backend: Backend) -> None:
    a, b = backend.open(), backend.open()
    assert a.claim_report("Example.com", DAY0, "rid-1", D0 + DAY)
    assert not a.claim_report("example.com", DAY0, "rid-1", D0 + DAY)
    assert not b.claim_report("EXAMPLE.COM", DAY0, "rid-2", D0 + DAY + 5)  # another host
    assert b.claim_report("example.com", DAY1, "rid-3", D0 + 2 * DAY)
    assert b.claim_report("example.org", DAY0, "rid-4", D0 + DAY)
    assert a.reports(DAY0) == {"example.com": ("rid-1", "claimed"), "example.org": ("rid-4", "claimed")}
    assert a.reports("2025-12-31") == {}


def test_claim_report_race(backend: Backend) -> None:
    stores = [backend.open() for _ in range(8)]
    won = race(8, stores, lambda s: s.claim_report("example.com", DAY0, f"rid-{id(s)}", D0 + DAY))
    assert won.count(True) == 1
    winner = stores[won.index(True)]
    assert stores[0].reports(DAY0) == {"example.com": (f"rid-{id(winner)}", "claimed")}


def test_report_status(store: HistoryStore) -> None:
    store.claim_report("example.com", DAY0, "rid-1", D0 + DAY)
    store.set_report_status("Example.com", DAY0, "sent")
    store.set_report_status("example.org", DAY0, "sent")  # never claimed: nothing to update
    assert store.reports(DAY0) == {"example.com": ("rid-1", "sent")}
    store.set_report_status("example.com", DAY0, "failed: 451 try later")
    assert store.reports(DAY0) == {"example.com": ("rid-1", "failed: 451 try later")}
    assert not store.claim_report("example.com", DAY0, "rid-2", D0 + DAY)  # a failed one stays claimed


def test_destination_failures(backend: Backend) -> None:
    a, b = backend.open(), backend.open()
    uri, other = "mailto:dmarc@example.com", "mailto:dmarc@example.org"
    assert a.destination(uri) == (0, 0.0)
    a.record_delivery(uri, False, D0, D0 + 300.5)
    b.record_delivery(uri, False, D0 + 301, D0 + 900.25)
    assert a.destination(uri) == (2, D0 + 900.25)
    assert a.destination(other) == (0, 0.0)
    b.record_delivery(other, False, D0, D0 + 60)
    a.record_delivery(uri, True, D0 + 901, 0)
    assert b.destination(uri) == (0, 0.0)
    assert b.destination(other) == (1, D0 + 60.0)
    a.record_delivery(uri, False, D0 + 1000, D0 + 1300)
    assert a.destination(uri) == (1, D0 + 1300.0)


def test_lock_exclusive_expiring_and_held_by_its_holder(backend: Backend) -> None:
    a, b = backend.open(), backend.open()
    t = float(D0)
    assert a.acquire_lock("send", "host-a", 10, t)
    assert not b.acquire_lock("send", "host-b", 10, t + 1)
    assert b.acquire_lock("other", "host-b", 10, t + 1)  # locks are by name
    assert a.acquire_lock("send", "host-a", 10, t + 8)  # the holder extends: held until t + 18
    assert not b.acquire_lock("send", "host-b", 10, t + 12)
    b.release_lock("send", "host-b")  # not the holder: no effect
    assert not b.acquire_lock("send", "host-b", 10, t + 13)
    assert b.acquire_lock("send", "host-b", 10, t + 18.5)  # expired
    assert not a.acquire_lock("send", "host-a", 10, t + 19)
    a.release_lock("send", "host-a")  # no longer the holder
    assert not a.acquire_lock("send", "host-a", 10, t + 20)
    b.release_lock("send", "host-b")
    assert a.acquire_lock("send", "host-a", 10, t + 21)


def test_lock_race(backend: Backend) -> None:
    stores = [backend.open() for _ in range(8)]
    holders = {id(s): f"host-{i}" for i, s in enumerate(stores)}
    got = race(8, stores, lambda s: s.acquire_lock("send", holders[id(s)], 60, float(D0)))
    assert got.count(True) == 1


def test_corrupt_records_are_skipped(backend: Backend) -> None:
    store = backend.open()
    store.append([rec(D0 + 1), rec(D0 + 5)])
    backend.corrupt(D0 + 2, "example.com", "{not json")
    backend.corrupt(D0 + 3, "example.com", '{"v": 99, "t": 1}')  # a future version
    backend.corrupt(D0 + 4, "example.com", '{"v": 1}')  # fields missing
    assert [r.time for r in store.records(D0, D0 + DAY)] == [D0 + 1, D0 + 5]
    assert [r.time for r in store.records(D0, D0 + DAY, "example.com")] == [D0 + 1, D0 + 5]


def test_calls_between_records_are_not_rolled_back(backend: Backend) -> None:
    # A report claims and records deliveries while a (maybe abandoned) read is open.
    store = backend.open()
    store.append([rec(D0 + i) for i in range(5)])
    reading = store.records(D0, D0 + DAY)
    assert next(reading).time == D0
    assert store.claim_report("example.com", DAY0, "rid-1", D0 + DAY)
    store.record_delivery("mailto:a@example.com", False, D0, D0 + 60)
    assert [r.time for r in store.records(D0, D0 + DAY, "example.com")] == [D0 + i for i in range(5)]
    reading.close()  # type: ignore[attr-defined]
    other = backend.open()
    assert other.reports(DAY0) == {"example.com": ("rid-1", "claimed")}
    assert other.destination("mailto:a@example.com") == (1, D0 + 60.0)


def test_many_records_in_batches(store: HistoryStore) -> None:
    n = 5003  # more than two read batches of every store
    store.append([rec(D0 + i % 3600, "example.com" if i % 2 else "example.org") for i in range(n)])
    times = [r.time for r in store.records(D0, D0 + DAY)]
    assert len(times) == n
    assert times == sorted(times)
    assert sum(1 for _ in store.records(D0, D0 + DAY, "example.com")) == n // 2
    assert store.prune(D0 + DAY) == n


def test_threads_share_one_store(store: HistoryStore) -> None:
    # The milter's writer thread appends while the CLI's reads and claims run elsewhere.
    def work(i: int) -> bool:
        store.append([rec(D0 + i)])
        return store.claim_report(f"d{i}.example", DAY0, "rid", D0 + DAY)

    with ThreadPoolExecutor(4) as pool:
        assert all(f.result(timeout=WAIT) for f in [pool.submit(work, i) for i in range(16)])
    assert len(list(store.records(D0, D0 + DAY))) == 16
    assert len(store.reports(DAY0)) == 16


def test_store_down_is_a_store_error(backend: Backend) -> None:
    with pytest.raises(StoreError) as raised:
        store = backend.down()
        store.append([rec(D0)])
        list(store.records(0, 2**40))
    assert "s3cret" not in str(raised.value)
    assert backend.name in str(raised.value) or "history" in str(raised.value)


# --- what only the shared stores have -----------------------------------------------------------


def test_postgres_schema_created_by_several_hosts_at_once(pg_server: PostgresServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    barrier = threading.Barrier(6, timeout=WAIT)

    def open_one() -> PostgresHistory:
        barrier.wait()
        return PostgresHistory(pg_server.dsn, table_prefix=prefix)

    with ThreadPoolExecutor(6) as pool:
        stores = [f.result(timeout=WAIT) for f in [pool.submit(open_one) for _ in range(6)]]
    stores[0].append([rec(D0)])
    assert [r.time for r in stores[5].records(0, 2**40)] == [D0]
    for s in stores:
        s.close()


def test_postgres_reads_with_a_server_side_cursor(pg_server: PostgresServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    store = PostgresHistory(pg_server.dsn, table_prefix=prefix)
    store.append([rec(D0 + i % 100) for i in range(4500)])
    reading = store.records(D0, D0 + DAY)
    next(reading)
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        queries = [str(q) for (q,) in conn.execute(
            "SELECT query FROM pg_stat_activity WHERE application_name = 'authmilter'"
            " AND state = 'idle in transaction'")]
    assert any(q.startswith("FETCH FORWARD 2000") for q in queries), queries
    assert sum(1 for _ in reading) == 4499
    store.close()


def test_postgres_bad_prefix_and_password_not_shown(pg_server: PostgresServer) -> None:
    with pytest.raises(ValueError):
        PostgresHistory(pg_server.dsn, table_prefix="x; DROP TABLE y")
    with pytest.raises(StoreError) as raised:
        PostgresHistory("postgresql://u:s3cret@127.0.0.1:notaport/db")
    assert "s3cret" not in str(raised.value)
    with pytest.raises(StoreError) as raised:
        PostgresHistory(f"host=127.0.0.1 port={pg_server.port} user=nobody password=s3cret dbname=nodb")
    assert "s3cret" not in str(raised.value)
    assert "postgresql" in str(raised.value)


def test_postgres_down_then_back() -> None:
    with PostgresServer() as server:
        store = PostgresHistory(server.dsn, timeout=2.0)
        store.append([rec(D0)])
        port = server.port
        server.stop(keep_dir=True)
        with pytest.raises(StoreError, match="history postgresql"):
            store.append([rec(D0 + 1)])
        with pytest.raises(StoreError):
            list(store.records(0, 2**40))
        server.start(port)
        store.append([rec(D0 + 2)])  # a new connection, the broken one thrown away
        assert [r.time for r in store.records(0, 2**40)] == [D0, D0 + 2]
        store.close()


def test_redis_down_then_back(redis_server: RedisServer) -> None:
    with RedisServer() as server:
        store = RedisHistory(server.url, prefix="t:", timeout=0.5)
        store.append([rec(D0)])
        port = server.port
        server.stop(keep_dir=True)
        with pytest.raises(StoreError, match="history redis"):
            store.append([rec(D0 + 1)])
        with pytest.raises(StoreError):
            store.acquire_lock("send", "a", 10, D0)
        server.start(port)
        store.append([rec(D0 + 2)])
        assert [r.time for r in store.records(0, 2**40)] == [D0 + 2]  # no persistence: D0 went
        store.close()


def test_redis_expiry_net(redis_server: RedisServer) -> None:
    now = int(time.time())
    store = RedisHistory(redis_server.url, prefix=f"test-{uuid.uuid4().hex[:8]}:", expire_days=2)
    store.append([rec(now)])
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    ttl = int(redis_server.command("TTL", f"{store.prefix}history:{day}:rec"))
    assert 2 * DAY < ttl <= 3 * DAY
    assert int(redis_server.command("TTL", f"{store.prefix}history:days")) == -1  # the index stays
    store.close()


def test_redis_password_file(redis_server: RedisServer, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="missing"):
        RedisHistory(redis_server.url, password_file=str(tmp_path / "missing"))
    with pytest.raises(ValueError):
        RedisHistory("")
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text("s3cret\n")
    wrong.write_text("n0tit\n")
    with RedisServer() as server:
        server.command("CONFIG", "SET", "requirepass", "s3cret")
        store = RedisHistory(server.url, password_file=str(right))
        store.append([rec(D0)])
        assert [r.time for r in store.records(0, 2**40)] == [D0]
        store.close()
        store = RedisHistory(server.url, password_file=str(wrong))
        with pytest.raises(StoreError) as raised:
            store.append([rec(D0)])
        assert "n0tit" not in str(raised.value)


def test_redis_through_sentinel(redis_server: RedisServer) -> None:
    try:
        redis_installed(sentinel=True, timeout=INSTALL_TIMEOUT)
    except RedisUnavailable as e:
        pytest.skip(f"redis-sentinel unavailable: {e}")
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    with RedisSentinel(redis_server) as sentinel:
        via = RedisHistory(sentinels=[("127.0.0.1", sentinel.port)], service=sentinel.service,
                           prefix=prefix, timeout=2.0)
        via.append([rec(D0)])
        assert via.claim_report("example.com", DAY0, "rid", D0 + DAY)
        direct = RedisHistory(redis_server.url, prefix=prefix)
        assert [r.time for r in direct.records(0, 2**40)] == [D0]
        assert not direct.claim_report("example.com", DAY0, "rid-2", D0 + DAY)
        via.close()
        direct.close()
    with pytest.raises(ValueError):
        RedisHistory(sentinels=[("127.0.0.1", 1)])  # no service


def test_same_records_in_every_store(tmp_path: Path, pg_server: PostgresServer,
                                     redis_server: RedisServer) -> None:
    batch = [replace(rec(D0 + i, "example.com" if i % 3 else None), queue_id=f"q{i}") for i in range(30)]
    answers = []
    for made in (_sqlite(tmp_path), _postgres(pg_server), _redis(redis_server)):
        store = made.open()
        store.append(batch)
        answers.append((list(store.records(D0, D0 + DAY)), list(store.records(D0, D0 + DAY, "example.com")),
                        store.policy_domains(D0, D0 + DAY)))
        store.close()
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][0] == batch
