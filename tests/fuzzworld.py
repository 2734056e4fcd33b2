"""A small world to fuzz the core in: a p=reject victim, an attacker, their DNS and keys, and the rule.

Shared by the property tests (`tests/unit/test_properties*.py`) and the long campaign
(`benchmarks/fuzz.py`), so both judge a verdict the same way.

The world:

* `victim.example` publishes `p=reject`, SPF for 192.0.2.0/24 only, and an RSA and an Ed25519
  DKIM key. Nothing in the world sends from its addresses, so SPF for it always fails: only a
  valid signature of its own may make its mail pass DMARC.
* `attacker.example` publishes `p=none`, SPF for 203.0.113.0/24 (where every message comes
  from) and keys of its own: its mail passes SPF and DKIM, aligned with its own domain only.
* The RFC 6376 / RFC 8463 example keys (`tests/data/dkim/*.zone`), so their messages can verify.

The rule (`rule_violation`): a message whose From names the victim and that no valid signature of
the victim covers is never accepted with dmarc=pass. Whether the victim signed is decided by
dkimpy's own verifier over the bytes, not by the verdict under test. `reader_differential`
flags the softer case: our reading of From gave another domain a DMARC pass while a standard
library reader takes the victim's address out of the same field.
"""

from __future__ import annotations

import email.header
import email.parser
import email.policy
import email.utils
import re
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from authmilter.core.checks.spf import RESULTS as SPF_RESULTS
from authmilter.core.dnsapi import DnsAnswer, Resolver
from authmilter.core.message import split_message
from authmilter.core.model import Action, Header, Transaction, Verdict
from authmilter.core.signing.arc import seal_message
from authmilter.core.signing.dkim import RsaSigner, SigningKey
from tests.mailfactory import Key, make_message, sign
from tests.zoneresolver import ZoneResolver, zone_text

VICTIM = "victim.example"
ATTACKER = "attacker.example"
RCPT_DOMAIN = "rcpt.example"
AUTHSERV_ID = "mx.rcpt.example"
ATTACKER_IP = "203.0.113.7"
RSA_SELECTOR = "s1"
ED_SELECTOR = "e1"

DATA = Path(__file__).resolve().parent / "data" / "dkim"

DKIM_RESULTS = frozenset({"pass", "fail", "neutral", "policy", "temperror", "permerror"})
DMARC_RESULTS = frozenset({"pass", "fail", "none", "temperror", "permerror"})
DMARC_POLICIES = frozenset({"", "none", "quarantine", "reject"})
ARC_RESULTS = frozenset({"none", "pass", "fail"})

# Verdict reasons `evaluate` gives when it caught an exception of its own: a bug, whatever the input.
INTERNAL_FAILURE_REASONS = frozenset(
    {
        "evaluation failed",
        "forged-header scan failed",
        "signing failed",
        "policy decision failed",
        "early decision failed",
    }
)


@dataclass(frozen=True)
class WorldKeys:
    victim_rsa: Key
    victim_ed: Key
    attacker_rsa: Key
    attacker_ed: Key


@dataclass(frozen=True)
class Envelope:
    client_ip: str
    helo: str
    mail_from: str


# Every envelope comes from the attacker's network: SPF can pass for the attacker, never for the victim.
ENVELOPES: Mapping[str, Envelope] = {
    "attacker": Envelope(ATTACKER_IP, f"mail.{ATTACKER}", f"bounce@{ATTACKER}"),
    "victim-spoof": Envelope(ATTACKER_IP, f"mail.{ATTACKER}", f"ceo@{VICTIM}"),
    "null": Envelope(ATTACKER_IP, f"mail.{ATTACKER}", ""),
}


def txt_rdata(data: bytes) -> str:
    """Master-file TXT rdata holding exactly `data`: 255-byte strings, anything unusual as \\DDD."""
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    return " ".join(
        '"' + "".join(chr(c) if 32 <= c < 127 and c not in (34, 92) else f"\\{c:03d}" for c in chunk) + '"'
        for chunk in chunks
    )


def _key_txt(key: Key) -> str:
    return "TXT " + txt_rdata(key.txt().encode())


