"""Writing the history off the SMTP path.

The milter hands each record to `HistoryWriter.submit`, which only puts it on a bounded queue:
a slow, full or broken history store must never delay or fail mail. One thread per process
takes the records off in batches (one transaction for up to `BATCH` records) and prunes what is
older than the retention once an hour. When the queue is full the record is dropped and
counted; when the store fails, the batch is dropped, and the outage is logged once, with the
count of records lost when it ends.

The thread is started lazily, per process: worker processes are forked from the supervisor, and
a thread does not survive fork.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable

from authmilter.core.history import HistoryRecord
from authmilter.store.base import StoreError
from authmilter.store.history import HistoryStore

log = logging.getLogger("authmilter.history")

BATCH = 500
INTERVAL = 0.25  # seconds between writes: records reach the store this late at most (plus the write)
PRUNE_EVERY = 3600.0


class HistoryWriter:
    def __init__(self, open_store: Callable[[], HistoryStore], describe: str, *, queue_size: int,
                 retention_days: int) -> None:
        self._open = open_store
        self.describe = describe
        self._size = queue_size
        self._retention = retention_days * 86400
        self._lock = threading.Lock()
        self._pid = 0
        # A deque, not a queue.Queue: append and popleft are atomic under the GIL, and the
        # milter's threads then pay no lock or condition per message.
        self._queue: collections.deque[HistoryRecord] = collections.deque()
        self._busy = False  # a batch is taken off the queue and not yet written
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0  # queue full
        self.lost = 0  # the store failed
        self._down_since: float | None = None
        self._lost_in_outage = 0
        self._next_prune = 0.0

    def submit(self, record: HistoryRecord) -> None:
        """Queue one record; never blocks, never raises."""
        try:
            if self._pid != os.getpid():
                self._start()
            if len(self._queue) < self._size:
                self._queue.append(record)
                return
            self.dropped += 1
            if self.dropped in (1, 10, 100, 1000) or self.dropped % 10000 == 0:
                log.warning("history %s: queue full (%d records), %d records dropped so far",
                            self.describe, self._size, self.dropped)
        except Exception:
            log.exception("history: record not queued")

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            # A forked child inherits the parent's queue object and no thread: start afresh.
            self._pid = os.getpid()
            self._queue = collections.deque()
            self._busy = False
            self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
            self._thread.start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the queue is written (for shutdown and tests); False on timeout."""
        if self._thread is None or self._pid != os.getpid():
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._queue and not self._busy:
                return True
            time.sleep(0.01)
        return False

    def _run(self) -> None:
        store: HistoryStore | None = None
        while True:
            # Woken by the clock, not by each record: a thread blocked in get() would be woken
            # (and take the GIL from the milter's threads) once per message.
            time.sleep(INTERVAL)
            while self._queue:
                store = self._write_batch(store)
            store = self._maybe_prune(store)

    def _write_batch(self, store: HistoryStore | None) -> HistoryStore | None:
        self._busy = True
        batch: list[HistoryRecord] = []
        try:
            while len(batch) < BATCH:
                batch.append(self._queue.popleft())
        except IndexError:
            pass
        try:
            if store is None:
                store = self._open()
            store.append(batch)
            self.written += len(batch)
            self._recovered()
        except (StoreError, OSError) as exc:
            self._failed(str(exc), len(batch))
            store = self._reset(store)
        except Exception:
            log.exception("history %s: write failed", self.describe)
            self._failed("unexpected error", len(batch))
            store = self._reset(store)
        finally:
            self._busy = False
        return store

    def _maybe_prune(self, store: HistoryStore | None) -> HistoryStore | None:
        now = time.time()
        if now < self._next_prune:
            return store
        self._next_prune = now + PRUNE_EVERY
        try:
            if store is None:
                store = self._open()
            removed = store.prune(int(now) - self._retention)
            if removed:
                log.info("history %s: %d records older than %d days removed", self.describe,
                         removed, self._retention // 86400)
        except Exception as exc:
            log.warning("history %s: prune failed: %s", self.describe, exc)
            return self._reset(store)
        return store

    def _failed(self, why: str, count: int) -> None:
        self.lost += count
        self._lost_in_outage += count
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.error("history %s: cannot write (%s); records are dropped until it works again; "
                      "mail is not affected", self.describe, why)

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.warning("history %s: writing again after %.0f s; %d records were lost",
                        self.describe, time.monotonic() - self._down_since, self._lost_in_outage)
            self._down_since = None
            self._lost_in_outage = 0

    @staticmethod
    def _reset(store: HistoryStore | None) -> None:
        if store is not None:
            try:
                store.close()
            except Exception:
                log.debug("history: close failed", exc_info=True)
        return None
