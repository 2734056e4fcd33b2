"""The store the milter uses: opened on first use in each process, and watched for outages.

A store that is down must cost the mail flow nothing but the configured fail-open or fail-closed
answer (the checks turn a StoreError into that), and the operator one log line per outage, not
one per message: the first failure is logged with its reason, the recovery with how long the
outage lasted and how many operations failed in it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from authmilter.core.stateapi import GreyState, RateState, StateStore, StoreError

log = logging.getLogger("authmilter")


class WatchedStore:
    """A `StateStore` that opens the real one lazily (again after fork) and logs outages once."""

    def __init__(self, opener: Callable[[], StateStore], describe: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._opener = opener
        self.describe = describe
        self._clock = clock
        self._lock = threading.Lock()
        self._store: StateStore | None = None
        self._pid = 0
        self._down_since: float | None = None
        self._failed = 0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def _current(self) -> StateStore:
        with self._lock:
            if self._store is None or self._pid != os.getpid():
                self._store = self._opener()
                self._pid = os.getpid()
            return self._store

    @contextmanager
    def _watch(self) -> Iterator[None]:
        try:
            try:
                yield
            except StoreError:
                raise
            except (ValueError, TypeError):
                raise  # a caller's nonsense argument, not an outage
            except Exception as e:
                # Whatever else a store library raises (a bug, an odd server reply) is an outage
                # for the message at hand, never an exception out of the check.
                raise StoreError(f"{type(e).__name__}: {e}") from e
        except StoreError as e:
            with self._lock:
                self._failed += 1
                first = self._down_since is None
                if first:
                    self._down_since = self._clock()
            if first:
                log.error("state store %s unavailable: %s; until it is back, greylisting and rate "
                          "limits follow store.on_error", self.describe, e)
            raise
        else:
            with self._lock:
                since, failed = self._down_since, self._failed
                self._down_since, self._failed = None, 0
            if since is not None:
                log.warning("state store %s is back after %.1f s; %d operations failed meanwhile",
                            self.describe, self._clock() - since, failed)

    def greylist(self, key: str, now: float, delay: float, retry_window: float,
                 lifetime: float) -> GreyState:
        with self._watch():
            return self._current().greylist(key, now, delay, retry_window, lifetime)

    def take_tokens(self, key: str, now: float, rate_per_s: float, burst: float,
                    cost: float = 1.0) -> RateState:
        with self._watch():
            return self._current().take_tokens(key, now, rate_per_s, burst, cost)

    def count(self, key: str, now: float, add: int, lifetime: float) -> int:
        with self._watch():
            return self._current().count(key, now, add, lifetime)

    def close(self) -> None:
        with self._lock:
            store, self._store = self._store, None
        if store is not None and self._pid == os.getpid():
            try:
                store.close()
            except StoreError as e:
                log.warning("state store %s: closing: %s", self.describe, e)
