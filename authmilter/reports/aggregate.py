"""RFC 9990 DMARC aggregate reports, built from history records with no I/O.

One `AggregateBuilder` collects one policy domain's messages for one UTC day and turns them into
the gzip'd XML attachment, its file name and the Subject the RFC prescribes. It keeps one counter
per distinct row, never the records themselves, so a day of a busy domain costs memory in
proportion to how varied its mail was, not to how much of it there was.

The XML follows the schema of tests/data/dmarc/dmarc-xml-0.2.xsd (the last revision of the
draft that became RFC 9990), which differs from RFC 7489's in ways that matter here: at most one
`spf` result, only the "mfrom" scope, at most one `error`, and the override types
`policy_test_mode` (for t=y) in place of `sampled_out`, with no `forwarded`.
"""

from __future__ import annotations

import calendar
import gzip
import hashlib
import re
import time
from dataclasses import dataclass
from xml.sax.saxutils import escape

from authmilter.core.history import MAX_DKIM_RESULTS, DkimEntry, HistoryRecord, PublishedPolicy
from authmilter.core.names import normalize_client_ip

__all__ = [
    "NAMESPACE",
    "AggregateBuilder",
    "AggregateReport",
    "EmptyReportError",
    "Reporter",
    "day_bounds",
    "day_of",
    "report_id",
]

NAMESPACE = "urn:ietf:params:xml:ns:dmarc-2.0"
DAY = 86400

_DISPOSITIONS = frozenset({"none", "pass", "quarantine", "reject"})
_POLICIES = frozenset({"none", "quarantine", "reject"})
_DKIM_RESULTS = frozenset({"none", "pass", "fail", "policy", "neutral", "temperror", "permerror"})
_SPF_RESULTS = frozenset({"none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"})
# RFC 8601 section 2.7.2 keeps these older SPF spellings readable; the schema knows only the new.
_SPF_SYNONYMS = {"hardfail": "fail", "error": "temperror", "unknown": "permerror"}
_OVERRIDES = frozenset({"local_policy", "mailing_list", "other", "policy_test_mode",
                        "trusted_forwarder"})
# History records carry RFC 7489 reason names; RFC 9990 renamed one and dropped the other.
# "forwarded" has no counterpart, so it becomes "other" with the old name kept as the comment.
_OVERRIDE_RENAMES = {"sampled_out": "policy_test_mode"}
_DAY_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
# Characters XML 1.0 cannot carry at all, escaped or not; ElementTree would write them and make
# the whole report unparseable, so they are dropped from free text such as human_result.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class EmptyReportError(ValueError):
    """The schema requires at least one record: there is no report to send for this domain/day."""


@dataclass(frozen=True, kw_only=True)
class Reporter:
    """Who sends the reports (RFC 9990 report_metadata), and the receiver's domain, which names
    the file and the Subject."""

    org_name: str
    email: str
    extra_contact_info: str = ""
    receiver_domain: str
    generator: str = "authmilter"


@dataclass(frozen=True)
class AggregateReport:
    policy_domain: str
    report_id: str
    begin: int
    end: int
    xml: bytes
    gz: bytes
    filename: str
    subject: str
    rows: int
    messages: int


# One row's identity: source_ip, disposition, dkim aligned, spf aligned, reasons, envelope_to
# ("" for omitted), envelope_from, header_from, DKIM results, SPF result (scope "" for omitted).
_Reason = tuple[str, str]
_Dkim = tuple[str, str, str, str]
_Spf = tuple[str, str, str]
_RowKey = tuple[str, str, bool, bool, tuple[_Reason, ...], str, str, str, tuple[_Dkim, ...], _Spf]


def day_bounds(day: str) -> tuple[int, int]:
    """The first and the last second of a UTC day given as "YYYY-MM-DD"; ValueError otherwise.

    The end is inclusive (begin + 86399), as in RFC 9990's sample report, so that consecutive
    daily reports do not claim the same second.
    """
    if not _DAY_RE.fullmatch(day):
        raise ValueError(f"not a YYYY-MM-DD day: {day!r}")
    begin = calendar.timegm(time.strptime(day, "%Y-%m-%d"))
    return begin, begin + DAY - 1


