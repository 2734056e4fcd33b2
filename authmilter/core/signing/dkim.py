"""Outbound DKIM signing (RFC 6376; Ed25519 next to RSA per RFC 8463; key sizes per RFC 8301).

Who is signed (`outbound_reason`): our own users' mail only, recognised by SMTP AUTH, a
configured internal network or the MTA daemon it came in on. With which keys (`sign_message`):
the first signing-table entry whose patterns match the author address (or, per entry, the
envelope sender) names the keys; every one of them signs, one DKIM-Signature each.

dkimpy canonicalizes, hashes and folds; the private-key operation is OpenSSL's (`cryptography`),
on keys parsed once when the signing file is loaded. dkimpy's own `sign()` would parse the PEM
for every message, sign RSA in pure Python (~7 ms for RSA-2048 against ~0.5 ms) and cannot write
x=, so we build the tag list ourselves and call `DKIM.gen_header` with a key adapter as `pk`:

* Ed25519: gen_header calls `pk.sign(digest).signature`, which `Ed25519Signer` provides.
* RSA: gen_header calls the module global `dkim.RSASSA_PKCS1_v1_5_sign(hash, pk)`. It is
  replaced once, at import, by a dispatcher that signs with OpenSSL when `pk` is our
  `RsaSigner` (PKCS#1 v1.5 over the SHA-256 digest gen_header computed) and calls dkimpy's
  original for anything else, so dkimpy's own signing and
  verifying (and any other user of the module) behave exactly as before.

Nothing here does I/O: `authmilter.files.keys` reads key files and hands over parsed keys.
No function here puts key material into a reason, a repr or an exception message.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import (
    CanonicalizationPolicy,
    InvalidCanonicalizationPolicyError,
)

from authmilter.core import dkimpy_fast  # noqa: F401 - the relaxed-body fast path, for signing too
from authmilter.core.checks.author import parse_author
from authmilter.core.checks.dkim import _NULL_LOGGER
from authmilter.core.decision import Condition, IPNetwork, Stage, facts_for
from authmilter.core.model import Header, SigningOutcome, Transaction
from authmilter.core.names import normalize_domain

__all__ = [
    "ALGORITHMS",
    "BAD_AUTHOR_ACTIONS",
    "CANONICALIZATIONS",
    "DEFAULT_HEADERS",
    "DEFAULT_OVERSIGN",
    "EMPTY_SIGNING",
    "KEY_ERROR_ACTIONS",
    "NEVER_SIGNED",
    "Ed25519Signer",
    "RsaSigner",
    "SignEntry",
    "Signer",
    "SigningConfig",
    "SigningKey",
    "SigningOutcome",
    "SigningSettings",
    "header_name_problem",
    "identity_within",
    "outbound_reason",
    "parse_canonicalization",
    "parse_identity",
    "parse_pattern",
    "pattern_covers",
    "sign_message",
]

ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
CANONICALIZATIONS = ("relaxed/relaxed", "relaxed/simple", "simple/relaxed", "simple/simple")
KEY_ERROR_ACTIONS = ("tempfail", "accept")
BAD_AUTHOR_ACTIONS = ("reject", "tempfail", "accept")

# RFC 6376 5.4.1's list, plus the RFC 8058 one-click header: what a reader sees, what decides
# how the body is read, and the mailing-list fields. Signed when present (From always).
DEFAULT_HEADERS = (
    "from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id", "in-reply-to",
    "references", "mime-version", "content-type", "content-transfer-encoding", "content-id",
    "content-description", "list-id", "list-help", "list-unsubscribe", "list-subscribe", "list-post",
    "list-owner", "list-archive", "list-unsubscribe-post",
)
# Listed once more than they occur (RFC 6376 5.4.2 and 8.15), so an instance added after signing
# breaks the signature: a second From or Subject shown instead of the signed one, a Reply-To or
# Content-Type slipped into mail that had none. List-* and Sender are left out on purpose:
# mailing lists add those to mail they otherwise pass unchanged.
DEFAULT_OVERSIGN = (
    "from", "to", "cc", "subject", "date", "message-id", "reply-to", "in-reply-to", "references",
    "mime-version", "content-type", "content-transfer-encoding",
)
# Fields that change or vanish in transit (RFC 6376 5.4.1), or, for DKIM-Signature, that our own
# second signature adds: a signature covering them would break on the way.
NEVER_SIGNED = frozenset({"return-path", "received", "bcc", "resent-bcc", "dkim-signature"})

_HEADER_NAME = re.compile(r"[!-9;-~]{1,64}\Z")  # RFC 5322 ftext
_BARE_LF = re.compile(rb"(?<!\r)\n")
# dkim-quoted-printable would be needed for anything else; nobody writes that in a config.
_IDENTITY_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{0,64}\Z")
# Forces b= onto a line of its own when gen_header folds before signing, so the folding of the
# tags before it is the same once the real signature is filled in (dkimpy's sign() does the same).
_B_PLACEHOLDER = b"0" * 60
# The signed header list is folded after ": ", the only places FWS may go inside h=.
_H_SEPARATOR = b": "


# --- keys ----------------------------------------------------------------------------------------


class RsaSigner:
    """An RSA private key parsed once; dkimpy reaches it through the dispatcher below."""

    __slots__ = ("_key", "bits")

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self._key = key
        self.bits = key.key_size

    @property
    def key_type(self) -> str:
        return "rsa"

    def sign_prehashed_sha256(self, digest: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 over an already computed SHA-256 digest (what DKIM's b= is)."""
        return self._key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))

    def public_key_b64(self) -> str:
        """The p= value: SubjectPublicKeyInfo DER, as every DKIM verifier reads it."""
        der = self._key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode("ascii")

    def __repr__(self) -> str:  # never the key itself
        return f"<RsaSigner {self.bits} bits>"


