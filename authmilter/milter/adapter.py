"""The pymilter adapter: libmilter callbacks in, a `Transaction` out; a `Verdict` in, milter actions out.

Rules this module keeps:
1. No decision is made here. Callbacks only collect; `eom` asks `App.evaluate` and applies what it
   says. Anything that decides belongs in core/, where it is tested without sockets.
2. Nothing escapes into libmilter. Every callback is guarded: an exception is logged with the queue
   id and the message gets the fail-safe reply (tempfail), never a silent accept.
3. Header bytes are kept exactly: values arrive as bytes (8-bit intact) with their leading white
   space (SMFIP_HDR_LEADSPC), and folding is restored as CRLF, so simple canonicalization verifies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import io
import logging
import os
import re
import resource
import signal
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar, cast

import Milter
import milter

from authmilter.app import App, AppHolder
from authmilter.core.decision import Stage
from authmilter.core.evaluate import NOTHING_KNOWN, TEMPFAIL_REPLY
from authmilter.core.history import record_for
from authmilter.core.model import Action, EarlyResults, Header, Transaction, Verdict
from authmilter.milter.sdnotify import notify
from authmilter.observe.logs import setup_logging
from authmilter.observe.metrics import serve_metrics
from authmilter.observe.verdicts import log_fields

log = logging.getLogger("authmilter.milter")

_F = TypeVar("_F", bound=Callable[..., Any])
_LINE_BREAK = re.compile(rb"\r?\n")
# libmilter separates folded lines with LF; Postfix and Sendmail turn it back into CRLF.
_MTA_FOLD = re.compile(r"\r?\n")


def _guarded(func: _F) -> _F:
    @functools.wraps(func)
    def wrapper(self: AuthMilter, *args: Any) -> Any:
        try:
            return func(self, *args)
        except Exception:
            log.exception("qid=%s callback=%s failed; replying tempfail", self.queue_id or "-",
                          func.__name__)
            try:
                self.setreply(TEMPFAIL_REPLY.code, TEMPFAIL_REPLY.status, TEMPFAIL_REPLY.text)
            except Exception:
                log.debug("setreply failed in error path", exc_info=True)
            return Milter.TEMPFAIL

    return cast(_F, wrapper)


def _no_reply(flag: int) -> Callable[[Callable[..., None]], Callable[..., Any]]:
    """A callback that never refuses, so it need not answer when the MTA agrees (SMFIP_NR_*).

    Every reply saved is a write and a wake-up on both sides, for each header of each message. An
    exception cannot refuse anything here any more: it is logged, remembered, and end-of-message
    gives the fail-safe reply. pymilter reads `milter_protocol` to offer the flag in negotiation;
    MTAs that do not support it (older Sendmail, test clients) get CONTINUE as before.
    """

    def decorate(func: Callable[..., None]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(self: AuthMilter, *args: Any) -> Any:
            try:
                func(self, *args)
            except Exception:
                log.exception("qid=%s callback=%s failed; the message will be tempfailed",
                              self.queue_id or "-", func.__name__)
                self.deferred_failure = f"callback {func.__name__} failed"
            return Milter.NOREPLY if self._protocol & flag else Milter.CONTINUE

        setattr(wrapper, "milter_protocol", flag)  # noqa: B010 - the attribute pymilter looks up
        return wrapper

    return decorate


def _raw_bytes(func: _F) -> _F:
    """pymilter's @decode("bytes"), typed: the callback gets the MTA's bytes, 8-bit intact."""
    setattr(func, "error_strategy", "bytes")  # noqa: B010 - the attribute pymilter looks up
    return func


def _strip_angle(addr: str) -> str:
    addr = addr.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1]
    return addr


def _text(value: str | bytes) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


class Admission:
    """The per-process count of MTA connections, and the connection limit over it.

    A connection counts from option negotiation (the first callback libmilter makes for it) to
    close. One beyond `max_connections` is not counted; it gets a tempfail at connect. Logging is
    per burst: one warning when refusing starts, one line with the number refused once the count
    has fallen a tenth below the limit, so a service held at its limit does not log per connection.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open = 0
        self._refusing = False
        self._refused = 0

    def admit(self, limit: int) -> bool:
        with self._lock:
            if self.open >= limit:
                self._refused += 1
                first = not self._refusing
                self._refusing = True
                admitted = False
            else:
                self.open += 1
                first = admitted = True
            open_now = self.open
        if not admitted and first:
            log.warning("connection limit reached: %d MTA connections open (max_connections = %d); "
                        "new connections get a tempfail at connect until some close", open_now, limit)
        return admitted

    def release(self, limit: int) -> None:
        with self._lock:
            self.open -= 1
            ended = 0
            if self._refusing and self.open <= limit - max(1, limit // 10):
                ended, self._refusing, self._refused = self._refused, False, 0
            open_now = self.open
        if ended:
            log.warning("connection limit: accepting connections again (%d open); %d refused meanwhile",
                        open_now, ended)


@Milter.header_leading_space
class AuthMilter(Milter.Base):  # type: ignore[misc]
    """One instance per SMTP connection; several messages may pass through it."""

    holder: AppHolder  # set by `prepare` before libmilter starts calling
    # Admitted connections, for the limit and so that a stopping worker can let them finish.
    admission = Admission()

    @classmethod
    def open_connections(cls) -> int:
        return cls.admission.open

    def __init__(self) -> None:
        self._counted = False
        self._refused = False  # over max_connections: every transaction on it is tempfailed
        self._admission_done = False
        self.client_ip: str | None = None
        self.client_host: str | None = None
        self.helo = ""
        self.queue_id = ""
        self._leadspc = True
        self._protocol = 0
        self.deferred_failure = ""  # set by a no-reply callback that failed; eom tempfails
        self.spool: io.BufferedRandom | None = None  # the body, once larger than [spool] above
        self.app: App = self.holder.current
        # What is already known: iprev and the HELO facts for the whole connection (the client's
        # address does not change, so neither do its PTR names), SPF for one transaction only.
        self.known: EarlyResults = NOTHING_KNOWN
        self._reset()

    def _reset(self) -> None:
        self.mail_from = ""
        self.rcpts: list[str] = []
        # As libmilter hands them over: converted to `Header`s once, at end of message.
        self.raw_headers: list[tuple[str | bytes, bytes]] = []
        self._header_fields = 0
        self._header_bytes = 0
        self._drop_spool()
        self.body_chunks: list[bytes] = []
        self.body_size = 0
        self.queue_id = ""
        self.macros: dict[str, str] = {}
        # SPF, the DNS lists (they ask about MAIL FROM), greylisting and rate counts belong to one
        # transaction; iprev and HELO stay for the connection.
        self.known = replace(self.known, spf=None, dnslists=None, greylist=(), rates=())

    def _macro(self, name: str) -> str:
        value = self.getsymval(name)
        return _text(value) if value else ""

    def _envelope(self, rcpt_list: list[str] | None = None) -> Transaction:
        return Transaction(
            client_ip=self.client_ip, helo=self.helo, mail_from=self.mail_from,
            rcpts=tuple(self.rcpts if rcpt_list is None else rcpt_list),
            client_host=self.client_host, queue_id=self.queue_id, macros=dict(self.macros),
        )

    def _early(self, stage: Stage, rcpt: str | None = None) -> Verdict | None:
        """A refusal at MAIL FROM or RCPT TO, or None; keeps what it worked out for later."""
        if self.app.policy.earliest_stage > stage and not self.app.policy.counts_rates:
            return None  # no rule can act yet: skip building the envelope for nothing
        envelope = self._envelope(None if rcpt is None else [rcpt])
        verdict, self.known = self.app.early(envelope, stage, rcpt=rcpt, known=self.known,
                                             mta_j=self.macros.get("j"))
        return verdict

    def _refuse(self, verdict: Verdict, what: str) -> Any:
        envelope = self._envelope()
        self._log_verdict(verdict, envelope, None)
        if what == "mail":
            # The whole transaction ends here, so this is its record. A refused recipient is not:
            # the message may still come, for the others, and be recorded then.
            self._record(envelope, verdict)
        if verdict.reply:
            self.setreply(verdict.reply.code, verdict.reply.status, verdict.reply.text)
        return Milter.TEMPFAIL if verdict.action is Action.TEMPFAIL else Milter.REJECT

    # Negotiation: we must be able to insert and delete headers, or a forged A-R would pass.
    def negotiate(self, opts: list[int]) -> Any:
        actions, protocol = opts[0], opts[1]
        needed = Milter.ADDHDRS | Milter.CHGHDRS
        if actions & needed != needed:
            log.error("MTA does not offer header insert/change (actions=0x%x); refusing", actions)
            return Milter.REJECT
        result = super().negotiate(opts)
        if not self._admit():
            # The refusal is the reply to connect, so the MTA must not be told it gets none.
            opts[1] &= ~Milter.P_NR_CONN
            self._protocol = opts[1]
        self._leadspc = bool(protocol & Milter.P_HDR_LEADSPC)
        if not self._leadspc:
            log.warning("MTA does not pass header leading space; simple canonicalization may fail")
        # Which replies the MTA spares us (SMFIP_NR_*) is the first thing to look at when a
        # milter's cost per message differs between MTAs.
        log.debug("negotiated actions=0x%x protocol=0x%x (offered 0x%x)", actions, self._protocol, protocol)
        return result

    def _admit(self) -> bool:
        """Count this connection against max_connections, once; False when it is over the limit."""
        if not self._admission_done:
            self._admission_done = True
            self._counted = AuthMilter.admission.admit(self.holder.current.config.max_connections)
            self._refused = not self._counted
        return not self._refused

    def connect(self, hostname: str, family: int, hostaddr: Any) -> Any:
        try:
            # Negotiation admits; an MTA too old to negotiate is admitted here instead.
            admitted = self._admit()
            self.client_host = hostname
            if family in (socket.AF_INET, socket.AF_INET6) and hostaddr:
                self.client_ip = str(hostaddr[0])
            else:
                self.client_ip = None
        except Exception:
            log.exception("callback=connect failed; the messages will be tempfailed")
            self.deferred_failure = "callback connect failed"
            admitted = True
        if not admitted:
            # No reply text: libmilter's API rules out smfi_setreply at connect. The MTA answers
            # the SMTP client with a 4xx of its own, and the client comes back later.
            return Milter.TEMPFAIL
        return Milter.NOREPLY if self._protocol & Milter.P_NR_CONN else Milter.CONTINUE

    # pymilter offers the MTA "no reply at connect" for a connect callback marked this way; the
    # connections over the limit take it back in `negotiate`.
    setattr(connect, "milter_protocol", Milter.P_NR_CONN)  # noqa: B010 - the attribute pymilter looks up

    @_no_reply(Milter.P_NR_HELO)
    def hello(self, hostname: str) -> None:
        self.helo = _text(hostname)
        # A second EHLO (after STARTTLS, or a client that changes its mind) may name another host.
        self.known = replace(self.known, helo=None)

    @_guarded
    @_raw_bytes
    def envfrom(self, mailfrom: str | bytes, *params: Any) -> Any:
        self._reset()  # a new MAIL FROM after RSET or a finished message starts a new transaction
        if self._refused:
            # An MTA that carries on after the tempfail at connect gets one for each message too.
            self.setreply(TEMPFAIL_REPLY.code, TEMPFAIL_REPLY.status, TEMPFAIL_REPLY.text)
            return Milter.TEMPFAIL
        # The rules in force now stay in force for this whole transaction, whatever a reload does.
        if self.holder.current is not self.app:
            # A reload may have renamed us (authserv_id), and the HELO facts compare with our names.
            self.known = replace(self.known, helo=None)
        self.app = self.holder.current
        self.mail_from = _strip_angle(_text(mailfrom))
        # {daemon_addr} (Postfix) and {if_addr} (Sendmail): the address the client connected to,
        # for the HELO check's "our own address".
        for name in ("{auth_authen}", "{daemon_name}", "j", "{daemon_addr}", "{if_addr}"):
            self.macros[name] = self._macro(name)
        self.queue_id = self._macro("i")
        verdict = self._early(Stage.MAIL)
        if verdict is not None:
            return self._refuse(verdict, "mail")
        return Milter.CONTINUE

    @_guarded
    @_raw_bytes
    def envrcpt(self, to: str | bytes, *params: Any) -> Any:
        rcpt = _strip_angle(_text(to))
        verdict = self._early(Stage.RCPT, rcpt)
        if verdict is not None:
            return self._refuse(verdict, "rcpt")  # this recipient only; the MTA keeps the others
        self.rcpts.append(rcpt)
        return Milter.CONTINUE

    @_no_reply(Milter.P_NR_HDR)
    @_raw_bytes
    def header(self, name: str | bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def header_capped(self, name: str | bytes, value: bytes) -> Any:
        """`header`, unless the header section has grown past max_header_fields or _bytes.

        Each field is kept until the end of the message, so without a cap one message could make
        the process take as much memory as the MTA lets through. Past a cap nothing more is kept
        and the message gets the fail-safe reply at its end, logged once. It is counted here,
        before `header` sees the field, so the cap holds whatever `header` does with it.
        """
        if not self.deferred_failure:
            self._header_fields += 1
            self._header_bytes += len(name) + len(value)
            config = self.app.config
            over = ""
            if self._header_fields > config.max_header_fields:
                over = f"more than max_header_fields = {config.max_header_fields} header fields"
            elif self._header_bytes > config.max_header_bytes:
                over = f"header section over max_header_bytes = {config.max_header_bytes} bytes"
            if not over:
                return self.header(name, value)
            self.deferred_failure = over
            self.raw_headers = []
        return Milter.NOREPLY if self._protocol & Milter.P_NR_HDR else Milter.CONTINUE

    @_no_reply(Milter.P_NR_BODY)
    def body(self, chunk: bytes) -> None:
        if self.deferred_failure:
            self.body_chunks = []  # the message will be tempfailed: keep nothing, log nothing more
            return
        if self.spool is not None:
            self.spool.write(chunk)
            return
        self.body_chunks.append(chunk)
        self.body_size += len(chunk)
        config = self.app.config
        if self.body_size > config.spool_above:
            # Unnamed (O_TMPFILE or unlinked at once): nothing is left behind, whatever happens.
            self.spool = tempfile.TemporaryFile(dir=config.spool_directory or None)  # noqa: SIM115 - kept open across callbacks
            for part in self.body_chunks:
                self.spool.write(part)
            self.body_chunks = []

    def _body(self) -> bytes:
        """The whole body as one bytes object, built with one copy of it in memory at most."""
        if self.spool is None:
            return b"".join(self.body_chunks)
        self.spool.flush()
        raw = self.spool.raw
        raw.seek(0)
        # FileIO.readall sizes its buffer from the file: one allocation, no chunks to join.
        body: bytes = raw.readall()
        return body

    def _drop_spool(self) -> None:
        spool, self.spool = self.spool, None
        if spool is not None:
            try:
                spool.close()
            except OSError:
                log.warning("qid=%s closing the body spool file failed", self.queue_id or "-", exc_info=True)

    def _headers(self) -> tuple[Header, ...]:
        """The header fields as DKIM needs them: bytes, folding as CRLF, leading space kept."""
        headers = []
        for name, value in self.raw_headers:
            raw_name = name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")
            if isinstance(value, str):
                value = value.encode("utf-8", "surrogateescape")
            if b"\n" in value:
                value = _LINE_BREAK.sub(b"\r\n", value)
            if not self._leadspc:
                value = b" " + value
            headers.append(Header(raw_name, value))
        return tuple(headers)

    @_guarded
    def eom(self) -> Any:
        self.queue_id = self._macro("i") or self.queue_id
        if self.deferred_failure:
            return self._fail_deferred()
        tx = Transaction(
            client_ip=self.client_ip,
            helo=self.helo,
            mail_from=self.mail_from,
            rcpts=tuple(self.rcpts),
            headers=self._headers(),
            body=self._body(),
            client_host=self.client_host,
            queue_id=self.queue_id,
            macros=dict(self.macros),
        )
        self.body_chunks = []
        self._drop_spool()
        started = time.monotonic()
        # No per-rule trace: the log line does not show it (`check --explain` does).
        verdict = self.app.evaluate(tx, mta_j=self._macro("j") or self.macros.get("j"), known=self.known,
                                    trace=False)
        if verdict.results is not None:
            # Kept for the connection's next messages, which then need no PTR lookup of their own.
            self.known = replace(self.known, iprev=verdict.results.iprev or self.known.iprev,
                                 helo=verdict.results.helo or self.known.helo)
        self._log_verdict(verdict, tx, time.monotonic() - started)
        self._record(tx, verdict)
        self._report_failure(tx, verdict)
        rc = self._apply(verdict)
        held = self._header_bytes + len(tx.body)
        del tx
        self._reset()
        _release_memory(held)
        return rc

    def _fail_deferred(self) -> Any:
        log.error("message", extra={"fields": {
            "qid": self.queue_id or "-", "client": self.client_ip or "-", "action": "tempfail",
            "reason": self.deferred_failure}})
        self.deferred_failure = ""
        held = self._held_bytes()
        self._reset()
        _release_memory(held)
        self.setreply(TEMPFAIL_REPLY.code, TEMPFAIL_REPLY.status, TEMPFAIL_REPLY.text)
        return Milter.TEMPFAIL

    @_guarded
    def abort(self) -> Any:
        if self._header_fields or self.body_size or self.spool is not None:
            # Data had started to arrive: the MTA gave up on the message (its client went away,
            # another milter refused it), or libmilter ended the connection over a broken packet
            # (truncated, over its size limit, an unknown command). Worth one line either way;
            # an abort before DATA is an everyday RSET.
            log.info("message", extra={"fields": {
                "qid": self.queue_id or "-", "client": self.client_ip or "-", "action": "abandoned",
                "headers": self._header_fields, "header_bytes": self._header_bytes,
                "body_bytes": self._spooled_size() if self.spool is not None else self.body_size}})
        else:
            log.debug("qid=%s transaction aborted before DATA", self.queue_id or "-")
        held = self._held_bytes()
        self._reset()
        self.deferred_failure = ""
        _release_memory(held)
        return Milter.CONTINUE

    def _spooled_size(self) -> int:
        assert self.spool is not None
        try:
            return self.spool.tell()
        except (OSError, ValueError):
            return self.body_size

    def _held_bytes(self) -> int:
        """Roughly what this transaction has held in memory, to decide whether to hand it back."""
        return self._header_bytes + (0 if self.spool is not None else self.body_size)

    @_guarded
    def close(self) -> Any:
        self._drop_spool()
        if self._counted:
            self._counted = False
            AuthMilter.admission.release(self.holder.current.config.max_connections)
        return Milter.CONTINUE

    def _log_verdict(self, verdict: Verdict, tx: Transaction, seconds: float | None) -> None:
        fields = log_fields(verdict, queue_id=tx.queue_id, client_ip=tx.client_ip, helo=tx.helo,
                            mail_from=tx.mail_from)
        if seconds is not None:
            fields["ms"] = f"{seconds * 1000:.1f}"
        if verdict.errors:
            fields["detail"] = verdict.errors[-1].strip().splitlines()[-1]
            log.error("message", extra={"fields": fields})
            log.debug("%s", verdict.errors[-1])
        else:
            log.info("message", extra={"fields": fields})
        if self.app.metrics is not None:
            self.app.metrics.observe_verdict(verdict, seconds)

    def _record(self, tx: Transaction, verdict: Verdict) -> None:
        writer = self.app.history
        if writer is None:
            return
        try:
            record = record_for(tx, verdict, time.time())
        except Exception:
            log.exception("qid=%s history record not built", tx.queue_id or "-")
            return
        if record is not None:
            writer.submit(record)

    def _report_failure(self, tx: Transaction, verdict: Verdict) -> None:
        sender = self.app.failure_reports
        if sender is not None and verdict.results is not None:
            sender.offer(tx, verdict)

    def _apply(self, verdict: Verdict) -> Any:
        if verdict.action is Action.TEMPFAIL or verdict.action is Action.REJECT:
            if verdict.reply:
                self.setreply(verdict.reply.code, verdict.reply.status, verdict.reply.text)
            return Milter.TEMPFAIL if verdict.action is Action.TEMPFAIL else Milter.REJECT
        # Deleting from the highest occurrence down keeps the lower indices valid.
        for d in sorted(verdict.header_deletes, key=lambda d: -d.occurrence):
            self.chgheader(d.name, d.occurrence, None)
        for ins in verdict.header_inserts:
            value = _MTA_FOLD.sub("\n", ins.value)
            # With HDR_LEADSPC negotiated the MTA writes our value verbatim after the colon, so
            # the space that every other field has must be part of it.
            self.addheader(ins.name, " " + value if self._leadspc else value, ins.index)
        if verdict.action is Action.DISCARD:
            return Milter.DISCARD
        if verdict.action is Action.QUARANTINE and verdict.quarantine_hold:
            self.quarantine(verdict.reason or "authmilter policy")
        return Milter.ACCEPT


# Messages that held at least this much get their memory handed back to the system afterwards.
_TRIM_ABOVE = 4 * 1024 * 1024


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim): nothing to do
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return cast(Callable[[int], int], trim)


_MALLOC_TRIM = _find_malloc_trim()


def _release_memory(held: int) -> None:
    """After a message that held megabytes, return glibc's free pages to the system.

    libmilter runs each command on whichever of its threads is free, and glibc gives threads
    arenas of their own that keep freed memory for reuse: a message with a 10 MB header section
    left the process 37 MB larger for good, 14 MB with this. malloc_trim(0) hands back the free
    pages of every arena; ctypes releases the GIL around it, and only large messages pay for it.
    """
    if held >= _TRIM_ABOVE and _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _register_callbacks() -> None:
    """Route libmilter's callbacks to `AuthMilter` instances (one per connection)."""
    priv: Callable[[Any], AuthMilter] = lambda ctx: ctx.getpriv()  # noqa: E731
    milter.set_connect_callback(Milter.connect_callback)
    milter.set_helo_callback(lambda ctx, host: priv(ctx).hello(host))
    milter.set_envfrom_callback(lambda ctx, *args: priv(ctx).envfrom_bytes(*args))
    milter.set_envrcpt_callback(lambda ctx, *args: priv(ctx).envrcpt_bytes(*args))
    milter.set_header_callback(lambda ctx, name, value: priv(ctx).header_capped(name, value))
    milter.set_body_callback(lambda ctx, chunk: priv(ctx).body(chunk))
    milter.set_eom_callback(lambda ctx: priv(ctx).eom())
    milter.set_abort_callback(lambda ctx: priv(ctx).abort())
    milter.set_close_callback(Milter.close_callback)
    milter.register("authmilter", data=lambda ctx: priv(ctx).data(),
                    unknown=lambda ctx, cmd: priv(ctx).unknown(cmd),
                    negotiate=Milter.negotiate_callback)


class ListenError(Exception):
    """The milter socket cannot be opened; str() says why, for the operator."""


def _check_unix_path(path: str) -> None:
    """Refuse to clobber what is not ours; clear a stale socket left by a crash."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not os.path.isdir(os.path.dirname(path) or "/"):
            raise ListenError(f"directory of {path} does not exist") from None
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"{path} exists and is not a socket; refusing to replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: a leftover from a crash
            return
    raise ListenError(f"another process is listening on {path}")


def _check_inet(spec: str) -> None:
    """Bind-test the port first: libmilter's own error does not say what is wrong."""
    kind, _, rest = spec.partition(":")
    port, _, host = rest.partition("@")
    family = socket.AF_INET6 if kind == "inet6" else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), int(port)))
        except OSError as e:
            why = "address already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            raise ListenError(f"cannot listen on {spec}: {why}") from None


