"""Load benchmark: the real `authmilter serve` under a multi-process MTA-side load.

    python -m benchmarks.load [-n 2000] [--seed 1] [--concurrency 8] [--workers N]
                              [--socket inet|unix] [--scenario inbound|outbound|both|none]
                              [--warmup 100] [--keep] [--json FILE] [--sign-ed25519]
                              [--duration SECONDS] [--big-message-mb M]

It builds (or reuses) a deterministic corpus (benchmarks/corpus.py), serves its zones from
tests.dnsserver in a process of its own, starts `authmilter serve` with the shipped default policy,
warms it up, then sends every message on a fresh connection from P processes x T threads and
measures: the CPU of the milter's whole process tree per message (the robust figure), messages
per second, latency percentiles, peak memory, the driver's and the DNS server's own CPU, and
whether the results were right. benchmarks/README.md explains each figure.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dkim

from benchmarks import antispam, procstat, pyspy
from benchmarks import corpus as corpus_mod
from benchmarks.checks import InboundCheck, SignatureCheck, check_inbound, check_signatures, read_log
from benchmarks.driver import PhaseResult, PhaseSpec, parse_authentication_results, run_phase, summarize_dkim
from benchmarks.mta import Envelope, Prepared, converse, prepare
from benchmarks.services import ROOT, DnsServer, Milter, ServiceError, write_config, write_signing

MB = 1024 * 1024


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1, or auto")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n")[0],
                                epilog="Figures and examples: benchmarks/README.md.")
    p.add_argument("-n", "--messages", type=int, default=2000,
                   help="messages in the corpus, each sent once per scenario (default 2000)")
    p.add_argument("--seed", type=int, default=1, help="corpus seed: same seed, same bytes (default 1)")
    p.add_argument("-c", "--concurrency", type=int, default=8, help="connections in flight (default 8)")
    p.add_argument("--processes", type=int, default=None,
                   help="driver processes the connections are spread over (default: min(C, CPUs))")
    p.add_argument("--workers", type=_workers, default=None, metavar="N|auto",
                   help="passed to the milter as `workers = N` (left out when not given)")
    p.add_argument("--socket", choices=("inet", "unix"), default="inet",
                   help="the milter listens on 127.0.0.1 (inet, default) or on a unix socket")
    p.add_argument("--scenario", choices=("inbound", "outbound", "both", "antispam", "all", "none"),
                   default="both",
                   help="verify incoming mail, sign our users' mail, both (default), or none (with "
                        "--big-message-mb alone)")
    p.add_argument("--warmup", type=int, default=100,
                   help="messages sent first and not measured (default 100)")
    p.add_argument("--keep", action="store_true",
                   help="keep the corpus in benchmarks/.corpus/ for later runs, and the run directory")
    p.add_argument("--json", metavar="FILE", help="write every figure here")
    p.add_argument("--sign-ed25519", action="store_true", help="outbound: an Ed25519 signature next to RSA")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="loop over the corpus this long per scenario, printing memory as it goes")
    p.add_argument("--rss-every", type=float, default=None, metavar="SECONDS",
                   help="with --duration: how often to print memory (default: 30, or 5 under 5 minutes)")
    p.add_argument("--big-message-mb", type=float, default=None, metavar="M",
                   help="also send one M MB message alone and report the milter's memory growth for it")
    p.add_argument("--big-message-text", action="store_true",
                   help="make that message plain text with runs of white space (the slow path of relaxed "
                        "canonicalization) instead of a base64 attachment")
    p.add_argument("--no-quickack", action="store_true",
                   help="do not re-arm TCP_QUICKACK at end of message (shows the 40 ms delayed-ACK stall)")
    p.add_argument("--no-history", action="store_true",
                   help="[history] enabled = false: the milter records nothing (to compare its cost)")
    p.add_argument("--no-noreply", action="store_true",
                   help="offer no SMFIP_NR_* flags (as the test client): the milter answers every header")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per socket operation (default 30)")
    p.add_argument("--py-spy", metavar="DIR", default=None,
                   help="profile the milter with py-spy during each measured phase (pip install py-spy); "
                        "collapsed stacks go to DIR, a summary to stdout; its figures are skewed by it")
    args = p.parse_args(argv)
    if args.messages < 1 or args.concurrency < 1 or args.warmup < 0:
        p.error("-n and --concurrency must be at least 1, --warmup at least 0")
    if args.processes is None:
        args.processes = min(args.concurrency, os.cpu_count() or 1)
    args.processes = max(1, min(args.processes, args.concurrency))
    if args.duration is not None and args.duration <= 0:
        p.error("--duration must be positive")
    return args


def reproduce(args: argparse.Namespace) -> str:
    python = Path(sys.executable)
    if python.is_relative_to(ROOT):
        python = python.relative_to(ROOT)  # the project's .venv: runnable from the repository root
    parts = [str(python), "-m", "benchmarks.load", "-n", str(args.messages), "--seed", str(args.seed),
             "--concurrency", str(args.concurrency), "--processes", str(args.processes),
             "--socket", args.socket, "--scenario", args.scenario, "--warmup", str(args.warmup)]
    if args.workers is not None:
        parts += ["--workers", str(args.workers)]
    if args.sign_ed25519:
        parts.append("--sign-ed25519")
    if args.duration is not None:
        parts += ["--duration", f"{args.duration:g}"]
    if args.big_message_mb is not None:
        parts += ["--big-message-mb", f"{args.big_message_mb:g}"]
    if args.big_message_text:
        parts.append("--big-message-text")
    if args.no_quickack:
        parts.append("--no-quickack")
    if args.no_noreply:
        parts.append("--no-noreply")
    if args.py_spy:
        parts += ["--py-spy", args.py_spy]
    if args.timeout != 30.0:
        parts += ["--timeout", f"{args.timeout:g}"]
    return shlex.join(parts)


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}{' + uncommitted changes' if dirty else ''}" if rev else "unknown"


# --- the messages as each scenario sends them ---------------------------------------------------


def inbound_messages(manifest: dict[str, Any], raws: list[bytes]) -> list[Prepared]:
    out = []
    for meta, raw in zip(manifest["messages"], raws, strict=True):
        env = Envelope(meta["client_ip"], meta["client_host"], meta["helo"], meta["mail_from"],
                       tuple(meta["rcpts"]))
        out.append(prepare(raw, env))
    return out


def strip_signatures(raw: bytes) -> bytes:
    """The message as our own user would submit it: without the senders' DKIM-Signatures."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    kept: list[bytes] = []
    dropping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.lower().startswith(b"dkim-signature:")
        if not dropping:
            kept.append(line)
    return b"\r\n".join(kept) + sep + body


