"""ARC chain validation (RFC 8617 section 5.2) on top of dkimpy.

dkimpy does the canonicalization, hashing and RSA of every ARC-Message-Signature (AMS) and
ARC-Seal (AS), through the same `ARC.verify_sig` its own `ARC.verify` uses. The chain algorithm
around it is ours, because reading `ARC.verify` showed it cannot be used as it is:

* It hashes, for each AS, the ARC header fields it finds by name from the bottom of the message up,
  so it is right only while every set sits below the newer ones. RFC 8617 section 5.1.1 defines
  the hash input by instance number; we hand dkimpy exactly the fields of sets 1..i in that order.
* It finds an AMS again by searching its raw text for " i=N;", so a legal tag-list such as
  "i=1 ;", or i= as the last tag, raises IndexError; its instance grouping is a regular-expression
  search (a tag named "xi=1" counts as i=1). We read i= with the tag-list parser.
* A malformed older AMS fails the whole chain there, while section 5.2 step 5 says older AMSs only
  decide header.oldest-pass and "do not affect the validity" of the chain.
* It verifies every AMS and AS (2N key lookups and RSA operations, N up to 50) before deciding. We
  follow section 5.2 in order and stop at the first failure, with a cap on distinct key lookups.
* It returns no result at all (None) when a seal says cv=fail; section 5.2 step 2 says "fail".

What is ours, in the order of RFC 8617 section 5.2:

1. No ARC header field: "none". More than 50 sets, an instance tag that is missing, not a number
   or outside 1..50 (the AAR's must open the field, "i=N;", section 4.1.1), a malformed AMS/AS
   tag-list, any set without exactly one AAR, AMS and AS, or instances that are not 1..N: "fail".
2. The newest AS says cv=fail: "fail".
3. Every AS must say cv=none at i=1 and cv=pass above (case-insensitively: chain-status is ABNF
   literal text); an AS with h= fails (section 4.1.3).
4. The newest AMS must validate.
6. Every AS, newest first, must validate.
5. Then (step 5 only informs, so it runs last and only on a passing chain) the older AMSs, newest
   first: the first that does not validate at instance M gives header.oldest-pass M+1; 0 when all
   do.

Per signature, beyond dkimpy: a=rsa-sha256 only (the one algorithm ARC defines), strict base64
in b= and bh=, d= and s= must be DNS names (U-labels are converted to A-labels, section 4.1.4),
t= and x= checked against `now` with the same slop as DKIM, and the DKIM rules the AMS inherits
(section 4.1.2: "same syntax and semantics as the DKIM-Signature field"): From must be in h=
(RFC 6376 section 6.1.1), l= no longer than the body, RSA keys under `min_key_bits` never
validate (RFC 8301). Empty names in h= ("from::to") are tolerated: they select nothing. An AS is
always hashed with relaxed canonicalization (section 4.1.3) whatever c= it carries. The body hash
of each AMS is checked here against a canonical body computed once per canonicalization, so a
long chain does not canonicalize a large body 50 times.

DNS: key records come through our `Resolver`, as for DKIM (the lookup and key-record checks are
`authmilter.core.checks.dkim`'s). A key lookup that fails temporarily makes that signature fail: RFC 8617
section 5.2.1 ("All Failures Are Permanent ... including DNS failures") and the result registry
(section 10.1: arc = none / pass / fail) leave no other outcome; the reason says "temporary" so
logs and policy can tell it from a forgery.

Robustness: header fields over 16 KB, folded whitespace-only lines and over-long b= are refused
before dkimpy sees them (see authmilter.core.checks.dkim for why); ARC-Authentication-Results payloads
are parsed with authres only to describe the hops (their first 4 KB), and a garbage AAR just
yields an empty list.
`verify_arc` never raises.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

import authres
import dkim
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.util import DuplicateTag, InvalidTagValueList, parse_tag_value

from authmilter.core.checks.dkim import (
    _BLANK_LINE,
    _FWS,
    _H_SPLIT,
    _HDR_NAME,
    _MAX_KEY_CANDIDATES,
    _MAX_SIGNATURE_BYTES,
    _NULL_LOGGER,
    CLOCK_SKEW_SECONDS,
    MAX_SIGNATURE_FIELD_BYTES,
    ParsedMessage,
    _fetch_key,
    _headers_for,
    _is_dns_name,
    _key_problem,
    _KeyLookup,
    _Message,
    _short,
    _text,
    parse_message,
)
from authmilter.core.dnsapi import Resolver
from authmilter.core.model import ArcHop, ArcResult, field_key
from authmilter.core.names import printable_ascii

__all__ = ["MAX_INSTANCES", "MAX_KEY_LOOKUPS", "verify_arc"]

# RFC 8617 section 4.2.1 / 5.2 step 1: instance values run from 1 to 50.
MAX_INSTANCES = 50

# Distinct key names looked up for one message. A real chain has a handful of sealers, each usually
# with one key for AMS and AS; a hostile 50-set chain naming 100 slow domains would otherwise hold
# a milter thread for 100 resolver timeouts. A signature whose key is past the cap does not validate.
MAX_KEY_LOOKUPS = 20

_AAR = b"arc-authentication-results"
_AMS = b"arc-message-signature"
_AS = b"arc-seal"
_NAMES = {_AAR: "ARC-Authentication-Results", _AMS: "ARC-Message-Signature", _AS: "ARC-Seal"}

_ALGORITHM = b"rsa-sha256"  # RFC 8617 imports DKIM's a=; dkimpy (and every sealer) knows only this
_AMS_REQUIRED = (b"i", b"a", b"b", b"bh", b"d", b"h", b"s")
_AS_REQUIRED = (b"i", b"a", b"b", b"cv", b"d", b"s")
_CV_VALUES = (b"none", b"pass", b"fail")

# The AAR opens with its instance tag: arc-info = instance [CFWS] ";" authres-payload, where
# instance = [CFWS] %s"i" [CFWS] "=" [CFWS] position (section 4.1.1). Comments are not accepted
# there: no sealer writes them, and the field fails rather than being guessed at.
_AAR_INSTANCE = re.compile(rb"[ \t\r\n]*i[ \t\r\n]*=[ \t\r\n]*([^; \t\r\n]*)[ \t\r\n]*;")
_POSITION = re.compile(rb"[0-9]{1,2}\Z")  # position = 1*2DIGIT
_TAG_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9_]*\Z")  # RFC 6376 3.2 tag-name
_DIGITS = re.compile(rb"[0-9]{1,12}\Z")  # longer t=/x= values are refused, not read as infinity
_B64 = re.compile(rb"[A-Za-z0-9+/]+={0,2}\Z")
_WORD = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}\Z")
_LINE_BREAK = re.compile(r"\r?\n")
_AUTHSERV_FALLBACK = re.compile(r"\s*([^\s;()]{1,255})")
_MAX_AAR_RESULTS = 32  # results described per hop; a real AAR has a handful
# authres' parser slows down faster than the text grows (about 28 ms for a 15 KB AAR, times 50
# sets). Real AARs are well under 2 KB; only this much, cut at a clause boundary, is described.
_MAX_AAR_DESCRIBED = 4096
_RELAXED = b"relaxed/relaxed"


class _Broken(Exception):
    """The chain cannot be read (RFC 8617 section 5.2 steps 1-3): the result is "fail"."""


@dataclass(frozen=True)
class _Field:
    kind: bytes  # _AAR, _AMS or _AS
    pos: int  # index in _Message.fields
    instance: int
    tags: dict[bytes, bytes]  # AMS and AS; empty for the AAR
    payload: bytes = b""  # AAR: what follows "i=N;"


@dataclass(frozen=True)
class _Set:
    aar: _Field
    ams: _Field
    seal: _Field


@dataclass(frozen=True)
class _Sig:
    """One signature's outcome."""

    ok: bool
    reason: str


