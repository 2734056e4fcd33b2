"""The counters derived from the DNS cache's and the history writer's own counts."""

from __future__ import annotations

from authmilter.dns import CacheStats
from authmilter.observe.metrics import HistoryCounts, Metrics


def value(m: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    got = m.registry.get_sample_value(name, labels or {})
    return 0.0 if got is None else got


def test_sync_carries_counts_over_once_and_survives_a_replaced_cache() -> None:
    m = Metrics()
    stats = CacheStats(hits=5, misses=2, entries=7, evictions=0)
    m.cache_stats = lambda: stats
    m.history_counts = lambda: HistoryCounts(written=3, dropped=1, lost=0)
    m.sync()
    m.sync()  # nothing new: nothing added
    assert value(m, "authmilter_dns_cache_hits_total") == 5
    assert value(m, "authmilter_dns_cache_misses_total") == 2
    assert value(m, "authmilter_dns_cache_entries") == 7
    assert value(m, "authmilter_history_records_total", {"outcome": "written"}) == 3
    assert value(m, "authmilter_history_records_total", {"outcome": "dropped"}) == 1
    stats = CacheStats(hits=9, misses=2, entries=8, evictions=0)
    m.sync()
    assert value(m, "authmilter_dns_cache_hits_total") == 9
    # A reload's new cache counts from zero: its counts are added, the counter never goes back.
    stats = CacheStats(hits=1, misses=1, entries=1, evictions=0)
    m.sync()
    assert value(m, "authmilter_dns_cache_hits_total") == 10
    assert value(m, "authmilter_dns_cache_misses_total") == 3
    assert value(m, "authmilter_dns_cache_entries") == 1


def test_after_fork_a_worker_counts_its_own_from_zero() -> None:
    m = Metrics()
    m.cache_stats = lambda: CacheStats(hits=4, misses=0, entries=0, evictions=0)
    m.sync()
    m.after_fork()
    m.sync()
    assert value(m, "authmilter_dns_cache_hits_total") == 8