@dataclass(frozen=True)
class _Ed25519Signature:
    signature: bytes  # the attribute gen_header reads (PyNaCl's SignedMessage has it too)


class Ed25519Signer:
    """An Ed25519 private key parsed once, shaped like the PyNaCl key gen_header expects."""

    __slots__ = ("_key",)
    bits = 256

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key

    @property
    def key_type(self) -> str:
        return "ed25519"

    def sign(self, digest: bytes) -> _Ed25519Signature:
        # RFC 8463 3: the Ed25519 input is the SHA-256 digest of the header hash input.
        return _Ed25519Signature(self._key.sign(digest))

    def public_key_b64(self) -> str:
        """The p= value: the raw 32-byte public key (RFC 8463 4)."""
        raw = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode("ascii")

    def __repr__(self) -> str:
        return "<Ed25519Signer>"


Signer = RsaSigner | Ed25519Signer


def _install_rsa_dispatcher() -> None:
    """Route dkimpy's RSA signing to OpenSSL for our keys; everything else to dkimpy's own code.

    gen_header looks the function up as a global of the `dkim` package at call time. The
    original is kept on the dispatcher, so importing this module again (reload) never stacks
    dispatchers or loses dkimpy's function.
    """
    current: Any = dkim.RSASSA_PKCS1_v1_5_sign
    original: Callable[[Any, Any], bytes] = getattr(current, "authmilter_original", current)

    def dispatch(hash: Any, private_key: Any) -> bytes:
        # By method, not by class: keys made before a reload of this module are still ours.
        # dkimpy's own keys are dicts, which have no such attribute.
        sign: Callable[[bytes], bytes] | None = getattr(private_key, "sign_prehashed_sha256", None)
        if sign is not None:
            if hash.name != "sha256":
                raise ValueError("our RSA keys sign rsa-sha256 only")
            return sign(hash.digest())
        return original(hash, private_key)

    dispatch.authmilter_original = original  # type: ignore[attr-defined]
    dkim.RSASSA_PKCS1_v1_5_sign = dispatch


_install_rsa_dispatcher()


@dataclass(frozen=True)
class SigningKey:
    name: str  # the key table name
    domain: str  # d=, lower-case A-labels
    selector: str  # s=
    algorithm: str  # "rsa-sha256" | "ed25519-sha256"
    signer: Signer = field(repr=False)
    bits: int = 0  # RSA modulus size; 256 for Ed25519
    source: str = ""  # where the key came from: its file's path

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningSettings:
    authenticated: bool = True  # sign mail from SMTP-AUTH clients
    internal_networks: tuple[IPNetwork, ...] = ()  # and mail from these client networks
    daemons: tuple[str, ...] = ()  # and mail received on these MTA daemons ({daemon_name})
    canonicalization: str = "relaxed/relaxed"
    headers: tuple[str, ...] = DEFAULT_HEADERS  # lower-case; signed when present (From always)
    oversign: tuple[str, ...] = DEFAULT_OVERSIGN  # lower-case; signed once more than present
    expire_seconds: int = 0  # x= is t= plus this; 0: no x=
    on_key_error: str = "tempfail"  # a needed key is unavailable, or signing failed: tempfail | accept
    on_bad_author: str = "reject"  # no single parseable From: reject | tempfail | accept
    verify_signed: bool = False  # also verify outbound mail and add Authentication-Results


