"""RFC 9991 failure reports: when fo= asks for one, where ruf= sends it, and what it says.

Every report is read back with the standard library (policy=default) and with parsedmarc
(offline), so that what is checked is what an independent reader sees, not our own bytes.
"""

from __future__ import annotations

import base64
import dataclasses
import email
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime
from typing import Any, cast

import pytest
from parsedmarc import parse_report_email

from authmilter.core.model import (
    AuthorResult,
    DkimResult,
    DmarcRecord,
    DmarcResult,
    Header,
    Results,
    SpfIdentity,
    SpfResult,
    SpfResults,
    Transaction,
)
from authmilter.reports.failure import (
    FailureReporter,
    build_failure_report,
    identity_alignment,
    report_destinations,
    wanted,
)

ARRIVAL = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 +0000
REPORTER = FailureReporter(reporting_domain="mx.test", from_address="DMARC Reports <dmarc@mx.test>")
RECORD = DmarcRecord(domain="example.com", p="reject", sp=None, np=None, adkim="r", aspf="r",
                     pct=None, t=False, psd=None, raw="v=DMARC1; p=reject",
                     ruf=("mailto:ruf@example.com",), fo=None)
HEADERS = (
    Header(b"Received", b" from mail.forger.test (mail.forger.test [192.0.2.7])\r\n\tby mx.test"),
    Header(b"From", b" Bank <alerts@example.com>"),
    Header(b"To", b" victim@mx.test"),
    Header(b"Subject", b" Your account"),
    Header(b"DKIM-Signature", b" v=1; a=rsa-sha256; d=example.com; s=sel1; b=abcdefgh"),
)
TX = Transaction(client_ip="192.0.2.7", helo="mail.forger.test", mail_from="bounce@forger.test",
                 rcpts=("victim@mx.test",), headers=HEADERS, body=b"SECRET BODY TEXT\r\n",
                 queue_id="4AE9D403CC")
AR = ("mx.test;\n\tspf=fail smtp.mailfrom=forger.test;\n\tdkim=fail header.d=example.com "
      "header.s=sel1 header.b=abcdefgh;\n\tdmarc=fail header.from=example.com")
FEEDBACK_FIELDS = {"Feedback-Type", "User-Agent", "Version", "Auth-Failure", "Original-Mail-From",
                   "Arrival-Date", "Original-Envelope-Id", "Source-IP", "Reported-Domain",
                   "Authentication-Results", "Identity-Alignment"}
TOP_FIELDS = {"From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Auto-Submitted",
              "Content-Type", "Content-Transfer-Encoding"}


# parsedmarc can resolve names and fetch maps; any attempt here is a test failure.
pytestmark = pytest.mark.usefixtures("no_network")


def spf(result: str, domain: str = "forger.test") -> SpfResults:
    return SpfResults(SpfResult(result, SpfIdentity.MAILFROM, domain, f"bounce@{domain}"), None)


def sig(result: str, domain: str = "example.com", selector: str = "sel1",
        identity: str = "") -> DkimResult:
    return DkimResult(result, domain, selector, "rsa-sha256", "abcdefgh", identity=identity)


def results(*, dkim: tuple[DkimResult, ...] = (sig("fail"),), spf_results: SpfResults | None = None,
            dmarc: str = "fail", record: DmarcRecord = RECORD, domain: str = "example.com",
            dkim_aligned: bool = False, spf_aligned: bool = False) -> Results:
    return Results(
        spf=spf_results if spf_results is not None else spf("fail"),
        dkim=dkim,
        author=AuthorResult(domain, (f"alerts@{domain}",)),
        dmarc=DmarcResult(result=dmarc, domain=domain, policy="reject", applied_tag="p",
                          org_domain="example.com", record=record, dkim_aligned=dkim_aligned,
                          spf_aligned=spf_aligned))