@dataclass
class _Context:
    message: _Message
    resolver: Resolver
    min_key_bits: int
    now: float
    max_key_lookups: int
    verifier: Any  # one dkim.ARC, its headers and body set per signature
    keys: dict[str, _KeyLookup] = field(default_factory=dict)
    canonical_bodies: dict[bytes, bytes] = field(default_factory=dict)  # by body algorithm
    body_hashes: dict[tuple[bytes, int | None], bytes] = field(default_factory=dict)  # by (alg, l=)


def verify_arc(
    message: bytes | ParsedMessage,
    resolver: Resolver,
    *,
    min_key_bits: int = 1024,
    now: float | None = None,
    max_key_lookups: int = MAX_KEY_LOOKUPS,
) -> ArcResult:
    """Validate the Authenticated Received Chain of `message` (header fields, empty line, body).

    `now` (POSIX seconds) is the time t= and x= are checked against; it defaults to the current
    time. Never raises: anything unexpected is a "fail" with the reason.
    """
    try:
        msg = message if isinstance(message, ParsedMessage) else parse_message(message)
        ctx = _Context(
            message=msg,
            resolver=resolver,
            min_key_bits=min_key_bits,
            now=time.time() if now is None else float(now),
            max_key_lookups=max_key_lookups,
            verifier=dkim.ARC(None, logger=_NULL_LOGGER, minkey=0),
        )
        return _validate(ctx)
    except Exception as e:  # a surprise in here must cost this message its ARC result, nothing more
        return ArcResult("fail", 0, reason=f"internal error: {type(e).__name__}")


