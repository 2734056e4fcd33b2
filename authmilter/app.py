"""What `serve` and `check` share: the loaded config, the one resolver, and how to evaluate."""

from __future__ import annotations

from dataclasses import dataclass

from authmilter.config import Config, default_authserv_id
from authmilter.core.evaluate import evaluate
from authmilter.core.model import Transaction, Verdict
from authmilter.dns import DnsCache, DnsResolver


@dataclass(frozen=True)
class App:
    config: Config
    resolver: DnsResolver

    def authserv_id(self, mta_j: str | None = None) -> str:
        return self.config.authserv_id or default_authserv_id(mta_j)

    def evaluate(self, tx: Transaction, mta_j: str | None = None) -> Verdict:
        return evaluate(tx, self.resolver, self.config.evaluation, self.authserv_id(mta_j))


def build_app(config: Config) -> App:
    dns = config.dns
    cache = DnsCache(max_entries=dns.cache_size) if dns.cache_size > 0 else None
    resolver = DnsResolver(
        nameservers=list(dns.nameservers), port=dns.port, timeout=dns.timeout, cache=cache
    )
    return App(config=config, resolver=resolver)
