"""ARC sealing (RFC 8617 section 5.1): the ARC set this hop adds to mail it passes on.

A set is three header fields sharing an instance number i=N:

* ARC-Authentication-Results (AAR, 4.1.1): "i=N; " + this hop's Authentication-Results payload
  (authserv-id first, then the results). Not signed by itself.
* ARC-Message-Signature (AMS, 4.1.2): a DKIM signature of the message under another name: no
  v=, i=N instead of the AUID, relaxed/relaxed. It covers DKIM-Signature fields (SHOULD), never
  an ARC field (MUST NOT) nor Authentication-Results (SHOULD NOT: the next ADMD deletes those).
* ARC-Seal (AS, 4.1.3): a signature over the ARC sets alone, always relaxed, no h=, with cv= the
  validation status of the chain as it reached us. It hashes, in instance order 1..N, each set's
  AAR, AMS and AS (5.1.1), the new AS last with an empty b=. For cv=fail it hashes the new set
  only, "as if this newest ARC Set was the only set present" (5.1.2).

Rules kept here (the caller validates the incoming chain and says what it found in `cv`):

1. N is one more than the highest instance on the message. Over 50 (4.2.1) nothing is sealed.
2. A chain whose newest AS already says cv=fail is not extended (5.1): nothing is sealed.
3. A chain that is not well formed (a set missing or doubled, an unreadable instance, an earlier
   cv= out of place) is sealed cv=fail whatever the caller found: we must not vouch for it.
4. The caller's cv must fit the message: "none" only with no chain, "pass"/"fail" only with one.
   "none" on a message that carries sets is sealed fail (we were not told it validated); "pass"
   or "fail" on a message without sets is an error in the caller, reported rather than guessed.

As in `authmilter.core.signing.dkim`, dkimpy canonicalizes, selects, hashes and folds (`gen_header`)
and our key adapters sign: RSA through the OpenSSL dispatcher that signing installs, Ed25519
through `Ed25519Signer`, on keys parsed once at load. dkimpy's `ARC.sign` is not used: it parses
the PEM and signs RSA in pure Python on every call, and takes the AAR from the message's own
Authentication-Results fields where we want the one we are about to add.

Layout: i= comes first in the AMS and the AS as in the AAR: RFC 8617's grammar puts the instance
before the tag list in all three (draft-18, which the public test suite follows, sorted the tags
alphabetically instead). Validators ignore tag order and folding; relaxed canonicalization makes
both part of what is signed, so they are fixed here rather than left to chance.

Algorithms: rsa-sha256 or ed25519-sha256, whichever the key is. RFC 8617 takes a= from DKIM's
registry, but ARC validators in the field (dkimpy's, OpenARC) accept rsa-sha256 only: an
Ed25519 seal is valid and useless to them. Seal with RSA keys.

No I/O, and no key material in any reason.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import dkim
from dkim.canonicalization import CanonicalizationPolicy
from dkim.util import InvalidTagValueList, parse_tag_value

from authmilter.core.checks.dkim import _NULL_LOGGER
from authmilter.core.message import split_message
from authmilter.core.model import Header, field_key
from authmilter.core.signing.dkim import (
    _B_PLACEHOLDER,
    _H_SEPARATOR,
    ALGORITHMS,
    DEFAULT_HEADERS,
    DEFAULT_OVERSIGN,
    SigningKey,
    _canonical_body,
)

__all__ = [
    "AAR",
    "AMS",
    "AMS_HEADERS",
    "AMS_OVERSIGN",
    "AS",
    "CV_VALUES",
    "INSTANCE_LIMIT",
    "ArcSealOutcome",
    "seal_message",
]

AS = "ARC-Seal"
AMS = "ARC-Message-Signature"
AAR = "ARC-Authentication-Results"
INSTANCE_LIMIT = 50  # RFC 8617 4.2.1
CV_VALUES = ("none", "pass", "fail")

# What a DKIM signature of ours covers, plus every DKIM-Signature (RFC 8617 4.1.2): the next hop
# that validates our AMS then knows the signatures it sees are the ones we saw.
AMS_HEADERS = (*DEFAULT_HEADERS, "dkim-signature")
# Over-signed as for DKIM, so a From or Subject slipped in between us and the next validator
# breaks the AMS. Not DKIM-Signature: a signer after us on the way out may add one legitimately.
AMS_OVERSIGN = DEFAULT_OVERSIGN

_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_AS_NAME = b"arc-seal"
_AMS_NAME = b"arc-message-signature"
_AAR_NAME = b"arc-authentication-results"
_ARC_NAMES = (_AAR_NAME, _AMS_NAME, _AS_NAME)  # the order of a set in the AS hash (5.1.1)
_NEVER_IN_AMS = {
    **{name: "ARC fields must not be signed by the ARC-Message-Signature (RFC 8617 4.1.2)"
       for name in (_AAR_NAME, _AMS_NAME, _AS_NAME)},
    b"authentication-results": "Authentication-Results must not be signed: the next ADMD deletes it",
}
_HEADER_NAME = re.compile(rb"[!-9;-~]{1,64}\Z")  # RFC 5322 ftext
# Instances are 1..50; more than 4 digits is no instance at all (and int() of thousands of digits
# would raise).
_AAR_INSTANCE = re.compile(rb"\s*i\s*=\s*([0-9]{1,4})\s*;")
_DIGITS = re.compile(rb"[0-9]{1,4}\Z")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_FOLD_CRLF = re.compile(r"\r\n(?=[ \t])")
_LINE_BREAK = re.compile(r"[\r\n]")
_LF_OR_CRLF = re.compile(rb"\r?\n")


@dataclass(frozen=True)
class ArcSealOutcome:
    """What sealing did.

    status: sealed | skipped (nothing to add, by the rules: over 50 sets, or a chain that already
    says cv=fail) | error (bad input or a failure while signing; nothing to add either).

    `headers` are (name, value) pairs, values folded with CRLF + white space, without the field
    name and the space after the colon, in the order AAR, AMS, AS: the order in which to insert
    them each at the top of the header (milter `insheader(0, ...)`) so that the message reads
    AS, AMS, AAR from the top, the conventional layout of a set. The order of the fields does not
    matter to validators (they sort by i=); it matters to people reading the header.
    """

    status: str
    headers: tuple[tuple[str, str], ...] = ()
    instance: int = 0  # the i= of the new set (sealed), or the one that was refused
    cv: str = ""  # the cv= written: may be "fail" where the caller said "pass" (see rule 3)
    reason: str = ""  # one line for the log; never key material


class _Refused(Exception):
    """Ends sealing early with an outcome; never leaves this module."""

    def __init__(self, outcome: ArcSealOutcome) -> None:
        super().__init__(outcome.status)
        self.outcome = outcome


def seal_message(
    message: bytes,
    key: SigningKey,
    *,
    authserv_id: str,
    auth_results: str,
    cv: str,
    now: float,
    include_headers: Sequence[bytes] | None = None,
) -> ArcSealOutcome:
    """The ARC set for `message` as it will leave (header fields and body; CRLF). Never raises.

    `auth_results` is this hop's Authentication-Results value as it is added to the message (what
    `build_authentication_results` returns): it must start with `authserv_id`, since the AAR
    payload is the whole A-R payload, authserv-id included (RFC 8617 4.1.1). It should carry
    this hop's arc= result. `cv` is what validating the incoming chain gave: "none", "pass" or
    "fail". `include_headers` replaces the AMS header list (lower-case names, repeats and absent
    names allowed as in DKIM's h=); it must name From.
    """
    return _seal(message, key, authserv_id=authserv_id, auth_results=auth_results, cv=cv, now=now,
                 include_headers=include_headers)


def _seal(
    message: bytes,
    key: SigningKey,
    *,
    authserv_id: str,
    auth_results: str,
    cv: str,
    now: float,
    include_headers: Sequence[bytes] | None = None,
    standardized: bool = False,
) -> ArcSealOutcome:
    """`seal_message`, and for the conformance test also the ARC test suite's fixed layout.

    `standardized`: tags sorted by name, values lower-case except bh=/b=, no folding, h= without
    white space (the suite's README, "Signing Header Format Standardization"). RSA signatures
    are deterministic, so in that layout ours must equal the suite's byte for byte. The normal
    layout differs in tag order (i= first) and folding: the same signed content otherwise, and
    every validator reads both.
    """
    try:
        return _build(message, key, authserv_id, auth_results, cv, now, include_headers, standardized)
    except _Refused as refused:
        return refused.outcome
    except Exception as e:  # a surprise in dkimpy or the key must become a logged outcome, not a crash
        # The type only: an exception's text may quote what it was given, key material included.
        name = getattr(key, "name", "?")
        return ArcSealOutcome("error", reason=f"sealing with key {name} failed: {type(e).__name__}")


def _build(
    message: bytes,
    key: SigningKey,
    authserv_id: str,
    auth_results: str,
    cv: str,
    now: float,
    include_headers: Sequence[bytes] | None,
    standardized: bool,
) -> ArcSealOutcome:
    asked = cv.strip().lower()
    if asked not in CV_VALUES:
        raise _error(f"cv must be one of {', '.join(CV_VALUES)}, not {cv!r}")
    if key.algorithm not in ALGORITHMS:
        raise _error(f"key {key.name}: unsupported algorithm {key.algorithm!r}")
    payload = _aar_payload(authserv_id, auth_results)
    fields, body = _split(message)
    signed = _ams_header_list(include_headers, fields)
    chain = _Chain(fields)

    instance = chain.highest + 1
    if chain.newest_cv == "fail":
        raise _Refused(ArcSealOutcome("skipped", instance=instance, reason=(
            f"the chain already failed (ARC-Seal i={chain.highest} says cv=fail): not extended")))
    if instance > INSTANCE_LIMIT:
        raise _Refused(ArcSealOutcome("skipped", instance=instance, reason=(
            f"i={instance} would exceed the limit of {INSTANCE_LIMIT} ARC sets")))
    if chain.highest == 0:
        if chain.problem:  # ARC fields, none with a readable instance: nothing to extend
            sealed_cv, why = "fail", chain.problem
        elif asked != "none":
            raise _error(f"cv={asked} given, but the message carries no ARC set")
        else:
            sealed_cv, why = "none", ""
    elif chain.problem:
        sealed_cv, why = "fail", chain.problem
    elif asked == "none":
        sealed_cv, why = "fail", "cv=none given, but the message carries ARC sets"
    else:
        sealed_cv, why = asked, ""

    signer = dkim.ARC(None, logger=_NULL_LOGGER, signature_algorithm=key.algorithm.encode("ascii"))
    signer.hasher = hashlib.sha256  # both of our algorithms hash with SHA-256
    timestamp = str(int(now)).encode("ascii")
    n = str(instance).encode("ascii")
    aar_value = f"i={instance}; {payload}"
    aar = (b"ARC-Authentication-Results", b" " + aar_value.encode("utf-8") + b"\r\n")

    # --- AMS: the message's selected fields (never an ARC field, so not our AAR), and the body.
    wanted = set(signed)
    ams_candidates = [(h.name, h.value + b"\r\n") for h in fields if h.key in wanted]
    body_hash = base64.b64encode(hashlib.sha256(_canonical_body(_RELAXED, body)).digest())
    ams_tags = [
        (b"i", n),
        (b"a", key.algorithm.encode("ascii")),
        (b"c", b"relaxed/relaxed"),
        (b"d", key.domain.encode("ascii")),
        (b"s", key.selector.encode("ascii")),
        (b"t", timestamp),
        (b"h", _H_SEPARATOR.join(signed)),  # folded after ": ", where FWS may go inside h=
        (b"bh", body_hash),
        (b"b", _B_PLACEHOLDER),
    ]
    signer.headers = ams_candidates
    ams_value = _finish(signer.gen_header(ams_tags, signed, _RELAXED, b"ARC-Message-Signature",
                                          key.signer, standardized))

    # --- AS: the sets in instance order, then ours; only ours when the chain failed (5.1.2).
    ams = (b"ARC-Message-Signature", b" " + ams_value + b"\r\n")
    sealed: list[tuple[bytes, bytes]] = []
    if sealed_cv != "fail":
        for i in range(1, instance):
            sealed += chain.sets[i]
    sealed += [aar, ams]
    as_tags = [
        (b"i", n),
        (b"a", key.algorithm.encode("ascii")),
        (b"t", timestamp),
        (b"cv", sealed_cv.encode("ascii")),
        (b"d", key.domain.encode("ascii")),
        (b"s", key.selector.encode("ascii")),
        (b"b", _B_PLACEHOLDER),
    ]
    # dkimpy selects each name in h= from the bottom up, continuing above the previous pick of
    # that name; with the fields listed newest-first, naming them oldest-first (aar, ams, as, aar,
    # ...) selects exactly the 5.1.1 order, wherever the sets stand in the message. The new AS
    # itself is hashed last by gen_header, with its b= emptied.
    signer.headers = sealed[::-1]
    as_value = _finish(signer.gen_header(as_tags, [field_key(name) for name, _ in sealed], _RELAXED,
                                         b"ARC-Seal", key.signer, standardized))

    reason = f"i={instance} cv={sealed_cv} d={key.domain} s={key.selector} a={key.algorithm}"
    if why:
        reason += f" ({why})"
    return ArcSealOutcome(
        "sealed",
        ((AAR, aar_value), (AMS, ams_value.decode("ascii")), (AS, as_value.decode("ascii"))),
        instance=instance, cv=sealed_cv, reason=reason)


def _split(message: bytes) -> tuple[tuple[Header, ...], bytes]:
    """`split_message`, without its walk over every line of the body (2 ms of CPU per 100 KB,
    more than the two signatures): only the header section needs reading line by line."""
    end = message.find(b"\r\n\r\n") + 4
    head = message[:end]
    if end < 4 or head.count(b"\n") != head.count(b"\r\n"):
        return split_message(message)  # bare LFs or no empty line: let it decide everything
    fields, rest = split_message(head)
    if rest:  # a line that is no header field ended the header section before the empty line
        return split_message(message)
    body = message[end:]
    if body.count(b"\n") != body.count(b"\r\n"):
        body = _LF_OR_CRLF.sub(b"\r\n", body)  # as split_message does: the body leaves as CRLF
    return fields, body


def _error(reason: str) -> _Refused:
    return _Refused(ArcSealOutcome("error", reason=reason))


def _finish(value: bytes) -> bytes:
    # gen_header ends the value with CRLF, and when the last folded line of b= would be empty
    # it leaves "CRLF SP" before it; neither belongs in a value, and b= is not hashed.
    return value.rstrip(b" \t\r\n")


def _aar_payload(authserv_id: str, auth_results: str) -> str:
    """`auth_results` checked to be an A-R payload of `authserv_id`, with CRLF line breaks."""
    ident = authserv_id.strip()
    if not ident or any(not " " < c <= "~" for c in ident):
        raise _error("authserv-id must be non-empty printable ASCII without white space")
    text = _FOLD.sub("\r\n", auth_results.strip(" \t\r\n"))
    # A line break not followed by white space would end the field: whatever came next would be
    # a header field of its own, under our seal.
    if _LINE_BREAK.search(_FOLD_CRLF.sub("", text)) or "\0" in text:
        raise _error("auth_results has a line break that does not fold, or a NUL")
    lowered = text.lower()
    for head in (ident.lower(), f'"{ident.lower()}"'):  # quoted when it is not a token (RFC 8601)
        rest = lowered[len(head):]
        if lowered.startswith(head) and (not rest or rest[0] in "; \t\r("):
            return text
    raise _error(f"auth_results must start with the authserv-id {ident!r} (RFC 8617 4.1.1)")


def _ams_header_list(include_headers: Sequence[bytes] | None, fields: Sequence[Header]) -> list[bytes]:
    """h= of the AMS: `include_headers` as given (checked), or the default for this message."""
    if include_headers is None:
        return _default_header_list(fields)
    names = [bytes(n).strip().lower() for n in include_headers]
    if b"from" not in names:
        raise _error("the ARC-Message-Signature must sign From")
    for name in names:
        if not _HEADER_NAME.match(name):
            raise _error(f"{name!r} is not a header field name")
        if name in _NEVER_IN_AMS:
            raise _error(_NEVER_IN_AMS[name])
    return names


class _Chain:
    """The ARC sets already on the message, read for sealing (not validated: that is arc.py's)."""

    def __init__(self, fields: Sequence[Header]) -> None:
        self.highest = 0  # the highest instance any ARC field claims
        self.newest_cv = ""  # cv= of the AS of the highest instance, when there is one such AS
        self.problem = ""  # the first reason the chain is not well formed; "" if it is
        self.sets: dict[int, list[tuple[bytes, bytes]]] = {}  # instance -> [AAR, AMS, AS] fields
        found: dict[tuple[int, bytes], list[tuple[bytes, bytes]]] = {}
        seal_cv: dict[int, bytes] = {}
        for h in fields:
            name = h.key
            if name not in _ARC_NAMES:
                continue
            unfolded = h.value.replace(b"\r\n", b"")
            instance, cv = self._read(name, unfolded)
            if instance is None:
                continue
            self.highest = max(self.highest, instance)
            found.setdefault((instance, name), []).append((h.name, h.value + b"\r\n"))
            if cv is not None:
                seal_cv[instance] = cv
        if self.highest > INSTANCE_LIMIT:
            # Not sealable whatever else is wrong; and not worth walking i=1..9999 to say so.
            self._broken(f"an ARC field says i={self.highest}")
            return
        for i in range(1, self.highest + 1):
            entry: list[tuple[bytes, bytes]] = []
            for name in _ARC_NAMES:
                copies = found.get((i, name), [])
                if len(copies) != 1:
                    self._broken(f"{len(copies)} {name.decode()} fields with i={i}")
                entry += copies[:1]
            self.sets[i] = entry
            cv = seal_cv.get(i)
            if i == self.highest and len(found.get((i, _AS_NAME), [])) == 1:
                self.newest_cv = (cv or b"").decode("ascii", "replace").lower()
            # i=1 says none, later sets pass; the newest may say fail (then nothing is sealed).
            allowed: tuple[bytes, ...] = (b"none",) if i == 1 else (b"pass",)
            if i == self.highest:
                allowed += (b"fail",)
            if cv is not None and cv.lower() not in allowed:
                self._broken(f"ARC-Seal i={i} says cv={cv.decode('ascii', 'replace')}")

    def _broken(self, why: str) -> None:
        if not self.problem:
            self.problem = "broken chain: " + why

    def _read(self, name: bytes, value: bytes) -> tuple[int | None, bytes | None]:
        """The instance of one ARC field (None if unreadable) and, for an AS, its cv=."""
        if name == _AAR_NAME:
            m = _AAR_INSTANCE.match(value)
            if m is None:
                self._broken("an ARC-Authentication-Results without a leading i=")
                return None, None
            return int(m.group(1)), None
        try:
            tags = parse_tag_value(value)
        except InvalidTagValueList:
            self._broken(f"an unreadable {name.decode()} tag list")
            return None, None
        raw = tags.get(b"i", b"")
        if not _DIGITS.match(raw) or int(raw) < 1:
            self._broken(f"a {name.decode()} without a valid i=")
            return None, None
        if name == _AS_NAME:
            if b"h" in tags:
                self._broken("an ARC-Seal with h=")
            return int(raw), tags.get(b"cv", b"")
        return int(raw), None


def _default_header_list(fields: Sequence[Header]) -> list[bytes]:
    """The AMS h= for this message: every AMS_HEADERS field present, once per occurrence, and the
    over-signed names once more; From always."""
    oversign = {n.encode("ascii") for n in AMS_OVERSIGN}
    names = list(dict.fromkeys(n.encode("ascii") for n in ("from", *AMS_HEADERS, *AMS_OVERSIGN)))
    counts = Counter(h.key for h in fields)
    return [n for n in names for _ in range(counts[n] + (1 if n in oversign else 0))]