@dataclass(frozen=True)
class SignEntry:
    patterns: tuple[str, ...]  # normalized by parse_pattern
    keys: tuple[str, ...]  # key table names, each signs
    identity: str = ""  # i=; "" leaves it out (verifiers then assume "@" + d=)
    use_sender_domain: bool = False  # match the envelope sender instead of the author
    source: str = ""  # "file:line"


@dataclass(frozen=True)
class SigningConfig:
    settings: SigningSettings = field(default_factory=SigningSettings)
    entries: tuple[SignEntry, ...] = ()  # in file order; the first match wins
    keys: Mapping[str, SigningKey] = field(default_factory=lambda: MappingProxyType({}))
    unavailable: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # name -> why
    file: str = ""
    # ARC sealing (RFC 8617) for the mail we forward: the key (a name in `keys`) and the recipient
    # patterns whose mail is sealed, matched like signing patterns ("lists.example.org", "*").
    arc_key: str = ""
    arc_seal: tuple[str, ...] = ()

    def arc_recipient(self, rcpts: Sequence[str]) -> bool:
        """Whether mail to any of `rcpts` passes through us on its way on, and so gets an ARC set."""
        for rcpt in rcpts:
            local, _, domain = rcpt.strip().strip("<>").rpartition("@")
            try:
                domain = normalize_domain(domain)
            except ValueError:
                continue
            if any(_matches(p, local.lower() + "@" + domain, domain) for p in self.arc_seal):
                return True
        return False


# Signs nothing and, more to the point, calls nothing outbound: without a signing file, mail from
# authenticated clients must keep going through verification and policy as it always did.
EMPTY_SIGNING = SigningConfig(settings=SigningSettings(authenticated=False))




# --- values the signing file is made of ----------------------------------------------------------


def parse_pattern(text: str) -> str:
    """A signing-table pattern in normalized form; ValueError says why it could never match.

    "user@example.com" (that address), "example.com" (that domain), "*.example.com" (any
    subdomain, not example.com itself), "*" (any author). Domains become lower-case A-labels,
    local parts lower-case (mail systems treat them case-insensitively in practice).
    """
    t = text.strip()
    if t == "*":
        return "*"
    if "@" in t:
        local, _, domain = t.rpartition("@")
        if not local:
            raise ValueError("empty local part (write the domain alone to match all its addresses)")
        if "@" in local or "*" in local or any(not c.isprintable() or c.isspace() for c in local):
            raise ValueError(f"local part {local!r} has '@', '*', white space or control characters")
        return local.lower() + "@" + _domain(domain)
    if t.startswith("*."):
        return "*." + _domain(t[2:])
    if "*" in t:
        raise ValueError("'*' is allowed only alone or as the first label, as in '*.example.com'")
    return _domain(t)


def _domain(text: str) -> str:
    try:
        return normalize_domain(text)
    except ValueError as e:
        raise ValueError(f"{text!r} is not a domain name ({e})") from None


def pattern_covers(earlier: str, later: str) -> bool:
    """Whether every identity `later` matches is matched by `earlier` (so `later` is dead)."""
    if earlier == "*" or earlier == later:
        return True
    if later == "*":
        return False
    later_domain = later[2:] if later.startswith("*.") else later.rpartition("@")[2]
    if earlier.startswith("*."):
        # "*.example.com" covers "a.example.com", "u@a.example.com" and "*.a.example.com", and
        # also "*.example.com"'s own subdomains when written as "*.example.com" (equal, above).
        return later_domain.endswith(earlier[1:]) or (later.startswith("*.") and later_domain == earlier[2:])
    if "@" in earlier:
        return False
    return "@" in later and later_domain == earlier


def parse_identity(text: str) -> str:
    """An i= value: "@example.com" or "user@example.com"; ValueError says what is wrong."""
    local, at, domain = text.strip().rpartition("@")
    if not at:
        raise ValueError("must be an address or '@domain', like '@example.com'")
    if not _IDENTITY_LOCAL.match(local):
        raise ValueError(f"local part {local!r} must be plain ASCII (letters, digits, '.', and "
                         "!#$%&'*+/=?^_`{|}~-), at most 64 characters")
    return f"{local}@{_domain(domain)}"


