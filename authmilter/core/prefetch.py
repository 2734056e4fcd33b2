"""Asking DNS for a message's names at once, before the checks ask them one by one.

The checks are written as the RFCs read: SPF, then each DKIM key, then DMARC, each lookup waiting
for the one before. Most of those lookups do not depend on each other, so with a cold cache a
message would wait for their sum. `prefetch` works out, from the transaction alone, the names the
checks are about to ask (the client's PTR, the SPF records of MAIL FROM and HELO, every
signature's key, the From domain's _dmarc names up the tree, every DNS list), asks them all in
one batch through `dnsapi.query_many` (concurrently, with the product's resolver), then further
batches (at most ROUNDS in all) for what the answers point to (the PTR names' addresses, SPF
include and redirect targets, the domains of SPF a and mx mechanisms, the exchanges' addresses).
The checks then run as before against a resolver that answers from the batches first.

A guess that is wrong costs one unneeded lookup, never a wrong result: the checks still make
every decision, and anything not fetched is asked as before. The batches are bounded
(MAX_NAMES per round), so a hostile message with a hundred signatures cannot make a hundred
lookups here that the DKIM check would have refused to make.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

from authmilter.core.checks.author import parse_author
from authmilter.core.checks.dmarc import walk_targets
from authmilter.core.checks.dnslists import DnsList, query_name
from authmilter.core.dnsapi import DnsAnswer, Resolver, query_many
from authmilter.core.model import AuthorResult, EarlyResults, Transaction
from authmilter.core.names import address_domain, normalize_client_ip, normalize_domain

__all__ = ["MAX_NAMES", "ROUNDS", "Prefetched", "prefetch"]

MAX_NAMES = 40  # per round
# Rounds of "what the answers point to": PTR name -> address, SPF include -> include -> include,
# mx -> the exchanges' addresses. SPF allows 10 lookups in all; the chains that cost wall time
# in practice are 2-3 deep.
ROUNDS = 4
_MAX_PTR_NAMES = 10  # as iprev follows at most this many

_TAG = re.compile(rb"(?:^|;)\s*([ds])\s*=\s*([^;\s]+)")
_SPF_TARGET = re.compile(r"(?:^|\s)[+\-~?]?(include:|redirect=|a:|mx:|a(?=\s|$)|mx(?=\s|$))(\S*)",
                         re.IGNORECASE)

Query = tuple[str, str]


class Prefetched:
    """A `Resolver` that answers from a prefetched batch first, then asks the one behind it."""

    def __init__(self, dns: Resolver, answers: dict[Query, DnsAnswer]) -> None:
        self.dns = dns
        self.answers = {(name.lower().removesuffix("."), rdtype.upper()): a
                        for (name, rdtype), a in answers.items()}

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        found = self.answers.get((name.lower().removesuffix("."), rdtype.upper()))
        return found if found is not None else self.dns.query(name, rdtype)

    def query_many(self, queries: Iterable[Query]) -> dict[Query, DnsAnswer]:
        wanted = list(dict.fromkeys(queries))
        missing = [q for q in wanted if (q[0].lower().removesuffix("."), q[1].upper()) not in self.answers]
        fetched = query_many(self.dns, missing) if missing else {}
        return {q: fetched[q] if q in fetched else self.query(*q) for q in wanted}


class _Unchanged(Prefetched):
    """Nothing was fetched: every query goes straight to the resolver."""

    def __init__(self, dns: Resolver) -> None:
        self.dns = dns
        self.answers = {}

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        return self.dns.query(name, rdtype)


def prefetch(tx: Transaction, dns: Resolver, *, known: EarlyResults, lists: Iterable[DnsList] = (),
             spf_helo: bool = True, eom: bool = True, iprev: bool = True, spf: bool = True,
             author: AuthorResult | None = None) -> Prefetched:
    """`dns` wrapped with the answers to what the checks still to run will ask first.

    `known` says what is already worked out (nothing of it is fetched again); `eom` says whether
    the message is there (DKIM keys, the From domain) or only the envelope (MAIL FROM); `iprev`,
    `spf` and `lists` say which of those early checks are about to run; `author` is the From
    as the caller has parsed it already (else it is parsed here)."""
    first: list[Query] = []
    if iprev and known.iprev is None:
        ptr = _ptr_name(tx.client_ip)
        if ptr:
            first.append((ptr, "PTR"))
    if spf and known.spf is None:
        for domain in (address_domain(tx.mail_from), _domain(tx.helo) if spf_helo else None):
            if domain:
                first.append((domain, "TXT"))
    author_domain: str | None = None
    if eom:
        first.extend(_key_names(tx))
        if author is None:
            author = parse_author(tx.headers)
        author_domain = author.domain if author.domain and not author.error else None
        # The DMARC tree walks: the From domain's for its policy, the MAIL FROM domain's for its
        # organizational domain (relaxed SPF alignment), each exactly as dmarc.tree_walk asks.
        for walked in dict.fromkeys(d for d in (author_domain, address_domain(tx.mail_from)) if d):
            first.extend((f"_dmarc.{d}", "TXT") for d in walk_targets(walked))
    if known.dnslists is None or eom:
        first.extend(_list_names(tx, lists, author_domain if eom else None,
                                 only_from=known.dnslists is not None))
    batch = list(dict.fromkeys(first))[:MAX_NAMES]
    uncached = getattr(dns, "uncached", None)
    if callable(uncached):
        # What the cache holds is as good as fetched: with a warm cache (the usual case) there
        # is nothing to ask and the checks go straight to the cache.
        batch = uncached(batch)
    answers: dict[Query, DnsAnswer] = {}
    for _ in range(ROUNDS):
        if not batch:
            break
        fresh = query_many(dns, batch)
        answers.update(fresh)
        # The next round: what this one's answers point to, not asked yet.
        batch = [q for q in dict.fromkeys(_follow(fresh)) if q not in answers][:MAX_NAMES]
        if callable(uncached):
            batch = uncached(batch)
    return Prefetched(dns, answers) if answers else _Unchanged(dns)


@functools.lru_cache(maxsize=4096)
def _ptr_name(client_ip: str | None) -> str | None:
    ip = normalize_client_ip(client_ip) if client_ip else None
    return ipaddress.ip_address(ip).reverse_pointer if ip else None


def _domain(name: str) -> str | None:
    try:
        return normalize_domain(name.strip())
    except ValueError:
        return None


_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\Z")


def _dns_name(text: str) -> str | None:
    """A name as SPF targets write them: host names, and service names like _spf.example."""
    name = text.strip().lower().removesuffix(".")
    return name if _DNS_NAME.match(name) else None


def _key_names(tx: Transaction) -> list[Query]:
    """s._domainkey.d for each DKIM-Signature and ARC-Message-Signature / ARC-Seal."""
    names: list[Query] = []
    for h in tx.headers:
        if h.key not in (b"dkim-signature", b"arc-message-signature", b"arc-seal"):
            continue
        tags = dict((m.group(1), m.group(2)) for m in _TAG.finditer(h.value.replace(b"\r\n", b"")))
        d, s = tags.get(b"d"), tags.get(b"s")
        if d is None or s is None:
            continue
        domain = _domain(d.decode("ascii", "replace"))
        selector = s.decode("ascii", "replace")
        if domain and re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", selector):
            names.append((f"{selector}._domainkey.{domain}", "TXT"))
    return names


def _list_names(tx: Transaction, lists: Iterable[DnsList], author_domain: str | None, *,
                only_from: bool) -> list[Query]:
    names: list[Query] = []
    subjects = {"helo": tx.helo, "mailfrom": address_domain(tx.mail_from), "from": author_domain or ""}
    for dnslist in lists:
        if dnslist.kind == "ip":
            if not only_from:
                name = query_name(dnslist, tx.client_ip or "")
                if name:
                    names.append((name, "A"))
            continue
        for identity, subject in subjects.items():
            if (only_from and identity != "from") or not subject:
                continue
            if dnslist.identities and identity not in dnslist.identities:
                continue
            name = query_name(dnslist, subject)
            if name:
                names.append((name, "A"))
    return names


def _follow(answers: dict[Query, DnsAnswer]) -> list[Query]:
    """What the first answers point to: PTR names' addresses, SPF targets."""
    out: list[Query] = []
    for (name, rdtype), answer in answers.items():
        if not answer.ok:
            continue
        if rdtype == "PTR":
            for target in answer.records[:_MAX_PTR_NAMES]:
                # iprev confirms a name by the address family of the client.
                out.append((str(target), "AAAA" if name.endswith("ip6.arpa") else "A"))
        elif rdtype == "MX":
            for _, exchange in answer.records[:_MAX_PTR_NAMES]:
                out.append((str(exchange), "A"))
        elif rdtype == "TXT" and not name.startswith("_dmarc.") and "._domainkey." not in name:
            for text in answer.txt_strings():
                if text[:7].lower() == b"v=spf1 " or text.lower() == b"v=spf1":
                    out.extend(_spf_targets(name, text.decode("ascii", "replace")))
    return out


def _spf_targets(domain: str, record: str) -> list[Query]:
    out: list[Query] = []
    for m in _SPF_TARGET.finditer(record):
        kind, target = m.group(1).lower().rstrip(":="), m.group(2)
        if "%" in target:
            continue  # macros expand per message: the SPF check asks those itself
        host = _dns_name(target.split("/", 1)[0]) if target else domain
        if not host:
            continue
        if kind in ("include", "redirect"):
            out.append((host, "TXT"))
        elif kind == "a":
            out.append((host, "A"))
        elif kind == "mx":
            out.append((host, "MX"))
    return out
