"""What `serve` and `check` share: the loaded config and policy, the one resolver, the evaluation.

`AppHolder` is how reload works. Each SMTP transaction takes the current `App` when it starts and
keeps it to the end, so a reload never changes the rules under a message in flight; a new set is
built completely, and only a set that loaded without a single problem replaces the old one.
"""

from __future__ import annotations

import logging
import os
import pwd
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from authmilter.core.checks.dnslists import DnsList, self_test
from authmilter.core.decision import EMPTY_POLICY, Policy, Stage
from authmilter.core.evaluate import (
    NOTHING_KNOWN,
    EvalSettings,
    early_verdict,
    evaluate,
    evaluate_transaction,
)
from authmilter.core.model import EarlyResults, Transaction, Verdict
from authmilter.core.signing.dkim import EMPTY_SIGNING, SigningConfig
from authmilter.core.stateapi import StateStore, StoreError
from authmilter.dns import DnsCache, DnsResolver
from authmilter.files.config import (
    Config,
    ConfigError,
    HistorySettings,
    StoreSettings,
    default_authserv_id,
    load_config,
)
from authmilter.files.policy import PolicyError, load_policy
from authmilter.files.signing import SigningError, load_signing
from authmilter.observe.metrics import HistoryCounts, Metrics
from authmilter.reports.failure_sender import FailureSender
from authmilter.reports.writer import HistoryWriter
from authmilter.store.history import HistoryStore
from authmilter.store.watch import WatchedStore

log = logging.getLogger("authmilter")


@dataclass(frozen=True)
class App:
    config: Config
    policy: Policy
    resolver: DnsResolver
    generation: int = 1
    metrics: Metrics | None = None  # kept across reloads, so counters keep counting
    signing: SigningConfig = EMPTY_SIGNING
    store: WatchedStore | None = None  # only when a rule greylists or looks at rate limits
    lists: ListHealth | None = None  # only when DNS lists are configured
    history: HistoryWriter | None = None  # only in `serve`, with [history] enabled
    failure_reports: FailureSender | None = None  # only in `serve`, with [reports] failure = true
    serving: bool = False  # built for `serve`: history and failure reports are written

    @property
    def settings(self) -> EvalSettings:
        """The evaluation settings, with only the DNS lists that are in service."""
        if self.lists is None:
            return self.config.evaluation
        return self.lists.settings(self.config.evaluation, self.resolver)

    def authserv_id(self, mta_j: str | None = None) -> str:
        return self.config.authserv_id or default_authserv_id(mta_j)

    def early(self, tx: Transaction, stage: Stage, *, rcpt: str | None = None,
              known: EarlyResults = NOTHING_KNOWN,
              mta_j: str | None = None) -> tuple[Verdict | None, EarlyResults]:
        return early_verdict(tx, self.resolver, self.settings, self.policy, stage,
                             rcpt=rcpt, known=known, authserv_id=self.authserv_id(mta_j),
                             store=self.store, signing=self.signing)

    def evaluate(self, tx: Transaction, mta_j: str | None = None,
                 known: EarlyResults = NOTHING_KNOWN, *, trace: bool = True) -> Verdict:
        return evaluate(tx, self.resolver, self.settings, self.authserv_id(mta_j),
                        self.policy, known=known, signing=self.signing, trace=trace)

    def evaluate_transaction(self, tx: Transaction, *, store: StateStore | None = None,
                             now: float | None = None) -> Verdict:
        """`store`: the one greylisting and rate limits ask, instead of the configured one."""
        return evaluate_transaction(tx, self.resolver, self.settings, self.authserv_id(),
                                    self.policy, signing=self.signing,
                                    store=store if store is not None else self.store, now=now)


