"""A fresh Debian 12 root for the package tests: debootstrapped, run in or booted with systemd-nspawn.

One bookworm root (debootstrap --variant=minbase, with systemd folded in), from the mirror the
host's apt uses. `DebianRoot.run` runs a command in it under `systemd-nspawn` with systemd not
running there, as in a chroot. `DebianRoot.boot` starts it with `systemd-nspawn --boot`, its own
systemd as PID 1 (this works on the host's cgroup v1 hybrid layout although the host's PID 1 is
not systemd), and `exec_booted` runs commands in it with nsenter. The container shares the host's
network, so apt and pip inside it reach what the host reaches.

`fresh_root` makes one, and always shuts it down and removes it; `host_mirror_or_skip` skips the
test, saying why, when the host cannot (not root, not Debian, no mirror).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.debian import apt_install, tail

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# systemd in the root: systemctl, systemd-analyze and systemd-sysusers, and an init for --boot.
# Folded into debootstrap, which is much faster than a later apt-get install.
INCLUDE = ("systemd", "systemd-sysv", "dbus")

DEBOOTSTRAP_TIMEOUT = 420.0
APT_TIMEOUT = 300.0
BOOT_TIMEOUT = 90.0
COMMAND_TIMEOUT = 120.0


class PackageTestError(Exception):
    pass


def host_run(cmd: Sequence[str], *, timeout: float = COMMAND_TIMEOUT, check: bool = True,
             input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                              input=input_text, stdin=None if input_text is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise PackageTestError(f"{' '.join(cmd)}: no end within {timeout:.0f}s\n{tail(e.stdout)}\n"
                               f"{tail(e.stderr)}") from e
    if check and done.returncode != 0:
        raise PackageTestError(f"{' '.join(cmd)}: exit {done.returncode}\n{tail(done.stdout)}\n"
                               f"{tail(done.stderr)}")
    return done


# --- the host --------------------------------------------------------------------------------------

def host_mirror() -> str:
    """The first Debian archive URI the host's apt sources name for bookworm (either format)."""
    sources: list[Path] = [Path("/etc/apt/sources.list")]
    sources += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    sources += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
                if (fields.get("Enabled", "yes").lower() != "no" and "deb" in fields.get("Types", "").split()
                        and SUITE in fields.get("Suites", "").split()):
                    uris = fields.get("URIs", "").split()
                    if uris:
                        return uris[0].rstrip("/")
        else:
            for line in text.splitlines():
                m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m and m.group(2) == SUITE:
                    return m.group(1).rstrip("/")
    return DEFAULT_MIRROR


def mirror_problem(mirror: str) -> str | None:
    try:
        with urllib.request.urlopen(f"{mirror}/dists/{SUITE}/Release", timeout=15) as reply:
            reply.read(64)
    except (urllib.error.URLError, OSError) as e:
        return f"cannot reach the Debian mirror {mirror}: {e}"
    return None


def ensure_host_tools() -> None:
    missing = [pkg for pkg, tool in (("debootstrap", "debootstrap"), ("systemd-container", "systemd-nspawn"))
               if shutil.which(tool) is None]
    if missing:
        apt_install(missing, error=PackageTestError, timeout=APT_TIMEOUT)


def host_mirror_or_skip(needs_dpkg_for: str) -> str:
    """The mirror to debootstrap from, once the host's tools are there; a skip saying why without."""
    if os.geteuid() != 0:
        pytest.skip("needs root: debootstrap, and systemd-nspawn to run the root")
    if shutil.which("dpkg") is None or not Path("/etc/debian_version").exists():
        pytest.skip(f"not a Debian system: no dpkg {needs_dpkg_for}")
    mirror = host_mirror()
    problem = mirror_problem(mirror)
    if problem:
        pytest.skip(problem)
    ensure_host_tools()
    return mirror


# --- the root --------------------------------------------------------------------------------------

def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


