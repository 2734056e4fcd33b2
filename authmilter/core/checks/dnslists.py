"""DNS lists (RFC 5782): is the client address, or a domain of the message, on a block or allow list?

An IP list is asked for the client address reversed under its zone (192.0.2.1 in zone
zen.spamhaus.org is "1.2.0.192.zen.spamhaus.org"; IPv6 addresses as 32 reversed nibbles, section
2.4), a domain list for the domain itself under its zone ("example.org.dbl.spamhaus.org"); an A
record means listed, NXDOMAIN (or NODATA) means not listed (section 2.1). This module only
reports; whether a listing refuses mail, or an allow listing (DNSWL type, `allow=True`) excuses
it, is the policy's decision.

Why an answer is not simply "listed"
------------------------------------
* Error codes. Lists answer some queries with an A record that is no listing: Spamhaus says
  127.255.255.252 (the zone name is misspelt), .254 (asked through a public resolver) and .255
  (too many queries), and 127.0.1.255 on the DBL (an IP address asked of a domain list); DNSWL
  says 127.0.0.255 (over its free limit); SURBL and URIBL say 127.0.0.1 (query refused), which
  is also the address RFC 5782 section 5 says no list may list. Reading any of these as a
  listing would refuse every message once a list starts refusing us, so the answer is
  "unusable": the list is out of order, the sender is not judged. One error code among other
  addresses makes the whole answer unusable, since the list has said it is not answering us.
* Addresses outside 127.0.0.0/8. Section 2.1 has lists answer with 127/8 addresses; anything else
  is what a lapsed list domain, parked and wildcarded by its new owner, answers for every name.
  That must not list the whole Internet, so it too is "unusable".
* Codes nobody configured. With `codes` configured, the operator has said which answers they
  trust, and often left some out on purpose (Spamhaus ZEN's PBL codes 127.0.0.10-11 list
  end-user address space, which an operator may not want to count, say, for authenticated
  submission): an address that matches no configured code is ignored, and an answer of ignored
  codes only is "not-listed" (the `ignored` field keeps them for the operator). With no codes
  configured, every 127/8 answer that is not an error code is a listing, meaning "unknown code":
  section 2.1 says the A record's existence is what lists, and an operator who named no codes
  asked for just that.
* DNS failures. A timeout or SERVFAIL is "temperror" and never a listing: the list could not be
  asked, which says nothing about the sender.

Lookups are made one after another: the `Resolver` interface answers one query at a time (the
shell's resolver caches, so the same name asked twice costs one query). A name asked for two
identities (HELO and MAIL FROM domain alike) is asked once. An optional time budget, as in iprev,
stops new lookups once `budget` seconds have passed on the `clock` handed in; the lists not asked
come back as temperror.

The self-test of section 5 (`self_test`) tells whether a list works at all: an IP list must list
127.0.0.2 and must not list 127.0.0.1, a domain list must list "test" and not "invalid". Running
it periodically, and ignoring a list that fails it, is the shell's business.
"""

from __future__ import annotations

import functools
import ipaddress
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from authmilter.core.dnsapi import DnsAnswer, DnsStatus, Resolver
from authmilter.core.model import DnsListResult, DnsListResults
from authmilter.core.names import normalize_client_ip, normalize_domain

__all__ = [
    "ERROR_CODES",
    "KINDS",
    "STATUSES",
    "TIME_BUDGET",
    "UNKNOWN_CODE",
    "DnsList",
    "query_lists",
    "query_name",
    "self_test",
]

KINDS = ("ip", "domain")
STATUSES = ("listed", "not-listed", "unusable", "temperror")
UNKNOWN_CODE = "unknown code"
TIME_BUDGET = 10.0  # seconds, as for iprev

# Answers that are the list speaking about itself, never about the sender (the module doc says why).
ERROR_CODES: Mapping[str, str] = types.MappingProxyType({
    "127.0.0.1": "query refused (SURBL/URIBL); RFC 5782 section 5 forbids listing it",
    "127.0.0.255": "over the query limit (DNSWL)",
    "127.0.1.255": "IP address queries are not allowed (Spamhaus DBL)",
    "127.255.255.252": "typing error in the list's name (Spamhaus)",
    "127.255.255.254": "queried through a public or open resolver (Spamhaus)",
    "127.255.255.255": "excessive number of queries (Spamhaus)",
})
_LOOPBACK_NET = ipaddress.IPv4Network("127.0.0.0/8")
# A records read from one answer: a list returns a handful; this bounds a hostile answer's cost.
_RECORDS_READ = 32