def identity_within(identity: str, domain: str) -> bool:
    """RFC 6376 3.5: the i= domain must be d= or a subdomain of it."""
    i_domain = identity.rpartition("@")[2]
    return i_domain == domain or i_domain.endswith("." + domain)


def parse_canonicalization(text: str) -> str:
    """ "header/body", both spelt out: a lone "relaxed" would mean relaxed/simple (RFC 6376 3.5),
    which is rarely what the writer meant."""
    value = text.strip().lower()
    if value.count("/") != 1:
        raise ValueError(f"must be header/body, one of {', '.join(CANONICALIZATIONS)}; got {text!r}")
    try:
        policy = CanonicalizationPolicy.from_c_value(value.encode("ascii"))
    except (InvalidCanonicalizationPolicyError, UnicodeEncodeError):
        raise ValueError(f"must be one of {', '.join(CANONICALIZATIONS)}; got {text!r}") from None
    result: str = policy.to_c_value().decode("ascii")
    return result


def header_name_problem(name: str) -> str | None:
    """Why `name` cannot be in the signed header list, or None. Unknown names are fine."""
    if not _HEADER_NAME.match(name):
        return f"{name!r} is not a header field name (printable ASCII without ':' or spaces)"
    if name.lower() in NEVER_SIGNED:
        return f"{name} must not be signed: it changes in transit or is added after signing"
    return None


# --- who is signed -------------------------------------------------------------------------------


def outbound_reason(tx: Transaction, settings: SigningSettings) -> str | None:
    """Why this is our users' mail to sign: "authenticated", "internal" or "daemon:NAME"; None
    for everyone else's mail, which is never signed."""
    if not (settings.authenticated or settings.internal_networks or settings.daemons):
        return None  # nothing is configured to be signed: spare every message the facts below
    # The facts the policy language sees, so "authenticated", "client_ip" and "daemon" mean the
    # very same thing in a policy rule and here (macro spellings, IPv4-mapped clients, ...).
    facts = facts_for(tx, None, Stage.MAIL)
    if settings.authenticated and facts.authenticated:
        return "authenticated"
    if settings.internal_networks and Condition(
            "client_ip", networks=settings.internal_networks).test(facts):
        return "internal"
    if facts.daemon and facts.daemon in settings.daemons:
        return f"daemon:{facts.daemon}"
    return None


# --- signing -------------------------------------------------------------------------------------


def sign_message(tx: Transaction, config: SigningConfig, *, now: float) -> SigningOutcome:
    """Sign `tx` with the keys of the first matching signing-table entry. Never raises.

    The caller decides whether the message is outbound (`outbound_reason`); this only decides
    how. An entry signs with all its keys or not at all: if one is unavailable the outcome is
    key-unavailable with no signatures (see docs/signing.md for why).
    """
    try:
        return _sign(tx, config, now)
    except Exception as e:  # a surprise in dkimpy must become the configured action, not a crash
        return SigningOutcome("error", reason=f"internal error: {type(e).__name__}")


def _sign(tx: Transaction, config: SigningConfig, now: float) -> SigningOutcome:
    if not config.entries:
        return SigningOutcome("no-entry", reason="the signing table is empty")
    author = parse_author(tx.headers)
    if author.error or not author.domain or not author.addresses:
        # Signing would vouch for a message whose author receivers cannot agree on.
        return SigningOutcome("bad-author", reason=author.error or "no author domain")
    if any(h.key == b"from" and h.name.lower() != b"from" for h in tx.headers):
        # "From :" is obsolete syntax that verifiers built on dkimpy's simple canonicalization do
        # not select for h=: our signature would fail there, or leave the From a reader sees unsigned.
        return SigningOutcome("bad-author", reason="white space before the colon of From")
    sender = _sender_address(tx.mail_from)
    entry, domain = _find_entry(config.entries, author.addresses[0], sender)
    if entry is None:
        return SigningOutcome("no-entry", domain=author.domain,
                              reason=f"no signing table entry matches {author.domain}")
    keys: list[SigningKey] = []
    for name in entry.keys:
        key = config.keys.get(name)
        if key is None:
            why = config.unavailable.get(name, "not loaded")
            return SigningOutcome("key-unavailable", keys=(name,), domain=domain, entry=entry.source,
                                  reason=f"key {name} is unavailable: {why}")
        keys.append(key)
    prepared = _Prepared(tx.headers, tx.body, config.settings)
    signatures: list[str] = []
    for key in keys:
        try:
            signatures.append(prepared.signature(key, entry.identity, now))
        except Exception as e:
            return SigningOutcome("error", keys=(key.name,), domain=domain, entry=entry.source,
                                  reason=f"signing with key {key.name} failed: {type(e).__name__}")
    return SigningOutcome("signed", tuple(signatures), tuple(k.name for k in keys), domain=domain,
                          entry=entry.source,
                          reason=", ".join(f"d={k.domain} s={k.selector} a={k.algorithm}" for k in keys))