def _rfc_records() -> dict[str, list[str]]:
    """The example keys of RFC 6376 and RFC 8463, by absolute owner name."""
    found: dict[str, list[str]] = {}
    for path in sorted(DATA.glob("*.zone")):
        for line in path.read_text().splitlines():
            owner, _, record = line.strip().partition(" ")
            if owner and record:
                found.setdefault(owner.lower(), []).append("TXT " + txt_rdata(record.encode()))
    return found


def zone_records(keys: WorldKeys) -> dict[str, dict[str, list[str]]]:
    """The world's records: origin -> absolute owner -> rdata strings ("TYPE RDATA")."""
    zones: dict[str, dict[str, list[str]]] = {
        VICTIM: {
            VICTIM: ['TXT "v=spf1 ip4:192.0.2.0/24 -all"', "MX 10 mail." + VICTIM + "."],
            f"mail.{VICTIM}": ["A 192.0.2.1"],
            f"_dmarc.{VICTIM}": ['TXT "v=DMARC1; p=reject; adkim=r; aspf=r"'],
            f"{RSA_SELECTOR}._domainkey.{VICTIM}": [_key_txt(keys.victim_rsa)],
            f"{ED_SELECTOR}._domainkey.{VICTIM}": [_key_txt(keys.victim_ed)],
        },
        ATTACKER: {
            ATTACKER: ['TXT "v=spf1 ip4:203.0.113.0/24 -all"'],
            f"mail.{ATTACKER}": ["A " + ATTACKER_IP, 'TXT "v=spf1 a -all"'],
            f"_dmarc.{ATTACKER}": ['TXT "v=DMARC1; p=none"'],
            f"{RSA_SELECTOR}._domainkey.{ATTACKER}": [_key_txt(keys.attacker_rsa)],
            f"{ED_SELECTOR}._domainkey.{ATTACKER}": [_key_txt(keys.attacker_ed)],
        },
        RCPT_DOMAIN: {
            RCPT_DOMAIN: ["MX 10 mx." + RCPT_DOMAIN + "."],
            f"mx.{RCPT_DOMAIN}": ["A 198.51.100.25"],
        },
    }
    for owner, rdatas in _rfc_records().items():
        origin = "football.example.com" if owner.endswith("football.example.com") else "example.com"
        zones.setdefault(origin, {}).setdefault(owner, []).extend(rdatas)
    return zones


def world_zones(keys: WorldKeys, txt: Mapping[str, Sequence[bytes]] | None = None) -> list[str]:
    """Master-file zones of the world; `txt` replaces every TXT record at the names it lists."""
    zones = zone_records(keys)
    for name, records in (txt or {}).items():
        owner = name.lower().rstrip(".")
        origin = max((o for o in zones if owner == o or owner.endswith("." + o)), key=len, default=None)
        if origin is None:
            raise ValueError(f"{name} is outside the world's zones")
        kept = [r for r in zones[origin].get(owner, []) if not r.startswith("TXT ")]
        zones[origin][owner] = kept + ["TXT " + txt_rdata(r) for r in records]
    return [
        zone_text(origin, {owner + ".": rdatas for owner, rdatas in records.items() if rdatas})
        for origin, records in zones.items()
    ]


def world_resolver(keys: WorldKeys, txt: Mapping[str, Sequence[bytes]] | None = None) -> ZoneResolver:
    return ZoneResolver(world_zones(keys, txt))


class MemoResolver:
    """Answers of an inner resolver, kept: the world never changes while it is being fuzzed.

    Bounded: fuzzed names are endless, so the memo (and the inner resolver's query counters, which
    grow with every distinct name) is emptied when it fills.
    """

    def __init__(self, inner: ZoneResolver, limit: int = 20_000) -> None:
        self._inner = inner
        self._limit = limit
        self._answers: dict[tuple[str, str], DnsAnswer] = {}

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        key = (name, rdtype)
        answer = self._answers.get(key)
        if answer is None:
            if len(self._answers) >= self._limit:
                self._answers.clear()
                self._inner.reset_counts()
            answer = self._answers[key] = self._inner.query(name, rdtype)
        return answer


