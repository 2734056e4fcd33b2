"""The history through the real milter: every evaluated message leaves one record, written off
the SMTP path (a broken history store delays and fails nothing), by every worker into one
file; `policy preview` reads it back under a draft policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authmilter.store.history import SqliteHistory
from tests.dnsserver import DnsServer
from tests.integration.zones import example_net, example_org
from tests.mailfactory import make_message, rsa_key, sign
from tests.milterclient import ROOT, MilterProcess

POLICY = ROOT / "policies" / "default.toml"


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.add_zone(example_org())
        server.add_zone(example_net())
        yield server


def count(path: Path, want: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        if path.exists():
            n = sum(1 for _ in SqliteHistory(str(path)).records(0, 2**40))
            if n >= want:
                return n
        time.sleep(0.1)
    return n


def send_mix(m: MilterProcess, n: int = 1) -> list[str]:
    actions = []
    for i in range(n):
        with m.session(client_ip="192.0.2.10", helo="mail.example.org") as s:
            good = sign(make_message(message_id=f"<g{i}@t>"), domain="example.org", selector="rsa",
                        key=rsa_key())
            actions.append(s.message(good, mail_from="alice@example.org").action)
        with m.session(client_ip="203.0.113.5", helo="evil.example") as s:
            actions.append(s.message(make_message(message_id=f"<s{i}@t>"),
                                     mail_from="alice@example.org").action)
        with m.session(client_ip="203.0.113.5", helo="evil.example") as s:
            spoof_net = make_message(from_="N <n@example.net>", message_id=f"<n{i}@t>")
            actions.append(s.message(spoof_net, mail_from="x@example.org").action)
    return actions


def test_each_message_leaves_one_record(tmp_path: Path, dns: DnsServer) -> None:
    m = MilterProcess(tmp_path, dns_port=dns.port, extra=f'policy = ["{POLICY}"]').start()
    try:
        actions = send_mix(m)
        assert actions == ["accept", "reject", "accept"]
        assert count(m.history, 3) == 3
    finally:
        m.stop()
    records = list(SqliteHistory(str(m.history)).records(0, 2**40))
    assert [r.action for r in records] == ["accept", "reject", "accept"]
    assert [(r.header_from, r.dmarc, r.client_ip) for r in records] == [
        ("example.org", "pass", "192.0.2.10"), ("example.org", "fail", "203.0.113.5"),
        ("example.net", "fail", "203.0.113.5")]
    assert records[1].rule == "dmarc-reject" and records[1].disposition == "reject"
    assert all(r.reportable for r in records)


def test_two_workers_write_one_history(tmp_path: Path, dns: DnsServer) -> None:
    m = MilterProcess(tmp_path, dns_port=dns.port, extra=f'policy = ["{POLICY}"]\nworkers = 2').start()
    try:
        send_mix(m, 4)
        assert count(m.history, 12) == 12
    finally:
        m.stop()


def test_a_broken_history_store_fails_no_mail(tmp_path: Path, dns: DnsServer) -> None:
    blocked = tmp_path / "history.db"
    blocked.mkdir()  # a directory where the SQLite file should be: every write fails
    m = MilterProcess(tmp_path, dns_port=dns.port,
                      extra=f'policy = ["{POLICY}"]\n[history]\npath = "{blocked}"').start()
    try:
        t0 = time.monotonic()
        assert send_mix(m, 2) == ["accept", "reject", "accept"] * 2
        assert time.monotonic() - t0 < 20
        deadline = time.monotonic() + 10
        while "history" not in m.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = m.log()
        assert "cannot write" in log and "mail is not affected" in log, log[-3000:]
        assert log.count("cannot write") == 1  # once per outage, not once per message
    finally:
        m.stop()


def test_preview_reads_the_recorded_traffic(tmp_path: Path, dns: DnsServer) -> None:
    m = MilterProcess(tmp_path, dns_port=dns.port, extra=f'policy = ["{POLICY}"]').start()
    try:
        send_mix(m, 2)
        assert count(m.history, 6) == 6
    finally:
        m.stop()
    draft = tmp_path / "draft.toml"
    draft.write_text('[[rules]]\nname = "all-dmarc-failures"\nwhen = { dmarc = "fail" }\n'
                     'action = "reject"\n')
    html = tmp_path / "preview.html"
    run = subprocess.run([sys.executable, "-m", "authmilter", "policy", "preview", "-c", str(m.config),
                          "--since", "1d", "--html", str(html), str(draft)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert run.returncode == 0, run.stderr
    assert "6 messages" in run.stdout
    assert "accept -> reject: 2" in run.stdout
    assert "example.net: 2 of 2" in run.stdout
    assert html.read_text().startswith("<!DOCTYPE html>")
    as_json = subprocess.run([sys.executable, "-m", "authmilter", "policy", "preview", "-c", str(m.config),
                              "--since", "1d", "--json", str(draft)],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
    summary = json.loads(as_json.stdout)
    assert summary["total"] == 6 and summary["changed"] == 2
    assert {(t["old"], t["new"], t["count"]) for t in summary["transitions"]} == {("accept", "reject", 2)}
