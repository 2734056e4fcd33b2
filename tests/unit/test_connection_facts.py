"""iprev and HELO through the core: facts at each stage, early rules, reuse of what is known, the
default policy, and what `check --json`, `--explain` and the log line show. No sockets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from authmilter.core.decision import CONDITION_KEYS, Stage, decide, explain, facts_for
from authmilter.core.decision.rules import rule_problems
from authmilter.core.evaluate import EvalSettings, early_verdict, evaluate, evaluate_transaction
from authmilter.core.message import split_message
from authmilter.core.model import Action, EarlyResults, HeloResult, IprevResult, Transaction
from authmilter.files.policy import load_policy, parse_policy
from authmilter.observe.verdicts import log_fields, verdict_to_dict
from tests.integration.zones import example_org
from tests.mailfactory import make_message, rsa_key, sign
from tests.zoneresolver import ZoneResolver, zone_text

ROOT = Path(__file__).resolve().parents[2]
AUTHSERV = "mx.test.example"
PTR_NAME = "10.2.0.192.in-addr.arpa"
NEW_KEYS = ("iprev", "iprev_host", "helo_syntax_ok", "helo_fqdn", "helo_bare_ip", "helo_literal_mismatch",
            "helo_is_ours")


def dns() -> ZoneResolver:
    """192.0.2.10 is mail.example.org and back; 192.0.2.20 claims a name that is not its own."""
    return ZoneResolver([
        example_org(),
        zone_text("rdns.example", {"mail": "A 192.0.2.10", "liar": "A 192.0.2.99"}),
        zone_text("2.0.192.in-addr.arpa", {"10": "PTR mail.rdns.example.", "20": "PTR liar.rdns.example."}),
    ])


def tx(client_ip: str = "192.0.2.10", helo: str = "mail.rdns.example", message: bytes | None = None,
       **kw: object) -> Transaction:
    headers, body = split_message(message or sign(make_message(), domain="example.org", selector="rsa",
                                                  key=rsa_key()))
    base: dict[str, object] = dict(client_ip=client_ip, helo=helo, mail_from="alice@example.org",
                                   rcpts=("bob@example.com",), headers=headers, body=body,
                                   macros={"j": "mx.test.example", "{daemon_addr}": "198.51.100.1"})
    base.update(kw)
    return Transaction(**base)  # type: ignore[arg-type]


IPREV_EARLY = b"""
[[rules]]
name = "no-rdns"
when = { iprev = ["fail", "permerror"] }
stage = "mail"
action = "reject"
"""

HELO_EARLY = b"""
[[rules]]
name = "helo-is-ours"
when = { helo_is_ours = true }
stage = "mail"
action = "reject"
"""


# --- facts -------------------------------------------------------------------------------------------


def test_facts_are_not_known_until_the_results_are_handed_in() -> None:
    f = facts_for(tx(), None, Stage.MAIL)
    assert all(f.value(k) is None for k in NEW_KEYS)
    assert f.render("iprev") == "(not known yet)"


def test_facts_from_the_results() -> None:
    iprev = IprevResult("pass", "192.0.2.10", "Mail.RDNS.example", ("mail.rdns.example",))
    helo = HeloResult("[192.0.2.1]", True, False, False, True, True, False)
    f = facts_for(tx(), None, Stage.MAIL, iprev=iprev, helo=helo)
    assert (f.iprev, f.iprev_host) == ("pass", "mail.rdns.example")
    assert (f.helo_syntax_ok, f.helo_fqdn, f.helo_bare_ip, f.helo_literal_mismatch, f.helo_is_ours) == (
        True, False, False, True, False)


def test_only_a_confirmed_name_is_a_host() -> None:
    failed = IprevResult("fail", "192.0.2.20", "", ("liar.rdns.example",))
    f = facts_for(tx(), None, Stage.MAIL, iprev=failed)
    assert f.iprev_host == ""
    p = parse_policy("p.toml", b'[[rules]]\nname = "x"\nwhen = { iprev_host = ".rdns.example" }\n'
                               b'stage = "mail"\naction = "reject"\n')
    assert decide(p, f).deferred  # no match: nothing acts early
    assert decide(p, facts_for(tx(), None, Stage.MAIL, iprev=IprevResult(
        "pass", "192.0.2.10", "mail.rdns.example"))).rule == "x"


def test_iprev_temperror_is_not_a_temperror_of_the_authentication_checks() -> None:
    f = facts_for(tx(), None, Stage.MAIL, iprev=IprevResult("temperror", "192.0.2.10"))
    assert f.iprev == "temperror" and f.temperror is None  # SPF not known: "not known yet", not true


def test_new_keys_are_known_from_mail_from_and_documented() -> None:
    readme = (ROOT / "policies" / "README.md").read_text()
    for key in NEW_KEYS:
        assert CONDITION_KEYS[key].known_at is Stage.MAIL
        assert re.search(rf"^\| `{key}` \|[^|]*\| MAIL FROM \|", readme, re.M), key
    p = parse_policy("p.toml", IPREV_EARLY + HELO_EARLY.replace(b'"helo-is-ours"', b'"h"'))
    assert [rule_problems(r) for r in p.rules] == [[], []]


@pytest.mark.parametrize("value", ["softfail", "neutral"])
def test_iprev_accepts_only_its_own_results(value: str) -> None:
    from authmilter.files.policy import PolicyError
    with pytest.raises(PolicyError, match="is not one of: pass, fail, temperror, permerror, none"):
        parse_policy("p.toml", IPREV_EARLY.replace(b'["fail", "permerror"]', f'"{value}"'.encode()))


# --- early rules and reuse -----------------------------------------------------------------------------


def test_policy_says_when_iprev_is_needed_early() -> None:
    assert parse_policy("p.toml", IPREV_EARLY).needs_early_iprev
    assert not parse_policy("p.toml", HELO_EARLY).needs_early_iprev
    monitored = parse_policy("p.toml", IPREV_EARLY + b"monitor = true\n")
    assert not monitored.needs_early_iprev
    # An earlier rule on iprev must be decidable for a later early rule to get its turn.
    before = parse_policy("p.toml", b'[[rules]]\nname = "ok"\nwhen = { iprev = "pass" }\naction = "accept"\n'
                          + HELO_EARLY)
    assert before.needs_early_iprev
    assert not load_policy([ROOT / "policies" / "default.toml"]).needs_early_iprev


def test_iprev_rule_refuses_at_mail_from() -> None:
    resolver = dns()
    p = parse_policy("p.toml", IPREV_EARLY)
    verdict, known = early_verdict(tx(client_ip="192.0.2.20"), resolver, EvalSettings(), p, Stage.MAIL,
                                   authserv_id=AUTHSERV)
    assert verdict is not None and (verdict.action, verdict.stage) == (Action.REJECT, "mail")
    assert verdict.decision is not None and verdict.decision.rule == "no-rdns"
    assert known.iprev is not None and known.iprev.result == "fail"
    assert verdict.results is not None and verdict.results.iprev == known.iprev
    ok, known = early_verdict(tx(), resolver, EvalSettings(), p, Stage.MAIL, authserv_id=AUTHSERV)
    assert ok is None and known.iprev is not None and known.iprev.host == "mail.rdns.example"


def test_helo_rule_refuses_at_mail_from_without_any_lookup() -> None:
    resolver = dns()
    p = parse_policy("p.toml", HELO_EARLY)
    verdict, known = early_verdict(tx(helo="MX.test.example"), resolver, EvalSettings(), p, Stage.MAIL,
                                   authserv_id=AUTHSERV)
    assert verdict is not None and verdict.action is Action.REJECT
    assert known.helo is not None and known.helo.is_ours and known.iprev is None
    assert resolver.total_queries() == 0
    # Our address from the MTA's {daemon_addr} counts as well.
    verdict, _ = early_verdict(tx(helo="[198.51.100.1]"), resolver, EvalSettings(), p, Stage.MAIL)
    assert verdict is not None and verdict.action is Action.REJECT


def test_no_early_rule_means_no_early_lookup() -> None:
    resolver = dns()
    p = load_policy([ROOT / "policies" / "default.toml"])
    verdict, known = early_verdict(tx(), resolver, EvalSettings(), p, Stage.MAIL)
    assert verdict is None and known == EarlyResults()
    assert resolver.total_queries() == 0


def test_iprev_is_looked_up_once_per_transaction() -> None:
    resolver = dns()
    p = parse_policy("p.toml", IPREV_EARLY.replace(b'stage = "mail"', b'stage = "rcpt"'))
    v = evaluate_transaction(tx(rcpts=("a@example.com", "b@example.com")), resolver, EvalSettings(),
                             AUTHSERV, p)
    assert v.action is Action.ACCEPT and v.results is not None and v.results.iprev is not None
    assert v.results.iprev.result == "pass"
    assert resolver.query_count(PTR_NAME, "PTR") == 1
    assert resolver.query_count("mail.rdns.example", "A") == 1


def test_evaluate_reuses_what_is_known_and_reports_it() -> None:
    resolver = dns()
    known = EarlyResults(iprev=IprevResult("pass", "192.0.2.10", "cached.rdns.example"))
    v = evaluate(tx(), resolver, EvalSettings(), AUTHSERV, known=known)
    assert v.results is not None and v.results.iprev is known.iprev
    assert resolver.query_count(PTR_NAME, "PTR") == 0
    assert "iprev=pass policy.iprev=192.0.2.10 (cached.rdns.example);" in v.authentication_results


def test_every_message_gets_an_iprev_clause_first() -> None:
    v = evaluate(tx(client_ip="203.0.113.5", mail_from="x@example.net"), dns(), EvalSettings(), AUTHSERV)
    lines = v.authentication_results.split(";\r\n\t")
    assert lines[1] == 'iprev=permerror reason="no PTR record (NXDOMAIN)" policy.iprev=203.0.113.5'
    assert lines[2].startswith("spf=")


# --- the shipped default policy does not act on these facts -------------------------------------------


def test_default_policy_never_looks_at_iprev_or_helo() -> None:
    text = (ROOT / "policies" / "default.toml").read_text()
    p = load_policy([ROOT / "policies" / "default.toml"])
    assert not any(c.key in NEW_KEYS for r in p.rules for c in r.when)
    assert not [k for k in NEW_KEYS if k in text]


@pytest.mark.parametrize(("client_ip", "helo"), [
    ("203.0.113.5", "203.0.113.5"),  # no PTR record, bare IP
    ("192.0.2.20", "mx.test.example"),  # PTR name does not confirm, HELO claims to be us
    ("192.0.2.20", "[198.51.100.7]"),  # a literal that is not the client's
    ("192.0.2.20", "localhost"),
])
def test_default_policy_accepts_good_mail_whatever_rdns_and_helo_say(client_ip: str, helo: str) -> None:
    p = load_policy([ROOT / "policies" / "default.toml"])
    # SPF fails for these addresses, but the DKIM signature aligns: DMARC passes.
    v = evaluate_transaction(tx(client_ip=client_ip, helo=helo), dns(), EvalSettings(), AUTHSERV, p)
    assert v.action is Action.ACCEPT and v.decision is not None and v.decision.rule is None
    assert v.results is not None and v.results.iprev is not None
    assert v.results.iprev.result in ("fail", "permerror")


def test_default_policy_does_not_tempfail_an_iprev_temperror() -> None:
    resolver = dns()
    resolver.set_fault(PTR_NAME, "servfail")
    p = load_policy([ROOT / "policies" / "default.toml"])
    v = evaluate_transaction(tx(), resolver, EvalSettings(), AUTHSERV, p)
    assert v.action is Action.ACCEPT
    assert v.results is not None and v.results.iprev is not None and v.results.iprev.result == "temperror"
    assert "iprev=temperror" in v.authentication_results


# --- check --json, --explain, the log line --------------------------------------------------------------


def test_json_explain_and_log_line_show_both() -> None:
    p = parse_policy("p.toml", HELO_EARLY.replace(b'stage = "mail"\n', b"monitor = true\n"))
    v = evaluate_transaction(tx(helo="[192.0.2.99]"), dns(), EvalSettings(), AUTHSERV, p)
    out = verdict_to_dict(v)
    assert out["iprev"] == {"result": "pass", "ip": "192.0.2.10", "host": "mail.rdns.example",
                            "ptr_names": ["mail.rdns.example"], "reason": ""}
    assert out["helo"] == {"name": "[192.0.2.99]", "syntax_ok": True, "fqdn": False, "bare_ip": False,
                           "literal": True, "literal_mismatch": True, "is_ours": False,
                           "reason": "the address 192.0.2.99 is not the client's (192.0.2.10)"}
    assert v.decision is not None
    lines = explain(v.decision)
    assert any(re.fullmatch(r"\s+iprev\s+pass", line) for line in lines)
    assert any(re.fullmatch(r"\s+iprev_host\s+mail\.rdns\.example", line) for line in lines)
    assert any(re.fullmatch(r"\s+helo_literal_mismatch\s+true", line) for line in lines)
    assert any(re.fullmatch(r"\s+helo_is_ours\s+false", line) for line in lines)
    fields = log_fields(v, queue_id="Q1", client_ip="192.0.2.10", helo="[192.0.2.99]", mail_from="a@b")
    assert fields["iprev"] == "pass:mail.rdns.example"
    assert fields["helo_flags"] == "literal-mismatch"


def test_log_line_is_quiet_about_a_plain_helo_and_names_what_is_not() -> None:
    def fields(client_ip: str, helo: str) -> dict[str, str]:
        v = evaluate(tx(client_ip=client_ip, helo=helo), dns(), EvalSettings(), AUTHSERV)
        return log_fields(v, queue_id="Q", client_ip=client_ip, helo=helo, mail_from="a@b")

    plain = fields("192.0.2.10", "mail.rdns.example")
    assert "helo_flags" not in plain and plain["iprev"] == "pass:mail.rdns.example"
    assert fields("192.0.2.20", "192.0.2.99")["helo_flags"] == "bare-ip,literal-mismatch"
    assert fields("192.0.2.20", "mx.test.example")["helo_flags"] == "ours"
    assert fields("192.0.2.20", "foo_bar")["helo_flags"] == "invalid"
    assert fields("192.0.2.20", "localhost") == fields("192.0.2.20", "localhost") | {
        "iprev": "fail", "helo_flags": "not-fqdn"}
    assert "iprev" not in fields("", "mail.rdns.example")  # nothing checked: nothing to say