def day_of(t: int) -> str:
    """The UTC day ("YYYY-MM-DD") that a time in seconds since the epoch falls on."""
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def report_id(policy_domain: str, day: str, receiver: str) -> str:
    """A Report-ID that is the same whenever the same receiver reports the same domain's day.

    A retried run must send the same id and file name (RFC 9990: a re-sent report keeps its
    file name, so the consumer can discard the duplicate). Letters and digits only: the id is
    also the file name's unique-id, whose grammar is 1*(ALPHA / DIGIT), and RFC 9990 asks the
    two to be identical.
    """
    material = "\0".join((_domain(receiver), _domain(policy_domain), day)).encode("utf-8")
    return day.replace("-", "") + hashlib.sha256(material).hexdigest()[:24]


class AggregateBuilder:
    """The rows of one policy domain's aggregate report for one reporting period."""

    def __init__(self, policy_domain: str, begin: int, end: int) -> None:
        if end < begin:
            raise ValueError("the reporting period ends before it begins")
        self.policy_domain = _domain(policy_domain)
        self.begin = begin
        self.end = end
        self._rows: dict[_RowKey, int] = {}
        self._policy: PublishedPolicy | None = None
        self._policy_rank: tuple[int, tuple[str, ...]] | None = None
        self._no_address = 0

    @property
    def rows(self) -> int:
        return len(self._rows)

    @property
    def messages(self) -> int:
        """Messages counted in the rows (those left out for want of an address are not)."""
        return sum(self._rows.values())

    @property
    def errors(self) -> list[str]:
        if not self._no_address:
            return []
        if self._no_address == 1:
            return ["1 message without a usable source address was left out"]
        return [f"{self._no_address} messages without a usable source address were left out"]

    def add(self, record: HistoryRecord) -> None:
        """Count one message; records of other domains, outside the period, or not reportable are
        ignored, so a caller may feed a whole day's history through every domain's builder."""
        policy = record.policy
        if policy is None or not record.reportable or _domain(policy.domain) != self.policy_domain:
            return
        if not self.begin <= record.time <= self.end:
            return  # the date_range would otherwise misstate what the report covers
        self._note_policy(record.time, policy)
        ip = normalize_client_ip(record.client_ip) if record.client_ip else None
        if ip is None:
            # source_ip is required and a guess would mislead the domain owner; say so instead.
            self._no_address += 1
            return
        key = _row_key(ip, record)
        self._rows[key] = self._rows.get(key, 0) + 1

    def _note_policy(self, t: int, policy: PublishedPolicy) -> None:
        # RFC 9990 asks for the final configuration seen in the period. Ties on time are broken
        # by the policy's content, so the result does not depend on the order records arrive in.
        rank = (t, _policy_fingerprint(policy))
        if self._policy_rank is None or rank > self._policy_rank:
            self._policy, self._policy_rank = policy, rank

    def build(self, reporter: Reporter, report_id: str) -> AggregateReport:
        """The report; EmptyReportError when no message can be reported (the schema requires at
        least one record, and an empty report tells the domain owner nothing)."""
        if not self._rows or self._policy is None:
            raise EmptyReportError(f"no reportable messages for {self.policy_domain}")
        # Written as text, not through ElementTree: a report can have a million rows, and
        # building and serialising a tree of them costs ten times as much.
        out = _Xml()
        out.open("feedback", f' xmlns="{NAMESPACE}"')
        out.leaf("version", "1.0")
        self._metadata(out, reporter, report_id)
        _policy_published(out, self.policy_domain, self._policy)
        for key in sorted(self._rows):
            _record(out, key, self._rows[key])
        out.close("feedback")
        xml = out.bytes()
        receiver = _domain(reporter.receiver_domain)
        return AggregateReport(
            policy_domain=self.policy_domain,
            report_id=report_id,
            begin=self.begin,
            end=self.end,
            xml=xml,
            # mtime=0 and no file name in the header: the same rows give the same bytes.
            gz=gzip.compress(xml, compresslevel=9, mtime=0),
            filename=f"{receiver}!{self.policy_domain}!{self.begin}!{self.end}!{report_id}.xml.gz",
            subject=(f"Report Domain: {self.policy_domain} Submitter: {receiver} "
                     f"Report-ID: <{report_id}>"),
            rows=self.rows,
            messages=self.messages,
        )

    def _metadata(self, out: _Xml, reporter: Reporter, rid: str) -> None:
        out.open("report_metadata")
        out.leaf("org_name", reporter.org_name)
        out.leaf("email", reporter.email)
        if reporter.extra_contact_info:
            out.leaf("extra_contact_info", reporter.extra_contact_info)
        out.leaf("report_id", rid)
        out.open("date_range")
        out.leaf("begin", str(self.begin))
        out.leaf("end", str(self.end))
        out.close("date_range")
        if self.errors:
            # The schema allows one error element, so several messages share it.
            out.leaf("error", "; ".join(self.errors))
        if reporter.generator:
            out.leaf("generator", reporter.generator)
        out.close("report_metadata")


