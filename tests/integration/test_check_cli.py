"""`authmilter check` through a real DNS server: the milter's evaluation on one file."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dnsserver import DnsServer
from tests.integration.zones import example_net, example_org
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
            milter_ar = next(v for _, n, v in s.message(msg, mail_from="bob@example.net").inserted)
    finally:
        m.stop()
    # libmilter folds with LF where the header in a file has CRLF; the text is the same.
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
