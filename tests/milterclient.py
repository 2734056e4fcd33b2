"""The MTA side of the milter protocol for tests: a real socket, the PyPI `miltertest` codec.

It plays Postfix: macros at each stage, header values with their leading space (HDR_LEADSPC) and
LF between folded lines, the body in chunks, and it records every edit the milter asks for. It
offers no no-reply or SKIP protocol flags, which miltertest's reply handling does not understand.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from miltertest import MilterConnection
from miltertest import constants as C

ROOT = Path(__file__).resolve().parent.parent

NO_REPLY_FLAGS = (C.SMFIP_NR_HDR | C.SMFIP_NR_CONN | C.SMFIP_NR_HELO | C.SMFIP_NR_MAIL | C.SMFIP_NR_RCPT
                  | C.SMFIP_NR_DATA | C.SMFIP_NR_UNKN | C.SMFIP_NR_EOH | C.SMFIP_NR_BODY | C.SMFIP_SKIP)
OFFERED_PROTOCOL = C.SMFI_V6_PROT & ~NO_REPLY_FLAGS

_ACTIONS = {
    C.SMFIR_ACCEPT: "accept", C.SMFIR_CONTINUE: "accept", C.SMFIR_REJECT: "reject",
    C.SMFIR_TEMPFAIL: "tempfail", C.SMFIR_DISCARD: "discard", C.SMFIR_REPLYCODE: "reply",
}


@dataclass
class Outcome:
    action: str  # accept | reject | tempfail | discard
    reply: str | None = None  # "550 5.7.1 text" when the milter set one
    inserted: list[tuple[int, str, str]] = field(default_factory=list)
    added: list[tuple[str, str]] = field(default_factory=list)
    changed: list[tuple[int, str, str]] = field(default_factory=list)
    quarantine: str | None = None
    stage: str = "eom"

    def header(self, name: str) -> list[str]:
        return [v for _, n, v in self.inserted if n.lower() == name.lower()] + [
            v for n, v in self.added if n.lower() == name.lower()]


def passed_on(message: bytes, outcome: Outcome) -> bytes:
    """The message as the MTA sends it on after the milter's inserts (each at its index, so the
    last one inserted at 0 ends up on top); folded values get their CRLFs back."""
    fields, body = split_headers(message)
    lines = [n + b":" + v for n, v in fields]
    for index, name, value in outcome.inserted:
        lines.insert(index, name.encode() + b":" + value.replace("\n", "\r\n").encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def split_headers(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Header fields as (name, value-after-colon) with folds kept, and the body."""
    head, sep, body = message.partition(b"\r\n\r\n")
    if not sep:
        head, body = message, b""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            n, v = fields[-1]
            fields[-1] = (n, v + b"\r\n" + line)
        elif line:
            n, _, v = line.partition(b":")
            fields.append((n, v))
    return fields, body


