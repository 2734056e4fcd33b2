"""Rate limits: token buckets over the store, keyed by who sends (or to whom), counted per
recipient or per message.

A limit is a bucket per subject ("client_ip 192.0.2.1", "sasl_user alice"): `rate` tokens come
back every `per` seconds up to `burst`, and each recipient (or message) takes one. Which limits
apply depends on the direction: inbound mail is everyone else's, outbound is our own users'
(authenticated, or what the signing settings call ours: internal networks, daemons), so one site can limit
what its users send without limiting what the world sends them, and the other way round.

The check only counts and reports; a policy rule on `ratelimit` decides what an exceeded limit
does (typically 450 4.7.1 at RCPT TO). Every attempt counts, accepted or not: a sender that is
refused and retries at once should not find its bucket refilled by being refused. A store that
cannot answer counts nothing and exceeds nothing (fail open), and the result says why.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from authmilter.core.model import RateResult
from authmilter.core.names import address_domain, normalize_client_ip
from authmilter.core.stateapi import StateStore, StoreError

__all__ = ["COUNTS", "DIRECTIONS", "RATE_KEYS", "RateLimit", "check_rates", "subject"]

RATE_KEYS = ("sasl_user", "client_ip", "client_network", "recipient", "sender_domain")
COUNTS = ("recipients", "messages")
DIRECTIONS = ("inbound", "outbound", "any")


@dataclass(frozen=True)
class RateLimit:
    name: str
    key: str  # one of RATE_KEYS
    rate: float  # tokens per `per` seconds
    per: float = 3600.0
    burst: float = 0.0  # 0: the same as `rate`
    count: str = "recipients"  # or "messages"
    direction: str = "any"  # "inbound" | "outbound" | "any"

    def __post_init__(self) -> None:
        if self.key not in RATE_KEYS:
            raise ValueError(f"key must be one of {', '.join(RATE_KEYS)}, not {self.key!r}")
        if self.count not in COUNTS:
            raise ValueError(f"count must be one of {', '.join(COUNTS)}, not {self.count!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, not {self.direction!r}")
        if not (self.rate > 0 and self.per > 0 and self.burst >= 0):
            raise ValueError("rate and per must be positive, burst at least 0")

    @property
    def capacity(self) -> float:
        return self.burst or self.rate

    def applies(self, outbound: bool) -> bool:
        return self.direction == "any" or (self.direction == "outbound") == outbound


def subject(limit: RateLimit, client_ip: str, mail_from: str, rcpt: str | None,
            macros: Mapping[str, str]) -> str | None:
    """The bucket's subject for this limit, or None when the limit has nothing to count here
    (no SASL user, no recipient yet, a null or domainless sender, no client address)."""
    if limit.key == "sasl_user":
        user = (macros.get("{auth_authen}") or macros.get("auth_authen") or "").strip()
        return user.lower() or None
    if limit.key in ("client_ip", "client_network"):
        ip = normalize_client_ip(client_ip) if client_ip else None
        if ip is None:
            return None
        if limit.key == "client_ip":
            return ip
        address = ipaddress.ip_address(ip)
        return str(ipaddress.ip_network(f"{ip}/{24 if address.version == 4 else 64}", strict=False))
    if limit.key == "recipient":
        if rcpt is None:
            return None
        return rcpt.strip().strip("<>").strip().lower() or None
    return address_domain(mail_from) or None


def check_rates(
    limits: Iterable[RateLimit],
    count: str,
    client_ip: str,
    mail_from: str,
    rcpt: str | None,
    macros: Mapping[str, str],
    outbound: bool,
    store: StateStore,
    now: float,
) -> tuple[RateResult, ...]:
    """Take one token from each applicable limit that counts `count` ("recipients" at RCPT TO
    with `rcpt`, "messages" at MAIL FROM)."""
    out: list[RateResult] = []
    for limit in limits:
        if limit.count != count or not limit.applies(outbound):
            continue
        who = subject(limit, client_ip, mail_from, rcpt, macros)
        if who is None:
            continue
        key = f"{limit.name} {limit.key} {who}"
        try:
            state = store.take_tokens(key, now, limit.rate / limit.per, limit.capacity)
        except StoreError as e:
            out.append(RateResult(limit.name, key, False, error=str(e) or type(e).__name__,
                                  rcpt=rcpt or ""))
            continue
        out.append(RateResult(limit.name, key, not state.allowed, state.tokens_left, state.retry_after,
                              rcpt=rcpt or ""))
    return tuple(out)
