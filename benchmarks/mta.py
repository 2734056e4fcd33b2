"""The MTA side of one milter conversation, lean enough to drive a milter at full speed.

It speaks like tests.milterclient.MtaSession (Postfix's macros, header values with their leading
white space and LF between folded lines, the body in 64 KB chunks) but, as Postfix does, offers
the no-reply flags (SMFIP_NR_*: commands the milter agrees not to answer are not waited for;
`no_reply=False` offers none) and honours the NO* flags (commands the milter does not want are not
sent). SKIP is never offered. It encodes each message's header and body packets once, ahead of
time, and decodes replies by hand: on a 2-core machine every millisecond the driver spends is one
the milter does not get.

Over TCP it sets TCP_NODELAY, and re-arms TCP_QUICKACK while reading the end-of-message replies:
libmilter writes each of those replies (insert header, change header, accept) in its own write()
without TCP_NODELAY, so Nagle on the milter's side waits for our ACK, and a delayed ACK on ours
would stall every message by ~40 ms. `quickack=False` shows that stall.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field

from miltertest import codec
from miltertest import constants as C

from tests.milterclient import OFFERED_PROTOCOL, split_headers

# What Postfix offers (milter protocol 6), less SKIP, which this client does not implement.
POSTFIX_PROTOCOL = C.SMFI_V6_PROT & ~C.SMFIP_SKIP

CHUNK = C.MILTER_CHUNK_SIZE  # the largest SMFIC_BODY a default libmilter takes
MTA_NAME = "mx.rcpt.bench"

# (command, "do not send" flag, "no reply" flag)
_STEPS = {
    C.SMFIC_CONNECT: (C.SMFIP_NOCONNECT, C.SMFIP_NR_CONN),
    C.SMFIC_HELO: (C.SMFIP_NOHELO, C.SMFIP_NR_HELO),
    C.SMFIC_MAIL: (C.SMFIP_NOMAIL, C.SMFIP_NR_MAIL),
    C.SMFIC_RCPT: (C.SMFIP_NORCPT, C.SMFIP_NR_RCPT),
    C.SMFIC_DATA: (C.SMFIP_NODATA, C.SMFIP_NR_DATA),
    C.SMFIC_HEADER: (C.SMFIP_NOHDRS, C.SMFIP_NR_HDR),
    C.SMFIC_EOH: (C.SMFIP_NOEOH, C.SMFIP_NR_EOH),
    C.SMFIC_BODY: (C.SMFIP_NOBODY, C.SMFIP_NR_BODY),
}
_FINAL = {C.SMFIR_ACCEPT: "accept", C.SMFIR_CONTINUE: "accept", C.SMFIR_REJECT: "reject",
          C.SMFIR_TEMPFAIL: "tempfail", C.SMFIR_DISCARD: "discard"}


class ProtocolError(Exception):
    pass


def _packet(cmd: str, payload: bytes = b"") -> bytes:
    return struct.pack("!Lc", len(payload) + 1, cmd.encode()) + payload


def _macros(stage: str, pairs: dict[str, str]) -> bytes:
    nameval = [x for kv in pairs.items() for x in kv]
    packet: bytes = codec.encode_msg(C.SMFIC_MACRO, cmdcode=stage, nameval=nameval)
    return packet


@dataclass
class Envelope:
    client_ip: str
    client_host: str
    helo: str
    mail_from: str
    rcpts: tuple[str, ...]
    auth_user: str = ""


@dataclass
class Prepared:
    """One message with its packets encoded once (they are the same every time it is sent)."""

    envelope: Envelope
    raw: bytes
    header_packets: list[bytes]  # header values as sent with HDR_LEADSPC (leading space kept)
    header_packets_stripped: list[bytes]  # without it, for a milter that does not ask for it
    body_packets: list[bytes]
    connect: bytes
    helo: bytes
    mail: bytes
    rcpts: list[bytes]


def prepare(raw: bytes, envelope: Envelope) -> Prepared:
    fields, body = split_headers(raw)
    lead, stripped = [], []
    for name, value in fields:
        # Postfix hands folded values to milters with LF between the lines.
        v = value.replace(b"\r\n", b"\n")
        lead.append(_packet(C.SMFIC_HEADER, name + b"\0" + v + b"\0"))
        stripped.append(_packet(C.SMFIC_HEADER, name + b"\0" + (v[1:] if v.startswith(b" ") else v) + b"\0"))
    e = envelope
    family = "6" if ":" in e.client_ip else "4"
    return Prepared(
        envelope=e, raw=raw, header_packets=lead, header_packets_stripped=stripped,
        body_packets=[_packet(C.SMFIC_BODY, body[i:i + CHUNK]) for i in range(0, len(body), CHUNK)],
        connect=codec.encode_msg(C.SMFIC_CONNECT, hostname=e.client_host, family=family, port=25,
                                 address=e.client_ip),
        helo=codec.encode_msg(C.SMFIC_HELO, helo=e.helo),
        mail=codec.encode_msg(C.SMFIC_MAIL, args=[f"<{e.mail_from}>"]),
        rcpts=[codec.encode_msg(C.SMFIC_RCPT, args=[f"<{r}>"]) for r in e.rcpts],
    )


@dataclass
class Outcome:
    action: str  # accept | quarantine | reject | tempfail | discard | error
    stage: str = "eom"
    reply: str = ""
    inserted: list[tuple[int, str, str]] = field(default_factory=list)
    added: list[tuple[str, str]] = field(default_factory=list)
    changed: list[tuple[int, str, str]] = field(default_factory=list)
    quarantine: str | None = None
    error: str = ""
    seconds: float = 0.0  # connect to final reply

    def headers(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for _, n, v in self.inserted if n.lower() == lname] + \
            [v for n, v in self.added if n.lower() == lname]


def _strings(payload: bytes, count: int) -> list[str]:
    parts = payload.split(b"\0")
    if len(parts) < count:
        raise ProtocolError(f"short reply payload {payload[:40]!r}")
    return [p.decode("utf-8", "surrogateescape") for p in parts[:count]]


class Conversation:
    """One connection, one message, as an MTA does it for every message it receives."""

    def __init__(self, address: tuple[str, int] | str, *, timeout: float = 30.0,
                 quickack: bool = True, no_reply: bool = True) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.tcp = family == socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if self.tcp:
            # Each command is one write already; without NODELAY a command that follows an
            # unacknowledged one (macros then the command) would wait for the milter's ACK.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self.quickack = quickack and self.tcp
        self._quick_now = False
        self.buf = b""
        self.sock.connect(address)
        self.protocol = 0
        self.actions = 0
        self.offered = POSTFIX_PROTOCOL if no_reply else OFFERED_PROTOCOL

    # -- wire ----------------------------------------------------------------------------------

    def _fill(self, need: int) -> None:
        # Bounded by the socket timeout: each recv either returns data or raises.
        while len(self.buf) < need:
            data = self.sock.recv(65536)
            if self._quick_now:
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            if not data:
                raise ProtocolError("milter closed the connection")
            self.buf += data

    def read(self) -> tuple[str, bytes]:
        """The next reply (command, payload); SMFIR_PROGRESS is skipped."""
        for _ in range(10_000):  # progress replies are rare; the bound only guards a runaway milter
            self._fill(5)
            (length,) = struct.unpack("!L", self.buf[:4])
            if length == 0 or length > 64 * 1024 * 1024:
                raise ProtocolError(f"bad reply length {length}")
            self._fill(4 + length)
            cmd, payload = chr(self.buf[4]), self.buf[5:4 + length]
            self.buf = self.buf[4 + length:]
            if cmd != C.SMFIR_PROGRESS:
                return cmd, payload
        raise ProtocolError("endless progress replies")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    # -- conversation ----------------------------------------------------------------------------

    def negotiate(self) -> None:
        self.send(codec.encode_optneg(C.SMFI_V6_ACTS, self.offered))
        cmd, payload = self.read()
        if cmd != C.SMFIC_OPTNEG or len(payload) < 12:
            raise ProtocolError(f"bad option negotiation reply {cmd!r}")
        # Anything after the three words is a macro list (SMFIR_SETSYMLIST style); not needed.
        _version, self.actions, self.protocol = struct.unpack("!LLL", payload[:12])

    def step(self, cmd: str, packet: bytes, macros: bytes = b"") -> tuple[str, bytes] | None:
        """Send one command (with its macros); its reply, or None if not sent or not replied to."""
        no, nr = _STEPS[cmd]
        if self.protocol & no:
            return None
        self.send(macros + packet)
        if self.protocol & nr:
            return None
        return self.read()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.send(_packet(C.SMFIC_QUIT))
        self.sock.close()


def _early(reply: tuple[str, bytes] | None, stage: str) -> Outcome | None:
    """None to go on; else what the milter decided before the end of the message."""
    if reply is None or reply[0] == C.SMFIR_CONTINUE:
        return None
    cmd, payload = reply
    if cmd == C.SMFIR_REPLYCODE:
        text = _strings(payload, 1)[0]
        return Outcome("reject" if text.startswith("5") else "tempfail", stage=stage, reply=text)
    if cmd in _FINAL:
        return Outcome(_FINAL[cmd], stage=stage)
    raise ProtocolError(f"{stage}: unexpected reply {cmd!r}")


def converse(address: tuple[str, int] | str, msg: Prepared, *, queue_id: str, timeout: float = 30.0,
             quickack: bool = True, no_reply: bool = True) -> Outcome:
    """The whole conversation for one message on a new connection; never raises."""
    started = time.perf_counter()
    conv: Conversation | None = None
    try:
        conv = Conversation(address, timeout=timeout, quickack=quickack, no_reply=no_reply)
        outcome = _converse(conv, msg, queue_id)
    except (OSError, ProtocolError, ValueError) as e:
        outcome = Outcome("error", error=f"{type(e).__name__}: {e}")
    outcome.seconds = time.perf_counter() - started
    if conv is not None:
        conv.close()
    return outcome


def _converse(conv: Conversation, msg: Prepared, queue_id: str) -> Outcome:
    e = msg.envelope
    conv.negotiate()
    connect_macros = _macros(C.SMFIC_CONNECT, {
        "j": MTA_NAME, "{daemon_name}": "smtpd", "{daemon_addr}": "127.0.0.1", "v": "Postfix 3.7.11",
        "_": f"{e.client_host} [{e.client_ip}]"})
    if (o := _early(conv.step(C.SMFIC_CONNECT, msg.connect, connect_macros), "connect")) is not None:
        return o
    if (o := _early(conv.step(C.SMFIC_HELO, msg.helo), "helo")) is not None:
        return o
    mail_macros = {"i": queue_id, "{mail_addr}": e.mail_from, "{mail_mailer}": "smtp",
                   "{mail_host}": e.mail_from.rpartition("@")[2]}
    if e.auth_user:
        mail_macros.update({"{auth_type}": "PLAIN", "{auth_authen}": e.auth_user})
    mail = conv.step(C.SMFIC_MAIL, msg.mail, _macros(C.SMFIC_MAIL, mail_macros))
    if (o := _early(mail, "mail")) is not None:
        return o
    accepted, refusal = 0, None
    for rcpt, packet in zip(e.rcpts, msg.rcpts, strict=True):
        macros = _macros(C.SMFIC_RCPT, {"{rcpt_addr}": rcpt, "{rcpt_mailer}": "local"})
        o = _early(conv.step(C.SMFIC_RCPT, packet, macros), "rcpt")
        if o is None:
            accepted += 1
        else:
            refusal = refusal or o  # that recipient only: the MTA goes on with the others
    if refusal is not None and accepted == 0:
        return refusal
    data_macros = _macros(C.SMFIC_DATA, {"i": queue_id})
    if (o := _early(conv.step(C.SMFIC_DATA, _packet(C.SMFIC_DATA), data_macros), "data")) is not None:
        return o
    packets = msg.header_packets if conv.protocol & C.SMFIP_HDR_LEADSPC else msg.header_packets_stripped
    for packet in packets:
        if (o := _early(conv.step(C.SMFIC_HEADER, packet), "header")) is not None:
            return o
    if (o := _early(conv.step(C.SMFIC_EOH, _packet(C.SMFIC_EOH)), "eoh")) is not None:
        return o
    for packet in msg.body_packets:
        if (o := _early(conv.step(C.SMFIC_BODY, packet), "body")) is not None:
            return o
    conv._quick_now = conv.quickack
    conv.send(_macros(C.SMFIC_BODYEOB, {"i": queue_id}) + _packet(C.SMFIC_BODYEOB))
    return _end_of_message(conv)


def _end_of_message(conv: Conversation) -> Outcome:
    outcome = Outcome("accept")
    for _ in range(10_000):  # a milter sends a handful of edits, then one final reply
        cmd, payload = conv.read()
        if cmd == C.SMFIR_INSHEADER:
            (index,) = struct.unpack("!L", payload[:4])
            name, value = _strings(payload[4:], 2)
            outcome.inserted.append((index, name, value))
        elif cmd == C.SMFIR_ADDHEADER:
            name, value = _strings(payload, 2)
            outcome.added.append((name, value))
        elif cmd == C.SMFIR_CHGHEADER:
            (index,) = struct.unpack("!L", payload[:4])
            name, value = _strings(payload[4:], 2)
            outcome.changed.append((index, name, value))
        elif cmd == C.SMFIR_QUARANTINE:
            outcome.quarantine = _strings(payload, 1)[0]
        elif cmd == C.SMFIR_REPLYCODE:
            outcome.reply = _strings(payload, 1)[0]
            outcome.action = "reject" if outcome.reply.startswith("5") else "tempfail"
            return outcome
        elif cmd in _FINAL:
            action = _FINAL[cmd]
            outcome.action = "quarantine" if action == "accept" and outcome.quarantine is not None else action
            return outcome
        else:
            # Body replacement, recipient or sender changes: not ours to expect; note and go on.
            outcome.error = f"unexpected end-of-message reply {cmd!r}"
    raise ProtocolError("no final reply at end of message")


def probe(address: tuple[str, int] | str, timeout: float = 2.0) -> bool:
    """True if a milter answers option negotiation at `address`."""
    try:
        conv = Conversation(address, timeout=timeout, quickack=False)
    except OSError:
        return False
    try:
        conv.negotiate()
        return True
    except (OSError, ProtocolError):
        return False
    finally:
        conv.close()