def _validate(ctx: _Context) -> ArcResult:
    msg = ctx.message
    positions = sorted(p for name in _NAMES for p in msg.by_name.get(name, []))
    if not positions:
        return ArcResult("none", 0, reason="no ARC header fields")
    if len(positions) > 3 * MAX_INSTANCES:
        # Cannot be 50 complete sets or fewer; refused before any parsing.
        reason = f"{len(positions)} ARC header fields: more than {MAX_INSTANCES} sets"
        return ArcResult("fail", 0, reason=reason)

    # Step 1 and 3: read every field, then group the sets.
    fields: list[_Field] = []
    highest = 0
    problem = ""
    for pos in positions:
        try:
            read = _read_field(msg, pos)
        except _Broken as e:
            problem = problem or str(e)
            continue
        fields.append(read)
        highest = max(highest, read.instance)
    if problem:
        return ArcResult("fail", highest, reason=problem)
    try:
        sets = _group(fields, highest)
    except _Broken as e:
        return ArcResult("fail", highest, reason=str(e))

    hops = tuple(_hop(k, s) for k, s in enumerate(sets, start=1))
    sealers = tuple(h.sealer for h in hops)

    def failed(reason: str) -> ArcResult:
        return ArcResult("fail", highest, None, sealers, hops, _short_reason(reason))

    # Step 2, then the rest of step 3.
    if _cv(sets[-1].seal.tags) == b"fail":
        return failed(f"ARC-Seal i={highest} says cv=fail: a sealer found the chain broken")
    for k, s in enumerate(sets, start=1):
        reason = _seal_structure_problem(k, s.seal.tags)
        if reason:
            return failed(reason)

    # Step 4: the newest AMS must validate.
    newest = _verify_ams(ctx, sets[-1].ams)
    if not newest.ok:
        return failed(f"ARC-Message-Signature i={highest} {_who(sets[-1].ams)}: {newest.reason}")

    # Step 6: every seal, newest first.
    for k in range(highest, 0, -1):
        seal = _verify_seal(ctx, sets, k)
        if not seal.ok:
            return failed(f"ARC-Seal i={k} {_who(sets[k - 1].seal)}: {seal.reason}")

    # Step 5: header.oldest-pass, from the older AMSs.
    oldest_pass = 0
    note = ""
    for k in range(highest - 1, 0, -1):
        older = _verify_ams(ctx, sets[k - 1].ams)
        if not older.ok:
            oldest_pass = k + 1
            note = f"; ARC-Message-Signature i={k} no longer validates: {older.reason}"
            break
    reason = f"{highest} ARC {'set' if highest == 1 else 'sets'} validated{note}"
    return ArcResult("pass", highest, oldest_pass, sealers, hops, _short_reason(reason))


# --- structure ----------------------------------------------------------------------------------


