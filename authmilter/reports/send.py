"""`authmilter report send`: yesterday's aggregate reports (RFC 9990), built from the history and
handed to the local MTA.

Rules kept here:
- One report per policy domain and UTC day, ever. The report is claimed in the history store
  before it is sent (the claim is unique across hosts and runs); a report whose every delivery
  failed stays claimed as "failed" and a later run retries it with the same Report-ID, which is
  the same report, not a second one.
- With several MX hosts on one shared store, one sends: a run holds the store's lock for the
  whole run, and another host's run finds it held and stops.
- A destination outside the policy domain's Organizational Domain gets reports only when it
  publishes `<policy-domain>._report._dmarc.<its domain>` (RFC 9990 section 4, external
  destination verification); anything else could be used to mail reports to a third party.
- A destination that fails is backed off (1 h, 2 h, 4 h ... at most a day between attempts) and
  given up after `max_attempts` failures in a row; a delivery that works resets it.
- Only mailto: destinations: the only transport RFC 9990 defines for aggregate reports.
"""

from __future__ import annotations

import logging
import os
import smtplib
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from publicsuffixlist import PublicSuffixList

from authmilter.core.dnsapi import DnsStatus, Resolver
from authmilter.core.message import split_message
from authmilter.core.model import Header, Transaction
from authmilter.core.signing.dkim import EMPTY_SIGNING, SigningConfig, sign_message
from authmilter.files.config import ReportSettings
from authmilter.reports.aggregate import AggregateBuilder, AggregateReport, Reporter, day_bounds, report_id
from authmilter.store.base import StoreError
from authmilter.store.history import HistoryStore

log = logging.getLogger("authmilter.reports")

LOCK = "report-send"
LOCK_TTL = 3600.0
BACKOFF_FIRST = 3600.0
BACKOFF_MAX = 86400.0

Deliver = Callable[[str, Sequence[str], bytes], None]  # (envelope from, recipients, message)


@dataclass
class DomainOutcome:
    domain: str
    report_id: str
    rows: int
    messages: int
    status: str  # "sent" | "failed: ..." | "skipped: ..." | "would send" (dry run)
    destinations: list[tuple[str, str]] = field(default_factory=list)  # (uri, what happened)
    report: AggregateReport | None = None


def mailto_addresses(uris: Sequence[str]) -> list[str]:
    """The addresses of the mailto: URIs, each once; a "!size" suffix (RFC 7489) is dropped."""
    out: dict[str, None] = {}
    for uri in uris:
        scheme, _, rest = uri.partition(":")
        if scheme.lower() != "mailto" or not rest:
            continue
        address = rest.split("!", 1)[0].split("?", 1)[0].strip()
        if address.count("@") == 1 and not any(c.isspace() or c in "<>\r\n,;" for c in address):
            out[address] = None
    return list(out)


_psl: PublicSuffixList | None = None


def org_domain(domain: str) -> str:
    global _psl
    if _psl is None:
        _psl = PublicSuffixList()
    return (_psl.privatesuffix(domain.lower().rstrip(".")) or domain).lower()


def destination_verified(policy_domain: str, address: str, resolver: Resolver) -> tuple[bool, str]:
    """RFC 9990 external destination verification for one mailto: address."""
    dest = address.rpartition("@")[2].lower().rstrip(".")
    if org_domain(dest) == org_domain(policy_domain):
        return True, "same organizational domain"
    name = f"{policy_domain.lower().rstrip('.')}._report._dmarc.{dest}"
    answer = resolver.query(name, "TXT")
    if answer.status is DnsStatus.OK:
        for text in answer.txt_strings():
            if text.strip().lower().startswith(b"v=dmarc1"):
                return True, f"{name} authorises it"
        return False, f"{name} has no v=DMARC1 record"
    if answer.status in (DnsStatus.NXDOMAIN, DnsStatus.NODATA):
        return False, f"{name} does not authorise reports ({answer.status.value})"
    return False, f"{name}: lookup failed ({answer.status.value}), try later"


def compose(report: AggregateReport, settings: ReportSettings, to: str, now: float) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = settings.email
    msg["To"] = to
    msg["Subject"] = report.subject
    msg["Date"] = formatdate(now)
    msg["Message-ID"] = make_msgid(domain=settings.receiver_domain or None)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
    msg.set_content(
        f"This is a DMARC aggregate report (RFC 9990) from {settings.org_name} for "
        f"{report.policy_domain}: {report.messages} messages in {report.rows} rows.\n")
    msg.add_attachment(report.gz, maintype="application", subtype="gzip", filename=report.filename)
    return msg


def signed_bytes(msg: EmailMessage, signing: SigningConfig, now: float) -> bytes:
    """The message as it goes to the MTA, DKIM-signed by our signing table when an entry covers
    the report address: a report that fails DMARC at its destination is thrown away there."""
    return signed_message(msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")), signing,
                          str(msg["From"]), now)


def signed_message(raw: bytes, signing: SigningConfig, mail_from: str, now: float) -> bytes:
    """`raw` with our DKIM-Signature fields on top, or as it is when no entry signs it."""
    if not signing.entries:
        return raw
    headers, body = split_message(raw)
    tx = Transaction(client_ip=None, helo="", mail_from=mail_from, headers=headers, body=body)
    outcome = sign_message(tx, signing, now=now)
    if outcome.status != "signed":
        log.warning("report from %s goes unsigned: %s", mail_from, outcome.reason or outcome.status)
        return raw
    fields = b"".join(Header(b"DKIM-Signature", b" " + s.encode()).raw() for s in outcome.signatures)
    return fields + raw


