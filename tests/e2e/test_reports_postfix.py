"""DMARC reports end to end: mail through the real Postfix and authmilter leaves a history,
`authmilter report send` builds the day's aggregate report from it and hands it to that
Postfix, which delivers it (through the milter, DKIM-signed by us) to the sink; failing mail
makes the milter send a failure report the same way.
"""

from __future__ import annotations

import gzip
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from lxml import etree
from parsedmarc import parse_report_email

from tests.dnsserver import DnsServer
from tests.e2e.conftest import (
    AUTHORISED_IP,
    AUTHSERV_ID,
    DEFAULT_POLICY,
    OUTSIDE_IP,
    Rig,
    outside_example,
    sender_example,
    write_signing,
)
from tests.e2e.postfix import PostfixInstance
from tests.integration.zones import zone
from tests.mailfactory import make_message
from tests.milterclient import ROOT, MilterProcess, free_port

XSD = ROOT / "tests" / "data" / "dmarc" / "dmarc-xml-0.2.xsd"
REPORTS_TO = "dmarc@rcpt.example"  # the sink's domain: the only one this Postfix delivers to
REPORTS_FROM = "dmarc-reports@sender.example"  # signed by the e2e signing table


def reporting_example() -> str:
    record = (f"v=DMARC1; p=quarantine; rua=mailto:{REPORTS_TO},mailto:agg@unverified.example; "
              f"ruf=mailto:{REPORTS_TO}; fo=1")
    return zone("reporting.example", f"""
@ IN TXT "v=spf1 ip4:127.0.2.0/24 -all"
_dmarc IN TXT "{record}"
""")


def rcpt_example() -> str:
    # RFC 9990 external destination verification: rcpt.example takes reports for reporting.example.
    return zone("rcpt.example", """
reporting.example._report._dmarc IN TXT "v=DMARC1"
""")


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        for z in (sender_example(), outside_example(), reporting_example(), rcpt_example()):
            server.add_zone(z)
        yield server


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer, postfix_installed: str) -> Iterator[Rig]:
    workdir = tmp_path_factory.mktemp("e2e-reports")
    postfix = PostfixInstance(milter_port=free_port(), smtp_port=free_port())
    home = workdir / "milter"
    home.mkdir()
    signing = write_signing(home)
    reports = (f'[reports]\norg_name = "e2e receiver"\nemail = "{REPORTS_FROM}"\n'
               f'smtp = "127.0.0.1:{postfix.smtp_port}"\nfailure = true\n')
    milter = MilterProcess(home, dns_port=dns.port, authserv_id=AUTHSERV_ID, port=postfix.milter_port,
                           extra=f'policy = ["{DEFAULT_POLICY}"]\nsigning = "{signing}"\n{reports}')
    try:
        milter.start()
        postfix.start()
        yield Rig(postfix, milter, dns, workdir, [milter])
    finally:
        postfix.stop()
        milter.stop()
        postfix.cleanup()


def wait_records(path: Path, count: int, timeout: float = 20.0, domain: str = "reporting.example") -> int:
    """Until `count` records reportable to `domain` are written (reports coming back through the
    milter leave records of their own, for another domain, at times of their own)."""
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        if path.exists():
            with sqlite3.connect(path) as db:
                try:
                    n = db.execute("SELECT count(*) FROM history WHERE policy_domain = ?",
                                   (domain,)).fetchone()[0]
                except sqlite3.OperationalError:
                    n = 0
            if n >= count:
                return n
        time.sleep(0.1)
    raise AssertionError(f"{n} of {count} history records written within {timeout}s")


def delivered_with_subject(postfix: PostfixInstance, prefix: str,
                           timeout: float = 30.0) -> list[EmailMessage]:
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for d in postfix.delivered():
            m = message_from_bytes(d.raw, policy=policy.default)
            if str(m.get("Subject", "")).startswith(prefix):
                found.append(m)
        if found or time.monotonic() > deadline:
            return found  # type: ignore[return-value]
        time.sleep(0.1)


