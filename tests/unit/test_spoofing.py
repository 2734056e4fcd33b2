"""Ways a spoofed From of a p=reject domain has got, or could get, past a DMARC milter.

Each test names the bypass it closes. The victim is example.org (p=reject, SPF for 192.0.2.0/24,
an RSA key); the attacker sends from 203.0.113.66 as evil.example, whose SPF allows anything and
which publishes no DMARC record. The shipped default policy decides, as it would on a new install.
The same messages go through the real milter and `authmilter check` in
tests/integration/test_spoofing_milter.py.
"""

from __future__ import annotations

import dkim
import pytest

import authmilter.core.evaluate as evaluate_module
from authmilter.core.evaluate import EvalSettings, evaluate, evaluate_transaction
from authmilter.core.message import split_message
from authmilter.core.model import Action, Header, HeaderDelete, Transaction, Verdict
from authmilter.files.policy import load_policy
from tests.integration.zones import example_org, zone
from tests.mailfactory import make_message, rsa_key, sign
from tests.milterclient import ROOT
from tests.zoneresolver import ZoneResolver

AUTHSERV = "mx.test.example"
DEFAULT_POLICY = load_policy([ROOT / "policies" / "default.toml"])
ATTACKER_IP = "203.0.113.66"


def evil_example() -> str:
    return zone("evil.example", '@ IN TXT "v=spf1 +all"\nmail IN TXT "v=spf1 +all"\n')


def resolver() -> ZoneResolver:
    return ZoneResolver([example_org(), evil_example()])


def run(message: bytes, *, mail_from: str = "eve@evil.example", helo: str = "mail.evil.example",
        ip: str = ATTACKER_IP, fail_safe: str = "tempfail", dns: ZoneResolver | None = None) -> Verdict:
    headers, body = split_message(message)
    tx = Transaction(client_ip=ip, helo=helo, mail_from=mail_from, rcpts=("bob@example.com",),
                     headers=headers, body=body)
    return evaluate_transaction(tx, dns or resolver(), EvalSettings(fail_safe=fail_safe), AUTHSERV,
                                DEFAULT_POLICY)


def message(*lines: bytes) -> bytes:
    return b"\r\n".join((*lines, b"Subject: invoice", b"Date: Fri, 27 Nov 2026 12:00:00 +0000",
                         b"Message-ID: <1@evil.example>")) + b"\r\n\r\npay now\r\n"


def rejected(v: Verdict) -> bool:
    return v.action is Action.REJECT and v.reply is not None and v.reply.code == "550"


# --- white space between field name and colon (RFC 5322 section 4.5, obs-optional) --------------


@pytest.mark.parametrize("colon", [b" :", b"\t:", b" \t :", b"\x0b:", b"\x0c:", b"\r:"],
                         ids=["space", "tab", "mixed", "vtab", "formfeed", "cr"])
@pytest.mark.parametrize("order", ["attacker-first", "victim-first"])
def test_obs_from_is_a_second_from(colon: bytes, order: str) -> None:
    ours, theirs = b"From: a@evil.example", b"From" + colon + b" ceo@example.org"
    v = run(message(*((ours, theirs) if order == "attacker-first" else (theirs, ours))))
    assert v.results is not None and v.results.author.error == "2 From header fields"
    assert rejected(v) and v.decision is not None and v.decision.rule == "bad-from"


@pytest.mark.parametrize("colon", [b" :", b"\t:"])
def test_obs_from_alone_is_the_author(colon: bytes) -> None:
    v = run(message(b"From" + colon + b" ceo@example.org"))
    assert v.results is not None and v.results.author.domain == "example.org"
    assert v.results.dmarc is not None and v.results.dmarc.result == "fail"
    assert rejected(v) and v.decision is not None and v.decision.rule == "dmarc-reject"


