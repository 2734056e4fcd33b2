"""The core end to end: transaction + resolver object in, verdict out. No sockets."""

from __future__ import annotations

import pytest

import authmilter.core.evaluate as evaluate_module
from authmilter.core.dnsapi import DnsAnswer
from authmilter.core.evaluate import TEMPFAIL_REPLY, EvalSettings, evaluate
from authmilter.core.message import split_message
from authmilter.core.model import Action, HeaderDelete, HeaderInsert, Transaction
from tests.integration.zones import example_org
from tests.mailfactory import make_message, rsa_key, sign
from tests.zoneresolver import ZoneResolver

AUTHSERV = "mx.test.example"


def tx_for(message: bytes, *, ip: str = "192.0.2.10", mail_from: str = "alice@example.org",
           helo: str = "mail.example.org") -> Transaction:
    headers, body = split_message(message)
    return Transaction(client_ip=ip, helo=helo, mail_from=mail_from, headers=headers, body=body)


def resolver() -> ZoneResolver:
    return ZoneResolver([example_org()])


def test_all_pass_gives_accept_and_one_header_on_top() -> None:
    msg = sign(make_message(), domain="example.org", selector="rsa", key=rsa_key())
    v = evaluate(tx_for(msg), resolver(), EvalSettings(), AUTHSERV)
    assert v.action is Action.ACCEPT and v.reply is None and not v.errors
    assert v.header_inserts == (HeaderInsert(0, "Authentication-Results", v.authentication_results),)
    assert v.results is not None
    assert v.results.spf is not None and v.results.spf.effective.result == "pass"
    assert [d.result for d in v.results.dkim] == ["pass"]
    assert v.results.dmarc is not None and v.results.dmarc.result == "pass"
    assert v.authentication_results.startswith(AUTHSERV + ";")


def test_forged_results_are_listed_for_deletion() -> None:
    msg = make_message(extra_headers=(b"Authentication-Results: mx.test.example; dmarc=pass",))
    v = evaluate(tx_for(msg), resolver(), EvalSettings(), AUTHSERV)
    assert v.header_deletes == (HeaderDelete("Authentication-Results", 1),)


class BrokenResolver:
    """A resolver with a bug in it: every check must read that as a temporary DNS failure."""

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        raise RuntimeError("resolver bug")


def test_raising_resolver_is_temperror_everywhere() -> None:
    msg = sign(make_message(), domain="example.org", selector="rsa", key=rsa_key())
    v = evaluate(tx_for(msg), BrokenResolver(), EvalSettings(), AUTHSERV)
    assert v.action is Action.ACCEPT and v.results is not None
    assert v.results.spf is not None and v.results.spf.effective.result == "temperror"
    assert [d.result for d in v.results.dkim] == ["temperror"]
    assert v.results.dmarc is not None and v.results.dmarc.result == "temperror"


def _explode(*args: object, **kw: object) -> None:
    raise ValueError("bug in a check")


def test_exception_during_evaluation_gives_fail_safe_tempfail(monkeypatch: pytest.MonkeyPatch) -> None:
    # A bug inside a check stands in for any exception the checks might one day raise.
    monkeypatch.setattr(evaluate_module, "verify_dkim", _explode)
    msg = sign(make_message(), domain="example.org", selector="rsa", key=rsa_key())
    v = evaluate(tx_for(msg), resolver(), EvalSettings(), AUTHSERV)
    assert v.action is Action.TEMPFAIL and v.reply == TEMPFAIL_REPLY
    assert v.reply.code == "451" and v.reply.status == "4.7.1"
    assert v.authentication_results == "" and v.header_inserts == ()
    assert v.errors and "bug in a check" in v.errors[0]


def test_fail_safe_accept_still_deletes_forged_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluate_module, "evaluate_dmarc", _explode)
    # An author domain with no DMARC record: one with p=reject is tempfailed instead (test_spoofing).
    msg = make_message(from_="a@nodmarc.example",
                       extra_headers=(b"Authentication-Results: (x) \"MX.TEST.EXAMPLE\"; spf=pass",))
    v = evaluate(tx_for(msg), resolver(), EvalSettings(fail_safe="accept"), AUTHSERV)
    assert v.action is Action.ACCEPT
    assert v.header_inserts == () and v.authentication_results == ""
    assert v.header_deletes == (HeaderDelete("Authentication-Results", 1),)


def test_forged_scan_failure_tempfails_even_with_fail_safe_accept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluate_module, "forged_headers", _explode)
    v = evaluate(tx_for(make_message()), resolver(), EvalSettings(fail_safe="accept"), AUTHSERV)
    assert v.action is Action.TEMPFAIL and v.header_inserts == ()


def test_exception_while_deciding_is_fail_safe_not_accept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluate_module, "decide", _explode)
    msg = sign(make_message(), domain="example.org", selector="rsa", key=rsa_key())
    v = evaluate(tx_for(msg), resolver(), EvalSettings(), AUTHSERV)
    assert v.action is Action.TEMPFAIL and v.reply == TEMPFAIL_REPLY
    assert v.results is not None  # the checks ran; only the decision broke
    assert v.errors and "bug in a check" in v.errors[0]