def _sender_address(mail_from: str) -> str:
    """The envelope sender as "local@domain" with a normalized domain; "" when it has none."""
    addr = mail_from.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1].strip()
    local, at, domain = addr.rpartition("@")
    if not at or not local:
        return ""
    try:
        return f"{local}@{normalize_domain(domain)}"
    except ValueError:
        return ""


def _find_entry(entries: Sequence[SignEntry], author: str, sender: str) -> tuple[SignEntry | None, str]:
    for entry in entries:
        address = sender if entry.use_sender_domain else author
        if not address:
            continue  # the null sender, or one without a usable domain, matches no entry
        local, _, domain = address.rpartition("@")
        candidate = local.lower() + "@" + domain
        if any(_matches(p, candidate, domain) for p in entry.patterns):
            return entry, domain
    return None, ""


def _matches(pattern: str, address: str, domain: str) -> bool:
    if pattern == "*":
        return True
    if "@" in pattern:
        return address == pattern
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:])
    return domain == pattern


class _Prepared:
    """One message made ready for dkimpy: the fields it may select, h=, the body hash."""

    def __init__(self, headers: Sequence[Header], body: bytes, settings: SigningSettings) -> None:
        self.canon = CanonicalizationPolicy.from_c_value(settings.canonicalization.encode("ascii"))
        self.expire_seconds = settings.expire_seconds
        oversign = {n.encode("ascii") for n in settings.oversign}
        signed = ["from", *settings.headers, *settings.oversign]
        names = list(dict.fromkeys(n.encode("ascii") for n in signed))  # ordered, no repeats

        # dkimpy selects by field_key (core/dkimpy_fast installs that selection), whatever the
        # canonicalization.
        counts = Counter(h.key for h in headers)
        self.h = [n for n in names for _ in range(counts[n] + (1 if n in oversign else 0))]
        wanted = set(names)
        # Only fields whose name is in h= can be selected; dkimpy need not canonicalize the rest.
        self.fields = [(h.name, _crlf(h.value) + b"\r\n") for h in headers if h.key in wanted]
        canonical_body = _canonical_body(self.canon, _crlf(body))
        self.body_hash = base64.b64encode(hashlib.sha256(canonical_body).digest())

    def signature(self, key: SigningKey, identity: str, now: float) -> str:
        d = dkim.DKIM(None, logger=_NULL_LOGGER, signature_algorithm=key.algorithm.encode("ascii"))
        d.headers = self.fields
        d.hasher = hashlib.sha256
        signed_at = int(now)
        fields: list[tuple[bytes, bytes]] = [
            (b"v", b"1"),
            (b"a", key.algorithm.encode("ascii")),
            (b"c", self.canon.to_c_value()),
            (b"d", key.domain.encode("ascii")),
        ]
        if identity:
            fields.append((b"i", identity.encode("ascii")))
        fields += [(b"s", key.selector.encode("ascii")), (b"t", str(signed_at).encode("ascii"))]
        if self.expire_seconds:
            fields.append((b"x", str(signed_at + self.expire_seconds).encode("ascii")))
        fields += [(b"h", _H_SEPARATOR.join(self.h)), (b"bh", self.body_hash), (b"b", _B_PLACEHOLDER)]
        value: bytes = d.gen_header(fields, self.h, self.canon, b"DKIM-Signature", key.signer)
        # gen_header ends the value with CRLF, and when the last folded line of b= would be empty
        # it leaves "CRLF SP" before it; neither belongs in a value, and b= is not hashed.
        return value.rstrip(b" \t\r\n").decode("ascii")


def _crlf(data: bytes) -> bytes:
    # SMTP carries CRLF; a bare LF (a message handed over by a local tool) goes out as CRLF too.
    # Counting first: a regex scan of every body would cost more than the signature.
    return _BARE_LF.sub(b"\r\n", data) if data.count(b"\n") != data.count(b"\r\n") else data


def _canonical_body(canon: CanonicalizationPolicy, body: bytes) -> bytes:
    """dkimpy's body canonicalization (fast for ordinary relaxed bodies: see core/dkimpy_fast)."""
    result: bytes = canon.canonicalize_body(body)
    return result
