"""Greylisting, rate limits and DNS lists through the core: rules, stages, the store's answers,
fail-open and fail-closed, the facts at each stage, Authentication-Results and --explain.

The store is a real SQLite file (tmp_path); DNS is an in-memory resolver over zone text, as
for every pure test of the core. Time is stepped by hand through `now`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from authmilter.core.checks.dnslists import DnsList
from authmilter.core.checks.greylist import GreylistSettings
from authmilter.core.checks.ratelimit import RateLimit
from authmilter.core.decision import Stage, explain
from authmilter.core.evaluate import EvalSettings, early_verdict, evaluate_transaction
from authmilter.core.message import split_message
from authmilter.core.model import Action, Transaction, Verdict
from authmilter.core.stateapi import GreyState, RateState, StoreError
from authmilter.files.policy import PolicyError, parse_policy
from authmilter.observe.verdicts import log_fields, verdict_to_dict
from authmilter.store.sqlite import SqliteStore
from tests.integration.zones import example_org
from tests.mailfactory import make_message, rsa_key, sign
from tests.zoneresolver import ZoneResolver, zone_text

T0 = 1_800_000_000.0
AUTHSERV = "mx.test.example"
GREY = GreylistSettings(delay=300.0, retry_window=3600.0, lifetime=86400.0, auto_allow_after=0)

ZEN = DnsList("zen", "zen.example", "ip", {"127.0.0.2": "sbl", "127.0.0.4-127.0.0.7": "xbl"})
WL = DnsList("wl", "wl.example", "ip", {"127.0.10.0-127.0.10.255": "hi"}, allow=True)
DBL = DnsList("dbl", "dbl.example", "domain", {"127.0.1.2": "spam"}, identities=("from",))


def resolver() -> ZoneResolver:
    return ZoneResolver([
        example_org(),
        zone_text("zen.example", {"2.0.0.127": "A 127.0.0.2", "66.2.0.192": "A 127.0.0.4",
                                  "77.2.0.192": "A 127.255.255.254"}),
        zone_text("wl.example", {"2.0.0.127": "A 127.0.10.2", "10.2.0.192": "A 127.0.10.3"}),
        zone_text("dbl.example", {"test": "A 127.0.1.2", "example.org": "A 127.0.1.2"}),
    ])


def message(**kw: object) -> tuple[tuple[object, ...], bytes]:
    return split_message(sign(make_message(**kw), domain="example.org", selector="rsa",  # type: ignore[arg-type]
                              key=rsa_key()))


def tx(client_ip: str = "198.51.100.7", mail_from: str = "news@other.example",
       rcpts: tuple[str, ...] = ("bob@example.com",), **kw: object) -> Transaction:
    headers, body = message()
    base: dict[str, object] = dict(client_ip=client_ip, helo="mail.other.example", mail_from=mail_from,
                                   rcpts=rcpts, headers=headers, body=body, macros={"j": AUTHSERV})
    base.update(kw)
    return Transaction(**base)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "state.db")
    yield s
    s.close()


GREYLIST_ALL = b"""
[[rules]]
name = "greylist"
action = "greylist"
"""


def run(policy: bytes, t: Transaction, store: object, at: float, settings: EvalSettings | None = None
        ) -> Verdict:
    return evaluate_transaction(t, resolver(), settings or EvalSettings(greylist=GREY), AUTHSERV,
                                parse_policy("p.toml", policy), store=store, now=T0 + at)  # type: ignore[arg-type]


# --- greylisting ------------------------------------------------------------------------------------


def test_first_attempt_is_greylisted_then_passes_after_the_delay(store: SqliteStore) -> None:
    first = run(GREYLIST_ALL, tx(), store, 0)
    assert first.action is Action.TEMPFAIL and first.stage == "rcpt"
    assert first.reply is not None and (first.reply.code, first.reply.status) == ("451", "4.7.1")
    assert first.reply.text == "Greylisted, please try again later"
    assert [g.state for g in first.results.greylist] == ["new"]  # type: ignore[union-attr]
    early = run(GREYLIST_ALL, tx(), store, 120)
    assert early.action is Action.TEMPFAIL
    assert early.results.greylist[0].state == "early"  # type: ignore[union-attr]
    assert early.results.greylist[0].wait == pytest.approx(180)  # type: ignore[union-attr]
    passed = run(GREYLIST_ALL, tx(), store, 301)
    assert passed.action is Action.ACCEPT
    assert [g.state for g in passed.results.greylist] == ["passed"]  # type: ignore[union-attr]
    assert verdict_to_dict(passed)["greylist"][0]["state"] == "passed"
    assert log_fields(passed, queue_id="q", client_ip="198.51.100.7", helo="h", mail_from="m")[
        "greylist"] == "passed:bob@example.com"


def test_each_recipient_has_its_own_triplet(store: SqliteStore) -> None:
    run(GREYLIST_ALL, tx(rcpts=("bob@example.com",)), store, 0)
    v = run(GREYLIST_ALL, tx(rcpts=("bob@example.com", "carol@example.com")), store, 400)
    # bob passes; carol is new and refused at RCPT alone, as the MTA drops a refused recipient.
    assert v.action is Action.ACCEPT
    assert [r for r, _ in v.rejected_rcpts] == ["carol@example.com"]
    assert [g.state for g in v.results.greylist] == ["passed"]  # type: ignore[union-attr]


def test_retry_window_closes_and_restarts(store: SqliteStore) -> None:
    run(GREYLIST_ALL, tx(), store, 0)
    late = run(GREYLIST_ALL, tx(), store, 3601 + 1)
    assert late.action is Action.TEMPFAIL
    assert late.results.greylist[0].state == "expired-restart"  # type: ignore[union-attr]


def test_neighbouring_address_in_the_same_24_is_the_same_sender(store: SqliteStore) -> None:
    run(GREYLIST_ALL, tx(client_ip="198.51.100.7"), store, 0)
    assert run(GREYLIST_ALL, tx(client_ip="198.51.100.200"), store, 301).action is Action.ACCEPT
    assert run(GREYLIST_ALL, tx(client_ip="198.51.101.7"), store, 302).action is Action.TEMPFAIL


def test_spf_passing_domain_retries_from_any_address(store: SqliteStore) -> None:
    # example.org's SPF allows 192.0.2.0/24, so both addresses pass SPF for it... and a retry
    # from another network of the same domain also matches, since the key is the domain.
    first = run(GREYLIST_ALL, tx(client_ip="192.0.2.10", mail_from="alice@example.org"), store, 0)
    assert first.results.greylist[0].key.startswith("spf:example.org ")  # type: ignore[union-attr]
    v = run(GREYLIST_ALL, tx(client_ip="192.0.2.99", mail_from="alice@example.org"), store, 301)
    assert v.action is Action.ACCEPT
    by_network = EvalSettings(greylist=replace(GREY, by_spf_domain=False))
    v = run(GREYLIST_ALL, tx(client_ip="192.0.2.10", mail_from="alice@example.org"), store, 302, by_network)
    assert v.results.greylist[0].key.startswith("192.0.2.0/24 ")  # type: ignore[union-attr]


def test_auto_allow_after_passes(store: SqliteStore) -> None:
    settings = EvalSettings(greylist=replace(GREY, auto_allow_after=2))
    for n, rcpt in enumerate(("a@example.com", "b@example.com")):
        run(GREYLIST_ALL, tx(rcpts=(rcpt,)), store, n, settings)
        assert run(GREYLIST_ALL, tx(rcpts=(rcpt,)), store, 400 + n, settings).action is Action.ACCEPT
    fresh = run(GREYLIST_ALL, tx(rcpts=("never-seen@example.com",)), store, 500, settings)
    assert fresh.action is Action.ACCEPT
    assert fresh.results.greylist[0].state == "auto-allowed"  # type: ignore[union-attr]
    elsewhere = run(GREYLIST_ALL, tx(client_ip="203.0.113.5", rcpts=("x@example.com",)), store, 501, settings)
    assert elsewhere.action is Action.TEMPFAIL


def test_authenticated_senders_are_never_greylisted(store: SqliteStore) -> None:
    v = run(GREYLIST_ALL, tx(macros={"j": AUTHSERV, "{auth_authen}": "alice"}), store, 0)
    assert v.action is Action.ACCEPT
    assert v.results.greylist[0].state == "skipped"  # type: ignore[union-attr]


def test_only_suspicious_clients_and_named_exceptions(store: SqliteStore) -> None:
    policy = b"""