def test_a_signature_does_not_cover_an_obs_from_put_on_top() -> None:
    # The victim's genuine signed mail, replayed with the attacker's From on top written the old
    # way: DKIM's extra From (a second From is always hashed) must see it, whatever c= says.
    genuine = make_message(from_="ceo@example.org")
    for canon in ((b"simple", b"simple"), (b"relaxed", b"relaxed")):
        signed = sign(genuine, domain="example.org", selector="rsa", key=rsa_key(), canonicalize=canon)
        v = run(b"From : a@evil.example\r\n" + signed)
        assert v.results is not None and [d.result for d in v.results.dkim] == ["fail"], canon
        assert rejected(v)


def test_signed_header_written_the_old_way_still_verifies() -> None:
    # h= selects "Subject :" as Subject under simple canonicalization too: the bytes as written are
    # hashed, so the signature of a sender whose software writes the old form holds.
    msg = make_message(from_="ceo@example.org").replace(b"Subject: Hello", b"Subject : Hello")
    headers, body = split_message(msg)
    signer = dkim.DKIM(None)  # dkimpy's own parser refuses the old form, so hand it the fields
    signer.headers, signer.body = [(h.name, h.value + b"\r\n") for h in headers], body
    sig = signer.sign(b"rsa", b"example.org", rsa_key().private_pem, canonicalize=(b"simple", b"simple"),
                      include_headers=[b"from", b"subject", b"date"])
    assert b"subject" in sig.split(b"h=", 1)[1].split(b";", 1)[0]
    v = run(sig + msg, mail_from="ceo@example.org", helo="mail.example.org", ip="192.0.2.10")
    assert v.results is not None and [d.result for d in v.results.dkim] == ["pass"]
    assert v.action is Action.ACCEPT


@pytest.mark.parametrize("name", [b"Authentication-Results :", b"authentication-results\t:"])
def test_forged_results_with_obs_name_are_deleted(name: bytes) -> None:
    forged = name + b" mx.test.example; dmarc=pass header.from=example.org"
    v = run(message(b"From: a@evil.example", forged, b"Authentication-Results: other.example; spf=pass"))
    assert v.header_deletes == (HeaderDelete("Authentication-Results", 1),)


def test_arc_fields_with_obs_names_are_arc_fields() -> None:
    # A lone, malformed ARC-Seal written the old way is a broken chain (fail), not "no chain".
    v = run(message(b"ARC-Seal : i=1; a=rsa-sha256; cv=none; d=evil.example; s=x; b=AAAA",
                    b"From: a@evil.example"))
    assert v.results is not None and v.results.arc is not None and v.results.arc.result == "fail"


# --- NUL bytes ----------------------------------------------------------------------------------


def test_nul_in_from_reads_as_the_mta_hands_it_over() -> None:
    # libmilter and Postfix carry a header value up to its first NUL (tests/e2e: Postfix delivers
    # "From: eve@evil.example" too), so the victim's address behind it is in no message anyone
    # reads. check reads the file the same way, and both judge evil.example.
    v = run(message(b"From: eve@evil.example\x00, ceo@example.org"))
    assert v.results is not None and v.results.author.domain == "evil.example"
    assert v.results.dmarc is not None and v.results.dmarc.domain == "evil.example"
    assert "example.org" not in v.authentication_results.replace("evil.example", "")


# --- encoded words with charsets Python refuses -----------------------------------------------


@pytest.mark.parametrize("charset", ["idna", "undefined", "rot13", "x-unknown", "utf-7", "punycode"])
@pytest.mark.parametrize("where", ["display", "comment"])
@pytest.mark.parametrize("fail_safe", ["tempfail", "accept"])
def test_refused_charset_in_display_name_is_text(charset: str, where: str, fail_safe: str) -> None:
    word = f"=?{charset}?b?w7/+?=".encode()
    if where == "display":
        frm = b"From: " + word + b" <ceo@example.org>"
    else:
        frm = b"From: ceo@example.org (" + word + b")"
    v = run(message(frm), fail_safe=fail_safe)
    assert not v.errors, v.errors
    assert v.results is not None and v.results.author.domain == "example.org"
    assert rejected(v) and v.decision is not None and v.decision.rule == "dmarc-reject"


def test_refused_charset_hiding_an_address_is_refused() -> None:
    # latin-1 stands in for the refused charset, so an address it hides is still seen.
    frm = b"From: =?idna?q?=3Cceo=40example=2Eorg=3E?= <a@evil.example>"
    v = run(message(frm))
    assert v.results is not None and v.results.author.error is not None
    assert rejected(v) and v.decision is not None and v.decision.rule == "bad-from"


