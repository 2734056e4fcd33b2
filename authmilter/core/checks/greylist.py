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
"""

from __future__ import annotations

import contextlib
import ipaddress
import re

from authmilter.core.names import normalize_client_ip, normalize_domain

__all__ = ["IPV4_PREFIX", "IPV6_PREFIX", "greylist_key", "normalize_sender"]

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


def _network(client_ip: str) -> str:
    ip = normalize_client_ip(client_ip)
    if ip is None:
        return "noip"
    address = ipaddress.ip_address(ip)
    prefix = IPV4_PREFIX if address.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def greylist_key(client_ip: str, mail_from: str, rcpt: str, *, spf_pass_domain: str | None = None,
                 by_spf_domain: bool = True) -> str:
    """The triplet as one store key: origin, normalised sender, recipient, separated by spaces
    (which none of them can hold)."""
    origin = _network(client_ip)
    if by_spf_domain and spf_pass_domain:
        # A domain that is no host name cannot have passed SPF honestly: keep the network.
        with contextlib.suppress(ValueError):
            origin = "spf:" + normalize_domain(spf_pass_domain)
    recipient = rcpt.strip().strip("<>").strip().lower()
    return " ".join((origin, normalize_sender(mail_from) or "<>", recipient))