def transaction(message: bytes, envelope: Envelope, headers: Sequence[Header] | None = None) -> Transaction:
    """The transaction the milter would see for `message` (split as `authmilter check` does)."""
    fields, body = split_message(message)
    return Transaction(
        client_ip=envelope.client_ip,
        helo=envelope.helo,
        mail_from=envelope.mail_from,
        rcpts=(f"user@{RCPT_DOMAIN}",),
        headers=tuple(fields if headers is None else headers),
        body=body,
    )


# --- judging a verdict ---------------------------------------------------------------------------


def vocabulary_problems(verdict: Verdict) -> list[str]:
    """Results outside the RFC vocabularies (an empty list when every value is one of them)."""
    problems: list[str] = []
    results = verdict.results
    if not isinstance(verdict.action, Action):
        problems.append(f"action {verdict.action!r}")
    if results is None:
        return problems
    if results.spf is not None:
        for spf in (results.spf.effective, results.spf.helo):
            if spf is not None and spf.result not in SPF_RESULTS:
                problems.append(f"spf={spf.result!r}")
    problems.extend(f"dkim={d.result!r}" for d in results.dkim if d.result not in DKIM_RESULTS)
    if results.dmarc is not None:
        if results.dmarc.result not in DMARC_RESULTS:
            problems.append(f"dmarc={results.dmarc.result!r}")
        if results.dmarc.policy not in DMARC_POLICIES:
            problems.append(f"dmarc policy={results.dmarc.policy!r}")
    if results.arc is not None and results.arc.result not in ARC_RESULTS:
        problems.append(f"arc={results.arc.result!r}")
    return problems


def internal_failure(verdict: Verdict) -> bool:
    """Did `evaluate` catch an exception of its own (its fail-safe verdict)?"""
    return verdict.reason in INTERNAL_FAILURE_REASONS


def swallowed_errors(verdict: Verdict) -> list[str]:
    """Exceptions a check caught and turned into a result: no crash, but a bug all the same."""
    found: list[str] = []
    results = verdict.results
    if results is None:
        return found
    found.extend(f"dkim: {d.reason}" for d in results.dkim if d.reason.startswith("internal error"))
    if results.arc is not None and results.arc.reason.startswith("internal error"):
        found.append(f"arc: {results.arc.reason}")
    if results.spf is not None:
        for spf in (results.spf.effective, results.spf.helo):
            if spf is not None and spf.reason.startswith("SPF evaluation error"):
                found.append(f"spf: {spf.reason[:120]}")
    return found


def is_victim(domain: str) -> bool:
    domain = domain.lower().rstrip(".")
    return domain == VICTIM or domain.endswith("." + VICTIM)


_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def _readable(value: bytes) -> str:
    """A field value as a reader might see it: unfolded, encoded words decoded, look-alikes folded."""
    text = re.sub(r"\r?\n[ \t]", " ", value.decode("utf-8", "replace"))
    try:
        decoded = str(email.header.make_header(email.header.decode_header(text)))
    except Exception:  # a reader that cannot decode shows the raw text
        decoded = text
    return unicodedata.normalize("NFKC", (text + " " + decoded).translate(_DOTS)).lower()


def _from_like(headers: Iterable[Header]) -> list[Header]:
    # Deliberately broader than the product's own match: any name that reads "from" to a person.
    return [h for h in headers if re.sub(rb"\s", b"", h.name).lower() == b"from"]


def names_victim(headers: Iterable[Header]) -> bool:
    return any(VICTIM in _readable(h.value) for h in _from_like(headers))


def _victim_records(keys: WorldKeys) -> dict[bytes, bytes]:
    return {
        f"{RSA_SELECTOR}._domainkey.{VICTIM}.".encode(): keys.victim_rsa.txt().encode(),
        f"{ED_SELECTOR}._domainkey.{VICTIM}.".encode(): keys.victim_ed.txt().encode(),
    }


