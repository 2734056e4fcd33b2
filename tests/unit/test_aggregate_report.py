"""RFC 9990 aggregate reports from history records: every report built here is validated against
the schema of the draft's last revision, and read back with parsedmarc (offline) to check that an
independent reader sees the counts, domains and addresses that went in."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from parsedmarc import parse_aggregate_report_file, parse_aggregate_report_xml

from authmilter.core.history import DkimEntry, HistoryRecord, PublishedPolicy, SpfEntry, loads
from authmilter.reports.aggregate import (
    NAMESPACE,
    AggregateBuilder,
    AggregateReport,
    EmptyReportError,
    Reporter,
    day_bounds,
    day_of,
    report_id,
)

XSD = Path(__file__).resolve().parent.parent / "data" / "dmarc" / "dmarc-xml-0.2.xsd"
SCHEMA = etree.XMLSchema(etree.parse(str(XSD)))
NS = {"d": NAMESPACE}
DAY = "2025-03-01"
BEGIN, END = day_bounds(DAY)
REPORTER = Reporter(org_name="Example Receiver", email="dmarc-reports@mx.test",
                    extra_contact_info="https://mx.test/dmarc", receiver_domain="mx.test")

POLICY = PublishedPolicy(domain="example.com", p="reject", sp=None, np=None, adkim="r",
                         aspf="s", testing=False, psd=None)
BASE = HistoryRecord(
    time=BEGIN + 3600, client_ip="192.0.2.10", envelope_from="example.com",
    envelope_to=("mx.test",), header_from="example.com",
    spf=(SpfEntry("example.com", "mfrom", "pass"), SpfEntry("mail.example.com", "helo", "pass")),
    dkim=(DkimEntry("example.com", "sel1", "pass"),), dmarc="pass", dkim_aligned=True,
    spf_aligned=True, policy=POLICY, requested="reject", disposition="pass", override="",
    action="accept", rule="", stage="eom", facts={})


# parsedmarc can resolve names and fetch maps; any attempt here is a test failure.
pytestmark = pytest.mark.usefixtures("no_network")


def rec(**changes: Any) -> HistoryRecord:
    return dataclasses.replace(BASE, **changes)


def build(*records: HistoryRecord, domain: str = "example.com") -> AggregateReport:
    builder = AggregateBuilder(domain, BEGIN, END)
    for r in records:
        builder.add(r)
    report = builder.build(REPORTER, report_id(domain, DAY, REPORTER.receiver_domain))
    assert_valid(report.xml)
    assert gzip.decompress(report.gz) == report.xml
    return report


def assert_valid(xml: bytes) -> etree._Element:
    doc = etree.fromstring(xml)
    assert SCHEMA.validate(doc), SCHEMA.error_log
    return doc


def parsed(report: AggregateReport) -> Any:
    return parse_aggregate_report_file(report.gz, offline=True, always_use_local_files=True)


def find(report: AggregateReport, path: str) -> list[str]:
    doc = etree.fromstring(report.xml)
    return [e.text or "" for e in doc.iterfind(path, NS)]


def test_a_broken_report_is_rejected_by_the_schema() -> None:
    # The validation every other test relies on must be able to fail.
    good = build(rec())
    doc = assert_valid(good.xml)
    scope = doc.find("d:record/d:auth_results/d:spf/d:scope", NS)
    assert scope is not None
    scope.text = "helo"  # RFC 9990 knows only mfrom
    assert not SCHEMA.validate(doc)
    doc = etree.fromstring(good.xml)
    metadata = doc.find("d:report_metadata", NS)
    report_id_el = doc.find("d:report_metadata/d:report_id", NS)
    assert metadata is not None and report_id_el is not None
    metadata.remove(report_id_el)
    assert not SCHEMA.validate(doc)


def test_identical_messages_merge_into_one_row_with_a_count() -> None:
    builder = AggregateBuilder("example.com", BEGIN, END)
    for _ in range(3):
        builder.add(rec())
    assert builder.rows == 1 and builder.messages == 3
    report = build(rec(), rec(), rec())
    assert report.rows == 1 and report.messages == 3
    assert find(report, "d:record/d:row/d:count") == ["3"]
    out = parsed(report)
    assert [r["count"] for r in out["records"]] == [3]
    assert out["policy_published"]["domain"] == "example.com"


def test_messages_that_differ_make_distinct_rows() -> None:
    records = [
        rec(),
        rec(client_ip="192.0.2.11"),
        rec(dmarc="fail", dkim_aligned=False, spf_aligned=False, disposition="reject",
            action="reject", dkim=(DkimEntry("example.com", "sel1", "fail", "bad sig"),),
            spf=(SpfEntry("example.com", "mfrom", "fail"),)),
        rec(header_from="news.example.com"),
        rec(envelope_to=("other.test",)),
        rec(),
    ]
    report = build(*records)
    assert report.rows == 5 and report.messages == 6
    out = parsed(report)
    assert sorted(r["count"] for r in out["records"]) == [1, 1, 1, 1, 2]
    assert {r["source"]["ip_address"] for r in out["records"]} == {"192.0.2.10", "192.0.2.11"}
    assert {r["identifiers"]["header_from"] for r in out["records"]} == {"example.com",
                                                                         "news.example.com"}
    assert sorted(r["policy_evaluated"]["disposition"] for r in out["records"]) == [
        "pass", "pass", "pass", "pass", "reject"]
    assert sorted(r["identifiers"]["envelope_to"] for r in out["records"]) == [
        "mx.test", "mx.test", "mx.test", "mx.test", "other.test"]


def test_at_most_100_dkim_results_passing_aligned_first() -> None:
    failing = tuple(DkimEntry(f"d{i}.example.net", f"s{i}", "fail") for i in range(140))
    passing = tuple(DkimEntry(f"p{i}.example.net", "s", "pass") for i in range(9))
    signatures = failing + passing + (DkimEntry("example.com", "main", "pass"),)
    assert len(signatures) == 150
    report = build(rec(dkim=signatures))
    domains = find(report, "d:record/d:auth_results/d:dkim/d:domain")
    assert len(domains) == 100
    # RFC 9990's order of preference: the aligned pass, the other passes, then failures in order.
    assert domains[0] == "example.com"
    assert domains[1:10] == [f"p{i}.example.net" for i in range(9)]
    assert domains[10:] == [f"d{i}.example.net" for i in range(90)]
    assert len(parsed(report)["records"][0]["auth_results"]["dkim"]) == 100


@pytest.mark.parametrize(("given", "reported"), [
    ("2001:0DB8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
    ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),  # RFC 5952: one zero field stays
    ("IPv6:2001:db8::a:0:0:1", "2001:db8::a:0:0:1"),
    ("[2001:db8::5]", "2001:db8::5"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
])
def test_source_ip_is_in_canonical_form(given: str, reported: str) -> None:
    report = build(rec(client_ip=given))
    assert find(report, "d:record/d:row/d:source_ip") == [reported]
    assert parsed(report)["records"][0]["source"]["ip_address"] == reported


def test_a_record_without_spf_reports_none_for_the_envelope_from_domain() -> None:
    report = build(rec(spf=(), envelope_from="bounce.example.com", spf_aligned=False))
    doc = etree.fromstring(report.xml)
    spf = doc.findall("d:record/d:auth_results/d:spf", NS)
    assert len(spf) == 1
    assert [(e.findtext("d:domain", None, NS), e.findtext("d:scope", None, NS),
             e.findtext("d:result", None, NS)) for e in spf] == [
        ("bounce.example.com", "mfrom", "none")]
    out = parsed(report)["records"][0]["auth_results"]["spf"]
    assert [(s["domain"], s["result"]) for s in out] == [("bounce.example.com", "none")]


def test_only_the_mfrom_result_is_reported_and_a_helo_only_one_without_scope() -> None:
    report = build(rec())  # BASE has an mfrom and a helo result
    assert find(report, "d:record/d:auth_results/d:spf/d:domain") == ["example.com"]
    report = build(rec(envelope_from="mail.example.com", spf_aligned=False,
                       spf=(SpfEntry("mail.example.com", "helo", "pass"),)))
    assert find(report, "d:record/d:auth_results/d:spf/d:domain") == ["mail.example.com"]
    assert find(report, "d:record/d:auth_results/d:spf/d:scope") == []


def test_records_for_another_policy_domain_are_ignored() -> None:
    other = dataclasses.replace(POLICY, domain="example.net")
    builder = AggregateBuilder("Example.COM.", BEGIN, END)
    builder.add(rec(policy=other, header_from="example.net"))
    assert builder.rows == 0
    builder.add(rec(policy=dataclasses.replace(POLICY, domain="EXAMPLE.com")))
    assert builder.rows == 1
    report = build(rec(), rec(policy=other, header_from="example.net"))
    assert report.messages == 1 and report.policy_domain == "example.com"
    assert {r["identifiers"]["header_from"] for r in parsed(report)["records"]} == {"example.com"}


def test_non_reportable_records_are_ignored() -> None:
    builder = AggregateBuilder("example.com", BEGIN, END)
    builder.add(rec(policy=None))
    builder.add(rec(dmarc="none"))
    builder.add(rec(dmarc="temperror"))
    builder.add(rec(dmarc=""))
    assert builder.rows == 0 and builder.messages == 0
    with pytest.raises(EmptyReportError):
        builder.build(REPORTER, "x1")
    assert build(rec(), rec(dmarc="permerror")).messages == 1


def test_records_outside_the_period_are_ignored() -> None:
    builder = AggregateBuilder("example.com", BEGIN, END)
    builder.add(rec(time=BEGIN - 1))
    builder.add(rec(time=END + 1))
    assert builder.rows == 0
    builder.add(rec(time=BEGIN))
    builder.add(rec(time=END))
    assert builder.messages == 2


def test_override_reasons_are_reported_in_rfc_9990_terms() -> None:
    failed = {"dmarc": "fail", "dkim_aligned": False, "spf_aligned": False,
              "dkim": (DkimEntry("evil.example", "x", "pass"),),
              "spf": (SpfEntry("evil.example", "mfrom", "pass"),)}
    testing = dataclasses.replace(POLICY, testing=True)
    records = [
        rec(**failed, disposition="none", override="local_policy"),
        rec(**failed, client_ip="192.0.2.20", disposition="none", override="sampled_out",
            policy=testing, time=BEGIN + 7200),
        rec(**failed, client_ip="192.0.2.30", disposition="none", override="forwarded"),
        rec(**failed, client_ip="192.0.2.40", disposition="none", override="mailing_list"),
    ]
    report = build(*records)
    doc = etree.fromstring(report.xml)
    reasons = {}
    for record in doc.iterfind("d:record", NS):
        ip = record.findtext("d:row/d:source_ip", None, NS)
        reasons[ip] = [(r.findtext("d:type", None, NS), r.findtext("d:comment", None, NS))
                       for r in record.iterfind("d:row/d:policy_evaluated/d:reason", NS)]
    assert reasons == {
        "192.0.2.10": [("local_policy", None)],
        "192.0.2.20": [("policy_test_mode", None)],  # RFC 9990's name for t=y's sampled_out
        "192.0.2.30": [("other", "forwarded")],  # RFC 9990 dropped "forwarded"
        "192.0.2.40": [("mailing_list", None)],
    }
    assert find(report, "d:policy_published/d:testing") == ["y"]  # the newest record had t=y
    out = parsed(report)
    got = {r["source"]["ip_address"]: [o["type"] for o in r["policy_evaluated"]
                                       ["policy_override_reasons"]] for r in out["records"]}
    assert got["192.0.2.10"] == ["local_policy"] and got["192.0.2.20"] == ["policy_test_mode"]


def test_policy_published_reports_effective_np_sp_testing_and_discovery_method() -> None:
    report = build(rec())
    published = etree.fromstring(report.xml).find("d:policy_published", NS)
    assert published is not None
    pp = {etree.QName(e).localname: e.text for e in published}
    assert pp == {"domain": "example.com", "discovery_method": "treewalk", "p": "reject",
                  "sp": "reject", "np": "reject", "adkim": "r", "aspf": "s", "testing": "n"}
    explicit = dataclasses.replace(POLICY, sp="quarantine", np=None, fo="1:d",
                                   discovery_method="psl", testing=True)
    report = build(rec(policy=explicit))
    assert find(report, "d:policy_published/d:sp") == ["quarantine"]
    assert find(report, "d:policy_published/d:np") == ["quarantine"]  # np defaults to sp
    assert find(report, "d:policy_published/d:fo") == ["1:d"]
    assert find(report, "d:policy_published/d:testing") == ["y"]
    assert find(report, "d:policy_published/d:discovery_method") == ["psl"]
    report = build(rec(policy=dataclasses.replace(POLICY, sp="none", np="quarantine")))
    assert find(report, "d:policy_published/d:np") == ["quarantine"]
    out = parsed(report)["policy_published"]
    assert (out["p"], out["sp"], out["np"], out["testing"], out["discovery_method"]) == (
        "reject", "none", "quarantine", "n", "treewalk")


def test_the_newest_policy_wins_whatever_the_order_records_come_in() -> None:
    old = dataclasses.replace(POLICY, p="none")
    new = dataclasses.replace(POLICY, p="quarantine")
    for order in ((rec(policy=new, time=BEGIN + 500), rec(policy=old, time=BEGIN + 100)),
                  (rec(policy=old, time=BEGIN + 100), rec(policy=new, time=BEGIN + 500))):
        report = build(*order)
        assert find(report, "d:policy_published/d:p") == ["quarantine"]
        assert parsed(report)["policy_published"]["p"] == "quarantine"


def test_the_same_records_give_the_same_bytes_in_any_order() -> None:
    records = [rec(), rec(client_ip="2001:db8::9"), rec(), rec(header_from="a.example.com")]
    first, second = build(*records), build(*reversed(records))
    assert first.xml == second.xml and first.gz == second.gz
    assert first.gz[4:8] == b"\0\0\0\0"  # gzip MTIME
    assert build(*records[:3]).gz != first.gz


def test_filename_and_subject_follow_rfc_9990() -> None:
    rid = report_id("example.com", DAY, "mx.test")
    report = build(rec())
    assert report.report_id == rid and rid.isalnum() and rid.startswith("20250301")
    assert report.filename == f"mx.test!example.com!{BEGIN}!{END}!{rid}.xml.gz"
    assert report.subject == f"Report Domain: example.com Submitter: mx.test Report-ID: <{rid}>"
    assert (report.begin, report.end) == (BEGIN, END) and END - BEGIN == 86399
    out = parsed(report)["report_metadata"]
    assert out["report_id"] == rid and out["org_name"] == "Example Receiver"
    assert out["org_extra_contact_info"] == "https://mx.test/dmarc"
    assert out["generator"] == "authmilter"


def test_report_ids_are_deterministic_and_distinct_per_day_domain_and_receiver() -> None:
    rid = report_id("example.com", DAY, "mx.test")
    assert rid == report_id("EXAMPLE.com.", DAY, "MX.test")
    assert len({rid, report_id("example.com", "2025-03-02", "mx.test"),
                report_id("example.net", DAY, "mx.test"),
                report_id("example.com", DAY, "mx2.test")}) == 4


def test_day_bounds_and_day_of() -> None:
    assert day_bounds("1970-01-02") == (86400, 172799)
    assert day_of(BEGIN) == DAY and day_of(END) == DAY and day_of(END + 1) == "2025-03-02"
    for bad in ("2025-3-1", "2025-02-30", "yesterday", "2025-03-01T00:00"):
        with pytest.raises(ValueError):
            day_bounds(bad)


def test_a_record_without_a_usable_address_is_left_out_with_an_error() -> None:
    report = build(rec(), rec(client_ip=""), rec(client_ip="not-an-ip"), rec())
    assert report.messages == 2 and report.rows == 1
    assert find(report, "d:report_metadata/d:error") == [
        "2 messages without a usable source address were left out"]
    out = parsed(report)
    assert out["report_metadata"]["errors"] == [
        "2 messages without a usable source address were left out"]
    assert [r["count"] for r in out["records"]] == [2]
    builder = AggregateBuilder("example.com", BEGIN, END)
    builder.add(rec(client_ip=""))
    assert builder.errors == ["1 message without a usable source address was left out"]
    with pytest.raises(EmptyReportError):
        builder.build(REPORTER, "x1")


def test_several_recipient_domains_omit_envelope_to_and_count_once() -> None:
    report = build(rec(envelope_to=("mx.test", "other.test")), rec(envelope_to=()))
    assert report.messages == 2 and report.rows == 1
    assert find(report, "d:record/d:identifiers/d:envelope_to") == []
    assert parsed(report)["records"][0]["count"] == 2


def test_text_that_xml_cannot_carry_is_dropped_not_written() -> None:
    report = build(rec(dkim=(DkimEntry("example.com", "sel1", "fail", "bad\x00 <key> & \x1b"),)))
    assert find(report, "d:record/d:auth_results/d:dkim/d:human_result") == ["bad <key> & "]


def test_records_read_back_from_the_history_json() -> None:
    line = json.dumps({
        "v": 1, "t": BEGIN + 60, "ip": "198.51.100.7", "ef": "example.com", "et": ["mx.test"],
        "hf": "example.com", "spf": [["example.com", "mfrom", "softfail"]],
        "dkim": [["example.com", "k1", "pass", ""]], "dmarc": "pass", "da": True, "sa": False,
        "req": "quarantine", "disp": "pass", "ovr": "", "act": "accept", "rule": "",
        "stage": "eom", "facts": {},
        "pol": {"d": "example.com", "p": "quarantine", "sp": None, "np": "reject", "adkim": "s",
                "aspf": "r", "t": False, "psd": None, "fo": None, "pct": None, "rua": [],
                "ruf": [], "dm": "treewalk"}})
    record = loads(line)
    report = build(record, record)
    out = parse_aggregate_report_xml(report.xml, offline=True, always_use_local_files=True)
    assert out["policy_published"]["np"] == "reject" and out["policy_published"]["sp"] == "quarantine"
    (row,) = out["records"]
    assert row["count"] == 2 and row["source"]["ip_address"] == "198.51.100.7"
    assert row["policy_evaluated"]["spf"] == "fail" and row["policy_evaluated"]["dkim"] == "pass"
    assert row["auth_results"]["spf"][0]["result"] == "softfail"