def report_cli(rig: Rig, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "authmilter", *args, "-c", str(rig.milter.config)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_failure_report_is_delivered_for_failing_mail(rig: Rig) -> None:
    message = make_message(from_="Boss <boss@reporting.example>", message_id="<fail-1@e2e>")
    reply = rig.send(message, mail_from="x@outside.example", source_ip=OUTSIDE_IP,
                     helo="mail.outside.example")
    assert reply.code == 250, reply  # quarantined (held), so accepted
    found = delivered_with_subject(rig.postfix, "DMARC failure report")
    assert len(found) == 1, rig.logs()
    report = found[0]
    assert report["From"] == REPORTS_FROM and report["To"] == REPORTS_TO
    assert report.get_content_type() == "multipart/report"
    feedback = next(p for p in report.walk() if p.get_content_type() == "message/feedback-report")
    text = feedback.as_string()
    assert "Auth-Failure: dmarc" in text and f"Source-IP: {OUTSIDE_IP}" in text
    assert "Reported-Domain: reporting.example" in text
    # An independent reader takes it for what it is (offline: no lookups of its own).
    parsed = parse_report_email(report.as_bytes(), offline=True, always_use_local_files=True)
    assert parsed["report_type"] == "failure"
    assert parsed["report"]["reported_domain"] == "reporting.example"
    assert parsed["report"]["source"]["ip_address"] == OUTSIDE_IP
    # It went through our milter on the way out, signed by us: DMARC passes for it there.
    ar = " ".join(str(v) for v in report.get_all("Authentication-Results", []))
    assert "dkim=pass" in ar and "header.d=sender.example" in ar


def test_aggregate_report_for_yesterday_is_delivered_once(rig: Rig) -> None:
    for i in range(3):  # SPF-aligned passes
        reply = rig.send(make_message(from_="A <a@reporting.example>", message_id=f"<pass-{i}@e2e>"),
                         mail_from="bounce@reporting.example", source_ip=AUTHORISED_IP)
        assert reply.code == 250, reply
    reply = rig.send(make_message(from_="B <b@reporting.example>", message_id="<fail-2@e2e>"),
                     mail_from="x@outside.example", source_ip=OUTSIDE_IP, helo="mail.outside.example")
    assert reply.code == 250, reply
    history = rig.milter.history
    # The failure test's message and these four.
    wait_records(history, 5)
    # Yesterday's records: move them a day back, as if the day had passed.
    with sqlite3.connect(history) as db:
        db.execute("UPDATE history SET t = t - 86400, record = json_set(record, '$.t', "
                   "json_extract(record, '$.t') - 86400)")
    day = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")

    dry = report_cli(rig, "report", "send", "--day", day, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "reporting.example: would send" in dry.stdout
    assert "mailto:agg@unverified.example: not verified" in dry.stdout

    sent = report_cli(rig, "report", "send", "--day", day)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert f"mailto:{REPORTS_TO}: sent" in sent.stdout
    found = delivered_with_subject(rig.postfix, "Report Domain: reporting.example")
    assert len(found) == 1, rig.logs()
    report = found[0]
    ar = " ".join(str(v) for v in report.get_all("Authentication-Results", []))
    assert "dkim=pass" in ar and "header.d=sender.example" in ar, ar
    attachment = next(p for p in report.iter_attachments())
    assert attachment.get_content_type() == "application/gzip"
    xml = gzip.decompress(attachment.get_content())
    schema = etree.XMLSchema(etree.parse(str(XSD)))
    doc = etree.fromstring(xml)
    schema.assertValid(doc)
    ns = {"d": "urn:ietf:params:xml:ns:dmarc-2.0"}
    counts = {(r.findtext("d:row/d:source_ip", namespaces=ns),
               r.findtext("d:row/d:policy_evaluated/d:disposition", namespaces=ns)):
              int(r.findtext("d:row/d:count", namespaces=ns) or 0)
              for r in doc.findall("d:record", ns)}
    assert counts == {(AUTHORISED_IP, "pass"): 3, (OUTSIDE_IP, "quarantine"): 2}, xml.decode()

    parsed = parse_report_email(report.as_bytes(), offline=True, always_use_local_files=True)
    assert parsed["report_type"] == "aggregate"
    agg = parsed["report"]
    assert agg["policy_published"]["domain"] == "reporting.example"
    assert sum(r["count"] for r in agg["records"]) == 5

    again = report_cli(rig, "report", "send", "--day", day)
    assert again.returncode == 0 and "skipped: already sent" in again.stdout, again.stdout
    time.sleep(1.0)
    assert len(delivered_with_subject(rig.postfix, "Report Domain: reporting.example", 0.5)) == 1
