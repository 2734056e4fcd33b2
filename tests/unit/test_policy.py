"""The policy engine: facts from real model objects, first-match decisions, stages, monitor, explain."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import MappingProxyType

import pytest

from authmilter.core.decision import (
    EMPTY_POLICY,
    Decision,
    Facts,
    Policy,
    Stage,
    decide,
    explain,
    facts_for,
)
from authmilter.core.model import (
    Action,
    AuthorResult,
    DkimResult,
    DmarcResult,
    Results,
    SpfIdentity,
    SpfResult,
    SpfResults,
    Transaction,
)
from authmilter.files.policy import parse_policy

# --- model objects ---------------------------------------------------------------------------------


def spf(result: str = "pass", helo: str | None = "pass") -> SpfResults:
    eff = SpfResult(result, SpfIdentity.MAILFROM, "sender.example", "alice@sender.example")
    return SpfResults(eff, None if helo is None else SpfResult(helo, SpfIdentity.HELO, "mx.sender.example",
                                                               "mx.sender.example"))


def sig(result: str, domain: str = "sender.example") -> DkimResult:
    return DkimResult(result, domain, "s1", "rsa-sha256", "abcdefgh")


def author(domain: str | None = "sender.example", error: str = "") -> AuthorResult:
    return AuthorResult(domain, (f"alice@{domain}",) if domain else (), error)


def dmarc(result: str = "pass", policy: str = "reject", domain: str = "sender.example") -> DmarcResult:
    return DmarcResult(result, domain, policy=policy, applied_tag="p")


def results(*, spf_result: str = "pass", dkim: tuple[DkimResult, ...] = (sig("pass"),),
            from_: AuthorResult | None = None, dmarc_result: DmarcResult | None = None) -> Results:
    return Results(spf=spf(spf_result), dkim=dkim, author=from_ or author(),
                   dmarc=dmarc_result or dmarc())


def tx(**kw: object) -> Transaction:
    base: dict[str, object] = dict(client_ip="203.0.113.5", helo="mx.sender.example",
                                   mail_from="alice@sender.example", rcpts=("bob@rcpt.example",),
                                   client_host="mx.sender.example")
    base.update(kw)
    return Transaction(**base)  # type: ignore[arg-type]


# --- the decision matrix ---------------------------------------------------------------------------

MATRIX_RULES = """
[[rules]]
name = "bad-from"
when = { author = "invalid" }
action = "reject"
reply = "bad_from"

[[rules]]
name = "any-temperror"
when = { temperror = true }
action = "tempfail"

[[rules]]
name = "spf-permerror"
when = { spf = "permerror" }
action = "reject"
reply = "spf_permerror"

[[rules]]
name = "any-permerror"
when = { permerror = true }
action = "reject"

[[rules]]
name = "must-sign"
when = { author_domain = ["bank.example", ".bank.example"], author_signed = false }
action = "reject"
reply = "dkim_author"

[[rules]]
name = "spf-fail"
when = { spf = "fail" }
action = "reject"
reply = "spf_fail"

[[rules]]
name = "spf-softfail"
when = { spf = "softfail" }
action = "quarantine"

[[rules]]
name = "dmarc-reject"
when = { dmarc = "fail", dmarc_policy = "reject" }
action = "reject"
reply = "dmarc_reject"