def _read_field(msg: _Message, pos: int) -> _Field:
    raw_name, value = msg.fields[pos]
    kind = field_key(raw_name)
    label = _NAMES[kind]
    if len(value) > MAX_SIGNATURE_FIELD_BYTES:
        raise _Broken(f"{label} field larger than {MAX_SIGNATURE_FIELD_BYTES} bytes")
    if kind == _AAR:
        m = _AAR_INSTANCE.match(value)
        if m is None:
            raise _Broken(f"{label} does not open with its instance tag (i=N;)")
        return _Field(kind, pos, _instance(label, m.group(1)), {}, value[m.end() :])

    if _BLANK_LINE.search(value):
        # dkimpy's b= removal backtracks quadratically on these; no signer writes them.
        raise _Broken(f"{label} has a whitespace-only folded line")
    try:
        tags: dict[bytes, bytes] = parse_tag_value(value)
    except DuplicateTag as e:
        raise _Broken(f"{label} has a duplicate tag {_text(e.args[0] if e.args else b'')}=") from None
    except InvalidTagValueList:
        raise _Broken(f"{label} is not a valid tag-list") from None
    if not all(_TAG_NAME.match(name) for name in tags):
        raise _Broken(f"{label} has an invalid tag name")
    if b"i" not in tags:
        raise _Broken(f"{label} has no instance tag (i=)")
    return _Field(kind, pos, _instance(label, tags[b"i"]), tags)


def _instance(label: str, raw: bytes) -> int:
    if not _POSITION.match(raw) or not 1 <= int(raw) <= MAX_INSTANCES:
        raise _Broken(f"{label} instance i={_text(raw)[:16]} is not a number from 1 to {MAX_INSTANCES}")
    return int(raw)


def _group(fields: list[_Field], highest: int) -> list[_Set]:
    """The sets 1..N, each with exactly one AAR, AMS and AS (RFC 8617 section 5.2 step 3)."""
    by_instance: dict[int, dict[bytes, list[_Field]]] = {}
    for f in fields:
        by_instance.setdefault(f.instance, {}).setdefault(f.kind, []).append(f)
    sets: list[_Set] = []
    for k in range(1, highest + 1):
        members = by_instance.get(k)
        if members is None:
            raise _Broken(f"no ARC Set i={k}: instances must run 1..{highest} without gaps")
        for kind, label in _NAMES.items():
            count = len(members.get(kind, []))
            if count != 1:
                raise _Broken(f"ARC Set i={k} has {count} {label} fields instead of one")
        sets.append(_Set(members[_AAR][0], members[_AMS][0], members[_AS][0]))
    return sets


def _cv(tags: dict[bytes, bytes]) -> bytes | None:
    # chain-status is a choice of ABNF quoted strings (section 3.9), and those are case-insensitive
    # (RFC 5234 section 2.3): "Pass" is "pass".
    cv = tags.get(b"cv")
    return None if cv is None else cv.lower()


def _seal_structure_problem(k: int, tags: dict[bytes, bytes]) -> str:
    if b"h" in tags:
        return f"ARC-Seal i={k} has an h= tag, which RFC 8617 section 4.1.3 forbids"
    cv = _cv(tags)
    if cv is None:
        return f"ARC-Seal i={k} has no cv= tag"
    if cv not in _CV_VALUES:
        return f"ARC-Seal i={k} has an invalid cv={_text(tags[b'cv'])[:16]}"
    if cv == b"fail":
        return f"ARC-Seal i={k} says cv=fail"
    expected = b"none" if k == 1 else b"pass"
    if cv != expected:
        return f"ARC-Seal i={k} says cv={cv.decode()}; it must be cv={expected.decode()}"
    return ""


# --- signatures ---------------------------------------------------------------------------------


