"""SPF (RFC 7208) for the MAIL FROM and HELO identities, evaluated by pyspf.

We do not evaluate SPF ourselves: pyspf does, in strict RFC 7208 mode. This module decides *what*
to check (which identity, which domain, whether a check is possible at all), routes pyspf's DNS
lookups to our `Resolver`, and turns everything pyspf can do -- including raising -- into one of
the seven RFC 7208 results.

How pyspf reaches our resolver
------------------------------
pyspf performs every lookup through the module global `spf.DNSLookup(name, qtype, strict,
timeout)`, read at call time from `query.dns()`. Subclassing `spf.query` is no help: the smallest
method that talks to DNS is `dns()` itself, which also owns the cache, CNAME chasing and the
void-lookup count, so overriding it would mean re-implementing that logic. Instead we replace
`spf.DNSLookup` once, at import, with a dispatcher that reads the resolver from a `ContextVar`
which `check_spf` sets for exactly the duration of one evaluation. Context variables are
per-thread (and per-asyncio-task), so libmilter callback threads using different resolvers never
see each other's; outside `check_spf` the dispatcher falls back to pyspf's own lookup, so any other
user of pyspf in the process behaves as before.

Choices where RFC 7208 leaves room
----------------------------------
* No client IP (local submission, or the MTA did not say): nothing can be authorized, so the
  effective result is "none" with a reason, and no HELO result is produced.
* An unparseable client IP: also "none". The IP comes from our own MTA, not from the sender, so
  this is not the domain's error (permerror would blame the domain and might make policy reject).
  Forms MTAs really send are accepted: "IPv6:2001:db8::1", "[192.0.2.1]", zone ids, and
  IPv4-mapped IPv6 ("::ffff:192.0.2.1"), which is evaluated as the IPv4 address (section 5).
* A MAIL FROM without "@" (a bare local-part some MTAs accept and qualify later) has no domain to
  check. Section 4.3 only covers the opposite case (a domain without local-part, checked as
  postmaster@domain, which we follow for "@example.com"); a missing domain is not a null
  reverse-path, so we do not fall back to HELO: the MAIL FROM result is "none".
* A MAIL FROM or HELO domain that is malformed, a single label, an address literal, or has an
  all-numeric top label yields "none" (section 4.3). Non-ASCII domains are checked in their
  A-label form.
* The separate HELO check (section 2.3) runs only when `check_helo` is true and the HELO name is a
  valid multi-label domain; otherwise `helo` is None. With a null MAIL FROM the HELO identity is
  the effective one and is checked regardless of `check_helo`; `helo` then holds the same result
  when `check_helo` is true.
* `timeout` is the overall budget for one identity's evaluation (pyspf's `querytime`; RFC 7208
  section 4.6.4 suggests 20 s). pyspf can only check it between lookups, so a slow lookup is
  never cut short here -- per-lookup timeouts belong to the Resolver -- but once the budget is
  spent the next lookup makes the result "temperror". A timeout <= 0 disables the budget.
"""

from __future__ import annotations

import contextvars
import re
from typing import Any

import spf

from authmilter.core.dnsapi import DnsStatus, Resolver
from authmilter.core.model import SpfIdentity, SpfResult, SpfResults
from authmilter.core.names import normalize_client_ip, printable_ascii

__all__ = ["RESULTS", "check_spf", "normalize_client_ip"]

RESULTS = frozenset({"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"})

# The record types pyspf asks for in strict (non-harsh) mode. Type 99 "SPF" is only queried in
# harsh mode, which we never use; anything else is answered as "no data" without asking.
_QTYPES = frozenset({"A", "AAAA", "MX", "PTR", "TXT"})

_REASON_MAX = 200

_current_resolver: contextvars.ContextVar[Resolver | None] = contextvars.ContextVar(
    "authmilter_spf_resolver", default=None
)

_pyspf_lookup = spf.DNSLookup

Lookup = list[tuple[tuple[str, str], Any]]


