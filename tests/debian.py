"""Installing a Debian package that a test suite needs when the machine lacks it.

CI starts from a bare Debian 12, so the suites that drive real peers (Postfix, OpenDKIM) install
them on first use, as root, with apt's own words in the error when that cannot be done.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence

# What apt prints when its package lists do not know the package, or know a version the mirror
# no longer has: the only failures `apt-get update` can fix.
APT_STALE = ("Unable to locate package", "has no installation candidate", "404  Not Found")


def tail(text: str | bytes | None, lines: int = 30) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").splitlines()[-lines:])


def apt_install(packages: Sequence[str], *, error: type[Exception], timeout: float,
                options: Sequence[str] = ()) -> None:
    """`apt-get install` the packages, updating the package lists once if they are stale.

    Raises `error` with the end of apt's output when the install fails or takes longer than
    `timeout` seconds in all.
    """
    deadline = time.monotonic() + timeout
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    what = " ".join(packages)

    def apt(*args: str) -> subprocess.CompletedProcess[str]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise error(f"installing {what} took more than {timeout:.0f}s")
        try:
            # The lock timeout: a concurrent apt/dpkg (another test run) is waited for, not failed on.
            return subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=120", *args], env=env,
                                  capture_output=True, text=True, timeout=left, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise error(f"apt-get {' '.join(args)} did not finish within {timeout:.0f}s:\n"
                        f"{tail(e.stdout)}") from e

    install = ("install", "-y", "-q", "--no-install-recommends", *options, *packages)
    done = apt(*install)
    if done.returncode != 0 and any(s in done.stdout + done.stderr for s in APT_STALE):
        update = apt("update", "-q")
        if update.returncode != 0:
            raise error(f"apt-get update failed:\n{tail(update.stdout + update.stderr)}")
        done = apt(*install)
    if done.returncode != 0:
        raise error(f"apt-get install {what} failed (exit {done.returncode}):\n"
                    f"{tail(done.stdout + done.stderr)}")


def apt_would_remove(packages: Sequence[str], *, timeout: float = 120.0) -> list[str]:
    """The installed packages `apt-get install PACKAGES` would remove (e.g. another MTA), by
    apt's own simulation; [] when it would remove nothing or cannot say."""
    try:
        done = subprocess.run(["apt-get", "install", "-s", "-q", "--no-install-recommends", *packages],
                              env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.split()[1] for line in done.stdout.splitlines() if line.startswith("Remv ")]
