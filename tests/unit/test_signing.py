"""Tests for authmilter.core.signing.dkim: who is signed, with which keys, and that it verifies.

Signatures are checked twice: with dkimpy's own `dkim.verify` and with our `verify_dkim`, both
reading the public keys from an in-memory zone.
"""

from __future__ import annotations

import base64
import importlib
import itertools
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import cache
from types import MappingProxyType

import dkim
import dkim.crypto
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import CanonicalizationPolicy

import authmilter.core.signing.dkim as signing_module
from authmilter.core.checks.dkim import verify_dkim
from authmilter.core.decision import make_condition
from authmilter.core.message import split_message
from authmilter.core.model import Header, Transaction
from authmilter.core.signing.dkim import (
    DEFAULT_HEADERS,
    DEFAULT_OVERSIGN,
    EMPTY_SIGNING,
    Ed25519Signer,
    RsaSigner,
    SignEntry,
    SigningConfig,
    SigningKey,
    SigningOutcome,
    SigningSettings,
    _canonical_body,
    outbound_reason,
    parse_canonicalization,
    parse_identity,
    parse_pattern,
    pattern_covers,
    sign_message,
)
from tests.unit.test_dkim import DictResolver

# dkimpy checks x= against the wall clock, so signing time must be real time.
NOW = float(int(time.time()))


# --- keys and zone ----------------------------------------------------------------------------


def rsa_private(bits: int = 2048, n: int = 0) -> rsa.RSAPrivateKey:
    return _rsa_private(bits, n)  # one cache entry however the arguments are spelt


@cache
def _rsa_private(bits: int, n: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def ed_private(n: int = 0) -> ed25519.Ed25519PrivateKey:
    return _ed_private(n)


@cache
def _ed_private(n: int) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def rsa_key(name: str = "rsa", domain: str = "example.com", selector: str = "rsa", bits: int = 2048,
            n: int = 0) -> SigningKey:
    return SigningKey(name, domain, selector, "rsa-sha256", RsaSigner(rsa_private(bits, n)), bits)


def ed_key(name: str = "ed", domain: str = "example.com", selector: str = "ed", n: int = 0) -> SigningKey:
    return SigningKey(name, domain, selector, "ed25519-sha256", Ed25519Signer(ed_private(n)), 256)


def record(key: SigningKey) -> bytes:
    return f"v=DKIM1; k={key.signer.key_type}; p={key.signer.public_key_b64()}".encode()


def zone(*keys: SigningKey) -> dict[str, bytes]:
    return {k.record_name: record(k) for k in keys}


def config(*entries: SignEntry, keys: tuple[SigningKey, ...] = (),
           unavailable: Mapping[str, str] | None = None, **settings: object) -> SigningConfig:
    return SigningConfig(
        settings=SigningSettings(**settings),  # type: ignore[arg-type]
        entries=entries,
        keys=MappingProxyType({k.name: k for k in keys}),
        unavailable=MappingProxyType(dict(unavailable or {})),
    )


def entry(*patterns: str, keys: tuple[str, ...] = ("rsa",), identity: str = "", sender: bool = False,
          source: str = "t.toml:1") -> SignEntry:
    return SignEntry(tuple(parse_pattern(p) for p in patterns), keys, identity, sender, source)


MESSAGE = (b"From: Alice <alice@example.com>\r\n"
           b"To: Bob <bob@example.net>\r\n"
           b"Subject: Quarterly figures\r\n"
           b"Date: Fri, 27 Nov 2026 12:00:00 +0000\r\n"
           b"Message-ID: <1@example.com>\r\n"
           b"X-Mailer: test\r\n"
           b"\r\n"
           b"Hi Bob,\r\n\r\nThe figures are attached.\r\n")


def tx_of(raw: bytes = MESSAGE, *, mail_from: str = "alice@example.com",
          client_ip: str | None = "203.0.113.9", macros: Mapping[str, str] | None = None) -> Transaction:
    headers, body = split_message(raw)
    return Transaction(client_ip=client_ip, helo="client.example", mail_from=mail_from, headers=headers,
                       body=body, macros=MappingProxyType(dict(macros or {})))


def signed_message(raw: bytes, outcome: SigningOutcome) -> bytes:
    """The message as the MTA passes it on: each signature inserted at the top in turn."""
    top = b"".join(b"DKIM-Signature: " + v.encode() + b"\r\n" for v in reversed(outcome.signatures))
    return top + raw


def dkimpy_verifies(message: bytes, records: Mapping[str, bytes]) -> list[bool]:
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.decode().rstrip("."))

    d = dkim.DKIM(message)
    count = sum(1 for n, _ in d.headers if n.lower() == b"dkim-signature")
    return [bool(d.verify(idx=i, dnsfunc=dnsfunc)) for i in range(count)]


