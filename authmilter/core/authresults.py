"""The Authentication-Results header field (RFC 8601): building ours, finding forgeries of it.

Building
--------
Each result clause is an `authres` object, rendered by authres. What authres does not do
safely enough for values that came out of a message (DKIM d=/s=/i=, the From domain, the MAIL FROM
address, reasons built from DNS text) we handle ourselves:

* Value quoting. authres' `QuotableValue.quote_if_needed` leaves any value containing "@" bare,
  so a hostile `d=x@y;dkim=pass` would end our clause and inject a fake result. `_Value`
  overrides that method: a value is left bare only if it is an RFC 2045 token or a plain
  `local-part@domain-name`, otherwise it becomes a quoted-string (RFC 8601 `pvalue`).
* Defence in depth for consumers that split on ";" and ignore quoting: structured values
  (domains, selector, algorithm, b= prefix, addresses) containing white space, ";", "(", ")",
  '"', "\\", control characters or 8-bit text are dropped -- no real d= or From domain looks
  like that -- after converting IDNs to A-labels. Free text (reason=) is made printable ASCII,
  capped, and has ";", "=", quotes and backslashes replaced, so sender-controlled text (SPF exp=,
  DNS errors) cannot read as a clause either. Dropping a property loses a little information; a
  misleading header is worse.
* Comments are rendered by authres verbatim between parentheses; ours only carry our own text
  and pass through `_comment`, which escapes "(", ")" and "\\" as quoted-pairs.

Clauses are joined by us rather than by `AuthenticationResultsHeader.header_value()` so that each
result starts on its own folded line (";" CRLF TAB), the conventional layout, which keeps lines
well below RFC 5322's 78/998 limits. libmilter wants bare LF in folded values (the MTA adds the
CR), so the line separator is a parameter.

Detecting forgeries
-------------------
`forged_headers` finds incoming fields that claim our authserv-id (RFC 8601 section 5: they MUST
be removed or renamed before ours is added). See its docstring for the parsing rules and the
conservative fallback.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import authres.arc
import authres.core
import authres.dkim_b
import authres.dmarc

from authmilter.core.model import (
    ArcResult,
    AuthorResult,
    DkimResult,
    DmarcResult,
    DnsListResults,
    Header,
    HeaderDelete,
    IprevResult,
    Results,
    SpfIdentity,
    SpfResult,
)
from authmilter.core.names import normalize_client_ip, printable_ascii

__all__ = ["HEADER_NAME", "build_authentication_results", "forged_headers"]

HEADER_NAME = "Authentication-Results"

_VALUE_MAX = 255  # longer than any domain (253) or SMTP path (256 with brackets)
_TEXT_MAX = 160

# RFC 2045 token: printable ASCII except SPACE and tspecials ()<>@,;:\"/[]?=
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+\Z")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
# RFC 8601 pvalue form [ [local-part] "@" ] domain-name, with a dot-atom local-part and an
# RFC 6376 domain-name (two or more LDH labels). Anything fancier is quoted whole.
_ADDRESS_RE = re.compile(rf"(?:{_ATEXT}+(?:\.{_ATEXT}+)*)?@{_LABEL}(?:\.{_LABEL})+\Z")
_RESULT_RE = re.compile(r"[a-z]+\Z")
_WORD_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}\Z")


class _Value(authres.core.QuotableValue):  # type: ignore[misc]
    """A pvalue/reason that quotes itself whenever a bare rendering could be misread."""

    def quote_if_needed(self) -> str:
        text = str(self)
        if _TOKEN_RE.match(text) or _ADDRESS_RE.match(text):
            return text
        return _quoted_string(text)


def _quoted_string(text: str) -> str:
    # Only printable ASCII reaches here, so escaping the two qtext exclusions is all it takes.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Characters that make a structured value (domain, selector, address...) suspect even when
# quoting would make it RFC-legal: many A-R consumers split on ";" and ignore quotes and comments.
_UNSAFE = re.compile(r'[^!-~]|[;()"\\]')  # outside visible ASCII (space, tab included), or a delimiter


def _structured(text: str) -> str | None:
    """A structured value (domain, selector, algorithm, b= prefix, address) or None to drop it."""
    text = text.strip()
    if not text or len(text) > _VALUE_MAX:
        return None
    if _UNSAFE.search(text):
        return None
    return text


def _ascii_domain(domain: str) -> str | None:
    """A domain in a form safe to render: A-labels for IDNs, None if it cannot be made ASCII."""
    domain = domain.strip()
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return _structured(domain)


def _address(address: str) -> str | None:
    """An address in a form safe to render, converting an IDN domain part to A-labels."""
    local, at, domain = address.strip().rpartition("@")
    if at:
        ascii_domain = _ascii_domain(domain)
        if ascii_domain is None:
            return None
        address = f"{local}@{ascii_domain}"
    return _structured(address)


_FREE_TEXT_MAP = str.maketrans({";": ",", "=": ":", '"': "'", "\\": "/"})


def _free_text(text: str) -> str:
    """Human text (reasons): one line of printable ASCII, length-capped, and defused.

    Reasons carry text the sender controls (SPF exp=, DNS error strings, record fragments).
    Quoting already keeps them inside the syntax, but ";" and "=" are also replaced so that a
    naive consumer that splits on ";" or greps for "dkim=pass" cannot be fooled by them, and
    '"' and "\\" so that one that knows no quoted-pairs cannot lose track of the quotes.
    """
    text = " ".join(text.split())
    if len(text) > _TEXT_MAX:
        text = text[: _TEXT_MAX - 3] + "..."
    return printable_ascii(text).translate(_FREE_TEXT_MAP)


def _comment(text: str) -> str | None:
    """Comment text for authres to put between parentheses, unable to end the comment early."""
    text = printable_ascii(" ".join(text.split()))
    text = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return text or None


def _reason(text: str) -> _Value | None:
    cleaned = _free_text(text)
    return _Value(cleaned) if cleaned else None


def _prop(ptype: str, name: str, value: str | None) -> authres.core.AuthenticationResultProperty | None:
    if not value:
        return None
    prop = authres.core.AuthenticationResultProperty(ptype, name)
    prop.value = _Value(value)
    return prop


def _props(
    *items: authres.core.AuthenticationResultProperty | None,
) -> list[authres.core.AuthenticationResultProperty]:
    return [item for item in items if item is not None]


def _result_word(result: str) -> str:
    # Results are ours, not the message's, but a malformed one must still not break the syntax.
    word = result.strip().lower()
    return word if _RESULT_RE.match(word) else "permerror"


def _finish(clause: authres.core.AuthenticationResult, reason: str) -> authres.core.AuthenticationResult:
    # authres would wrap the reason in its own QuotableValue (and leave "x@y; ..." bare).
    clause.reason = _reason(reason) if reason else None
    return clause


def _spf_clause(spf: SpfResult, client_ip: str | None) -> authres.core.AuthenticationResult:
    ip = normalize_client_ip(client_ip) if client_ip else None
    comment = f"client-ip={ip}" if ip else None
    if spf.identity is SpfIdentity.HELO:
        value = _ascii_domain(spf.sender) or _ascii_domain(spf.domain)
        prop = _prop("smtp", "helo", value)
    else:
        # Prefer the full address; fall back to the domain if the local-part cannot be rendered.
        value = _address(spf.sender) or _ascii_domain(spf.domain)
        prop = _prop("smtp", "mailfrom", value)
    clause = authres.core.SPFAuthenticationResult(
        result=_result_word(spf.result), result_comment=comment, properties=_props(prop)
    )
    return _finish(clause, spf.reason)


def _iprev_clause(iprev: IprevResult) -> authres.core.AuthenticationResult | None:
    """`iprev=RESULT policy.iprev=IP (HOST)`: RFC 8601 section 2.7.3 reports the client address
    under ptype "policy"; the name it confirmed rides along as the property's comment, as authres
    and other verifiers write it. Only a confirmed name is shown: an unconfirmed PTR name is
    whatever the owner of the address block chose to publish."""
    ip = _structured(iprev.ip)
    if iprev.result == "none" or ip is None:
        return None  # nothing was checked, and "none" is not an iprev result RFC 8601 registers
    prop = _prop("policy", "iprev", ip)
    if prop is not None and iprev.result == "pass":
        host = _ascii_domain(iprev.host)
        prop.comment = _comment(host) if host else None
    clause = authres.core.IPRevAuthenticationResult(result=_result_word(iprev.result),
                                                    properties=_props(prop))
    return _finish(clause, iprev.reason if iprev.result != "pass" else "")


_DNSWL_RESULTS = {"listed": "pass", "not-listed": "none", "temperror": "temperror", "unusable": "permerror"}


def _dnswl_clauses(lists: DnsListResults | None) -> list[authres.core.AuthenticationResult]:
    """`dnswl=pass dns.zone=ZONE policy.ip=CODE` (RFC 8904) for each allow list asked about the
    client address. Block lists have no registered method: their listings are in the log and
    in `check --json`, not in a header the recipient's filters read."""
    clauses: list[authres.core.AuthenticationResult] = []
    for r in lists.results if lists is not None else ():
        if not r.allow or r.identity != "ip":
            continue
        zone = _ascii_domain(r.zone)
        code = _structured(r.codes[0]) if r.codes else None
        clause = authres.core.AuthenticationResult(
            method="dnswl", result=_DNSWL_RESULTS.get(r.status, "permerror"),
            properties=_props(_prop("dns", "zone", zone), _prop("policy", "ip", code)))
        clauses.append(_finish(clause, r.reason if r.status in ("temperror", "unusable") else ""))
    return clauses


