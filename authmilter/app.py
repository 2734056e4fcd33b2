"""What `serve` and `check` share: the loaded config and policy, the one resolver, the evaluation.

`AppHolder` is how reload works. Each SMTP transaction takes the current `App` when it starts and
keeps it to the end, so a reload never changes the rules under a message in flight; a new set is
built completely, and only a set that loaded without a single problem replaces the old one.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from authmilter.core.decision import EMPTY_POLICY, Policy, Stage
from authmilter.core.evaluate import NOTHING_KNOWN, early_verdict, evaluate, evaluate_transaction
from authmilter.core.model import EarlyResults, Transaction, Verdict
from authmilter.core.signing.dkim import EMPTY_SIGNING, SigningConfig
from authmilter.dns import DnsCache, DnsResolver
from authmilter.files.config import Config, ConfigError, default_authserv_id, load_config
from authmilter.files.policy import PolicyError, load_policy
from authmilter.files.signing import SigningError, load_signing
from authmilter.observe.metrics import Metrics

log = logging.getLogger("authmilter")


@dataclass(frozen=True)
class App:
    config: Config
    policy: Policy
    resolver: DnsResolver
    generation: int = 1
    metrics: Metrics | None = None  # kept across reloads, so counters keep counting
    signing: SigningConfig = EMPTY_SIGNING

    def authserv_id(self, mta_j: str | None = None) -> str:
        return self.config.authserv_id or default_authserv_id(mta_j)

    def early(self, tx: Transaction, stage: Stage, *, rcpt: str | None = None,
              known: EarlyResults = NOTHING_KNOWN,
              mta_j: str | None = None) -> tuple[Verdict | None, EarlyResults]:
        return early_verdict(tx, self.resolver, self.config.evaluation, self.policy, stage,
                             rcpt=rcpt, known=known, authserv_id=self.authserv_id(mta_j))

    def evaluate(self, tx: Transaction, mta_j: str | None = None,
                 known: EarlyResults = NOTHING_KNOWN) -> Verdict:
        return evaluate(tx, self.resolver, self.config.evaluation, self.authserv_id(mta_j),
                        self.policy, known=known, signing=self.signing)

    def evaluate_transaction(self, tx: Transaction) -> Verdict:
        return evaluate_transaction(tx, self.resolver, self.config.evaluation, self.authserv_id(),
                                    self.policy, signing=self.signing)


def _resolver(config: Config, metrics: Metrics | None) -> DnsResolver:
    dns = config.dns
    cache = DnsCache(max_entries=dns.cache_size) if dns.cache_size > 0 else None
    return DnsResolver(nameservers=list(dns.nameservers), port=dns.port, timeout=dns.timeout, cache=cache,
                       observer=metrics.observe_dns if metrics else None)


def build_app(config: Config, previous: App | None = None, *, with_metrics: bool = False) -> App:
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
    metrics = previous.metrics if previous is not None else None
    if metrics is None and with_metrics and config.metrics_listen:
        metrics = Metrics()
    if previous is not None and previous.config.dns == config.dns:
        # Same DNS settings: keep the resolver, and with it the warm cache.
        resolver = previous.resolver
    else:
        resolver = _resolver(config, metrics)
    if metrics is not None:
        metrics.cache_stats = lambda: resolver.cache.stats() if resolver.cache else None
    generation = previous.generation + 1 if previous else 1
    return App(config=config, policy=policy, resolver=resolver, generation=generation, metrics=metrics,
               signing=signing)


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
