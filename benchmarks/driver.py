"""Sending a phase of messages: P forked processes x T threads, one connection per message.

Several processes because one Python process cannot keep a fast milter busy on its own (the GIL
serializes the driver's threads); threads within each because most of a conversation is waiting
for the milter. Messages are handed out by a shared counter, so a process stuck on a 1 MB message
does not hold back the others. The parent only samples the milter's memory while they run.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from benchmarks import procstat
from benchmarks.mta import Outcome, Prepared, converse

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_COMMENT = re.compile(r"\([^()]*\)")
_RESULT = re.compile(r"\s*([A-Za-z0-9_-]+)\s*=\s*([A-Za-z0-9_-]+)")


def parse_authentication_results(value: str) -> dict[str, list[str]]:
    """{method: [result, ...]} of one Authentication-Results value (RFC 8601), authserv-id dropped."""
    text = _QUOTED.sub('""', value.replace("\r\n", " ").replace("\n", " "))
    for _ in range(8):  # innermost comments first; eight levels of nesting is more than anyone writes
        text, n = _COMMENT.subn(" ", text)
        if not n:
            break
    results: dict[str, list[str]] = {}
    for clause in text.split(";")[1:]:
        m = _RESULT.match(clause)
        if m:
            results.setdefault(m.group(1).lower(), []).append(m.group(2).lower())
    return results


def summarize_dkim(results: list[str]) -> str:
    """One DKIM result per message: pass if any signature passed, else the first result."""
    if not results:
        return ""
    return "pass" if "pass" in results else results[0]


class Record(NamedTuple):
    """What one message's conversation showed, kept small: a long run holds many of these."""

    seq: int
    msg: int  # index into the corpus
    seconds: float
    action: str
    stage: str
    spf: str  # "" when there was no Authentication-Results (rejected mail: see the log)
    dkim: str
    dmarc: str
    deleted_ar: int  # Authentication-Results the milter deleted
    signatures: tuple[tuple[int, str], ...]  # (insert index, DKIM-Signature value), if kept
    error: str


def summarize(seq: int, index: int, o: Outcome, keep_signatures: bool) -> Record:
    spf = dkim = dmarc = ""
    ars = o.headers("Authentication-Results")
    if ars:
        r = parse_authentication_results(ars[0])
        spf = (r.get("spf") or [""])[0]
        dkim = summarize_dkim(r.get("dkim", []))
        dmarc = (r.get("dmarc") or [""])[0]
    deleted = sum(1 for _, n, v in o.changed if n.lower() == "authentication-results" and not v)
    sigs: tuple[tuple[int, str], ...] = ()
    if keep_signatures:
        sigs = tuple((i, v) for i, n, v in o.inserted if n.lower() == "dkim-signature")
    return Record(seq, index, o.seconds, o.action, o.stage, spf, dkim, dmarc, deleted, sigs, o.error)


@dataclass
class PhaseSpec:
    tag: str  # queue-id prefix: tells the phases apart in the milter's log
    count: int | None  # messages to send; None with a duration
    duration: float | None  # seconds to keep sending, looping over the corpus
    processes: int
    threads: int  # in all, spread over the processes
    timeout: float  # per socket operation
    quickack: bool
    no_reply: bool = True  # offer the SMFIP_NR_* flags, as Postfix does
    keep_signatures: int = 0  # keep DKIM-Signatures of sequence numbers below this


@dataclass
class _WorkerResult:
    proc: int
    cpu: float
    end: float
    records: list[Record]
    problem: str = ""


def _worker(proc: int, threads: int, spec: PhaseSpec, messages: list[Prepared],
            address: tuple[str, int] | str, counter: Any, start: multiprocessing.synchronize.Event,
            deadline: float, results: multiprocessing.Queue[_WorkerResult]) -> None:
    if not start.wait(120):
        results.put(_WorkerResult(proc, 0.0, time.monotonic(), [], "never told to start"))
        return
    began, cpu0 = time.monotonic(), time.process_time()
    stop_at = min(deadline, began + spec.duration) if spec.duration else deadline
    records: list[Record] = []

    def loop() -> None:
        # Bounded by the count, or by the clock in duration mode, and always by the deadline.
        while time.monotonic() < stop_at:
            with counter.get_lock():
                seq = counter.value
                if spec.count is not None and seq >= spec.count:
                    return
                counter.value = seq + 1
            index = seq % len(messages)
            o = converse(address, messages[index], queue_id=f"{spec.tag}{seq:07d}", timeout=spec.timeout,
                         quickack=spec.quickack, no_reply=spec.no_reply)
            records.append(summarize(seq, index, o, seq < spec.keep_signatures))

    pool = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(max(0.0, stop_at - time.monotonic()) + spec.timeout * 3 + 5)
    problem = "threads still running at the deadline" if any(t.is_alive() for t in pool) else ""
    results.put(_WorkerResult(proc, time.process_time() - cpu0, time.monotonic(), list(records), problem))