def _row_key(ip: str, record: HistoryRecord) -> _RowKey:
    disposition = record.disposition if record.disposition in _DISPOSITIONS else "none"
    # RFC 9990 envelope_to holds one domain. A message to several recipient domains is still one
    # message: a row per domain would count it several times, and naming the first would
    # attribute the others' mail to it. The element is optional, so such messages leave it out.
    envelope_to = _domain(record.envelope_to[0]) if len(record.envelope_to) == 1 else ""
    header_from = _domain(record.header_from)
    return (ip, disposition, record.dkim_aligned, record.spf_aligned, _reasons(record.override),
            envelope_to, _domain(record.envelope_from), header_from,
            _dkim_results(record.dkim, header_from), _spf_result(record))


def _reasons(override: str) -> tuple[_Reason, ...]:
    if not override:
        return ()
    name = _OVERRIDE_RENAMES.get(override, override)
    if name in _OVERRIDES:
        return ((name, ""),)
    return (("other", override),)


def _dkim_results(entries: tuple[DkimEntry, ...], header_from: str) -> tuple[_Dkim, ...]:
    results = [(_domain(d.domain), d.selector.strip().lower(), _dkim_result(d.result),
                d.human_result) for d in entries]

    # RFC 9990 section 3.1.4's order of preference, for when there are more than can be kept:
    # passing and strictly aligned, passing and relaxed-aligned, other passes, the rest. The sort
    # is stable, so signatures keep their order within each class.
    def rank(r: _Dkim) -> int:
        if r[2] != "pass":
            return 3
        if r[0] == header_from:
            return 0
        return 1 if _related(r[0], header_from) else 2

    results.sort(key=rank)
    return tuple(results[:MAX_DKIM_RESULTS])


def _related(a: str, b: str) -> bool:
    # An approximation of relaxed alignment without the PSL (this module does no lookups): one
    # name under the other. It only orders signatures; alignment itself was decided at delivery.
    return bool(a and b) and (a.endswith("." + b) or b.endswith("." + a))


def _dkim_result(result: str) -> str:
    value = result.strip().lower()
    return value if value in _DKIM_RESULTS else "permerror"


def _spf_result(record: HistoryRecord) -> _Spf:
    # DMARC uses only the MAIL FROM identity, and the schema allows one spf element with scope
    # "mfrom" or none. A HELO-only result (the null sender) is reported without a scope rather
    # than claimed as mfrom; no result at all is "none" for the envelope_from domain.
    mfrom = [s for s in record.spf if s.scope == "mfrom"]
    if mfrom:
        return _domain(mfrom[0].domain), "mfrom", _spf_value(mfrom[0].result)
    if record.spf:
        return _domain(record.spf[0].domain), "", _spf_value(record.spf[0].result)
    return _domain(record.envelope_from), "mfrom", "none"


def _spf_value(result: str) -> str:
    value = result.strip().lower()
    value = _SPF_SYNONYMS.get(value, value)
    return value if value in _SPF_RESULTS else "permerror"


