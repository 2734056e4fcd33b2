"""The history writer: never blocks the caller, drops and counts what it cannot keep, logs an
outage once and its end once."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from authmilter.reports.writer import HistoryWriter
from authmilter.store.base import StoreError
from authmilter.store.history import HistoryStore, SqliteHistory
from tests.unit.test_report_send import record


def test_outage_is_logged_once_and_writing_resumes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    attempts = []

    def opener() -> HistoryStore:
        attempts.append(1)
        if len(attempts) <= 2:
            raise StoreError("disk gone")
        return SqliteHistory(str(tmp_path / "h.db"))

    w = HistoryWriter(opener, "test", queue_size=100, retention_days=35)
    caplog.set_level(logging.INFO, "authmilter.history")
    for i in range(3):
        w.submit(record("a.example", (), t=1000 + i))
        assert w.flush(5)
    # The first record met the outage (the hourly prune took the second failed open).
    assert w.lost == 1 and w.written == 2
    assert sum("cannot write" in r.message for r in caplog.records) == 1
    assert any("writing again" in r.message and "1 records were lost" in r.message for r in caplog.records)
    assert [r.time for r in SqliteHistory(str(tmp_path / "h.db")).records(0, 10**10)] == [1001, 1002]


def test_a_full_queue_drops_without_waiting(tmp_path: Path) -> None:
    def slow() -> HistoryStore:
        time.sleep(1.0)  # the writer is stuck opening its store
        return SqliteHistory(str(tmp_path / "h.db"))

    w = HistoryWriter(slow, "test", queue_size=5, retention_days=35)
    t0 = time.monotonic()
    for i in range(50):
        w.submit(record("a.example", (), t=i))
    assert time.monotonic() - t0 < 0.5
    assert w.dropped >= 40
    assert w.flush(10)
    assert w.written + w.dropped == 50
