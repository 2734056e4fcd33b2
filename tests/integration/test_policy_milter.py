"""Policies through the real milter: replies with enhanced codes, quarantine, early refusal, reload."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dnsserver import DnsServer
from tests.integration.zones import example_org, zone
from tests.mailfactory import make_message, rsa_key, sign
from tests.milterclient import ROOT, MilterProcess

DEFAULT = ROOT / "policies" / "default.toml"


def quarantine_example() -> str:
    return zone("quarantine.example", """
@ IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc IN TXT "v=DMARC1; p=quarantine"
""")


def tempfail_example() -> str:
    return zone("tempfail.example", """
@ IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc IN TXT "v=DMARC1; p=reject"
""")


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.add_zone(example_org())
        server.add_zone(quarantine_example())
        server.add_zone(tempfail_example())
        server.set_fault("_dmarc.tempfail.example", "servfail")
        yield server


def start(workdir: Path, dns: DnsServer, *policy_files: Path) -> MilterProcess:
    names = ", ".join(f'"{p}"' for p in policy_files)
    return MilterProcess(workdir, dns_port=dns.port, extra=f"policy = [{names}]").start()


@pytest.fixture(scope="module")
def default_milter(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer) -> Iterator[MilterProcess]:
    m = start(tmp_path_factory.mktemp("default"), dns, DEFAULT)
    yield m
    m.stop()


def spoof(from_: str = "alice@example.org") -> bytes:
    return make_message(from_=from_)


def wait_for_log(m: MilterProcess, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = m.log()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in log:\n{m.log()[-3000:]}")


# --- the shipped defaults --------------------------------------------------------------------


def test_default_rejects_dmarc_p_reject_failure_with_550_5_7_26(default_milter: MilterProcess) -> None:
    with default_milter.session(client_ip="203.0.113.5", helo="evil.example") as s:
        out = s.message(spoof(), mail_from="alice@example.org")
    assert out.action == "reject" and out.stage == "eom"
    assert out.reply is not None and out.reply.startswith("550 5.7.26 ")
    assert "DMARC" in out.reply and "dmarc-reject" not in out.reply  # names the reason, not internals


def test_default_quarantines_p_quarantine_failure(default_milter: MilterProcess) -> None:
    with default_milter.session(client_ip="203.0.113.5") as s:
        out = s.message(spoof("bob@quarantine.example"), mail_from="bob@quarantine.example")
    assert out.action == "accept" and out.quarantine is not None
    assert len(out.header("Authentication-Results")) == 1


def test_default_tempfails_when_dmarc_cannot_be_evaluated(default_milter: MilterProcess) -> None:
    with default_milter.session(client_ip="192.0.2.10") as s:
        out = s.message(spoof("carol@tempfail.example"), mail_from="carol@tempfail.example")
    assert out.action == "tempfail"
    assert out.reply is not None and out.reply.startswith("451 4.7.")


@pytest.mark.parametrize("message", [
    make_message().replace(b"From: Alice <alice@example.org>\r\n", b""),
    make_message(extra_headers=(b"From: mallory@example.net",)),
    make_message(from_="alice@example.org, mallory@example.net"),
])
def test_default_rejects_missing_repeated_or_multi_domain_from(default_milter: MilterProcess,
                                                              message: bytes) -> None:
    signed = sign(message, domain="example.org", selector="rsa", key=rsa_key())
    with default_milter.session(client_ip="192.0.2.10") as s:
        out = s.message(signed, mail_from="alice@example.org")
    assert out.action == "reject"
    assert out.reply is not None and out.reply.startswith("550 5.7.")


def test_default_accepts_passing_mail_and_authenticated_senders(default_milter: MilterProcess) -> None:
    good = sign(make_message(), domain="example.org", selector="rsa", key=rsa_key())
    with default_milter.session(client_ip="192.0.2.10") as s:
        passing = s.message(good, mail_from="alice@example.org")
    with default_milter.session(client_ip="203.0.113.5") as s:
        authed = s.message(spoof(), mail_from="alice@example.org", auth_user="alice")
    assert passing.action == "accept" and passing.quarantine is None
    assert authed.action == "accept"
    assert "dmarc=fail" in authed.header("Authentication-Results")[0]  # still reported


# --- early refusal, monitor, quarantine by header ----------------------------------------------

EARLY = """
[[rules]]
name = "spf-fail-early"
when = { spf = "fail" }
stage = "rcpt"
action = "reject"
reply = "spf_fail"
"""


def test_spf_rule_refuses_at_rcpt_before_data(tmp_path: Path, dns: DnsServer) -> None:
    policy = tmp_path / "early.toml"
    policy.write_text(EARLY)
    m = start(tmp_path, dns, policy)
    try:
        with m.session(client_ip="203.0.113.5") as s:
            out = s.message(spoof(), mail_from="alice@example.org")
        with m.session(client_ip="192.0.2.10") as s:
            ok = s.message(sign(make_message(), domain="example.org", selector="rsa", key=rsa_key()),
                           mail_from="alice@example.org")
    finally:
        m.stop()
    assert out.stage == "rcpt" and out.action == "reject"
    assert out.reply is not None and out.reply.startswith("550 5.7.23 ")
    assert ok.action == "accept"
    assert "stage=rcpt" in m.log() and "rule=spf-fail-early" in m.log()


def test_global_monitor_accepts_and_logs_would(tmp_path: Path, dns: DnsServer) -> None:
    policy = tmp_path / "monitor.toml"
    policy.write_text(DEFAULT.read_text().replace("monitor = false", "monitor = true", 1))
    m = start(tmp_path, dns, policy)
    try:
        with m.session(client_ip="203.0.113.5") as s:
            out = s.message(spoof(), mail_from="alice@example.org", queue_id="MON1")
    finally:
        m.stop()
    assert out.action == "accept" and out.reply is None
    line = next(x for x in m.log().splitlines() if "qid=MON1" in x)
    assert "would=reject:dmarc-reject" in line and "action=accept" in line


def test_quarantine_by_header_when_the_policy_says_so(tmp_path: Path, dns: DnsServer) -> None:
    policy = tmp_path / "qh.toml"
    policy.write_text(DEFAULT.read_text().replace('quarantine = "hold"', 'quarantine = "header"', 1))
    m = start(tmp_path, dns, policy)
    try:
        with m.session(client_ip="203.0.113.5") as s:
            out = s.message(spoof("bob@quarantine.example"), mail_from="bob@quarantine.example")
    finally:
        m.stop()
    assert out.quarantine is None and out.action == "accept"
    assert out.header("X-Authmilter-Quarantine")


# --- reload ----------------------------------------------------------------------------------

ENFORCE = """
[[rules]]
name = "dmarc-reject"
when = { dmarc = "fail", dmarc_policy = "reject" }
action = "reject"
reply = "dmarc_reject"
"""


def test_sighup_reload_changes_the_next_decision_and_a_broken_one_changes_nothing(
        tmp_path: Path, dns: DnsServer) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(ENFORCE.replace('action = "reject"', 'action = "reject"\nmonitor = true'))
    m = start(tmp_path, dns, policy)
    assert m.proc is not None
    try:
        with m.session(client_ip="203.0.113.5") as s:
            before = s.message(spoof(), mail_from="alice@example.org")
        policy.write_text(ENFORCE)
        os.kill(m.proc.pid, signal.SIGHUP)
        wait_for_log(m, "generation 2")
        with m.session(client_ip="203.0.113.5") as s:
            after = s.message(spoof(), mail_from="alice@example.org")

        policy.write_text(ENFORCE.replace('action = "reject"', 'action = "rejekt"'))
        os.kill(m.proc.pid, signal.SIGHUP)
        log = wait_for_log(m, "reload refused")
        with m.session(client_ip="203.0.113.5") as s:
            still = s.message(spoof(), mail_from="alice@example.org")
        assert m.proc.poll() is None
    finally:
        m.stop()
    assert before.action == "accept"
    assert after.action == "reject"
    assert still.action == "reject"  # the broken set was refused; generation 2 still in force
    refused = next(x for x in log.splitlines() if "reload refused" in x)
    assert f"{policy}:5" in refused and "rejekt" in refused


def test_transaction_in_flight_finishes_under_the_set_it_started_with(tmp_path: Path, dns: DnsServer) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text("")  # no rules: accept
    m = start(tmp_path, dns, policy)
    assert m.proc is not None
    try:
        with m.session(client_ip="203.0.113.5") as s:
            s.start(mail_from="alice@example.org", queue_id="OLD1")
            policy.write_text(ENFORCE)
            os.kill(m.proc.pid, signal.SIGHUP)
            wait_for_log(m, "generation 2")
            in_flight = s.finish(spoof(), queue_id="OLD1")
            next_one = s.message(spoof(), mail_from="alice@example.org", queue_id="NEW1")
    finally:
        m.stop()
    assert in_flight.action == "accept"
    assert next_one.action == "reject"


def test_broken_policy_refuses_to_start(tmp_path: Path) -> None:
    policy = tmp_path / "bad.toml"
    policy.write_text('[[rules]]\nname = "x"\nwhen = { client_ip = ["10.0.0.0/33"] }\naction = "accept"\n')
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'policy = "{policy}"\n')
    r = subprocess.run([sys.executable, "-m", "authmilter", "serve", "-c", str(cfg)], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 78
    assert f"{policy}:3:" in r.stderr and "10.0.0.0/33" in r.stderr


# --- lint ------------------------------------------------------------------------------------


EXAMPLES = ROOT / "policies" / "examples"


@pytest.mark.parametrize("files", [
    [DEFAULT],
    [DEFAULT, EXAMPLES / "monitor-first.toml"],  # settings only, loaded after a policy
    [EXAMPLES / "forwarders.toml", DEFAULT],  # exceptions, loaded before the default rules
    [EXAMPLES / "strict.toml"],  # a whole policy of its own
    [EXAMPLES / "antispam.toml"],  # another one
    [EXAMPLES / "antispam.toml", EXAMPLES / "monitor-first.toml"],
], ids=["default", "monitor-first", "forwarders", "strict", "antispam", "antispam-monitored"])
def test_shipped_policies_pass_lint(files: list[Path]) -> None:
    r = subprocess.run([sys.executable, "-m", "authmilter", "policy", "lint", *map(str, files)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(EXAMPLES.glob("*.toml")) == sorted(
        [EXAMPLES / "forwarders.toml", EXAMPLES / "monitor-first.toml", EXAMPLES / "strict.toml",
         EXAMPLES / "antispam.toml"])


def test_sample_config_policy_passes_lint() -> None:
    r = subprocess.run([sys.executable, "-m", "authmilter", "policy", "lint", "-c",
                        str(ROOT / "etc" / "authmilter.toml")], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


def test_lint_reports_file_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[[rules]]\nname = "a"\naction = "reject"\nreply = "no_such_reply"\n'
                    b'[[rules]]\nname = "a"\naction = "accept"\n')
    nonutf = tmp_path / "latin1.toml"
    nonutf.write_bytes(b'# caf\xe9\n')
    r = subprocess.run([sys.executable, "-m", "authmilter", "policy", "lint", str(bad), str(nonutf)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"{bad}:4:" in r.stderr and "no_such_reply" in r.stderr
    assert f"{bad}:6:" in r.stderr  # the duplicate name
    assert f"{nonutf}:1:" in r.stderr and "UTF-8" in r.stderr


CUSTOM = """
[[rules]]
name = "drop-net-spoofs"
when = { dmarc = "fail", author_domain = ["example.org"], rcpt_domain = ["drop.example"] }
action = "discard"

[[rules]]
name = "greylike"
when = { spf = "fail" }
action = "tempfail"
reply = { code = "450", status = "4.7.23", text = "SPF check failed, try again later" }
"""


def test_discard_and_inline_450_reply(tmp_path: Path, dns: DnsServer) -> None:
    policy = tmp_path / "custom.toml"
    policy.write_text(CUSTOM)
    m = start(tmp_path, dns, policy)
    try:
        with m.session(client_ip="203.0.113.5") as s:
            dropped = s.message(spoof(), mail_from="alice@example.org", rcpts=("x@drop.example",))
            deferred = s.message(spoof(), mail_from="alice@example.org", rcpts=("x@other.example",))
    finally:
        m.stop()
    assert dropped.action == "discard"
    assert deferred.action == "tempfail" and deferred.reply == "450 4.7.23 SPF check failed, try again later"