def ours(message: bytes, records: Mapping[str, bytes]) -> list[str]:
    return [r.result for r in verify_dkim(message, DictResolver(records), now=NOW)]


def sign(raw: bytes = MESSAGE, cfg: SigningConfig | None = None, **kw: object) -> SigningOutcome:
    cfg = cfg or config(entry("example.com"), keys=(rsa_key(),))
    return sign_message(tx_of(raw, **kw), cfg, now=NOW)  # type: ignore[arg-type]


def tags(value: str) -> dict[str, str]:
    flat = re.sub(r"\r\n[ \t]+", " ", value)
    return {k.strip(): v.strip() for k, _, v in (t.partition("=") for t in flat.split(";")) if k.strip()}


def h_list(value: str) -> list[str]:
    return [n.strip() for n in tags(value)["h"].split(":")]


# --- who is signed ----------------------------------------------------------------------------


def networks(*cidrs: str) -> tuple[object, ...]:
    return make_condition("client_ip", list(cidrs)).networks


@pytest.mark.parametrize(("macros", "client_ip", "settings", "expected"), [
    ({"{auth_authen}": "alice"}, "203.0.113.9", {}, "authenticated"),
    ({"auth_authen": "alice"}, "203.0.113.9", {}, "authenticated"),  # bare macro name, as Sendmail may
    ({"{auth_authen}": "  "}, "203.0.113.9", {}, None),  # blank is not authenticated
    ({"{auth_authen}": "alice"}, "203.0.113.9", {"authenticated": False}, None),
    ({}, "10.1.2.3", {"internal_networks": networks("10.0.0.0/8")}, "internal"),
    ({}, "::ffff:10.1.2.3", {"internal_networks": networks("10.0.0.0/8")}, "internal"),
    ({}, "2001:db8::5", {"internal_networks": networks("2001:db8::/32")}, "internal"),
    ({}, "203.0.113.9", {"internal_networks": networks("10.0.0.0/8")}, None),
    ({}, None, {"internal_networks": networks("10.0.0.0/8")}, None),
    ({"{daemon_name}": "submission"}, "203.0.113.9", {"daemons": ("submission",)}, "daemon:submission"),
    ({"{daemon_name}": "smtpd"}, "203.0.113.9", {"daemons": ("submission",)}, None),
    ({}, "203.0.113.9", {}, None),
])
def test_outbound_reason(macros: dict[str, str], client_ip: str | None, settings: dict[str, object],
                         expected: str | None) -> None:
    s = SigningSettings(**settings)  # type: ignore[arg-type]
    assert outbound_reason(tx_of(macros=macros, client_ip=client_ip), s) == expected


def test_authenticated_wins_over_internal_and_daemon() -> None:
    s = SigningSettings(internal_networks=networks("10.0.0.0/8"), daemons=("submission",))  # type: ignore[arg-type]
    tx = tx_of(client_ip="10.0.0.1", macros={"{auth_authen}": "a", "{daemon_name}": "submission"})
    assert outbound_reason(tx, s) == "authenticated"


def test_empty_signing_calls_nobody_outbound() -> None:
    # Without a signing file, authenticated mail must still be verified like everyone's.
    tx = tx_of(client_ip="127.0.0.1", macros={"{auth_authen}": "alice", "{daemon_name}": "submission"})
    assert outbound_reason(tx, EMPTY_SIGNING.settings) is None
    assert sign_message(tx, EMPTY_SIGNING, now=NOW).status == "no-entry"


