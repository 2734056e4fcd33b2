"""`authmilter check` through a real DNS server: the milter's evaluation on one file."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dnsserver import DnsServer
from tests.integration.zones import example_net, example_org, reverse_dns
from tests.mailfactory import make_message, rsa_key, sign
from tests.milterclient import ROOT, MilterProcess


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.add_zone(example_org())
        server.add_zone(example_net())
        yield server


@pytest.fixture
def config(tmp_path: Path, dns: DnsServer) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(f'authserv_id = "mx.test.example"\n[dns]\nnameservers = ["127.0.0.1"]\nport = {dns.port}\n'
                 "timeout = 1.0\n")
    return p


def check(config: Path, message: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authmilter", "check", "-c", str(config), *args, str(message)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)


def check_json(config: Path, message: Path, *args: str) -> dict[str, Any]:
    r = check(config, message, "--json", *args)
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def test_json_report_fields(tmp_path: Path, config: Path) -> None:
    eml = tmp_path / "m.eml"
    eml.write_bytes(sign(make_message(), domain="example.org", selector="rsa", key=rsa_key()))
    out = check_json(config, eml, "--client-ip", "192.0.2.10", "--helo", "mail.example.org",
                     "--mail-from", "alice@example.org", "--rcpt", "bob@example.com")
    assert out["action"] == "accept" and out["reply"] is None
    assert out["authentication_results"].startswith("mx.test.example;")
    assert out["spf"] == {"result": "pass", "domain": "example.org", "identity": "mailfrom",
                          "reason": out["spf"]["reason"]}
    assert [(d["result"], d["domain"], d["selector"], d["algorithm"]) for d in out["dkim"]] == [
        ("pass", "example.org", "rsa", "rsa-sha256")]
    d = out["dmarc"]
    assert (d["result"], d["domain"], d["policy"], d["spf_aligned"], d["dkim_aligned"]) == (
        "pass", "example.org", "reject", True, True)


def test_null_sender_and_failing_dmarc(tmp_path: Path, config: Path) -> None:
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_message())
    out = check_json(config, eml, "--client-ip", "203.0.113.9", "--helo", "mail.example.org",
                     "--mail-from", "")
    assert out["spf"]["identity"] == "helo" and out["spf"]["result"] == "fail"
    assert out["dkim"] == []
    assert out["dmarc"]["result"] == "fail" and out["dmarc"]["policy"] == "reject"
    assert out["dmarc"]["spf_aligned"] is False and out["dmarc"]["dkim_aligned"] is False


def test_text_output_and_lf_only_file(tmp_path: Path, config: Path) -> None:
    eml = tmp_path / "m.eml"
    signed = sign(make_message(), domain="example.org", selector="rsa", key=rsa_key())
    eml.write_bytes(signed.replace(b"\r\n", b"\n"))  # as saved by a mail client
    r = check(config, eml, "--client-ip", "192.0.2.10", "--helo", "mail.example.org",
              "--mail-from", "alice@example.org")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Authentication-Results: mx.test.example;")
    assert "dkim=pass" in r.stdout
    assert r.stdout.rstrip().endswith("action: accept")


def test_check_agrees_with_the_milter(tmp_path: Path, config: Path, dns: DnsServer) -> None:
    msg = sign(make_message(from_="alice@example.org"), domain="example.org", selector="rsa", key=rsa_key())
    msg = msg + b"tampered\r\n"
    eml = tmp_path / "m.eml"
    eml.write_bytes(msg)
    out = check_json(config, eml, "--client-ip", "198.51.100.7", "--helo", "h.example.net",
                     "--mail-from", "bob@example.net")
    m = MilterProcess(tmp_path, dns_port=dns.port).start()
    try:
        with m.session(client_ip="198.51.100.7", helo="h.example.net") as s:
            milter_ar = next(v for _, n, v in s.message(msg, mail_from="bob@example.net").inserted)[1:]
    finally:
        m.stop()
    # libmilter folds with LF where the header in a file has CRLF, and the milter value starts
    # with the space after the colon (HDR_LEADSPC); the text is otherwise the same.
    assert out["authentication_results"].replace("\r\n", "\n") == milter_ar
    assert out["dkim"][0]["result"] == "fail"


def test_unreadable_message_and_bad_config(tmp_path: Path, config: Path) -> None:
    r = check(config, tmp_path / "missing.eml", "--client-ip", "192.0.2.1", "--helo", "h", "--mail-from", "")
    assert r.returncode == 64 and "cannot read" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[dkim]\nmax_signatures = 'ten'\n")
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_message())
    r = check(bad, eml, "--client-ip", "192.0.2.1", "--helo", "h", "--mail-from", "")
    assert r.returncode == 78 and "dkim.max_signatures: expected an integer" in r.stderr


POLICIES = ROOT / "policies"


def policy_config(tmp_path: Path, dns: DnsServer, *files: Path) -> Path:
    p = tmp_path / "policy.toml"
    names = ", ".join(f'"{f}"' for f in files)
    p.write_text(f'authserv_id = "mx.test.example"\npolicy = [{names}]\n'
                 f'[dns]\nnameservers = ["127.0.0.1"]\nport = {dns.port}\ntimeout = 1.0\n')
    return p


def test_json_names_the_rule_and_explain_shows_facts(tmp_path: Path, dns: DnsServer) -> None:
    cfg = policy_config(tmp_path, dns, POLICIES / "default.toml")
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_message())
    args = ("--client-ip", "203.0.113.9", "--helo", "evil.example", "--mail-from", "alice@example.org")
    out = check_json(cfg, eml, *args)
    assert out["action"] == "reject" and out["stage"] == "eom"
    assert out["reply"] == {"code": "550", "status": "5.7.26", "text": out["reply"]["text"]}
    assert out["rule"] == "dmarc-reject"
    lines = (POLICIES / "default.toml").read_text().splitlines()
    header = max(i for i in range(lines.index('name = "dmarc-reject"')) if lines[i] == "[[rules]]")
    assert out["rule_source"] == f"{POLICIES / 'default.toml'}:{header + 1}"
    r = check(cfg, eml, "--explain", *args)
    assert r.returncode == 0, r.stderr
    assert "decided by: rule dmarc-reject at" in r.stdout
    assert "dmarc_policy in [reject]: is reject: yes" in r.stdout
    assert re.search(r"spf\s+fail", r.stdout)


def test_monitor_reports_would_and_accepts(tmp_path: Path, dns: DnsServer) -> None:
    monitor = POLICIES / "examples" / "monitor-first.toml"
    cfg = policy_config(tmp_path, dns, POLICIES / "default.toml", monitor)
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_message())
    out = check_json(cfg, eml, "--client-ip", "203.0.113.9", "--helo", "h",
                     "--mail-from", "alice@example.org")
    assert out["action"] == "accept" and out["reply"] is None and out["rule"] is None
    assert [(m["rule"], m["action"], m["reply"]["status"]) for m in out["monitor"]] == [
        ("dmarc-reject", "reject", "5.7.26")]


def test_forwarder_override_is_reported(tmp_path: Path, dns: DnsServer) -> None:
    cfg = policy_config(tmp_path, dns, POLICIES / "examples" / "forwarders.toml", POLICIES / "default.toml")
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_message())
    out = check_json(cfg, eml, "--client-ip", "198.51.100.20", "--helo", "fwd.example",
                     "--mail-from", "alice@example.org")
    assert out["action"] == "accept" and out["rule"] == "trusted-forwarder"
    assert out["override"] == "trusted_forwarder"
    assert "override=trusted_forwarder" in out["authentication_results"]
    assert out["dmarc"]["result"] == "fail"


def test_early_rcpt_refusal_in_check(tmp_path: Path, dns: DnsServer) -> None:
    cfg = policy_config(tmp_path, dns, POLICIES / "examples" / "strict.toml")
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_message())
    out = check_json(cfg, eml, "--client-ip", "203.0.113.9", "--helo", "h.example.net",
                     "--mail-from", "alice@example.org", "--rcpt", "bob@example.com")
    assert out["stage"] == "rcpt" and out["action"] == "reject"
    assert out["reply"]["code"] == "550" and out["reply"]["status"] == "5.7.23"


def test_json_and_explain_show_iprev_and_helo(tmp_path: Path, dns: DnsServer) -> None:
    for text in reverse_dns():
        dns.add_zone(text)
    cfg = policy_config(tmp_path, dns, POLICIES / "default.toml")
    eml = tmp_path / "m.eml"
    eml.write_bytes(sign(make_message(), domain="example.org", selector="rsa", key=rsa_key()))
    args = ("--client-ip", "192.0.2.10", "--helo", "[192.0.2.99]", "--mail-from", "alice@example.org")
    out = check_json(cfg, eml, *args)
    assert out["action"] == "accept" and out["rule"] is None
    assert out["iprev"] == {"result": "pass", "ip": "192.0.2.10", "host": "mail.rdns.example",
                            "ptr_names": ["mail.rdns.example"], "reason": ""}
    helo = out["helo"]
    assert (helo["name"], helo["syntax_ok"], helo["literal"], helo["literal_mismatch"], helo["is_ours"]) == (
        "[192.0.2.99]", True, True, True, False)
    assert "iprev=pass policy.iprev=192.0.2.10 (mail.rdns.example);" in out["authentication_results"]
    r = check(cfg, eml, "--explain", *args)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^\s+iprev\s+pass$", r.stdout, re.M)
    assert re.search(r"^\s+iprev_host\s+mail\.rdns\.example$", r.stdout, re.M)
    assert re.search(r"^\s+helo_literal_mismatch\s+true$", r.stdout, re.M)
    assert re.search(r"^\s+helo_fqdn\s+false$", r.stdout, re.M)


def test_check_refuses_at_mail_from_on_iprev_and_helo_rules(tmp_path: Path, dns: DnsServer) -> None:
    for text in reverse_dns():
        dns.add_zone(text)
    policy = tmp_path / "antispam.toml"
    policy.write_text('[[rules]]\nname = "no-rdns"\nwhen = { iprev = "permerror" }\nstage = "mail"\n'
                      'action = "reject"\n\n'
                      '[[rules]]\nname = "ours"\nwhen = { helo_is_ours = true }\nstage = "mail"\n'
                      'action = "reject"\n')
    cfg = policy_config(tmp_path, dns, policy)
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_message())
    no_ptr = check_json(cfg, eml, "--client-ip", "203.0.113.9", "--helo", "h.example.net",
                        "--mail-from", "alice@example.org")
    assert (no_ptr["action"], no_ptr["stage"], no_ptr["rule"]) == ("reject", "mail", "no-rdns")
    assert no_ptr["iprev"]["result"] == "permerror" and no_ptr["dkim"] == []
    # check has no MTA to name us: the authserv-id of the config is our name.
    ours = check_json(cfg, eml, "--client-ip", "192.0.2.10", "--helo", "MX.test.example",
                      "--mail-from", "alice@example.org")
    assert (ours["action"], ours["stage"], ours["rule"]) == ("reject", "mail", "ours")
    assert ours["helo"]["is_ours"] is True and ours["iprev"]["result"] == "pass"  # the first rule's


# --- a newcomer's path -------------------------------------------------------------------------


def test_only_the_client_ip_is_needed_and_what_was_assumed_is_named(tmp_path: Path, config: Path) -> None:
    # The fixture's config names no policy: the shipped default decides, so the spoof is refused.
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_message(from_="Alice <alice@example.org>", to="Bob <bob@example.com>"))
    r = check(config, eml, "--client-ip", "203.0.113.5")
    assert r.returncode == 0, r.stderr
    assert ("assumed --helo [203.0.113.5] (the client's address literal); --mail-from alice@example.org "
            "(the From field); --rcpt bob@example.com (the To and Cc fields)") in r.stderr
    assert "action: reject 550 5.7.26" in r.stdout


@pytest.mark.parametrize("ip", ["999.1.1.1", "mail.example.org", ""])
def test_a_client_ip_that_is_no_address_is_refused_with_ex_usage(tmp_path: Path, config: Path,
                                                                  ip: str) -> None:
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_message())
    r = check(config, eml, "--client-ip", ip)
    assert r.returncode == 64 and "is not an IPv4 or IPv6 address" in r.stderr, r.stderr
    assert r.stdout == ""


def test_a_closed_dns_port_is_reported_as_refused_not_waited_out(tmp_path: Path, config: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    (tmp_path / "closed.toml").write_text(
        f'[dns]\nnameservers = ["127.0.0.1", "127.0.0.2"]\nport = {closed}\ntimeout = 20.0\n')
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_message())
    started = time.monotonic()
    r = check(tmp_path / "closed.toml", eml, "--client-ip", "192.0.2.1")
    assert time.monotonic() - started < 20.0  # not one lifetime, let alone one per lookup
    assert f'spf=temperror (client-ip=192.0.2.1) reason="DNS TXT example.org failed: 127.0.0.1, 127.0.0.2: ' \
           f'connection refused (nothing listening on port {closed})"' in r.stdout
    assert "action: tempfail 451 4.7.1" in r.stdout


def test_the_sample_config_printed_and_copied_anywhere_works_with_the_shipped_policy(
        tmp_path: Path, dns: DnsServer) -> None:
    sample = subprocess.run([sys.executable, "-m", "authmilter", "sample-config"], cwd=ROOT,
                            capture_output=True, text=True, timeout=30, check=True).stdout
    assert sample == (ROOT / "etc" / "authmilter.toml").read_text()
    elsewhere = tmp_path / "etc" / "authmilter"
    elsewhere.mkdir(parents=True)
    cfg = elsewhere / "authmilter.toml"
    ours = sample.replace("nameservers = []\nport = 53\n",
                          f'nameservers = ["127.0.0.1"]\nport = {dns.port}\n')
    assert ours != sample
    cfg.write_text(ours)
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_message(from_="Alice <alice@example.org>"))
    r = check(cfg, eml, "--client-ip", "203.0.113.5", "--explain")
    assert r.returncode == 0, r.stderr
    assert "action: reject" in r.stdout and "dmarc-reject" in r.stdout


def test_serve_without_c_reads_the_system_config_and_says_so_when_it_is_missing() -> None:
    if Path("/etc/authmilter/authmilter.toml").exists():
        pytest.skip("this host has /etc/authmilter/authmilter.toml; the test needs it absent")
    r = subprocess.run([sys.executable, "-m", "authmilter", "serve"], cwd=ROOT, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 78
    assert "no config: /etc/authmilter/authmilter.toml (read when -c is not given) does not exist" in r.stderr
    assert "authmilter sample-config >" in r.stderr
