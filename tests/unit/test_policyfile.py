"""Policy files: every class of error with its file:line and key, merging, and the shipped policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from authmilter.core.decision import Stage
from authmilter.core.decision.replies import CATALOGUE, validate_reply
from authmilter.core.model import Action, Reply
from authmilter.files.policy import PolicyError, Problem, lint, load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "policies" / "default.toml"
EXAMPLES = sorted((ROOT / "policies" / "examples").glob("*.toml"))


def problems(text: str | bytes, name: str = "p.toml") -> list[str]:
    raw = text.encode() if isinstance(text, str) else text
    with pytest.raises(PolicyError) as info:
        parse_policy(name, raw)
    return [str(p) for p in info.value.problems]


def one(text: str | bytes) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


RULE = '[[rules]]\nname = "x"\naction = "reject"\n'  # lines 1-3

# (what is wrong, policy text, expected "file:line: key", a part of the reason)
ERRORS = [
    ("unknown top-level key", 'rulez = 1\n', "p.toml:1: rulez", "unknown key (did you mean 'rules'?)"),
    ("unknown table", '[setings]\nmonitor = true\n', "p.toml:1: setings", "did you mean 'settings'?"),
    ("unknown settings key", '[settings]\nmonitor = true\nmonitr = true\n', "p.toml:3: settings.monitr",
     "unknown key"),
    ("settings type", '[settings]\nmonitor = "yes"\n', "p.toml:2: settings.monitor",
     "expected true or false, got a string"),
    ("quarantine mode", '[settings]\nquarantine = "drop"\n', "p.toml:2: settings.quarantine",
     "must be one of hold, header, got 'drop'"),
    ("quarantine header", '[settings]\n\nquarantine_header = "X-Bad: no"\n',
     "p.toml:3: settings.quarantine_header", "must be a header field name"),
    ("settings not a table", 'settings = 3\n', "p.toml:1: settings", "expected a table, got an integer"),
    ("rules not an array", '[rules]\nname = "x"\n', "p.toml:1: rules", "expected [[rules]] tables"),
    ("rule not a table", 'rules = [1]\n', "p.toml:1: rules[1]", "expected a table, got an integer"),
    ("unknown rule key", RULE + 'actoin = "accept"\n', 'p.toml:4: rules."x".actoin',
     "unknown key (did you mean 'action'?)"),
    ("unknown condition key", RULE + 'when = { spff = "fail" }\n', 'p.toml:4: rules."x".when.spff',
     "did you mean 'spf'?"),
    ("condition type: bool", RULE + 'when = { authenticated = "yes" }\n',
     'p.toml:4: rules."x".when.authenticated', "expected true or false, got a string"),
    ("condition type: list", RULE + 'when = { client_ip = 10 }\n', 'p.toml:4: rules."x".when.client_ip',
     "expected a string or a list of strings, got an integer"),
    ("condition type: element", RULE + 'when = { daemon = ["smtpd", 1] }\n',
     'p.toml:4: rules."x".when.daemon', "expected a list of strings, found an integer"),
    ("when not a table", RULE + 'when = "spf"\n', 'p.toml:4: rules."x".when',
     "expected a table of conditions"),
    ("monitor type", RULE + "monitor = 1\n", 'p.toml:4: rules."x".monitor',
     "expected true or false, got an integer"),
    ("description type", RULE + "description = 1\n", 'p.toml:4: rules."x".description', "expected a string"),
    ("bad CIDR", RULE + 'when = { client_ip = ["10.0.0.0/33"] }\n', 'p.toml:4: rules."x".when.client_ip',
     "'10.0.0.0/33' is not an IP address or CIDR network"),
    ("CIDR in a multi-line list", RULE + 'when = { client_ip = [\n  "10.0.0.0/8",\n  "10.0.0.300",\n] }\n',
     'p.toml:6: rules."x".when.client_ip', "'10.0.0.300' is not an IP address"),
    ("host bits", RULE + '[rules.when]\nclient_ip = ["10.1.0.0/8"]\n', 'p.toml:5: rules."x".when.client_ip',
     "'10.1.0.0/8' has host bits set (the network is 10.0.0.0/8)"),
    ("bad domain", RULE + 'when.helo = ["exa mple.com"]\n', 'p.toml:4: rules."x".when.helo',
     "'exa mple.com' is not a domain name"),
    ("wildcard domain", RULE + 'when = { sender_domain = ["*.example.com"] }\n',
     'p.toml:4: rules."x".when.sender_domain', "wildcards are not supported; '.example.com' matches"),
    ("bad spf result", RULE + 'when = { spf = "failed" }\n', 'p.toml:4: rules."x".when.spf',
     "'failed' is not one of: pass, fail, softfail, neutral, none, temperror, permerror"),
    ("bad dkim result", RULE + 'when = { dkim = ["pass", "nonee"] }\n', 'p.toml:4: rules."x".when.dkim',
     "'nonee' is not one of: pass, fail, neutral, policy, temperror, permerror, none"),
    ("bad dmarc result", RULE + 'when = { dmarc = "quarantine" }\n', 'p.toml:4: rules."x".when.dmarc',
     "'quarantine' is not one of: pass, fail, none, temperror, permerror"),
    ("bad dmarc policy", RULE + 'when = { dmarc_policy = "fail" }\n', 'p.toml:4: rules."x".when.dmarc_policy',
     "'fail' is not one of: none, quarantine, reject"),
    ("bad author value", RULE + 'when = { author = "bogus" }\n', 'p.toml:4: rules."x".when.author',
     "'bogus' is not one of: valid, invalid"),
    ("empty list", RULE + 'when = { rcpt_domain = [] }\n', 'p.toml:4: rules."x".when.rcpt_domain',
     "empty list: the rule would never match"),
    ("unknown action", '\n[[rules]]\nname = "dmarc-reject"\nwhen = { dmarc = "fail" }\naction = "rejekt"\n',
     'p.toml:5: rules."dmarc-reject".action', "unknown action 'rejekt'"),
    ("missing action", '[[rules]]\nname = "x"\nwhen = { spf = "fail" }\n', 'p.toml:1: rules."x".action',
     "missing"),
    ("missing name", '[[rules]]\naction = "accept"\nwhen = { spf = "pass" }\n', "p.toml:1: rules[1].name",
     "missing: every rule needs a unique name"),
    ("bad name", '[[rules]]\nname = "Bad Name"\naction = "accept"\n', "p.toml:2: rules[1].name",
     "got 'Bad Name'"),
    ("unknown reply name", RULE + 'reply = "no_such_reply"\n', 'p.toml:4: rules."x".reply',
     "unknown reply 'no_such_reply' (known: bad_from, "),
    ("reply type", RULE + "reply = 550\n", 'p.toml:4: rules."x".reply', "expected a reply name or a table"),
    ("inline reply code", RULE + 'reply = { code = "250", status = "2.0.0", text = "ok" }\n',
     'p.toml:4: rules."x".reply.code', "must be a 3-digit 4xx or 5xx SMTP code, got '250'"),
    ("inline reply status class", RULE + 'reply = { code = "550", status = "4.7.1", text = "no" }\n',
     'p.toml:4: rules."x".reply.status', "class 4 of '4.7.1' does not match the code 550"),
    ("inline reply status form", RULE + 'reply = { code = "550", status = "5.7", text = "no" }\n',
     'p.toml:4: rules."x".reply.status', "must be an enhanced status code"),
    ("inline reply text CRLF", RULE + 'reply = { code = "550", status = "5.7.1", text = "a\\r\\nb" }\n',
     'p.toml:4: rules."x".reply.text', "must be one line"),
    ("inline reply text length",
     RULE + f'reply = {{ code = "550", status = "5.7.1", text = "{"a" * 201}" }}\n',
     'p.toml:4: rules."x".reply.text', "at most 200 characters, got 201"),
    ("inline reply text non-ASCII", RULE + 'reply = { code = "550", status = "5.7.1", text = "refusé" }\n',
     'p.toml:4: rules."x".reply.text', "printable ASCII"),
    ("inline reply incomplete", RULE + 'reply = { code = "550" }\n', 'p.toml:4: rules."x".reply',
     "an inline reply needs code, status and text (missing: status, text)"),
    ("inline reply unknown key", RULE + 'reply = { code = "550", status = "5.7.1", text = "no", txt = "" }\n',
     'p.toml:4: rules."x".reply.txt', "did you mean 'text'?"),
    ("reply does not fit tempfail", '[[rules]]\nname = "x"\naction = "tempfail"\nreply = "dmarc_reject"\n',
     'p.toml:4: rules."x".reply', "a tempfail rule needs a 4xx reply, got 550 (reply 'dmarc_reject')"),
    ("reply does not fit reject", RULE + 'reply = { code = "451", status = "4.7.1", text = "later" }\n',
     'p.toml:4: rules."x".reply', "a reject rule needs a 5xx reply, got 451"),
    ("reply on accept", '[[rules]]\nname = "x"\naction = "accept"\nreply = "reject"\n',
     'p.toml:4: rules."x".reply', "a reply only applies to reject, tempfail and greylist rules, not accept"),
    ("catalogue: bad override", '[replies.dmarc_reject]\nstatus = "4.7.26"\n',
     "p.toml:2: replies.dmarc_reject.status", "class 4 of '4.7.26' does not match the code 550"),
    ("catalogue: new entry incomplete", '[replies.mine]\ntext = "no"\n', "p.toml:1: replies.mine",
     "a new reply needs code, status and text (missing: code, status)"),
    ("catalogue: '%'", '[replies.mine]\ncode = "550"\nstatus = "5.7.1"\ntext = "100% sure"\n',
     "p.toml:4: replies.mine.text", "must not contain '%'"),
    ("catalogue: type", '[replies.mine]\ncode = 550\nstatus = "5.7.1"\ntext = "no"\n',
     "p.toml:2: replies.mine.code", 'expected a string (like "550"), got an integer'),
    ("catalogue: unknown key", '[replies.reject]\ntxt = "no"\n', "p.toml:2: replies.reject.txt",
     "unknown key"),
    ("catalogue: bad name", '[replies."Bad Name"]\ncode = "550"\n', 'p.toml:1: replies."Bad Name"',
     "reply names are lower-case"),
    ("stage too early for dmarc", RULE + 'when = { dmarc = "fail" }\nstage = "rcpt"\n',
     'p.toml:5: rules."x".stage', 'stage "rcpt" is too early: dmarc is known only at end of message'),
    ("rcpt_domain at mail", RULE + 'when = { rcpt_domain = ["a.example"] }\nstage = "mail"\n',
     'p.toml:5: rules."x".stage', "rcpt_domain is known only from RCPT TO on"),
    ("temperror = false early", RULE + 'when = { temperror = false }\nstage = "mail"\n',
     'p.toml:5: rules."x".stage', "temperror = false is known only at end of message"),
    ("early stage for accept",
     '[[rules]]\nname = "x"\naction = "accept"\nwhen = { spf = "pass" }\nstage = "rcpt"\n',
     'p.toml:5: rules."x".stage', 'stage "rcpt" only applies to reject and tempfail rules'),
    ("unknown stage", RULE + 'stage = "data"\n', 'p.toml:4: rules."x".stage',
     "must be one of mail, rcpt, eom"),
    ("override on reject", RULE + 'when = { spf = "fail" }\noverride = "forwarded"\n',
     'p.toml:5: rules."x".override', "only applies to rules that let mail through"),
    ("unknown override", '[[rules]]\nname = "x"\naction = "accept"\noverride = "because"\n',
     'p.toml:4: rules."x".override', "unknown override reason 'because'"),
    ("contradiction: invalid author with a domain",
     RULE + 'when = { author = "invalid", author_domain = ["a.example"] }\n',
     'p.toml:4: rules."x".when.author_domain', 'never matches: with author = "invalid"'),
    ("contradiction: signed without pass", RULE + 'when = { author_signed = true, dkim = ["fail"] }\n',
     'p.toml:4: rules."x".when.author_signed',
     "never matches: author_signed = true needs a passing signature"),
    ("shadowed by a broader network",
     '[[rules]]\nname = "relays"\nwhen = { client_ip = ["10.0.0.0/8"] }\naction = "accept"\n\n'
     '[[rules]]\nname = "relay-spf"\nwhen = { client_ip = ["10.1.0.0/16"], spf = "fail" }\n'
     'action = "reject"\n',
     'p.toml:6: rules."relay-spf"',
     "unreachable: rule 'relays' at p.toml:1 already matches everything this rule matches"),
    ("shadowed by a catch-all", '[[rules]]\nname = "all"\naction = "accept"\n'
     '[[rules]]\nname = "late"\nwhen = { dmarc = "fail" }\naction = "reject"\n', 'p.toml:4: rules."late"',
     "unreachable: rule 'all' at p.toml:1"),
    ("shadowed by a subdomain pattern", '[[rules]]\nname = "a"\nwhen = { sender_domain = [".example"] }\n'
     'action = "accept"\n[[rules]]\nname = "b"\nwhen = { sender_domain = ["x.example", ".y.example"] }\n'
     'action = "reject"\n', 'p.toml:5: rules."b"', "unreachable: rule 'a'"),
    ("shadowed by a wider result list", '[[rules]]\nname = "a"\nwhen = { spf = ["fail", "softfail"] }\n'
     'action = "reject"\n[[rules]]\nname = "b"\nwhen = { spf = "fail", dmarc = "fail" }\n'
     'action = "tempfail"\n',
     'p.toml:5: rules."b"', "unreachable: rule 'a'"),
]


@pytest.mark.parametrize(("text", "where", "reason"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_each_error_names_file_line_and_key(text: str, where: str, reason: str) -> None:
    found = one(text)
    assert found.startswith(where + ": "), found
    assert reason in found[len(where) + 2:], found


def test_not_utf8_names_the_line_of_the_first_bad_byte() -> None:
    assert one(b'[settings]\nmonitor = false\n# caf\xe9\n') == "p.toml:3: not UTF-8 (byte 0xe9 at column 6)"


def test_toml_syntax_error_has_tomllib_line() -> None:
    found = one('[settings]\n\nmonitor = \n')
    assert found.startswith("p.toml:3: invalid TOML: ") and "(column 11)" in found


@pytest.mark.parametrize(("text", "line"), [("x = 'a\x0b\x0c b", 1), ("[settings]\nmonitor = true\n0=", 3),
                                           ("[settings]\nmonitor = '\n\n", 2)])
def test_error_at_end_of_document_names_the_last_line(text: str, line: int) -> None:
    # Found by tests/unit/test_properties_config.py: lines were counted with str.splitlines(),
    # which also breaks at vertical tabs and form feeds, naming a line past the end of the file.
    found = one(text)
    assert found.startswith(f"p.toml:{line}: invalid TOML: "), found


def test_duplicate_names_in_one_file_and_across_files(tmp_path: Path) -> None:
    assert one('[[rules]]\nname = "a"\nwhen = { spf = "fail" }\naction = "reject"\n\n'
               '[[rules]]\nname = "a"\nwhen = { spf = "softfail" }\naction = "accept"\n') == (
        "p.toml:7: rules.\"a\".name: duplicate rule name 'a' (first defined at p.toml:1)")
    first, second = tmp_path / "first.toml", tmp_path / "second.toml"
    first.write_text('[[rules]]\nname = "a"\nwhen = { spf = "fail" }\naction = "reject"\n')
    second.write_text('# ours\n[[rules]]\nname = "a"\nwhen = { spf = "pass" }\naction = "accept"\n')
    assert [str(p) for p in lint([first, second])] == [
        f"{second}:3: rules.\"a\".name: duplicate rule name 'a' (first defined at {first}:1)"]


def test_shadowing_across_files_is_reported_on_the_later_rule(tmp_path: Path) -> None:
    first, second = tmp_path / "first.toml", tmp_path / "second.toml"
    first.write_text('[[rules]]\nname = "auth"\nwhen = { authenticated = true }\naction = "accept"\n')
    second.write_text('[[rules]]\nname = "auth-spf"\nwhen = { authenticated = true, spf = "fail" }\n'
                      'action = "reject"\n')
    assert [str(p) for p in lint([first, second])] == [
        f"{second}:1: rules.\"auth-spf\": unreachable: rule 'auth' at {first}:1 already matches everything "
        "this rule matches"]


def test_monitored_rules_shadow_nothing_and_global_monitor_is_ignored() -> None:
    rules = ('[[rules]]\nname = "a"\nwhen = { spf = "fail" }\naction = "reject"\nMONITOR'
             '[[rules]]\nname = "b"\nwhen = { spf = "fail", dmarc = "fail" }\naction = "reject"\n')
    parse_policy("p.toml", rules.replace("MONITOR", "monitor = true\n").encode())
    assert "unreachable" in one("[settings]\nmonitor = true\n" + rules.replace("MONITOR", ""))


def test_lint_collects_every_problem_in_file_order(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\nname = "a"\naction = "reject"\nreply = "no_such_reply"\n'
                   '[[rules]]\nname = "a"\naction = "rejekt"\nwhen = { spf = "failed", client_ip = "x" }\n'
                   '[settings]\nmonitor = 2\n')
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b"# caf\xe9\n")
    found = lint([bad, tmp_path / "missing.toml", latin1])
    assert [(p.file, p.line, p.key) for p in found] == [
        (str(bad), 4, 'rules."a".reply'),
        (str(bad), 6, 'rules."a".name'),
        (str(bad), 7, 'rules."a".action'),
        (str(bad), 8, 'rules."a".when.spf'),
        (str(bad), 8, 'rules."a".when.client_ip'),
        (str(bad), 10, "settings.monitor"),
        (str(tmp_path / "missing.toml"), 0, ""),
        (str(latin1), 1, ""),
    ]
    assert str(found[6]) == f"{tmp_path / 'missing.toml'}: cannot read: No such file or directory"
    with pytest.raises(PolicyError) as info:
        load_policy([bad, tmp_path / "missing.toml", latin1])
    assert str(info.value).splitlines() == [str(p) for p in found]


def test_problem_format() -> None:
    assert str(Problem("a.toml", 3, "rules.\"x\".action", "why")) == 'a.toml:3: rules."x".action: why'
    assert str(Problem("a.toml", 0, "", "cannot read")) == "a.toml: cannot read"
    assert str(PolicyError([Problem("a", 1, "k", "r"), Problem("b", 2, "", "s")])) == "a:1: k: r\nb:2: s"


def test_a_policy_is_read_completely() -> None:
    p = parse_policy("p.toml", b"""\xef\xbb\xbf# a byte-order mark is fine