# --- the signing table ------------------------------------------------------------------------


def with_from(address: str, raw: bytes = MESSAGE) -> bytes:
    return raw.replace(b"Alice <alice@example.com>", address.encode())


@pytest.mark.parametrize(("author", "expected"), [
    ("alice@example.com", "exact"),
    ("Alice <ALICE@Example.COM>", "exact"),  # local part and domain compared case-insensitively
    ("bob@example.com", "domain"),
    ("bob@mail.example.com", "sub"),
    ("bob@deep.mail.example.com", "sub"),
    ("bob@example.org", "any"),
    ("bob@notexample.com", "any"),  # "*.example.com" is a label boundary, not a suffix
])
def test_first_matching_entry_wins(author: str, expected: str) -> None:
    keys = tuple(rsa_key(n, selector=n) for n in ("exact", "domain", "sub", "any"))
    cfg = config(entry("alice@example.com", keys=("exact",), source="t:1"),
                 entry("example.com", keys=("domain",), source="t:2"),
                 entry("*.example.com", keys=("sub",), source="t:3"),
                 entry("*", keys=("any",), source="t:4"),
                 keys=keys)
    out = sign(with_from(author), cfg)
    assert out.status == "signed" and out.keys == (expected,)
    assert out.entry == {"exact": "t:1", "domain": "t:2", "sub": "t:3", "any": "t:4"}[expected]


def test_wildcard_does_not_match_the_domain_itself_and_no_entry_is_not_an_error() -> None:
    cfg = config(entry("*.example.com"), keys=(rsa_key(),))
    out = sign(MESSAGE, cfg)
    assert out.status == "no-entry" and out.signatures == () and out.domain == "example.com"


def test_idn_author_matches_a_u_label_pattern() -> None:
    key = rsa_key(domain="xn--bcher-kva.example")
    cfg = config(entry("bücher.example"), keys=(key,))
    raw = with_from("Leser <leser@bücher.example>")  # RFC 6532: UTF-8 in the header
    out = sign(raw, cfg)
    assert out.status == "signed" and out.domain == "xn--bcher-kva.example"
    assert ours(signed_message(raw, out), zone(key)) == ["pass"]


def test_use_sender_domain_matches_the_envelope_sender() -> None:
    bounce = rsa_key("bounce", domain="bounce.example.com", selector="b1")
    cfg = config(entry("bounce.example.com", keys=("bounce",), sender=True), keys=(bounce,))
    out = sign(MESSAGE, cfg, mail_from="<bounces+123@Bounce.Example.com>")
    assert out.status == "signed" and out.domain == "bounce.example.com"
    assert tags(out.signatures[0])["d"] == "bounce.example.com"
    assert ours(signed_message(MESSAGE, out), zone(bounce)) == ["pass"]
    # The author is at example.com, which this entry does not look at; the null sender matches nothing.
    assert sign(MESSAGE, cfg, mail_from="alice@example.com").status == "no-entry"
    assert sign(MESSAGE, cfg, mail_from="").status == "no-entry"


def test_identity_is_written_as_i_and_verifies() -> None:
    cfg = config(entry("example.com", identity=parse_identity("alice@news.example.com")), keys=(rsa_key(),))
    out = sign(MESSAGE, cfg)
    assert tags(out.signatures[0])["i"] == "alice@news.example.com"
    assert ours(signed_message(MESSAGE, out), zone(rsa_key())) == ["pass"]
    assert "i" not in tags(sign(MESSAGE).signatures[0])  # none configured: no i=


def test_rsa_and_ed25519_side_by_side() -> None:
    cfg = config(entry("example.com", keys=("rsa", "ed")), keys=(rsa_key(), ed_key()))
    out = sign(MESSAGE, cfg)
    assert out.status == "signed" and out.keys == ("rsa", "ed") and len(out.signatures) == 2
    assert [tags(v)["a"] for v in out.signatures] == ["rsa-sha256", "ed25519-sha256"]
    final = signed_message(MESSAGE, out)
    records = zone(rsa_key(), ed_key())
    assert ours(final, records) == ["pass", "pass"]
    assert dkimpy_verifies(final, records) == [True, True]


