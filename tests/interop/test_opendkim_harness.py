"""The OpenDKIM harness is real: dkimpy signatures pass, broken ones fail, keys come from our DNS.

Only dkimpy signatures here; authmilter's own signatures are fed through the same `verify()`
elsewhere.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.dnsserver import DnsServer
from tests.interop.opendkim import OpenDkimVerifier, parse_authentication_results
from tests.mailfactory import Key, ed25519_key, make_message, rsa_key, sign

RSA = rsa_key(2048)
OTHER_RSA = rsa_key(2048, 1)
ED = ed25519_key()


def message_from(domain: str, **kw: object) -> bytes:
    return make_message(from_=f"Alice <alice@{domain}>", message_id=f"<1@{domain}>", **kw)  # type: ignore[arg-type]


def signed_by(domain: str, selector: str, key: Key) -> bytes:
    """A message From `domain`, signed by dkimpy (relaxed/relaxed) with d=domain, s=selector."""
    return sign(message_from(domain), domain=domain, selector=selector, key=key)


def test_rsa_2048_signature_passes(opendkim: OpenDkimVerifier, interop_dns: DnsServer) -> None:
    opendkim.publish_key("rsa.interop.example", "s2048", RSA)
    signed = signed_by("rsa.interop.example", "s2048", RSA)

    verdict = opendkim.check(signed)

    assert verdict.dkim == ["pass"], verdict.headers
    (result,) = verdict.results
    assert result.domain == "rsa.interop.example"
    assert (result.selector, result.algorithm) == ("s2048", "rsa-sha256")
    assert any("2048-bit key" in c for c in result.comments), result.comments
    # The key came from our DNS server, not from anywhere else.
    assert interop_dns.query_count("s2048._domainkey.rsa.interop.example", "TXT") >= 1


def test_altered_body_fails(opendkim: OpenDkimVerifier) -> None:
    opendkim.publish_key("body.interop.example", "sel", RSA)
    signed = signed_by("body.interop.example", "sel", RSA)
    assert opendkim.verify(signed) == ["pass"]

    tampered = signed.replace(b"See you.", b"See you later.")
    assert tampered != signed

    (result,) = opendkim.check(tampered).results
    assert result.result == "fail"
    assert result.reason == "signature verification failed"


def test_altered_signed_header_fails(opendkim: OpenDkimVerifier) -> None:
    opendkim.publish_key("head.interop.example", "sel", RSA)
    signed = signed_by("head.interop.example", "sel", RSA)
    assert opendkim.verify(signed.replace(b"Subject: Hello", b"Subject: Hullo")) == ["fail"]


def test_ed25519_signature_passes(opendkim: OpenDkimVerifier) -> None:
    opendkim.publish_key("ed.interop.example", "ed", ED)
    signed = signed_by("ed.interop.example", "ed", ED)

    (result,) = opendkim.check(signed).results

    assert result.result == "pass"
    assert result.algorithm == "ed25519-sha256"
    # And a tampered body fails with Ed25519 too: the key is really used.
    assert opendkim.verify(signed.replace(b"Hi Bob", b"Hi Eve")) == ["fail"]


def test_two_signatures_two_results_top_down(opendkim: OpenDkimVerifier) -> None:
    domain = "dual.interop.example"
    opendkim.publish_key(domain, "rsa", RSA)
    opendkim.publish_key(domain, "ed", ED)
    msg = message_from(domain)
    ed_on_top = sign(sign(msg, domain=domain, selector="rsa", key=RSA), domain=domain, selector="ed", key=ED)
    rsa_on_top = sign(sign(msg, domain=domain, selector="ed", key=ED), domain=domain, selector="rsa", key=RSA)

    verdict = opendkim.check(ed_on_top)
    assert verdict.dkim == ["pass", "pass"]
    assert [r.algorithm for r in verdict.results] == ["ed25519-sha256", "rsa-sha256"]
    assert len(verdict.headers) == 1  # one Authentication-Results with a resinfo per signature

    assert [r.algorithm for r in opendkim.check(rsa_on_top).results] == ["rsa-sha256", "ed25519-sha256"]
    assert opendkim.verify(ed_on_top.replace(b"See you.", b"Bye.")) == ["fail", "fail"]


def test_each_signature_judged_on_its_own(opendkim: OpenDkimVerifier) -> None:
    domain = "mixed.interop.example"
    opendkim.publish_key(domain, "good", RSA)
    signed = sign(signed_by(domain, "good", RSA), domain=domain, selector="unpublished", key=ED)

    results = opendkim.check(signed).results

    assert [(r.selector, r.result) for r in results] == [("unpublished", "fail"), ("good", "pass")]
    assert results[0].reason == "key not found in DNS"


@pytest.mark.parametrize("canon", ["relaxed/relaxed", "simple/simple", "relaxed/simple", "simple/relaxed"])
def test_canonicalizations_pass(opendkim: OpenDkimVerifier, canon: str) -> None:
    head, body = (c.encode() for c in canon.split("/"))
    domain = "canon.interop.example"
    opendkim.publish_key(domain, "sel", RSA)
    # A folded header (handed to the milter with LF between its lines, as Postfix does) and
    # trailing whitespace in the body: where simple and relaxed differ.
    msg = message_from(domain, extra_headers=(b"X-Folded: first part\r\n\tsecond part",),
                       body=b"Hi Bob,  \r\n\r\nSee you.\r\n\r\n")
    signed = sign(msg, domain=domain, selector="sel", key=RSA, canonicalize=(head, body),
                  headers=[b"from", b"to", b"subject", b"date", b"message-id", b"x-folded"])
    assert f"c={canon}".encode() in signed.replace(b"\r\n", b"").replace(b"\t", b"")

    assert opendkim.verify(signed) == ["pass"]


@pytest.mark.parametrize(("canon", "expected"), [("simple/simple", "fail"), ("relaxed/relaxed", "pass")])
def test_canonicalization_really_applied(opendkim: OpenDkimVerifier, canon: str, expected: str) -> None:
    """Whitespace changed in transit breaks simple and not relaxed: OpenDKIM honours c=."""
    head, body = (c.encode() for c in canon.split("/"))
    domain = "canon2.interop.example"
    opendkim.publish_key(domain, "sel", RSA)
    signed = sign(message_from(domain), domain=domain, selector="sel", key=RSA, canonicalize=(head, body))
    reflowed = signed.replace(b"Subject: Hello", b"Subject:  Hello").replace(b"See you.", b"See  you.")
    assert opendkim.verify(reflowed) == [expected]


def test_unsigned_message_is_none(opendkim: OpenDkimVerifier) -> None:
    assert opendkim.verify(message_from("nosig.interop.example")) == ["none"]


def test_republished_key_is_seen_at_once(opendkim: OpenDkimVerifier) -> None:
    """Nothing is cached between messages, so module-scoped use cannot see a stale key."""
    domain = "rotate.interop.example"
    signed = signed_by(domain, "sel", RSA)
    assert opendkim.verify(signed) == ["fail"]  # not published yet
    opendkim.publish_key(domain, "sel", RSA)
    assert opendkim.verify(signed) == ["pass"]
    opendkim.publish_key(domain, "sel", OTHER_RSA)
    assert opendkim.verify(signed) == ["fail"]


@pytest.mark.parametrize("domain", ["sig.test", "sig.invalid"])
def test_rfc6761_names_reach_our_dns(opendkim: OpenDkimVerifier, interop_dns: DnsServer,
                                     domain: str) -> None:
    """libunbound would answer these itself; the verifier's unbound file hands them to our server."""
    opendkim.publish_key(domain, "sel", RSA)
    signed = signed_by(domain, "sel", RSA)
    assert opendkim.verify(signed) == ["pass"]
    assert interop_dns.query_count(f"sel._domainkey.{domain}", "TXT") >= 1