def _verify_ams(ctx: _Context, ams: _Field) -> _Sig:
    tags = ams.tags
    problem = _signature_problem(ctx, tags, _AMS_REQUIRED)
    if problem:
        return _Sig(False, problem)
    c_value = tags.get(b"c", b"simple/simple")  # RFC 6376 3.5 default, which the AMS inherits
    try:
        policy = CanonicalizationPolicy.from_c_value(c_value)
    except InvalidCanonicalizationPolicyError:
        return _Sig(False, f"unknown canonicalization c={_text(c_value)[:32]}")
    names = [n.lower() for n in _H_SPLIT.split(tags[b"h"].strip())]
    if not all(_HDR_NAME.match(n) for n in names if n):
        return _Sig(False, "h= contains an invalid field name")
    if b"from" not in names:
        # RFC 6376 6.1.1: otherwise the set could be replayed onto a message with any From.
        return _Sig(False, "From not signed (h= lacks from)")
    if _AS in names:
        # RFC 8617 4.1.2 keeps ARC header fields out of AMS h=. Validators in use (dkimpy, OpenARC)
        # enforce it for ARC-Seal only: sealers commonly sign their AAR, which binds it to the message.
        return _Sig(False, "h= includes ARC-Seal (RFC 8617 section 4.1.2)")
    if b"q" in tags and b"dns/txt" not in [q.strip().lower() for q in tags[b"q"].split(b":")]:
        return _Sig(False, f"unsupported query method q={_text(tags[b'q'])[:32]}")
    length: int | None = None
    if b"l" in tags:
        if not _DIGITS.match(tags[b"l"]):
            return _Sig(False, "l= is not a decimal number")
        length = int(tags[b"l"])
    if b"x" in tags:
        if not _DIGITS.match(tags[b"x"]):
            return _Sig(False, "x= is not a decimal number")
        expires = int(tags[b"x"])
        if b"t" in tags and expires <= int(tags[b"t"]):
            return _Sig(False, "x= is not after t=")
        if expires < ctx.now - CLOCK_SKEW_SECONDS:
            return _Sig(False, "signature expired (x= is in the past)")

    body_algorithm: bytes = policy.body_algorithm.name
    canonical = _canonical_body(ctx, policy, body_algorithm)
    if length is not None and length > len(canonical):
        return _Sig(False, "l= is longer than the body")
    key = (body_algorithm, length)
    if key not in ctx.body_hashes:
        ctx.body_hashes[key] = hashlib.sha256(canonical if length is None else canonical[:length]).digest()
    if ctx.body_hashes[key] != base64.b64decode(_FWS.sub(b"", tags[b"bh"])):
        return _Sig(False, "body hash did not verify")

    headers = _headers_for(replace(ctx.message, sig_positions=[ams.pos]), 0, tags)
    # The body was checked above; without bh= dkimpy hashes only the header fields.
    sig = {b"a": tags[b"a"], b"b": tags[b"b"], b"c": c_value, b"d": _ascii(tags[b"d"]), b"s": tags[b"s"]}
    return _verify_with_keys(ctx, sig, names, ctx.message.fields[ams.pos], headers)


def _verify_seal(ctx: _Context, sets: list[_Set], k: int) -> _Sig:
    seal = sets[k - 1].seal
    tags = seal.tags
    problem = _signature_problem(ctx, tags, _AS_REQUIRED)
    if problem:
        return _Sig(False, problem)
    # RFC 8617 section 5.1.1: sets 1..k, each AAR, AMS, AS, in increasing instance order, ending
    # with this set's AMS (the seal itself is hashed last, by dkimpy, with b= emptied). dkimpy
    # selects fields by name from the bottom up, so it gets them in reverse order.
    ordered = [f for s in sets[:k] for f in (s.aar, s.ams, s.seal)][:-1]
    fields = [ctx.message.fields[f.pos] for f in reversed(ordered)]
    names = [f.kind for f in ordered]
    # Only relaxed header canonicalization applies to a seal (section 4.1.3), whatever c= says.
    sig = {b"a": tags[b"a"], b"b": tags[b"b"], b"c": _RELAXED, b"d": _ascii(tags[b"d"]), b"s": tags[b"s"]}
    return _verify_with_keys(ctx, sig, names, ctx.message.fields[seal.pos], fields)