def outbound_messages(manifest: dict[str, Any], raws: list[bytes]) -> tuple[list[Prepared], list[bytes]]:
    """Clients in the signing file's internal network; everything else as in the inbound corpus."""
    prepared, stripped = [], []
    for meta, raw in zip(manifest["messages"], raws, strict=True):
        i = meta["id"]
        ip = f"127.200.{(i // 250) % 250}.{i % 250 + 1}"
        host = f"app{i % 40}.internal.{manifest['rcpt_domain']}"
        env = Envelope(ip, host, host, meta["mail_from"], tuple(meta["rcpts"]))
        s = strip_signatures(raw)
        stripped.append(s)
        prepared.append(prepare(s, env))
    return prepared, stripped


# --- figures -------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


@dataclass
class ScenarioResult:
    name: str
    phase: PhaseResult
    warmup: PhaseResult | None
    inbound: InboundCheck | None = None
    signatures: SignatureCheck | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.phase.records)

    def latencies_ms(self, size_class: str | None = None,
                     manifest: dict[str, Any] | None = None) -> list[float]:
        recs = self.phase.records
        if size_class is not None and manifest is not None:
            recs = [r for r in recs if manifest["messages"][r.msg]["size_class"] == size_class]
        return sorted(r.seconds * 1000 for r in recs)

    def figures(self, manifest: dict[str, Any]) -> dict[str, Any]:
        ph = self.phase
        n = max(1, self.count)
        lat = self.latencies_ms()
        by_size = {}
        for size_class in ("small", "medium", "large"):
            values = self.latencies_ms(size_class, manifest)
            if values:
                by_size[size_class] = {"n": len(values), "p50": percentile(values, 50),
                                       "p99": percentile(values, 99), "max": values[-1]}
        ncpu = os.cpu_count() or 1

        def pct(seconds: float) -> float:
            return 100 * seconds / ph.machine.total if ph.machine.total > 0 else 0.0

        return {
            "messages": self.count,
            "wall_s": ph.wall,
            "msgs_per_s": self.count / ph.wall if ph.wall > 0 else 0.0,
            "milter_cpu_s": ph.milter_cpu,
            "milter_user_s": ph.milter.user,
            "milter_system_s": ph.milter.system,
            "milter_cpu_ms_per_msg": ph.milter_cpu * 1000 / n,
            "milter_cores_used": ph.milter_cpu / ph.wall if ph.wall > 0 else 0.0,
            "driver_cpu_ms_per_msg": ph.driver_cpu * 1000 / n,
            "driver_pct_machine": 100 * ph.driver_cpu / (ph.wall * ncpu) if ph.wall > 0 else 0.0,
            "dns_cpu_ms_per_msg": ph.dns_cpu * 1000 / n,
            "machine_busy_pct": pct(ph.machine.busy),
            "interrupts_pct_machine": pct(ph.machine.interrupts),
            "steal_pct_machine": pct(ph.machine.steal),
            # Processes' CPU time that is none of ours: another job on the machine skews the run.
            "other_pct_machine": pct(max(0.0, ph.machine.tasks - ph.milter_cpu - ph.driver_cpu - ph.dns_cpu)),
            "latency_ms": {"p50": percentile(lat, 50), "p95": percentile(lat, 95), "p99": percentile(lat, 99),
                           "max": lat[-1] if lat else 0.0, "mean": sum(lat) / len(lat) if lat else 0.0},
            "latency_ms_by_size": by_size,
            "memory": {
                "rss_start_mb": ph.rss_start_kb / 1024, "rss_end_mb": ph.rss_end_kb / 1024,
                "peak_rss_mb": ph.memory.peak_rss_kb / 1024, "peak_pss_mb": ph.memory.peak_pss_kb / 1024,
                "max_vmhwm_mb": ph.memory.max_hwm_kb / 1024,
                "processes": max((s.processes for s in ph.memory.samples), default=0),
                "samples": [{"t": round(s.t, 2), "rss_mb": round(s.rss_kb / 1024, 1),
                             "pss_mb": round(s.pss_kb / 1024, 1), "processes": s.processes}
                            for s in ph.memory.samples],
            },
            "actions": dict(Counter(r.action for r in ph.records).most_common()),
            "stages": dict(Counter(r.stage for r in ph.records if r.stage != "eom")),
            "errors": dict(Counter(r.error for r in ph.records if r.error).most_common(10)),
            "problems": ph.problems,
            "warmup": None if self.warmup is None else {
                "messages": len(self.warmup.records), "wall_s": self.warmup.wall,
                "milter_cpu_ms_per_msg": self.warmup.milter_cpu * 1000 / max(1, len(self.warmup.records))},
            "inbound_check": self.inbound.as_dict() if self.inbound else None,
            "signature_check": self.signatures.as_dict() if self.signatures else None,
            "per_message": None if self.count > 20000 else [
                {"id": r.msg, "ms": round(r.seconds * 1000, 3), "action": r.action, "spf": r.spf,
                 "dkim": r.dkim, "dmarc": r.dmarc} for r in ph.records],
            **self.extra,
        }


