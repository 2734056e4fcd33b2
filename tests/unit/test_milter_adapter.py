"""The pymilter adapter's callbacks without a socket: what a failing no-reply callback leads to.

The wire behaviour (flags negotiated, results the same with and without them) is tested against a
real `authmilter serve` in tests/integration/test_milter.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import Milter
import pytest

from authmilter.app import AppHolder, build_app
from authmilter.files.config import load_config
from authmilter.milter.adapter import AuthMilter


class FakeContext:
    """libmilter's per-connection context, reduced to what these callbacks use."""

    def __init__(self) -> None:
        self.replies: list[tuple[Any, ...]] = []
        self.inserted: list[tuple[Any, ...]] = []

    def setreply(self, *args: Any) -> None:
        self.replies.append(args)

    def getsymval(self, name: str) -> None:
        return None

    def addheader(self, *args: Any) -> None:
        self.inserted.append(args)

    def chgheader(self, *args: Any) -> None:
        pass


@pytest.fixture
def connection(tmp_path: Path) -> tuple[AuthMilter, FakeContext]:
    config = tmp_path / "authmilter.toml"
    config.write_text('socket = "inet:8891@127.0.0.1"\nauthserv_id = "mx.test.example"\npolicy = []\n'
                      '[dns]\nnameservers = ["127.0.0.1"]\nport = 9\ntimeout = 0.2\n')
    AuthMilter.holder = AppHolder(build_app(load_config(str(config))))
    m = AuthMilter()
    ctx = FakeContext()
    m._ctx = ctx
    m._actions = Milter.ADDHDRS | Milter.CHGHDRS | Milter.QUARANTINE
    m.connect("client.example", 0, None)  # not AF_INET: no client IP, so no SPF lookups either
    return m, ctx


def _header_that_fails(m: AuthMilter) -> Any:
    m.raw_headers = None  # type: ignore[assignment]  # append() now raises inside the callback
    return m.header("Subject", b" hi")


def test_failing_header_callback_with_no_reply_is_tempfailed_at_end_of_message(
        connection: tuple[AuthMilter, FakeContext]) -> None:
    m, ctx = connection
    m._protocol = Milter.P_NR_HDR
    m.envfrom("<a@example.org>")
    assert _header_that_fails(m) == Milter.NOREPLY  # nothing may go on the wire
    m.raw_headers = []
    assert m.body(b"text\r\n") == Milter.CONTINUE  # NR_BODY not negotiated here
    assert m.eom() == Milter.TEMPFAIL
    assert ctx.replies == [("451", "4.7.1", ctx.replies[0][2])]
    assert ctx.inserted == []  # no Authentication-Results on a message we did not evaluate

    # The next message on the connection is judged on its own.
    ctx.replies.clear()
    m.envfrom("<a@example.org>")
    m.header("From", b" a@example.org")
    assert m.eom() == Milter.ACCEPT
    assert [name for name, *_ in ctx.inserted] == ["Authentication-Results"]


def test_without_no_reply_the_failing_callback_answers_continue(
        connection: tuple[AuthMilter, FakeContext]) -> None:
    m, _ = connection
    m.envfrom("<a@example.org>")
    assert _header_that_fails(m) == Milter.CONTINUE
    assert m.eom() == Milter.TEMPFAIL


def test_abort_forgets_a_failure(connection: tuple[AuthMilter, FakeContext]) -> None:
    m, _ = connection
    m.envfrom("<a@example.org>")
    _header_that_fails(m)
    m.abort()
    m.envfrom("<a@example.org>")
    m.header("From", b" a@example.org")
    assert m.eom() == Milter.ACCEPT