def open_socket(spec: str, timeout: int) -> None:
    """Open the milter socket now, on the calling thread, so that failure is immediate and clear."""
    if spec.startswith(("unix:", "local:")):
        _check_unix_path(spec.split(":", 1)[1])
    else:
        _check_inet(spec)
    milter.setconn(spec)
    milter.settimeout(timeout)
    try:
        milter.opensocket(False)
    except milter.error as e:
        raise ListenError(f"cannot listen on {spec}: {e}") from None


# Descriptors one admitted connection can hold at once: its socket, a body spool file, a DNS query.
_FDS_PER_CONNECTION = 3
_FDS_SPARE = 64  # logs, the listening socket, libmilter's pipes, metrics


def raise_open_files_limit(max_connections: int) -> None:
    """Take the hard open-files limit as the soft one, and say so if even that is too few.

    The soft limit is often 1024 (systemd's default for services, a login shell's), kept low for
    programs that still use select(); nothing here does. Out of descriptors, libmilter's listener
    does not back off: accept() fails with EMFILE, it polls again at once, and no new connection is
    served until one closes. Silent connections that never reach a callback (and so are not
    counted against max_connections) each hold a descriptor until libmilter times them out.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = _FDS_PER_CONNECTION * max_connections + _FDS_SPARE
    target = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("open-files limit raised from %d to %d", soft, target)
            soft = target
        except (OSError, ValueError) as e:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, e)
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning("open-files limit %d is below the %d that max_connections = %d may need; raise "
                    "LimitNOFILE (systemd) or lower max_connections", soft, need, max_connections)


def prepare(holder: AppHolder) -> None:
    """What libmilter needs before its socket opens: our class, the actions we use, our callbacks."""
    raise_open_files_limit(holder.current.config.max_connections)
    AuthMilter.holder = holder
    Milter.factory = AuthMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.QUARANTINE)
    _register_callbacks()


def reload_app(holder: AppHolder) -> bool:
    """SIGHUP: re-read config, policies and signing; True if the new set replaced the old one."""
    old = holder.current.config
    if not holder.reload():
        return False
    new = holder.current.config
    logs = (new.log_level, new.log_format, new.log_target, new.syslog_socket)
    if logs != (old.log_level, old.log_format, old.log_target, old.syslog_socket):
        setup_logging(*logs)
    return True


def flush_history(holder: AppHolder, timeout: float = 3.0) -> None:
    """At shutdown: what is queued for the history is written, for a few seconds at most."""
    writer = holder.current.history
    if writer is not None and not writer.flush(timeout):
        log.warning("history: stopped with records still queued; they are lost")


def run(holder: AppHolder) -> int:
    """Serve until SIGTERM or SIGINT; SIGHUP reloads config and policies. Returns an exit status.

    libmilter's own signal thread treats SIGHUP as "stop". Running libmilter in a worker thread
    leaves the main thread, which the kernel prefers for process-directed signals, free to run
    Python's handlers: SIGHUP reloads, SIGTERM asks libmilter to stop and waits for it.
    """
    prepare(holder)
    app = holder.current
    config = app.config
    try:
        open_socket(config.socket, config.milter_timeout)
    except ListenError as e:
        log.error("%s", e)
        return 1
    if app.metrics is not None:
        serve_metrics(app.metrics, config.metrics_listen)

    failure: list[BaseException] = []
    wake = threading.Event()
    stop_requested = threading.Event()
    reload_requested = threading.Event()

    def serve() -> None:
        try:
            milter.main()
        except BaseException as e:  # reported by the main thread
            failure.append(e)
        finally:
            wake.set()

    def on_stop(signum: int, frame: object) -> None:
        stop_requested.set()
        wake.set()

    def on_hup(signum: int, frame: object) -> None:
        reload_requested.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    worker = threading.Thread(target=serve, name="libmilter", daemon=True)
    worker.start()
    log.info("listening on %s", config.socket)
    _notify("READY=1")
    while not stop_requested.is_set() and worker.is_alive():
        # A timeout, so that a signal arriving between the check and the wait is never lost.
        wake.wait(0.5)
        wake.clear()
        if reload_requested.is_set() and not stop_requested.is_set():
            reload_requested.clear()
            _notify("RELOADING=1")
            reload_app(holder)
            _notify("READY=1")
    _notify("STOPPING=1")
    if stop_requested.is_set():
        log.info("stopping: finishing connections in flight")
    if worker.is_alive():
        # smfi_stop() blocks until libmilter's listener wakes from poll() (up to ~5 s); asking
        # from a helper thread lets us wake it at once with a connection of our own.
        stopper = threading.Thread(target=milter.stop, name="milter-stop", daemon=True)
        stopper.start()
        # A wake-up that arrives before smfi_stop() has taken effect (a busy machine may not
        # have run the stopper yet) is served as a connection and the listener polls again, so
        # keep waking it until libmilter has stopped, a bounded number of times.
        deadline = time.monotonic() + 30
        while worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
            _wake_listener(config.socket)
            worker.join(0.5)
        stopper.join(1)
    flush_history(holder)
    if failure:
        log.error("milter stopped with an error: %s", failure[0])
        return 1
    return 0


def listening_socket_fds() -> set[int]:
    """This process's listening sockets: pymilter does not tell us the descriptor it opened."""
    found: set[int] = set()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            with socket.socket(fileno=os.dup(fd)) as s:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    found.add(fd)
        except OSError:
            continue  # closed meanwhile, or the descriptor of the directory listing itself
    return found