def build(tx: Transaction = TX, res: Results | None = None, **kwargs: Any) -> bytes:
    args: dict[str, Any] = {"to": ("ruf@example.com",), "arrival": ARRIVAL,
                            "authentication_results": AR, "message_id": "<r1@mx.test>"}
    args.update(kwargs)
    return build_failure_report(tx, res if res is not None else results(), REPORTER, **args)


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def parts(msg: EmailMessage) -> list[Message]:
    payload = msg.get_payload()
    assert isinstance(payload, list)
    return [p for p in payload if isinstance(p, Message)]


def feedback(msg: EmailMessage) -> Message:
    """The message/feedback-report part's fields, which the parser reads as a nested message."""
    inner = parts(msg)[1].get_payload()
    assert isinstance(inner, list) and len(inner) == 1 and isinstance(inner[0], Message)
    return inner[0]


def original_headers(msg: EmailMessage) -> bytes:
    data = parts(msg)[2].get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


def parsedmarc_report(data: bytes) -> dict[str, Any]:
    parsed = parse_report_email(data, offline=True, always_use_local_files=True)
    assert parsed["report_type"] == "failure"
    return cast(dict[str, Any], parsed["report"])


# --- the message ----------------------------------------------------------------------------------


def test_top_level_header_fields() -> None:
    msg = parse(build())
    assert set(msg.keys()) == TOP_FIELDS
    assert msg["From"].addresses[0].addr_spec == "dmarc@mx.test"
    assert msg["From"].addresses[0].display_name == "DMARC Reports"
    assert [a.addr_spec for a in msg["To"].addresses] == ["ruf@example.com"]
    assert msg["Subject"] == "DMARC failure report for example.com"
    assert parsedate_to_datetime(msg["Date"]) == datetime.fromtimestamp(ARRIVAL, UTC)
    assert msg["Message-ID"] == "<r1@mx.test>"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "feedback-report"
    assert not msg.defects


def test_date_is_now_when_given() -> None:
    msg = parse(build(now=ARRIVAL + 60))
    assert parsedate_to_datetime(msg["Date"]) == datetime.fromtimestamp(ARRIVAL + 60, UTC)
    assert parsedate_to_datetime(feedback(msg)["Arrival-Date"]) == datetime.fromtimestamp(ARRIVAL, UTC)


def test_three_parts_in_rfc_6591_order() -> None:
    msg = parse(build())
    types = [p.get_content_type() for p in parts(msg)]
    assert types == ["text/plain", "message/feedback-report", "text/rfc822-headers"]
    text = parts(msg)[0].get_payload(decode=True)
    assert isinstance(text, bytes)
    assert b"example.com" in text and b"192.0.2.7" in text


def test_feedback_report_fields() -> None:
    fb = feedback(parse(build(delivery_result="reject")))
    assert set(fb.keys()) == FEEDBACK_FIELDS | {"Delivery-Result", "DKIM-Domain", "DKIM-Identity",
                                                "DKIM-Selector"}
    assert fb["Feedback-Type"] == "auth-failure"
    assert fb["User-Agent"] == "authmilter/0.1"
    assert fb["Version"] == "1"
    assert fb["Auth-Failure"] == "dmarc"
    assert fb["Original-Mail-From"] == "<bounce@forger.test>"
    assert parsedate_to_datetime(fb["Arrival-Date"]) == datetime.fromtimestamp(ARRIVAL, UTC)
    assert fb["Original-Envelope-Id"] == "4AE9D403CC"
    assert fb["Source-IP"] == "192.0.2.7"
    assert fb["Reported-Domain"] == "example.com"
    assert " ".join(str(fb["Authentication-Results"]).split()) == " ".join(AR.split())
    assert fb["Identity-Alignment"] == "dkim"  # SPF's forger.test is not aligned
    assert fb["Delivery-Result"] == "reject"
    assert (fb["DKIM-Domain"], fb["DKIM-Identity"], fb["DKIM-Selector"]) == (
        "example.com", "@example.com", "sel1")
    assert "Original-Rcpt-To" not in fb  # RFC 9991 privacy: the recipient stays ours


