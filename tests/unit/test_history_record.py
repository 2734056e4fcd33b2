"""The history record of a verdict: what it keeps, and its JSON form read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authmilter.core.decision import Stage, decide
from authmilter.core.evaluate import EvalSettings, evaluate
from authmilter.core.history import HistoryError, dumps, facts_from, loads, record_for
from authmilter.core.message import split_message
from authmilter.core.model import Transaction
from authmilter.files.policy import load_policy
from tests.integration.zones import example_net, example_org, zone
from tests.mailfactory import make_message, rsa_key, sign
from tests.zoneresolver import ZoneResolver

ROOT = Path(__file__).resolve().parent.parent.parent
POLICY = load_policy([ROOT / "policies" / "default.toml"])


def reporting_zone() -> str:
    return zone("report.example", """
_dmarc IN TXT "v=DMARC1; p=quarantine; sp=reject; np=reject; t=y; fo=1:d:x; rua=mailto:agg@report.example; ruf=mailto:f@report.example,https://bad.example/x"
@ IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
""")


def resolver() -> ZoneResolver:
    return ZoneResolver([example_org(), example_net(), reporting_zone()])


def run(message: bytes, *, ip: str = "192.0.2.10", mail_from: str = "alice@example.org",
        rcpts: tuple[str, ...] = ("bob@mx.test", "carol@other.test", "dave@mx.test")):  # type: ignore[no-untyped-def]
    headers, body = split_message(message)
    tx = Transaction(client_ip=ip, helo="mail.example.org", mail_from=mail_from, rcpts=rcpts,
                     headers=headers, body=body, queue_id="4ABC")
    verdict = evaluate(tx, resolver(), EvalSettings(), "mx.test", POLICY)
    return tx, verdict


def test_a_passing_message_keeps_its_results_and_policy() -> None:
    tx, v = run(sign(make_message(), domain="example.org", selector="rsa", key=rsa_key()))
    r = record_for(tx, v, 1_700_000_000.7)
    assert r is not None
    assert r.time == 1_700_000_000 and r.client_ip == "192.0.2.10" and r.queue_id == "4ABC"
    assert r.envelope_from == "example.org" and r.header_from == "example.org"
    assert r.envelope_to == ("mx.test", "other.test")
    assert [(s.domain, s.scope, s.result) for s in r.spf] == [("example.org", "mfrom", "pass"),
                                                              ("mail.example.org", "helo", "fail")]
    assert [(d.domain, d.selector, d.result) for d in r.dkim] == [("example.org", "rsa", "pass")]
    assert r.dmarc == "pass" and r.dkim_aligned and r.spf_aligned
    assert r.policy is not None and r.policy.domain == "example.org" and r.policy.p == "reject"
    assert r.disposition == "pass" and r.override == "" and r.action == "accept"
    assert r.reportable
    assert r.facts["dmarc"] == "pass" and r.facts["stage"] == "eom"


def test_failure_under_testing_is_sampled_out_with_rua_ruf_and_fo() -> None:
    msg = make_message(from_="CEO <ceo@report.example>")
    tx, v = run(msg, ip="203.0.113.9", mail_from="x@elsewhere.invalid")
    r = record_for(tx, v, 1.0)
    assert r is not None and r.dmarc == "fail"
    assert r.policy is not None
    assert r.policy.testing and r.policy.sp == "reject" and r.policy.np == "reject"
    assert r.policy.rua == ("mailto:agg@report.example",)
    assert r.policy.ruf == ("mailto:f@report.example", "https://bad.example/x")
    assert r.policy.fo == "1:d"  # x is no option
    # t=y: the domain asked for quarantine in test mode, so "none" applies and the message is
    # delivered; the report says the policy was not applied because of testing.
    assert r.action == "accept" and r.requested == "none"
    assert r.disposition == "none" and r.override == ""


def test_reject_is_reported_as_reject_without_override() -> None:
    msg = make_message()  # From example.org, p=reject, unsigned
    tx, v = run(msg, ip="203.0.113.9", mail_from="x@example.net")
    r = record_for(tx, v, 1.0)
    assert r is not None and r.dmarc == "fail" and r.action == "reject"
    assert r.disposition == "reject" and r.override == "" and r.rule == "dmarc-reject"


@pytest.mark.parametrize("message, ip, mail_from", [
    (make_message(from_="CEO <ceo@report.example>"), "203.0.113.9", "x@elsewhere.invalid"),
    (make_message(from_="Eve <eve@example.org>"), "203.0.113.9", "x@example.org"),
])
def test_every_kept_value_survives_the_round_trip(message: bytes, ip: str, mail_from: str) -> None:
    # The JSON line leaves out empty and default values; what loads puts back must be what
    # was there, with and without sp/np/fo/rua/ruf, rule and override.
    tx, v = run(message, ip=ip, mail_from=mail_from)
    r = record_for(tx, v, 7.0)
    assert r is not None
    back = loads(dumps(r))
    assert back == r
    data = json.loads(dumps(r))
    assert all(value not in ("", None, []) for value in data["pol"].values())
    assert ("rule" in data) == bool(r.rule) and ("ovr" in data) == bool(r.override)


def test_json_round_trip_and_facts_decide_the_same() -> None:
    tx, v = run(make_message(), ip="203.0.113.9", mail_from="x@example.net")
    r = record_for(tx, v, 5.0)
    assert r is not None
    text = dumps(r)
    assert "\n" not in text and "alice" not in text and "bob@" not in text  # no local parts kept
    back = loads(text)
    assert back == r
    facts = facts_from(back.facts)
    assert facts.stage is Stage.EOM
    assert v.decision is not None and facts == v.decision.facts
    assert decide(POLICY, facts).action.value == r.action


@pytest.mark.parametrize("text, why", [
    ("[]", "not a JSON object"),
    ('{"v": 99}', "version 99"),
    ('{"v": 1, "t": 1}', "malformed"),
    ("not json", "malformed"),
])
def test_unreadable_records_raise_history_error(text: str, why: str) -> None:
    with pytest.raises(HistoryError, match=why):
        loads(text)


def test_unknown_fact_keys_from_a_newer_writer_are_left_out() -> None:
    tx, v = run(make_message())
    r = record_for(tx, v, 5.0)
    assert r is not None
    data = json.loads(dumps(r))
    data["facts"]["some_future_fact"] = "x"
    facts = facts_from(loads(json.dumps(data)).facts)
    assert not hasattr(facts, "some_future_fact")
