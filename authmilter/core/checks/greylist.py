"""The greylisting triplet: which earlier attempt a retry must match to be let through.

Greylisting works because a real MTA retries and a spam cannon mostly does not; it only costs
legitimate senders the delay as long as their retry maps to the same record. So the key is made
of what stays the same between a sender's attempts and nothing that does not:

* The client network, not the address: /24 for IPv4 and /64 for IPv6, as postgrey does, because
  outbound pools retry from a neighbouring address. When the MAIL FROM domain passed SPF, that
  domain replaces the network (`by_spf_domain`): the domain owner has said which hosts send for
  it, so a retry from any of them (large providers spread retries over whole continents) is the
  same sender.
* The envelope sender with the parts that change per message folded away: BATV (`prvs=`) tags,
  and runs of digits in the local part (VERP and bounce-tracking addresses such as
  `bounce-12345-678@`), so that a mailing list's retry matches its first attempt. Lower-case, since
  the local part's case is not something senders keep stable either.
* The recipient, lower-cased; its local part is ours, and we know it is case-blind.

The null sender (bounces) keeps its own empty slot: bounces are retried like other mail.

`check_greylist` is the check: it asks the store (core/stateapi) about one recipient's triplet.
A client whose retries passed `auto_allow_after` times (postgrey's auto-whitelisting) is no
longer greylisted at all, for the record lifetime: it has shown it is an MTA that retries.
Authenticated senders are never greylisted; they are our own users. A store that cannot answer
is an "error" result; what that does to the recipient is the operator's one fixed choice
(`store_on_error`, applied in core/evaluate.py), not a rule of the policy.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from authmilter.core.model import GreylistResult, SpfResults
from authmilter.core.names import normalize_client_ip, normalize_domain
from authmilter.core.stateapi import StateStore, StoreError

__all__ = ["IPV4_PREFIX", "IPV6_PREFIX", "GreylistSettings", "check_greylist", "greylist_key",
           "normalize_sender"]

IPV4_PREFIX = 24
IPV6_PREFIX = 64

# BATV "prvs=<tag>=<local>" (draft-levine-smtp-batv-01 section 4.1): the tag changes every day.
_BATV = re.compile(r"\Aprvs=[0-9a-z]+=(?P<local>.+)\Z", re.IGNORECASE)
_DIGITS = re.compile(r"[0-9]+")


def normalize_sender(mail_from: str) -> str:
    """The MAIL FROM address with per-message parts folded: '' for the null sender."""
    address = mail_from.strip().strip("<>").strip()
    if not address:
        return ""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    match = _BATV.match(local)
    if match:
        local = match.group("local")
    local = _DIGITS.sub("#", local.lower())
    if domain:
        try:
            domain = normalize_domain(domain)
        except ValueError:
            domain = domain.lower()
    return f"{local}@{domain}" if domain else local


@functools.lru_cache(maxsize=4096)
def _network(client_ip: str) -> str:
    ip = normalize_client_ip(client_ip)
    if ip is None:
        return "noip"
    address = ipaddress.ip_address(ip)
    prefix = IPV4_PREFIX if address.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def _origin(client_ip: str, spf_pass_domain: str | None, by_spf_domain: bool) -> str:
    origin = _network(client_ip)
    if by_spf_domain and spf_pass_domain:
        # A domain that is no host name cannot have passed SPF honestly: keep the network.
        with contextlib.suppress(ValueError):
            origin = "spf:" + normalize_domain(spf_pass_domain)
    return origin


def greylist_key(client_ip: str, mail_from: str, rcpt: str, *, spf_pass_domain: str | None = None,
                 by_spf_domain: bool = True) -> str:
    """The triplet as one store key: origin, normalised sender, recipient, separated by spaces
    (which none of them can hold)."""
    origin = _origin(client_ip, spf_pass_domain, by_spf_domain)
    recipient = rcpt.strip().strip("<>").strip().lower()
    return " ".join((origin, normalize_sender(mail_from) or "<>", recipient))


@dataclass(frozen=True)
class GreylistSettings:
    """postgrey's defaults: 5 minutes, a 2-day retry window, records kept 35 days, clients
    auto-allowed after 5 passes."""

    delay: float = 300.0
    retry_window: float = 2 * 86400.0
    lifetime: float = 35 * 86400.0
    auto_allow_after: int = 5  # 0: never
    by_spf_domain: bool = True


def spf_pass_domain(spf: SpfResults | None) -> str | None:
    """The MAIL FROM domain when it passed SPF, else None."""
    if spf is None:
        return None
    effective = spf.effective
    if effective.result != "pass" or effective.identity.value != "mailfrom":
        return None
    return effective.domain or None


def check_greylist(
    client_ip: str,
    mail_from: str,
    rcpt: str,
    macros: Mapping[str, str],
    spf: SpfResults | None,
    store: StateStore,
    settings: GreylistSettings,
    now: float,
) -> GreylistResult:
    """Count this attempt of the recipient's triplet and say whether it must wait."""
    if (macros.get("{auth_authen}") or macros.get("auth_authen") or "").strip():
        return GreylistResult(rcpt, "skipped", error="authenticated sender")
    domain = spf_pass_domain(spf)
    key = greylist_key(client_ip, mail_from, rcpt, spf_pass_domain=domain,
                       by_spf_domain=settings.by_spf_domain)
    client = "client " + _origin(client_ip, domain, settings.by_spf_domain)
    try:
        if settings.auto_allow_after > 0:
            passes = store.count(client, now, 0, settings.lifetime)
            if passes >= settings.auto_allow_after:
                return GreylistResult(rcpt, "auto-allowed", key, passes=passes)
        state = store.greylist(key, now, settings.delay, settings.retry_window, settings.lifetime)
        if state.passed and settings.auto_allow_after > 0:
            store.count(client, now, 1, settings.lifetime)
    except StoreError as e:
        return GreylistResult(rcpt, "error", key, error=str(e) or type(e).__name__)
    wait = 0.0
    if state.state != "passed":
        wait = max(0.0, state.first_seen + settings.delay - now)
    if not math.isfinite(wait):
        wait = 0.0
    return GreylistResult(rcpt, state.state, key, state.first_seen, state.passes, wait)
