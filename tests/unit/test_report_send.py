"""Sending a day's aggregate reports: destinations verified, one report per domain and day,
failures backed off and retried under the same Report-ID, one sender at a time. The store is
a real SQLite history; delivery is a function the test gives (tests/e2e uses Postfix)."""

from __future__ import annotations

import gzip
import smtplib
from collections.abc import Sequence
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from authmilter.core.history import DkimEntry, HistoryRecord, PublishedPolicy, SpfEntry
from authmilter.files.config import ReportSettings
from authmilter.reports.aggregate import day_bounds
from authmilter.reports.send import LOCK, mailto_addresses, send_day
from authmilter.store.base import StoreError
from authmilter.store.history import SqliteHistory
from tests.integration.zones import zone
from tests.zoneresolver import ZoneResolver

DAY = "2026-12-01"
BEGIN, END = day_bounds(DAY)
SETTINGS = ReportSettings(org_name="Receiver", email="dmarc@mx.example", receiver_domain="mx.example")


def record(domain: str, rua: tuple[str, ...], t: int = BEGIN + 100, ok: bool = True) -> HistoryRecord:
    return HistoryRecord(
        time=t, client_ip="192.0.2.1", envelope_from=domain, envelope_to=("mx.example",),
        header_from=domain, spf=(SpfEntry(domain, "mfrom", "pass"),),
        dkim=(DkimEntry(domain, "s", "pass" if ok else "fail"),), dmarc="pass" if ok else "fail",
        dkim_aligned=ok, spf_aligned=ok,
        policy=PublishedPolicy(domain=domain, p="reject", sp=None, np=None, adkim="r", aspf="r",
                               testing=False, psd=None, rua=rua),
        requested="reject", disposition="pass" if ok else "reject", override="",
        action="accept" if ok else "reject", rule="", stage="eom", facts={"stage": "eom"})


def dns() -> ZoneResolver:
    return ZoneResolver([zone("reports.example", """
a.example._report._dmarc IN TXT "v=DMARC1"
""")])


class Outbox:
    def __init__(self, fail: Sequence[str] = ()) -> None:
        self.sent: list[tuple[str, list[str], bytes]] = []
        self.fail = set(fail)

    def __call__(self, sender: str, rcpts: Sequence[str], data: bytes) -> None:
        if set(rcpts) & self.fail:
            raise smtplib.SMTPRecipientsRefused({r: (550, b"no") for r in rcpts})
        self.sent.append((sender, list(rcpts), data))


@pytest.fixture
def history(tmp_path: Path) -> SqliteHistory:
    h = SqliteHistory(str(tmp_path / "h.db"))
    rua = ("mailto:agg@reports.example", "mailto:x@stranger.example!10m")
    # The newest record's rua is the one that counts: the first one's went out of date.
    h.append([record("a.example", ("mailto:old@reports.example",)),
              record("a.example", rua, t=BEGIN + 200, ok=False),
              record("own.example", ("mailto:dmarc@reports.own.example", "https://x.example/r")),
              record("quiet.example", ())])
    return h


def test_mailto_addresses_drop_size_and_other_schemes() -> None:
    assert mailto_addresses(["mailto:a@x.example!10m", "https://x", "MAILTO:a@x.example",
                             "mailto:b@y.example?subject=x", "mailto:bad address@x"]) == [
        "a@x.example", "b@y.example"]


def test_reports_go_to_verified_destinations_once(history: SqliteHistory) -> None:
    out = Outbox()
    outcomes = {o.domain: o for o in send_day(history, dns(), SETTINGS, DAY, deliver=out,
                                              now=END + 3600)}
    a = outcomes["a.example"]
    assert a.status == "sent" and a.messages == 2
    assert ("mailto:agg@reports.example", "sent") in a.destinations
    assert any(u == "mailto:x@stranger.example" and w.startswith("not verified")
               for u, w in a.destinations)
    assert outcomes["own.example"].status == "sent"  # same organizational domain: no TXT needed
    assert outcomes["quiet.example"].status == "skipped: no mailto: rua destination"
    assert sorted(r for _, rcpts, _ in out.sent for r in rcpts) == ["agg@reports.example",
                                                                   "dmarc@reports.own.example"]
    msg = message_from_bytes(out.sent[0][2], policy=policy.default)
    assert str(msg["Subject"]).startswith("Report Domain: ")
    attachment = next(msg.iter_attachments())
    assert b"<feedback" in gzip.decompress(attachment.get_content())
    again = send_day(history, dns(), SETTINGS, DAY, deliver=out, now=END + 7200)
    assert {o.domain: o.status for o in again}["a.example"] == "skipped: already sent"
    assert len(out.sent) == 2


def test_a_failed_delivery_is_backed_off_and_retried_with_the_same_id(history: SqliteHistory) -> None:
    failing = Outbox(fail=["agg@reports.example"])
    first = {o.domain: o for o in send_day(history, dns(), SETTINGS, DAY, deliver=failing,
                                           now=END + 10, domains=["a.example"])}["a.example"]
    assert first.status.startswith("failed")
    assert history.destination("mailto:agg@reports.example")[0] == 1
    soon = send_day(history, dns(), SETTINGS, DAY, deliver=failing, now=END + 60, domains=["a.example"])
    assert soon[0].status == "skipped: no usable destination"
    assert any("backed off" in w for _, w in soon[0].destinations)
    ok = Outbox()
    later = send_day(history, dns(), SETTINGS, DAY, deliver=ok, now=END + 10 + 3601, domains=["a.example"])
    assert later[0].status == "sent" and later[0].report_id == first.report_id
    assert history.destination("mailto:agg@reports.example") == (0, 0.0)


def test_a_destination_is_given_up_after_max_attempts(history: SqliteHistory) -> None:
    failing = Outbox(fail=["agg@reports.example"])
    now = END + 10
    for _ in range(SETTINGS.max_attempts):
        send_day(history, dns(), SETTINGS, DAY, deliver=failing, now=now, domains=["a.example"])
        now += 2 * 86400
    last = send_day(history, dns(), SETTINGS, DAY, deliver=failing, now=now, domains=["a.example"])
    assert any("given up" in w for _, w in last[0].destinations)


def test_one_sender_at_a_time_and_no_report_before_the_day_ends(history: SqliteHistory) -> None:
    assert history.acquire_lock(LOCK, "other-host:1", 3600, END + 5)
    with pytest.raises(StoreError, match="another host"):
        send_day(history, dns(), SETTINGS, DAY, deliver=Outbox(), now=END + 10)
    with pytest.raises(ValueError, match="not over yet"):
        send_day(history, dns(), SETTINGS, DAY, deliver=Outbox(), now=END - 10)


def test_dry_run_claims_and_sends_nothing(history: SqliteHistory) -> None:
    out = Outbox()
    outcomes = send_day(history, dns(), SETTINGS, DAY, deliver=out, dry_run=True, now=END - 10)
    assert {o.domain: o.status for o in outcomes}["a.example"] == "would send"
    assert out.sent == [] and history.reports(DAY) == {}
