"""A real Debian redis-server (and redis-sentinel) for tests, on 127.0.0.1, in a temp dir.

    with RedisServer() as server:
        store = RedisStore(server.url)

Each server listens on a free high port, keeps nothing on disk beyond its temp dir (no RDB, no
AOF), is stopped (SIGTERM, then SIGKILL) by `stop()`, by leaving the `with`, or at interpreter
exit at the latest. Every wait is bounded. `ensure_installed()` apt-installs the packages
(redis-server, redis-sentinel) when the binaries are missing, like tests/debian.py does for the
other real peers; RedisUnavailable carries apt's words when that cannot be done.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.debian import apt_install, tail

REDIS_SERVER = Path("/usr/bin/redis-server")
REDIS_SENTINEL = Path("/usr/bin/redis-sentinel")
START_TIMEOUT = 10.0  # until the server answers PING
STOP_TIMEOUT = 5.0  # after SIGTERM, before SIGKILL
START_ATTEMPTS = 5  # another process may take the free port between our probe and the bind


class RedisUnavailable(Exception):
    """redis-server (or redis-sentinel) is missing and cannot be installed, or does not start."""


def ensure_installed(sentinel: bool = False, timeout: float = 300.0) -> str:
    """Install redis-server (and redis-sentinel) when missing; returns what was done."""
    wanted = [("redis-server", REDIS_SERVER)] + ([("redis-sentinel", REDIS_SENTINEL)] if sentinel else [])
    missing = [package for package, binary in wanted if not binary.exists()]
    if not missing:
        return "already installed"
    if os.geteuid() != 0:
        raise RedisUnavailable(f"{' '.join(missing)} not installed and not root to apt-get install it")
    apt_install(missing, error=RedisUnavailable, timeout=timeout)
    for package, binary in wanted:
        if not binary.exists():
            raise RedisUnavailable(f"apt-get install {package} succeeded but {binary} is missing")
    # Debian's postinst may start the system service; it listens on 6379, which we never use.
    return f"installed {' '.join(missing)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ping(port: int, timeout: float = 0.5) -> bool:
    """True when something on 127.0.0.1:port answers a RESP PING with +PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class _Process:
    binary = REDIS_SERVER
    name = "redis-server"

    def __init__(self) -> None:
        self.port = 0
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "server.log"

    def config(self) -> str:
        return (f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n"
                f"dir {self.dir}\nlogfile {self.log}\n")

    def start(self, port: int = 0) -> Self:
        """On a free port, or on `port` (to bring a stopped server back where clients look)."""
        problem = ""
        for _ in range(1 if port else START_ATTEMPTS):
            self.port = port or free_port()
            conf = self.dir / f"{self.name}.conf"
            conf.write_text(self.config())
            self.process = subprocess.Popen([str(self.binary), str(conf)], stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            atexit.register(self.stop)
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self.process.poll() is None:
                if ping(self.port):
                    return self
                time.sleep(0.05)
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            self.stop(keep_dir=True)
            problem = tail(log)
            if "Address already in use" not in log:
                break
        raise RedisUnavailable(f"{self.name} did not start on 127.0.0.1:{self.port}:\n{problem}")

    def stop(self, keep_dir: bool = False) -> None:
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
            if process.stderr is not None:
                process.stderr.close()
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class RedisServer(_Process):
    """One redis-server: no persistence, `maxmemory` settable for "full" tests."""

    def config(self) -> str:
        return super().config() + 'save ""\nappendonly no\nmaxmemory-policy noeviction\n'

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args: str) -> bytes:
        """One command through redis-cli (so the tests' view does not depend on redis-py)."""
        done = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args],
                              capture_output=True, timeout=STOP_TIMEOUT, check=True)
        return done.stdout


class RedisSentinel(_Process):
    """One redis-sentinel watching `master` under the service name `service` (quorum 1)."""

    binary = REDIS_SENTINEL
    name = "redis-sentinel"

    def __init__(self, master: RedisServer, service: str = "authmilter") -> None:
        super().__init__()
        self.master, self.service = master, service

    def config(self) -> str:
        # Sentinel rewrites its config file; it lives in our temp dir.
        return (super().config() + f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1\n"
                f"sentinel down-after-milliseconds {self.service} 1000\n")