class MtaSession:
    """One milter connection; call `message()` once or several times (RSET in between)."""

    def __init__(self, address: tuple[str, int] | str, *, client_ip: str = "192.0.2.1",
                 client_host: str = "mail.example.net", helo: str = "mail.example.net",
                 macros: dict[str, str] | None = None, timeout: float = 20.0) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.conn = MilterConnection(self.sock)
        self.actions, self.protocol = self.conn.optneg_mta(
            actions=C.SMFI_V6_ACTS, protocol=OFFERED_PROTOCOL)
        # Connect-stage macros, as Postfix's milter_connect_macros sends them ({daemon_addr} too,
        # when a test gives one).
        self.macros = {"j": "mx.test.example", "{daemon_name}": "smtpd"}
        self.macros.update(macros or {})
        self.conn.send_macro(C.SMFIC_CONNECT, **self.macros)
        fam = "6" if ":" in client_ip else "4"
        r = self.conn.send_ar(C.SMFIC_CONNECT, hostname=client_host, family=fam, port=25,
                              address=client_ip)
        self._expect_continue(r, "connect")
        r = self.conn.send_ar(C.SMFIC_HELO, helo=helo)
        self._expect_continue(r, "helo")
        self.early: Outcome | None = None
        self.refused: list[tuple[str, str]] = []

    @staticmethod
    def _expect_continue(r: tuple[str, dict[str, object]], stage: str) -> None:
        if r[0] != C.SMFIR_CONTINUE:
            raise AssertionError(f"{stage}: milter replied {r}")

    def _frame(self, cmd: str, payload: bytes) -> None:
        self.sock.sendall(struct.pack("!L", len(payload) + 1) + cmd.encode() + payload)

    def _send_raw_ar(self, cmd: str, payload: bytes) -> tuple[str, dict[str, object]]:
        self._frame(cmd, payload)
        r = self.conn.recv()
        assert r is not None
        return r

    def _early(self, r: tuple[str, dict[str, object]], stage: str) -> Outcome | None:
        if r[0] == C.SMFIR_CONTINUE:
            return None
        if r[0] == C.SMFIR_REPLYCODE:
            code = str(r[1]["smtpcode"])
            return Outcome("reject" if code.startswith("5") else "tempfail",
                           reply=f"{code} {r[1]['text']}", stage=stage)
        return Outcome(_ACTIONS.get(r[0], r[0]), stage=stage)

    def message(self, message: bytes, *, mail_from: str = "sender@example.org",
                rcpts: tuple[str, ...] = ("user@example.com",), queue_id: str = "ABC123",
                chunk: int = 65535, auth_user: str | None = None) -> Outcome:
        self.start(mail_from=mail_from, queue_id=queue_id, auth_user=auth_user)
        if self.early is not None:
            return self.early
        return self.finish(message, rcpts=rcpts, queue_id=queue_id, chunk=chunk)

    def start(self, *, mail_from: str = "sender@example.org", queue_id: str = "ABC123",
              auth_user: str | None = None) -> None:
        """MAIL FROM only; `early` holds a refusal, else call `finish`."""
        self.refused = []
        macros = {"i": queue_id}
        if auth_user:
            macros.update({"{auth_authen}": auth_user, "{auth_type}": "PLAIN"})
        self.conn.send_macro(C.SMFIC_MAIL, **macros)
        r = self.conn.send_ar(C.SMFIC_MAIL, args=[f"<{mail_from}>"])
        self.early = self._early(r, "mail")

    def finish(self, message: bytes, *, rcpts: tuple[str, ...] = ("user@example.com",),
               queue_id: str = "ABC123", chunk: int = 65535) -> Outcome:
        """RCPT TO (refused recipients are dropped, as the MTA would), DATA, the message, EOM."""
        accepted = 0
        refusal: Outcome | None = None
        for rcpt in rcpts:
            r = self.conn.send_ar(C.SMFIC_RCPT, args=[f"<{rcpt}>"])
            o = self._early(r, "rcpt")
            if o is None:
                accepted += 1
            else:
                refusal = refusal or o
                self.refused.append((rcpt, o.reply or o.action))
        if refusal is not None and accepted == 0:
            return refusal
        r = self.conn.send_ar(C.SMFIC_DATA)
        if (o := self._early(r, "data")) is not None:
            return o
        fields, body = split_headers(message)
        for name, value in fields:
            # Postfix hands folded values to milters with LF between the lines.
            payload = name + b"\0" + value.replace(b"\r\n", b"\n") + b"\0"
            r = self._send_raw_ar(C.SMFIC_HEADER, payload)
            if (o := self._early(r, "header")) is not None:
                return o
        r = self.conn.send_ar(C.SMFIC_EOH)
        if (o := self._early(r, "eoh")) is not None:
            return o
        for start in range(0, len(body), chunk):
            r = self._send_raw_ar(C.SMFIC_BODY, body[start:start + chunk])
            if (o := self._early(r, "body")) is not None:
                return o
        self.conn.send_macro(C.SMFIC_BODYEOB, **{"i": queue_id})
        outcome = Outcome("accept")
        for cmd, args in self.conn.send_eom():
            if cmd == C.SMFIR_INSHEADER:
                outcome.inserted.append((int(args["index"]), str(args["name"]), str(args["value"])))
            elif cmd == C.SMFIR_ADDHEADER:
                outcome.added.append((str(args["name"]), str(args["value"])))
            elif cmd == C.SMFIR_CHGHEADER:
                outcome.changed.append((int(args["index"]), str(args["name"]), str(args["value"])))
            elif cmd == C.SMFIR_QUARANTINE:
                outcome.quarantine = str(args["reason"])
            elif cmd == C.SMFIR_REPLYCODE:
                code = str(args["smtpcode"])
                outcome.action = "reject" if code.startswith("5") else "tempfail"
                outcome.reply = f"{code} {args['text']}"
            elif cmd in _ACTIONS and outcome.reply is None:
                outcome.action = _ACTIONS[cmd]
        return outcome

    def abort(self) -> None:
        """What the MTA sends on RSET: no reply is expected."""
        self._frame(C.SMFIC_ABORT, b"")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._frame(C.SMFIC_QUIT, b"")
        self.sock.close()

    def __enter__(self) -> MtaSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MilterProcess:
    """A real `authmilter serve` process with its own config directory."""

    def __init__(self, workdir: Path, *, dns_port: int, authserv_id: str = "mx.test.example",
                 extra: str = "", socket_spec: str | None = None, port: int | None = None) -> None:
        self.workdir = workdir
        # A given port lets a restarted milter take over where the MTA is configured to look.
        self.port = port or free_port()
        self.socket_spec = socket_spec or f"inet:{self.port}@127.0.0.1"
        self.config = workdir / "authmilter.toml"
        self.config.write_text(
            f'socket = "{self.socket_spec}"\n'
            f'authserv_id = "{authserv_id}"\n'
            'log_level = "debug"\n'
            # A test that names no policy wants none (every message accepted), not the shipped
            # default that a config without `policy` gets.
            + ("" if re.search(r"^policy\s*=", extra, re.M) else "policy = []\n")
            + f"{extra}\n"
            # Each milter records its own history: nothing goes to /var/lib on the test host.
            # Before [dns], which stays last: some tests append keys to it.
            + ("" if "[history]" in extra else f'[history]\npath = "{workdir / "history.db"}"\n')
            + "[dns]\n"
            'nameservers = ["127.0.0.1"]\n'
            f"port = {dns_port}\n"
            "timeout = 1.0\n"
        )
        self.history = workdir / "history.db"
        self.logfile = workdir / "authmilter.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int] | str:
        if self.socket_spec.startswith("unix:"):
            return self.socket_spec[5:]
        return ("127.0.0.1", self.port)

    def start(self, wait: float = 15.0, env: dict[str, str] | None = None) -> MilterProcess:
        self._log = open(self.logfile, "ab")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "authmilter", "serve", "-c", str(self.config)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"authmilter exited {self.proc.returncode}:\n{self.log()}")
            try:
                MtaSession(self.address, timeout=2).close()
                return self
            except (OSError, AssertionError):
                time.sleep(0.1)
        raise RuntimeError(f"authmilter did not listen within {wait}s:\n{self.log()}")

    def session(self, **kw: object) -> MtaSession:
        return MtaSession(self.address, **kw)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, wait: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode
