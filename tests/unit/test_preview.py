"""Policy preview: recorded verdicts decided again under a draft, stage by stage."""

from __future__ import annotations

from pathlib import Path

from authmilter.core.decision import Stage
from authmilter.core.evaluate import EvalSettings, evaluate
from authmilter.core.history import HistoryRecord, record_for
from authmilter.core.message import split_message
from authmilter.core.model import Facts, Transaction
from authmilter.files.policy import load_policy, parse_policy
from authmilter.reports.preview import Previewer, redecide, render_text
from authmilter.reports.preview_model import UNKNOWN
from tests.integration.zones import example_net, example_org
from tests.mailfactory import make_message, rsa_key, sign
from tests.zoneresolver import ZoneResolver

ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT = load_policy([ROOT / "policies" / "default.toml"])


def draft(text: str):  # type: ignore[no-untyped-def]
    return parse_policy("draft.toml", text.encode())


def records() -> list[HistoryRecord]:
    dns = ZoneResolver([example_org(), example_net()])
    out = []
    cases = [
        (sign(make_message(), domain="example.org", selector="rsa", key=rsa_key()), "192.0.2.10", 3),
        (make_message(), "203.0.113.9", 2),  # unsigned, p=reject: rejected
        (make_message(from_="N <n@example.net>"), "203.0.113.9", 4),  # fails under p=none
    ]
    t = 1_800_000_000
    for message, ip, n in cases:
        headers, body = split_message(message)
        tx = Transaction(client_ip=ip, helo="mail.example.org", mail_from="a@example.org",
                         rcpts=("x@mx.test",), headers=headers, body=body)
        v = evaluate(tx, dns, EvalSettings(), "mx.test", DEFAULT)
        for i in range(n):
            r = record_for(tx, v, t + i * 3600)
            assert r is not None
            out.append(r)
    return out


def test_the_same_policy_changes_nothing() -> None:
    p = Previewer(DEFAULT, 0, 2_000_000_000, ("default.toml",))
    p.add_all(records())
    s = p.summary()
    assert s.total == 9 and s.changed == 0 and s.transitions == ()
    assert dict(s.actions_before) == dict(s.actions_after) == {"accept": 7, "reject": 2}


def test_a_stricter_draft_shows_each_change_per_domain_with_examples() -> None:
    strict = draft("""
[[rules]]
name = "dmarc-fail"
when = { dmarc = "fail" }
action = "reject"
""")
    p = Previewer(strict, 0, 2_000_000_000, ("draft.toml",))
    p.add_all(records())
    s = p.summary()
    assert s.changed == 4
    assert [(t.old, t.new, t.count) for t in s.transitions] == [("accept", "reject", 4)]
    assert [(d.domain, d.total, d.changed) for d in s.domains] == [("example.net", 4, 4)]
    assert {e.new_rule for e in s.examples} == {"dmarc-fail"}
    assert {(d.domain, d.total, d.dmarc_pass) for d in s.days} == {("example.org", 5, 3),
                                                                   ("example.net", 4, 0)}
    text = render_text(s)
    assert "accept -> reject: 4" in text and "example.net: 4 of 4" in text


def test_a_draft_that_acts_early_is_walked_at_rcpt() -> None:
    early = draft("""
[[rules]]
name = "block-net"
when = { client_ip = "203.0.113.0/24" }
action = "reject"
stage = "rcpt"
""")
    recs = records()
    facts_eom = Facts(**{**recs[3].facts, "stage": Stage.EOM})  # type: ignore[arg-type]
    new = redecide(early, facts_eom)
    assert new.action == "reject" and new.rule == "block-net"


def test_greylisting_in_a_draft_shows_as_greylist_for_mail_never_greylisted() -> None:
    grey = draft("""
[[rules]]
name = "grey-all"
when = { authenticated = false }
action = "greylist"
""")
    p = Previewer(grey, 0, 2_000_000_000, ("draft.toml",))
    p.add_all(records())
    s = p.summary()
    assert dict(s.actions_after).get("greylist") == 9


def test_mail_refused_at_mail_from_is_unknown_when_the_draft_lets_it_on() -> None:
    f = Facts(stage=Stage.MAIL, client_ip="203.0.113.9", sender_domain="example.org", spf="fail")
    assert redecide(DEFAULT, f).action == UNKNOWN
    refusing = draft("""
[[rules]]
name = "spf-fail"
when = { spf = "fail" }
action = "reject"
stage = "mail"
""")
    assert redecide(refusing, f).action == "reject"


def test_nothing_recorded_says_so() -> None:
    s = Previewer(DEFAULT, 0, 10, ("d.toml",)).summary()
    assert s.total == 0 and "nothing to preview" in render_text(s)
