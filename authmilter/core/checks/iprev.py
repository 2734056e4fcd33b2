"""iprev (RFC 8601 section 3): does the client's reverse DNS lead back to its address?

The client address is looked up as a PTR record; each name found is looked up forward (A for an
IPv4 client, AAAA for IPv6), and the check passes when one of them has the client address among
its records: "forward-confirmed reverse DNS". Only that confirmed name means anything. The PTR
data are published by whoever holds the address block, so an unconfirmed name is a claim anyone
could make ("mail.bank.example").

Results, as RFC 8601 section 2.7.3 defines them
-----------------------------------------------
* pass: a PTR name resolves back to the client address.
* fail: PTR names were found but none resolves back: their forward lookups answered with other
  addresses, NXDOMAIN or no data; or no PTR target is a host name that could be looked up.
* permerror: no PTR data are published for the address (NXDOMAIN, or NOERROR without a PTR
  record). Section 2.7.3 says so in as many words: this is permerror, not fail, and a later
  attempt is unlikely to change it.
* temperror: a lookup that could have changed the answer failed (timeout, SERVFAIL): the PTR
  lookup itself, or a forward lookup when no other name confirmed. A name that confirms wins
  over another one that could not be looked up.
* none (ours, not registered for iprev): no client address (local submission), or an address the
  MTA handed over that is not an IP address. Nothing was checked, so Authentication-Results gets
  no iprev clause; as for SPF, this is our MTA's input, not something to hold against the sender.

Limits
------
The PTR records come from the client's side of the DNS, so their number is the client's choice.
At most `MAX_PTR_NAMES` (10) names are followed: the same limit RFC 7208 section 4.6.4 puts on
the names an SPF "ptr" mechanism may follow, and far above the one or two names real mail
servers publish. They are followed in sorted order, so that the same records always give the
same result whichever order the resolver returns them in; a name past the tenth is not looked
up, which the reason says. One forward lookup per name (CNAMEs are the resolver's business)
makes `MAX_LOOKUPS` = 11 queries at most. Names whose forward lookups time out each cost a full
resolver timeout, so after `MAX_UNANSWERED` (3) unanswered lookups the check gives up with
temperror rather than keep the SMTP client (and the MTA's milter timeout) waiting. For the same
reason there is a time budget, as SPF has one: no new lookup starts once `budget` seconds
(default `TIME_BUDGET`, 10) have passed on the `clock` handed in, and the result is temperror.
A DNS server that answers each query just before the resolver's timeout could otherwise hold
us for 11 timeouts; with the budget it is the budget plus the one lookup under way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from authmilter.core.dnsapi import DnsAnswer, DnsStatus, Resolver
from authmilter.core.model import IprevResult
from authmilter.core.names import normalize_client_ip, normalize_domain

__all__ = ["MAX_LOOKUPS", "MAX_PTR_NAMES", "MAX_UNANSWERED", "RESULTS", "TIME_BUDGET", "check_iprev"]

RESULTS = ("pass", "fail", "temperror", "permerror", "none")

MAX_PTR_NAMES = 10
MAX_LOOKUPS = 1 + MAX_PTR_NAMES  # the PTR lookup, then one forward lookup per name followed
MAX_UNANSWERED = 3
TIME_BUDGET = 10.0  # seconds
# PTR records read before choosing the names to follow: a bound on the work a huge answer costs.
_PTR_RECORDS_READ = 100


def check_iprev(
    client_ip: str | None,
    dns: Resolver,
    *,
    clock: Callable[[], float] | None = None,
    budget: float = TIME_BUDGET,
) -> IprevResult:
    """The iprev result for `client_ip` as the MTA handed it over (brackets, "IPv6:" allowed).

    `clock` (monotonic seconds) enables the time budget; without one, only the lookup limits apply.
    """
    deadline = clock() + budget if clock is not None and budget > 0 else None
    if not client_ip or not client_ip.strip():
        return IprevResult("none", "", reason="no client address")
    ip = normalize_client_ip(client_ip)
    if ip is None:
        return IprevResult("none", "", reason="the client address is not an IP address")
    address = ipaddress.ip_address(ip)
    ptr = _query(dns, address.reverse_pointer, "PTR")
    if ptr.status is DnsStatus.TEMPERROR:
        return IprevResult("temperror", ip, reason=_failed("PTR", address.reverse_pointer, ptr))
    if ptr.status is DnsStatus.NXDOMAIN:
        return IprevResult("permerror", ip, reason="no PTR record (NXDOMAIN)")
    if not ptr.ok or not ptr.records:
        return IprevResult("permerror", ip, reason="no PTR record")

    names, unusable = _host_names(ptr.records)
    if not names:
        return IprevResult("fail", ip, reason=f"no PTR target is a host name ({unusable} unusable)")
    followed = tuple(names[:MAX_PTR_NAMES])
    skipped = len(names) - len(followed)
    rdtype = "A" if address.version == 4 else "AAAA"
    unanswered: list[str] = []
    out_of_time = False
    for name in followed:  # at most MAX_PTR_NAMES forward lookups
        if deadline is not None and clock is not None and clock() >= deadline:
            out_of_time = True
            break
        forward = _query(dns, name, rdtype)
        if forward.status is DnsStatus.TEMPERROR:
            unanswered.append(_failed(rdtype, name, forward))
            if len(unanswered) >= MAX_UNANSWERED:
                break
            continue
        if forward.ok and any(_same_address(address, r) for r in forward.records):
            return IprevResult("pass", ip, host=name, ptr_names=followed)
    # A name that could not be looked up, or was not looked up in time, might have confirmed:
    # that is no definite fail.
    if out_of_time:
        return IprevResult("temperror", ip, ptr_names=followed,
                           reason=f"gave up after {budget:g} s of DNS lookups")
    if unanswered:
        more = f" (and {len(unanswered) - 1} more)" if len(unanswered) > 1 else ""
        given_up = "; gave up" if len(unanswered) >= MAX_UNANSWERED else ""
        return IprevResult("temperror", ip, ptr_names=followed,
                           reason=f"{unanswered[0]}{more}{given_up}")
    reason = f"no PTR name resolves to {ip}"
    if skipped:
        reason += f"; {skipped} more PTR names not followed (at most {MAX_PTR_NAMES})"
    return IprevResult("fail", ip, ptr_names=followed, reason=reason)


def _query(dns: Resolver, name: str, rdtype: str) -> DnsAnswer:
    try:
        return dns.query(name, rdtype)
    except Exception as exc:
        # The Resolver contract says it never raises; one that does could not answer, which is
        # what temperror means, not a reason to lose the whole evaluation.
        return DnsAnswer(DnsStatus.TEMPERROR, error=f"resolver error {type(exc).__name__}")


def _failed(rdtype: str, name: str, answer: DnsAnswer) -> str:
    detail = f": {answer.error}" if answer.error else ""
    return f"DNS {rdtype} {name} failed{detail}"


def _host_names(records: tuple[object, ...]) -> tuple[list[str], int]:
    """The distinct PTR targets that are host names, sorted; and how many records were not."""
    names: set[str] = set()
    unusable = 0
    for record in records[:_PTR_RECORDS_READ]:
        try:
            name = normalize_domain(str(record))
        except ValueError:
            # "_sip.x", a space, an empty root target: no host could be looked up under it.
            unusable += 1
            continue
        names.add(name)
    return sorted(names), unusable


def _same_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address, record: object) -> bool:
    try:
        return ipaddress.ip_address(str(record)) == address
    except ValueError:
        return False