def _signature_problem(ctx: _Context, tags: dict[bytes, bytes], required: tuple[bytes, ...]) -> str:
    """What makes this AMS or AS unverifiable before any DNS query, or ""."""
    missing = [t.decode() + "=" for t in required if t not in tags]
    if missing:
        return "missing required tag " + ", ".join(missing)
    if tags[b"a"] != _ALGORITHM:
        return f"unknown algorithm a={_text(tags[b'a'])[:32]}"
    for tag in (b"b", b"bh"):
        if tag in required:
            decoded = _base64(tags[tag])
            if not decoded:
                return f"{tag.decode()}= is not valid base64"
            if tag == b"b" and len(decoded) > _MAX_SIGNATURE_BYTES:
                return "b= is longer than any accepted key allows"  # dkimpy's int conversion is quadratic
    domain = _ascii(tags[b"d"])
    if not _is_dns_name(domain):
        return "d= is not a valid domain name"
    selector = tags[b"s"]
    if not _is_dns_name(selector) or len(selector) + len(domain) + len(b"._domainkey.") > 253:
        return "s= is not a valid selector"
    if b"t" in tags:
        if not _DIGITS.match(tags[b"t"]):
            return "t= is not a decimal number"
        if int(tags[b"t"]) > ctx.now + CLOCK_SKEW_SECONDS:
            return "signature timestamp t= is in the future"
    return ""


def _base64(value: bytes) -> bytes:
    raw = _FWS.sub(b"", value)
    if not _B64.match(raw):
        return b""
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return b""


def _ascii(domain: bytes) -> bytes:
    """d= as an A-label name: RFC 8617 section 4.1.4 allows U-labels there."""
    if domain.isascii():
        return domain
    try:
        return domain.decode("utf-8").encode("idna")
    except UnicodeError:
        return domain  # fails the DNS-name check


def _canonical_body(ctx: _Context, policy: Any, algorithm: bytes) -> bytes:
    # At most two canonicalizations per message (simple, relaxed), however many AMSs there are.
    if algorithm not in ctx.canonical_bodies:
        ctx.canonical_bodies[algorithm] = policy.canonicalize_body(ctx.message.body)
    return ctx.canonical_bodies[algorithm]


def _verify_with_keys(
    ctx: _Context,
    sig: dict[bytes, bytes],
    names: list[bytes],
    sig_header: tuple[bytes, bytes],
    headers: list[tuple[bytes, bytes]],
) -> _Sig:
    name = (sig[b"s"] + b"._domainkey." + sig[b"d"]).decode("ascii").lower()
    lookup = _lookup_key(ctx, name)
    if lookup.problem is not None:
        result, reason = lookup.problem
        if result == "temperror":
            reason += "; a temporary DNS failure is final for ARC (RFC 8617 section 5.2.1)"
        return _Sig(False, reason)
    key_tags = {b"a": sig[b"a"], b"d": sig[b"d"]}  # no i=: in ARC it is the instance, not an AUID
    usable = [k for k in lookup.records if _key_problem(k, key_tags) is None]
    if not usable:
        return _Sig(False, _key_problem(lookup.records[0], key_tags) or "no usable key")
    # RFC 6376 6.1.2: several key records at one name may be tried in turn (key rotation).
    first: _Sig | None = None
    for record in usable[:_MAX_KEY_CANDIDATES]:
        outcome = _attempt(ctx, sig, names, sig_header, headers, record)
        if outcome.ok:
            return outcome
        first = first or outcome
    assert first is not None
    return first


def _lookup_key(ctx: _Context, name: str) -> _KeyLookup:
    cached = ctx.keys.get(name)
    if cached is not None:
        return cached
    if len(ctx.keys) >= ctx.max_key_lookups:
        return _KeyLookup((), ("permerror", f"key not looked up: more than {ctx.max_key_lookups} keys"))
    cached = ctx.keys[name] = _fetch_key(ctx.resolver, name)
    return cached