def test_long_fields_are_folded_within_78_columns() -> None:
    long_ar = "mx.test; " + "; ".join(f"dkim=fail header.d=d{i}.example.com header.s=s{i}"
                                      for i in range(20))
    data = build(authentication_results=long_ar)
    head = data.split(b"\r\n\r\n--", 1)[0] + data.split(b"message/feedback-report", 1)[1]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78
    assert " ".join(str(feedback(parse(data))["Authentication-Results"]).split()) == long_ar


def test_empty_authentication_results_gets_a_dmarc_clause() -> None:
    fb = feedback(parse(build(authentication_results="")))
    assert fb["Authentication-Results"] == "mx.test; dmarc=fail header.from=example.com"


def test_only_the_header_section_is_sent_verbatim() -> None:
    data = build()
    msg = parse(data)
    part = parts(msg)[2]
    assert part["Content-Transfer-Encoding"] == "7bit"
    assert original_headers(msg) == b"".join(h.raw() for h in HEADERS)
    assert b"SECRET BODY" not in data


@pytest.mark.parametrize(("value", "charset"), [
    (b" Caf\xc3\xa9 r\xc3\xa9serv\xc3\xa9", "utf-8"),
    (b" Caf\xe9 (latin-1, no charset)", "unknown-8bit"),
])
def test_8bit_header_bytes_go_base64_unchanged(value: bytes, charset: str) -> None:
    tx = dataclasses.replace(TX, headers=(*HEADERS, Header(b"Subject", value)))
    data = build(tx)
    assert data.isascii()  # the report itself needs no 8BITMIME anywhere
    msg = parse(data)
    part = parts(msg)[2]
    assert part["Content-Transfer-Encoding"] == "base64"
    assert part.get_content_charset() == charset
    assert original_headers(msg) == b"".join(h.raw() for h in tx.headers)


def test_bare_lf_and_overlong_lines_go_base64() -> None:
    for extra in (Header(b"X-Odd", b" one\ntwo"), Header(b"X-Long", b" " + b"a" * 1200)):
        tx = dataclasses.replace(TX, headers=(*HEADERS, extra))
        msg = parse(build(tx))
        assert parts(msg)[2]["Content-Transfer-Encoding"] == "base64"
        assert original_headers(msg) == b"".join(h.raw() for h in tx.headers)


def test_no_client_ip_means_no_source_ip() -> None:
    fb = feedback(parse(build(dataclasses.replace(TX, client_ip=None))))
    assert "Source-IP" not in fb


def test_null_sender_is_angle_brackets() -> None:
    fb = feedback(parse(build(dataclasses.replace(TX, mail_from=""))))
    assert fb["Original-Mail-From"] == "<>"


def test_arguments_of_ours_are_checked() -> None:
    with pytest.raises(ValueError, match="destinations"):
        build(to=("ruf@example.com\r\nBcc: everyone@example.net",))
    with pytest.raises(ValueError, match="destinations"):
        build(to=())
    with pytest.raises(ValueError, match="Message-ID"):
        build(message_id="<r1@mx.test>\r\nX-Injected: 1")
    with pytest.raises(ValueError, match="Delivery-Result"):
        build(delivery_result="bounced")
    with pytest.raises(ValueError, match="DMARC"):
        build(res=dataclasses.replace(results(), dmarc=None))


# --- Identity-Alignment and the per-mechanism fields ---------------------------------------------


def test_aligned_spf_failure() -> None:
    res = results(dkim=(sig("fail", domain="other.test"),), spf_results=spf("fail", "mail.example.com"))
    fb = feedback(parse(build(res=res, spf_record='v=spf1 ip4:198.51.100.0/24 "x" -all')))
    assert fb["Identity-Alignment"] == "spf"
    assert "DKIM-Domain" not in fb
    assert fb["SPF-DNS"] == 'txt : mail.example.com : "v=spf1 ip4:198.51.100.0/24 \\"x\\" -all"'


