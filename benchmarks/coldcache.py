"""Cold-cache latency: how long one message waits for DNS when nothing is cached and every answer
takes `--delay` seconds (50 ms by default), with the lookups batched (prefetch) and without.

    .venv/bin/python -m benchmarks.coldcache [-n 60] [--delay 0.05] [--seed 1]

The messages are the load benchmark's corpus (benchmarks/corpus.py, cached in benchmarks/.corpus
with --keep there), evaluated as the antispam scenario evaluates them (iprev, SPF, DKIM, ARC,
DMARC, two DNS lists, greylisting on SQLite) by the core's `evaluate_transaction` against a
real DNS server on loopback (tests/dnsserver.py) that holds every answer back by `--delay`. Each
message gets a resolver with an empty cache, so every name it needs is asked once. Printed per mode: the
wall time per message (p50, p90, max), the same in units of the delay (the "slowest single
lookup" is one delay plus a fraction of a millisecond), and the lookups a message made.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from authmilter.core import evaluate as evaluate_mod
from authmilter.core.checks.dnslists import DnsList
from authmilter.core.checks.greylist import GreylistSettings
from authmilter.core.dnsapi import DnsAnswer, Resolver
from authmilter.core.evaluate import EvalSettings, evaluate_transaction
from authmilter.core.message import split_message
from authmilter.core.model import Transaction
from authmilter.dns import DnsCache, DnsResolver
from authmilter.files.policy import load_policy
from authmilter.store.sqlite import SqliteStore
from benchmarks import antispam
from benchmarks import corpus as corpus_mod
from benchmarks.services import POLICY
from tests.dnsserver import DnsServer

_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+")
# SPF mechanisms that name no domain and so ask about the record's own owner (RFC 7208 5.3, 5.4).
_OWN_NAME = re.compile(r"(?:^|\s)[-+?~]?(a|mx)(?:/\d+){0,2}(?=\s|$)")


class ChainDepth:
    """A resolver that works out how long a message's longest chain of dependent lookups is.

    A lookup is at depth 1 when its name comes from the message or the envelope (PTR of the
    client, a DKIM key, a _dmarc name, a list entry), and one deeper than the answer that named it
    first (a PTR target, an SPF include or redirect, an MX exchange, the owner of an SPF record
    with a bare `a` or `mx`). No resolver can finish a message sooner than the deepest lookup
    times the delay of one answer: that is the "slowest lookup" the batched figure is held to.
    """

    def __init__(self, dns: Resolver) -> None:
        self.dns = dns
        self.named: dict[tuple[str, str], int] = {}
        self.deepest = 0

    def _depth(self, name: str, rdtype: str) -> int:
        key = name.lower().rstrip(".")
        return self.named.get((key, rdtype), self.named.get((key, "*"), 1))

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        depth = self._depth(name, rdtype)
        self.deepest = max(self.deepest, depth)
        answer = self.dns.query(name, rdtype)
        for record in answer.records:
            text = b"".join(record).decode("ascii", "replace") if rdtype == "TXT" else str(record)
            for found in _NAME.findall(text):
                self.named.setdefault((found.lower(), "*"), depth + 1)
            if rdtype == "TXT" and text.startswith("v=spf1"):
                for mech in _OWN_NAME.findall(text):
                    for t in (("MX",) if mech == "mx" else ("A", "AAAA")):
                        self.named.setdefault((name.lower().rstrip("."), t), depth + 1)
        return answer


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.coldcache", description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=60, help="messages (default 60)")
    p.add_argument("--delay", type=float, default=0.05, help="seconds every DNS answer is held back")
    p.add_argument("--seed", type=int, default=1, help="corpus seed")
    p.add_argument("--corpus", type=int, default=300, help="corpus size to draw the messages from")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    corpus = corpus_mod.obtain(args.corpus, args.seed, keep=True)
    corpus.load_messages()
    manifest = corpus.manifest
    work = Path(tempfile.mkdtemp(prefix="authmilter-coldcache-"))
    rules = work / "rules.toml"
    rules.write_text(antispam.RULES)
    policy = load_policy([str(rules), str(POLICY)])
    settings = EvalSettings(
        dnslists=(DnsList("zen", "zen.bench", "ip", {"127.0.0.2-127.0.0.11": "listed"}),
                  DnsList("wl", "wl.bench", "ip", allow=True)),
        greylist=GreylistSettings(delay=0.0, auto_allow_after=0))
    server = DnsServer()
    for path in [corpus.path / z for z in manifest["zones"]] + antispam.write_zones(work, manifest):
        text = path.read_text()
        server.add_zone(text)
    server.start()
    server.set_delay_all(args.delay)
    store = SqliteStore(work / "state.db")
    picked = list(zip(manifest["messages"], corpus.messages, strict=True))[: args.n]
    print(f"{len(picked)} messages, every DNS answer {args.delay * 1000:.0f} ms late, "
          f"empty cache per message; iprev, SPF, DKIM, ARC, DMARC, 2 DNS lists, greylisting (SQLite)")
    real_prefetch = evaluate_mod.prefetch
    depths: list[int] = []
    try:
        server.set_delay_all(0.0)
        for meta, raw in picked:
            oracle = ChainDepth(DnsResolver(nameservers=["127.0.0.1"], port=server.port, timeout=5.0,
                                            cache=DnsCache()))
            evaluate_transaction(_transaction(meta, raw), oracle, settings, manifest["authserv_id"],
                                 policy, store=store)
            depths.append(oracle.deepest)
        server.set_delay_all(args.delay)
        print(f"  longest chain of dependent lookups per message: median {statistics.median(depths):.0f}, "
              f"max {max(depths)} (counts {dict(sorted(Counter(depths).items()))})")
        for mode in ("batched", "one by one"):
            if mode == "one by one":
                evaluate_mod.prefetch = lambda tx, dns, **kw: dns  # type: ignore[assignment,misc]
            walls, lookups, ratios = [], [], []
            for (meta, raw), depth in zip(picked, depths, strict=True):
                tx = _transaction(meta, raw)
                # An empty cache for each message: what it asks at MAIL FROM is cached for its RCPT
                # TO and end of message, as in the milter.
                resolver = DnsResolver(nameservers=["127.0.0.1"], port=server.port, timeout=5.0,
                                       cache=DnsCache())
                before = server.total_queries()
                started = time.perf_counter()
                evaluate_transaction(tx, resolver, settings, manifest["authserv_id"], policy,
                                     store=store)
                walls.append(time.perf_counter() - started)
                ratios.append(walls[-1] / (depth * args.delay))
                lookups.append(server.total_queries() - before)
                resolver.close()
            walls.sort()
            p50, p90 = statistics.median(walls), walls[int(0.9 * (len(walls) - 1))]
            d = args.delay
            print(f"  {mode:>10}: per message p50 {p50 * 1000:6.1f} ms ({p50 / d:4.2f} x delay), "
                  f"p90 {p90 * 1000:6.1f} ms ({p90 / d:4.2f} x), max {walls[-1] * 1000:6.1f} ms "
                  f"({walls[-1] / d:4.2f} x); lookups per message median {statistics.median(lookups):.0f}, "
                  f"max {max(lookups)}")
            ratios.sort()
            print(f"  {'':>10}  per message / (its longest chain x delay): "
                  f"p50 {statistics.median(ratios):4.2f}, "
                  f"p90 {ratios[int(0.9 * (len(ratios) - 1))]:4.2f}, max {ratios[-1]:4.2f}")
    finally:
        evaluate_mod.prefetch = real_prefetch
        store.close()
        server.stop()
    return 0


def _transaction(meta: dict[str, Any], raw: bytes) -> Transaction:
    headers, body = split_message(raw)
    return Transaction(client_ip=meta["client_ip"], helo=meta["helo"], mail_from=meta["mail_from"],
                       rcpts=tuple(meta["rcpts"]), headers=headers, body=body,
                       client_host=meta["client_host"])


if __name__ == "__main__":
    raise SystemExit(main())
