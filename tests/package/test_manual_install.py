"""The install by hand, as systemd/README.md gives it, pasted into a fresh Debian 12.

A fresh bookworm root (tests/package/debianroot.py) gets this repository's files at
/root/authmilter: what `git ls-files` lists, untracked files that are not ignored included, so no
.venv, dist, .git or caches. The root is booted with `systemd-nspawn --boot`, so systemctl works
as pasted, and the ```sh block of the README's "## Install" section, read at test time, runs in it
from the clone with `bash -e -x`, as root, in a root login's environment rather than the test's.
Its apt-get and pip reach their servers from inside the container, which shares the host's
network.

Then: the user authmilter exists, the unit is active, the milter answers an MTA on the sample
config's socket, the block's own `policy lint`, `systemctl status` and reload lines said what
the README says they say, and neither pip's output nor a verbose build of authmilter's own wheel
has a deprecation warning in it.

Needs root, and the network to reach the Debian mirror and PyPI; skipped, saying which, without.
The sample config listens on 127.0.0.1:8891 of the shared network: if something on the host has
that port, the test is skipped, saying so.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import socket
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.debian import tail
from tests.milterclient import MtaSession
from tests.package.debianroot import DebianRoot, PackageTestError, fresh_root, host_mirror_or_skip, host_run

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "systemd" / "README.md"
UNIT = "authmilter.service"
CLONE = "/root/authmilter"
SCRIPT = "/root/install-block.sh"
# What the block gets instead of the test's environment: a root login's.
LOGIN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
             "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash"}
# A host whose pip needs a CA bundle of its own to reach PyPI (PIP_CERT, or cert in pip.conf) has
# it copied here and named in PIP_CERT; elsewhere pip's own certifi does.
HOST_CA = "/root/host-ca.pem"
# Each traced command with the time it began (bash 5's EPOCHREALTIME), to time the steps. Set in
# the script: bash run as root does not take PS4 from the environment.
TRACE = "PS4='+ ${EPOCHREALTIME} '\n"

BLOCK_TIMEOUT = 480.0
WHEEL_TIMEOUT = 120.0


@dataclass
class Step:
    command: str
    seconds: float
    output: list[str]

    @property
    def name(self) -> str:
        """The short name: `pip install` for `/opt/authmilter/venv/bin/pip install --use-pep517 .`."""
        program, *words = self.command.split()
        return " ".join([Path(program).name, *[w for w in words if not w.startswith("-")][:1]])


@dataclass
class Installed:
    root: DebianRoot
    steps: list[Step]  # the block's
    wheel: str  # the verbose wheel build's output

    def step(self, start: str) -> Step:
        found = [s for s in self.steps if s.command.startswith(start)]
        assert len(found) == 1, f"{start!r}: {[s.command for s in self.steps]}"
        return found[0]


def install_block() -> str:
    """The ```sh block of systemd/README.md's "## Install" section, as it stands."""
    section = re.search(r"^## Install\n(.*?)(?=^## |\Z)", README.read_text(), re.M | re.S)
    assert section, "systemd/README.md has no '## Install' section"
    block = re.search(r"^```sh\n(.*?)^```$", section.group(1), re.M | re.S)
    assert block, "systemd/README.md's '## Install' has no ```sh block"
    return block.group(1)


def steps_of(output: str) -> list[Step]:
    """The -x trace cut into commands, each with its output and how long it took until the next."""
    steps: list[Step] = []
    starts: list[float] = []
    for line in output.splitlines():
        m = re.match(r"\++ (\d+\.\d+) (.*)$", line)
        if m:
            starts.append(float(m.group(1)))
            steps.append(Step(m.group(2), 0.0, []))
        elif steps:
            steps[-1].output.append(line)
    ends = [*starts[1:], time.time()]
    for step, begun, ended in zip(steps, starts, ends, strict=True):
        step.seconds = ended - begun
    return steps