def _dkim_clause(sig: DkimResult) -> authres.core.AuthenticationResult:
    comment = f"{sig.key_bits}-bit key" if sig.key_bits else None
    properties = _props(
        _prop("header", "d", _ascii_domain(sig.domain)),
        _prop("header", "i", _address(sig.identity)),
        _prop("header", "s", _structured(sig.selector)),
        _prop("header", "a", _structured(sig.algorithm)),
        # Last on purpose: a base64 prefix with "/" or "=" must be quoted, and some parsers
        # (authres among them) only accept a quoted pvalue at the end of a clause.
        _prop("header", "b", _structured(sig.b_prefix)),
    )
    clause = authres.dkim_b.DKIMAuthenticationResult(
        result=_result_word(sig.result), result_comment=comment, properties=properties
    )
    return _finish(clause, sig.reason)


# Sealer domains shown in the arc= comment: enough for the usual chain, and a bound on the line
# length whatever a 50-set chain of 253-character names would make of it.
_SEALERS_COMMENT_MAX = 300


def _arc_clause(arc: ArcResult, client_ip: str | None) -> authres.core.AuthenticationResult:
    # The sealers (ARC-Seal d=, by instance) in RFC 8617 section 7.2.2's notation. They come from
    # the message: each one is dropped unless it is a plain domain name, and they stay in a comment.
    shown: list[str] = []
    length = 0
    for instance, sealer in enumerate(arc.sealers, start=1):
        domain = _ascii_domain(sealer)
        if domain is None:
            continue
        item = f"as[{instance}].d={domain}"
        if length + len(item) > _SEALERS_COMMENT_MAX:
            shown.append("...")
            break
        shown.append(item)
        length += len(item) + 1
    comment = _comment(" ".join(shown)) if shown else None
    oldest_pass = None
    if arc.result == "pass" and arc.oldest_pass is not None and arc.oldest_pass >= 0:
        oldest_pass = str(arc.oldest_pass)
    ip = normalize_client_ip(client_ip) if client_ip else None
    properties = _props(
        _prop("header", "oldest-pass", oldest_pass),
        # Last: an IPv6 address is a quoted pvalue, which some parsers only accept at the end.
        _prop("smtp", "remote-ip", ip),
    )
    clause = authres.arc.ARCAuthenticationResult(
        result=_result_word(arc.result), result_comment=comment, properties=properties
    )
    # "no ARC header fields" says nothing arc=none does not.
    return _finish(clause, arc.reason if arc.result != "none" else "")


def _dmarc_clause(
    dmarc: DmarcResult, author: AuthorResult, override: str | None
) -> authres.core.AuthenticationResult:
    tags: list[str] = []
    record = dmarc.record
    if record is not None:
        # The published tags, as other verifiers show them. Tag values come from DNS; only plain
        # words are shown, so a record cannot smuggle "; dkim=pass" in through our comment.
        published = (("p", record.p), ("sp", record.sp), ("np", record.np))
        tags = [f"{tag}={value}" for tag, value in published if value and _WORD_RE.match(value)]
        if dmarc.testing:
            tags.append("testing")
    if override and _WORD_RE.match(override):
        # Our local policy did not apply the published one; say why, in RFC 9989's words.
        tags.append(f"override={override}")
    comment = _comment(" ".join(tags)) if tags else None
    domain = dmarc.domain or author.domain or ""
    reason = dmarc.reason
    if not reason and author.error and dmarc.result == "permerror":
        reason = author.error
    properties = _props(
        _prop("header", "from", _ascii_domain(domain)),
        _prop("policy", "dmarc", _structured(dmarc.policy)),
    )
    clause = authres.dmarc.DMARCAuthenticationResult(
        result=_result_word(dmarc.result), result_comment=comment, properties=properties
    )
    return _finish(clause, reason)


