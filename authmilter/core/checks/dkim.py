"""DKIM verification (RFC 6376, RFC 8301, RFC 8463) on top of dkimpy.

dkimpy does the canonicalization, hashing and cryptography. This module does what dkimpy does not do,
or does in a way a milter cannot live with:

* Message splitting. dkimpy's own parser raises on any odd header line (one bad line would cost every
  signature), crashes on a leading continuation line, and is quadratic on long folded fields (a 1 MB
  folded field takes ~0.4 s, 10 MB would take most of a minute). We split the message ourselves, the
  same way dkimpy would for well-formed input, and give one `dkim.DKIM` object the parsed fields.
* Per signature, dkimpy only sees the header fields that signature can select (the last n instances
  of each name in h=), so a huge header section is canonicalized once per signature only for the few
  fields that are signed, not in full.
* dkimpy canonicalizes the body again for every signature. We give it the body already put through
  simple canonicalization, once: that changes no signature's result (see _body_for_dkimpy) and
  takes the pure-Python loop over trailing empty lines out of every later pass. Relaxed passes still
  cost dkimpy one regex substitution per space of the body; that is dkimpy's floor.
* Input that makes dkimpy's pure-Python code super-linear is refused before it gets there: signature
  fields over 16 KB or with whitespace-only folded lines (its b= removal regex backtracks
  quadratically on those), and b= values longer than any key we accept (quadratic int conversion).
* DNS. The key record is fetched through our `Resolver` before dkimpy runs, so NXDOMAIN, NODATA and
  TEMPERROR keep their meaning (dkimpy would turn all of them into `False`). dkimpy's `dnsfunc` then
  just hands over the record we chose, reduced to the k= and p= tags: every other key tag is checked
  here, where dkimpy gets some wrong (it rejects s=email:tlsrpt, ignores h=, never compares k= with a=).
* The checks RFC 6376 and RFC 8301 require that dkimpy skips: From must be signed, l= must not exceed
  the body, strict base64 in bh=, key h= / k= / t=s, rsa-sha1 and short RSA keys never pass.
* i= is dkim-quoted-printable (RFC 6376 2.11, 3.5): we decode it before checking it against d= and
  reporting it. dkimpy compares it as written, so a signature whose i= needed decoding gets its
  tag checks on a decoded copy (see _run_dkimpy); what it hashes is the field as received.
* Clock. dkimpy checks t= and x= against time.time() with 10 h of slop and has no clock parameter, so
  `now` drives our own t= / x= checks, made with the same slop before dkimpy runs.

Outcomes (RFC 8601 section 2.7.1 vocabulary):

  pass       signature verified with an acceptable algorithm and key
  fail       body hash mismatch, or the signature does not verify with the published key
  policy     verifiable in principle but refused: rsa-sha1 (RFC 8301), RSA key under min_key_bits
             (RFC 8301), expired x= or t= in the future (RFC 6376 3.5 lets verifiers refuse them),
             signatures beyond max_signatures (not verified)
  temperror  the key lookup could not be completed
  permerror  malformed signature (tag-list syntax, duplicate or missing required tag, unknown a= or c=,
             bad base64, i= outside d= or not dkim-quoted-printable, From not signed, l= longer
             than the body, x= not after t=, field over 16 KB or with whitespace-only folded
             lines, b= longer than any key allows),
             no key (NXDOMAIN/NODATA), unusable key record (garbage, over 8 KB, revoked, k=/h=
             mismatch, t=s violated), or any unexpected dkimpy exception
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dkim
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.util import DuplicateTag, InvalidTagValueList, parse_tag_value

from authmilter.core import dkimpy_fast  # noqa: F401 - installs OpenSSL RSA and the body fast path
from authmilter.core.dnsapi import DnsStatus, Resolver
from authmilter.core.model import DkimResult, Header, field_key

__all__ = ["MAX_KEY_RECORD_BYTES", "MAX_SIGNATURE_FIELD_BYTES", "verify_dkim"]

# A 4096-bit RSA key (the largest RFC 8301 requires verifiers to handle) is ~740 base64 characters
# and even 16384 bits is under 3 KB. 8 KB leaves room for tags and notes while bounding what an
# attacker-controlled record can cost us: dkimpy parses keys in pure Python and raises the signature
# to the published exponent, so record size bounds CPU.
MAX_KEY_RECORD_BYTES = 8192

# dkimpy refuses t= more than 10 h in the future and x= more than 10 h in the past, measured on the
# wall clock. We apply the same slop against `now`, so with now=None both checks agree and the
# outcome does not depend on which one fires first. 10 h also absorbs time-zone-misconfigured senders.
CLOCK_SKEW_SECONDS = 36_000

# Real signatures are under 3 KB (b= of a 16384-bit key is ~2.7 KB, a long h= ~1.5 KB). The cap
# bounds what dkimpy's regexes and tag parser spend on one field (they are near-linear only once
# whitespace-only lines are refused, see _BLANK_LINE).
MAX_SIGNATURE_FIELD_BYTES = 16384

# A 16384-bit RSA signature is 2048 bytes; ed25519 is 64. dkimpy converts b= to an integer one byte
# at a time (quadratic), so anything longer is refused unread.
_MAX_SIGNATURE_BYTES = 2048
_ED25519_SIGNATURE_BYTES = 64  # RFC 8032 section 5.1.6

# RFC 6376 3.5 lets verifiers treat t=/x= values longer than 12 digits as infinite (DoS guard).
_MAX_TIME_DIGITS = 12

# RFC 6376 6.1.2 lets a verifier cycle through several key records at one name. We try at most this
# many usable ones, each costing a full verification.
_MAX_KEY_CANDIDATES = 3

# Text we copy from a signature into a result ends up in an Authentication-Results header; a valid
# d=, s= or i= is far shorter than this.
_REPORT_MAX = 255

_ALGORITHMS = {b"rsa-sha256": b"sha256", b"ed25519-sha256": b"sha256", b"rsa-sha1": b"sha1"}
_KEY_TYPE = {b"rsa-sha256": b"rsa", b"rsa-sha1": b"rsa", b"ed25519-sha256": b"ed25519"}
_REQUIRED = (b"v", b"a", b"b", b"bh", b"d", b"h", b"s")

_LINE_BREAK = re.compile(rb"\r?\n")
# A field name is printable US-ASCII except ":"; white space may stand before the colon (RFC 5322
# section 4.5 obs-optional, which receivers must read; any ASCII white space, as in field_key).
# The group keeps that white space: simple canonicalization hashes the name as it was written.
_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+\s*):")
_HDR_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+\Z")
_H_SPLIT = re.compile(rb"\s*:\s*")
_FWS = re.compile(rb"[ \t\r\n]+")
# A folded line holding only whitespace: FWS (RFC 5322 3.2.2) allows one line break per run, only the
# obsolete syntax allows more, and no signer writes it. dkimpy's b= regex backtracks quadratically
# on runs of such lines (12 KB of them take a second).
_BLANK_LINE = re.compile(rb"\n[ \t]*\r?\n")
_DIGITS = re.compile(rb"[0-9]+\Z")
# Letters, digits, hyphen and (seen in the wild in selectors) underscore: enough for every real
# d= and s=, and nothing that could smuggle another name into the DNS query.
_LABEL = re.compile(rb"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
_B64_CHARS = re.compile(r"[A-Za-z0-9+/]{0,8}")
# RFC 2045 hex-octet, which dkim-quoted-printable (RFC 6376 2.11) uses: upper-case digits only.
# Reading lower case too would turn a stray "=" before letters ("=4example") into some octet.
_QP_HEX_OCTET = re.compile(rb"=([0-9A-F]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class _NullLogger:
    """dkimpy logs attacker-controlled text (and key material) at ERROR; we report outcomes ourselves."""

    def debug(self, *args: object, **kwargs: object) -> None:
        pass

    info = warning = error = exception = debug

    def isEnabledFor(self, level: int) -> bool:
        return False


_NULL_LOGGER = _NullLogger()
_SIMPLE = CanonicalizationPolicy.from_c_value(b"simple/simple")
_RELAXED = CanonicalizationPolicy.from_c_value(b"simple/relaxed")


@dataclass(frozen=True)
class _Message:
    fields: list[tuple[bytes, bytes]]  # (name, value) with value as dkimpy expects it
    by_name: dict[bytes, list[int]]  # field_key(name) -> positions in `fields`
    body: bytes  # line ends normalized to CRLF, as dkimpy would
    sig_positions: list[int]  # positions of the DKIM-Signature fields


ParsedMessage = _Message


@dataclass
class _Context:
    message: _Message
    resolver: Resolver
    min_key_bits: int
    now: float
    verifier: Any  # the one dkim.DKIM object
    key_cache: dict[str, _KeyLookup] = field(default_factory=dict)
    simple_body: bytes | None = None  # the body after simple canonicalization, once computed
    canonical_lengths: dict[bytes, int] = field(default_factory=dict)  # for l=, per body algorithm


@dataclass(frozen=True)
class _KeyLookup:
    """What DNS gave us at one key name: usable records, or why there is none."""

    records: tuple[dict[bytes, bytes], ...]
    problem: tuple[str, str] | None = None  # (result, reason) when the lookup itself failed


class _Outcome(Exception):
    """Stops verification of one signature with a final result."""

    def __init__(self, result: str, reason: str, key_bits: int | None = None) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason
        self.key_bits = key_bits


# Signatures beyond the verification cap are still listed one by one up to this many.
MAX_REPORTED_SIGNATURES = 50


def verify_dkim(
    message: bytes | ParsedMessage,
    resolver: Resolver,
    *,
    max_signatures: int = 10,
    min_key_bits: int = 1024,
    now: float | None = None,
) -> tuple[DkimResult, ...]:
    """Verify every DKIM-Signature in `message`; one result per signature, in header order.

    `message` is the message as received: header fields, an empty line, the body. Only the first
    `max_signatures` signatures are verified; the rest are reported as "policy". No signatures gives
    an empty tuple (the caller reports dkim=none). `now` (POSIX seconds) is the verification time for
    x= and t=; it defaults to the current time. Never raises.
    """
    try:
        msg = message if isinstance(message, _Message) else parse_message(message)
        sig_values = [msg.fields[p][1] for p in msg.sig_positions]
        if not sig_values:
            return ()
        ctx = _Context(
            message=msg,
            resolver=resolver,
            min_key_bits=min_key_bits,
            now=time.time() if now is None else float(now),
            verifier=_new_verifier(),
        )
    except Exception as e:  # a bug in the splitter must not take the milter down
        return (DkimResult("permerror", "", "", "", "", reason=f"internal error: {type(e).__name__}"),)

    results: list[DkimResult] = []
    for i, value in enumerate(sig_values):
        if i >= MAX_REPORTED_SIGNATURES:
            # Thousands of signatures would make an Authentication-Results header of megabytes;
            # past this point one entry stands for all the rest.
            results.append(DkimResult(
                "policy", "", "", "", "",
                reason=f"{len(sig_values) - i} more signatures not verified or listed"))
            break
        if i >= max_signatures:
            results.append(
                _described(value, "policy", f"signature limit ({max_signatures}) reached; not verified")
            )
            continue
        try:
            results.append(_verify_one(ctx, i, value))
        except Exception as e:  # never let one signature's surprise cost the others
            results.append(_described(value, "permerror", f"internal error: {type(e).__name__}"))
    return tuple(results)


# --- message splitting --------------------------------------------------------------------------


def _head_and_body(message: bytes) -> tuple[bytes, bytes]:
    """The header section (with its last line break) and the body, split at the first empty line."""
    for blank in (b"\r\n", b"\n"):
        if message.startswith(blank):
            return b"", message[len(blank):]
    ends = [(i + 1, i + 1 + len(blank)) for blank in (b"\r\n", b"\n")
            if (i := message.find(b"\n" + blank)) >= 0]
    if not ends:  # headers only, no empty line: the body is empty
        return message, b""
    start, body_start = min(ends)
    return message[:start], message[body_start:]


def parse_message(message: bytes) -> ParsedMessage:
    """The message split once for DKIM and ARC, which both take it instead of the bytes."""
    return _split_message(*_head_and_body(bytes(message)))


def parse_parts(headers: Sequence[Header], body: bytes) -> ParsedMessage:
    """`parse_message(header fields + empty line + body)`, without copying the body.

    The body can be most of a 50 MB message: putting it behind the header fields in one bytes
    object, then slicing it out again, would cost two more copies of it.
    """
    head = b"".join(h.raw() for h in headers)
    if head.startswith((b"\r\n", b"\n")) or b"\n\r\n" in head or b"\n\n" in head:
        # An empty line among the fields (not what an MTA hands over): split where dkimpy would.
        return parse_message(head + b"\r\n" + body)
    return _split_message(head, body)


def _split_message(head: bytes, body: bytes) -> _Message:
    """Split into header fields and body the way dkimpy's parser does for well-formed input.

    Differences, all for robustness: a line that is neither a field nor a continuation (and a
    continuation with no field before it) is skipped instead of failing the whole message; the work
    is linear in the size of the header section.
    """
    if body.count(b"\n") != body.count(b"\r\n"):
        # SMTP delivers CRLF; a bare LF here means a local tool wrote the message, and dkimpy would
        # read such lines as CRLF lines too. (Two counts in C: a regex scan would cost more.)
        body = _LINE_BREAK.sub(b"\r\n", body)

    fields: list[tuple[bytes, bytes]] = []
    by_name: dict[bytes, list[int]] = {}
    name: bytes | None = None
    parts: list[bytes] = []

    def flush() -> None:
        if name is not None:
            by_name.setdefault(field_key(name), []).append(len(fields))
            fields.append((name, b"".join(parts)))

    for line in _LINE_BREAK.split(head):
        if not line:
            continue  # only the split's empty tail can be empty: the header section has no empty line
        if line[0] in (0x20, 0x09):
            if name is not None:
                parts.append(line)
                parts.append(b"\r\n")
            continue
        flush()
        m = _FIELD_NAME.match(line)
        if m is None:
            name, parts = None, []  # mbox "From " line or garbage: not a field
        else:
            name, parts = m.group(1), [line[m.end() :], b"\r\n"]
    flush()
    return _Message(fields, by_name, body, by_name.get(b"dkim-signature", []))


def _new_verifier() -> Any:
    # minkey=0: we apply min_key_bits ourselves, to every outcome and not only to passes as dkimpy
    # does, and with our own result value. Headers and body are set per signature.
    return dkim.DKIM(None, logger=_NULL_LOGGER, minkey=0)


# --- one signature ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Described:
    domain: str
    selector: str
    algorithm: str
    b_prefix: str
    identity: str


def _dkim_qp_decode(value: bytes) -> bytes | None:
    """A dkim-quoted-printable value (RFC 6376 section 2.11) decoded; None when it is malformed.

    White space in the encoded text is not part of the value (2.11 lets signers fold anywhere).
    Malformed means an "=" that does not start a hex-octet: it has no decoding, and guessing one
    would let two different identities be read from one signature.
    """
    value = _FWS.sub(b"", value)
    if b"=" not in value:
        return value
    if value.count(b"=") != len(_QP_HEX_OCTET.findall(value)):
        return None
    return _QP_HEX_OCTET.sub(lambda m: bytes((int(m.group(1), 16),)), value)


def _text(value: bytes | None) -> str:
    if not value:
        return ""
    s = value[: _REPORT_MAX * 4].decode("utf-8", "replace")[:_REPORT_MAX]
    return _CONTROL.sub("?", s)


def _describe(value: bytes) -> _Described:
    """The reportable tags of a signature, read leniently so even a malformed one can be named."""
    tags: dict[bytes, bytes] = {}
    for spec in value.split(b";"):
        key, sep, val = spec.partition(b"=")
        if sep:
            tags.setdefault(key.strip(), val.strip())
    b = _FWS.sub(b"", tags.get(b"b", b""))[:8].decode("ascii", "replace")
    identity = tags.get(b"i")
    if identity is not None:
        # header.i is the identity i= encodes (RFC 6376 3.5); one that does not decode is shown as written.
        identity = _dkim_qp_decode(identity) or identity
    return _Described(
        domain=_text(tags.get(b"d")).lower(),
        selector=_text(tags.get(b"s")),
        algorithm=_text(tags.get(b"a")),
        b_prefix=b if _B64_CHARS.fullmatch(b) else "",
        identity=_text(identity),
    )


def _described(value: bytes, result: str, reason: str, key_bits: int | None = None) -> DkimResult:
    d = _describe(value)
    return DkimResult(
        result=result,
        domain=d.domain,
        selector=d.selector,
        algorithm=d.algorithm,
        b_prefix=d.b_prefix,
        identity=d.identity,
        reason=reason,
        key_bits=key_bits,
    )


def _verify_one(ctx: _Context, index: int, value: bytes) -> DkimResult:
    try:
        tags = _check_signature(ctx, value)
        result, reason, bits = _verify_with_keys(ctx, index, tags)
    except _Outcome as o:
        result, reason, bits = o.result, o.reason, o.key_bits
    return _described(value, result, reason, bits)


def _check_signature(ctx: _Context, value: bytes) -> dict[bytes, bytes]:
    """Everything that can be decided from the signature alone, before any DNS query."""
    if len(value) > MAX_SIGNATURE_FIELD_BYTES:
        raise _Outcome("permerror", f"signature field larger than {MAX_SIGNATURE_FIELD_BYTES} bytes")
    if _BLANK_LINE.search(value):
        raise _Outcome("permerror", "signature field has a whitespace-only folded line")
    try:
        tags: dict[bytes, bytes] = parse_tag_value(value)
    except DuplicateTag as e:
        raise _Outcome("permerror", f"duplicate tag {_text(e.args[0] if e.args else b'')}=") from None
    except InvalidTagValueList:
        raise _Outcome("permerror", "malformed tag-list") from None

    missing = [t.decode() + "=" for t in _REQUIRED if t not in tags]
    if missing:
        raise _Outcome("permerror", "missing required tag " + ", ".join(missing))
    if tags[b"v"] != b"1":
        raise _Outcome("permerror", f"unsupported version v={_text(tags[b'v'])}")
    algorithm = tags[b"a"]
    if algorithm not in _ALGORITHMS:
        raise _Outcome("permerror", f"unknown algorithm a={_text(algorithm)}")
    try:
        CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError:
        raise _Outcome("permerror", f"unknown canonicalization c={_text(tags.get(b'c'))}") from None
    for tag in (b"b", b"bh"):
        # dkimpy decodes leniently (stray characters are dropped) and, for bh=, checks the b= value
        # instead: validate strictly here so garbage is a syntax error, not a hash mismatch.
        raw = _FWS.sub(b"", tags[tag])
        try:
            decoded = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if not decoded:
            raise _Outcome("permerror", f"{tag.decode()}= is not valid base64")
        if tag == b"b" and len(decoded) > _MAX_SIGNATURE_BYTES:
            raise _Outcome("permerror", "b= is longer than any accepted key allows")
        if tag == b"b" and algorithm == b"ed25519-sha256" and len(decoded) != _ED25519_SIGNATURE_BYTES:
            # PyNaCl raises on any other length; checked here so that it reads as the malformed
            # signature it is rather than as an internal error.
            raise _Outcome("permerror", f"b= is not an Ed25519 signature ({len(decoded)} bytes, not 64)")

    domain, selector = tags[b"d"], tags[b"s"]
    if not _is_dns_name(domain):
        raise _Outcome("permerror", "d= is not a valid domain name")
    if not _is_dns_name(selector) or len(selector) + len(domain) + len(b"._domainkey.") > 253:
        raise _Outcome("permerror", "s= is not a valid selector")
    if b"i" in tags:
        identity = _dkim_qp_decode(tags[b"i"])
        if identity is None:
            raise _Outcome("permerror", "i= is not valid dkim-quoted-printable")
        _local, at, i_domain = identity.rpartition(b"@")
        if not at:
            raise _Outcome("permerror", "i= is not an address (no @)")
        i_domain, d_lower = i_domain.lower(), domain.lower()
        if i_domain != d_lower and not i_domain.endswith(b"." + d_lower):
            raise _Outcome("permerror", "i= domain is not d= or a subdomain of it")

    names = [n.lower() for n in _H_SPLIT.split(tags[b"h"])]
    if not all(_HDR_NAME.match(n) for n in names):
        raise _Outcome("permerror", "h= contains an empty or invalid field name")
    if b"from" not in names:
        # RFC 6376 5.4 / 6.1.1: otherwise a captured signature keeps verifying under any From.
        raise _Outcome("permerror", "From not signed (h= lacks from)")
    if b"q" in tags and b"dns/txt" not in [q.strip().lower() for q in tags[b"q"].split(b":")]:
        raise _Outcome("permerror", f"unsupported query method q={_text(tags[b'q'])}")
    if b"l" in tags and (not _DIGITS.match(tags[b"l"]) or len(tags[b"l"]) > 76):
        raise _Outcome("permerror", "l= is not a decimal number")
    signed_at = _time_tag(tags, b"t")
    expires = _time_tag(tags, b"x")
    if signed_at is not None and expires is not None and expires <= signed_at:
        raise _Outcome("permerror", "x= is not after t=")  # RFC 6376 3.5: x MUST be greater than t
    if b"l" in tags and int(tags[b"l"]) > _canonical_body_length(ctx, tags):
        # RFC 6376 3.5: l= MUST NOT be larger than the canonicalized body; dkimpy just hashes less.
        raise _Outcome("permerror", "l= is longer than the body")

    # Well-formed. What follows is refusal, not error.
    if algorithm == b"rsa-sha1":
        # RFC 8301 3.1: rsa-sha1 MUST NOT be used for verifying; we neither query DNS nor verify.
        raise _Outcome("policy", "rsa-sha1 not accepted (RFC 8301)")
    if expires is not None and expires < ctx.now - CLOCK_SKEW_SECONDS:
        raise _Outcome("policy", "signature expired (x= is in the past)")
    if signed_at is not None and signed_at > ctx.now + CLOCK_SKEW_SECONDS:
        raise _Outcome("policy", "signature timestamp t= is in the future")
    return tags


def _is_dns_name(name: bytes) -> bool:
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split(b"."))


def _time_tag(tags: dict[bytes, bytes], tag: bytes) -> float | None:
    raw = tags.get(tag)
    if raw is None:
        return None
    if not _DIGITS.match(raw):
        raise _Outcome("permerror", f"{tag.decode()}= is not a decimal number")
    if len(raw) > _MAX_TIME_DIGITS:
        return float("inf")
    return float(int(raw))


# Bodies up to this size are put through simple canonicalization once and shared by every
# signature; larger ones go to relaxed signatures as they are (see _body_for_dkimpy).
SHARED_SIMPLE_BODY_MAX = 1 << 20


def _simple_body(ctx: _Context) -> bytes:
    if ctx.simple_body is None:
        ctx.simple_body = _SIMPLE.canonicalize_body(ctx.message.body)
    return ctx.simple_body


def _body_for_dkimpy(ctx: _Context, tags: dict[bytes, bytes]) -> bytes:
    """What to give dkimpy as the body so that it computes exactly what it would from the raw body.

    The simple-canonical body is exact because, with dkimpy's algorithms, simple(simple(b)) ==
    simple(b) for every body and relaxed(simple(b)) == relaxed(b) for every body that is empty or
    ends in CRLF (checked exhaustively in test_dkim.py). A body without the final CRLF (never seen
    over SMTP) goes to dkimpy raw under relaxed: simple's added CRLF can turn trailing whitespace
    into a line end relaxed strips.
    """
    raw = ctx.message.body
    if _body_algorithm(tags) == b"simple":
        return _simple_body(ctx)
    if len(raw) > SHARED_SIMPLE_BODY_MAX:
        # Relaxed on the raw body is dkimpy's own reading; a simple copy kept for it as well
        # would hold one more copy of a large body than relaxed needs.
        return raw
    if not raw or raw.endswith(b"\r\n"):
        return _simple_body(ctx)
    return raw


def _body_algorithm(tags: dict[bytes, bytes]) -> bytes:
    name: bytes = CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple")).body_algorithm.name
    return name


def _canonical_body_length(ctx: _Context, tags: dict[bytes, bytes]) -> int:
    """Length of the canonical body, for l=; computed at most once per algorithm."""
    algorithm = _body_algorithm(tags)
    if algorithm not in ctx.canonical_lengths:
        policy = _SIMPLE if algorithm == b"simple" else _RELAXED
        ctx.canonical_lengths[algorithm] = len(policy.canonicalize_body(_body_for_dkimpy(ctx, tags)))
    return ctx.canonical_lengths[algorithm]


# --- keys ---------------------------------------------------------------------------------------


def _lookup_key(ctx: _Context, name: str) -> _KeyLookup:
    cached = ctx.key_cache.get(name)
    if cached is None:
        cached = ctx.key_cache[name] = _fetch_key(ctx.resolver, name)
    return cached


def _fetch_key(resolver: Resolver, name: str) -> _KeyLookup:
    try:
        answer = resolver.query(name, "TXT")
    except Exception as e:  # the Resolver contract says it never raises; be safe if one does
        return _KeyLookup((), ("temperror", f"key lookup failed ({type(e).__name__})"))
    if answer.status is DnsStatus.TEMPERROR:
        return _KeyLookup((), ("temperror", "key lookup failed (DNS temporary error)"))
    if answer.status is not DnsStatus.OK:
        kind = "NXDOMAIN" if answer.status is DnsStatus.NXDOMAIN else "no TXT record"
        return _KeyLookup((), ("permerror", f"no key for signature ({kind})"))

    records: list[dict[bytes, bytes]] = []
    too_large = garbage = 0
    for rr in answer.records:
        try:
            text = b"".join(rr)  # RFC 6376 3.6.2.2: strings are concatenated with nothing between
        except TypeError:
            garbage += 1
            continue
        if len(text) > MAX_KEY_RECORD_BYTES:
            too_large += 1
            continue
        try:
            tags: dict[bytes, bytes] = parse_tag_value(text)
        except InvalidTagValueList:
            garbage += 1
            continue
        # RFC 6376 3.6.1: a record whose v= is not DKIM1 MUST be discarded; without p= it is
        # not a key record at all (some other TXT record sharing the name).
        if tags.get(b"v", b"DKIM1") != b"DKIM1" or b"p" not in tags:
            garbage += 1
            continue
        records.append(tags)
    if records:
        return _KeyLookup(tuple(records))
    if too_large:
        return _KeyLookup((), ("permerror", f"key record larger than {MAX_KEY_RECORD_BYTES} bytes"))
    if garbage:
        return _KeyLookup((), ("permerror", "key record is not a valid DKIM key record"))
    return _KeyLookup((), ("permerror", "no key for signature (empty answer)"))


def _key_problem(key: dict[bytes, bytes], tags: dict[bytes, bytes]) -> str | None:
    """Why this key record cannot verify this signature (RFC 6376 3.6.1, 6.1.2), or None."""
    algorithm = tags[b"a"]
    if b"s" in key:
        services = [s.strip().lower() for s in key[b"s"].split(b":")]
        if b"*" not in services and b"email" not in services:
            return "key record is not for email (s=)"
    if not _FWS.sub(b"", key[b"p"]):
        return "key revoked (empty p=)"
    if key.get(b"k", b"rsa").strip().lower() != _KEY_TYPE[algorithm]:
        return f"key type k={_text(key.get(b'k', b'rsa'))} does not match a={_text(algorithm)}"
    if b"h" in key:
        hashes = [h.strip().lower() for h in key[b"h"].split(b":")]
        if _ALGORITHMS[algorithm] not in hashes:
            return f"key h= does not allow {_ALGORITHMS[algorithm].decode()}"
    if b"i" in tags and b"s" in [f.strip().lower() for f in key.get(b"t", b"").split(b":")]:
        # Never None here (_check_signature refused such an i=); the fallback is for the types.
        i_domain = (_dkim_qp_decode(tags[b"i"]) or tags[b"i"]).rpartition(b"@")[2].lower()
        if i_domain != tags[b"d"].lower():
            return "key has t=s but i= is a subdomain of d="
    return None


def _verify_with_keys(ctx: _Context, index: int, tags: dict[bytes, bytes]) -> tuple[str, str, int | None]:
    name = (tags[b"s"] + b"._domainkey." + tags[b"d"]).decode("ascii")
    lookup = _lookup_key(ctx, name)
    if lookup.problem is not None:
        raise _Outcome(*lookup.problem)
    usable = [k for k in lookup.records if _key_problem(k, tags) is None]
    if not usable:
        problem = _key_problem(lookup.records[0], tags)
        raise _Outcome("permerror", problem or "no usable key")

    # RFC 6376 6.1.2: with several key records the verifier may cycle through them. A rotation
    # that publishes old and new key under one selector then verifies whatever the DNS order.
    first: tuple[str, str, int | None] | None = None
    for key in usable[:_MAX_KEY_CANDIDATES]:
        outcome, key_dependent = _attempt(ctx, index, tags, key)
        if outcome[0] == "pass" or not key_dependent:
            return outcome
        first = first or outcome
    assert first is not None
    return first


def _attempt(
    ctx: _Context, index: int, tags: dict[bytes, bytes], key: dict[bytes, bytes]
) -> tuple[tuple[str, str, int | None], bool]:
    """Run dkimpy for one signature with one key record.

    Returns (result, reason, key_bits) and whether another key could change the outcome.
    """
    verifier = ctx.verifier
    verifier.headers = _headers_for(ctx.message, index, tags)
    verifier.body = _body_for_dkimpy(ctx, tags)
    # dkimpy assigns these only when a key loads; reset so a previous signature's key cannot leak in.
    verifier.pk, verifier.ktag, verifier.keysize = None, None, 0
    expected = tags[b"s"] + b"._domainkey." + tags[b"d"] + b"."
    # Only the tags dkimpy needs: the others were checked in _key_problem, and dkimpy mishandles some
    # (a colon list in s= makes it drop the key).
    record = b"k=" + key.get(b"k", b"rsa").strip().lower() + b"; p=" + _FWS.sub(b"", key[b"p"])

    def dnsfunc(qname: bytes, timeout: float = 5) -> bytes:
        if qname != expected:
            raise _Outcome("permerror", "internal error: unexpected key name")
        return record

    testing = b"y" in [f.strip().lower() for f in key.get(b"t", b"").split(b":")]
    note = " (key in testing mode, t=y)" if testing else ""
    try:
        verified = _run_dkimpy(ctx, index, tags, dnsfunc)
        error: Exception | None = None
    except _Outcome:
        raise
    except Exception as e:
        verified, error = False, e

    bits = verifier.keysize if verifier.ktag is not None and isinstance(verifier.keysize, int) else None
    if verifier.ktag == b"rsa" and bits is not None and bits < ctx.min_key_bits:
        # RFC 8301 3.2: keys under 1024 bits MUST NOT be considered valid, whatever the hash says.
        return ("policy", f"RSA key too short ({bits} bits < {ctx.min_key_bits})" + note, bits), True
    if error is not None:
        return _map_exception(error, bits, note)
    if verified:
        return ("pass", "signature verified" + note, bits), False
    if verifier.ktag is None:
        return ("permerror", "public key in key record could not be parsed", None), True
    return ("fail", "signature did not verify" + note, bits), True


def _run_dkimpy(ctx: _Context, index: int, tags: dict[bytes, bytes], dnsfunc: Callable[..., bytes]) -> bool:
    """dkimpy's verification of signature `index`, given the signature field itself.

    dkimpy's DKIM.verify finds the signature by its position among the fields named exactly
    "dkim-signature", so a `DKIM-Signature :` field (RFC 5322 obsolete syntax, which we count as a
    signature) would shift it onto another one; and it checks i= against d= as written, so an i=
    that only decodes into d= (`jlong=40example.com`) is refused although it is valid. So its two
    steps are done here: its own tag checks, on a copy of the tags with i= decoded (ours already
    passed on the decoded value), then verify_sig with the field as received. Nothing hashed
    changes: dkimpy hashes the signature field from `sig_header`, never the tags.
    """
    verifier = ctx.verifier
    view = dict(tags)
    if b"i" in tags:
        identity = _dkim_qp_decode(tags[b"i"])
        if identity is not None:
            view[b"i"] = identity
    dkim.validate_signature_fields(view)
    names = [n.lower() for n in _H_SPLIT.split(tags[b"h"])]
    # What DKIM.verify records on the way, so nothing reads a previous signature's values.
    verifier.signature_fields, verifier.include_headers = view, tuple(names)
    verifier.domain, verifier.selector = view[b"d"], view[b"s"]
    sig_header = ctx.message.fields[ctx.message.sig_positions[index]]
    return bool(verifier.verify_sig(view, names, sig_header, dnsfunc))


def _headers_for(msg: _Message, index: int, tags: dict[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    """The fields dkimpy can select for signature `index`, in message order.

    dkimpy selects, for a name listed n times in h=, the last n fields of that name (plus one extra
    From, its defence against a second From). Giving it only those fields changes nothing in what it
    hashes but keeps it from canonicalizing the whole header section for every signature.
    """
    wanted = Counter(_H_SPLIT.split(tags[b"h"].lower()))
    if b"from" in wanted:
        wanted[b"from"] += 1
    positions = {msg.sig_positions[index]}
    for name, count in wanted.items():
        positions.update(msg.by_name.get(name, [])[-count:])
    return [msg.fields[p] for p in sorted(positions)]


def _map_exception(error: Exception, bits: int | None, note: str) -> tuple[tuple[str, str, int | None], bool]:
    text = str(error).split("\n", 1)[0]
    if isinstance(error, dkim.ValidationError):
        if text.startswith("body hash mismatch"):
            return ("fail", "body hash did not verify" + note, bits), False
        # Reached only when now and the wall clock disagree: dkimpy checks t=/x= on time.time().
        if text.startswith("x= value is past"):
            return ("policy", "signature expired (x= is in the past)", bits), False
        if text.startswith("t= value is in the future"):
            return ("policy", "signature timestamp t= is in the future", bits), False
        return ("permerror", "invalid signature: " + _short(text), bits), False
    if isinstance(error, dkim.KeyFormatError):
        return ("permerror", "unusable public key", bits), True
    if isinstance(error, dkim.DKIMException):
        return ("permerror", f"{type(error).__name__}: " + _short(text), bits), True
    return ("permerror", f"internal error: {type(error).__name__}", bits), True


def _short(text: str) -> str:
    # dkimpy messages can quote tag values (b=, keys); keep the reason short and single-line.
    text = _CONTROL.sub("?", text)
    return text if len(text) <= 80 else text[:77] + "..."