def _policy_fingerprint(p: PublishedPolicy) -> tuple[str, ...]:
    return (p.domain, p.p, p.sp or "", p.np or "", p.adkim, p.aspf, str(p.testing), p.fo or "",
            p.discovery_method)


def _policy_published(out: _Xml, domain: str, p: PublishedPolicy) -> None:
    out.open("policy_published")
    out.leaf("domain", domain)
    if p.discovery_method in ("psl", "treewalk"):
        out.leaf("discovery_method", p.discovery_method)
    # Reported as in effect (RFC 9990: "discovered or default value"): sp defaults to p, and np
    # to sp (RFC 9989 section 4.7).
    policy = _policy_value(p.p, "none")
    sp = _policy_value(p.sp, policy)
    np = _policy_value(p.np, sp)
    out.leaf("p", policy)
    out.leaf("sp", sp)
    out.leaf("np", np)
    if p.fo:
        out.leaf("fo", p.fo)
    out.leaf("adkim", p.adkim if p.adkim in ("r", "s") else "r")
    out.leaf("aspf", p.aspf if p.aspf in ("r", "s") else "r")
    out.leaf("testing", "y" if p.testing else "n")
    out.close("policy_published")


def _policy_value(value: str | None, default: str) -> str:
    v = (value or "").strip().lower()
    return v if v in _POLICIES else default


def _record(out: _Xml, key: _RowKey, count: int) -> None:
    (ip, disposition, dkim_aligned, spf_aligned, reasons, envelope_to, envelope_from,
     header_from, dkim, spf) = key
    out.open("record")
    out.open("row")
    out.leaf("source_ip", ip)
    out.leaf("count", str(count))
    out.open("policy_evaluated")
    out.leaf("disposition", disposition)
    out.leaf("dkim", "pass" if dkim_aligned else "fail")
    out.leaf("spf", "pass" if spf_aligned else "fail")
    for kind, comment in reasons:
        out.open("reason")
        out.leaf("type", kind)
        if comment:
            out.leaf("comment", comment)
        out.close("reason")
    out.close("policy_evaluated")
    out.close("row")
    out.open("identifiers")
    out.leaf("header_from", header_from)
    # Present even when empty: RFC 9990 allows an empty envelope_from for a null reverse-path.
    out.leaf("envelope_from", envelope_from)
    if envelope_to:
        out.leaf("envelope_to", envelope_to)
    out.close("identifiers")
    out.open("auth_results")
    for domain, selector, result, human in dkim:
        out.open("dkim")
        out.leaf("domain", domain)
        out.leaf("selector", selector)
        out.leaf("result", result)
        if human:
            out.leaf("human_result", human)
        out.close("dkim")
    out.open("spf")
    out.leaf("domain", spf[0])
    if spf[1]:
        out.leaf("scope", spf[1])
    out.leaf("result", spf[2])
    out.close("spf")
    out.close("auth_results")
    out.close("record")


class _Xml:
    """An indented XML document written element by element; text is escaped, and characters
    XML 1.0 cannot carry are dropped."""

    def __init__(self) -> None:
        self._parts: list[str] = ['<?xml version="1.0" encoding="UTF-8"?>\n']
        self._depth = 0

    def open(self, tag: str, attributes: str = "") -> None:
        self._parts.append(f"{'  ' * self._depth}<{tag}{attributes}>\n")
        self._depth += 1

    def close(self, tag: str) -> None:
        self._depth -= 1
        self._parts.append(f"{'  ' * self._depth}</{tag}>\n")

    def leaf(self, tag: str, value: str) -> None:
        # Nearly every value is printable ASCII, which needs no scan for characters to drop.
        clean = value if value.isprintable() and value.isascii() else _NOT_XML.sub("", value)
        text = escape(clean)
        self._parts.append(f"{'  ' * self._depth}<{tag}>{text}</{tag}>\n")

    def bytes(self) -> bytes:
        return "".join(self._parts).encode("utf-8")


def _domain(name: str) -> str:
    # Report domains compare as DNS does, without case or a trailing dot.
    return name.strip().rstrip(".").lower()
