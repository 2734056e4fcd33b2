"""The DNS interface the core asks through.

Rule 1: a lookup never raises for DNS reasons. Every outcome is a `DnsAnswer` whose status says
which of the four things happened, because the protocols above us (SPF, DKIM, DMARC) each map
them to their own results, and they must not confuse "no such name" with "could not ask".

Rule 2: timeouts and SERVFAIL (and REFUSED, and malformed replies) are TEMPERROR; NXDOMAIN and
NODATA are definite answers and are not. A NOERROR answer whose CNAME chain loops is NODATA (with
error "CNAME loop"): no record of the type can be reached from the name, now or on a retry.

Record shapes in `DnsAnswer.records`, by type:
  TXT   tuple[bytes, ...]    the record's character-strings, not joined (SPF and DKIM join them)
  A     str                  "192.0.2.1"
  AAAA  str                  "2001:db8::1"
  MX    tuple[int, str]      (preference, exchange without trailing dot)
  PTR   str                  target without trailing dot
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol


class DnsStatus(enum.Enum):
    OK = "ok"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    TEMPERROR = "temperror"


@dataclass(frozen=True)
class DnsAnswer:
    status: DnsStatus
    records: tuple[Any, ...] = ()
    ttl: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is DnsStatus.OK

    def txt_strings(self) -> list[bytes]:
        """Each TXT record with its character-strings joined, as RFC 7208 and RFC 6376 read them."""
        return [b"".join(r) for r in self.records]


class Resolver(Protocol):
    def query(self, name: str, rdtype: str) -> DnsAnswer:
        """Look up `name` (no trailing dot needed) for `rdtype` ("TXT", "A", "AAAA", "MX", "PTR")."""
        ...


def query_many(dns: Resolver, queries: Iterable[tuple[str, str]]) -> dict[tuple[str, str], DnsAnswer]:
    """Every (name, rdtype) pair answered, keyed by the pair as given; each distinct pair asked once.

    A resolver with a `query_many` of this signature (the product's asks the lookups at once) is
    left to it; any other `Resolver` is asked one pair after another.
    """
    answers: dict[tuple[str, str], DnsAnswer]
    many = getattr(dns, "query_many", None)
    if callable(many):
        answers = many(queries)
        return answers
    answers = {}
    for name, rdtype in queries:
        if (name, rdtype) not in answers:
            try:
                answers[(name, rdtype)] = dns.query(name, rdtype)
            except Exception as exc:  # rule 1 holds for a batch too, whatever the resolver does
                answers[(name, rdtype)] = DnsAnswer(DnsStatus.TEMPERROR, error=f"{type(exc).__name__}: {exc}")
    return answers