# --- how it signs -----------------------------------------------------------------------------


def test_default_tags_relaxed_t_and_no_l_or_x() -> None:
    t = tags(sign().signatures[0])
    assert t["v"] == "1" and t["a"] == "rsa-sha256" and t["c"] == "relaxed/relaxed"
    assert t["d"] == "example.com" and t["s"] == "rsa" and t["t"] == str(int(NOW))
    assert "l" not in t and "x" not in t


def test_expiry_writes_x() -> None:
    cfg = config(entry("example.com"), keys=(rsa_key(),), expire_seconds=7 * 86400)
    out = sign(MESSAGE, cfg)
    assert tags(out.signatures[0])["x"] == str(int(NOW) + 7 * 86400)
    assert ours(signed_message(MESSAGE, out), zone(rsa_key())) == ["pass"]
    # Past x= (and dkimpy's own slop), our verifier says so.
    late = verify_dkim(signed_message(MESSAGE, out), DictResolver(zone(rsa_key())), now=NOW + 9 * 86400)
    assert late[0].result == "policy" and "expired" in late[0].reason


def test_default_headers_and_oversigning() -> None:
    raw = MESSAGE.replace(b"X-Mailer: test\r\n", b"X-Mailer: test\r\nList-Id: <l.example.com>\r\n"
                                                 b"Received: from x by y\r\nTo: Carol <c@example.net>\r\n")
    h = h_list(sign(raw).signatures[0])
    assert h.count("from") == 2  # present once, signed twice
    assert h.count("to") == 3  # present twice
    assert h.count("reply-to") == 1 and h.count("cc") == 1  # absent: signed as absent
    assert h.count("list-id") == 1  # signed, not over-signed
    assert "sender" not in h and "list-post" not in h  # absent and not over-signed: left out
    assert "x-mailer" not in h and "received" not in h
    assert set(DEFAULT_OVERSIGN) <= set(h)
    assert set(h) <= set(DEFAULT_HEADERS)


@pytest.mark.parametrize(("added", "still_passes"), [
    (b"Subject: Urgent: new bank details\r\n", False),
    (b"From: ceo@example.com\r\n", False),
    (b"Reply-To: thief@example.org\r\n", False),
    (b"Cc: someone@example.org\r\n", False),
    (b"Content-Type: text/html\r\n", False),
    (b"List-Id: <list.example.org>\r\n", True),  # what a mailing list adds
    (b"X-Spam-Score: 0\r\n", True),
    (b"Received: from relay by mx\r\n", True),
])
def test_a_header_added_after_signing(added: bytes, still_passes: bool) -> None:
    out = sign()
    final = signed_message(MESSAGE, out)
    assert ours(final, zone(rsa_key())) == ["pass"]
    head, _, body = final.partition(b"\r\n\r\n")
    tampered = head + b"\r\n" + added + b"\r\n" + body  # appended at the bottom of the header
    assert ours(tampered, zone(rsa_key())) == (["pass"] if still_passes else ["fail"])
    assert dkimpy_verifies(tampered, zone(rsa_key())) == [still_passes]


def test_header_list_overrides() -> None:
    cfg = config(entry("example.com"), keys=(rsa_key(),), headers=("from", "subject", "x-mailer"),
                 oversign=("subject",))
    h = h_list(sign(MESSAGE, cfg).signatures[0])
    assert h == ["from", "subject", "subject", "x-mailer"]
    # From is signed even if a hand-built list forgets it
    cfg = config(entry("example.com"), keys=(rsa_key(),), headers=("subject",), oversign=())
    assert h_list(sign(MESSAGE, cfg).signatures[0]) == ["from", "subject"]


