"""Tests for authmilter.core.signing.arc: ARC sets that dkimpy's validator accepts, and the rules.

Every chain we build is checked with dkimpy's own `dkim.ARC(...).verify`, public keys from an
in-memory dict. dkimpy reports a chain whose newest seal says cv=fail as (None, ..., "reported
failure, the chain is terminated"): RFC 8617 5.2 calls that result "fail".

dkimpy's ARC validator accepts a=rsa-sha256 only (`dkim.ARC_HASH_ALGORITHMS`), although its DKIM
code verifies Ed25519. Tests of Ed25519 seals add ed25519-sha256 to that table for their own
duration (`ed25519_arc`), so dkimpy's ARC code checks them with its DKIM Ed25519 verifier; one
test records that, unpatched, dkimpy refuses them.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization

from authmilter.core.message import split_message
from authmilter.core.model import Header
from authmilter.core.signing.arc import (
    AAR,
    AMS,
    AS,
    INSTANCE_LIMIT,
    ArcSealOutcome,
    seal_message,
)
from authmilter.core.signing.dkim import RsaSigner, SigningKey
from tests.unit.test_signing import ed_key, record, rsa_key, rsa_private

NOW = float(int(time.time()))

MESSAGE = (b"From: Alice <alice@example.com>\r\n"
           b"To: List <list@lists.example.org>\r\n"
           b"Subject: Quarterly figures\r\n"
           b"Date: Fri, 27 Nov 2026 12:00:00 +0000\r\n"
           b"Message-ID: <1@example.com>\r\n"
           b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=x; h=from; bh=AAAA; b=BBBB\r\n"
           b"Authentication-Results: mx.example.net; spf=pass\r\n"
           b"Received: from client.example.com by mx.example.net\r\n"
           b"\r\n"
           b"Hi all,\r\n\r\nThe figures are attached.\r\n")

HOP1 = "mx.example.net"
HOP2 = "lists.example.org"


def ar(authserv_id: str, *results: str) -> str:
    """An Authentication-Results value laid out as build_authentication_results lays it out."""
    return authserv_id + "".join(";\r\n\t" + r for r in results)


def seal(message: bytes, key: SigningKey, *, cv: str, authserv_id: str = HOP1,
         results: Sequence[str] = ("arc=none", "spf=pass smtp.mailfrom=example.com"),
         include_headers: Sequence[bytes] | None = None, now: float = NOW) -> ArcSealOutcome:
    return seal_message(message, key, authserv_id=authserv_id, auth_results=ar(authserv_id, *results),
                        cv=cv, now=now, include_headers=include_headers)


def inserted(message: bytes, outcome: ArcSealOutcome) -> bytes:
    """The message as the MTA passes it on: each field inserted at the top in the order given."""
    assert outcome.status == "sealed", outcome.reason
    for name, value in outcome.headers:
        message = f"{name}: {value}\r\n".encode() + message
    return message


def dns(*keys: SigningKey) -> dict[str, bytes]:
    return {k.record_name: record(k) for k in keys}


def arc_verify(message: bytes, records: Mapping[str, bytes]) -> tuple[Any, list[dict[str, Any]], str]:
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.decode().rstrip("."))

    cv, results, reason = dkim.ARC(message).verify(dnsfunc=dnsfunc)
    return cv, results, reason


def newest_set_alone_verifies(message: bytes, records: Mapping[str, bytes]) -> dict[str, Any]:
    """dkimpy's checks of the newest set on the message with the older sets removed: the scope
    RFC 8617 5.1.2 gives the AS of a cv=fail set. (dkimpy selects the fields it hashes from the
    whole message, so the older sets have to go for its AS check to see that scope.)"""
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.decode().rstrip("."))

    fields, body = split_message(message)
    highest, _ = dkim.ARC(message).sorted_arc_headers()

    def older(h: Header) -> bool:
        m = dkim.ARC.INSTANCE_RE.search(h.value)
        return h.name.lower() in dkim.ARC.ARC_HEADERS and (m is None or int(m.group(1)) != highest)

    alone = b"".join(h.raw() for h in fields if not older(h)) + b"\r\n" + body
    d = dkim.ARC(alone)
    _, arc_headers = d.sorted_arc_headers()
    result: dict[str, Any] = d.verify_instance(arc_headers, highest, dnsfunc=dnsfunc)
    return result


def tags(value: str) -> dict[str, str]:
    unfolded = re.sub(r"\r\n[ \t]+", " ", value)
    return {k.strip(): v.strip() for k, _, v in (t.partition("=") for t in unfolded.split(";") if t.strip())}


@pytest.fixture
def ed25519_arc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(dkim.ARC_HASH_ALGORITHMS, b"ed25519-sha256", hashlib.sha256)
    yield


RSA1 = rsa_key("hop1", "example.net", "arc1")
RSA2 = rsa_key("hop2", "lists.example.org", "arc2", n=1)
ED1 = ed_key("hop1ed", "example.net", "arced")
ZONE = dns(RSA1, RSA2, ED1)


# --- one hop, two hops ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", [RSA1, ED1], ids=["rsa", "ed25519"])
@pytest.mark.usefixtures("ed25519_arc")
def test_first_seal_verifies_with_dkimpy(key: SigningKey) -> None:
    out = seal(MESSAGE, key, cv="none")
    assert (out.status, out.instance, out.cv) == ("sealed", 1, "none")
    cv, results, reason = arc_verify(inserted(MESSAGE, out), ZONE)
    assert cv == dkim.CV_Pass, reason
    assert results[0]["ams-valid"] and results[0]["as-valid"]


def test_header_order_contract() -> None:
    out = seal(MESSAGE, RSA1, cv="none")
    assert [name for name, _ in out.headers] == [AAR, AMS, AS]
    # Inserted each at the top in that order, the set reads AS, AMS, AAR from the top.
    top = [line.split(b":")[0] for line in inserted(MESSAGE, out).split(b"\r\n")[:20]
           if line[:1] not in (b" ", b"\t")][:3]
    assert top == [b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results"]


def test_second_hop_with_another_key_and_domain_verifies() -> None:
    hop1 = inserted(MESSAGE, seal(MESSAGE, RSA1, cv="none"))
    out = seal(hop1, RSA2, cv="pass", authserv_id=HOP2,
               results=("arc=pass", "dkim=pass header.d=example.com"))
    assert (out.status, out.instance, out.cv) == ("sealed", 2, "pass")
    hop2 = inserted(hop1, out)
    cv, results, reason = arc_verify(hop2, ZONE)
    assert cv == dkim.CV_Pass, reason
    checks = [(r["instance"], r["ams-valid"], r["as-valid"]) for r in results]
    assert checks == [(2, True, True), (1, True, True)]
    assert [r["as-domain"] for r in results] == [b"lists.example.org", b"example.net"]


def test_dkimpy_refuses_ed25519_arc_unpatched() -> None:
    # Why RSA keys are the ones to seal with (see the module docstring of arcseal).
    cv, _, reason = arc_verify(inserted(MESSAGE, seal(MESSAGE, ED1, cv="none")), ZONE)
    assert cv == dkim.CV_Fail and "unknown signature algorithm" in reason


@pytest.mark.usefixtures("ed25519_arc")
def test_mixed_algorithms_along_the_chain() -> None:
    hop1 = inserted(MESSAGE, seal(MESSAGE, ED1, cv="none"))
    hop2 = inserted(hop1, seal(hop1, RSA2, cv="pass", authserv_id=HOP2))
    cv, _, reason = arc_verify(hop2, ZONE)
    assert cv == dkim.CV_Pass, reason


def test_body_changed_after_sealing_fails() -> None:
    hop1 = inserted(MESSAGE, seal(MESSAGE, RSA1, cv="none"))
    changed = hop1.replace(b"The figures are attached.", b"The figures are NOT attached.")
    cv, results, reason = arc_verify(changed, ZONE)
    assert cv == dkim.CV_Fail
    assert "ARC-Message-Signature did not validate" in reason
    assert results[0]["ams-valid"] is False


def test_seal_added_after_a_change_covers_the_change_but_the_chain_says_who_saw_what() -> None:
    # A list that rewrites the body and seals: its AMS is over the new body (what ARC is for);
    # the first hop's AAR still says what the original looked like.
    hop1 = inserted(MESSAGE, seal(MESSAGE, RSA1, cv="none"))
    footer = hop1 + b"-- \r\nlist footer\r\n"
    hop2 = inserted(footer, seal(footer, RSA2, cv="pass", authserv_id=HOP2))
    cv, results, reason = arc_verify(hop2, ZONE)
    assert cv == dkim.CV_Pass, reason
    assert results[0]["ams-valid"]


# --- failed and broken chains -------------------------------------------------------------------


def test_failed_chain_is_sealed_fail_over_our_set_only_and_then_fails() -> None:
    hop1 = inserted(MESSAGE, seal(MESSAGE, RSA1, cv="none"))
    broken = hop1.replace(b"The figures", b"The figurines")  # hop 2's validator says fail
    out = seal(broken, RSA2, cv="fail", authserv_id=HOP2, results=("arc=fail",))
    assert (out.status, out.instance, out.cv) == ("sealed", 2, "fail")
    assert tags(out.headers[2][1])["cv"] == "fail"
    hop2 = inserted(broken, out)
    cv, _, reason = arc_verify(hop2, ZONE)
    assert cv in (None, dkim.CV_Fail) and cv != dkim.CV_Pass
    assert "reported failure" in reason
    # 5.1.2: our AS covers our set alone; dkimpy's checks of that scope agree.
    alone = newest_set_alone_verifies(hop2, ZONE)
    assert alone["ams-valid"] and alone["as-valid"]
    # And a third hop does not extend it.
    third = seal(hop2, RSA1, cv="fail")
    assert third.status == "skipped" and "already failed" in third.reason


def test_pass_claimed_for_a_structurally_broken_chain_is_sealed_fail() -> None:
    hop1 = inserted(MESSAGE, seal(MESSAGE, RSA1, cv="none"))
    no_ams = re.sub(rb"ARC-Message-Signature: .*?\r\n(?=\S)", b"", hop1, flags=re.S)
    assert b"ARC-Message-Signature" not in no_ams
    out = seal(no_ams, RSA2, cv="pass", authserv_id=HOP2)
    assert (out.status, out.instance, out.cv) == ("sealed", 2, "fail")
    assert "broken chain" in out.reason and "arc-message-signature" in out.reason


def test_duplicate_set_and_gap_are_broken() -> None:
    hop1 = inserted(MESSAGE, seal(MESSAGE, RSA1, cv="none"))
    doubled = inserted(hop1, seal(MESSAGE, RSA1, cv="none"))  # a second i=1 set
    out = seal(doubled, RSA2, cv="pass", authserv_id=HOP2)
    assert (out.instance, out.cv) == (2, "fail")
    gap = hop1.replace(b"i=1;", b"i=2;")  # sets claim i=2 with no i=1
    out = seal(gap, RSA2, cv="pass", authserv_id=HOP2)
    assert (out.instance, out.cv) == (3, "fail")


def test_cv_none_with_a_chain_present_is_sealed_fail() -> None:
    hop1 = inserted(MESSAGE, seal(MESSAGE, RSA1, cv="none"))
    out = seal(hop1, RSA2, cv="none", authserv_id=HOP2)
    assert (out.status, out.instance, out.cv) == ("sealed", 2, "fail")


@pytest.mark.parametrize("cv", ["pass", "fail"])
def test_chain_status_without_a_chain_is_an_error(cv: str) -> None:
    out = seal(MESSAGE, RSA1, cv=cv)
    assert out.status == "error" and "no ARC set" in out.reason and out.headers == ()


def test_unreadable_instances_are_a_broken_chain_not_a_hang() -> None:
    junk = b"ARC-Seal: i=99999999999999999999999; cv=none; a=rsa-sha256; b=; d=x; s=y\r\n" + MESSAGE
    out = seal(junk, RSA1, cv="pass")
    assert (out.status, out.instance, out.cv) == ("sealed", 1, "fail")
    huge = b"ARC-Seal: i=9999; cv=pass; a=rsa-sha256; b=; d=x; s=y\r\n" + MESSAGE
    start = time.process_time()
    out = seal(huge, RSA1, cv="pass")
    assert out.status == "skipped" and out.instance == 10000
    assert time.process_time() - start < 5  # no walk over 9999 instances (a loose bound: no timing claim)


# --- the 50-set limit -----------------------------------------------------------------------------


@pytest.mark.usefixtures("ed25519_arc")  # Ed25519: 50 seals in a few milliseconds
def test_fifty_sets_then_skipped() -> None:
    message = MESSAGE
    for i in range(1, INSTANCE_LIMIT + 1):
        out = seal(message, ED1, cv="none" if i == 1 else "pass", now=NOW + i)
        assert (out.status, out.instance) == ("sealed", i), out.reason
        message = inserted(message, out)
    cv, results, reason = arc_verify(message, ZONE)
    assert cv == dkim.CV_Pass and len(results) == INSTANCE_LIMIT, reason
    out = seal(message, ED1, cv="pass")
    assert (out.status, out.instance, out.headers) == ("skipped", INSTANCE_LIMIT + 1, ())
    assert "limit of 50" in out.reason


# --- what the set says ----------------------------------------------------------------------------


def test_tags_and_header_lists() -> None:
    out = seal(MESSAGE, RSA1, cv="none", now=1_700_000_000.7)
    aar, ams, as_ = (value for _, value in out.headers)
    assert aar.startswith(f"i=1; {HOP1};\r\n\tarc=none;")
    t = tags(ams)
    assert "v" not in t and t["i"] == "1" and t["t"] == "1700000000" and t["c"] == "relaxed/relaxed"
    assert (t["a"], t["d"], t["s"]) == ("rsa-sha256", "example.net", "arc1")
    signed = [h.strip() for h in t["h"].split(":")]
    assert "dkim-signature" in signed and signed.count("from") == 2  # over-signed
    assert not {"authentication-results", "arc-seal", "arc-message-signature", "arc-authentication-results",
                "received"} & set(signed)
    assert next(iter(t)) == "i" and next(iter(tags(as_))) == "i"  # RFC 8617's grammar: instance first
    s = tags(as_)
    assert set(s) == {"i", "a", "t", "cv", "d", "s", "b"}  # no h=, no c=
    assert (s["i"], s["cv"], s["t"]) == ("1", "none", "1700000000")
    for _, value in out.headers[1:]:
        assert all(len(line) <= 78 for line in value.split("\r\n"))


def test_include_headers() -> None:
    out = seal(MESSAGE, RSA1, cv="none", include_headers=[b"From", b"subject", b"x-absent"])
    assert [h.strip() for h in tags(out.headers[1][1])["h"].split(":")] == ["from", "subject", "x-absent"]
    cv, _, reason = arc_verify(inserted(MESSAGE, out), ZONE)
    assert cv == dkim.CV_Pass, reason
    for bad, why in (([b"subject"], "must sign From"), ([b"from", b"ARC-Seal"], "ARC fields"),
                     ([b"from", b"arc-authentication-results"], "ARC fields"),
                     ([b"from", b"ARC-Message-Signature"], "ARC fields"),
                     ([b"from", b"authentication-results"], "Authentication-Results"),
                     ([b"from", b"bad name"], "not a header field name")):
        out = seal(MESSAGE, RSA1, cv="none", include_headers=bad)
        assert out.status == "error" and why in out.reason


def test_auth_results_must_be_ours_and_stay_one_field() -> None:
    def with_ar(value: str, authserv_id: str = HOP1) -> ArcSealOutcome:
        return seal_message(MESSAGE, RSA1, authserv_id=authserv_id, auth_results=value, cv="none", now=NOW)

    assert with_ar("MX.Example.NET; spf=pass").status == "sealed"  # case-insensitive (RFC 8601)
    assert with_ar('"mx example"; spf=pass', authserv_id="mx example").status == "error"  # id has a space
    assert with_ar("mx.example.net (comment); spf=pass").status == "sealed"
    assert with_ar("mx.example.net;\n\tspf=pass").headers[0][1] == "i=1; mx.example.net;\r\n\tspf=pass"
    for value in ("other.example; spf=pass", "mx.example.net.evil; spf=pass", "spf=pass",
                  "mx.example.net; spf=pass\r\nX-Injected: yes", "mx.example.net; spf=pass\rx"):
        out = with_ar(value)
        assert out.status == "error", value


def test_bad_cv_and_algorithm_are_errors() -> None:
    assert seal(MESSAGE, RSA1, cv="temperror").status == "error"
    odd = SigningKey("odd", "example.net", "odd", "rsa-sha1", RSA1.signer, 2048)
    out = seal(MESSAGE, odd, cv="none")
    assert out.status == "error" and "rsa-sha1" in out.reason


def test_never_raises_on_odd_messages() -> None:
    for raw in (b"", b"\x00\xff\xfe", b"no header at all\r\n", b"From: a@b\n\nbare LF\n",
                b"ARC-Seal: \r\n" + MESSAGE, b"ARC-Authentication-Results: x\r\n" + MESSAGE):
        out = seal(raw, RSA1, cv="none")
        assert out.status in ("sealed", "error"), (raw, out)


# --- no key material, ever -----------------------------------------------------------------------


class _LeakySigner(RsaSigner):
    """A key whose failure message quotes the key, as a careless library might."""

    def sign_prehashed_sha256(self, digest: bytes) -> bytes:
        raise ValueError(self._pem().decode())

    def _pem(self) -> bytes:
        return rsa_private().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())


def test_no_key_material_in_reasons() -> None:
    leaky = SigningKey("leaky", "example.net", "arc1", "rsa-sha256", _LeakySigner(rsa_private()), 2048)
    pem = leaky.signer._pem()  # type: ignore[union-attr]
    body = b"".join(pem.split(b"\n")[1:-2])
    numbers = rsa_private().private_numbers()
    secrets = {body[:40].decode(), str(numbers.d)[:40], str(numbers.p)[:40],
               base64.b64encode(numbers.d.to_bytes(256, "big"))[:40].decode()}
    outcomes = [seal(MESSAGE, leaky, cv="none"), seal(MESSAGE, RSA1, cv="bogus"),
                seal(MESSAGE, RSA1, cv="pass"), seal_message(MESSAGE, RSA1, authserv_id=HOP1,
                                                             auth_results="x; y", cv="none", now=NOW)]
    assert outcomes[0].status == "error"
    assert outcomes[0].reason == "sealing with key leaky failed: ValueError"
    for out in outcomes:
        text = repr(out) + out.reason
        assert not any(s in text for s in secrets), out
        assert "PRIVATE KEY" not in text
    assert "PRIVATE" not in repr(RSA1) and "RsaSigner" not in repr(RSA1)


# --- cost -----------------------------------------------------------------------------------------


def test_cpu_cost_of_one_seal_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    line = b"Please find the figures attached; the caf\xc3\xa9 budget is unchanged since June.\r\n"
    big = MESSAGE + line * (10 * 1024 // len(line))
    seal(big, RSA1, cv="none")  # warm-up
    n = 50
    start = time.process_time()
    for _ in range(n):
        out = seal(big, RSA1, cv="none")
    per_seal = (time.process_time() - start) / n
    assert out.status == "sealed"
    with capsys.disabled():
        print(f"\nARC seal, RSA-2048, {len(big) // 1024} KB message: {per_seal * 1000:.3f} ms CPU per seal")


def test_header_split_shortcut_agrees_with_split_message() -> None:
    # arcseal reads only the header section line by line; it must cut messages as split_message does.
    import random

    from authmilter.core.signing.arc import _split

    rng = random.Random(8617)
    parts = [b"From: a\r\n", b"X: b\r\n", b" cont\r\n", b"\r\n", b"\n", b"body\r\n", b"not a field\r\n",
             b"\r", b"Y:z\n", b"\t\r\n", b"ARC-Seal: i=1\r\n", b""]
    for _ in range(20000):
        raw = b"".join(rng.choice(parts) for _ in range(rng.randint(0, 8)))
        assert _split(raw) == split_message(raw), raw
