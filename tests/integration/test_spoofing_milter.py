"""Spoofs of a p=reject domain through the real milter and through `authmilter check`: one action.

The same bytes go over the milter protocol (tests/milterclient.py sends each header value as it is
in the message, NUL bytes included, as a raw SMFIC_HEADER packet) and into `check` as a file, with
one DNS server and the shipped default policy behind both. The core's view of each case is in
tests/unit/test_spoofing.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dnsserver import DnsServer
from tests.integration.zones import example_org, zone
from tests.milterclient import ROOT, MilterProcess

DEFAULT_POLICY = ROOT / "policies" / "default.toml"
ATTACKER_IP = "203.0.113.66"


def message(*lines: bytes) -> bytes:
    return b"\r\n".join((*lines, b"To: bob@example.com", b"Subject: invoice",
                         b"Message-ID: <1@evil.example>")) + b"\r\n\r\npay now\r\n"


# name, message, the action both must give (and the rule that gives it, when one does)
CASES = [
    ("obs-from-space", message(b"From: a@evil.example", b"From : ceo@example.org"), "reject", "bad-from"),
    ("obs-from-tab", message(b"From\t: ceo@example.org", b"From: a@evil.example"), "reject", "bad-from"),
    ("obs-from-alone", message(b"From : ceo@example.org"), "reject", "dmarc-reject"),
    ("obs-from-vtab", message(b"From: a@evil.example", b"From\x0b: ceo@example.org"), "reject", "bad-from"),
    ("obs-from-cr", message(b"From\r: ceo@example.org", b"From: a@evil.example"), "reject", "bad-from"),
    ("idna-display-name", message(b"From: =?idna?b?w7/+?= <ceo@example.org>"), "reject", "dmarc-reject"),
    ("undefined-comment", message(b"From: ceo@example.org (=?undefined?q?x?=)"), "reject", "dmarc-reject"),
    ("two-addresses", message(b"From: a@evil.example, ceo@example.org"), "reject", "bad-from"),
    # The MTA hands milters (and Postfix delivers) the value up to the NUL: no one sees the victim.
    ("nul-in-from", message(b"From: eve@evil.example\x00, ceo@example.org"), "accept", None),
    # A bare CR (Sendmail passes it; a client may break the line there) hides a second From.
    ("bare-cr-hides-from", message(b"From: a@evil.example", b"Subject: hi\rFrom: ceo@example.org"),
     "reject", "bad-from"),
    ("bare-lf-hides-from", message(b"From: a@evil.example", b"Subject: hi\nFrom: ceo@example.org"),
     "reject", "bad-from"),
    ("forged-results-obs", message(b"Authentication-Results : mx.test.example; dmarc=pass",
                                   b"From: ceo@example.org"), "reject", "dmarc-reject"),
]


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.add_zone(example_org())
        server.add_zone(zone("evil.example", '@ IN TXT "v=spf1 +all"\nmail IN TXT "v=spf1 +all"\n'))
        yield server


@pytest.fixture(scope="module", params=["tempfail", "accept"])
def milter(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           dns: DnsServer) -> Iterator[MilterProcess]:
    m = MilterProcess(tmp_path_factory.mktemp("spoof"), dns_port=dns.port,
                      extra=f'policy = ["{DEFAULT_POLICY}"]\nfail_safe = "{request.param}"').start()
    yield m
    m.stop()


def check(milter: MilterProcess, eml: Path) -> dict[str, object]:
    r = subprocess.run(
        [sys.executable, "-m", "authmilter", "check", "-c", str(milter.config), "--json",
         "--client-ip", ATTACKER_IP, "--helo", "mail.evil.example", "--mail-from", "eve@evil.example",
         "--rcpt", "bob@example.com", str(eml)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out: dict[str, object] = json.loads(r.stdout)
    return out


@pytest.mark.parametrize(("name", "msg", "action", "rule"), CASES, ids=[c[0] for c in CASES])
def test_milter_and_check_take_one_decision(milter: MilterProcess, tmp_path: Path, name: str, msg: bytes,
                                            action: str, rule: str | None) -> None:
    with milter.session(client_ip=ATTACKER_IP, helo="mail.evil.example") as s:
        wire = s.message(msg, mail_from="eve@evil.example")
    eml = tmp_path / f"{name}.eml"
    eml.write_bytes(msg)
    cli = check(milter, eml)
    assert wire.action == cli["action"] == action, (wire, cli)
    if action == "reject":
        assert wire.reply is not None and wire.reply.startswith("550 ")
        assert cli["rule"] == rule, cli
    else:
        ar = wire.header("Authentication-Results")
        # Folded with LF for libmilter and CRLF in the report: the same words either way.
        assert len(ar) == 1 and ar[0].split() == str(cli["authentication_results"]).split()
        assert "header.from=evil.example" in ar[0] and "example.org" not in ar[0].replace("evil.example", "")
    assert "Traceback" not in milter.log()