def sample_socket() -> tuple[str, int] | str:
    """etc/authmilter.toml's socket: (address, port) for inet:, the path for unix:."""
    config = tomllib.loads((ROOT / "etc" / "authmilter.toml").read_text())
    spec = str(config.get("socket", "inet:8891@127.0.0.1"))
    m = re.fullmatch(r"inet:(\d+)@([\d.]+)", spec)
    if m:
        return m.group(2), int(m.group(1))
    assert spec.startswith("unix:"), f"etc/authmilter.toml: socket {spec!r}"
    return spec.removeprefix("unix:")


def port_taken(address: tuple[str, int]) -> bool:
    with socket.socket() as s:
        # As libmilter binds: a connection of the past in TIME_WAIT does not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError:
            return True
    return False


def pypi_problem() -> str | None:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=15) as reply:
            reply.read(64)
    except (urllib.error.URLError, OSError) as e:
        return f"cannot reach PyPI, which the block's pip install needs: {e}"
    return None


def host_pip_cert() -> Path | None:
    named = os.environ.get("PIP_CERT")
    if not named:
        conf = configparser.ConfigParser()
        conf.read(["/etc/pip.conf", "/etc/xdg/pip/pip.conf"])
        named = conf.get("global", "cert", fallback=None)
    return Path(named) if named and Path(named).is_file() else None


def copy_repository(dest: Path) -> int:
    """The files a clone of this work tree has (tracked, and untracked but not ignored)."""
    listed = host_run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                       "--exclude-standard"])
    names = sorted({n for n in listed.stdout.split("\0") if n})
    strays = [n for n in names if n.split("/")[0] in (".git", ".venv", "dist", "build")]
    assert not strays, f"git lists files a clone would not have: {strays[:5]}"
    copied = 0
    for name in names:
        source = ROOT / name
        if not source.is_symlink() and not source.is_file():
            continue  # deleted in the work tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
        copied += 1
    return copied


def in_login(root: DebianRoot, command: str, *, timeout: float, env: dict[str, str]) -> tuple[int, str]:
    """`command` (bash) in the booted root from the clone, as root with `env` only: its exit status
    and its output, stderr folded in."""
    done = root.exec_booted("env", "-i", *(f"{k}={v}" for k, v in env.items()),
                            "bash", "-c", f"cd {CLONE} && {command} 2>&1", timeout=timeout, check=False)
    return done.returncode, done.stdout


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    mirror = host_mirror_or_skip("to debootstrap a Debian root")
    problem = pypi_problem()
    if problem:
        pytest.skip(problem)
    address = sample_socket()
    if isinstance(address, tuple) and port_taken(address):
        pytest.skip(f"{address[0]}:{address[1]}, the sample config's milter socket, is in use on this host, "
                    "and the container shares the host's network: stop what holds it")
    block = install_block()

    started = time.monotonic()
    timings: dict[str, float] = {}
    with fresh_root(mirror, "authmilter-install-test.", timings, started=started) as root:
        files = copy_repository(root.file(CLONE))
        assert files > 100, f"only {files} files copied from {ROOT}"
        root.file(SCRIPT).write_text(TRACE + block)
        env = dict(LOGIN_ENV)
        cert = host_pip_cert()
        if cert:
            shutil.copyfile(cert, root.file(HOST_CA))
            env["PIP_CERT"] = HOST_CA
        t = time.monotonic()
        root.boot()
        timings["boot"] = time.monotonic() - t

        t = time.monotonic()
        status, output = in_login(root, f"exec bash -e -x {SCRIPT}", timeout=BLOCK_TIMEOUT, env=env)
        timings["block"] = time.monotonic() - t
        steps = steps_of(output)
        if status != 0:
            failed = steps[-1].command if steps else "(nothing traced)"
            raise PackageTestError(f"systemd/README.md's install block failed (exit {status}) at\n"
                                   f"  {failed}\n{tail(output, 60)}")
        for step in steps:
            if step.seconds >= 2:
                timings[step.name] = step.seconds
        # The same pip, verbose, on authmilter alone: pip shows the build backend's own warnings
        # (setuptools') only then. Into a scratch directory, not a file the block made.
        t = time.monotonic()
        status, wheel = in_login(root, "/opt/authmilter/venv/bin/pip wheel -v --no-deps --use-pep517 "
                                 "-w /root/wheel-check .", timeout=WHEEL_TIMEOUT, env=env)
        timings["wheel -v"] = time.monotonic() - t
        assert status == 0, f"pip wheel -v: exit {status}\n{tail(wheel, 60)}"
        yield Installed(root, steps, wheel)