[[rules]]
name = "dmarc-quarantine"
when = { dmarc = "fail", dmarc_policy = "quarantine" }
action = "quarantine"
"""

# What each rule does when it decides: action, reply code, reply status.
RULE_OUTCOME: dict[str, tuple[Action, str | None, str | None]] = {
    "exception": (Action.ACCEPT, None, None),
    "bad-from": (Action.REJECT, "550", "5.7.1"),
    "any-temperror": (Action.TEMPFAIL, "451", "4.7.1"),
    "spf-permerror": (Action.REJECT, "550", "5.7.24"),
    "any-permerror": (Action.REJECT, "550", "5.7.1"),
    "must-sign": (Action.REJECT, "550", "5.7.22"),
    "spf-fail": (Action.REJECT, "550", "5.7.23"),
    "spf-softfail": (Action.QUARANTINE, None, None),
    "dmarc-reject": (Action.REJECT, "550", "5.7.26"),
    "dmarc-quarantine": (Action.QUARANTINE, None, None),
}

UNALIGNED = (sig("pass", "esp.example"),)


@dataclass(frozen=True)
class Outcome:
    results: Results
    matches: tuple[str, ...]  # the MATRIX_RULES rules this message matches, in policy order


OUTCOMES: dict[str, Outcome] = {
    "dmarc fail p=reject": Outcome(
        results(dkim=UNALIGNED, dmarc_result=dmarc("fail", "reject")), ("dmarc-reject",)),
    "dmarc fail p=quarantine": Outcome(
        results(dkim=UNALIGNED, dmarc_result=dmarc("fail", "quarantine")), ("dmarc-quarantine",)),
    "dmarc fail p=none": Outcome(results(dkim=UNALIGNED, dmarc_result=dmarc("fail", "none")), ()),
    "dmarc pass": Outcome(results(), ()),
    "spf fail": Outcome(results(spf_result="fail"), ("spf-fail",)),
    "spf softfail": Outcome(results(spf_result="softfail"), ("spf-softfail",)),
    "spf permerror": Outcome(results(spf_result="permerror"), ("spf-permerror", "any-permerror")),
    "spf temperror": Outcome(results(spf_result="temperror"), ("any-temperror",)),
    "must-sign domain, no signature": Outcome(
        results(dkim=(), from_=author("bank.example"), dmarc_result=dmarc("pass", domain="bank.example")),
        ("must-sign",)),
    "must-sign subdomain, third-party signature": Outcome(
        results(dkim=UNALIGNED, from_=author("mail.bank.example")), ("must-sign",)),
    "must-sign domain, failing own signature": Outcome(
        results(dkim=(sig("fail", "bank.example"),), from_=author("bank.example")), ("must-sign",)),
    "dkim temperror": Outcome(results(dkim=(sig("temperror"),)), ("any-temperror",)),
    "dmarc temperror": Outcome(results(dmarc_result=dmarc("temperror", "")), ("any-temperror",)),
    "dkim permerror": Outcome(results(dkim=(sig("permerror"), sig("pass"))), ("any-permerror",)),
    "invalid author": Outcome(
        results(from_=author(None, "2 From header fields"), dmarc_result=dmarc("permerror", "", "")),
        ("bad-from", "any-permerror")),
}


@dataclass(frozen=True)
class Kind:
    """A rule placed before the matrix rules, and what the transaction looks like to meet it."""

    when: str  # TOML inline-table body, "" for no exception rule
    tx: dict[str, object]
    applies: Callable[[Results], bool] = lambda r: True
    override: str = ""


def never(r: Results) -> bool:
    return False


def from_sender_example(r: Results) -> bool:
    # Only valid authors have a domain; the must-sign outcomes are From bank.example.
    return r.author.domain == "sender.example"


# key: (condition that matches the transaction, one that narrowly does not, the transaction)
EXCEPTIONS: dict[str, tuple[str, str, dict[str, object]]] = {
    "client_ip": ('client_ip = ["192.0.2.0/24", "2001:db8::/32"]', 'client_ip = ["198.51.100.0/24"]',
                  {"client_ip": "192.0.2.7"}),
    "client_ip v4-mapped": ('client_ip = ["192.0.2.0/24"]', 'client_ip = ["192.0.3.0/24"]',
                            {"client_ip": "::ffff:192.0.2.7"}),
    "client_ip v6": ('client_ip = ["192.0.2.0/24", "2001:db8::/32"]', 'client_ip = ["2001:db9::/32"]',
                     {"client_ip": "2001:db8::25"}),
    "client_host": ('client_host = [".relay.example"]', 'client_host = ["relay.example"]',
                    {"client_host": "mx1.relay.example"}),
    "authenticated": ("authenticated = true", "authenticated = false",
                      {"macros": MappingProxyType({"{auth_authen}": "alice"})}),
    "sender_domain": ('sender_domain = ["lists.example"]', 'sender_domain = [".lists.example"]',
                      {"mail_from": "owner@lists.example"}),
    "author_domain": ('author_domain = ["sender.example"]', 'author_domain = [".sender.example"]', {}),
    "rcpt_domain": ('rcpt_domain = ["postmaster.example"]', 'rcpt_domain = ["other.example"]',
                    {"rcpts": ("bob@rcpt.example", "abuse@postmaster.example")}),
}

KINDS: dict[str, Kind] = {"plain": Kind("", {}, never)}
for _key, (_hit, _miss, _tx) in EXCEPTIONS.items():
    _applies = from_sender_example if _key == "author_domain" else Kind.applies
    KINDS[f"exception by {_key}"] = Kind(_hit, _tx, _applies)
    KINDS[f"exception by {_key}, not met"] = Kind(_miss, _tx, never)
KINDS["override"] = Kind('client_ip = ["192.0.2.0/24"]', {"client_ip": "192.0.2.7"},
                         override="trusted_forwarder")


@functools.cache
def matrix_policy(kind_name: str, monitor: str, monitored_rule: str) -> Policy:
    kind = KINDS[kind_name]
    text = MATRIX_RULES
    if kind.when:
        override = f'override = "{kind.override}"\n' if kind.override else ""
        exception = f'[[rules]]\nname = "exception"\nwhen = {{ {kind.when} }}\naction = "accept"\n'
        text = exception + override + text
    if monitor == "rule" and monitored_rule:
        text = text.replace(f'name = "{monitored_rule}"\n', f'name = "{monitored_rule}"\nmonitor = true\n')
    if monitor == "global":
        text = "[settings]\nmonitor = true\n" + text
    return parse_policy("matrix.toml", text.encode())


CASES = [(o, k, m) for o in OUTCOMES for k in KINDS for m in ("off", "rule", "global")]


@pytest.mark.parametrize(("outcome", "kind", "monitor"), CASES)
def test_decision_matrix(outcome: str, kind: str, monitor: str) -> None:
    o, k = OUTCOMES[outcome], KINDS[kind]
    matching = (("exception",) if k.applies(o.results) else ()) + o.matches
    monitored_rule = matching[0] if monitor == "rule" and matching else ""
    policy = matrix_policy(kind, monitor, monitored_rule)
    d = decide(policy, facts_for(tx(**k.tx), o.results, Stage.EOM))

    if monitor == "global":
        decider, hits = None, matching
    elif monitor == "rule":
        decider, hits = (matching[1] if len(matching) > 1 else None), matching[:1]
    else:
        decider, hits = (matching[0] if matching else None), ()
    action, code, status = RULE_OUTCOME[decider] if decider else (Action.ACCEPT, None, None)

    assert not d.deferred and d.stage is Stage.EOM
    assert d.rule == decider
    assert d.action is action
    got_reply = (d.reply.code, d.reply.status) if d.reply else (None, None)
    assert got_reply == (code, status)
    assert [(h.rule, h.action) for h in d.monitored] == [(h, RULE_OUTCOME[h][0]) for h in hits]
    by_name = {r.name: r for r in policy.rules}
    assert d.rule_source == (by_name[decider].source if decider else "")
    dmarc_failed = o.results.dmarc is not None and o.results.dmarc.result == "fail"
    expected_override = k.override if decider == "exception" and k.override and dmarc_failed else None
    assert d.override == expected_override
    if decider:
        assert d.trace[-1].rule == decider and d.trace[-1].outcome == "decided"


def test_matrix_covers_every_outcome_rule_and_monitor_mode() -> None:
    assert len(CASES) == len(OUTCOMES) * len(KINDS) * 3
    decided = {m for o in OUTCOMES.values() for m in o.matches}
    assert decided == set(RULE_OUTCOME) - {"exception"}


# --- facts -----------------------------------------------------------------------------------------


def test_facts_at_end_of_message() -> None:
    t = tx(client_ip="IPv6:2001:db8::1", client_host="MX1.Relay.Example.", helo="[192.0.2.1]",
           mail_from="<Alice@Sender.EXAMPLE>", rcpts=("a@one.example", "b@Two.Example"),
           macros={"{auth_authen}": "alice", "{daemon_name}": "submission"})
    f = facts_for(t, results(dkim=(sig("fail"), sig("pass", "esp.example"))), Stage.EOM)
    assert (f.client_ip, f.client_host, f.helo) == ("2001:db8::1", "mx1.relay.example", "")
    assert (f.authenticated, f.daemon, f.sender_domain) == (True, "submission", "sender.example")
    assert f.rcpt_domain == ("one.example", "two.example")
    assert (f.spf, f.spf_helo, f.dkim) == ("pass", "pass", ("fail", "pass"))
    assert (f.author, f.author_domain, f.author_signed) == ("valid", "sender.example", False)
    assert (f.dmarc, f.dmarc_policy, f.temperror, f.permerror) == ("pass", "reject", False, False)


def test_early_facts_leave_later_ones_unknown() -> None:
    f = facts_for(tx(), results(), Stage.MAIL)
    assert f.rcpt_domain is None and f.dkim is None and f.dmarc is None and f.author is None
    assert f.spf == "pass"  # SPF is known at MAIL FROM
    assert f.temperror is None  # DKIM or DMARC may still fail temporarily
    assert facts_for(tx(), None, Stage.MAIL, spf=spf("temperror")).temperror is True
    r = facts_for(tx(rcpts=("a@one.example",)), None, Stage.RCPT, rcpt="x@Two.example")
    assert r.rcpt_domain == ("two.example",) and r.spf is None
    assert facts_for(tx(rcpts=("a@one.example",)), None, Stage.RCPT).rcpt_domain == ("one.example",)


@pytest.mark.parametrize(("host", "expected"), [
    ("unknown", ""), ("[192.0.2.1]", ""), (None, ""), ("mx.example.net.", "mx.example.net"),
])
def test_unverified_client_names_match_nothing(host: str | None, expected: str) -> None:
    assert facts_for(tx(client_host=host), None, Stage.MAIL).client_host == expected


@pytest.mark.parametrize(("author_domain", "signer", "signed"), [
    ("bank.example", "bank.example", True),
    ("mail.bank.example", "bank.example", True),  # a parent domain signs for its subdomains
    ("bank.example", "mail.bank.example", False),  # a child does not sign for its parent
    ("bank.example", "example", False),  # never a bare TLD
    ("bank.example", "BANK.example.", True),
    ("bank.example", "otherbank.example", False),
])
def test_author_signed(author_domain: str, signer: str, signed: bool) -> None:
    r = results(dkim=(sig("pass", signer),), from_=author(author_domain))
    assert facts_for(tx(), r, Stage.EOM).author_signed is signed
    unsigned = results(dkim=(sig("fail", signer),), from_=author(author_domain))
    assert facts_for(tx(), unsigned, Stage.EOM).author_signed is False


def test_null_sender_and_missing_helo_result() -> None:
    s = SpfResults(SpfResult("pass", SpfIdentity.HELO, "mx.sender.example", "mx.sender.example"), None)
    f = facts_for(tx(mail_from=""), None, Stage.MAIL, spf=s)
    assert f.sender_domain == "" and f.spf_helo == "none"
    p = parse_policy("p.toml", b'[[rules]]\nname = "a"\nwhen = { sender_domain = [".example"] }\n'
                               b'action = "reject"\n')
    assert decide(p, replace(f, stage=Stage.EOM)).rule is None


def test_dkim_none_means_no_signatures() -> None:
    p = parse_policy("p.toml", b'[[rules]]\nname = "unsigned"\nwhen = { dkim = "none" }\naction = "reject"\n'
                               b'reply = "dkim_none"\n')
    d = decide(p, facts_for(tx(), results(dkim=()), Stage.EOM))
    assert d.rule == "unsigned" and d.reply is not None and d.reply.status == "5.7.20"
    assert decide(p, facts_for(tx(), results(dkim=(sig("fail"),)), Stage.EOM)).rule is None


def test_v4_mapped_network_in_policy_matches_v4_client() -> None:
    p = parse_policy("p.toml", b'[[rules]]\nname = "a"\nwhen = { client_ip = ["::ffff:192.0.2.0/120"] }\n'
                               b'action = "reject"\n')
    assert decide(p, facts_for(tx(client_ip="192.0.2.9"), results(), Stage.EOM)).rule == "a"
    assert decide(p, facts_for(tx(client_ip="192.0.3.9"), results(), Stage.EOM)).rule is None


def test_missing_results_at_end_of_message_match_nothing() -> None:
    p = parse_policy("p.toml", b'[[rules]]\nname = "a"\nwhen = { dmarc = "fail" }\naction = "reject"\n')
    d = decide(p, facts_for(tx(), None, Stage.EOM))
    assert d.action is Action.ACCEPT and d.rule is None and d.trace[0].outcome == "unknown"


def test_empty_policy_accepts() -> None:
    d = decide(EMPTY_POLICY, facts_for(tx(), results(), Stage.EOM))
    assert d.action is Action.ACCEPT and d.rule is None and d.trace == () and not d.deferred


# --- early stages ----------------------------------------------------------------------------------

EARLY = b"""
[[rules]]
name = "relays"
when = { client_ip = ["192.0.2.0/24"] }
action = "accept"

