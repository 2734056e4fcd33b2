"""Building a day's aggregate reports from a large history: time and peak memory.

Fills a fresh SQLite history with N records for one UTC day over D policy domains (default
1,000,000 over 10,000, the goal of issue 14: under a minute and under 500 MB), then, in a
separate process so that filling it does not count, builds every domain's report as
`authmilter report send --dry-run` does (store -> AggregateBuilder -> XML -> gzip), and prints
the figures. Source addresses are drawn from 50,000 so that rows merge as in real traffic.

    .venv/bin/python -m benchmarks.reports [-n 1000000] [--domains 10000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from authmilter.core.history import DkimEntry, HistoryRecord, PublishedPolicy, SpfEntry
from authmilter.store.history import SqliteHistory

DAY = "2026-12-01"
BEGIN = 1_796_083_200  # 2026-12-01T00:00:00Z


def fill(path: str, n: int, domains: int, seed: int = 1) -> float:
    rng = random.Random(seed)
    store = SqliteHistory(path)
    t0 = time.monotonic()
    batch: list[HistoryRecord] = []
    for i in range(n):
        d = f"d{rng.randrange(domains)}.example"
        ok = rng.random() < 0.9
        ip = f"198.51.{rng.randrange(200)}.{rng.randrange(250)}"
        batch.append(HistoryRecord(
            time=BEGIN + i * 86400 // n, client_ip=ip, envelope_from=d, envelope_to=("mx.test",),
            header_from=d,
            spf=(SpfEntry(d, "mfrom", "pass" if ok else "fail"),),
            dkim=(DkimEntry(d, "s1", "pass" if ok else "fail", ""),),
            dmarc="pass" if ok else "fail", dkim_aligned=ok, spf_aligned=ok,
            policy=PublishedPolicy(domain=d, p="reject", sp=None, np=None, adkim="r", aspf="r",
                                   testing=False, psd=None, rua=(f"mailto:dmarc@{d}",)),
            requested="reject", disposition="pass" if ok else "reject", override="",
            action="accept" if ok else "reject", rule="" if ok else "dmarc-reject", stage="eom",
            facts={"stage": "eom", "dmarc": "pass" if ok else "fail"}))
        if len(batch) == 5000:
            store.append(batch)
            batch = []
    store.append(batch)
    store.close()
    return time.monotonic() - t0


def build(path: str) -> dict[str, float]:
    from authmilter.reports.aggregate import AggregateBuilder, Reporter, day_bounds, report_id

    store = SqliteHistory(path)
    begin, end = day_bounds(DAY)
    reporter = Reporter(org_name="bench", email="dmarc@mx.test", receiver_domain="mx.test")
    t0 = time.monotonic()
    cpu0 = time.process_time()
    reports = rows = messages = size = 0
    for domain in store.policy_domains(begin, end + 1):
        builder = AggregateBuilder(domain, begin, end)
        for record in store.records(begin, end + 1, domain):
            builder.add(record)
        report = builder.build(reporter, report_id(domain, DAY, "mx.test"))
        reports += 1
        rows += report.rows
        messages += report.messages
        size += len(report.gz)
    return {"seconds": time.monotonic() - t0, "cpu_seconds": time.process_time() - cpu0,
            "reports": reports, "rows": rows, "messages": messages, "gz_bytes": size,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1_000_000, help="records (default 1,000,000)")
    ap.add_argument("--domains", type=int, default=10_000, help="policy domains (default 10,000)")
    ap.add_argument("--build", metavar="DB", help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.build:
        print(json.dumps(build(args.build)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "history.db")
        filled = fill(db, args.n, args.domains)
        print(f"filled {args.n} records over {args.domains} domains in {filled:.1f} s "
              f"({Path(db).stat().st_size / 1e6:.0f} MB)")
        out = subprocess.run([sys.executable, "-m", "benchmarks.reports", "--build", db],
                             capture_output=True, text=True, timeout=3600, check=True)
        r = json.loads(out.stdout)
        print(f"built {r['reports']} reports ({r['messages']} messages, {r['rows']} rows, "
              f"{r['gz_bytes'] / 1e6:.1f} MB gzip) in {r['seconds']:.1f} s wall, "
              f"{r['cpu_seconds']:.1f} s CPU, peak RSS {r['peak_rss_mb']:.0f} MB")
        met = r["seconds"] < 60 and r["peak_rss_mb"] < 500
        print(f"goal: under 60 s and 500 MB: {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