def test_concurrent_callers_are_serialised(opendkim: OpenDkimVerifier) -> None:
    domain = "threads.interop.example"
    opendkim.publish_key(domain, "sel", RSA)
    signed = signed_by(domain, "sel", RSA)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: opendkim.verify(signed), range(12)))
    assert results == [["pass"]] * 12


def test_unix_socket_transport(opendkim_installed: str, interop_dns: DnsServer) -> None:
    domain = "unix.interop.example"
    with OpenDkimVerifier(interop_dns, transport="unix") as verifier:
        verifier.publish_key(domain, "sel", ED)
        signed = signed_by(domain, "sel", ED)
        assert verifier.verify(signed) == ["pass"]
        workdir = verifier.workdir
    assert verifier.proc is None
    assert not workdir.exists()


def test_parse_authentication_results() -> None:
    value = (' mx.example;\n\tdkim=fail reason="signature verification failed" (2048-bit key;'
             ' (nested) unprotected) header.d=a.example header.s = sel header.b=abc;\n\tdkim-atps=neutral;'
             ' spf=pass smtp.mailfrom=a.example')
    authserv, resinfos = parse_authentication_results(value)
    assert authserv == "mx.example"
    assert resinfos == [
        ("dkim", "fail", {"reason": "signature verification failed", "header.d": "a.example",
                          "header.s": "sel", "header.b": "abc"}, ("2048-bit key; (nested) unprotected",)),
        ("dkim-atps", "neutral", {}, ()),
        ("spf", "pass", {"smtp.mailfrom": "a.example"}, ()),
    ]
    assert parse_authentication_results("mx.example; none") == ("mx.example", [])