def _dns_lookup(name: str, qtype: str, strict: object = True, timeout: float = 20.0) -> Lookup:
    """Stand-in for `spf.DNSLookup`: answer from the resolver of the current `check_spf` call."""
    resolver = _current_resolver.get()
    if resolver is None:
        # Not inside check_spf: someone else in the process is using pyspf directly.
        result: Lookup = _pyspf_lookup(name, qtype, strict, timeout)
        return result
    rdtype = qtype.upper()
    if rdtype not in _QTYPES:
        return []
    qname = _query_name(name)
    if qname is None:
        # Macro expansion can build names we will not put on the wire (control characters from
        # a hostile %{h} or %{l}, non-ASCII that is no IDN). Such a name is taken not to exist;
        # pyspf counts it as a void lookup.
        return []
    try:
        answer = resolver.query(qname, rdtype)
    except Exception as exc:
        # The Resolver contract says it never raises; if one does anyway, it could not answer,
        # which is what temperror means -- not a reason to crash a milter thread.
        raise spf.TempError(f"DNS {rdtype} {qname}: resolver error {type(exc).__name__}") from exc
    if answer.status is DnsStatus.TEMPERROR:
        detail = f": {answer.error}" if answer.error else ""
        raise spf.TempError(f"DNS {rdtype} {qname} failed{detail}")
    if answer.status is not DnsStatus.OK:
        # NXDOMAIN and NODATA both look empty to pyspf, which counts void lookups itself.
        return []
    # pyspf caches by (lower-cased name, qtype) exactly as it asked, so key the answers the same
    # way even if we queried the A-label form. The record shapes of dnsapi are the ones pyspf
    # expects (TXT as a sequence of bytes strings, MX as (preference, exchange)).
    return [((name, qtype), record) for record in answer.records]


# Installed once, at import; see the module docstring for why a global is safe here.
spf.DNSLookup = _dns_lookup


def _query_name(name: str) -> str | None:
    """The ASCII form of a name pyspf wants looked up, or None if it cannot exist in DNS."""
    name = name.rstrip(".")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if not name or len(name) > 253:
        return None
    # A space is printable here: RFC 7208 section 7.1 makes "%_" expand to one, so a label holding
    # spaces is a name SPF records really ask for (as is "%" from "%%" and "%-"), and DNS labels
    # can hold any octet. Control characters and DEL no SMTP transaction or macro can produce.
    if any(not " " <= c <= "~" for c in name):
        return None
    return name


_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}\Z")
# RFC 7208 section 7.1 "toplabel": not all-numeric, so "192.0.2.1" is never taken for a domain.
_TOPLABEL = re.compile(r"(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9])\Z")


def _spf_domain(raw: str) -> str | None:
    """Lower-case A-label form of a checkable domain, or None (RFC 7208 section 4.3 says "none")."""
    name = raw.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2:
        return None
    if not all(_LABEL.match(label) for label in labels) or not _TOPLABEL.match(labels[-1]):
        return None
    return name.lower()


def _strip_path(mail_from: str) -> str:
    """The address inside a reverse-path, tolerating the brackets and source routes MTAs pass."""
    addr = mail_from.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1].strip()
    if addr.startswith("@") and ":" in addr:
        addr = addr.split(":", 1)[1]  # obsolete source route <@relay:user@domain>
    return addr


def _printable(text: str) -> str:
    """A short, single-line version of a diagnostic that came (partly) from DNS."""
    cleaned = printable_ascii(text).strip()
    if len(cleaned) > _REASON_MAX:
        cleaned = cleaned[: _REASON_MAX - 3] + "..."
    return cleaned


def _reason(query: Any, result: str, explanation: str, domain: str) -> str:
    if result == "permerror":
        return _printable(explanation.removeprefix("SPF Permanent Error: "))
    if result == "temperror":
        return _printable(explanation.removeprefix("SPF Temporary Error: "))
    if result == "none":
        return f"no SPF record for {domain}"
    mechanism = getattr(query, "mechanism", None)
    text = f"matched {mechanism}" if mechanism else f"no mechanism matched, default {result}"
    # exp= text (section 6.2) is the domain's own explanation of a failure; worth keeping, but it
    # is domain-controlled, hence _printable and the length cap.
    if result in ("fail", "softfail") and explanation and explanation != spf.EXPLANATIONS.get(result):
        text += f"; explanation: {explanation}"
    return _printable(text)