[[rules]]
name = "trusted"
when = { client_ip = ["203.0.113.0/24"] }
action = "accept"

[[rules]]
name = "greylist-no-rdns"
when = { iprev = ["fail", "permerror", "temperror"] }
action = "greylist"
"""
    trusted = run(policy, tx(client_ip="203.0.113.9"), store, 0)
    assert trusted.action is Action.ACCEPT and trusted.results.greylist == ()  # type: ignore[union-attr]
    # 198.51.100.7 has no PTR at all: iprev permerror, so it is greylisted.
    v = run(policy, tx(client_ip="198.51.100.7"), store, 0)
    assert v.action is Action.TEMPFAIL and v.results.iprev.result == "permerror"  # type: ignore[union-attr]


def test_a_greylist_rule_that_passes_lets_later_rules_decide(store: SqliteStore) -> None:
    policy = GREYLIST_ALL + b"""
[[rules]]
name = "no-rdns"
when = { iprev = ["permerror"] }
stage = "rcpt"
action = "reject"
"""
    assert run(policy, tx(), store, 0).reply.code == "451"  # type: ignore[union-attr]
    v = run(policy, tx(), store, 301)
    assert v.action is Action.REJECT and v.decision.rule == "no-rdns"  # type: ignore[union-attr]
    trace = [(t.rule, t.outcome, t.note) for t in v.decision.trace]  # type: ignore[union-attr]
    assert trace[0] == ("greylist", "no match", "greylist: passed, let through")


class BrokenStore:
    def greylist(self, *a: object) -> GreyState:
        raise StoreError("connection refused")

    def take_tokens(self, *a: object) -> RateState:
        raise StoreError("connection refused")

    def count(self, *a: object) -> int:
        raise StoreError("connection refused")

    def close(self) -> None:
        pass


def test_store_down_fails_open_by_default() -> None:
    v = run(GREYLIST_ALL, tx(), BrokenStore(), 0, EvalSettings(greylist=replace(GREY, auto_allow_after=3)))
    assert v.action is Action.ACCEPT
    assert v.results.greylist[0].state == "error"  # type: ignore[union-attr]
    assert "connection refused" in v.results.greylist[0].error  # type: ignore[union-attr]


def test_store_down_fails_closed_when_configured() -> None:
    v = run(GREYLIST_ALL, tx(), BrokenStore(), 0, EvalSettings(greylist=GREY, store_on_error="tempfail"))
    assert v.action is Action.TEMPFAIL and v.reply.code == "451"  # type: ignore[union-attr]
    assert "state store unavailable" in v.reason


def test_no_store_at_all_is_an_error_state_not_an_exception() -> None:
    v = run(GREYLIST_ALL, tx(), None, 0)
    assert v.action is Action.ACCEPT and v.results.greylist[0].state == "error"  # type: ignore[union-attr]


def test_greylist_rules_must_act_at_rcpt() -> None:
    assert parse_policy("p.toml", GREYLIST_ALL).rules[0].stage is Stage.RCPT
    for stage in ("mail", "eom"):
        with pytest.raises(PolicyError, match="greylisting acts at RCPT TO"):
            parse_policy("p.toml", GREYLIST_ALL + f'stage = "{stage}"\n'.encode())
    with pytest.raises(PolicyError, match="known only at end of message"):
        parse_policy("p.toml", GREYLIST_ALL + b'when = { dmarc = "fail" }\n')


def test_greylist_state_is_a_fact_at_end_of_message(store: SqliteStore) -> None:
    policy = GREYLIST_ALL + b"""
