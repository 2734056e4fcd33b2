"""Failure reports (RFC 9991) from the milter, off the SMTP path.

At end of message the milter hands a failing message to `FailureSender.offer`, which only
decides cheaply whether a report is wanted (enabled, DMARC failed, fo= asks for it, not psd=y,
not a report itself, this domain's hourly budget not spent) and queues it. A thread then checks
each ruf destination as aggregate reports do (RFC 9990 external destination verification),
builds the report, signs it with our signing table and hands it to the local MTA. A failure
anywhere is logged and the report dropped: failure reports are best effort by design, and a
retry queue would only keep a hostile sender's messages around longer.

The budget is per reported domain and per milter process: a flood of forged mail must not
turn into a flood of reports to the forged domain.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from email.utils import make_msgid

from authmilter.core.dnsapi import Resolver
from authmilter.core.model import Results, Transaction, Verdict
from authmilter.core.signing.dkim import EMPTY_SIGNING, SigningConfig
from authmilter.files.config import ReportSettings
from authmilter.reports.failure import FailureReporter, build_failure_report, report_destinations, wanted
from authmilter.reports.send import Deliver, destination_verified, signed_message, smtp_deliver

log = logging.getLogger("authmilter.reports")

QUEUE = 100


def is_report(tx: Transaction) -> bool:
    """Mail that is itself automatic (a report, a bounce): never reported on, so two receivers
    that both report cannot start mailing each other reports about reports."""
    for h in tx.headers:
        if h.key == b"auto-submitted" and h.value.strip().lower() not in (b"", b"no"):
            return True
        if h.key == b"content-type" and b"report" in h.value.lower():
            return True
    return tx.mail_from == ""


class FailureSender:
    def __init__(self, settings: ReportSettings, resolver: Resolver, *,
                 signing: SigningConfig = EMPTY_SIGNING, deliver: Deliver | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.resolver = resolver
        self.signing = signing
        self.deliver = deliver or smtp_deliver(settings.smtp)
        self.clock = clock
        self.reporter = FailureReporter(reporting_domain=settings.receiver_domain,
                                        from_address=settings.email)
        self._budget: dict[str, tuple[int, int]] = {}  # domain -> (hour, reports this hour)
        self._lock = threading.Lock()
        self._pid = 0
        self._queue: queue.Queue[tuple[Transaction, Results, Verdict, float]] = queue.Queue(QUEUE)
        self.sent = 0
        self.limited = 0

    def offer(self, tx: Transaction, verdict: Verdict) -> bool:
        """Queue a report on this message if one is wanted; True when queued. Never raises."""
        try:
            results = verdict.results
            if results is None or results.dmarc is None or results.dmarc.record is None:
                return False
            record = results.dmarc.record
            if results.dmarc.result != "fail" or not wanted(record.fo, results):
                return False
            if not report_destinations(record) or is_report(tx):
                return False
            if not self._spend(results.dmarc.domain):
                return False
            if self._pid != os.getpid():
                self._start()
            self._queue.put_nowait((tx, results, verdict, self.clock()))
            return True
        except queue.Full:
            log.warning("failure reports: queue full, report on %s dropped", tx.queue_id or "-")
        except Exception:
            log.exception("failure reports: not queued")
        return False

    def _spend(self, domain: str) -> bool:
        hour = int(self.clock() // 3600)
        with self._lock:
            seen_hour, count = self._budget.get(domain, (hour, 0))
            if seen_hour != hour:
                count = 0
            if count >= self.settings.failure_per_hour:
                self.limited += 1
                if count == self.settings.failure_per_hour:
                    log.info("failure reports for %s: %d this hour, the rest of the hour is not "
                             "reported", domain, count)
                    self._budget[domain] = (hour, count + 1)
                return False
            if len(self._budget) > 10000:
                self._budget.clear()  # bounded: a forged-domain flood cannot grow this without end
            self._budget[domain] = (hour, count + 1)
            return True

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._queue = queue.Queue(QUEUE)
            threading.Thread(target=self._run, name="failure-reports", daemon=True).start()

    def _run(self) -> None:
        while True:
            tx, results, verdict, arrival = self._queue.get()
            try:
                self.send(tx, results, verdict, arrival)
            except Exception:
                log.exception("failure report on %s not sent", tx.queue_id or "-")
            finally:
                self._queue.task_done()

    def flush(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def send(self, tx: Transaction, results: Results, verdict: Verdict, arrival: float) -> list[str]:
        """Verify, build, sign and deliver one report; the addresses it went to."""
        assert results.dmarc is not None and results.dmarc.record is not None
        record = results.dmarc.record
        policy_domain = record.domain
        targets = []
        for address in report_destinations(record):
            address = address.split(":", 1)[1] if address.lower().startswith("mailto:") else address
            ok, why = destination_verified(policy_domain, address, self.resolver)
            if ok:
                targets.append(address)
            else:
                log.info("failure report for %s: %s not used: %s", policy_domain, address, why)
        if not targets:
            return []
        data = build_failure_report(
            tx, results, self.reporter, to=tuple(targets), arrival=arrival,
            authentication_results=verdict.authentication_results,
            message_id=make_msgid(domain=self.settings.receiver_domain or None))
        data = signed_message(data, self.signing, self.settings.email, self.clock())
        self.deliver(self.settings.email, targets, data)
        self.sent += 1
        log.info("failure report on %s for %s sent to %s", tx.queue_id or "-", policy_domain,
                 ", ".join(targets))
        return targets
