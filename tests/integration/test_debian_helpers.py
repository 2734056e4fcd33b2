"""tests/debian.py: what apt would remove, asked of apt itself (a simulation: nothing changes)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.debian import apt_would_remove


def installed(package: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True,
                          timeout=30)
    return done.stdout.endswith("ok installed")


def known(package: str) -> bool:
    done = subprocess.run(["apt-cache", "show", package], capture_output=True, text=True, timeout=60)
    return done.returncode == 0 and bool(done.stdout.strip())


pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None, reason="not a Debian system")


def test_another_mta_is_seen_as_what_installing_would_remove() -> None:
    # The other way round from a Sendmail host: here Postfix is the MTA, Sendmail the newcomer.
    if not installed("postfix") or installed("sendmail-bin") or not known("sendmail-bin"):
        pytest.skip("needs Postfix installed and sendmail-bin known to apt but not installed")
    assert "postfix" in apt_would_remove(["sendmail-bin"])


def test_a_package_that_clashes_with_nothing_removes_nothing() -> None:
    if not known("m4"):
        pytest.skip("apt's package lists do not know m4")
    assert apt_would_remove(["m4"]) == []