[[rules]]
name = "mark-retried"
when = { greylist = "passed" }
action = "quarantine"
"""
    run(policy, tx(), store, 0)
    v = run(policy, tx(), store, 301)
    assert v.action is Action.QUARANTINE
    assert v.decision.facts.greylist == ("passed",)  # type: ignore[union-attr]
    lines = explain(v.decision)  # type: ignore[arg-type]
    assert any(line.split() == ["greylist", "passed"] for line in lines)
    assert any("greylisting acted at RCPT TO" in line for line in lines)


# --- rate limits ------------------------------------------------------------------------------------

RATE_POLICY = b"""
[[rules]]
name = "too-fast"
when = { ratelimit = ["per-client"] }
stage = "rcpt"
action = "tempfail"
reply = "rate_limited"
"""


def rates(*limits: RateLimit) -> EvalSettings:
    return EvalSettings(ratelimits=limits)


def test_recipients_beyond_the_rate_are_refused(store: SqliteStore) -> None:
    settings = rates(RateLimit("per-client", "client_ip", rate=2, per=3600))
    v = run(RATE_POLICY, tx(rcpts=("a@x.example", "b@x.example", "c@x.example")), store, 0, settings)
    assert v.action is Action.ACCEPT
    assert [r for r, _ in v.rejected_rcpts] == ["c@x.example"]
    assert v.rejected_rcpts[0][1] is not None
    assert (v.rejected_rcpts[0][1].code, v.rejected_rcpts[0][1].status) == ("450", "4.7.1")
    # A token comes back every 1800 s.
    assert run(RATE_POLICY, tx(rcpts=("d@x.example",)), store, 10, settings).action is Action.TEMPFAIL
    assert run(RATE_POLICY, tx(rcpts=("d@x.example",)), store, 1801, settings).action is Action.ACCEPT


def test_limits_by_direction_and_key(store: SqliteStore) -> None:
    policy = RATE_POLICY.replace(b'["per-client"]', b'["users-out", "world-in"]')
    settings = rates(RateLimit("users-out", "sasl_user", rate=1, per=60, direction="outbound"),
                     RateLimit("world-in", "client_ip", rate=1, per=60, direction="inbound"))
    two = ("a@x.example", "b@x.example")
    # An authenticated user's mail is outbound: counted per SASL user, not per address.
    v = run(policy, tx(rcpts=two, macros={"{auth_authen}": "Alice"}), store, 0, settings)
    assert [r for r, _ in v.rejected_rcpts] == ["b@x.example"]
    assert {r.key for r in v.results.rates} == {"users-out sasl_user alice"}  # type: ignore[union-attr]
    # Another user has a bucket of their own; the world's mail from the same address the other.
    assert run(policy, tx(rcpts=two[:1], macros={"{auth_authen}": "bob"}), store, 1, settings
               ).action is Action.ACCEPT
    v = run(policy, tx(rcpts=two), store, 2, settings)
    assert [r for r, _ in v.rejected_rcpts] == ["b@x.example"]
    assert {r.key for r in v.results.rates} == {"world-in client_ip 198.51.100.7"}  # type: ignore[union-attr]


def test_messages_are_counted_at_mail_from(store: SqliteStore) -> None:
    settings = rates(RateLimit("per-client", "client_network", rate=1, per=3600, count="messages"))
    assert run(RATE_POLICY, tx(client_ip="198.51.100.1"), store, 0, settings).action is Action.ACCEPT
    v = run(RATE_POLICY, tx(client_ip="198.51.100.2"), store, 1, settings)
    assert v.action is Action.TEMPFAIL and v.stage == "rcpt"
    assert v.results.rates[0].key == "per-client client_network 198.51.100.0/24"  # type: ignore[union-attr]


def test_rates_are_counted_even_when_only_an_end_of_message_rule_reads_them(store: SqliteStore) -> None:
    policy = b"""
