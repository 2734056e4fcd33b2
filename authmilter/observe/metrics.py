"""Prometheus metrics: what was decided, what the checks said, and where the time went.

Optional: with `[metrics] listen` unset nothing here runs. A metrics port that cannot be opened
is logged and the milter serves mail without it; metrics are never a reason to refuse mail.

With `workers` > 1 the counters live in prometheus-client's multiprocess mode: each process
writes its own memory-mapped file in a directory the supervisor makes at start and removes at
exit, and a scrape adds up every file, so one endpoint counts every worker's messages, those of
workers that have died included. The supervisor opens the endpoint's socket before it forks and
every worker answers scrapes on it; whichever the kernel picks shows the same sums.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app, multiprocess
from prometheus_client import values as prometheus_values
from prometheus_client.exposition import ThreadingWSGIServer

from authmilter.core.dnsapi import DnsStatus
from authmilter.core.model import Verdict
from authmilter.dns import CacheStats

log = logging.getLogger("authmilter.metrics")

# Milliseconds to seconds: most messages take a few ms, a DNS timeout takes seconds.
_MESSAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_DNS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own name for it


@dataclass(frozen=True)
class HistoryCounts:
    written: int
    dropped: int  # the queue was full
    lost: int  # the store failed


def enable_multiprocess() -> str:
    """Switch prometheus-client to files shared by the worker processes; returns the directory.

    Must run before the first metric is made. Under systemd the directory is in the service's
    RuntimeDirectory (tmpfs, removed with the service), else in the temporary directory.
    """
    parent = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None
    path = tempfile.mkdtemp(prefix="metrics-", dir=parent)
    # Removed when the supervisor exits, however far start-up got; the workers leave by
    # os._exit, which runs no atexit handler.
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.environ[MULTIPROCESS_ENV] = path
    # The value class is chosen when prometheus_client is imported, which happened before the
    # config said how many workers there are.
    prometheus_values.ValueClass = prometheus_values.MultiProcessValue()  # type: ignore[no-untyped-call]
    return path


def worker_gone(path: str, pid: int) -> None:
    """A dead worker's live gauges (cache entries) no longer count; its counters still do."""
    try:
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
    except OSError as e:
        log.debug("metrics: files of pid %d not removed: %s", pid, e)


