"""The processes the load benchmark runs: the DNS server and `authmilter serve`, each on its own.

Both are separate processes so that their CPU is measured apart from the driver's and from each
other's. Each is stopped by its own pid (and the milter's leftover children by theirs), never by
name.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from benchmarks import procstat
from benchmarks.mta import probe

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "default.toml"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class ServiceError(Exception):
    pass


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class DnsServer:
    """tests.dnsserver as a process, serving the corpus's zone files on a free loopback port."""

    def __init__(self, zones: list[Path], logfile: Path) -> None:
        self.zones = zones
        self.logfile = logfile
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> DnsServer:
        args = [sys.executable, "-m", "tests.dnsserver", "--port", "0"]
        for zone in self.zones:
            args += ["--zone", str(zone)]
        self._log = open(self.logfile, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        line = self.proc.stdout.readline().decode(errors="replace") if ready else ""
        if not line.startswith("READY "):
            self.stop()
            raise ServiceError(f"DNS server did not start: {line!r}\n{_tail(self.logfile)}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        if self._log is not None:
            self._log.close()


def write_signing(path: Path, corpus_dir: Path, outbound: dict[str, object], *, ed25519: bool) -> None:
    """The outbound scenario's signing file: clients in one internal network, every author signed."""
    keys = outbound["keys"]
    assert isinstance(keys, dict)
    names = ["out-rsa"] + (["out-ed"] if ed25519 else [])
    lines = ["[settings]", f'internal_networks = ["{outbound["network"]}"]', ""]
    for name, kind in (("out-rsa", "rsa"), ("out-ed", "ed25519")):
        if name in names:
            lines += [f"[keys.{name}]", f'domain = "{outbound["domain"]}"',
                      f'selector = "{keys[kind]["selector"]}"',
                      f'file = "{corpus_dir / keys[kind]["file"]}"', ""]
    lines += ["[[sign]]", 'match = ["*"]', "keys = [" + ", ".join(f'"{n}"' for n in names) + "]"]
    path.write_text("\n".join(lines) + "\n")


def write_config(path: Path, *, socket_spec: str, dns_port: int, authserv_id: str, signing: Path | None,
                 workers: int | str | None, extra: str = "", history: bool = True) -> None:
    """Production defaults (info logging, the shipped policy) with the DNS of the benchmark.

    JSON log lines carry each message's results, which is how the benchmark learns them for
    rejected messages (a rejected message gets no Authentication-Results to read).
    """
    lines = [
        f'socket = "{socket_spec}"',
        f'authserv_id = "{authserv_id}"',
        'log_level = "info"',
        'log_format = "json"',
    ]
    if not extra:
        lines.append(f'policy = ["{POLICY}"]')
    if signing is not None:
        lines.append(f'signing = "{signing}"')
    if workers is not None:
        # Only when asked for: an authmilter without the worker pool refuses the unknown key.
        lines.append(f'workers = "{workers}"' if isinstance(workers, str) else f"workers = {workers}")
    if extra:
        # Its own `policy` line first, then its tables: after them only [dns] follows.
        lines.append(extra)
    lines += ["", "[dns]", 'nameservers = ["127.0.0.1"]', f"port = {dns_port}", "timeout = 2.0"]
    # The report history, on as shipped, in the run's own directory; --no-history to compare.
    lines += ["", "[history]", f'path = "{path.parent / (path.stem + "-history.db")}"'
              if history else "enabled = false"]
    path.write_text("\n".join(lines) + "\n")


class Milter:
    """`authmilter serve -c CONFIG` as a process of its own."""

    def __init__(self, config: Path, logfile: Path, address: tuple[str, int] | str) -> None:
        self.config = config
        self.logfile = logfile
        self.address = address
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Milter:
        self._log = open(self.logfile, "ab")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # A command to run the milter under, such as valgrind for instruction counts
        # (benchmarks/README.md); it slows start-up, so the wait for the socket grows with it.
        wrap = shlex.split(os.environ.get("AUTHMILTER_BENCH_WRAP", ""))
        command = [*wrap, sys.executable, "-m", "authmilter", "serve", "-c", str(self.config)]
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT * (20 if wrap else 1)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = _tail(self.logfile)
                self.stop()
                if "workers" in log and "unknown key" in log:
                    raise ServiceError("this authmilter does not accept the `workers` setting yet "
                                       f"(--workers needs the worker pool):\n{log}")
                raise ServiceError(f"authmilter exited with status {self.proc.returncode}:\n{log}")
            if probe(self.address):
                return self
            time.sleep(0.1)
        self.stop()
        raise ServiceError(f"authmilter did not answer on {self.address} within {START_TIMEOUT:.0f} s:\n"
                           f"{_tail(self.logfile)}")

    def stop(self) -> None:
        if self.proc is None:
            return
        # Its workers, noted before it goes, so that any it leaves behind can be ended by pid.
        children = [(pid, _start_time(pid)) for pid in procstat.tree(self.proc.pid) if pid != self.proc.pid]
        _stop(self.proc)
        for pid, started in children:
            if started is not None and _start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""


def _start_time(pid: int) -> int | None:
    """The process's start time (proc(5) field 22): tells a reused pid from the one we saw."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return int(raw[raw.rfind(b")") + 2:].split()[19])