_Range = tuple[int, int, str]  # first and last address as integers, and the meaning


@dataclass(frozen=True)
class DnsList:
    """One DNS list as the operator configured it.

    `codes` maps a returned address ("127.0.0.2") or an inclusive range ("127.0.0.2-127.0.0.11")
    to what it means; both ends must lie in 127.0.0.0/8. ValueError for a bad zone, kind or code.
    """

    name: str
    zone: str
    kind: Literal["ip", "domain"] = "ip"
    codes: Mapping[str, str] = field(default_factory=dict, hash=False)
    allow: bool = False
    # Which identities' domains a domain list is asked about (empty: all); IP lists ignore it.
    identities: tuple[str, ...] = ()
    _ranges: tuple[_Range, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"list {self.name!r}: kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        try:
            zone = normalize_domain(self.zone)
        except ValueError as exc:
            raise ValueError(f"list {self.name!r}: zone {self.zone!r}: {exc}") from None
        object.__setattr__(self, "zone", zone)
        object.__setattr__(self, "codes", types.MappingProxyType(dict(self.codes)))
        ranges = tuple(_parse_code(self.name, k, v) for k, v in self.codes.items())
        object.__setattr__(self, "_ranges", ranges)

    def meaning(self, address: str) -> str | None:
        """What a returned address means: its configured meaning(s), or None when it matches none."""
        value = int(ipaddress.IPv4Address(address))
        found = [m for lo, hi, m in self._ranges if lo <= value <= hi]
        return "; ".join(dict.fromkeys(found)) if found else None


@functools.lru_cache(maxsize=4096)  # every list, at MAIL FROM and again at the end; few clients
def _reversed_labels(ip: str) -> str:
    """A normalized address's labels in RFC 5782 order: octets, or IPv6 nibbles, reversed."""
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        return ".".join(reversed(ip.split(".")))
    return ".".join(reversed(address.exploded.replace(":", "")))


def query_name(dnslist: DnsList, subject: str) -> str | None:
    """The name to ask `dnslist` for an IP address or domain, or None when `subject` is not one."""
    if dnslist.kind == "ip":
        ip = normalize_client_ip(subject) if subject else None
        if ip is None:
            return None
        return f"{_reversed_labels(ip)}.{dnslist.zone}"
    try:
        domain = normalize_domain(subject)
    except ValueError:
        return None
    return f"{domain}.{dnslist.zone}"


def query_lists(
    lists: Iterable[DnsList],
    client_ip: str | None,
    domains: Mapping[str, str | None],
    dns: Resolver,
    *,
    clock: Callable[[], float] | None = None,
    budget: float = TIME_BUDGET,
) -> DnsListResults:
    """Ask every list: IP lists for `client_ip`, domain lists for each of `domains`.

    `domains` maps an identity ("helo", "mailfrom", "from") to its domain; an identity whose
    domain is empty or no host name (a HELO address literal) is not looked up, and neither is a
    missing or unparsable `client_ip`. Results come in the order of `lists`, then of `domains`.
    `clock` (monotonic seconds) enables the time budget.
    """
    deadline = clock() + budget if clock is not None and budget > 0 else None
    asked: dict[str, DnsAnswer] = {}
    out: list[DnsListResult] = []
    for dnslist in lists:
        if dnslist.kind == "ip":
            subjects: list[tuple[str, str]] = [("ip", client_ip or "")]
        else:
            subjects = [(identity, domain or "") for identity, domain in domains.items()
                        if not dnslist.identities or identity in dnslist.identities]
        for identity, subject in subjects:
            name = query_name(dnslist, subject)
            if name is None:
                continue
            answer = asked.get(name)
            if answer is None:
                if deadline is not None and clock is not None and clock() >= deadline:
                    out.append(DnsListResult(dnslist.name, dnslist.zone, identity, name, "temperror",
                                             allow=dnslist.allow,
                                             reason=f"not asked: {budget:g} s of DNS lookups spent"))
                    continue
                answer = asked[name] = _query(dns, name)
            out.append(_judge(dnslist, identity, name, answer))
    return DnsListResults(tuple(out))


def self_test(dnslist: DnsList, dns: Resolver) -> tuple[bool, str]:
    """RFC 5782 section 5: (True, "") when the list lists its test point and not its "never" point.

    IP lists: 127.0.0.2 must be listed, 127.0.0.1 must not; domain lists: "test" and "invalid".
    Only the IPv4 test points are asked of IP lists, since not every IPv4 list serves IPv6. Any
    non-error 127/8 answer counts as listed here, configured codes or not: the test asks whether
    the list answers, not what its codes mean.
    """
    listed_point, unlisted_point = ("127.0.0.2", "127.0.0.1") if dnslist.kind == "ip" else ("test", "invalid")
    for point, should_list in ((listed_point, True), (unlisted_point, False)):
        name = query_name(dnslist, point)
        assert name is not None  # the test points are valid addresses and host names
        answer = _query(dns, name)
        if answer.status is DnsStatus.TEMPERROR:
            return False, _failed(name, answer)
        addresses, bad = _addresses(answer)
        if bad:
            return False, f"{name}: {bad}"
        if should_list and not addresses:
            return False, f"{name}: the test point {point} is not listed ({answer.status.value})"
        if not should_list and addresses:
            return False, f"{name}: {point} is listed ({', '.join(addresses)}), which no list may do"
    return True, ""


def _judge(dnslist: DnsList, identity: str, name: str, answer: DnsAnswer) -> DnsListResult:
    def result(status: str, codes: tuple[str, ...] = (), meanings: tuple[str, ...] = (),
               ignored: tuple[str, ...] = (), reason: str = "") -> DnsListResult:
        return DnsListResult(dnslist.name, dnslist.zone, identity, name, status, allow=dnslist.allow,
                             codes=codes, meanings=meanings, ignored=ignored, reason=reason)

    if answer.status is DnsStatus.TEMPERROR:
        return result("temperror", reason=_failed(name, answer))
    addresses, bad = _addresses(answer)
    if bad:
        return result("unusable", reason=bad)
    if not addresses:
        return result("not-listed")
    if not dnslist.codes:
        return result("listed", codes=addresses, meanings=(UNKNOWN_CODE,))
    codes: list[str] = []
    meanings: dict[str, None] = {}
    ignored: list[str] = []
    for address in addresses:
        meaning = dnslist.meaning(address)
        if meaning is None:
            ignored.append(address)
        else:
            codes.append(address)
            meanings[meaning] = None
    if not codes:
        return result("not-listed", ignored=tuple(ignored),
                      reason=f"no configured code matches {', '.join(ignored)}")
    return result("listed", codes=tuple(codes), meanings=tuple(meanings), ignored=tuple(ignored))


def _addresses(answer: DnsAnswer) -> tuple[tuple[str, ...], str]:
    """The listing addresses of an answer, sorted; or why the answer is unusable ("" when usable)."""
    if not answer.ok:
        return (), ""  # NXDOMAIN, NODATA: not listed
    found: set[ipaddress.IPv4Address] = set()
    for record in answer.records[:_RECORDS_READ]:
        try:
            address = ipaddress.IPv4Address(str(record))
        except ValueError:
            return (), f"the answer {str(record)[:64]!r} is no IPv4 address"
        text = str(address)
        if text in ERROR_CODES:
            return (), f"the list answered {text}: {ERROR_CODES[text]}"
        if address not in _LOOPBACK_NET:
            return (), f"the list answered {text}, outside 127.0.0.0/8 (a wildcarded or lapsed zone?)"
        found.add(address)
    return tuple(str(a) for a in sorted(found)), ""


def _parse_code(list_name: str, key: str, meaning: str) -> _Range:
    first, sep, last = key.partition("-")
    try:
        lo = ipaddress.IPv4Address(first.strip())
        hi = ipaddress.IPv4Address(last.strip()) if sep else lo
    except ValueError:
        raise ValueError(f"list {list_name!r}: code {key!r} is not an IPv4 address or range") from None
    if lo not in _LOOPBACK_NET or hi not in _LOOPBACK_NET:
        raise ValueError(f"list {list_name!r}: code {key!r} is outside 127.0.0.0/8")
    if lo > hi:
        raise ValueError(f"list {list_name!r}: code range {key!r} ends before it starts")
    return int(lo), int(hi), str(meaning)


def _query(dns: Resolver, name: str) -> DnsAnswer:
    try:
        return dns.query(name, "A")
    except Exception as exc:
        # The Resolver contract says it never raises; one that does could not answer: temperror.
        return DnsAnswer(DnsStatus.TEMPERROR, error=f"resolver error {type(exc).__name__}")


def _failed(name: str, answer: DnsAnswer) -> str:
    detail = f": {answer.error}" if answer.error else ""
    return f"DNS A {name} failed{detail}"
