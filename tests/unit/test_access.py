"""authmilter.files.access: what another account can read, asked as that account."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from authmilter.files.access import AccessUnknown, Account, find_account, unreadable_as


@pytest.fixture
def open_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="authmilter-access-", dir="/var/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path)


def me() -> Account:
    account = find_account(pwd.getpwuid(os.geteuid()).pw_name)
    assert account is not None and account.is_current
    return account


def test_the_current_account_is_asked_directly(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("x")
    os.mkfifo(tmp_path / "fifo")  # opened non-blocking: no writer must not hang the check
    assert unreadable_as(me(), [str(tmp_path / "k"), str(tmp_path / "fifo")]) == {}
    gone = str(tmp_path / "gone")
    assert unreadable_as(me(), [gone]) == {gone: "No such file or directory"}


def test_no_such_account() -> None:
    assert find_account("no-such-account-here") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="becoming another account needs root")
def test_another_account_is_asked_by_becoming_it(open_dir: Path, tmp_path: Path) -> None:
    nobody = find_account("nobody")
    assert nobody is not None and not nobody.is_current
    mine, theirs, hidden = open_dir / "mine", open_dir / "theirs", tmp_path / "hidden"
    for path in (mine, theirs, hidden):
        path.write_text("x")
        path.chmod(0o600)
    os.chown(theirs, nobody.uid, nobody.gid)
    os.chown(hidden, nobody.uid, nobody.gid)  # its own file, behind root's 0700 directories
    assert unreadable_as(nobody, [str(mine), str(theirs), str(hidden)]) == {
        str(mine): "Permission denied", str(hidden): "Permission denied"}
    assert unreadable_as(nobody, [str(theirs)]) == {}


@pytest.mark.skipif(os.geteuid() == 0, reason="root may become anyone")
def test_only_root_can_ask_for_another_account() -> None:
    with pytest.raises(AccessUnknown, match="only root can check"):
        unreadable_as(Account("other", os.geteuid() + 1, os.getegid()), ["/etc/passwd"])