@dataclass
class PhaseResult:
    spec: PhaseSpec
    records: list[Record]
    wall: float  # start signal to the last worker's end
    milter: procstat.Cpu
    dns_cpu: float
    driver_cpu: float  # the workers' and the parent's
    machine: procstat.MachineCpu  # all CPUs during the phase
    memory: procstat.MemoryWatch
    rss_start_kb: int
    rss_end_kb: int
    problems: list[str] = field(default_factory=list)

    @property
    def milter_cpu(self) -> float:
        return self.milter.total


def run_phase(spec: PhaseSpec, messages: list[Prepared], address: tuple[str, int] | str, *, milter_pid: int,
              dns_pid: int, sample_every: float = 0.25, keep_sample_every: float = 1.0,
              on_sample: Callable[[float, int, procstat.MemSample], None] | None = None) -> PhaseResult:
    """Send the phase and measure the milter around it; returns when every worker has reported."""
    ctx = multiprocessing.get_context("fork")  # the workers inherit the prepared messages, no copy
    counter = ctx.Value("q", 0)
    start = ctx.Event()
    results: multiprocessing.Queue[_WorkerResult] = ctx.Queue()
    expected = spec.count if spec.count is not None else 0
    # Generous, but finite: 0.5 s a message is ten times slower than any milter worth measuring.
    budget = spec.duration + 60 if spec.duration else max(120.0, expected * 0.5)
    deadline = time.monotonic() + budget
    per_proc = [spec.threads // spec.processes + (1 if i < spec.threads % spec.processes else 0)
                for i in range(spec.processes)]
    procs = [ctx.Process(target=_worker, daemon=True,
                         args=(i, n, spec, messages, address, counter, start, deadline, results))
             for i, n in enumerate(per_proc) if n > 0]
    for p in procs:
        p.start()
    memory = procstat.MemoryWatch(milter_pid, keep_every=keep_sample_every)
    rss_start = memory.sample(0.0).rss_kb
    milter0, dns0 = procstat.tree_cpu(milter_pid), procstat.tree_cpu(dns_pid)
    machine0 = procstat.machine_cpu()
    self0 = time.process_time()
    t0 = time.monotonic()
    start.set()
    collected: dict[int, _WorkerResult] = {}
    # Bounded by the deadline (plus time for the workers' last conversations to time out).
    while len(collected) < len(procs) and time.monotonic() < deadline + spec.timeout * 3 + 30:
        try:
            item = results.get(timeout=sample_every)
            collected[item.proc] = item
        except queue.Empty:
            pass
        s = memory.sample(time.monotonic() - t0)
        if on_sample is not None:
            on_sample(time.monotonic() - t0, counter.value, s)
    end = max((r.end for r in collected.values()), default=time.monotonic())
    milter1, dns1 = procstat.tree_cpu(milter_pid), procstat.tree_cpu(dns_pid)
    machine = procstat.machine_cpu() - machine0
    self_cpu = time.process_time() - self0
    rss_end = memory.sample(time.monotonic() - t0).rss_kb
    problems = [f"driver process {r.proc}: {r.problem}" for r in collected.values() if r.problem]
    if len(collected) < len(procs):
        problems.append(f"{len(procs) - len(collected)} driver process(es) never reported")
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)
    records = sorted((rec for r in collected.values() for rec in r.records), key=lambda rec: rec.seq)
    return PhaseResult(
        spec=spec, records=records, wall=end - t0, milter=milter1 - milter0, dns_cpu=(dns1 - dns0).total,
        driver_cpu=sum(r.cpu for r in collected.values()) + self_cpu,
        machine=machine, memory=memory,
        rss_start_kb=rss_start, rss_end_kb=rss_end, problems=problems)