def _evaluate(
    ip: str,
    local: str,
    domain: str,
    helo: str,
    identity: SpfIdentity,
    sender: str,
    resolver: Resolver,
    timeout: float,
) -> SpfResult:
    """Run pyspf's check_host() for one identity; never raises."""
    token = _current_resolver.set(resolver)
    try:
        query = spf.query(
            i=ip,
            s=f"{local}@{domain}",
            h=helo,
            strict=True,  # RFC 7208 limits are errors; 2 ("harsh") would add non-RFC results
            querytime=max(timeout, 0.0),
        )
        # pyspf splits the sender at the first "@", which is wrong for a quoted local-part
        # containing one; set the macro variables l, o and d from our own split instead.
        query.l, query.o, query.d = local, domain, domain
        result, _code, explanation = query.check()
    except Exception as exc:
        # check() already turns TempError/PermError into results; anything else is pyspf
        # tripping over record content we could not foresee (e.g. its recursion assertion).
        return SpfResult("permerror", identity, domain, sender, _printable(f"SPF evaluation error: {exc!r}"))
    finally:
        _current_resolver.reset(token)
    result = str(result).lower()
    if result not in RESULTS:
        # Strict mode should only ever produce the seven; 'ambiguous', 'local' and 'trusted'
        # belong to modes we do not use. Never pass a non-RFC result on.
        return SpfResult("permerror", identity, domain, sender, f"unexpected SPF result {result!r}")
    return SpfResult(result, identity, domain, sender, _reason(query, result, str(explanation), domain))


def check_spf(
    client_ip: str | None,
    helo: str,
    mail_from: str,
    resolver: Resolver,
    *,
    check_helo: bool = True,
    timeout: float = 20.0,
) -> SpfResults:
    """SPF results for the MAIL FROM identity and (optionally) the HELO identity.

    `mail_from` is the reverse-path address, "" for the null sender (brackets are tolerated).
    `effective` is what DMARC and Authentication-Results use: the MAIL FROM result, or with a
    null MAIL FROM the HELO result (RFC 7208 section 2.4, postmaster@<HELO>). Never raises.
    """
    address = _strip_path(mail_from)
    null_sender = address == ""
    helo_domain = _spf_domain(helo)
    # rpartition: the domain cannot contain "@", a quoted local-part can.
    local, at, raw_domain = address.rpartition("@")
    mailfrom_domain = _spf_domain(raw_domain) if at else None

    if null_sender:
        identity, sender, domain_text = SpfIdentity.HELO, helo, helo_domain or helo
    else:
        identity, sender = SpfIdentity.MAILFROM, address
        domain_text = mailfrom_domain or (raw_domain if at else "")

    def none(reason: str) -> SpfResults:
        return SpfResults(SpfResult("none", identity, domain_text, sender, reason), None)

    if not client_ip or not client_ip.strip():
        return none("no client IP address to check")
    ip = normalize_client_ip(client_ip)
    if ip is None:
        return none(_printable(f"client IP {client_ip!r} is not an IP address"))

    helo_result: SpfResult | None = None
    if helo_domain is not None and (check_helo or null_sender):
        helo_result = _evaluate(
            ip, "postmaster", helo_domain, helo_domain, SpfIdentity.HELO, helo, resolver, timeout
        )

    if null_sender:
        if helo_result is None:
            return none(_printable(f"null MAIL FROM and HELO {helo!r} is not a domain name"))
        return SpfResults(helo_result, helo_result if check_helo else None)

    if not at:
        effective = SpfResult("none", identity, "", sender, "MAIL FROM has no domain")
    elif mailfrom_domain is None:
        reason = _printable(f"MAIL FROM domain {raw_domain!r} is not a valid domain name")
        effective = SpfResult("none", identity, raw_domain, sender, reason)
    else:
        # RFC 7208 section 4.3: "@example.com" is checked as postmaster@example.com. The HELO
        # name only feeds the %{h} macro here.
        effective = _evaluate(
            ip,
            local or "postmaster",
            mailfrom_domain,
            helo_domain or helo,
            identity,
            sender,
            resolver,
            timeout,
        )
    return SpfResults(effective, helo_result)