@dataclass
class DebianRoot:
    path: Path
    timings: dict[str, float] = field(default_factory=dict)
    booted: subprocess.Popen[bytes] | None = None
    boot_log: Path | None = None

    def run(self, *cmd: str, timeout: float = COMMAND_TIMEOUT, check: bool = True,
            user: str | None = None) -> subprocess.CompletedProcess[str]:
        """`cmd` inside the root, systemd not running there (a container without init)."""
        assert self.booted is None, "the root is booted: use exec_booted"
        nspawn = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--pipe",
                  "-E", "DEBIAN_FRONTEND=noninteractive", "-D", str(self.path)]
        if user:
            nspawn += ["--user", user]
        return host_run([*nspawn, "--", *cmd], timeout=timeout, check=check)

    def init_pid(self) -> int | None:
        """PID (host's view) of the booted container's systemd: the child of nspawn that runs it."""
        if self.booted is None:
            return None
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                comm = (proc / "comm").read_text().strip()
            except OSError:
                continue
            if int(fields[1]) == self.booted.pid and comm == "systemd":
                return int(proc.name)
        return None

    def exec_booted(self, *cmd: str, timeout: float = COMMAND_TIMEOUT,
                    check: bool = True) -> subprocess.CompletedProcess[str]:
        """`cmd` in the booted container's namespaces, with the test's own environment."""
        pid = self.init_pid()
        assert pid is not None, "the container's systemd is not running"
        return host_run(["nsenter", "--target", str(pid), "--all", "--", *cmd], timeout=timeout, check=check)

    def boot(self) -> None:
        self.boot_log = self.path.parent / "boot.log"
        with open(self.boot_log, "wb") as log:
            self.booted = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--boot",
                 "--console=passive", "-D", str(self.path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + BOOT_TIMEOUT
        state = ""
        while time.monotonic() < deadline:
            if self.booted.poll() is not None:
                raise PackageTestError(f"systemd-nspawn --boot exited {self.booted.returncode}:\n"
                                       f"{self.log_tail()}")
            if self.init_pid() is not None:
                done = self.exec_booted("systemctl", "is-system-running", timeout=10, check=False)
                state = done.stdout.strip()
                # degraded: some unit of the minimal root failed, which is not ours to judge here.
                if state in ("running", "degraded"):
                    return
            time.sleep(0.5)
        raise PackageTestError(f"the container did not finish booting within {BOOT_TIMEOUT:.0f}s "
                               f"(state {state!r}):\n{self.log_tail()}")

    def shutdown(self) -> None:
        proc, self.booted = self.booted, None
        if proc is None or proc.poll() is not None:
            return
        # nspawn turns SIGTERM into an orderly halt of the container's systemd.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)

    def log_tail(self) -> str:
        return tail(self.boot_log.read_bytes(), 40) if self.boot_log and self.boot_log.exists() else ""

    def file(self, path: str) -> Path:
        return self.path / path.lstrip("/")

    def ids(self, db: str) -> dict[int, str]:
        """uid or gid to name, from the root's own passwd or group file."""
        names: dict[int, str] = {}
        for line in self.file(f"/etc/{db}").read_text().splitlines():
            parts = line.split(":")
            if len(parts) > 3:
                names[int(parts[2])] = parts[0]
        return names

    def owner(self, path: str) -> tuple[str, str, int]:
        st = self.file(path).lstat()
        return (self.ids("passwd").get(st.st_uid, str(st.st_uid)),
                self.ids("group").get(st.st_gid, str(st.st_gid)), stat.S_IMODE(st.st_mode))


def debootstrap(target: Path, mirror: str) -> None:
    host_run(["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}", SUITE, str(target),
              mirror], timeout=DEBOOTSTRAP_TIMEOUT)


def remove_tree(path: Path) -> None:
    # A mount left in the root (should nspawn have died badly) must not have its contents deleted.
    for point in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], timeout=30, check=False)
    left = mounts_under(path)
    assert not left, f"still mounted, {path} not removed: {left}"
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], timeout=120, check=False)


@contextlib.contextmanager
def fresh_root(mirror: str, prefix: str, timings: dict[str, float],
               started: float | None = None) -> Iterator[DebianRoot]:
    """A debootstrapped root, shut down and removed afterwards whatever happened. The timings are
    printed then, with debootstrap's and the total since `started` (time.monotonic()) added."""
    started = time.monotonic() if started is None else started
    # /var/tmp, not pytest's basetemp: pytest keeps old basetemps, and a root is 300 MB.
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    root = DebianRoot(work / "root", timings)
    try:
        t = time.monotonic()
        debootstrap(root.path, mirror)
        timings["debootstrap"] = time.monotonic() - t
        yield root
    finally:
        root.shutdown()
        remove_tree(work)
        timings["total"] = time.monotonic() - started
        print("\ntimings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