[[rules]]
name = "spf-fail"
when = { spf = "fail" }
stage = "rcpt"
action = "reject"
reply = "spf_fail"
"""


def early(policy: bytes, stage: Stage, *, spf_result: str | None = "fail", **kw: object) -> Decision:
    p = parse_policy("early.toml", policy)
    s = spf(spf_result) if spf_result else None
    return decide(p, facts_for(tx(**kw), None, stage, spf=s, rcpt=None))


def test_early_rule_acts_at_its_stage() -> None:
    d = early(EARLY, Stage.RCPT)
    assert (d.action, d.rule, d.deferred, d.stage) == (Action.REJECT, "spf-fail", False, Stage.RCPT)
    assert d.reply is not None and (d.reply.code, d.reply.status) == ("550", "5.7.23")
    assert d.rule_source == "early.toml:7"


def test_early_rule_waits_for_its_stage() -> None:
    d = early(EARLY, Stage.MAIL)
    assert d.deferred and d.rule is None and d.reply is None
    assert d.trace[-1].outcome == "deferred" and "RCPT TO" in d.trace[-1].note


def test_matching_exception_defers_instead_of_accepting_early() -> None:
    d = early(EARLY, Stage.RCPT, client_ip="192.0.2.1")
    assert d.deferred and d.trace[-1].rule == "relays" and len(d.trace) == 1


def test_unknown_fact_in_an_earlier_rule_defers() -> None:
    policy = b'[[rules]]\nname = "dmarc-reject"\nwhen = { dmarc = "fail" }\naction = "reject"\n' + EARLY
    d = early(policy, Stage.RCPT)
    assert d.deferred and [t.rule for t in d.trace] == ["dmarc-reject"]
    assert d.trace[0].matched is None and "dmarc" in d.trace[0].note
    # At end of message the same message meets spf-fail, which still acts there.
    p = parse_policy("early.toml", policy)
    eom = decide(p, facts_for(tx(), results(spf_result="fail"), Stage.EOM))
    assert eom.rule == "spf-fail" and eom.stage is Stage.EOM


def test_a_known_false_condition_lets_the_walk_pass() -> None:
    policy = (b'[[rules]]\nname = "internal-dmarc"\nwhen = { client_ip = ["10.0.0.0/8"], dmarc = "fail" }\n'
              b'action = "accept"\n' + EARLY)
    assert early(policy, Stage.RCPT).rule == "spf-fail"
    assert early(policy, Stage.RCPT, client_ip="10.1.2.3").deferred


def test_monitor_rules_are_skipped_early_and_reported_at_eom() -> None:
    policy = (b'[[rules]]\nname = "dmarc-reject"\nwhen = { dmarc = "fail" }\naction = "reject"\n'
              b"monitor = true\n" + EARLY)
    d = early(policy, Stage.RCPT)
    assert d.rule == "spf-fail" and d.monitored == ()
    assert d.trace[0].outcome == "skipped"
    monitored_early = EARLY.replace(b'stage = "rcpt"', b'stage = "rcpt"\nmonitor = true')
    assert early(monitored_early, Stage.RCPT).deferred
    p = parse_policy("early.toml", monitored_early)
    eom = decide(p, facts_for(tx(), results(spf_result="fail"), Stage.EOM))
    assert eom.action is Action.ACCEPT and [(m.rule, m.action) for m in eom.monitored] == [
        ("spf-fail", Action.REJECT)]


def test_global_monitor_never_acts_early() -> None:
    d = early(b"[settings]\nmonitor = true\n" + EARLY, Stage.RCPT)
    assert d.deferred and d.monitored == ()


def test_spf_not_computed_defers() -> None:
    assert early(EARLY, Stage.RCPT, spf_result=None).deferred


def test_temperror_is_not_known_false_before_eom() -> None:
    policy = b'[[rules]]\nname = "temp"\nwhen = { temperror = true }\naction = "tempfail"\n' + EARLY
    d = early(policy, Stage.RCPT)
    assert d.deferred and d.trace[0].matched is None
    acting = policy.replace(b'action = "tempfail"', b'action = "tempfail"\nstage = "mail"')
    t = early(acting, Stage.MAIL, spf_result="temperror")
    assert (t.action, t.rule, t.reply and t.reply.code) == (Action.TEMPFAIL, "temp", "451")


def test_rcpt_domain_at_rcpt_is_the_current_recipient() -> None:
    policy = (b'[[rules]]\nname = "closed"\nwhen = { rcpt_domain = ["closed.example"] }\n'
              b'stage = "rcpt"\naction = "reject"\n')
    p = parse_policy("p.toml", policy)
    t = tx(rcpts=("a@closed.example", "b@open.example"))
    assert decide(p, facts_for(t, None, Stage.RCPT, rcpt="a@closed.example")).rule == "closed"
    assert decide(p, facts_for(t, None, Stage.RCPT, rcpt="b@open.example")).deferred
    assert decide(p, facts_for(t, results(), Stage.EOM)).rule == "closed"  # any recipient


def test_mail_stage_rule() -> None:
    policy = b'[[rules]]\nname = "no-null"\nwhen = { sender_domain = ["spam.example"] }\nstage = "mail"\n' \
             b'action = "reject"\n'
    d = early(policy, Stage.MAIL, mail_from="x@spam.example", spf_result=None)
    assert d.rule == "no-null" and d.stage is Stage.MAIL
    assert d.reply is not None and (d.reply.code, d.reply.status) == ("550", "5.7.1")


@pytest.mark.parametrize(("text", "earliest", "needs_spf"), [
    (b"", Stage.EOM, False),
    (EARLY, Stage.RCPT, True),
    (b"[settings]\nmonitor = true\n" + EARLY, Stage.EOM, False),
    (b'[[rules]]\nname = "a"\nwhen = { client_ip = ["192.0.2.1"] }\nstage = "mail"\naction = "reject"\n',
     Stage.MAIL, False),
    # The early rule needs no SPF, but the rule before it would stop the walk without it.
    (b'[[rules]]\nname = "ok"\nwhen = { spf = "pass" }\naction = "accept"\n'
     b'[[rules]]\nname = "a"\nwhen = { client_ip = ["192.0.2.1"] }\nstage = "rcpt"\naction = "reject"\n',
     Stage.RCPT, True),
    # SPF only after the last early rule: not needed early.
    (b'[[rules]]\nname = "a"\nwhen = { client_ip = ["192.0.2.1"] }\nstage = "rcpt"\naction = "reject"\n'
     b'[[rules]]\nname = "late"\nwhen = { spf = "fail" }\naction = "reject"\n', Stage.RCPT, False),
])
def test_earliest_stage_and_early_spf(text: bytes, earliest: Stage, needs_spf: bool) -> None:
    p = parse_policy("p.toml", text)
    assert (p.earliest_stage, p.needs_early_spf) == (earliest, needs_spf)


def test_stage_order() -> None:
    assert Stage.MAIL < Stage.RCPT < Stage.EOM and Stage.EOM >= Stage.RCPT > Stage.MAIL
    assert sorted([Stage.EOM, Stage.MAIL, Stage.RCPT]) == [Stage.MAIL, Stage.RCPT, Stage.EOM]


# --- explain ---------------------------------------------------------------------------------------

EXPLAINED = b"""[[rules]]
name = "relays"
when = { client_ip = ["192.0.2.0/24"] }
action = "accept"