@pytest.mark.parametrize("canon", ["relaxed/relaxed", "simple/simple", "relaxed/simple", "simple/relaxed"])
def test_canonicalizations_verify(canon: str) -> None:
    cfg = config(entry("example.com", keys=("rsa", "ed")), keys=(rsa_key(), ed_key()), canonicalization=canon)
    raw = (b"From: =?utf-8?q?Andr=C3=A9?= <andre@example.com>\r\n"
           b"Subject: caf\xc3\xa9 cr\xc3\xa8me \t  br\xc3\xbbl\xc3\xa9e,\r\n"
           b"\tfolded   across\r\n  three lines  \r\n"
           b"To: \xe7\x94\xb0\xe4\xb8\xad <tanaka@example.net>\r\n"
           b"Date: Fri, 27 Nov 2026 12:00:00 +0000\r\n"
           b"\r\n"
           b"8-bit body: \xff\xfe  with trailing space   \r\n\r\n\r\n")
    out = sign(raw, cfg)
    assert out.status == "signed" and all(tags(v)["c"] == canon for v in out.signatures)
    final = signed_message(raw, out)
    records = zone(rsa_key(), ed_key())
    assert ours(final, records) == ["pass", "pass"]
    assert dkimpy_verifies(final, records) == [True, True]


def test_relaxed_survives_refolding_and_simple_does_not() -> None:
    refold: Callable[[bytes], bytes] = lambda m: m.replace(b"Subject: Quarterly figures",  # noqa: E731
                                                           b"Subject:  Quarterly\r\n figures")
    for canon, passes in (("relaxed/relaxed", "pass"), ("simple/simple", "fail")):
        cfg = config(entry("example.com"), keys=(rsa_key(),), canonicalization=canon)
        final = signed_message(MESSAGE, sign(MESSAGE, cfg))
        assert ours(refold(final), zone(rsa_key())) == [passes]


def test_bare_lf_message_signs_as_crlf() -> None:
    lf = MESSAGE.replace(b"\r\n", b"\n")
    headers, body = split_message(MESSAGE)
    lf_tx = Transaction(None, "h", "alice@example.com", headers=tuple(
        Header(h.name, h.value.replace(b"\r\n", b"\n")) for h in headers), body=body.replace(b"\r\n", b"\n"))
    out = sign_message(lf_tx, config(entry("example.com"), keys=(rsa_key(),),
                                     canonicalization="simple/simple"), now=NOW)
    assert ours(signed_message(MESSAGE, out), zone(rsa_key())) == ["pass"]
    assert lf != MESSAGE


def assert_well_folded(value: str) -> None:
    assert not value.startswith((" ", "\t", "DKIM-Signature")) and not value.endswith(("\r\n", " "))
    lines = value.split("\r\n")
    assert "\n" not in value.replace("\r\n", "") and "\r" not in value.replace("\r\n", "")
    assert len("DKIM-Signature: " + lines[0]) <= 78
    for line in lines[1:]:
        assert line[:1] in (" ", "\t") and line.strip(), repr(line)  # continuation, never blank
        assert len(line) <= 78


@pytest.mark.parametrize("bits", [1024, 1536, 2048, 3072])
@pytest.mark.parametrize("domain", ["example.com", "a-long-subdomain-name.of-a-long-domain.example.com"])
def test_signature_value_is_a_folded_header_value(bits: int, domain: str) -> None:
    key = rsa_key(domain=domain, selector="s2026-long-selector-name", bits=bits)
    cfg = config(entry("*"), keys=(key, replace(ed_key(), domain=domain)), canonicalization="simple/simple",
                 expire_seconds=86400)
    cfg = replace(cfg, entries=(entry("*", keys=("rsa", "ed")),))
    out = sign(MESSAGE, cfg)
    for value in out.signatures:
        assert_well_folded(value)
    final = signed_message(MESSAGE, out)
    records = zone(key, replace(ed_key(), domain=domain))
    assert ours(final, records) == ["pass", "pass"]
    assert dkimpy_verifies(final, records) == [True, True]