[settings]
monitor = true
quarantine = "header"
quarantine_header = "X-Suspicious"

[replies.unsigned]
code = "550"
status = "5.7.20"
text = "Sign your mail"

[[rules]]
name = "relays"
description = "backup MX"
when = { client_ip = ["10.0.0.0/8", "2001:DB8::/32"], helo = ".Example.NET." }
action = "accept"
override = "trusted_forwarder"

[[rules]]
name = "unsigned"
when = { dkim = "none", rcpt_domain = ["b\xc3\xbccher.example"] }
stage = "eom"
action = "reject"
reply = "unsigned"
monitor = true

[[rules]]
name = "inline"
when = { spf = ["fail", "softfail"] }
stage = "rcpt"
action = "tempfail"
reply = { code = "451", status = "4.7.23", text = "Try again" }
""")
    assert (p.settings.monitor, p.settings.quarantine, p.settings.quarantine_header) == (True, "header",
                                                                                        "X-Suspicious")
    relays, unsigned, inline = p.rules
    assert (relays.name, relays.description, relays.action, relays.override, relays.source) == (
        "relays", "backup MX", Action.ACCEPT, "trusted_forwarder", "p.toml:12")
    assert [(c.key, c.values) for c in relays.when] == [
        ("client_ip", ("10.0.0.0/8", "2001:db8::/32")), ("helo", (".example.net",))]
    assert unsigned.reply == Reply("550", "5.7.20", "Sign your mail") and unsigned.reply_name == "unsigned"
    assert unsigned.monitor and unsigned.when[1].values == ("xn--bcher-kva.example",)
    assert (inline.stage, inline.reply_name) == (Stage.RCPT, "")
    assert inline.reply == Reply("451", "4.7.23", "Try again")
    assert p.replies["unsigned"].status == "5.7.20" and p.replies["reject"] == CATALOGUE["reject"]
    assert p.files == ("p.toml",)


def test_rules_without_a_reply_get_the_catalogue_default() -> None:
    p = parse_policy("p.toml", b'[[rules]]\nname = "r"\nwhen = { spf = "fail" }\naction = "reject"\n'
                               b'[[rules]]\nname = "t"\nwhen = { spf = "temperror" }\naction = "tempfail"\n'
                               b'[[rules]]\nname = "q"\nwhen = { spf = "softfail" }\naction = "quarantine"\n')
    assert [(r.reply, r.reply_name) for r in p.rules] == [
        (CATALOGUE["reject"], "reject"), (CATALOGUE["tempfail"], "tempfail"), (None, "")]


def test_an_overridden_default_reply_must_still_fit() -> None:
    found = one('[replies.reject]\ncode = "451"\nstatus = "4.7.1"\n'
                '[[rules]]\nname = "r"\nwhen = { spf = "fail" }\naction = "reject"\n')
    assert found == ('p.toml:7: rules."r".action: a reject rule needs a 5xx reply, got 451 '
                     "(the default reply 'reject')")


def test_files_merge_in_order(tmp_path: Path) -> None:
    base, local = tmp_path / "base.toml", tmp_path / "local.toml"
    base.write_text('[settings]\nquarantine = "header"\nquarantine_header = "X-Q"\n'
                    '[[rules]]\nname = "a"\nwhen = { spf = "fail" }\naction = "reject"\nreply = "polite"\n')
    local.write_text('[settings]\nquarantine = "hold"\n[replies.polite]\ncode = "550"\nstatus = "5.7.23"\n'
                     'text = "Not from here"\n[replies.reject]\ntext = "No thanks"\n'
                     '[[rules]]\nname = "b"\nwhen = { spf = "softfail" }\naction = "reject"\n')
    p = load_policy([base, local])
    assert [r.name for r in p.rules] == ["a", "b"]
    assert p.rules[0].source == f"{base}:4" and p.rules[1].source == f"{local}:9"
    # Later files override settings key by key, and a reply may be named before it is defined.
    assert (p.settings.quarantine, p.settings.quarantine_header) == ("hold", "X-Q")
    assert p.rules[0].reply == Reply("550", "5.7.23", "Not from here")
    assert p.rules[1].reply == Reply("550", "5.7.1", "No thanks")  # only the text was changed
    assert p.files == (str(base), str(local))


def test_empty_file_and_no_files_accept_everything(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("# nothing yet\n")
    assert load_policy([empty]).rules == () and load_policy([]).rules == ()


def test_replies_catalogue_is_valid() -> None:
    for name, reply in CATALOGUE.items():
        assert validate_reply(reply) == [], name
        action = Action.TEMPFAIL if reply.code.startswith("4") else Action.REJECT
        assert validate_reply(reply, action) == [], name
    assert "dmarc_quarantine" not in CATALOGUE
    assert (CATALOGUE["dmarc_reject"].code, CATALOGUE["dmarc_reject"].status) == ("550", "5.7.26")
    assert (CATALOGUE["spf_temperror"].code, CATALOGUE["spf_temperror"].status) == ("451", "4.7.24")
    assert [p.field for p in validate_reply(Reply("421", "4.7.0", "bye"), Action.TEMPFAIL)] == []
    broken = validate_reply(Reply("55", "5.7", ""), Action.REJECT)
    assert [p.field for p in broken] == ["code", "status", "text"]


# --- the shipped policies ------------------------------------------------------------------------


def test_default_policy_rules_in_order() -> None:
    p = load_policy([DEFAULT])
    assert [(r.name, r.action, r.reply_name, [(c.key, c.wanted()) for c in r.when]) for r in p.rules] == [
        ("authenticated", Action.ACCEPT, "", [("authenticated", "true")]),
        ("local-submission", Action.ACCEPT, "", [("client_ip", "127.0.0.1/32, ::1/128")]),
        ("bad-from", Action.REJECT, "bad_from", [("author", "invalid")]),
        ("dmarc-temperror", Action.TEMPFAIL, "dmarc_temperror", [("dmarc", "temperror")]),
        ("dmarc-reject", Action.REJECT, "dmarc_reject", [("dmarc", "fail"), ("dmarc_policy", "reject")]),
        ("dmarc-quarantine", Action.QUARANTINE, "", [("dmarc", "fail"), ("dmarc_policy", "quarantine")]),
    ]
    assert (p.settings.monitor, p.settings.quarantine) == (False, "hold")
    assert (p.earliest_stage, p.needs_early_spf) == (Stage.EOM, False)
    bad_from, temperror, reject = p.rules[2].reply, p.rules[3].reply, p.rules[4].reply
    assert bad_from is not None and bad_from.code == "550" and bad_from.status.startswith("5.7.")
    assert temperror is not None and temperror.code == "451" and temperror.status.startswith("4.7.")
    assert reject is not None and (reject.code, reject.status) == ("550", "5.7.26")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_parses_alone(path: Path) -> None:
    assert lint([path]) == []


def test_examples_as_documented() -> None:
    assert {p.name for p in EXAMPLES} == {"monitor-first.toml", "strict.toml", "forwarders.toml",
                                          "antispam.toml"}
    ex = ROOT / "policies" / "examples"
    monitored = load_policy([DEFAULT, ex / "monitor-first.toml"])
    assert monitored.settings.monitor and len(monitored.rules) == 6
    forwarders = load_policy([ex / "forwarders.toml", DEFAULT])
    assert [r.override for r in forwarders.rules[:2]] == ["trusted_forwarder", "mailing_list"]
    strict = load_policy([ex / "strict.toml"])
    assert (strict.earliest_stage, strict.needs_early_spf) == (Stage.RCPT, True)
    early = [r.name for r in strict.rules if strict.acts_early(r)]
    assert early == ["spf-fail", "spf-permerror", "spf-temperror"]
    must_sign = next(r for r in strict.rules if r.name == "must-sign")
    assert must_sign.reply_name == "dkim_author" and must_sign.condition("author_signed") is not None


def test_antispam_example_previews_its_early_rules_and_keeps_the_default_ones() -> None:
    antispam = load_policy([ROOT / "policies" / "examples" / "antispam.toml"])
    new_keys = {"iprev", "iprev_host", "helo_syntax_ok", "helo_fqdn", "helo_bare_ip",
                "helo_literal_mismatch", "helo_is_ours"}
    on_new = [r for r in antispam.rules if any(c.key in new_keys for c in r.when)]
    # Every key is shown in use, every such rule is previewed, and would act at MAIL FROM (the
    # greylisting of clients without reverse DNS at RCPT TO, where greylisting acts).
    assert {c.key for r in on_new for c in r.when} >= new_keys
    assert all(r.monitor for r in on_new)
    assert all(r.stage is (Stage.RCPT if r.action is Action.GREYLIST else Stage.MAIL) for r in on_new)
    assert (antispam.earliest_stage, antispam.needs_early_iprev) == (Stage.EOM, False)
    # A temperror is at most retried (a tempfail, or greylisting), never refused.
    on_temperror = [r for r in on_new if "temperror" in getattr(r.condition("iprev"), "values", ())]
    assert on_temperror and all(r.action in (Action.TEMPFAIL, Action.GREYLIST) for r in on_temperror)
    # DNS lists, rate limits and greylisting are shown too, previewed as well.
    antispam_keys = {"dnsbl", "dnswl", "ratelimit"}
    shown = {c.key for r in antispam.rules for c in r.when} | {r.action.value for r in antispam.rules}
    assert shown >= antispam_keys | {"greylist"}
    assert all(r.monitor for r in antispam.rules
               if r.action is Action.GREYLIST or any(c.key in ("dnsbl", "ratelimit") for c in r.when))
    default = load_policy([DEFAULT])
    tail = [(r.name, r.action, r.when, r.reply) for r in antispam.rules[-4:]]
    assert tail == [(r.name, r.action, r.when, r.reply) for r in default.rules[-4:]]
    # Enforced (monitor lines taken out) it is still a valid policy whose rules act at MAIL FROM.
    text = (ROOT / "policies" / "examples" / "antispam.toml").read_text().replace("monitor = true\n", "")
    enforced = parse_policy("antispam.toml", text.encode())
    assert (enforced.earliest_stage, enforced.needs_early_iprev, enforced.needs_early_spf) == (
        Stage.MAIL, True, True)
