"""The SQLite state store: greylisting and token buckets, several processes on one file, errors.

`StoreBehaviour` is what every store must do; tests/integration/test_store_redis.py runs the
same class against a real Redis.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from authmilter.store.base import GREY_REFRESH, GreyState, RateState, StateStore, StoreError
from authmilter.store.sqlite import SqliteStore

T0 = 1_800_000_000.0  # "now" of the first attempt; time is stepped by hand
DELAY, WINDOW, LIFE = 300.0, 4 * 3600.0, 36 * 86400.0


class StoreBehaviour:
    """Subclasses provide a `store` fixture (a fresh, empty store)."""

    def grey(self, store: StateStore, at: float, key: str = "t1") -> GreyState:
        return store.greylist(key, T0 + at, DELAY, WINDOW, LIFE)

    # --- greylisting ---

    def test_first_attempt_is_new(self, store: StateStore) -> None:
        assert self.grey(store, 0) == GreyState("new", T0, 0)

    def test_retry_before_delay_is_early_and_keeps_first_seen(self, store: StateStore) -> None:
        self.grey(store, 0)
        assert self.grey(store, 10) == GreyState("early", T0, 0)
        assert self.grey(store, DELAY - 0.5) == GreyState("early", T0, 0)
        assert not self.grey(store, DELAY - 0.1).passed

    def test_retry_after_delay_passes(self, store: StateStore) -> None:
        self.grey(store, 0)
        state = self.grey(store, DELAY)
        assert state == GreyState("passed", T0, 1)
        assert state.passed

    def test_retry_at_window_end_still_passes(self, store: StateStore) -> None:
        self.grey(store, 0)
        assert self.grey(store, WINDOW).state == "passed"

    def test_retry_after_window_restarts(self, store: StateStore) -> None:
        self.grey(store, 0)
        assert self.grey(store, WINDOW + 1) == GreyState("expired-restart", T0 + WINDOW + 1, 0)
        # the restarted record runs its own delay from the restart
        assert self.grey(store, WINDOW + 2).state == "early"
        assert self.grey(store, WINDOW + 1 + DELAY) == GreyState("passed", T0 + WINDOW + 1, 1)

    def test_passes_count_and_outlive_the_window(self, store: StateStore) -> None:
        self.grey(store, 0)
        for n, at in enumerate((DELAY, WINDOW * 3, 20 * 86400.0), start=1):
            assert self.grey(store, at) == GreyState("passed", T0, n)

    def test_a_pass_repeated_within_the_refresh_is_not_written(self, store: StateStore) -> None:
        self.grey(store, 0)
        assert self.grey(store, DELAY) == GreyState("passed", T0, 1)
        # Within an hour of the last pass written, a pass is answered from the record as it is.
        for at in (DELAY + 1, DELAY + 1800, DELAY + GREY_REFRESH - 1):
            assert self.grey(store, at) == GreyState("passed", T0, 1)
        assert self.grey(store, DELAY + GREY_REFRESH) == GreyState("passed", T0, 2)
        assert self.grey(store, DELAY + GREY_REFRESH + 60) == GreyState("passed", T0, 2)
        # The lifetime runs from the last pass written: the unwritten ones did not extend it.
        assert self.grey(store, DELAY + GREY_REFRESH + LIFE).state == "new"

    def test_a_short_lifetime_refreshes_sooner(self, store: StateStore) -> None:
        life = 3000.0  # a hundredth of it, 30 s, is below the hour
        store.greylist("s", T0, DELAY, 1000.0, life)
        assert store.greylist("s", T0 + DELAY, DELAY, 1000.0, life).passes == 1
        assert store.greylist("s", T0 + DELAY + 29, DELAY, 1000.0, life).passes == 1
        assert store.greylist("s", T0 + DELAY + 30, DELAY, 1000.0, life).passes == 2

    def test_a_lifetime_shortened_since_the_last_write_writes_again(self, store: StateStore) -> None:
        self.grey(store, 0)
        self.grey(store, DELAY)
        shorter = LIFE / 2  # the record's expiry now lies further off than a new write's would
        state = store.greylist("t1", T0 + DELAY + 10, DELAY, WINDOW, shorter)
        assert state == GreyState("passed", T0, 2)
        assert store.greylist("t1", T0 + DELAY + 10 + shorter, DELAY, WINDOW, shorter).state == "new"

    def test_record_expires_after_lifetime_of_silence(self, store: StateStore) -> None:
        self.grey(store, 0)
        self.grey(store, DELAY)
        assert self.grey(store, DELAY + LIFE - 1).state == "passed"  # sliding lifetime
        assert self.grey(store, DELAY + 2 * LIFE) == GreyState("new", T0 + DELAY + 2 * LIFE, 0)

    def test_keys_are_independent(self, store: StateStore) -> None:
        self.grey(store, 0, "a")
        assert self.grey(store, DELAY, "b").state == "new"
        assert self.grey(store, DELAY, "a").state == "passed"

    def test_fractional_times_survive(self, store: StateStore) -> None:
        now = T0 + 0.123456789
        assert store.greylist("f", now, DELAY, WINDOW, LIFE).first_seen == now
        assert store.greylist("f", now + 1, DELAY, WINDOW, LIFE).first_seen == now

    def test_nonsense_greylist_arguments(self, store: StateStore) -> None:
        with pytest.raises(ValueError):
            store.greylist("x", T0, WINDOW + 1, WINDOW, LIFE)
        with pytest.raises(ValueError):
            store.greylist("x", T0, -1, WINDOW, LIFE)

    # --- token buckets ---

    def test_bucket_starts_full_and_denies_when_empty(self, store: StateStore) -> None:
        states = [store.take_tokens("r", T0, 1.0, 3.0) for _ in range(4)]
        assert [s.allowed for s in states] == [True, True, True, False]
        assert states[2] == RateState(True, 0.0, 0.0)
        assert states[3].tokens_left == 0.0
        assert states[3].retry_after == pytest.approx(1.0)

    def test_bucket_refills_at_rate_up_to_burst(self, store: StateStore) -> None:
        for _ in range(3):
            store.take_tokens("r", T0, 0.5, 3.0)
        assert not store.take_tokens("r", T0 + 1, 0.5, 3.0).allowed  # 0.5 tokens
        state = store.take_tokens("r", T0 + 2, 0.5, 3.0)  # 1.0 token: taken
        assert state.allowed and state.tokens_left == pytest.approx(0.0)
        full = store.take_tokens("r", T0 + 1000, 0.5, 3.0)
        assert full.allowed and full.tokens_left == pytest.approx(2.0)

    def test_retry_after_is_when_cost_is_there(self, store: StateStore) -> None:
        store.take_tokens("r", T0, 2.0, 10.0, cost=9.0)  # 1 left
        denied = store.take_tokens("r", T0, 2.0, 10.0, cost=5.0)
        assert not denied.allowed
        assert denied.retry_after == pytest.approx(2.0)  # 4 more tokens at 2/s
        assert not store.take_tokens("r", T0 + denied.retry_after - 0.01, 2.0, 10.0, cost=5.0).allowed
        assert store.take_tokens("r", T0 + denied.retry_after + 0.01, 2.0, 10.0, cost=5.0).allowed

    def test_cost_above_burst_never_allowed(self, store: StateStore) -> None:
        state = store.take_tokens("r", T0, 1.0, 5.0, cost=6.0)
        assert not state.allowed and math.isinf(state.retry_after)
        assert store.take_tokens("r", T0, 1.0, 5.0, cost=5.0).allowed  # nothing was taken

    def test_clock_going_back_does_not_refill(self, store: StateStore) -> None:
        store.take_tokens("r", T0, 1.0, 1.0)
        assert not store.take_tokens("r", T0 - 100, 1.0, 1.0).allowed

    def test_buckets_are_independent_of_greylisting(self, store: StateStore) -> None:
        store.take_tokens("k", T0, 1.0, 1.0)
        assert self.grey(store, 0, "k").state == "new"
        assert not store.take_tokens("k", T0, 1.0, 1.0).allowed

    def test_nonsense_rate_arguments(self, store: StateStore) -> None:
        for rate, burst, cost in ((0.0, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, -1.0), (math.nan, 1.0, 1.0)):
            with pytest.raises(ValueError):
                store.take_tokens("x", T0, rate, burst, cost)

    # --- counters ---

    def test_counter_starts_at_zero_and_counts(self, store: StateStore) -> None:
        assert store.count("c", T0, 0, LIFE) == 0
        assert store.count("c", T0, 1, LIFE) == 1
        assert store.count("c", T0 + 1, 2, LIFE) == 3
        assert store.count("c", T0 + 2, 0, LIFE) == 3

    def test_reading_a_counter_does_not_renew_it(self, store: StateStore) -> None:
        store.count("c", T0, 1, 100.0)
        assert store.count("c", T0 + 99, 0, 100.0) == 1
        assert store.count("c", T0 + 100, 0, 100.0) == 0

    def test_counting_renews_the_lifetime(self, store: StateStore) -> None:
        store.count("c", T0, 1, 100.0)
        store.count("c", T0 + 90, 1, 100.0)
        assert store.count("c", T0 + 150, 0, 100.0) == 2
        assert store.count("c", T0 + 190, 1, 100.0) == 1  # expired at 190: starts again

    def test_counters_are_their_own_keys(self, store: StateStore) -> None:
        store.count("k", T0, 5, LIFE)
        assert self.grey(store, 0, "k").state == "new"
        assert store.count("other", T0, 0, LIFE) == 0

    def test_nonsense_count_arguments(self, store: StateStore) -> None:
        for add, life in ((-1, LIFE), (1, 0.0), (1, math.inf)):
            with pytest.raises(ValueError):
                store.count("x", T0, add, life)


class TestSqliteBehaviour(StoreBehaviour):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SqliteStore]:
        store = SqliteStore(tmp_path / "state.db")
        yield store
        store.close()


def test_is_a_state_store(tmp_path: Path) -> None:
    store: StateStore = SqliteStore(tmp_path / "s.db")
    store.close()


def test_wal_mode_and_state_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    store.greylist("k", T0, DELAY, WINDOW, LIFE)
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again = SqliteStore(path)
    assert again.greylist("k", T0 + DELAY, DELAY, WINDOW, LIFE).state == "passed"
    again.close()


def test_expired_rows_are_purged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import authmilter.store.sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "PURGE_EVERY", 10)
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    for i in range(5):
        store.greylist(f"old{i}", T0, DELAY, WINDOW, LIFE)
        store.take_tokens(f"old{i}", T0, 1.0, 1.0)
    late = T0 + 2 * LIFE
    for i in range(10):  # the 20th operation purges what expired by `late`
        store.take_tokens(f"new{i}", late, 1.0, 5.0)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM greylist").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM buckets").fetchone()[0] == 10
    store.greylist("live", late, DELAY, WINDOW, LIFE)
    store.purge_expired(late + LIFE)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM greylist").fetchone()[0] == 0
    store.close()


# --- several processes, one file ---

ROUNDS = 200


def _hammer(path: str, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue[object]) -> None:
    try:
        store = SqliteStore(path, timeout=30.0)
        start.wait(10)
        allowed = passes = 0
        for _ in range(ROUNDS):
            # far more requests than tokens: only the bucket's total may be allowed across processes
            allowed += store.take_tokens("shared", T0, 1e-9, 150.0).allowed
            passes += store.greylist("triplet", T0 + DELAY, DELAY, WINDOW, LIFE).state == "passed"
        store.close()
        out.put((allowed, passes))
    except BaseException as e:  # reported to the test, not lost in a child
        out.put(repr(e))


def test_processes_sharing_one_file_count_consistently(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import authmilter.store.base as base

    monkeypatch.setattr(base, "GREY_REFRESH", 0.0)  # every pass written, inherited by the children
    path = tmp_path / "shared.db"
    store = SqliteStore(path)
    store.greylist("triplet", T0, DELAY, WINDOW, LIFE)  # created before the workers retry it
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    out: multiprocessing.Queue[object] = ctx.Queue()
    workers = [ctx.Process(target=_hammer, args=(str(path), start, out)) for _ in range(4)]
    for w in workers:
        w.start()
    start.set()
    results = [out.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(10)
    assert all(isinstance(r, tuple) for r in results), results
    counts = [r for r in results if isinstance(r, tuple)]
    assert sum(a for a, _ in counts) == 150  # exactly the burst, never more, never less
    assert sum(p for _, p in counts) == 4 * ROUNDS
    last = store.greylist("triplet", T0 + DELAY, DELAY, WINDOW, LIFE)
    assert last == GreyState("passed", T0, 4 * ROUNDS + 1)  # no increment lost
    store.close()


def test_connection_is_reopened_after_fork(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")  # opened in the parent, used in the children
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[object] = ctx.Queue()

    def child() -> None:
        out.put(store.take_tokens("k", T0, 1e-9, 2.0).allowed)

    procs = [ctx.Process(target=child) for _ in range(3)]
    for p in procs:
        p.start()
    got = sorted(bool(out.get(timeout=30)) for _ in procs)
    for p in procs:
        p.join(10)
    assert got == [False, True, True]
    store.close()


# --- errors ---

def test_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unable to open"):
        SqliteStore(tmp_path)


def test_parent_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError):
        SqliteStore(tmp_path / "file" / "s.db")


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database, " * 200)
    with pytest.raises(StoreError, match="not a database"):
        SqliteStore(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files anyway")
def test_unwritable_file(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqliteStore(path).close()
    for p in tmp_path.iterdir():
        p.chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(StoreError):
            SqliteStore(path).greylist("k", T0, DELAY, WINDOW, LIFE)
    finally:
        tmp_path.chmod(0o755)


def test_read_only_database_raises_store_error(tmp_path: Path) -> None:
    # What an unwritable file looks like to SQLite, even for root: opened read-only.
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    store.greylist("k", T0, DELAY, WINDOW, LIFE)
    store.close()
    store = SqliteStore(path)
    assert store._conn is not None
    store._conn.close()
    store._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                  check_same_thread=False)
    with pytest.raises(StoreError, match="readonly"):
        store.greylist("k2", T0, DELAY, WINDOW, LIFE)
    store.close()


def test_full_database(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    assert store._conn is not None
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StoreError, match="full"):
        for i in range(10_000):
            store.greylist(f"key-{i:05d}-" + "x" * 200, T0, DELAY, WINDOW, LIFE)
    store.close()


def test_locked_beyond_timeout(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path, timeout=0.2)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="locked"):
            store.take_tokens("k", T0, 1.0, 1.0)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.take_tokens("k", T0, 1.0, 1.0).allowed  # and fine once the lock is gone
    store.close()


def test_an_attempt_that_changes_nothing_needs_no_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path, timeout=0.2)
    store.greylist("passed", T0, DELAY, WINDOW, LIFE)
    store.greylist("passed", T0 + DELAY, DELAY, WINDOW, LIFE)
    store.greylist("waiting", T0, DELAY, WINDOW, LIFE)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another worker in the middle of a write
    try:
        assert store.greylist("passed", T0 + DELAY + 60, DELAY, WINDOW, LIFE) == GreyState("passed", T0, 1)
        assert store.greylist("waiting", T0 + 60, DELAY, WINDOW, LIFE) == GreyState("early", T0, 0)
        with pytest.raises(StoreError, match="locked"):  # a pass that must be written waits
            store.greylist("passed", T0 + DELAY + GREY_REFRESH, DELAY, WINDOW, LIFE)
        with pytest.raises(StoreError, match="locked"):  # and so does a new triplet
            store.greylist("new", T0, DELAY, WINDOW, LIFE)
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.close()


def test_a_pass_is_remembered_until_its_refresh(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    store.greylist("t", T0, DELAY, WINDOW, LIFE)
    store.greylist("t", T0 + DELAY, DELAY, WINDOW, LIFE)
    with sqlite3.connect(path) as conn:  # the row goes behind the store's back
        conn.execute("DELETE FROM greylist")
    # Within the refresh the pass is answered from memory, without the file ...
    assert store.greylist("t", T0 + DELAY + 60, DELAY, WINDOW, LIFE) == GreyState("passed", T0, 1)
    # ... and once it is due, from the file again, which now knows nothing of it.
    assert store.greylist("t", T0 + DELAY + GREY_REFRESH, DELAY, WINDOW, LIFE).state == "new"
    assert store.greylist("t", T0 + DELAY + GREY_REFRESH + 60, DELAY, WINDOW, LIFE).state == "early"
    store.close()


def test_a_pass_another_process_wrote_is_remembered_once_read(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store, other = SqliteStore(path), SqliteStore(path)
    other.greylist("t", T0, DELAY, WINDOW, LIFE)
    assert store.greylist("t", T0 + 10, DELAY, WINDOW, LIFE).state == "early"  # not remembered
    other.greylist("t", T0 + DELAY, DELAY, WINDOW, LIFE)
    assert store.greylist("t", T0 + DELAY + 1, DELAY, WINDOW, LIFE) == GreyState("passed", T0, 1)
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM greylist")
    assert store.greylist("t", T0 + DELAY + 2, DELAY, WINDOW, LIFE).passed
    other.close()
    store.close()


def test_what_is_remembered_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import authmilter.store.sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "PASSES_KEPT", 3)
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    for n in range(5):
        store.greylist(f"k{n}", T0, DELAY, WINDOW, LIFE)
        store.greylist(f"k{n}", T0 + DELAY, DELAY, WINDOW, LIFE)
        assert len(store._passes) <= 3
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM greylist")
    # k4 is remembered; k0 was let go when the memory filled, and is asked of the file.
    assert store.greylist("k4", T0 + DELAY + 1, DELAY, WINDOW, LIFE).passed
    assert store.greylist("k0", T0 + DELAY + 1, DELAY, WINDOW, LIFE).state == "new"
    store.close()


def test_a_write_between_the_read_and_the_lock_is_seen(tmp_path: Path) -> None:
    """The read outside the transaction is only a shortcut: what is written is decided on the
    record as it is under the lock."""
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    store.greylist("t", T0, DELAY, WINDOW, LIFE)
    other = SqliteStore(path)
    # Both read "never passed"; the first to take the lock writes the first pass.
    assert other.greylist("t", T0 + DELAY, DELAY, WINDOW, LIFE) == GreyState("passed", T0, 1)
    assert store.greylist("t", T0 + DELAY + GREY_REFRESH, DELAY, WINDOW, LIFE) == GreyState("passed", T0, 2)
    other.close()
    store.close()


def test_threads_sharing_one_store(tmp_path: Path) -> None:
    import threading

    store = SqliteStore(tmp_path / "s.db")
    store.greylist("t", T0, DELAY, WINDOW, LIFE)
    allowed: list[bool] = []

    def work() -> None:
        for _ in range(50):
            allowed.append(store.take_tokens("r", T0, 1e-9, 60.0).allowed)
            store.greylist("t", T0 + DELAY, DELAY, WINDOW, LIFE)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(allowed) == 60
    # The first pass is written once, by whichever thread came first; the 199 after it, and this
    # one, fall within the refresh and leave it as it is.
    assert store.greylist("t", T0 + DELAY, DELAY, WINDOW, LIFE).passes == 1
    store.close()