# --- when it cannot sign ----------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "reason"), [
    (MESSAGE.replace(b"From: Alice <alice@example.com>\r\n", b""), "no From"),
    (b"From: bob@example.com\r\n" + MESSAGE, "2 From"),
    (with_from("alice@example.com, bob@example.com"), "2 addresses"),
    (with_from("Alice <alice@example.com"), "unparseable"),
    (with_from("undisclosed-recipients:;"), "group"),
    (MESSAGE.replace(b"From:", b"From :"), "white space before the colon"),
])
def test_bad_author(raw: bytes, reason: str) -> None:
    headers, body = split_message(raw)
    if b"From :" in raw:  # split_message stops at such a line; an MTA may hand it over as a field
        headers = tuple(Header(b"From ", h.value) if h.name == b"From" else h
                        for h in split_message(MESSAGE)[0])
    out = sign_message(Transaction(None, "h", "alice@example.com", headers=headers, body=body),
                       config(entry("*"), keys=(rsa_key(),)), now=NOW)
    assert out.status == "bad-author" and out.signatures == ()
    assert reason.lower() in out.reason.lower()


def test_unavailable_key_signs_nothing() -> None:
    cfg = config(entry("example.com", keys=("rsa", "ed")), keys=(rsa_key(),),
                 unavailable={"ed": "/k/ed.pem: cannot read: No such file or directory"})
    out = sign(MESSAGE, cfg)
    assert out.status == "key-unavailable" and out.signatures == () and out.keys == ("ed",)
    assert "ed" in out.reason and "No such file" in out.reason
    # A domain whose keys are fine is unaffected
    other = replace(cfg, entries=(entry("example.org", keys=("ed",)), entry("example.com", keys=("rsa",))))
    assert sign(MESSAGE, other).status == "signed"


class _Boom:
    key_type = "rsa"

    def sign(self, digest: bytes) -> object:
        raise RuntimeError("secret-looking detail")


def test_never_raises() -> None:
    broken = SigningKey("ed", "example.com", "ed", "ed25519-sha256", _Boom(), 256)  # type: ignore[arg-type]
    out = sign(MESSAGE, config(entry("*", keys=("ed",)), keys=(broken,)))
    assert out.status == "error" and "RuntimeError" in out.reason and "secret" not in out.reason
    weird = [
        b"",
        b"\r\n\r\n",
        b"From: a@example.com\r\n",
        b"From: a@example.com\r\n\r\n" + bytes(range(256)) * 50,
        b"From: a@example.com\r\nSubject: \x00\xff\r\n \r\n \r\n\r\nbody",
        b"From:\xff@\xfe\r\n\r\n",
        b"From: a@example.com\r\n" + b"X: y\r\n" * 5000 + b"\r\nb",
    ]
    cfg = config(entry("*", keys=("rsa", "ed")), keys=(rsa_key(), ed_key()))
    for raw in weird:
        result = sign_message(tx_of(raw), cfg, now=NOW)
        assert result.status in ("signed", "bad-author")
    bad_settings = replace(cfg, settings=SigningSettings(canonicalization="nonsense"))
    assert sign_message(tx_of(), bad_settings, now=NOW).status == "error"


def test_no_key_material_in_reprs_or_reasons() -> None:
    key = rsa_key()
    d = str(rsa_private().private_numbers().d)
    seed = ed_private().private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                      serialization.NoEncryption())
    texts = [repr(key), repr(ed_key()), repr(config(entry("*"), keys=(key, ed_key()))), str(sign())]
    for text in texts:
        assert d[:20] not in text and base64.b64encode(seed).decode() not in text
        assert "PRIVATE KEY" not in text


# --- dkimpy stays dkimpy ----------------------------------------------------------------------