def smtp_deliver(hostport: str, timeout: float = 60.0) -> Deliver:
    host, _, port = hostport.rpartition(":")

    def deliver(sender: str, rcpts: Sequence[str], data: bytes) -> None:
        with smtplib.SMTP(host.strip("[]"), int(port), timeout=timeout,
                          local_hostname=socket.getfqdn()) as smtp:
            refused = smtp.sendmail(sender, list(rcpts), data)
            if refused:
                raise smtplib.SMTPRecipientsRefused(refused)

    return deliver


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def send_day(history: HistoryStore, resolver: Resolver, settings: ReportSettings, day: str, *,
             deliver: Deliver, signing: SigningConfig = EMPTY_SIGNING, dry_run: bool = False,
             now: float | None = None, domains: Sequence[str] = ()) -> list[DomainOutcome]:
    """Build (and unless `dry_run`, send) the reports of one UTC day. StoreError propagates."""
    now = time.time() if now is None else now
    begin, end = day_bounds(day)
    if not dry_run and now < end + 1:
        raise ValueError(f"{day} is not over yet (UTC): its reports can be sent from tomorrow")
    reporter = Reporter(org_name=settings.org_name, email=settings.email,
                        extra_contact_info=settings.extra_contact_info,
                        receiver_domain=settings.receiver_domain)
    holder = holder_name()
    if not dry_run and not history.acquire_lock(LOCK, holder, LOCK_TTL, now):
        raise StoreError("another host or run is sending reports now (the store's lock is held)")
    try:
        done = history.reports(day)
        wanted = [d.lower() for d in domains] or history.policy_domains(begin, end + 1)
        return [_one(history, resolver, settings, reporter, day, begin, end, domain, done, deliver,
                     signing, dry_run, now) for domain in wanted]
    finally:
        if not dry_run:
            history.release_lock(LOCK, holder)


def _one(history: HistoryStore, resolver: Resolver, settings: ReportSettings, reporter: Reporter,
         day: str, begin: int, end: int, domain: str, done: dict[str, tuple[str, str]],
         deliver: Deliver, signing: SigningConfig, dry_run: bool, now: float) -> DomainOutcome:
    rid = report_id(domain, day, settings.receiver_domain)
    previous = done.get(domain)
    if previous is not None and not previous[1].startswith("failed"):
        return DomainOutcome(domain, previous[0], 0, 0, f"skipped: already {previous[1]}")
    if previous is not None:
        rid = previous[0]  # a retry of the same report keeps its Report-ID
    builder = AggregateBuilder(domain, begin, end)
    newest_rua: tuple[str, ...] = ()
    newest = -1
    for record in history.records(begin, end + 1, domain):
        builder.add(record)
        if record.policy is not None and record.time >= newest:
            newest, newest_rua = record.time, record.policy.rua
    if builder.messages == 0:
        return DomainOutcome(domain, rid, 0, 0, "skipped: no reportable messages")
    report = builder.build(reporter, rid)
    outcome = DomainOutcome(domain, rid, report.rows, report.messages, "", report=report)
    addresses = mailto_addresses(newest_rua)
    if not addresses:
        outcome.status = "skipped: no mailto: rua destination"
        return outcome
    targets: list[str] = []
    for address in addresses:
        uri = f"mailto:{address}"
        ok, why = destination_verified(domain, address, resolver)
        if not ok:
            outcome.destinations.append((uri, f"not verified: {why}"))
            continue
        failures, next_attempt = history.destination(uri)
        if failures >= settings.max_attempts:
            outcome.destinations.append((uri, f"given up after {failures} failures"))
            continue
        if now < next_attempt and not dry_run:
            until = time.strftime("%Y-%m-%d %H:%M", time.gmtime(next_attempt))
            outcome.destinations.append((uri, f"backed off until {until} UTC"))
            continue
        targets.append(address)
    if not targets:
        outcome.status = "skipped: no usable destination"
        return outcome
    if dry_run:
        outcome.status = "would send"
        outcome.destinations.extend((f"mailto:{a}", "would send") for a in targets)
        return outcome
    if previous is None and not history.claim_report(domain, day, rid, now):
        return DomainOutcome(domain, rid, 0, 0, "skipped: another run claimed it")
    sent = 0
    for address in targets:
        uri = f"mailto:{address}"
        try:
            data = signed_bytes(compose(report, settings, address, now), signing, now)
            deliver(settings.email, [address], data)
        except (OSError, smtplib.SMTPException) as exc:
            failures, _ = history.destination(uri)
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** failures)
            history.record_delivery(uri, False, now, now + delay)
            outcome.destinations.append((uri, f"failed: {exc}"))
            log.warning("report %s for %s to %s failed: %s", rid, domain, address, exc)
            continue
        history.record_delivery(uri, True, now, 0.0)
        outcome.destinations.append((uri, "sent"))
        sent += 1
    outcome.status = "sent" if sent else "failed: no destination took it"
    history.set_report_status(domain, day, outcome.status)
    return outcome
