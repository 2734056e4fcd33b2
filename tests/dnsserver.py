"""A real, small DNS server for tests: UDP and TCP on one port, answers from `ZoneData`.

    with DnsServer() as server:
        server.set_zone(zone_text("example.com", {"@": 'TXT "v=spf1 -all"'}))
        resolver = DnsResolver(["127.0.0.1"], port=server.port)

It answers authoritatively (AA) with NXDOMAIN/NODATA carrying the zone SOA, follows CNAMEs,
honours the client's EDNS payload size (512 without EDNS) and sets TC when an answer does not
fit in UDP, so clients exercise their TCP fallback. Faults and counters: see `tests.zoneresolver`;
on top of those this server has faults only a network server can show, set per name the same way:

    server.set_fault("_dmarc.example.org", "stall")             # never answered (like "timeout")
    server.set_fault("_dmarc.example.org", "stall", delay=3.0)  # the real answer, 3 s late
    server.set_fault("example.org", "truncate")                 # UDP: TC=1 and no records; TCP: real

And one for the whole server, to make lookups slow enough that asking them at once shows:

    server.set_delay_all(0.2)   # every answer (faults' answers too) 0.2 s late; None or 0: off

A name's own "stall" delay takes precedence over it; `clear_faults()` turns it off too.

A late answer does not hold up anything else: it waits in a queue while other queries are
answered. `released(name)` tells when late answers for a name went out (time.monotonic()).

As a process (for integration tests of the milter and for demos):

    python -m tests.dnsserver --zone FILE [--zone FILE ...] [--port N] [--host 127.0.0.1]
                              [--fault NAME=timeout|servfail|garbage|refused|truncate ...]
                              [--fault NAME=stall[:SECONDS] ...]

prints "READY <port>" once listening and serves until SIGTERM or SIGINT. A zone file without
$ORIGIN takes its origin from the file name, minus a ".zone" suffix.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import os
import re
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType, TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from tests.zoneresolver import ZoneData, name_key

POLL = 0.05  # how often the serving threads look at the stop flag, in seconds
JOIN_TIMEOUT = 2.0
BIND_ATTEMPTS = 20
SERVER_FAULTS = frozenset({"stall", "truncate"})
MAX_DELAY = 60.0  # a late answer later than this is a test bug, not a fault worth waiting for


class DnsServer(ZoneData):
    def __init__(self, zones: Iterable[str] = (), host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(zones)
        self.host = host
        self.port = port  # the real port once started
        self._stopping = threading.Event()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()
        self._server_lock = threading.Lock()
        self._server_faults: dict[str, tuple[str, float | None]] = {}
        # Late UDP answers: (due, sequence, reply, peer, name), sent by the serving thread.
        self._late: list[tuple[float, int, bytes, tuple[str, int], str]] = []
        self._late_seq = 0
        self._released: dict[str, list[float]] = {}
        self._delay_all = 0.0

    # -- faults only a server can show ---------------------------------------------------

    def set_fault(self, name: str, fault: str | None, *, delay: float | None = None) -> None:
        """As `ZoneData.set_fault`, plus "stall" (with an optional `delay`) and "truncate"."""
        if delay is not None and (fault != "stall" or not 0 < delay <= MAX_DELAY):
            raise ValueError(f"delay is for 'stall' only, between 0 and {MAX_DELAY} s")
        key = name_key(name)
        with self._server_lock:
            self._server_faults.pop(key, None)
            if fault in SERVER_FAULTS:
                self._server_faults[key] = (fault, delay)
        super().set_fault(name, None if fault in SERVER_FAULTS else fault)

    def set_delay_all(self, seconds: float | None) -> None:
        """Send every answer `seconds` late (at most MAX_DELAY); None or 0 answers at once again."""
        if seconds is not None and not 0 <= seconds <= MAX_DELAY:
            raise ValueError(f"delay must be between 0 and {MAX_DELAY} s")
        with self._server_lock:
            self._delay_all = seconds or 0.0

    def clear_faults(self) -> None:
        with self._server_lock:
            self._server_faults.clear()
            self._delay_all = 0.0
        super().clear_faults()

    def _server_fault(self, name: dns.name.Name) -> tuple[str, float | None] | None:
        with self._server_lock:
            return self._server_faults.get(name_key(name))

    def released(self, name: str) -> list[float]:
        """When late answers for `name` were sent, in time.monotonic() seconds."""
        with self._server_lock:
            return list(self._released.get(name_key(name), ()))

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> DnsServer:
        self._udp, self._tcp = self._bind()
        self.port = self._udp.getsockname()[1]
        self._spawn(self._serve, "dnsserver")
        return self

    def stop(self) -> None:
        """Stop serving and join every thread; returns within a couple of seconds at most."""
        self._stopping.set()
        deadline = time.monotonic() + JOIN_TIMEOUT
        with self._threads_lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for sock in (self._udp, self._tcp):
            if sock is not None:
                sock.close()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        # UDP first on the requested (often ephemeral) port, then TCP on the same number; an
        # ephemeral UDP port can be taken for TCP, so then we start over with a new one.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(BIND_ATTEMPTS):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                udp.bind((self.host, self.port))
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((self.host, udp.getsockname()[1]))
                tcp.listen(64)
            except OSError:
                udp.close()
                tcp.close()
                if self.port:
                    raise
                continue
            udp.setblocking(False)
            tcp.setblocking(False)
            return udp, tcp
        raise OSError(f"no port free for both UDP and TCP on {self.host}")

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._threads_lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    # -- transports ----------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._udp is not None and self._tcp is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._udp, selectors.EVENT_READ)
            selector.register(self._tcp, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select(self._next_wait()):
                    try:
                        if key.fileobj is self._udp:
                            self._on_datagram(self._udp)
                        else:
                            self._on_connection(self._tcp)
                    except OSError:
                        pass  # a client that went away, or a spurious wake-up
                self._send_late(self._udp)

    def _next_wait(self) -> float:
        with self._server_lock:
            if not self._late:
                return POLL
            return max(0.0, min(POLL, self._late[0][0] - time.monotonic()))

    def _send_late(self, udp: socket.socket) -> None:
        while True:
            with self._server_lock:
                if not self._late or self._late[0][0] > time.monotonic():
                    return
                _, _, reply, peer, name = heapq.heappop(self._late)
                self._released.setdefault(name, []).append(time.monotonic())
            # The client may be gone: a late answer often finds nobody waiting.
            with contextlib.suppress(OSError):
                udp.sendto(reply, peer)

    def _on_datagram(self, udp: socket.socket) -> None:
        wire, peer = udp.recvfrom(65535)
        reply, delay, name = self._reply(wire, "udp")
        if reply is None:
            return
        if delay:
            with self._server_lock:
                self._late_seq += 1
                heapq.heappush(self._late, (time.monotonic() + delay, self._late_seq, reply, peer, name))
            return
        udp.sendto(reply, peer)

    def _on_connection(self, tcp: socket.socket) -> None:
        conn, _ = tcp.accept()
        conn.settimeout(POLL)
        self._spawn(self._serve_stream, "dnsserver-tcp", conn)

    def _serve_stream(self, conn: socket.socket) -> None:
        # RFC 1035 4.2.2: each message is preceded by a two-octet length. Several may share one
        # connection; a client that stops mid-message just keeps this thread until stop().
        buffer = b""
        with conn:
            while not self._stopping.is_set():
                try:
                    chunk = conn.recv(65537)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while len(buffer) >= 2 and len(buffer) >= 2 + int.from_bytes(buffer[:2], "big"):
                    size = int.from_bytes(buffer[:2], "big")
                    wire, buffer = buffer[2 : 2 + size], buffer[2 + size :]
                    reply, delay, name = self._reply(wire, "tcp")
                    if reply is None:
                        continue
                    if delay:
                        # One thread per TCP connection: waiting here holds up only this one.
                        if self._stopping.wait(delay):
                            return
                        with self._server_lock:
                            self._released.setdefault(name, []).append(time.monotonic())
                    try:
                        conn.sendall(len(reply).to_bytes(2, "big") + reply)
                    except OSError:
                        return

    # -- DNS -----------------------------------------------------------------------------

    def _reply(self, wire: bytes, transport: str) -> tuple[bytes | None, float, str]:
        """What to send back for query `wire` (None: stay silent), how many seconds late, and
        the queried name. Never raises."""
        try:
            reply, delay, name = self._answer(wire, transport)
        except Exception:
            # A bug in here must not take the server down with it; show it and carry on.
            traceback.print_exc()
            return None, 0.0, ""
        if reply is not None and not delay:
            with self._server_lock:
                delay = self._delay_all
        return reply, delay, name

    def _answer(self, wire: bytes, transport: str) -> tuple[bytes | None, float, str]:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            # Not a DNS message: FORMERR when there is an ID to echo, silence otherwise.
            return (wire[:2] + b"\x80\x01" + bytes(8) if len(wire) >= 2 else None), 0.0, ""
        if query.flags & dns.flags.QR:
            return None, 0.0, ""  # never answer an answer
        response = dns.message.make_response(query)
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response.to_wire(), 0.0, ""
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire(), 0.0, ""
        question = query.question[0]
        name = name_key(question.name)
        self.note_query(question.name, dns.rdatatype.to_text(question.rdtype), transport)
        server_fault = self._server_fault(question.name)
        delay = 0.0
        if server_fault is not None:
            kind, late = server_fault
            if kind == "stall" and late is None:
                return None, 0.0, name
            if kind == "stall" and late is not None:
                delay = late
            elif kind == "truncate" and transport == "udp":
                # What a server sends for an answer too big for UDP (RFC 2181 9): the header
                # and question with TC set, nothing else, so the client must ask over TCP.
                response.flags |= dns.flags.TC | dns.flags.AA
                return response.to_wire(), 0.0, name
        return self._answer_zone(query, response, transport), delay, name

    def _answer_zone(self, query: dns.message.Message, response: dns.message.Message,
                     transport: str) -> bytes | None:
        question = query.question[0]
        fault = self.fault_for(question.name)
        if fault == "timeout":
            return None
        if fault == "garbage":
            # Our ID and a response flag, so the client takes it for its answer, then nonsense
            # claiming 65535 questions: it cannot parse as DNS.
            return query.id.to_bytes(2, "big") + b"\x81\x80\xff\xff" + b"not a DNS message"
        if fault == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif fault == "refused" or question.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
        else:
            found = self.lookup(question.name, question.rdtype)
            response.set_rcode(found.rcode)
            if found.rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                response.flags |= dns.flags.AA
            response.answer.extend(found.answer)
            response.authority.extend(found.authority)
        return _to_wire(response, _size_limit(query, transport))


def _size_limit(query: dns.message.Message, transport: str) -> int:
    if transport == "tcp":
        return 65535
    # RFC 6891 6.2.5: payload values below 512 are treated as 512.
    return max(512, query.payload) if query.edns >= 0 else 512


def _to_wire(response: dns.message.Message, limit: int) -> bytes:
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        # RFC 2181 9: when it does not fit, send no partial RRsets, just TC, so the client
        # retries over TCP.
        for section in (response.answer, response.authority, response.additional):
            section.clear()
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit)


# -- as a process ------------------------------------------------------------------------------


def _origin_from_file(path: Path, text: str) -> str | None:
    if re.search(r"^\$ORIGIN\s", text, re.MULTILINE):
        return None
    return path.name.removesuffix(".zone")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.dnsserver", description="A DNS server for tests.")
    parser.add_argument("--zone", action="append", default=[], metavar="FILE", help="master file")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--fault", action="append", default=[], metavar="NAME=KIND")
    args = parser.parse_args(argv)

    server = DnsServer(host=args.host, port=args.port)
    for file in args.zone:
        path = Path(file)
        text = path.read_text(encoding="utf-8")
        server.add_zone(text, _origin_from_file(path, text))
    for spec in args.fault:
        name, _, kind = spec.partition("=")
        kind, _, seconds = kind.partition(":")
        server.set_fault(name, kind, delay=float(seconds) if seconds else None)

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with server:
        print(f"READY {server.port}", flush=True)
        while not stopping.wait(0.5):
            pass
    # What a benchmark reports next to the milter's figures, as the shared rig reports nsd's.
    times = os.times()
    print(f"STOPPED queries={server.total_queries()} cpu_s={times.user + times.system:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