def open_shared_socket(spec: str, timeout: int) -> int:
    """`open_socket` for worker processes to share; returns the listening descriptor.

    libmilter keeps the socket in a static variable, and smfi_main() serves an already-open one
    instead of opening its own, so a child forked after this runs its accept loop on this socket.
    The socket is made non-blocking: every worker's listener sits in poll(), all of them wake for
    a new connection, and the ones that lose the race get EAGAIN from accept(), which libmilter
    takes as "poll again". A blocking accept() would park them until the next connection instead.
    (On Linux the accepted connections do not inherit O_NONBLOCK: libmilter's reads stay as usual.)
    """
    before = listening_socket_fds()
    open_socket(spec, timeout)
    new = listening_socket_fds() - before
    if len(new) != 1:
        raise ListenError(f"cannot find the socket libmilter opened on {spec} (found {sorted(new)})")
    fd = new.pop()
    os.set_blocking(fd, False)
    return fd


# Sent to this process's libmilter listener thread only, to end its poll() early; ignored otherwise.
KICK_SIGNAL = signal.SIGUSR1


class LibmilterThread:
    """libmilter's accept loop (smfi_main) in a thread of a worker process."""

    def __init__(self) -> None:
        self.failure: BaseException | None = None
        self._idle_w = -1
        self._returned = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="libmilter", daemon=True)

    def _serve(self) -> None:
        try:
            milter.main()
        except BaseException as e:  # reported by the main thread
            self.failure = e
        finally:
            self._returned.set()
            # smfi_main returns only on failure. The thread is then parked, not ended, until the
            # process exits: a signal sent to a thread that has ended could reach another thread
            # that took over its id.
            threading.Event().wait()

    def start(self) -> None:
        self._thread.start()

    def running(self) -> bool:
        return not self._returned.is_set()

    def stop_accepting(self, listen_fd: int) -> None:
        """Take no new connections in this process, and let the ones it has run to their end.

        smfi_stop() will not do: Debian's libmilter is built with _FFR_WORKERS_POOL, whose
        session-pool controller quits at the stop flag and drops every session in flight. So
        libmilter is not told at all. Instead this process's descriptor of the shared socket is
        replaced by a pipe that never becomes readable: the listener goes on polling it and
        accepts nothing, the other processes keep the socket, the sessions here carry on, and
        libmilter's clean-up, which would unlink a unix socket file, never runs.
        """
        idle_r, self._idle_w = os.pipe()  # the write end stays open, or the read end would report EOF
        os.dup2(idle_r, listen_fd)
        os.close(idle_r)
        if self.running() and self._thread.ident is not None:
            # A poll() already waiting on the socket ends with EINTR, and the next one waits on
            # the pipe. (libmilter blocks only HUP, TERM and INT in its threads.)
            signal.pthread_kill(self._thread.ident, KICK_SIGNAL)


def _wake_listener(spec: str) -> None:
    """A connection that makes libmilter's poll() return, so it sees the stop request now."""
    try:
        if spec.startswith(("unix:", "local:")):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1.0)
                s.connect(spec.split(":", 1)[1])
        else:
            kind, _, rest = spec.partition(":")
            port, _, host = rest.partition("@")
            default = "::1" if kind == "inet6" else "127.0.0.1"
            with socket.create_connection((host or default, int(port)), timeout=1.0):
                pass
    except OSError:
        pass  # then libmilter stops at its own pace


def _notify(state: str) -> None:
    try:
        notify(state)
    except OSError as e:
        log.warning("sd_notify %s failed: %s", state, e)
