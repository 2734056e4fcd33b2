"""What each check found: frozen values, one type per check."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class SpfIdentity(enum.Enum):
    MAILFROM = "mailfrom"
    HELO = "helo"


@dataclass(frozen=True)
class SpfResult:
    """RFC 7208 result for one identity.

    result: pass | fail | softfail | neutral | none | temperror | permerror
    """

    result: str
    identity: SpfIdentity
    domain: str  # the domain checked (MAIL FROM domain, or the HELO name)
    sender: str  # what A-R reports: the MAIL FROM address, or the HELO name
    reason: str = ""


@dataclass(frozen=True)
class SpfResults:
    """`effective` is the one DMARC and A-R use: MAIL FROM, or HELO when MAIL FROM is null."""

    effective: SpfResult
    helo: SpfResult | None


@dataclass(frozen=True)
class DkimResult:
    """One DKIM-Signature's outcome (RFC 6376, RFC 8601 section 2.7.1).

    result: pass | fail | neutral | policy | temperror | permerror
    """

    result: str
    domain: str  # d=
    selector: str  # s=
    algorithm: str  # a=
    b_prefix: str  # first 8 characters of b=
    identity: str = ""  # i=, when present
    reason: str = ""
    key_bits: int | None = None


@dataclass(frozen=True)
class AuthorResult:
    """The RFC5322.From as DMARC needs it: exactly one address with one domain, or why not."""

    domain: str | None  # lower-case author domain when there is exactly one
    addresses: tuple[str, ...] = ()
    error: str = ""  # non-empty when the From is missing, repeated, multi-address or unparseable


@dataclass(frozen=True)
class DmarcRecord:
    domain: str  # where the record was found
    p: str | None
    sp: str | None
    np: str | None
    adkim: str
    aspf: str
    pct: int | None  # only RFC 7489 records carry it
    t: bool  # RFC 9989 testing flag (pct=0 read as t=y for RFC 7489 records)
    psd: str | None  # "y" | "n" | "u" | None
    raw: str
    rua: tuple[str, ...] = ()  # syntactically valid aggregate-report URIs
    ruf: tuple[str, ...] = ()  # syntactically valid failure-report URIs (RFC 9991)
    fo: str | None = None  # failure reporting options as published ("0", "1", "d", "s", joined by ":")
    # Non-empty when RFC 9989 section 4.10.1 says to apply no DMARC processing with this record
    # (an invalid p, sp or np and no valid rua URI); says why.
    unusable: str = ""
    errors: tuple[str, ...] = ()  # invalid or malformed tags that were ignored or defaulted


@dataclass(frozen=True)
class DmarcResult:
    """result: pass | fail | none | temperror | permerror

    policy: the policy that applies to this message: none | quarantine | reject (or "" when no
    policy could be found). applied_tag: which tag it came from ("p", "sp", "np").
    """

    result: str
    domain: str  # author domain
    policy: str = ""
    applied_tag: str = ""
    org_domain: str = ""
    record: DmarcRecord | None = None
    spf_aligned: bool = False
    dkim_aligned: bool = False
    aligned_by: str = ""  # e.g. "dkim:example.com" or "spf:bounce.example.com"
    testing: bool = False  # t=y, or pct<100 under RFC 7489 sampling
    reason: str = ""


@dataclass(frozen=True)
class ArcHop:
    """One ARC Set (RFC 8617 section 4.2) as its sealer described it.

    Everything here is the sealer's claim, copied from its header fields; it is worth something only
    when the chain it belongs to validated (`ArcResult.result == "pass"`) and the sealer is trusted.
    """

    instance: int  # i=
    sealer: str  # ARC-Seal d=
    selector: str  # ARC-Seal s=
    cv: str  # the cv= this hop's ARC-Seal recorded: "none" | "pass" | "fail"
    aar_authserv_id: str  # authserv-id of its ARC-Authentication-Results
    aar: tuple[tuple[str, str], ...]  # (method, result) pairs in AAR order, e.g. ("dmarc", "pass")
    aar_header_from: str = ""  # header.from of its dmarc result, if it had one


@dataclass(frozen=True)
class ArcResult:
    """The ARC Chain Validation Status (RFC 8617 section 5.2) and what was read on the way.

    result: none | pass | fail (the only values RFC 8617 registers for the "arc" method)
    oldest_pass: header.oldest-pass when result is "pass": the lowest instance whose
    ARC-Message-Signature still validates, 0 when all of them do; None otherwise.
    """

    result: str
    instances: int  # N, the highest instance found (0 when none could be read)
    oldest_pass: int | None = None
    sealers: tuple[str, ...] = ()  # ARC-Seal d= by instance, lowest first
    hops: tuple[ArcHop, ...] = ()  # one per instance, lowest first, when the sets could be read
    reason: str = ""


@dataclass(frozen=True)
class IprevResult:
    """Forward-confirmed reverse DNS of the SMTP client (RFC 8601 sections 2.7.3 and 3).

    result: pass | fail | temperror | permerror, the values RFC 8601 registers for "iprev"; or
    none when there was no client address to check (local submission, or an address the MTA
    handed over that is no IP address), which is reported in no Authentication-Results clause.
    """

    result: str
    ip: str  # the client address as checked (IPv4-mapped IPv6 as IPv4); "" for none
    host: str = ""  # the PTR name that resolved back to `ip`; only when result is pass
    ptr_names: tuple[str, ...] = ()  # the PTR names followed, in the order they were tried
    reason: str = ""


@dataclass(frozen=True)
class HeloResult:
    """What the HELO/EHLO name says about the client (core/checks/helo.py has the rules).

    Facts only: RFC 5321 section 4.1.4 forbids refusing mail because the name does not match the
    client's address. A flag that cannot be told is False (`literal_mismatch` without a client
    address, `fqdn` for anything that is not a valid domain name).
    """

    helo: str  # as the client sent it, surrounding white space removed
    syntax_ok: bool  # an RFC 5321 Domain, or an address literal [192.0.2.1] / [IPv6:2001:db8::1]
    fqdn: bool  # a valid domain name with at least one dot
    bare_ip: bool  # an IP address without the brackets of an address literal (not syntax_ok)
    literal: bool  # a valid address literal
    literal_mismatch: bool  # an address literal, or bare address, that is not the client's
    is_ours: bool  # one of our own host names, or one of our own addresses
    reason: str = ""


@dataclass(frozen=True)
class DnsListResult:
    """One DNS list (RFC 5782) asked about one identity (core/checks/dnslists.py has the rules).

    status: listed | not-listed | unusable | temperror. Only "listed" says anything about the
    sender; "unusable" (the list answered with an error code, or nonsense) and "temperror" (it
    could not be asked) say something about the list, and never count as a listing.
    """

    list_name: str  # the operator's label for the list
    zone: str  # the list's DNS zone, e.g. "zen.spamhaus.org"
    identity: str  # what was looked up: "ip", or the domain's identity ("helo", "mailfrom", "from")
    queried: str  # the name asked for, e.g. "2.0.0.127.zen.spamhaus.org"
    status: str
    allow: bool = False  # an allow list (DNSWL type): listed means vouched for, not blocked
    codes: tuple[str, ...] = ()  # the returned addresses that count, sorted; only when listed
    meanings: tuple[str, ...] = ()  # their meanings, in the order of `codes`, each once
    ignored: tuple[str, ...] = ()  # returned addresses that matched no configured code
    reason: str = ""

    @property
    def listed(self) -> bool:
        return self.status == "listed"


@dataclass(frozen=True)
class DnsListResults:
    """Every (list, identity) lookup, in the order the lists were configured."""

    results: tuple[DnsListResult, ...] = ()

    @property
    def blocklisted(self) -> tuple[DnsListResult, ...]:
        """The listings on block lists (allow=False)."""
        return tuple(r for r in self.results if r.listed and not r.allow)

    @property
    def allowlisted(self) -> tuple[DnsListResult, ...]:
        """The listings on allow lists (allow=True)."""
        return tuple(r for r in self.results if r.listed and r.allow)


@dataclass(frozen=True)
class GreylistResult:
    """What greylisting (core/checks/greylist.py) said about one recipient at RCPT TO.

    state: new | early | expired-restart (the attempt is deferred) | passed | auto-allowed (the
    client passed often enough that it is no longer greylisted) | skipped (authenticated
    sender) | error (the store could not answer; `deferred` then follows the operator's choice).
    """

    rcpt: str
    state: str
    key: str = ""  # the triplet as stored; "" when the store was not asked
    first_seen: float = 0.0
    passes: int = 0
    wait: float = 0.0  # seconds until a retry can pass (deferred states only)
    error: str = ""

    @property
    def deferred(self) -> bool:
        return self.state in ("new", "early", "expired-restart")


@dataclass(frozen=True)
class RateResult:
    """One rate limit's token bucket after this recipient or message was counted."""

    limit: str  # the operator's name for the limit
    key: str  # the bucket, e.g. "client_ip 192.0.2.1"
    exceeded: bool
    tokens_left: float = 0.0
    retry_after: float = 0.0  # seconds until it would be allowed again; 0 when allowed
    error: str = ""  # the store could not answer: not counted, so never exceeded
    rcpt: str = ""  # the recipient counted; "" for a limit counting messages


@dataclass(frozen=True)
class EarlyResults:
    """Results worked out before end of message, for the caller to keep and hand back so that no
    check runs twice: SPF and the DNS lists belong to one transaction, iprev and HELO to the
    whole connection; greylisting and rate limits are counted once per recipient."""

    spf: SpfResults | None = None
    iprev: IprevResult | None = None
    helo: HeloResult | None = None
    dnslists: DnsListResults | None = None
    greylist: tuple[GreylistResult, ...] = ()
    rates: tuple[RateResult, ...] = ()


@dataclass(frozen=True)
class Results:
    spf: SpfResults | None
    dkim: tuple[DkimResult, ...]
    author: AuthorResult
    dmarc: DmarcResult | None
    arc: ArcResult | None = None  # None when ARC was not evaluated
    iprev: IprevResult | None = None  # None when not evaluated
    helo: HeloResult | None = None
    dnslists: DnsListResults | None = None  # None when no list is configured
    greylist: tuple[GreylistResult, ...] = ()  # per recipient, as decided at RCPT TO
    rates: tuple[RateResult, ...] = ()