# --- the tests -------------------------------------------------------------------------------------

def test_pip_warns_of_nothing_deprecated(installed: Installed) -> None:
    pip = installed.step("/opt/authmilter/venv/bin/pip install")
    assert any(line.startswith("Successfully installed ") for line in pip.output), "\n".join(pip.output)
    for what, lines in (("pip install", pip.output), ("pip wheel -v", installed.wheel.splitlines())):
        deprecated = [line for line in lines if "deprecat" in line.lower()]
        assert not deprecated, f"{what}:\n" + "\n".join(deprecated)


def test_the_user_exists_and_the_config_lints(installed: Installed) -> None:
    r = installed.root
    user = r.file("/etc/passwd").read_text()
    entry = re.search(r"^authmilter:[^:]*:\d+:\d+:[^:]*:([^:]*):(.*)$", user, re.M)
    assert entry, user
    assert entry.group(1) == "/var/lib/authmilter"
    assert entry.group(2) in ("/usr/sbin/nologin", "/sbin/nologin")
    assert re.search(r"^authmilter:", r.file("/etc/group").read_text(), re.M)
    lint = installed.step("runuser -u authmilter -- /opt/authmilter/venv/bin/authmilter policy lint")
    assert lint.output and lint.output[0].startswith("ok:"), lint.output
    assert r.owner("/etc/authmilter/authmilter.toml") == ("root", "authmilter", 0o640)


def test_the_service_runs_and_answers_an_mta(installed: Installed) -> None:
    r = installed.root
    status = "\n".join(installed.step("systemctl status").output)
    assert "active (running)" in status, status
    assert r.exec_booted("systemctl", "is-active", UNIT, check=False).stdout.strip() == "active"
    address = sample_socket()
    if isinstance(address, str):
        init = r.init_pid()
        assert init is not None
        address = f"/proc/{init}/root{address}"
    # The port was free before the container booted: what answers now is the container's milter.
    with MtaSession(address, timeout=20.0) as mta:
        assert mta.actions and mta.protocol
    # The block's last line: the journal after its `systemctl reload`.
    last = installed.steps[-1]
    assert last.command.startswith("journalctl"), last.command
    reloaded = "\n".join(last.output)
    assert re.search(r"reloaded \S+: generation 2\b", reloaded), reloaded
    assert r.exec_booted("systemctl", "is-active", UNIT, check=False).stdout.strip() == "active"


CLASH_CHECK = f"""
import sys
sys.path.insert(0, {CLONE!r})
from tests.e2e.postfix import PostfixClash, ensure_installed
try:
    print("no clash:", ensure_installed(timeout=300))
except PostfixClash as e:
    print("clash:", e)
"""


def test_on_a_sendmail_host_the_postfix_suite_skips_and_removes_nothing(installed: Installed) -> None:
    """Issue 16's `make test` on a Sendmail machine: installing Postfix would remove Sendmail, so
    the e2e suite's Postfix set-up (tests/e2e/postfix.py, which only needs python3) must give the
    reason it skips for, and leave Sendmail installed."""
    r = installed.root
    # No daemon started by the package's scripts: the container shares the host's port 25.
    policy = r.file("/usr/sbin/policy-rc.d")
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    r.exec_booted("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
                  "--no-install-recommends", "sendmail-bin", timeout=300)
    done = r.exec_booted("python3", "-c", CLASH_CHECK, timeout=360)
    assert done.stdout.startswith("clash: /usr/sbin/postfix is missing, and installing Postfix would "
                                  "remove sendmail-bin"), done.stdout + done.stderr
    assert "tests/e2e/test_sendmail.py needs no Postfix and still runs" in done.stdout
    status = r.exec_booted("dpkg-query", "-W", "-f=${Status} ${Package}\n", "sendmail-bin", "postfix",
                           check=False).stdout
    assert "install ok installed sendmail-bin" in status and "ok installed postfix" not in status, status
