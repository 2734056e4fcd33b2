"""Whether the service's account can read a file, asked by that account itself.

Key files are made and checked by root (genkey, testkey) but read by the service's own
account, so "root can read it" says nothing. Modes alone do not answer it either: ACLs,
supplementary groups and every directory on the path count. So the question is put to the
kernel by a child process that has become the account and tries to open each file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import select
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["SERVICE_USER", "AccessUnknown", "Account", "find_account", "service_account", "unreadable_as"]

# The account systemd/authmilter.service and the Debian package run the milter as.
SERVICE_USER = "authmilter"
# The child only opens files (non-blocking); this bounds a hung network file system.
_CHILD_SECONDS = 10.0


class AccessUnknown(Exception):
    """The question cannot be asked (e.g. not root); str() says why."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int

    @property
    def is_current(self) -> bool:
        return self.uid == os.geteuid()


def find_account(name: str) -> Account | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def service_account() -> Account | None:
    """The account to make and check keys for when none is named: the service's, for root."""
    if os.geteuid() != 0:
        return None
    return find_account(SERVICE_USER)


def _try_open(paths: Iterable[str]) -> dict[str, str]:
    failed: dict[str, str] = {}
    for path in paths:
        try:
            # O_NONBLOCK: a FIFO in a key's place must not hang the check.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as e:
            failed[path] = e.strerror or errno.errorcode.get(e.errno or 0, type(e).__name__)
        else:
            os.close(fd)
    return failed


def unreadable_as(account: Account, paths: Iterable[str]) -> dict[str, str]:
    """{path: reason} for each path `account` cannot open for reading; {} when it can read all.

    Raises AccessUnknown when this process can neither be nor become the account.
    """
    paths = list(paths)
    if account.is_current:
        return _try_open(paths)
    if os.geteuid() != 0:
        raise AccessUnknown(f"only root can check what {account.name} can read")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        code = 1
        try:
            os.close(read_end)
            os.setgroups(os.getgrouplist(account.name, account.gid))
            os.setgid(account.gid)
            os.setuid(account.uid)
            os.write(write_end, json.dumps(_try_open(paths)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        data = _read_child(read_end, pid)
    finally:
        os.close(read_end)
    try:
        result = json.loads(data) if data else None
    except ValueError:
        result = None
    if not isinstance(result, dict):
        raise AccessUnknown(f"could not become {account.name} to check")
    return {str(k): str(v) for k, v in result.items()}


def _read_child(fd: int, pid: int) -> bytes:
    chunks: list[bytes] = []
    deadline = time.monotonic() + _CHILD_SECONDS
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return b""  # no answer in time: not known, rather than half an answer
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return b"".join(chunks)