@dataclass
class ListHealth:
    """Which DNS lists are in service, by their RFC 5782 self-test, re-run every `interval`
    seconds in the background (per process: the test thread does not survive fork).

    Every configured list is in service until a test says otherwise; a list that fails is taken
    out with one log line and put back, with another, once it passes again."""

    lists: tuple[DnsList, ...]
    interval: float
    failing: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next: float = 0.0
    _pid: int = 0
    _running: bool = False
    _cached: tuple[frozenset[str], EvalSettings, EvalSettings] | None = None

    def settings(self, base: EvalSettings, resolver: DnsResolver) -> EvalSettings:
        # Asked at every milter callback: the usual answer takes no lock (the attributes read
        # are each replaced whole, and a stale read only takes the slow path).
        if self.interval > 0 and (time.monotonic() >= self._next or self._pid != os.getpid()):
            self._maybe_test(resolver)
        cached = self._cached
        if cached is not None and cached[1] is base and cached[0] == self.failing.keys():
            return cached[2]
        with self._lock:
            failing = frozenset(self.failing)
        settings = replace(base, dnslists=tuple(x for x in self.lists if x.name not in failing))
        self._cached = (failing, base, settings)
        return settings

    def _maybe_test(self, resolver: DnsResolver) -> None:
        if self.interval <= 0:
            return
        now = time.monotonic()
        with self._lock:
            if self._pid != os.getpid():
                self._pid, self._running, self._next = os.getpid(), False, 0.0
            if self._running or now < self._next:
                return
            self._running, self._next = True, now + self.interval
        threading.Thread(target=self.run_tests, args=(resolver,), name="dnslist-self-test",
                         daemon=True).start()

    def run_tests(self, resolver: DnsResolver) -> None:
        try:
            for dnslist in self.lists:
                try:
                    ok, why = self_test(dnslist, resolver)
                except Exception as e:  # the self-test must never take the process down
                    ok, why = False, f"{type(e).__name__}: {e}"
                with self._lock:
                    was = self.failing.get(dnslist.name)
                    if ok:
                        self.failing.pop(dnslist.name, None)
                    else:
                        self.failing[dnslist.name] = why
                if not ok and was is None:
                    log.error("dnslist %s (%s): self-test failed, taken out of service: %s",
                              dnslist.name, dnslist.zone, why)
                elif ok and was is not None:
                    log.warning("dnslist %s (%s): self-test passes again, back in service",
                                dnslist.name, dnslist.zone)
        finally:
            with self._lock:
                self._running = False


def open_store(settings: StoreSettings) -> StateStore:
    """The configured store; StoreError when it cannot be opened."""
    if settings.backend == "sqlite":
        from authmilter.store.sqlite import SqliteStore

        return SqliteStore(settings.path, timeout=settings.timeout)
    from authmilter.store.redis import RedisStore

    password = None
    if settings.password_file:
        try:
            password = Path(settings.password_file).read_text().strip()
        except OSError as e:
            raise StoreError(f"{settings.password_file}: {e.strerror or e}") from None
    return RedisStore(settings.url or None, sentinels=settings.sentinels, service=settings.service or None,
                      prefix=settings.prefix, timeout=settings.timeout, password=password)


def _password(path: str) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as e:
        raise StoreError(f"{path}: {e.strerror or e}") from None


def open_history(settings: HistorySettings, store: StoreSettings) -> HistoryStore:
    """The configured history store; StoreError when it cannot be opened."""
    if settings.backend == "sqlite":
        from authmilter.store.history import SqliteHistory

        return SqliteHistory(settings.path)
    if settings.backend == "postgresql":
        from authmilter.store.history_pg import PostgresHistory

        return PostgresHistory(settings.url)
    from authmilter.store.history_redis import RedisHistory

    # Each day's keys also expire a day after the retention: a net for when nothing prunes.
    expire = settings.retention_days + 1
    if settings.url:
        return RedisHistory(settings.url, prefix=store.prefix, timeout=store.timeout, expire_days=expire)
    return RedisHistory(store.url, sentinels=store.sentinels, service=store.service,
                        prefix=store.prefix, timeout=store.timeout, password_file=store.password_file,
                        expire_days=expire)


def describe_history(settings: HistorySettings, store: StoreSettings) -> str:
    if settings.backend == "sqlite":
        return f"sqlite:{settings.path}"
    if settings.url:
        return settings.backend + ":" + settings.url.split("@")[-1]  # no password in logs
    return "redis:" + describe_store(store)


def describe_store(settings: StoreSettings) -> str:
    if settings.backend == "sqlite":
        return f"sqlite:{settings.path}"
    if settings.url:
        return settings.url.split("@")[-1]  # no password in logs
    return "sentinel:" + ",".join(f"{h}:{p}" for h, p in settings.sentinels) + f"/{settings.service}"


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _resolver(config: Config, metrics: Metrics | None) -> DnsResolver:
    dns = config.dns
    cache = DnsCache(max_entries=dns.cache_size) if dns.cache_size > 0 else None
    return DnsResolver(nameservers=list(dns.nameservers), port=dns.port, timeout=dns.timeout, cache=cache,
                       observer=metrics.observe_dns if metrics else None)