def test_dkimpy_own_signing_still_works() -> None:
    pem = rsa_private(2048, 1).private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.TraditionalOpenSSL,
                                             serialization.NoEncryption())
    assert dkim.RSASSA_PKCS1_v1_5_sign.authmilter_original is dkim.crypto.RSASSA_PKCS1_v1_5_sign
    sig = dkim.sign(MESSAGE, b"own", b"example.com", pem, include_headers=[b"from", b"subject"])
    own = SigningKey("own", "example.com", "own", "rsa-sha256", RsaSigner(rsa_private(2048, 1)), 2048)
    assert dkimpy_verifies(sig + MESSAGE, zone(own)) == [True]
    # and dkimpy's pure-Python signature is the very one OpenSSL makes (PKCS#1 v1.5 is deterministic)
    ours_sig = sign(MESSAGE, config(entry("*", keys=("own",)), keys=(own,)))
    assert ours(signed_message(MESSAGE, ours_sig), zone(own)) == ["pass"]


def test_reimport_does_not_stack_dispatchers() -> None:
    importlib.reload(signing_module)
    assert dkim.RSASSA_PKCS1_v1_5_sign.authmilter_original is dkim.crypto.RSASSA_PKCS1_v1_5_sign
    key = SigningKey("rsa", "example.com", "rsa", "rsa-sha256", signing_module.RsaSigner(rsa_private()), 2048)
    cfg = signing_module.SigningConfig(entries=(signing_module.SignEntry(("*",), ("rsa",)),),
                                       keys={"rsa": key})
    out = signing_module.sign_message(tx_of(), cfg, now=NOW)
    assert ours(signed_message(MESSAGE, out), zone(rsa_key())) == ["pass"]
    # keys made by the module as first imported are still signed with OpenSSL, not handed to dkimpy
    assert sign().status == "signed"


def test_relaxed_body_shortcut_is_dkimpys_canonicalization() -> None:
    # Every body up to 6 tokens over the characters that matter, and some longer ones, against
    # dkimpy's own relaxed canonicalization (kept as `authmilter_original` by core/dkimpy_fast).
    tokens = (b"a", b" ", b"\t", b"\r\n", b"\r", b"  ")
    relaxed = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    original = relaxed.body_algorithm.canonicalize_body.authmilter_original
    assert relaxed.body_algorithm.canonicalize_body is not original
    bodies = [b"".join(p) for n in range(7) for p in itertools.product(tokens, repeat=n)]
    bodies += [MESSAGE * 3, b"x" * 5000 + b" \r\n\r\n", b"line  two\r\n" * 100, b"\r\n" * 50]
    for body in bodies:
        assert _canonical_body(relaxed, body) == original(body), body


# --- values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("*", "*"),
    ("Example.COM", "example.com"),
    ("*.Example.com.", "*.example.com"),
    ("Alice@Example.com", "alice@example.com"),
    ("bücher.example", "xn--bcher-kva.example"),
])
def test_parse_pattern(text: str, expected: str) -> None:
    assert parse_pattern(text) == expected


@pytest.mark.parametrize("text", ["", "exa mple.com", "*example.com", "mail.*.example.com", "a*@example.com",
                                  "@example.com", "alice@", "example..com", "a@b@example.com", "-x.example"])
def test_patterns_that_can_never_match(text: str) -> None:
    with pytest.raises(ValueError):
        parse_pattern(text)


@pytest.mark.parametrize(("earlier", "later", "covers"), [
    ("*", "a@example.com", True),
    ("example.com", "a@example.com", True),
    ("example.com", "a@sub.example.com", False),
    ("*.example.com", "sub.example.com", True),
    ("*.example.com", "*.sub.example.com", True),
    ("*.example.com", "a@sub.example.com", True),
    ("*.example.com", "example.com", False),
    ("a@example.com", "example.com", False),
    ("example.com", "*", False),
    ("sub.example.com", "*.example.com", False),
])
def test_pattern_covers(earlier: str, later: str, covers: bool) -> None:
    assert pattern_covers(earlier, later) is covers


def test_parse_helpers() -> None:
    assert parse_identity("@Example.COM") == "@example.com"
    assert parse_canonicalization("Relaxed/Simple") == "relaxed/simple"
    for bad in ("relaxed", "relaxed/fancy", "a/b/c"):
        with pytest.raises(ValueError):
            parse_canonicalization(bad)
    for bad in ("example.com", "a b@example.com", "caf\u00e9@example.com"):
        with pytest.raises(ValueError):
            parse_identity(bad)