def test_spf_dns_only_for_an_aligned_spf_failure_with_a_record() -> None:
    assert "SPF-DNS" not in feedback(parse(build(spf_record="v=spf1 -all")))  # forger.test
    res = results(spf_results=spf("fail", "example.com"))
    assert "SPF-DNS" not in feedback(parse(build(res=res)))  # no record text to show


def test_both_mechanisms_aligned() -> None:
    res = results(spf_results=spf("softfail", "example.com"))
    assert feedback(parse(build(res=res)))["Identity-Alignment"] == "dkim, spf"


def test_nothing_aligned() -> None:
    res = results(dkim=(sig("pass", domain="other.test"),))
    fb = feedback(parse(build(res=res)))
    assert fb["Identity-Alignment"] == "none"
    assert "DKIM-Domain" not in fb and "SPF-DNS" not in fb


def test_strict_alignment_needs_exact_match() -> None:
    res = results(dkim=(sig("fail", domain="mail.example.com"),))
    assert identity_alignment(res) == "dkim"
    strict = dataclasses.replace(RECORD, adkim="s")
    assert identity_alignment(results(dkim=(sig("fail", domain="mail.example.com"),),
                                      record=strict)) == "none"


def test_first_aligned_failing_signature_is_described() -> None:
    res = results(dkim=(sig("fail", domain="other.test", selector="x"),
                        sig("permerror", selector="s2", identity="news@Example.COM"),
                        sig("fail", selector="s3")))
    fb = feedback(parse(build(res=res)))
    assert (fb["DKIM-Domain"], fb["DKIM-Selector"], fb["DKIM-Identity"]) == (
        "example.com", "s2", "news@example.com")


# --- hostile input ---------------------------------------------------------------------------------

INJECTION = "\r\nX-Injected: yes\r\n\r\n--boundary"


def test_hostile_values_create_no_header_field() -> None:
    hostile_record = dataclasses.replace(RECORD, domain="example.com")
    res = results(
        dkim=(sig("fail", selector="sel" + INJECTION, identity="a" + INJECTION + "@example.com"),),
        spf_results=spf("fail", "example.com" + INJECTION),
        domain="example.com" + INJECTION, record=hostile_record)
    tx = dataclasses.replace(TX, mail_from="x@forger.test" + INJECTION, queue_id="Q" + INJECTION,
                             client_ip="192.0.2.7" + INJECTION)
    reporter = FailureReporter("mx.test" + INJECTION, "dmarc@mx.test", user_agent="ua" + INJECTION)
    data = build_failure_report(tx, res, reporter, to=("ruf@example.com",), arrival=ARRIVAL,
                                authentication_results=AR + INJECTION, message_id="<r1@mx.test>",
                                spf_record="v=spf1" + INJECTION)
    msg = parse(data)
    assert set(msg.keys()) == TOP_FIELDS
    assert len(parts(msg)) == 3
    fb = feedback(msg)
    assert "X-Injected" not in fb
    assert "Source-IP" not in fb  # not an address, so not reported as one
    for name, value in fb.items():
        assert "\r" not in value and "\n" not in value, name
    assert fb["Reported-Domain"].startswith("example.com\\x{D}\\x{A}X-Injected:")
    assert fb["Original-Mail-From"].startswith("<x@forger.test\\x{D}\\x{A}X-Injected:\\x{20}yes")
    # Outside the original's header part, no line of the report starts a field we did not write.
    ours = data.split(b"Content-Type: text/rfc822-headers", 1)[0]
    assert not any(line.startswith(b"X-Injected") for line in ours.split(b"\r\n"))
    assert not any(line == b"--boundary" for line in data.split(b"\r\n"))