class Metrics:
    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        # Replaced by the app with its resolver's cache; a reload that rebuilds the resolver
        # points it at the new cache.
        self.cache_stats: Callable[[], CacheStats | None] = lambda: None
        self.history_counts: Callable[[], HistoryCounts | None] = lambda: None
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter("authmilter_messages", "messages by final action and SMTP stage",
                                ["action", "stage"], registry=r)
        self.rules = Counter("authmilter_rule_decisions", "final verdicts by the policy rule that decided",
                             ["rule", "action"], registry=r)
        self.results = Counter("authmilter_results", "check results (one per DKIM signature)",
                               ["method", "result"], registry=r)
        self.monitored = Counter("authmilter_monitor_hits", "decisions a monitored rule would have made",
                                 ["action"], registry=r)
        self.errors = Counter("authmilter_errors", "evaluation errors answered with the fail-safe",
                              ["kind"], registry=r)
        self.store_errors = Counter("authmilter_store_errors",
                                    "greylisting and rate-limit steps the state store failed",
                                    ["check"], registry=r)
        self.message_seconds = Histogram("authmilter_message_seconds",
                                         "time to evaluate one message at end of data",
                                         buckets=_MESSAGE_BUCKETS, registry=r)
        self.dns_seconds = Histogram("authmilter_dns_lookup_seconds",
                                     "time of DNS lookups sent to the network",
                                     ["rdtype"], buckets=_DNS_BUCKETS, registry=r)
        self.dns_lookups = Counter("authmilter_dns_lookups", "DNS lookups sent to the network by outcome",
                                   ["rdtype", "status"], registry=r)
        # Read from the cache's and the history writer's own counters once a second (`sync`),
        # so the hot path counts nothing twice.
        self.cache_hits = Counter("authmilter_dns_cache_hits", "DNS answers served from the cache",
                                  registry=r)
        self.cache_misses = Counter("authmilter_dns_cache_misses", "DNS lookups not in the cache",
                                    registry=r)
        self.cache_entries = Gauge("authmilter_dns_cache_entries", "answers held in the DNS cache",
                                   multiprocess_mode="livesum", registry=r)
        self.history = Counter("authmilter_history_records",
                               "report history records by outcome (written, dropped: queue full, "
                               "lost: store failed)", ["outcome"], registry=r)
        self._synced: dict[str, int] = {}
        self._sync_lock = threading.Lock()

    def sync(self) -> None:
        """Carry the cache's and the history writer's counts over; called about once a second."""
        with self._sync_lock:
            stats = self.cache_stats()
            if stats is not None:
                self._advance(self.cache_hits, "hits", stats.hits)
                self._advance(self.cache_misses, "misses", stats.misses)
                self.cache_entries.set(stats.entries)
            counts = self.history_counts()
            if counts is not None:
                for outcome in ("written", "dropped", "lost"):
                    self._advance(self.history.labels(outcome), outcome, getattr(counts, outcome))

    def _advance(self, counter: Counter, key: str, now: int) -> None:
        before = self._synced.get(key, 0)
        # Lower than last time: the source was replaced (a reload's new cache), so it counts
        # from zero again.
        self._synced[key] = now
        counter.inc(now - before if now >= before else now)

    def after_fork(self) -> None:
        """In a new worker: its cache and writer count from zero."""
        self._synced = {}
        self._sync_lock = threading.Lock()

    def observe_dns(self, rdtype: str, seconds: float, status: DnsStatus) -> None:
        self.dns_seconds.labels(rdtype).observe(seconds)
        self.dns_lookups.labels(rdtype, status.value).inc()

    def observe_verdict(self, v: Verdict, seconds: float | None) -> None:
        self.messages.labels(v.action.value, v.stage).inc()
        if v.decision is not None:
            self.rules.labels(v.decision.rule or "(none)", v.action.value).inc()
        if seconds is not None:
            self.message_seconds.observe(seconds)
        if v.errors:
            self.errors.labels(v.reason or "unknown").inc()
        if v.decision is not None:
            for m in v.decision.monitored:
                self.monitored.labels(m.action.value).inc()
        res = v.results
        if res is None:
            return
        for g in res.greylist:
            if g.state == "error":
                self.store_errors.labels("greylist").inc()
        for rate in res.rates:
            if rate.error:
                self.store_errors.labels("ratelimit").inc()
        if v.stage != "eom":
            return
        if res.spf is not None:
            self.results.labels("spf", res.spf.effective.result).inc()
        if res.dkim:
            for d in res.dkim:
                self.results.labels("dkim", d.result).inc()
        else:
            self.results.labels("dkim", "none").inc()
        if res.dmarc is not None:
            self.results.labels("dmarc", res.dmarc.result).inc()
        if res.iprev is not None and res.iprev.result != "none":
            self.results.labels("iprev", res.iprev.result).inc()


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape on stderr (the journal)."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve_metrics(metrics: Metrics, listen: str) -> bool:
    """One process: start the HTTP endpoint on "ADDRESS:PORT"; False (and a log line) if it
    cannot be opened."""
    sock = open_metrics_socket(listen)
    if sock is None:
        return False
    serve_metrics_on(metrics, sock)
    log.info("metrics on http://%s/metrics", listen)
    return True


def open_metrics_socket(listen: str) -> socket.socket | None:
    """The endpoint's listening socket, opened once (by the supervisor, before the workers)."""
    try:
        host, port = _split(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
    except (OSError, ValueError) as e:
        log.error("metrics endpoint %s not started: %s; serving mail without it", listen, e)
        return None
    sock.set_inheritable(True)
    return sock


def serve_metrics_on(metrics: Metrics, sock: socket.socket) -> None:
    """Answer scrapes on an open listening socket from a thread of this process, and keep the
    derived counters current."""
    registry = metrics.registry
    if metrics.multiprocess_dir is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=metrics.multiprocess_dir)  # type: ignore[no-untyped-call]
    host, port = sock.getsockname()[:2]
    server = ThreadingWSGIServer((host, port), _QuietHandler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    # What server_bind() would have set, without its getfqdn(), a DNS lookup at start.
    server.server_name, server.server_port = host, port
    server.setup_environ()
    exposition = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        # This process's derived counters are current at every scrape; other workers' are at
        # most a second old.
        try:
            metrics.sync()
        except Exception:
            log.exception("metrics: sync failed")
        return exposition(environ, start_response)

    server.set_app(app)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    threading.Thread(target=_sync_every_second, args=(metrics,), name="metrics-sync", daemon=True).start()


def _sync_every_second(metrics: Metrics) -> None:
    stop = threading.Event()
    while not stop.wait(1.0):
        try:
            metrics.sync()
        except Exception:
            log.exception("metrics: sync failed")
