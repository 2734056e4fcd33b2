"""A real Debian PostgreSQL server for tests, on 127.0.0.1, in a temp dir.

    with PostgresServer() as server:
        history = PostgresHistory(server.dsn)

Each server is a fresh cluster (initdb, trust authentication, superuser `authmilter`) listening
on a free high port, its unix socket in its temp dir; `stop()`, leaving the `with`, or interpreter
exit at the latest stops it (pg_ctl stop -m fast, then SIGKILL) and deletes the dir. PostgreSQL
refuses to run as root, so as root the cluster belongs to the `postgres` system user (the Debian
package creates it). Every wait is bounded. `ensure_installed()` apt-installs `postgresql` when
the binaries are missing, as tests/redisserver.py does for Redis.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.debian import apt_install, tail
from tests.redisserver import free_port

USER = "authmilter"  # the cluster's superuser, whoever runs the server
START_TIMEOUT = 30  # pg_ctl start -w -t: until the server accepts connections
STOP_TIMEOUT = 15
START_ATTEMPTS = 5  # another process may take the free port between our probe and the bind


class PostgresUnavailable(Exception):
    """PostgreSQL is missing and cannot be installed, or does not start."""


def bin_dir() -> Path | None:
    """The newest installed /usr/lib/postgresql/<version>/bin."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else None


def ensure_installed(timeout: float = 300.0) -> str:
    if bin_dir() is not None:
        return "already installed"
    if os.geteuid() != 0:
        raise PostgresUnavailable("postgresql not installed and not root to apt-get install it")
    apt_install(["postgresql"], error=PostgresUnavailable, timeout=timeout)
    if bin_dir() is None:
        raise PostgresUnavailable("apt-get install postgresql succeeded but no initdb was found")
    # Debian's postinst creates and starts its own cluster on 5432, which we never use.
    return "installed postgresql"


class PostgresServer:
    def __init__(self) -> None:
        self.port = 0
        self.dir = Path(tempfile.mkdtemp(prefix="pgserver-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._bin: Path | None = None
        self._running = False
        atexit.register(self.stop)

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres"

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, *argv: str) -> list[str]:
        if os.geteuid() != 0:
            return list(argv)
        return ["runuser", "-u", "postgres", "--", *argv]

    def _run(self, *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
        assert self._bin is not None
        command = self._as_owner(str(self._bin / argv[0]), *argv[1:])
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL, cwd=self.dir)
        except subprocess.TimeoutExpired as e:
            raise PostgresUnavailable(f"{argv[0]} did not finish within {timeout:.0f}s:\n"
                                      f"{tail(e.stdout)}") from e

    def _initdb(self) -> None:
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError as e:
                raise PostgresUnavailable("no `postgres` user to run the server as") from e
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        done = self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                         "--locale=C", "--no-sync", timeout=120)
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed:\n{tail(done.stdout + done.stderr)}")

    def start(self, port: int = 0) -> Self:
        """On a free port, or on `port` (to bring a stopped server back where clients look)."""
        ensure_installed()
        self._bin = bin_dir()
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        problem = ""
        for _ in range(1 if port else START_ATTEMPTS):
            self.port = port or free_port()
            # Durability is worth nothing to a test cluster and costs seconds.
            options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off")
            done = self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w",
                             "-t", str(START_TIMEOUT), "-o", options, timeout=START_TIMEOUT + 10)
            if done.returncode == 0:
                self._running = True
                return self
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            self._kill()
            problem = tail(done.stdout + done.stderr + log)
            if "could not bind" not in log and "already in use" not in log:
                break
        raise PostgresUnavailable(f"postgres did not start on 127.0.0.1:{self.port}:\n{problem}")

    def _kill(self) -> None:
        """SIGKILL the postmaster, if pg_ctl left one behind."""
        pidfile = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + STOP_TIMEOUT
            while time.monotonic() < deadline:
                os.kill(pid, 0)  # raises once it is gone
                time.sleep(0.05)

    def stop(self, keep_dir: bool = False) -> None:
        if self._running:
            self._running = False
            try:
                done = self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w",
                                 "-t", str(STOP_TIMEOUT), timeout=STOP_TIMEOUT + 5)
                if done.returncode != 0:
                    self._kill()
            except PostgresUnavailable:
                self._kill()
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._running

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