# --- running a scenario --------------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    corpus: corpus_mod.Corpus
    rundir: Path
    dns: DnsServer
    signing: Path
    socket_kind: str

    def milter(self, name: str, extra: str = "") -> Milter:
        config = self.rundir / f"authmilter-{name}.toml"
        address: tuple[str, int] | str
        if self.socket_kind == "unix":
            path = self.rundir / f"milter-{name}.sock"
            spec, address = f"unix:{path}", str(path)
        else:
            port = _free_port()
            spec, address = f"inet:{port}@127.0.0.1", ("127.0.0.1", port)
        write_config(config, socket_spec=spec, dns_port=self.dns.port,
                     authserv_id=self.corpus.manifest["authserv_id"], signing=self.signing,
                     workers=self.args.workers, extra=extra, history=not self.args.no_history)
        return Milter(config, self.rundir / f"milter-{name}.log", address)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_scenario(run: Run, name: str, messages: list[Prepared], *, keep_signatures: bool,
                 extra: str = "", warmup: int | None = None) -> ScenarioResult:
    args = run.args
    milter = run.milter(name, extra).start()
    tag = name[0].upper()
    warmup = args.warmup if warmup is None else warmup
    try:
        warm = None
        if warmup:
            spec = PhaseSpec(tag=f"W{tag}", count=warmup, duration=None, processes=args.processes,
                             threads=args.concurrency, timeout=args.timeout, quickack=not args.no_quickack,
                             no_reply=not args.no_noreply)
            warm = run_phase(spec, messages, milter.address, milter_pid=milter.pid, dns_pid=run.dns.pid)
        every = args.rss_every or (30.0 if (args.duration or 0) >= 300 else 5.0)
        printer = _DurationPrinter(every) if args.duration else None
        spec = PhaseSpec(tag=tag, count=None if args.duration else len(messages), duration=args.duration,
                         processes=args.processes, threads=args.concurrency, timeout=args.timeout,
                         quickack=not args.no_quickack, no_reply=not args.no_noreply,
                         keep_signatures=len(messages) if keep_signatures else 0)
        if printer is not None:
            print(f"{name}: sending for {args.duration:g} s; memory of the milter's process tree every "
                  f"{every:g} s:", flush=True)
            print(printer.header, flush=True)
        profile: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if args.py_spy:
            exe = pyspy.available()
            if exe is None:
                raise ServiceError("--py-spy: no py-spy here; `.venv/bin/pip install py-spy` to measure")
            out = Path(args.py_spy)
            out.mkdir(parents=True, exist_ok=True)
            profile = pyspy.Recorder(exe, milter.pid, out / f"{name}.folded", out / f"{name}.py-spy.log")
        with profile:
            phase = run_phase(spec, messages, milter.address, milter_pid=milter.pid, dns_pid=run.dns.pid,
                              keep_sample_every=every if args.duration else 1.0,
                              on_sample=printer.sample if printer else None)
    finally:
        milter.stop()
    result = ScenarioResult(name, phase, warm)
    if printer is not None:
        result.extra["rss_over_time"] = printer.summary()
    result.extra["milter_log"] = str(milter.logfile)
    return result