[[rules]]
name = "flag-fast"
when = { ratelimit = ["per-client"] }
action = "quarantine"
"""
    settings = rates(RateLimit("per-client", "client_ip", rate=1, per=3600))
    assert run(policy, tx(), store, 0, settings).action is Action.ACCEPT
    v = run(policy, tx(), store, 1, settings)
    assert v.action is Action.QUARANTINE
    assert verdict_to_dict(v)["ratelimits"][0]["exceeded"] is True


def test_rates_are_not_counted_without_a_rule(store: SqliteStore) -> None:
    settings = rates(RateLimit("per-client", "client_ip", rate=1, per=3600))
    for at in range(3):
        v = run(b"", tx(), store, at, settings)
        assert v.action is Action.ACCEPT and v.results.rates == ()  # type: ignore[union-attr]


def test_rate_store_down_fails_open_or_closed() -> None:
    settings = rates(RateLimit("per-client", "client_ip", rate=1, per=3600))
    v = run(RATE_POLICY, tx(), BrokenStore(), 0, settings)
    assert v.action is Action.ACCEPT and v.results.rates[0].error  # type: ignore[union-attr]
    closed = replace(settings, store_on_error="tempfail")
    assert run(RATE_POLICY, tx(), BrokenStore(), 0, closed).action is Action.TEMPFAIL


# --- DNS lists --------------------------------------------------------------------------------------


def lists(*dnslists: DnsList) -> EvalSettings:
    return EvalSettings(dnslists=dnslists, greylist=GREY)


def test_listed_client_is_refused_at_mail_from_by_meaning() -> None:
    policy = b"""