# --- fail_safe = "accept" never waves an enforcing domain through ------------------------------


def _explode(*args: object, **kw: object) -> None:
    raise UnicodeError("a check broke on this message")


@pytest.mark.parametrize("frm", [b"From: ceo@example.org", b"From: \"CEO\" <ceo@example.org>",
                                 b"From: ceo@sub.example.org", b"From : ceo@EXAMPLE.org."])
def test_fail_safe_accept_tempfails_mail_from_an_enforcing_domain(
        monkeypatch: pytest.MonkeyPatch, frm: bytes) -> None:
    monkeypatch.setattr(evaluate_module, "verify_arc", _explode)
    v = run(message(frm), fail_safe="accept")
    assert v.action is Action.TEMPFAIL and v.reply is not None and v.reply.code == "451"
    assert "tempfail although fail_safe is accept" in v.reason and v.header_inserts == ()


def test_fail_safe_accept_tempfails_when_the_policy_cannot_be_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluate_module, "verify_arc", _explode)
    dns = resolver()
    dns.set_fault("_dmarc.evil.example", "servfail")
    v = run(message(b"From: eve@evil.example"), fail_safe="accept", dns=dns)
    assert v.action is Action.TEMPFAIL and "DNS temporary error" in v.reason


def test_fail_safe_accept_still_accepts_other_mail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluate_module, "verify_arc", _explode)
    v = run(message(b"From: eve@evil.example"), fail_safe="accept")
    assert v.action is Action.ACCEPT and v.header_inserts == () and v.errors


def test_fail_safe_accept_after_a_failed_decision_reads_the_dmarc_result(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluate_module, "decide", _explode)
    headers, body = split_message(message(b"From: ceo@example.org"))
    tx = Transaction(client_ip=ATTACKER_IP, helo="x", mail_from="eve@evil.example", headers=headers,
                     body=body)
    v = evaluate(tx, resolver(), EvalSettings(fail_safe="accept"), AUTHSERV, DEFAULT_POLICY)
    assert v.action is Action.TEMPFAIL and "example.org publishes p=reject" in v.reason


# --- the peers' CVEs, as regression tests ----------------------------------------------------------


@pytest.mark.parametrize("froms", [
    (b"From: a@evil.example", b"From: ceo@example.org"),
    (b"From: ceo@example.org", b"From: a@evil.example"),
    (b"From: a@evil.example, ceo@example.org",),
    (b"From: ceo@example.org,a@evil.example",),
    (b"From: a@evil.example", b"From: a@evil.example"),
])
def test_cve_2019_16378_multiple_from(froms: tuple[bytes, ...]) -> None:
    # OpenDMARC evaluated only one of several From fields or addresses: the other was the spoof.
    v = run(message(*froms))
    assert rejected(v) and v.decision is not None and v.decision.rule == "bad-from"


@pytest.mark.parametrize("hidden", [
    b" invoice\rFrom: The CEO <ceo@example.org>",
    b" invoice\nFrom : ceo@example.org",
    b" invoice\r\nfrom:ceo@example.org",
])
def test_a_from_hidden_behind_a_bare_line_break_is_a_second_from(hidden: bytes) -> None:
    # Found by benchmarks/fuzz.py: an MTA that hands over a value with a bare CR or LF (Sendmail
    # keeps them; Postfix makes a bare CR a space) delivers a From line a client may show.
    headers = [Header(b"From", b" eve@evil.example"), Header(b"Subject", hidden),
               Header(b"Date", b" Fri, 27 Nov 2026 12:00:00 +0000")]
    tx = Transaction(client_ip=ATTACKER_IP, helo="mail.evil.example", mail_from="eve@evil.example",
                     rcpts=("bob@example.com",), headers=headers, body=b"pay now\r\n")
    v = evaluate_transaction(tx, resolver(), EvalSettings(), AUTHSERV, DEFAULT_POLICY)
    assert rejected(v) and v.decision is not None and v.decision.rule == "bad-from"


