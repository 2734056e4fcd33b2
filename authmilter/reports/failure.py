"""DMARC failure reports (RFC 9991, in the RFC 6591 / RFC 5965 format), built with no I/O.

`wanted` says whether the domain's fo= asks for a report on this message, `report_destinations`
which mailto: addresses its ruf= names, and `build_failure_report` writes the whole message as
bytes. Sending it (destination verification, rate limits, DKIM signing, SMTP) is the caller's.

Everything in a report that came from the reported message or from DNS (domains, addresses,
selectors, the MAIL FROM) is attacker-controlled: the report goes to the domain that a forger
named, and it is read by tools. So each such value is reduced to one line of ASCII before it is
written into a header field of ours, and the header part is built by hand, line by line, rather
than through a library that might fold, re-encode or let a CR LF through. The original header
section is carried as a MIME part body, byte for byte, where it can create no header of ours.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from base64 import encodebytes
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, formataddr, parseaddr

from authmilter.core.model import DkimResult, DmarcRecord, DmarcResult, Results, Transaction
from authmilter.core.names import normalize_client_ip, normalize_domain

__all__ = [
    "DELIVERY_RESULTS",
    "FailureReporter",
    "build_failure_report",
    "identity_alignment",
    "report_destinations",
    "wanted",
]

# RFC 6591 section 3.1: the values Delivery-Result may take.
DELIVERY_RESULTS = frozenset({"delivered", "spam", "policy", "reject", "other"})

# fo=d asks about a signature that "failed evaluation". fail (bad signature or body hash),
# permerror (unusable signature or key) and neutral (RFC 8601: signed, but it could not be
# processed) are failures the signer can fix. temperror is left out: it is our DNS trouble, not
# theirs; policy is a signature that verified and that we chose not to accept.
_DKIM_FAILED = frozenset({"fail", "permerror", "neutral"})
# fo=s asks about a message that "failed SPF evaluation": a fail, a softfail (the domain's own
# "probably not authorised") or a broken record. neutral and none make no claim to fail against,
# temperror again is ours.
_SPF_FAILED = frozenset({"fail", "softfail", "permerror"})
_FO_OPTIONS = frozenset({"0", "1", "d", "s"})

# An address we write into To and hand to RCPT TO: an ASCII dot-atom local part (RFC 5322) and a
# host name. A quoted local part could carry the spaces, commas and angle brackets that would let
# a DNS record add recipients or header text; no report address needs one.
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
_MSGID = re.compile(r"<[!-;=?-~]+@[!-;=?-Z^-~]+>\Z")
_LINE_MAX = 78  # RFC 5322 section 2.1.1: SHOULD; we fold at white space to keep to it
_BODY_LINE_MAX = 998  # RFC 5322 section 2.1.1: MUST, also for a 7bit MIME part (RFC 2045)
_WORD_MAX = 900
_CRLF = b"\r\n"


@dataclass(frozen=True)
class FailureReporter:
    """Who we are in a report: the domain named in its text, the From address, the User-Agent."""

    reporting_domain: str
    from_address: str
    user_agent: str = "authmilter/0.1"


# --- when ---------------------------------------------------------------------------------------


def _fo_options(fo: str | None) -> frozenset[str]:
    """The options of fo=, "0" when it is absent or names none we know (an invalid value is
    ignored and the default applies, RFC 9989 section 4.7)."""
    if fo is None:
        return frozenset({"0"})
    found = frozenset(o.strip().lower() for o in fo.split(":")) & _FO_OPTIONS
    return found or frozenset({"0"})


def wanted(fo: str | None, results: Results) -> bool:
    """Whether `fo` asks for a failure report on this message.

    Only a DMARC "fail" under a record with somewhere to send it is reported: never for a record
    with psd=y (RFC 9991 section 2: a Public Suffix Domain's ruf is not to be considered), and never
    for a pass, so "1" ("anything but an aligned pass in some mechanism") reports the same
    messages as "0" here. Both tests are still written out in full, so that lifting the
    fail-only rule would need no change to them.
    """
    dmarc = results.dmarc
    if dmarc is None or dmarc.result != "fail" or dmarc.record is None:
        return False
    if (dmarc.record.psd or "").lower() == "y" or not report_destinations(dmarc.record):
        return False
    options = _fo_options(fo)
    if "0" in options and not (dmarc.dkim_aligned or dmarc.spf_aligned):
        return True
    if "1" in options and not (dmarc.dkim_aligned and dmarc.spf_aligned):
        return True
    if "d" in options and any(sig.result.lower() in _DKIM_FAILED for sig in results.dkim):
        return True
    return ("s" in options and results.spf is not None
            and results.spf.effective.result.lower() in _SPF_FAILED)


# --- where --------------------------------------------------------------------------------------


def _safe_address(address: str) -> str | None:
    """`address` as local@a-label when it is safe to write into To and RCPT TO; else None."""
    local, at, domain = address.strip().rpartition("@")
    if not at or not _LOCAL_PART.match(local) or len(local) > 64:
        return None
    try:
        return f"{local}@{normalize_domain(domain)}"
    except ValueError:
        return None


def report_destinations(record: DmarcRecord) -> tuple[str, ...]:
    """The addresses of ruf's mailto: URIs (without "mailto:"), each once, in record order.

    A "!size" suffix (RFC 7489's size limit) is dropped, as is any ?query: neither is part of
    the address, and a literal "!" in one must be written %21. Other schemes are ignored: RFC
    9991 reports go by mail only. An address that is not a plain ASCII local@host is dropped
    rather than repaired: it came from DNS, and a guess could send a report somewhere else.
    """
    out: dict[str, str] = {}
    for uri in record.ruf:
        scheme, colon, rest = uri.strip().partition(":")
        if not colon or scheme.lower() != "mailto":
            continue
        raw = rest.split("?", 1)[0].split("!", 1)[0]
        try:
            decoded = urllib.parse.unquote(raw, errors="strict")
        except UnicodeDecodeError:
            continue
        address = _safe_address(decoded)
        if address is not None:
            local, _, domain = address.rpartition("@")
            # The domain part is case-insensitive and already lower case; the local part is the
            # receiving domain's to interpret, so only an exact repeat is a repeat.
            out.setdefault(f"{local}@{domain}", address)
    return tuple(out.values())


# --- what ---------------------------------------------------------------------------------------


def _escape(text: str, *, keep_space: bool = True) -> str:
    """`text` as printable ASCII: every other character (CR, LF, controls, non-ASCII) and the
    backslash itself become \\x{HEX}, the RFC 6533 utf-8-addr-xtext notation, so that nothing
    can break the line and what was there can still be read back."""
    out = []
    for ch in text:
        if ("!" <= ch <= "~" and ch != "\\") or (keep_space and ch == " "):
            out.append(ch)
        else:
            out.append(f"\\x{{{ord(ch):X}}}")
    return "".join(out)


def _domain_text(name: str) -> str:
    """A domain from the message or DNS, as the A-label form when it is one, escaped otherwise."""
    try:
        return normalize_domain(name.strip())
    except ValueError:
        return _escape(name.strip(), keep_space=False) or "invalid"


def _envelope_address(address: str) -> str:
    """The MAIL FROM as RFC 5965's reverse-path: <local@domain>, or <> for the null sender."""
    addr = address.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1].strip()
    if not addr:
        return "<>"
    local, at, domain = addr.rpartition("@")
    if not at:
        return f"<{_escape(addr, keep_space=False)}>"
    return f"<{_escape(local, keep_space=False)}@{_domain_text(domain)}>"


def _aligned(identifier: str, dmarc: DmarcResult, mode: str) -> bool:
    """Whether `identifier` aligns with the author domain, whatever it authenticated to.

    Exact match always does; relaxed alignment takes the author's Organizational Domain that DMARC
    found, and an identifier at or under it. That is the test DMARC evaluation makes before its
    own tree walk of the identifier, which a report cannot repeat without DNS; it can differ only
    where a record below the Organizational Domain says psd=y, and then merely changes which
    mechanisms a report lists. With no Organizational Domain known, only exact matches count.
    """
    try:
        ident = normalize_domain(identifier)
    except ValueError:
        return False
    if ident == dmarc.domain:
        return True
    org = dmarc.org_domain
    if mode.lower() == "s" or not org:
        return False
    return ident == org or ident.endswith("." + org)


def _aligned_failed_dkim(results: Results, dmarc: DmarcResult) -> DkimResult | None:
    mode = dmarc.record.adkim if dmarc.record is not None else "r"
    return next((s for s in results.dkim
                 if s.result.lower() != "pass" and _aligned(s.domain, dmarc, mode)), None)


def _aligned_failed_spf(results: Results, dmarc: DmarcResult) -> bool:
    if results.spf is None or results.spf.effective.result.lower() == "pass":
        return False
    mode = dmarc.record.aspf if dmarc.record is not None else "r"
    return _aligned(results.spf.effective.domain, dmarc, mode)


def identity_alignment(results: Results) -> str:
    """RFC 9991 section 4's Identity-Alignment value: the mechanisms that failed to authenticate
    an aligned identity ("dkim", "spf", "dkim, spf"), or "none" when neither had one to fail on.

    RFC 7489 worded it as the mechanisms that "produced an aligned identity"; on a DMARC failure
    both readings name the same mechanisms, as an aligned identifier there never passed.
    """
    dmarc = results.dmarc
    if dmarc is None:
        return "none"
    names = [name for name, hit in (("dkim", _aligned_failed_dkim(results, dmarc) is not None),
                                    ("spf", _aligned_failed_spf(results, dmarc))) if hit]
    return ", ".join(names) or "none"


def _field(name: str, value: str) -> bytes:
    """One header field of ours: `value` unfolded, then folded at white space to 78 columns.

    Values from the message are `_escape`d by the caller; this is the last guard, so that a
    CR or LF that got here anyway can only become our own folding, and non-ASCII only an escape.
    """
    words: list[str] = []
    for word in " ".join(value.split()).split(" "):
        word = "".join(c if "!" <= c <= "~" else f"\\x{{{ord(c):X}}}" for c in word)
        # Only absurd input (a kilobyte-long selector) has a word this long; splitting it
        # changes its value, but a line over 998 characters would make the whole report invalid.
        words.extend(word[i:i + _WORD_MAX] for i in range(0, max(len(word), 1), _WORD_MAX))
    lines: list[str] = []
    line = f"{name}:"
    for word in words:
        if len(line) + 1 + len(word) > _LINE_MAX and line.strip() != f"{name}:":
            lines.append(line)
            line = "\t" + word
        else:
            line = f"{line} {word}"
    lines.append(line)
    return "\r\n".join(lines).encode("ascii") + _CRLF


def _date(when: float) -> str:
    return format_datetime(datetime.fromtimestamp(when, UTC))


def _from_header(from_address: str) -> str:
    """Our From, with a non-ASCII display name RFC 2047-encoded; ValueError when the address
    itself is unusable (configuration, not the reported mail)."""
    name, addr = parseaddr(from_address)
    safe = _safe_address(addr)
    if safe is None:
        raise ValueError(f"report From address {from_address!r} is not a plain local@domain")
    if any(c in name for c in "\r\n"):
        raise ValueError("report From display name contains a line break")
    return formataddr((name, safe), charset="utf-8") if name else safe


def _headers_part(tx: Transaction) -> tuple[bytes, bytes]:
    """The original header section and the Content-Transfer-Encoding it is sent with.

    Only the header section: RFC 9991's privacy considerations ask for minimization, such as
    redacting bodies, and note that without the body the part is text/rfc822-headers. The body
    is what holds the personal content (and any malware); the headers are what a domain owner
    needs to tell where the mail came from and why it failed.

    7bit when the bytes already are well-formed 7-bit lines (readable as they arrived). Otherwise
    base64, not 8bit: the fields may carry bytes in any charset or none, bare CRs or LFs and
    over-long lines, which 8bit forbids (RFC 2045 section 2.8) and which would need 8BITMIME on
    every hop to the report consumer; base64 delivers exactly the bytes received, over any path.
    """
    data = b"".join(h.raw() for h in tx.headers)
    lines = data.split(_CRLF)
    seven_bit = (data.isascii() and b"\x00" not in data
                 and all(b"\r" not in ln and b"\n" not in ln and len(ln) <= _BODY_LINE_MAX
                         for ln in lines))
    if seven_bit:
        return data, b"7bit"
    return encodebytes(data).replace(b"\n", _CRLF), b"base64"


def _charset(data: bytes) -> str:
    if data.isascii():
        return "us-ascii"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown-8bit"  # RFC 1428: 8-bit text in no known charset
    return "utf-8"  # RFC 6532 header fields


def _boundary(message_id: str, parts: Sequence[bytes]) -> bytes:
    """A boundary found in no part. "=_" cannot start a base64 line, and the hash of the parts
    cannot be chosen by a sender who would have to know it before writing them."""
    seed = hashlib.sha256(message_id.encode("ascii") + b"".join(parts)).hexdigest()
    for n in range(100):
        candidate = f"=_authmilter_{seed[:32]}_{n}".encode("ascii")
        if not any(candidate in p for p in parts):
            return candidate
    raise ValueError("no MIME boundary found outside the report's parts")  # pragma: no cover


def build_failure_report(
    tx: Transaction,
    results: Results,
    reporter: FailureReporter,
    *,
    to: tuple[str, ...],
    arrival: float,
    authentication_results: str,
    message_id: str,
    now: float | None = None,
    delivery_result: str | None = None,
    spf_record: str | None = None,
) -> bytes:
    """The complete failure report for one message, as RFC 5322 bytes with CRLF line ends.

    `to`: the destinations (bare addresses, as `report_destinations` gives them); `arrival`
    when the message came in; `authentication_results` the A-R value we added (without the field
    name); `now` the report's Date (default `arrival`, so that the function reads no clock);
    `delivery_result` one of DELIVERY_RESULTS when known; `spf_record` the SPF TXT record of the
    aligned MAIL FROM domain, when the caller has it, for SPF-DNS. ValueError when there is no
    DMARC result to report or an argument of ours (address, Message-ID) is unusable.
    """
    dmarc = results.dmarc
    if dmarc is None:
        raise ValueError("no DMARC result to report on")
    addresses = [_safe_address(a) for a in to]
    if not addresses or any(a is None for a in addresses):
        raise ValueError(f"report destinations {to!r} are not all plain local@domain addresses")
    if not _MSGID.match(message_id.strip()):
        raise ValueError(f"Message-ID {message_id!r} is not <left@right>")
    if delivery_result is not None and delivery_result not in DELIVERY_RESULTS:
        raise ValueError(f"Delivery-Result {delivery_result!r} is not one of RFC 6591's")

    domain = _domain_text(dmarc.domain or results.author.domain or "")
    source_ip = normalize_client_ip(tx.client_ip) if tx.client_ip else None
    arrived = _date(arrival)
    alignment = identity_alignment(results)
    reporting = _domain_text(reporter.reporting_domain) if reporter.reporting_domain else "authmilter"

    # Part 2, RFC 5965 section 3.1 plus RFC 6591 section 3.1 and RFC 9991 section 4.
    feedback = [
        _field("Feedback-Type", "auth-failure"),
        _field("User-Agent", reporter.user_agent),
        _field("Version", "1"),
        _field("Auth-Failure", "dmarc"),
        _field("Original-Mail-From", _envelope_address(tx.mail_from)),
        _field("Arrival-Date", arrived),
    ]
    if tx.queue_id:
        # Not RFC 3461's ENVID, which we never see, but the RFC 9991 example uses the MTA's
        # queue id: the one thing a domain owner can quote back to us to find the message.
        feedback.append(_field("Original-Envelope-Id", _escape(tx.queue_id, keep_space=False)))
    if source_ip is not None:
        feedback.append(_field("Source-IP", source_ip))
    feedback.append(_field("Reported-Domain", domain))
    ar = authentication_results.strip() or f"{reporting}; dmarc=fail header.from={domain}"
    feedback.append(_field("Authentication-Results", ar))
    feedback.append(_field("Identity-Alignment", alignment))
    if delivery_result is not None:
        feedback.append(_field("Delivery-Result", delivery_result))
    sig = _aligned_failed_dkim(results, dmarc)
    if sig is not None:
        # RFC 9991 section 4: required for a DKIM failure of an aligned identifier. RFC 6591 lets
        # each appear once, so the first such signature is the one described.
        feedback.append(_field("DKIM-Domain", _domain_text(sig.domain)))
        feedback.append(_field("DKIM-Identity", _identity(sig)))
        feedback.append(_field("DKIM-Selector", _escape(sig.selector.strip(), keep_space=False)))
    if spf_record is not None and _aligned_failed_spf(results, dmarc) and results.spf is not None:
        # RFC 6591 section 3.2: type, domain and the record as a quoted-string. Without the
        # record's text we write nothing rather than a record nobody published.
        quoted = _escape(spf_record).replace('"', '\\"')
        feedback.append(_field("SPF-DNS",
                               f'txt : {_domain_text(results.spf.effective.domain)} : "{quoted}"'))
    feedback_part = b"".join(feedback)

    text = (
        f"This is a DMARC failure report (RFC 9991) from {reporting}.\r\n"
        f"\r\n"
        f"A message claiming to be from {domain} failed DMARC authentication.\r\n"
        f"It was received from {source_ip or 'an unknown address'} on {arrived}.\r\n"
        f"Mechanisms that failed to authenticate an aligned identity: {alignment}.\r\n"
        f"\r\n"
        f"The header fields of the message follow; its body is not included.\r\n"
    ).encode("ascii")

    headers, cte = _headers_part(tx)
    raw_headers = b"".join(h.raw() for h in tx.headers)
    boundary = _boundary(message_id, (text, feedback_part, headers))

    top = [
        _field("From", _from_header(reporter.from_address)),
        _field("To", ", ".join(a for a in addresses if a is not None)),
        _field("Subject", f"DMARC failure report for {domain}"),
        _field("Date", _date(arrival if now is None else now)),
        _field("Message-ID", message_id.strip()),
        _field("MIME-Version", "1.0"),
        # RFC 3834: an automatic message, so vacation responders and the like stay quiet.
        _field("Auto-Submitted", "auto-generated"),
        _field("Content-Type",
               f'multipart/report; report-type=feedback-report; boundary="{boundary.decode()}"'),
        _field("Content-Transfer-Encoding", "7bit"),
    ]
    delimiter = b"--" + boundary
    out = [
        b"".join(top), _CRLF,
        b"This is a MIME-formatted DMARC failure report.", _CRLF, _CRLF,
        delimiter, _CRLF,
        b"Content-Type: text/plain; charset=us-ascii", _CRLF,
        b"Content-Disposition: inline", _CRLF,
        b"Content-Transfer-Encoding: 7bit", _CRLF, _CRLF,
        text, _CRLF,
        delimiter, _CRLF,
        b"Content-Type: message/feedback-report", _CRLF,
        b"Content-Transfer-Encoding: 7bit", _CRLF, _CRLF,
        feedback_part, _CRLF,
        delimiter, _CRLF,
        b"Content-Type: text/rfc822-headers; charset=" + _charset(raw_headers).encode(), _CRLF,
        b"Content-Transfer-Encoding: " + cte, _CRLF, _CRLF,
        headers, _CRLF,
        delimiter, b"--", _CRLF,
    ]
    return b"".join(out)


def _identity(sig: DkimResult) -> str:
    """DKIM-Identity: i= when the signature had one, else RFC 6376's default, "@" d=."""
    ident = sig.identity.strip()
    if not ident:
        return "@" + _domain_text(sig.domain)
    local, at, domain = ident.rpartition("@")
    if not at:
        return _escape(ident, keep_space=False)
    return f"{_escape(local, keep_space=False)}@{_domain_text(domain)}"