def _lenient_parts(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Header fields and body in dkimpy's shape, split here: dkimpy's own parser refuses the whole
    message for one odd line (`Name :`), which says nothing about the signatures in it."""
    head, sep, body = message.partition(b"\r\n\r\n")
    if not sep:
        head, body = message, b""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + line + b"\r\n")
        elif b":" in line:
            name, _, value = line.partition(b":")
            fields.append((name, value + b"\r\n"))
    return fields, body


def signed_by_victim(message: bytes, keys: WorldKeys, *, max_signatures: int = 10) -> bool:
    """Does dkimpy itself find a valid signature of the victim (From signed) in `message`?"""
    records = _victim_records(keys)

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        return records.get(name.lower(), b"")

    verifier = dkim.DKIM(minkey=1024)
    verifier.headers, verifier.body = _lenient_parts(message)
    # dkimpy's verify(idx) finds signatures by exact name; `DKIM-Signature :` is one too (RFC 5322
    # obs-fields), so the fields are picked here and handed to its public verify_sig.
    signatures = [f for f in verifier.headers if f[0].rstrip().lower() == b"dkim-signature"]
    for field in signatures[:max_signatures]:
        try:
            sig = dkim.parse_tag_value(field[1])
            dkim.validate_signature_fields(sig)
            include = [x.lower() for x in re.split(rb"\s*:\s*", sig[b"h"])]
            if verifier.verify_sig(sig, include, field, dnsfunc) and is_victim(
                sig[b"d"].decode("ascii", "replace")
            ):
                return True
        except Exception:
            continue
    return False


def rule_violation(tx: Transaction, verdict: Verdict, keys: WorldKeys) -> str | None:
    """Why this verdict breaks the rule (module doc), or None when it keeps it."""
    if verdict.action is not Action.ACCEPT or verdict.results is None or verdict.results.dmarc is None:
        return None
    dmarc = verdict.results.dmarc
    if dmarc.result != "pass" or not is_victim(dmarc.domain):
        return None
    if signed_by_victim(tx.message_bytes(), keys):
        return None
    return (
        f"accepted with dmarc=pass for {dmarc.domain} (aligned by {dmarc.aligned_by or '?'}) "
        f"without a valid {VICTIM} signature"
    )


def _reader_domains(tx: Transaction) -> list[str]:
    domains: list[str] = []
    for h in _from_like(tx.headers):
        text = re.sub(r"\r?\n[ \t]", " ", h.value.decode("utf-8", "replace"))
        for candidate in {text, _readable(h.value)}:
            try:
                domains.extend(addr.rpartition("@")[2] for _, addr in email.utils.getaddresses([candidate]))
            except Exception:
                continue
    try:
        parsed: Any = email.parser.BytesParser(policy=email.policy.default).parsebytes(
            b"".join(h.raw() for h in tx.headers) + b"\r\n", headersonly=True
        )
        for field in parsed.get_all("From") or ():
            domains.extend(str(a.domain) for a in getattr(field, "addresses", ()))
    except Exception:
        pass
    return domains


def reader_differential(tx: Transaction, verdict: Verdict) -> str | None:
    """A DMARC pass for another domain where a standard reader finds the victim in From, or None."""
    if verdict.action is not Action.ACCEPT or verdict.results is None or verdict.results.dmarc is None:
        return None
    dmarc = verdict.results.dmarc
    if dmarc.result != "pass" or is_victim(dmarc.domain) or not names_victim(tx.headers):
        return None
    froms = _from_like(tx.headers)
    if len(froms) > 1:
        return f"{len(froms)} From-like fields, dmarc=pass for {dmarc.domain}"
    victims = sorted({d for d in _reader_domains(tx) if is_victim(unicodedata.normalize("NFKC", d))})
    if victims:
        return f"a standard reader takes {victims[0]} from From; we gave dmarc=pass to {dmarc.domain}"
    return None


def resolver_for(keys: WorldKeys) -> Resolver:
    """The world's resolver as the campaign uses it: the zones, answers kept."""
    return MemoResolver(world_resolver(keys))


# --- seed messages -------------------------------------------------------------------------------


def _sealing_key(key: Key, domain: str) -> SigningKey:
    private = serialization.load_pem_private_key(key.private_pem, password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    return SigningKey(
        f"{domain}-arc", domain, RSA_SELECTOR, "rsa-sha256", RsaSigner(private), private.key_size
    )


def arc_sealed(message: bytes, key: Key, domain: str, *, now: float | None = None) -> bytes:
    """`message` with one ARC set (cv=none) sealed by `domain`, as a mailing list would add it."""
    results = (
        f"mx.{domain}; spf=pass smtp.mailfrom={domain}; dkim=pass header.d={domain}; "
        f"dmarc=pass header.from={domain}"
    )
    outcome = seal_message(
        message,
        _sealing_key(key, domain),
        authserv_id=f"mx.{domain}",
        auth_results=results,
        cv="none",
        now=time.time() if now is None else now,
    )
    if outcome.status != "sealed":
        raise RuntimeError(f"sealing failed: {outcome.status} {outcome.reason}")
    top = b"".join(f"{name}: {value}\r\n".encode() for name, value in reversed(outcome.headers))
    return top + message


_MIME_HEADERS = (b"MIME-Version: 1.0", b'Content-Type: multipart/mixed; boundary="b1"')
_MIME_BODY = (
    b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nInvoice attached.\r\n"
    b'--b1\r\nContent-Type: application/octet-stream; name="x.bin"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\n"
    + b"QUJD" * 19
    + b"\r\n"
    + b"REVG" * 19
    + b"\r\n--b1--\r\n"
)


def seed_messages(keys: WorldKeys) -> dict[str, bytes]:
    """Messages the campaign and the properties start from, by name."""
    victim_from = f"The CEO <ceo@{VICTIM}>"
    attacker_from = f"Mallory <mallory@{ATTACKER}>"

    def victim(
        msg: bytes, key: Key, selector: str, canon: tuple[bytes, bytes] = (b"relaxed", b"relaxed")
    ) -> bytes:
        return sign(msg, domain=VICTIM, selector=selector, key=key, canonicalize=canon)

    def attacker(msg: bytes, key: Key = keys.attacker_rsa, selector: str = RSA_SELECTOR) -> bytes:
        return sign(msg, domain=ATTACKER, selector=selector, key=key)

    plain_victim = make_message(from_=victim_from, message_id=f"<1@{VICTIM}>")
    plain_attacker = make_message(from_=attacker_from, message_id=f"<2@{ATTACKER}>")
    mime_victim = make_message(from_=victim_from, extra_headers=_MIME_HEADERS, body=_MIME_BODY)
    victim_rsa = victim(plain_victim, keys.victim_rsa, RSA_SELECTOR)
    seeds = {
        "victim-rsa-relaxed": victim_rsa,
        "victim-ed-simple": victim(plain_victim, keys.victim_ed, ED_SELECTOR, (b"simple", b"simple")),
        "victim-two-signatures": victim(victim_rsa, keys.victim_ed, ED_SELECTOR),
        "victim-mime": victim(mime_victim, keys.victim_rsa, RSA_SELECTOR, (b"relaxed", b"simple")),
        "attacker-rsa": attacker(plain_attacker),
        "attacker-ed": attacker(plain_attacker, keys.attacker_ed, ED_SELECTOR),
        "spoof-unsigned": plain_victim,
        "spoof-attacker-signed": attacker(plain_victim),
        "spoof-display-name": attacker(make_message(from_=f'"ceo@{VICTIM}" <mallory@{ATTACKER}>')),
        "attacker-arc": arc_sealed(attacker(plain_attacker), keys.attacker_rsa, ATTACKER),
        "victim-arc": arc_sealed(victim_rsa, keys.attacker_rsa, ATTACKER),
        "spoof-arc": arc_sealed(plain_victim, keys.attacker_rsa, ATTACKER),
        "forged-results": attacker(
            make_message(
                from_=attacker_from,
                extra_headers=(
                    f"Authentication-Results: {AUTHSERV_ID}; dmarc=pass header.from={VICTIM}".encode(),
                ),
            )
        ),
    }
    for path in sorted(DATA.glob("*.eml")):
        seeds[f"rfc-{path.stem}"] = path.read_bytes()
    return seeds