def test_folding_before_from_text_is_no_hidden_from() -> None:
    headers = [Header(b"From", b" eve@evil.example"),
               Header(b"Subject", b" re:\r\n From: ceo@example.org"),
               Header(b"Date", b" Fri, 27 Nov 2026 12:00:00 +0000")]
    tx = Transaction(client_ip=ATTACKER_IP, helo="mail.evil.example", mail_from="eve@evil.example",
                     rcpts=("bob@example.com",), headers=headers, body=b"hi\r\n")
    v = evaluate_transaction(tx, resolver(), EvalSettings(), AUTHSERV, DEFAULT_POLICY)
    assert v.results is not None and v.results.author is not None
    assert v.results.author.domain == "evil.example"


def test_cve_2019_20790_helo_spf_is_not_the_dmarc_identity() -> None:
    # OpenDMARC let an SPF pass for the HELO name align with From when MAIL FROM failed. Here the
    # HELO name is the victim's own authorised host, the IP its, and MAIL FROM the attacker's
    # domain, which fails SPF from that IP.
    dns = ZoneResolver([example_org(), zone("strict.example", '@ IN TXT "v=spf1 -all"\n')])
    v = run(message(b"From: ceo@example.org"), mail_from="x@strict.example", helo="mail.example.org",
            ip="192.0.2.1", dns=dns)
    assert v.results is not None and v.results.spf is not None
    assert v.results.spf.helo is not None and v.results.spf.helo.result == "pass"
    assert v.results.dmarc is not None and v.results.dmarc.result == "fail"
    assert not v.results.dmarc.spf_aligned and rejected(v)


@pytest.mark.parametrize("injected", [
    b"Authentication-Results: mx.test.example; spf=pass smtp.mailfrom=example.org",
    b"Authentication-Results: evil.example; spf=pass smtp.mailfrom=ceo@example.org(",
    b"Authentication-Results: mx.test.example (comment; dmarc=pass); dmarc=pass header.from=example.org",
    b"Authentication-Results: (x\r\n mx.test.example) \"MX.TEST.EXAMPLE.\"; dkim=pass header.d=example.org",
])
def test_cve_2020_12272_results_injection(injected: bytes) -> None:
    # OpenDMARC took SPF results from Authentication-Results fields a sender wrote. We read no one
    # else's results, and delete those that claim our authserv-id, however they are spelt.
    v = run(message(injected, b"From: ceo@example.org"))
    assert v.results is not None and v.results.dmarc is not None and v.results.dmarc.result == "fail"
    assert rejected(v)
    claims_ours = b"mx.test.example" in injected.lower().split(b";")[0]
    assert bool(v.header_deletes) == claims_ours


@pytest.mark.parametrize("frm", [
    b"From:", b"From: ", b"From: ,", b"From: , ,", b"From: <>", b"From: <>, <>", b"From: \"\" <>",
    b"From: @", b"From: a@", b"From: @example.org", b"From: <@example.org>", b"From: a@example.org,",
    b"From: (", b"From: \"", b"From: <", b"From: " + b"(" * 5000 + b"a@example.org",
    b"From: " + b"a" * 100_000 + b"@example.org", b"From: ceo@" + b"x." * 2000 + b"example.org",
    b"From: =?utf-8?b?" + b"A" * 50_000 + b"?= <ceo@example.org>", b"From: \\\xff\xfe<ceo@example.org>",
])
def test_cve_2020_12460_and_2021_34555_crafted_from_fields(frm: bytes) -> None:
    # OpenDMARC crashed (a heap overflow, a NULL dereference on a multi-valued From) on From fields
    # like these. Each one here ends in a decision without an internal error, and none of them
    # lets example.org's p=reject be skipped: either the author is refused (bad-from) or DMARC is
    # judged for the domain found.
    v = run(message(frm))
    assert not v.errors, v.errors
    assert v.results is not None
    if v.results.author.domain is None:
        assert rejected(v) and v.decision is not None and v.decision.rule == "bad-from"
    elif v.results.author.domain.endswith("example.org"):
        assert rejected(v)