def _attempt(
    ctx: _Context,
    sig: dict[bytes, bytes],
    names: list[bytes],
    sig_header: tuple[bytes, bytes],
    headers: list[tuple[bytes, bytes]],
    key: dict[bytes, bytes],
) -> _Sig:
    verifier = ctx.verifier
    verifier.headers = headers
    verifier.body = b""  # never read: the dict has no bh=
    # dkimpy sets these only when a key loads; reset so the previous signature's key cannot leak in.
    verifier.pk, verifier.ktag, verifier.keysize = None, None, 0
    expected = sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."
    # Only k= and p=: the other key tags were checked by _key_problem, and dkimpy mishandles some.
    record = b"k=" + key.get(b"k", b"rsa").strip().lower() + b"; p=" + _FWS.sub(b"", key[b"p"])

    def dnsfunc(qname: bytes, timeout: float = 5) -> bytes:
        if qname != expected:
            raise LookupError("unexpected key name")
        return record

    try:
        # verify_sig_process appends to the list it is given: always a fresh one.
        verified = bool(verifier.verify_sig(dict(sig), list(names), sig_header, dnsfunc))
        error: Exception | None = None
    except Exception as e:
        verified, error = False, e
    bits = verifier.keysize if verifier.ktag is not None and isinstance(verifier.keysize, int) else None
    if verifier.ktag == b"rsa" and bits is not None and bits < ctx.min_key_bits:
        # RFC 8301 3.2: keys under 1024 bits MUST NOT be considered valid.
        return _Sig(False, f"RSA key too short ({bits} bits < {ctx.min_key_bits})")
    if error is not None:
        return _Sig(False, f"{type(error).__name__}: " + _short(str(error).split("\n", 1)[0]))
    if verified:
        return _Sig(True, "signature verified")
    if verifier.ktag is None:
        return _Sig(False, "public key in key record could not be parsed")
    return _Sig(False, "signature did not verify")


# --- reporting ----------------------------------------------------------------------------------


def _who(f: _Field) -> str:
    return f"(d={_text(f.tags.get(b'd'))[:64]})"


def _short_reason(text: str) -> str:
    text = printable_ascii(text)
    return text if len(text) <= 240 else text[:237] + "..."


def _hop(k: int, s: _Set) -> ArcHop:
    tags = s.seal.tags
    authserv_id, pairs, header_from = _read_aar(s.aar.payload)
    return ArcHop(
        instance=k,
        sealer=_text(tags.get(b"d")).lower(),
        selector=_text(tags.get(b"s")),
        cv=_text(_cv(tags)),
        aar_authserv_id=authserv_id,
        aar=pairs,
        aar_header_from=header_from,
    )


def _read_aar(payload: bytes) -> tuple[str, tuple[tuple[str, str], ...], str]:
    """(authserv-id, (method, result) pairs, dmarc header.from) of an AAR payload, leniently.

    The payload is the sealer's text; a garbage one describes nothing but costs nothing else.
    """
    text = _LINE_BREAK.sub("", payload[:_MAX_AAR_DESCRIBED].decode("utf-8", "replace"))
    if len(payload) > _MAX_AAR_DESCRIBED:
        text = text.rpartition(";")[0]
    try:
        header = authres.AuthenticationResultsHeader.parse_value(text)
        authserv_id = _clean(str(header.authserv_id or ""))
        results = list(header.results)
    except Exception:
        # authres refuses the whole field for one bad clause. Read what it can clause by clause:
        # a split at every ";" may cut a comment or quoted string in two, and those pieces are
        # simply not understood.
        m = _AUTHSERV_FALLBACK.match(text)
        authserv_id = _clean(m.group(1)) if m else ""
        results = []
        for piece in text.split(";")[1 : 1 + 2 * _MAX_AAR_RESULTS]:
            try:
                results.extend(authres.AuthenticationResultsHeader.parse_value("x;" + piece).results)
            except Exception:
                continue
    pairs: list[tuple[str, str]] = []
    header_from = ""
    for result in results[:_MAX_AAR_RESULTS]:
        method = str(getattr(result, "method", "") or "").lower()
        outcome = str(getattr(result, "result", "") or "").lower()
        if not _WORD.match(method) or not _WORD.match(outcome):
            continue
        pairs.append((method, outcome))
        if method == "dmarc" and not header_from:
            for prop in getattr(result, "properties", None) or ():
                if str(prop.type).lower() == "header" and str(prop.name).lower() == "from":
                    header_from = _clean(str(prop.value)).lower()
                    break
    return authserv_id, tuple(pairs), header_from


def _clean(text: str) -> str:
    return _text(text.strip().encode("utf-8", "replace"))