class _DurationPrinter:
    header = f"  {'t (s)':>7}  {'messages':>9}  {'msgs/s':>7}  {'RSS MB':>8}  {'PSS MB':>8}  {'procs':>5}"

    def __init__(self, every: float) -> None:
        self.every = every
        self.next_at = every
        self.last_t = 0.0
        self.last_n = 0
        self.rows: list[tuple[float, int, float]] = []

    def sample(self, t: float, done: int, s: procstat.MemSample) -> None:
        if t < self.next_at:
            return
        rate = (done - self.last_n) / (t - self.last_t) if t > self.last_t else 0.0
        print(f"  {t:7.0f}  {done:9d}  {rate:7.1f}  {s.rss_kb / 1024:8.1f}  {s.pss_kb / 1024:8.1f}  "
              f"{s.processes:5d}", flush=True)
        self.rows.append((t, done, s.rss_kb / 1024))
        self.last_t, self.last_n = t, done
        self.next_at = t + self.every

    def summary(self) -> dict[str, Any]:
        if len(self.rows) < 2:
            return {"rows": self.rows}
        # "Flat after warm-up": compare the first sample past a tenth of the run with the last.
        base = next(r for r in self.rows if r[0] >= self.rows[-1][0] / 10)
        return {"rows": self.rows, "rss_mb_after_first_tenth": base[2], "rss_mb_last": self.rows[-1][2],
                "growth_mb": self.rows[-1][2] - base[2]}


# --- one big message -----------------------------------------------------------------------------