[[rules]]
name = "preview"
when = { dmarc = "fail" }
action = "reject"
monitor = true

[[rules]]
name = "dmarc-reject"
when = { dmarc = "fail", dmarc_policy = "reject" }
action = "reject"
reply = "dmarc_reject"
"""


def test_explain_names_facts_rules_conditions_and_the_decision() -> None:
    p = parse_policy("x.toml", EXPLAINED)
    f = facts_for(tx(), results(dkim=UNALIGNED, dmarc_result=dmarc("fail", "reject")), Stage.EOM)
    d = decide(p, f)
    lines = explain(d, f)
    assert explain(d) == lines  # the decision carries its facts
    text = "\n".join(lines)
    assert lines[0] == "stage: end of message"
    facts = {" ".join(line.split()) for line in lines if line.startswith("  ") and not line.startswith("   ")}
    assert "client_ip 203.0.113.5" in facts and "dmarc fail" in facts
    assert "  1. relays (x.toml:1): no match" in lines
    assert "       authenticated = true: is false: no" in explain(decide(parse_policy(
        "a.toml", b'[[rules]]\nname = "a"\nwhen = { authenticated = true }\naction = "accept"\n'), f))
    assert "       client_ip in [192.0.2.0/24]: is 203.0.113.5: no" in lines
    assert "  2. preview (x.toml:6): monitor -- would reject" in lines
    assert "  3. dmarc-reject (x.toml:12): decided -- reject" in lines
    assert "       dmarc_policy in [reject]: is reject: yes" in lines
    assert "monitor: rule preview (x.toml:6) would reject 550 5.7.1 " in text
    assert "decided by: rule dmarc-reject at x.toml:12" in lines
    assert lines[-1].startswith("action: reject 550 5.7.26 ")


def test_explain_deferred_and_accept() -> None:
    p = parse_policy("x.toml", EXPLAINED)
    d = decide(p, facts_for(tx(), None, Stage.RCPT, spf=spf()))
    lines = explain(d)
    assert lines[0] == "stage: RCPT TO"
    assert "dmarc (not known yet)" in {" ".join(line.split()) for line in lines}
    assert any(line.startswith("  2. preview (x.toml:6): skipped") for line in lines)
    assert "       dmarc in [fail]: is (not known yet): not known" in lines
    assert lines[-1].startswith("decision: deferred (deferred: rule dmarc-reject needs dmarc")
    ok = explain(decide(p, facts_for(tx(), results(), Stage.EOM)))
    assert ok[-2:] == ["decided by: no rule matched, so the message is accepted", "action: accept"]


def test_explain_quarantine_mode_and_override() -> None:
    p = parse_policy("q.toml", b'[settings]\nquarantine = "header"\n[[rules]]\nname = "fwd"\n'
                               b'when = { client_ip = ["192.0.2.0/24"] }\naction = "quarantine"\n'
                               b'override = "forwarded"\n')
    f = facts_for(tx(client_ip="192.0.2.1"), results(dmarc_result=dmarc("fail")), Stage.EOM)
    d = decide(p, f)
    assert (d.quarantine_mode, d.quarantine_header, d.override) == ("header", "X-Authmilter-Quarantine",
                                                                    "forwarded")
    lines = explain(d)
    assert "quarantine: marked with a X-Authmilter-Quarantine header" in lines
    assert "dmarc override: forwarded" in lines


def test_facts_render_every_key() -> None:
    f = Facts(Stage.EOM, dkim=(), rcpt_domain=())
    assert f.render("dkim") == "(no signatures)" and f.render("rcpt_domain") == "(none)"
    assert f.render("client_ip") == "(none)" and f.render("dmarc") == "(unknown)"
    with pytest.raises(KeyError):
        f.value("stage")