def build_app(config: Config, previous: App | None = None, *, with_metrics: bool = False,
              with_history: bool = False, metrics_dir: str | None = None) -> App:
    """Raises PolicyError or SigningError for a policy or signing file with any problem.

    Keys that cannot be used (missing, unreadable, too weak) are not errors here: they are logged
    and the messages that need them get the signing settings' `on_key_error` action.
    """
    policy = load_policy(config.policy_files) if config.policy_files else EMPTY_POLICY
    signing = EMPTY_SIGNING
    if config.signing_file:
        signing, warnings = load_signing(config.signing_file)
        for warning in warnings:
            log.warning("signing: %s", warning)
        if signing.unavailable:
            # Outbound mail stops (or goes out unsigned) until this is fixed, while inbound mail
            # works: say it at the level an operator's alerting watches, naming whose access failed.
            log.error("signing: %d key(s) unavailable to this process (user %s): %s; mail they would "
                      "sign gets on_key_error = %s until they are fixed and the milter reloaded",
                      len(signing.unavailable), _user(), ", ".join(sorted(signing.unavailable)),
                      signing.settings.on_key_error)
    metrics = previous.metrics if previous is not None else None
    if metrics is None and with_metrics and config.metrics_listen:
        metrics = Metrics(multiprocess_dir=metrics_dir)
    if previous is not None and previous.config.dns == config.dns:
        # Same DNS settings: keep the resolver, and with it the warm cache.
        resolver = previous.resolver
    else:
        resolver = _resolver(config, metrics)
    if metrics is not None:
        metrics.cache_stats = lambda: resolver.cache.stats() if resolver.cache else None
    generation = previous.generation + 1 if previous else 1
    store: WatchedStore | None = None
    if policy.greylists or policy.counts_rates:
        if previous is not None and previous.store is not None and previous.config.store == config.store:
            store = previous.store
        else:
            settings = config.store
            store = WatchedStore(lambda: open_store(settings), describe_store(settings))
    lists: ListHealth | None = None
    if config.evaluation.dnslists:
        lists = ListHealth(config.evaluation.dnslists, config.dnslist_self_test)
        old = previous.lists if previous is not None else None
        if old is not None and (old.lists, old.interval) == (lists.lists, lists.interval):
            lists = old
    serving = with_history or (previous is not None and previous.serving)
    history = _history(config, previous, serving)
    failure_reports = None
    if config.reports.failure and serving:
        if previous is not None and previous.failure_reports is not None and (
                previous.config.reports, previous.signing, previous.resolver) == (
                config.reports, signing, resolver):
            failure_reports = previous.failure_reports
        else:
            failure_reports = FailureSender(config.reports, resolver, signing=signing)
    if metrics is not None:
        writer = history
        metrics.history_counts = (lambda: HistoryCounts(writer.written, writer.dropped, writer.lost)
                                  if writer is not None else None)
    return App(config=config, policy=policy, resolver=resolver, generation=generation, metrics=metrics,
               signing=signing, store=store, lists=lists, history=history,
               failure_reports=failure_reports, serving=serving)


def _history(config: Config, previous: App | None, wanted: bool) -> HistoryWriter | None:
    """The history writer of `serve`; kept across reloads while its settings stay the same."""
    settings = config.history
    if not wanted or not settings.enabled:
        return None
    if previous is not None and previous.history is not None and (
            previous.config.history, previous.config.store) == (settings, config.store):
        return previous.history
    if settings.backend == "sqlite" and not os.path.isdir(os.path.dirname(settings.path)):
        log.warning("history: directory of %s does not exist; no history is kept (set "
                    "[history] path, or enabled = false)", settings.path)
        return None
    store = config.store
    return HistoryWriter(lambda: open_history(settings, store), describe_history(settings, store),
                         queue_size=settings.queue, retention_days=settings.retention_days)


def load_app(path: str) -> App:
    """Config, policy and signing from disk; raises ConfigError, PolicyError or SigningError."""
    return build_app(load_config(path))


class AppHolder:
    def __init__(self, app: App) -> None:
        self._app = app
        self._lock = threading.Lock()

    @property
    def current(self) -> App:
        return self._app

    def reload(self) -> bool:
        """Re-read config and policies; keep the old set if anything is wrong. True if replaced."""
        with self._lock:
            old = self._app
            try:
                new = build_app(load_config(old.config.path), previous=old)
            except (ConfigError, PolicyError, SigningError) as e:
                log.error("reload refused, keeping generation %d: %s", old.generation,
                          str(e).replace("\n", "; "))
                return False
            except Exception:
                log.exception("reload failed, keeping generation %d", old.generation)
                return False
            if new.config.socket != old.config.socket:
                log.warning("socket changed to %s: takes effect only after a restart", new.config.socket)
            self._app = new
            log.info("reloaded %s: generation %d, %d policy rules", old.config.path, new.generation,
                     len(new.policy.rules))
            return True