def test_header_like_text_in_the_original_stays_inside_its_part() -> None:
    tx = dataclasses.replace(TX, headers=(*HEADERS, Header(b"X-Evil", b" a\r\n\r\nX-Injected: 1")))
    msg = parse(build(tx))
    assert set(msg.keys()) == TOP_FIELDS
    assert "X-Injected" not in feedback(msg)
    assert len(parts(msg)) == 3
    assert original_headers(msg) == b"".join(h.raw() for h in tx.headers)


def test_non_ascii_mail_from_is_escaped_to_ascii() -> None:
    tx = dataclasses.replace(TX, mail_from="j\u00f6rg@b\u00fccher.example")
    data = build(tx)
    assert data.isascii()
    assert feedback(parse(data))["Original-Mail-From"] == "<j\\x{F6}rg@xn--bcher-kva.example>"


def test_non_ascii_reporter_name_is_rfc_2047_encoded() -> None:
    reporter = FailureReporter("mx.test", "R\u00e9ports <dmarc@mx.test>")
    data = build_failure_report(TX, results(), reporter, to=("ruf@example.com",), arrival=ARRIVAL,
                                authentication_results=AR, message_id="<r1@mx.test>")
    assert data.isascii()
    assert parse(data)["From"].addresses[0].display_name == "R\u00e9ports"


# --- parsedmarc reads it --------------------------------------------------------------------------


def test_parsedmarc_recognises_the_report() -> None:
    report = parsedmarc_report(build(delivery_result="reject"))
    assert report["reported_domain"] == "example.com"
    assert report["source"]["ip_address"] == "192.0.2.7"
    assert report["auth_failure"] == ["dmarc"]
    assert report["feedback_type"] == "auth-failure"
    assert report["authentication_mechanisms"] == ["dkim"]
    assert report["delivery_result"] == "reject"
    assert report["original_mail_from"] == "<bounce@forger.test>"
    assert report["arrival_date_utc"] == "2023-11-14 22:13:20"
    assert report["sample_headers_only"] is True
    assert report["parsed_sample"]["subject"] == "Your account"


def test_parsedmarc_reads_a_base64_header_sample() -> None:
    tx = dataclasses.replace(TX, headers=(*HEADERS[:3], Header(b"Subject", b" Caf\xc3\xa9")))
    report = parsedmarc_report(build(tx))
    assert report["reported_domain"] == "example.com"
    assert report["parsed_sample"]["subject"] == "Caf\u00e9"


def test_parsedmarc_sees_no_injected_field() -> None:
    tx = dataclasses.replace(TX, mail_from="x@forger.test\r\nReported-Domain: evil.test")
    res = results(dkim=(sig("fail", selector="s\r\nSource-IP: 203.0.113.99"),))
    report = parsedmarc_report(build(tx, res))
    assert report["reported_domain"] == "example.com"
    assert report["source"]["ip_address"] == "192.0.2.7"


# --- wanted ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fo", "dkim", "spf_result", "expected"), [
    # fo=0 and fo=1: every DMARC failure has no aligned pass at all, whatever the mechanisms say
    (None, "fail", "fail", True),
    ("0", "pass", "pass", True),
    ("1", "fail", "pass", True),
    ("1", "pass", "fail", True),
    # fo=d: a signature failed, aligned or not
    ("d", "fail", "pass", True),
    ("d", "permerror", "pass", True),
    ("d", "pass", "fail", False),
    ("d", "temperror", "fail", False),
    ("d", None, "fail", False),
    # fo=s: SPF failed, aligned or not
    ("s", "pass", "fail", True),
    ("s", "pass", "softfail", True),
    ("s", "fail", "pass", False),
    ("s", "fail", "neutral", False),
    # combined, with white space and case the record may carry
    ("d:s", "pass", "fail", True),
    ("d:s", "fail", "pass", True),
    ("d:s", "pass", "pass", False),
    (" S : D ", "pass", "fail", True),
    # an fo= naming nothing known is the default 0
    ("x", "pass", "pass", True),
])
def test_wanted_fo_options(fo: str | None, dkim: str | None, spf_result: str,
                           expected: bool) -> None:
    # Unaligned identifiers, so that DMARC fails whatever DKIM and SPF said.
    res = results(dkim=(sig(dkim, domain="other.test"),) if dkim else (),
                  spf_results=spf(spf_result, "forger.test"))
    assert wanted(fo, res) is expected