def big_message(run: Run, mb: float, warm_messages: list[Prepared], *, text: bool = False) -> dict[str, Any]:
    """Send one `mb` MB signed message alone; how much does the milter's memory grow for it?"""
    manifest = run.corpus.manifest
    out = manifest["outbound"]
    key_pem = (run.corpus.path / out["keys"]["rsa"]["file"]).read_bytes()
    size = int(mb * MB)
    attachment = os.urandom(size * 3 // 4)
    import base64

    if text:
        prose = b"Dear  reader,\tthese lines have double  spaces, tabs and trailing white space.  \r\n"
        lines = prose * (size // len(prose))
        content_type = "text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit"
    else:
        b64 = base64.b64encode(attachment)
        lines = b"\r\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))
        content_type = "application/octet-stream\r\nContent-Transfer-Encoding: base64"
    head = (f"From: Alice <alice@{out['domain']}>\r\nTo: <bob@{manifest['rcpt_domain']}>\r\n"
            f"Subject: A {mb:g} MB attachment\r\nDate: {email.utils.formatdate(usegmt=True)}\r\n"
            f"Message-ID: <big.{time.time_ns()}@{out['domain']}>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode()
    raw = head + lines + b"\r\n"
    sig = dkim.sign(raw, out["keys"]["rsa"]["selector"].encode(), out["domain"].encode(), key_pem,
                    canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    raw = bytes(sig) + raw
    msg = prepare(raw, Envelope("192.0.2.77", "unknown", "big.dyn.invalid", f"alice@{out['domain']}",
                                (f"bob@{manifest['rcpt_domain']}",)))
    milter = run.milter("big").start()
    try:
        for i, m in enumerate(warm_messages[:20]):
            converse(milter.address, m, queue_id=f"BW{i:05d}", timeout=run.args.timeout)
        time.sleep(0.5)
        watch = procstat.MemoryWatch(milter.pid)
        before = watch.sample(0.0)
        hwm_before = watch.max_hwm_kb
        cpu0 = procstat.tree_cpu(milter.pid)
        stop = threading.Event()

        def sampler() -> None:
            t0 = time.monotonic()
            # Bounded by the conversation: stop is set right after it, whatever happens.
            while not stop.wait(0.01):
                watch.sample(time.monotonic() - t0)

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        outcome = converse(milter.address, msg, queue_id="BIG0000001", timeout=max(run.args.timeout, 120))
        stop.set()
        thread.join(5)
        cpu = (procstat.tree_cpu(milter.pid) - cpu0).total
        right_after = watch.sample(0.0)
        time.sleep(1.0)
        settled = watch.sample(0.0)
        ar = parse_authentication_results((outcome.headers("Authentication-Results") or [""])[0])
    finally:
        milter.stop()
    return {
        "message_mb": len(raw) / MB,
        "action": outcome.action, "dkim": summarize_dkim(ar.get("dkim", [])), "error": outcome.error,
        "seconds": outcome.seconds, "milter_cpu_s": cpu,
        "rss_before_mb": before.rss_kb / 1024, "peak_rss_mb": watch.peak_rss_kb / 1024,
        "peak_growth_mb": (watch.peak_rss_kb - before.rss_kb) / 1024,
        "vmhwm_before_mb": hwm_before / 1024, "vmhwm_after_mb": watch.max_hwm_kb / 1024,
        "rss_right_after_mb": right_after.rss_kb / 1024, "rss_1s_after_mb": settled.rss_kb / 1024,
        "growth_per_message_mb": (watch.peak_rss_kb - before.rss_kb) / 1024 / (len(raw) / MB),
    }


# --- the report ----------------------------------------------------------------------------------


def print_report(results: list[ScenarioResult], figures: dict[str, dict[str, Any]],
                 big: dict[str, Any] | None) -> None:
    if results:
        print()
        cols = ("scenario", "msgs", "msgs/s", "CPU ms/msg", "p50 ms", "p95 ms", "p99 ms", "peak RSS MB",
                "actions", "checks")
        rows = []
        for r in results:
            f = figures[r.name]
            lat = f["latency_ms"]
            actions = " ".join(f"{a} {n}" for a, n in f["actions"].items())
            checks = r.inbound.summary() if r.inbound else r.signatures.summary() if r.signatures else "-"
            rows.append((r.name, str(f["messages"]), f"{f['msgs_per_s']:.1f}",
                         f"{f['milter_cpu_ms_per_msg']:.2f}", f"{lat['p50']:.1f}", f"{lat['p95']:.1f}",
                         f"{lat['p99']:.1f}", f"{f['memory']['peak_rss_mb']:.1f}", actions, checks))
        widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
        for row in (cols, *rows):
            # Text columns left-aligned, figures right-aligned.
            print("  ".join(v.ljust(w) if i in (0, 8, 9) else v.rjust(w)
                            for i, (v, w) in enumerate(zip(row, widths, strict=True))).rstrip())
    for r in results:
        f = figures[r.name]
        m = f["memory"]
        print(f"\n{r.name}:")
        print(f"  milter CPU {f['milter_cpu_s']:.2f} s for {f['messages']} messages "
              f"(user {f['milter_user_s']:.2f} s, system {f['milter_system_s']:.2f} s; "
              f"{f['milter_cores_used']:.2f} cores busy on average); wall {f['wall_s']:.1f} s")
        print(f"  driver {f['driver_cpu_ms_per_msg']:.2f} ms/msg "
              f"({f['driver_pct_machine']:.0f}% of the machine), DNS server {f['dns_cpu_ms_per_msg']:.3f} "
              f"ms/msg; machine busy {f['machine_busy_pct']:.0f}% "
              f"(interrupts {f['interrupts_pct_machine']:.0f}%, steal {f['steal_pct_machine']:.0f}%, "
              f"other processes {f['other_pct_machine']:.0f}%)")
        if f["other_pct_machine"] > 10:
            print("  WARNING: something else was using the CPUs during this run: msgs/s and latency are "
                  "not comparable, CPU ms/msg less so (shared caches); run it again on a quiet machine")
        print(f"  memory: RSS {m['rss_start_mb']:.1f} MB after warm-up, peak {m['peak_rss_mb']:.1f} MB "
              f"(PSS {m['peak_pss_mb']:.1f} MB, largest VmHWM {m['max_vmhwm_mb']:.1f} MB, "
              f"{m['processes']} process(es)), {m['rss_end_mb']:.1f} MB at the end")
        sizes = ", ".join(f"{k} (n={v['n']}) p50 {v['p50']:.1f} / p99 {v['p99']:.1f} / max {v['max']:.1f}"
                          for k, v in f["latency_ms_by_size"].items())
        print(f"  latency ms by size: {sizes}")
        if f["errors"]:
            print(f"  errors: {f['errors']}")
        for problem in f["problems"]:
            print(f"  problem: {problem}")
        if r.inbound is not None:
            c = r.inbound
            print(f"  results: {c.results_line()}")
            print(f"  checks: {c.summary()} "
                  f"({c.from_log} rejected messages' results read from the milter's log)")
            if c.disagreements:
                print("  disagreements (expected→observed, count, corpus ids):")
                for key, count in c.disagreements.most_common():
                    print(f"    {key}: {count}  e.g. {c.examples.get(key, [])}")
            else:
                print("  no disagreements")
        if r.signatures is not None:
            s = r.signatures
            print(f"  signatures: {s.summary()} verified by dkimpy"
                  + (f"; failures: {dict(s.failures)}" if s.failures else ""))
        if "rss_over_time" in f and f["rss_over_time"].get("growth_mb") is not None:
            o = f["rss_over_time"]
            print(f"  RSS {o['rss_mb_after_first_tenth']:.1f} MB after the first tenth of the run, "
                  f"{o['rss_mb_last']:.1f} MB at the end ({o['growth_mb']:+.1f} MB)")
    if big is not None:
        print(f"\nbig message ({big['message_mb']:.1f} MB): {big['action']}, dkim={big['dkim'] or '-'}"
              f"{', error ' + big['error'] if big['error'] else ''}, {big['seconds']:.2f} s, "
              f"milter CPU {big['milter_cpu_s']:.2f} s")
        print(f"  milter RSS {big['rss_before_mb']:.1f} MB before, peak {big['peak_rss_mb']:.1f} MB "
              f"(+{big['peak_growth_mb']:.1f} MB, {big['growth_per_message_mb']:.1f}x the message), "
              f"VmHWM {big['vmhwm_before_mb']:.1f} -> {big['vmhwm_after_mb']:.1f} MB, "
              f"{big['rss_1s_after_mb']:.1f} MB a second later")


def corpus_summary(manifest: dict[str, Any], raws: list[bytes]) -> dict[str, Any]:
    msgs = manifest["messages"]
    return {
        "seed": manifest["seed"], "messages": len(msgs), "mb": sum(len(r) for r in raws) / MB,
        "categories": dict(Counter(m["category"] for m in msgs)),
        "sizes": dict(Counter(m["size_class"] for m in msgs)),
        "outside_spf": sum(m["outside_spf"] for m in msgs),
        "expected_actions": dict(Counter(m["expect"]["action"] for m in msgs)),
        "expected_dmarc": dict(Counter(m["expect"]["dmarc"] for m in msgs)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = reproduce(args)
    print(f"command: {command}", flush=True)
    started = time.monotonic()
    corpus = corpus_mod.obtain(args.messages, args.seed, keep=args.keep)
    if corpus.generated_seconds is not None:
        print(f"corpus generated in {corpus.generated_seconds:.1f} s: {corpus.path}", flush=True)
    corpus.load_messages()
    manifest, raws = corpus.manifest, corpus.messages
    summary = corpus_summary(manifest, raws)
    print(f"corpus: seed {summary['seed']}, {summary['messages']} messages, {summary['mb']:.1f} MB, "
          f"{summary['categories']}, sizes {summary['sizes']}, {summary['outside_spf']} from outside SPF; "
          f"expected actions {summary['expected_actions']}", flush=True)
    ncpu = os.cpu_count() or 1
    threads = [args.concurrency // args.processes + (1 if i < args.concurrency % args.processes else 0)
               for i in range(args.processes)]
    print(f"machine: {ncpu} CPUs, Python {platform.python_version()}; authmilter {git_revision()}; "
          f"driver {args.processes} process(es) x {'/'.join(map(str, threads))} threads, {args.socket} socket"
          f"{f', workers={args.workers}' if args.workers is not None else ''}", flush=True)

    rundir = Path(tempfile.mkdtemp(prefix="authmilter-bench-"))
    zones = [corpus.path / z for z in manifest["zones"]]
    if args.scenario in ("antispam", "all"):
        zones += antispam.write_zones(rundir, manifest)
    dns = DnsServer(zones, rundir / "dnsserver.log")
    results: list[ScenarioResult] = []
    figures: dict[str, dict[str, Any]] = {}
    big = None
    try:
        dns.start()
        signing = rundir / "signing.toml"
        write_signing(signing, corpus.path, manifest["outbound"], ed25519=args.sign_ed25519)
        run = Run(args, corpus, rundir, dns, signing, args.socket)
        if args.scenario in ("inbound", "both", "all"):
            print("inbound: running", flush=True)
            messages = inbound_messages(manifest, raws)
            r = run_scenario(run, "inbound", messages, keep_signatures=False)
            log = read_log(Path(r.extra["milter_log"]).read_text(errors="replace"))
            r.inbound = check_inbound(r.phase.records, manifest, log, "I")
            results.append(r)
        if args.scenario in ("antispam", "all"):
            print("antispam: running (warm-up: the whole corpus once, so that greylisting passes)",
                  flush=True)
            messages = inbound_messages(manifest, raws)
            r = run_scenario(run, "antispam", messages, keep_signatures=False,
                             extra=antispam.config_extra(rundir), warmup=len(messages))
            log = read_log(Path(r.extra["milter_log"]).read_text(errors="replace"))
            r.inbound = check_inbound(r.phase.records, manifest, log, "A")
            results.append(r)
        if args.scenario in ("outbound", "both", "all"):
            print("outbound: running", flush=True)
            messages, stripped = outbound_messages(manifest, raws)
            r = run_scenario(run, "outbound", messages, keep_signatures=True)
            print("outbound: verifying the signatures with dkimpy", flush=True)
            per_message = 2 if args.sign_ed25519 else 1
            r.signatures = check_signatures(r.phase.records, stripped, manifest, per_message)
            results.append(r)
        if args.big_message_mb:
            print(f"big message: sending one of {args.big_message_mb:g} MB", flush=True)
            big = big_message(run, args.big_message_mb, inbound_messages(manifest, raws)[:20],
                              text=args.big_message_text)
        figures = {r.name: r.figures(manifest) for r in results}
        print_report(results, figures, big)
        if args.py_spy:
            for r in results:
                folded = Path(args.py_spy) / f"{r.name}.folded"
                if folded.exists():
                    summary = pyspy.summarize(folded)
                    samples = summary["samples"]
                    assert isinstance(samples, int)
                    pyspy.print_summary(r.name, summary, samples / pyspy.RATE, r.phase.milter_cpu)
                    figures[r.name]["py_spy"] = summary
                else:
                    print(f"\n{r.name}: py-spy wrote nothing; see {folded.with_suffix('.py-spy.log')}")
    except ServiceError as e:
        print(f"benchmarks.load: {e}", file=sys.stderr)
        return 1
    finally:
        dns.stop()
        if args.keep:
            print(f"\nrun directory (configs, logs) kept: {rundir}")
        else:
            shutil.rmtree(rundir, ignore_errors=True)
        corpus.cleanup()
    print(f"\nreproduce: {command}\n(total {time.monotonic() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": command, "machine": {"cpus": ncpu, "python": platform.python_version(),
                                            "kernel": platform.release(), "authmilter": git_revision()},
            "options": vars(args), "corpus": summary, "scenarios": figures, "big_message": big,
        }, indent=1, default=str))
        print(f"figures written to {args.json}")
    failed = any(r.inbound and r.inbound.disagreements for r in results) or \
        any(r.signatures and r.signatures.verified != r.signatures.expected for r in results)
    return 2 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
