"""Prometheus metrics: what was decided, what the checks said, and where the time went.

Optional: with `[metrics] listen` unset nothing here runs. A metrics port that cannot be opened
is logged and the milter serves mail without it; metrics are never a reason to refuse mail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from authmilter.core.dnsapi import DnsStatus
from authmilter.core.model import Verdict
from authmilter.dns import CacheStats

log = logging.getLogger("authmilter.metrics")

# Milliseconds to seconds: most messages take a few ms, a DNS timeout takes seconds.
_MESSAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_DNS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class _CacheCollector(Collector):
    """Reads the DNS cache's own counters at scrape time, so the hot path counts nothing twice."""

    def __init__(self, owner: Metrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self._owner.cache_stats()
        if s is None:
            return
        yield CounterMetricFamily("authmilter_dns_cache_hits", "DNS answers served from the cache",
                                  value=s.hits)
        yield CounterMetricFamily("authmilter_dns_cache_misses", "DNS lookups not in the cache",
                                  value=s.misses)
        yield GaugeMetricFamily("authmilter_dns_cache_entries", "answers held in the DNS cache",
                                value=s.entries)


class Metrics:
    def __init__(self) -> None:
        # Replaced by the app with its resolver's cache; a reload that rebuilds the resolver
        # points it at the new cache.
        self.cache_stats: Callable[[], CacheStats | None] = lambda: None
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter("authmilter_messages", "messages by final action and SMTP stage",
                                ["action", "stage"], registry=r)
        self.results = Counter("authmilter_results", "check results (one per DKIM signature)",
                               ["method", "result"], registry=r)
        self.monitored = Counter("authmilter_monitor_hits", "decisions a monitored rule would have made",
                                 ["action"], registry=r)
        self.errors = Counter("authmilter_errors", "evaluation errors answered with the fail-safe",
                              ["kind"], registry=r)
        self.message_seconds = Histogram("authmilter_message_seconds",
                                         "time to evaluate one message at end of data",
                                         buckets=_MESSAGE_BUCKETS, registry=r)
        self.dns_seconds = Histogram("authmilter_dns_lookup_seconds",
                                     "time of DNS lookups sent to the network",
                                     ["rdtype"], buckets=_DNS_BUCKETS, registry=r)
        self.dns_lookups = Counter("authmilter_dns_lookups", "DNS lookups sent to the network by outcome",
                                   ["rdtype", "status"], registry=r)
        r.register(_CacheCollector(self))

    def observe_dns(self, rdtype: str, seconds: float, status: DnsStatus) -> None:
        self.dns_seconds.labels(rdtype).observe(seconds)
        self.dns_lookups.labels(rdtype, status.value).inc()

    def observe_verdict(self, v: Verdict, seconds: float | None) -> None:
        self.messages.labels(v.action.value, v.stage).inc()
        if seconds is not None:
            self.message_seconds.observe(seconds)
        if v.errors:
            self.errors.labels(v.reason or "unknown").inc()
        if v.decision is not None:
            for m in v.decision.monitored:
                self.monitored.labels(m.action.value).inc()
        res = v.results
        if res is None or v.stage != "eom":
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


def serve_metrics(metrics: Metrics, listen: str) -> bool:
    """Start the HTTP endpoint on "ADDRESS:PORT"; False (and a log line) if it cannot be opened."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        start_http_server(int(port), addr=host, registry=metrics.registry)
    except (OSError, ValueError) as e:
        log.error("metrics endpoint %s not started: %s; serving mail without it", listen, e)
        return False
    log.info("metrics on http://%s/metrics", listen)
    return True