@pytest.mark.parametrize("fo", [None, "0", "1", "d", "s", "0:1:d:s"])
def test_wanted_never_for_dmarc_pass(fo: str | None) -> None:
    res = results(dmarc="pass", dkim=(sig("pass"), sig("fail", domain="other.test")),
                  spf_results=spf("fail"), dkim_aligned=True)
    assert wanted(fo, res) is False


@pytest.mark.parametrize("dmarc", ["none", "temperror", "permerror"])
def test_wanted_only_for_fail(dmarc: str) -> None:
    assert wanted("1", results(dmarc=dmarc)) is False


def test_wanted_never_for_psd() -> None:
    assert wanted("1", results()) is True
    assert wanted("1", results(record=dataclasses.replace(RECORD, psd="y"))) is False
    assert wanted("1", results(record=dataclasses.replace(RECORD, psd="n"))) is True


def test_wanted_never_without_ruf() -> None:
    assert wanted("1", results(record=dataclasses.replace(RECORD, ruf=()))) is False
    only_https = dataclasses.replace(RECORD, ruf=("https://example.com/ruf",))
    assert wanted("1", results(record=only_https)) is False


def test_wanted_needs_a_record() -> None:
    res = results()
    assert res.dmarc is not None
    assert wanted("1", dataclasses.replace(res, dmarc=dataclasses.replace(res.dmarc, record=None))) is False
    assert wanted("1", dataclasses.replace(res, dmarc=None)) is False


# --- report_destinations -------------------------------------------------------------------------


def test_report_destinations() -> None:
    record = dataclasses.replace(RECORD, ruf=(
        "mailto:ruf@example.com!10m",
        "mailto:ruf@EXAMPLE.com",  # the same mailbox again
        "MAILTO:Other@reports.test",
        "https://example.com/ruf",
        "mailto:ruf%2Bdmarc@b%C3%BCcher.example",
        "mailto:x@reports.test?subject=hi",
        "mailto:a@b.test\r\nBcc: evil@x.test",
        "mailto:a,b@c.test",
        "mailto:\"quoted local\"@c.test",
        "mailto:nodomain",
        "mailto:bad@%FF.test",
    ))
    assert report_destinations(record) == (
        "ruf@example.com", "Other@reports.test", "ruf+dmarc@xn--bcher-kva.example", "x@reports.test")


def test_report_destinations_empty() -> None:
    assert report_destinations(dataclasses.replace(RECORD, ruf=())) == ()


def test_destinations_feed_the_report() -> None:
    record = dataclasses.replace(RECORD, ruf=("mailto:a@example.com!5m", "mailto:b@reports.test"))
    msg = parse(build(to=report_destinations(record)))
    assert [a.addr_spec for a in msg["To"].addresses] == ["a@example.com", "b@reports.test"]


def test_base64_module_round_trip_matches_parser() -> None:
    # The part's base64 must be plain RFC 2045 base64 with CRLF lines, as any decoder reads it.
    tx = dataclasses.replace(TX, headers=(*HEADERS, Header(b"Subject", b" \xff\xfe")))
    data = build(tx)
    body = data.split(b"Content-Transfer-Encoding: base64\r\n\r\n", 1)[1].split(b"\r\n\r\n--", 1)[0]
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))
    assert base64.b64decode(body) == b"".join(h.raw() for h in tx.headers)