[[rules]]
name = "xbl"
when = { dnsbl = ["zen/xbl"] }
stage = "mail"
action = "reject"
"""
    v = run(policy, tx(client_ip="192.0.2.66"), None, 0, lists(ZEN))
    assert v.action is Action.REJECT and v.stage == "mail"
    assert v.decision.facts.dnsbl == ("zen", "zen/xbl")  # type: ignore[union-attr]
    # Listed on the SBL only: the rule on xbl does not match.
    assert run(policy, tx(client_ip="127.0.0.2"), None, 0, lists(ZEN)).action is Action.ACCEPT


def test_error_answer_is_never_a_listing() -> None:
    policy = b"""
[[rules]]
name = "any"
when = { dnsbl = ["zen"] }
stage = "mail"
action = "reject"
"""
    v = run(policy, tx(client_ip="192.0.2.77"), None, 0, lists(ZEN))
    assert v.action is Action.ACCEPT
    assert v.results.dnslists.results[0].status == "unusable"  # type: ignore[union-attr]
    assert log_fields(v, queue_id="q", client_ip="192.0.2.77", helo="h", mail_from="m")[
        "dnslist_errors"] == "zen:unusable"


def test_allow_list_excuses_from_greylisting_and_shows_in_authentication_results(store: SqliteStore) -> None:
    policy = b"""
[[rules]]
name = "vouched"
when = { dnswl = ["wl/hi"] }
action = "accept"
""" + GREYLIST_ALL
    v = run(policy, tx(client_ip="192.0.2.10"), store, 0, lists(WL))
    assert v.action is Action.ACCEPT and v.results.greylist == ()  # type: ignore[union-attr]
    assert "dnswl=pass dns.zone=wl.example policy.ip=127.0.10.3" in v.authentication_results
    other = run(policy, tx(client_ip="198.51.100.7"), store, 0, lists(WL))
    assert other.action is Action.TEMPFAIL


def test_from_domain_lists_are_asked_at_end_of_message() -> None:
    policy = b"""
[[rules]]
name = "spam-domain"
when = { dnsbl = ["dbl/spam"] }
action = "reject"
"""
    v = run(policy, tx(client_ip="192.0.2.10", mail_from="alice@example.org"), None, 0, lists(DBL, ZEN))
    assert v.action is Action.REJECT and v.stage == "eom"
    got = [(r.list_name, r.identity, r.status) for r in v.results.dnslists.results]  # type: ignore[union-attr]
    assert ("dbl", "from", "listed") in got
    assert not any(r[0] == "dbl" and r[1] != "from" for r in got)  # identities = ["from"]


def test_lists_asked_early_are_not_asked_again() -> None:
    policy = b"""
[[rules]]
name = "early"
when = { dnsbl = ["zen"] }
stage = "mail"
action = "reject"
"""
    dns = resolver()
    t = tx(client_ip="192.0.2.10", mail_from="alice@example.org")
    settings = lists(ZEN, DBL)
    p = parse_policy("p.toml", policy)
    verdict, known = early_verdict(t, dns, settings, p, Stage.MAIL, now=T0)
    assert verdict is None and known.dnslists is not None
    final = evaluate_transaction(t, dns, settings, AUTHSERV, p, now=T0)
    assert dns.query_count("10.2.0.192.zen.example", "A") == 2  # once per call, not per stage
    assert final.results.dnslists is not None  # type: ignore[union-attr]


def test_list_rules_without_lists_configured_do_not_hold_back_early_rules() -> None:
    # The example policy's allow-list exception comes first; with no [[dnslist]] configured its
    # fact is "nothing listed", not "unknown", so the rule after it still refuses at MAIL FROM.
    policy = b"""
[[rules]]
name = "allow-listed"
when = { dnswl = ["dnswl"] }
action = "accept"

[[rules]]
name = "no-rdns"
when = { iprev = ["permerror"] }
stage = "mail"
action = "reject"
"""
    v = run(policy, tx(client_ip="198.51.100.7"), None, 0, EvalSettings())
    assert (v.action, v.stage) == (Action.REJECT, "mail")
    assert v.decision.facts.dnswl == ()  # type: ignore[union-attr]