def _render_authserv_id(authserv_id: str) -> str:
    text = authserv_id.strip()
    if not text or any(not " " <= c <= "~" for c in text):
        # This is configuration, not message content: refuse rather than emit something
        # nobody (including our own forged_headers) would recognise.
        raise ValueError(f"authserv-id must be non-empty printable ASCII: {authserv_id!r}")
    return text if _TOKEN_RE.match(text) else _quoted_string(text)


def build_authentication_results(
    authserv_id: str,
    results: Results,
    *,
    client_ip: str | None = None,
    linesep: str = "\r\n",
    dmarc_override: str | None = None,
) -> str:
    """The Authentication-Results value (without the field name) for `results`.

    One clause per result: iprev (when there was a client address to check), the effective SPF
    identity, every DKIM signature (or `dkim=none`), ARC (RFC 8617 section 10.2, with
    header.oldest-pass and smtp.remote-ip), DMARC; a part whose result is None is omitted.
    Clauses are separated by ";" + `linesep` + TAB. Raises ValueError only for an unusable
    `authserv_id` (a configuration error).
    """
    head = _render_authserv_id(authserv_id)
    clauses: list[authres.core.BaseAuthenticationResult] = []
    # The connection's result first: it was known first, and it does not depend on the message.
    iprev = _iprev_clause(results.iprev) if results.iprev is not None else None
    if iprev is not None:
        clauses.append(iprev)
    clauses.extend(_dnswl_clauses(results.dnslists))
    if results.spf is not None:
        clauses.append(_spf_clause(results.spf.effective, client_ip))
    if results.dkim:
        clauses.extend(_dkim_clause(sig) for sig in results.dkim)
    else:
        clauses.append(authres.core.DKIMAuthenticationResult(result="none", result_comment="no signatures"))
    if results.arc is not None:
        clauses.append(_arc_clause(results.arc, client_ip))
    if results.dmarc is not None:
        clauses.append(_dmarc_clause(results.dmarc, results.author, dmarc_override))
    separator = ";" + linesep + "\t"
    return head + separator + separator.join(str(clause) for clause in clauses)


# --- forged header detection -------------------------------------------------------------------

_WSP = " \t\r\n"
# Characters that may appear inside an authserv-id as most software writes it (host names);
# used only by the fallback to decide where a word starts and ends.
_ID_CHAR = r"[A-Za-z0-9._\-]"


def _normalize_id(authserv_id: str) -> str:
    # Case-insensitive (RFC 8601 section 2.5), and "mx.example.com." is the same host.
    text = authserv_id.strip().lower()
    return text[:-1] if text.endswith(".") else text


def _skip_cfws(text: str, pos: int) -> int:
    """Index after leading folding white space and (nested) comments; -1 if a comment never ends."""
    end = len(text)
    while pos < end:
        char = text[pos]
        if char in _WSP:
            pos += 1
            continue
        if char != "(":
            return pos
        depth = 0
        while pos < end:
            char = text[pos]
            if char == "\\":
                pos += 2  # quoted-pair: the next character is literal, even ")"
                continue
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
                if depth == 0:
                    pos += 1
                    break
            pos += 1
        else:
            return -1
    return pos


def _extract_authserv_id(text: str) -> str | None:
    """The authserv-id of an A-R value, or None if it is not well-formed enough to tell."""
    pos = _skip_cfws(text, 0)
    if pos < 0 or pos >= len(text):
        return None
    if text[pos] == '"':
        chars: list[str] = []
        pos += 1
        while pos < len(text):
            char = text[pos]
            if char == "\\" and pos + 1 < len(text):
                chars.append(text[pos + 1])
                pos += 2
                continue
            if char == '"':
                # Inside a quoted-string, folding CRLFs are not part of the value and the
                # white space that follows them reads as a space.
                value = "".join(chars).replace("\r", "").replace("\n", "").replace("\t", " ")
                return value if value and all(" " <= c <= "~" for c in value) else None
            chars.append(char)
            pos += 1
        return None
    start = pos
    while pos < len(text) and text[pos] not in _WSP and text[pos] not in ";(":
        pos += 1
    token = text[start:pos]
    # Anything that is not a clean token (tspecials, 8-bit bytes) means the header is malformed.
    return token if _TOKEN_RE.match(token) else None


def _mentions_id(text: str, ours: str) -> bool:
    """Fallback for malformed values: does our id appear as a word before the first ";"?"""
    head = text.split(";", 1)[0]
    pattern = rf"(?<!{_ID_CHAR}){re.escape(ours)}\.?(?!{_ID_CHAR})"
    return re.search(pattern, head, re.IGNORECASE) is not None


def _claims(value: bytes, ours: str) -> bool:
    # latin-1 maps every byte to one character, so 8-bit garbage cannot make decoding fail and
    # stays visibly non-ASCII.
    text = value.decode("latin-1")
    found = _extract_authserv_id(text)
    if found is not None:
        return _normalize_id(found) == ours
    return _mentions_id(text, ours)


def forged_headers(headers: Sequence[Header], authserv_id: str) -> tuple[HeaderDelete, ...]:
    """Incoming Authentication-Results fields that claim our authserv-id, for deletion.

    The authserv-id is read as RFC 8601 defines it: after leading CFWS (folding white space and
    comments, which nest and may contain quoted-pairs) comes a quoted-string or a token ending
    at white space, "(" or ";". It is compared case-insensitively and ignoring one trailing dot,
    so "MX.Example.COM." claims "mx.example.com"; "mx.example.com.evil" does not.

    When the value is too malformed to read an id from (unterminated comment or quote, 8-bit or
    tspecial characters in the id, nothing before ";"), we delete it if our id appears as a word
    anywhere before the first ";": a lenient downstream parser might well read it as ours, and
    deleting a broken header costs nothing.

    `occurrence` counts, from 1, the fields whose name equals Authentication-Results
    case-insensitively, in header order, as smfi_chgheader does. A name with white space before
    its colon (`Authentication-Results :`, RFC 5322 obs-optional) is that field too: a reader takes
    it as one. Postfix hands such a field to milters under the bare name and counts it among them
    (tests/e2e deletes one), so the count matches the MTA's. The deletions come in descending
    occurrence order, so applying them one by one never shifts the ones still to come.
    """
    ours = _normalize_id(authserv_id)
    if not ours:
        return ()
    name = HEADER_NAME.lower().encode("ascii")
    deletes: list[HeaderDelete] = []
    occurrence = 0
    for header in headers:
        if header.key != name:
            continue
        occurrence += 1
        if _claims(header.value, ours):
            deletes.append(HeaderDelete(HEADER_NAME, occurrence))
    return tuple(reversed(deletes))
