"""Fault injection against a real `authmilter serve`: DNS that stalls, fails, truncates or answers
garbage; MTA connections that idle, crowd, send broken packets or vanish; header sections far
larger than mail has. Real sockets and a real DNS server on loopback, nothing mocked.

Every case shows four things: the process is still running, a good message sent afterwards gets
the right verdict, the process's resident memory is back near where it was, and the case left
exactly one line in the milter's log. Run with -s to see each case's time and memory.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import resource
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from miltertest import MilterConnection
from miltertest import constants as C

from tests.dnsserver import DnsServer
from tests.integration.zones import example_net, example_org, zone
from tests.mailfactory import make_message, rsa_key, sign
from tests.milterclient import OFFERED_PROTOCOL, ROOT, MilterProcess, MtaSession, Outcome

DEFAULT_POLICY = ROOT / "policies" / "default.toml"
AR = "Authentication-Results"
DNS_TIMEOUT = 2.0
# The most one case may leave behind in resident memory. Measured: at most 15 MB (a 10 MB header
# section, after the milter hands memory back); glibc keeps some freed memory for reuse and
# Python some free objects, so the bound is that with a wide margin, not zero.
RSS_SLACK_MB = 64
LIBMILTER_MAX_PACKET = 65535  # MILTER_MAX_DATA_SIZE unless the MTA negotiates more (ours does not)
IDLE_CONNECTIONS = 1000
WAIT = 30.0  # the longest any single wait here may take before the test fails instead


def quick_zone(origin: str) -> str:
    """A sender with SPF for our test client's network and a monitoring policy."""
    return zone(origin, '@ IN TXT "v=spf1 ip4:192.0.2.0/24 -all"\n_dmarc IN TXT "v=DMARC1; p=none"\n')


QUICK = [f"quick{i}.example" for i in range(6)]
BASELINE: dict[str, float] = {}  # the module milter's, once warm


# --- the milter and what is measured around it -------------------------------------------------


@contextlib.contextmanager
def soft_nofile(limit: int | None) -> Iterator[None]:
    """This process's soft open-files limit set to `limit` for a while (children inherit it)."""
    if limit is None:
        yield
        return
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def start_milter(workdir: Path, dns: DnsServer, *, top: str = "", dns_timeout: float = DNS_TIMEOUT,
                 nofile: int | None = None) -> MilterProcess:
    m = MilterProcess(workdir, dns_port=dns.port)
    # No DNS cache: every message asks the DNS server again, so each fault is met, not remembered.
    m.config.write_text(
        f'socket = "{m.socket_spec}"\nauthserv_id = "mx.test.example"\nlog_level = "debug"\n'
        f'policy = "{DEFAULT_POLICY}"\n{top}\n'
        f'[dns]\nnameservers = ["127.0.0.1"]\nport = {dns.port}\ntimeout = {dns_timeout}\n'
        "cache_size = 0\n")
    with soft_nofile(nofile):
        m.start()
    return m


def pid_of(m: MilterProcess) -> int:
    assert m.proc is not None
    return m.proc.pid


def status_mb(m: MilterProcess, field: str) -> float:
    with open(f"/proc/{pid_of(m)}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/PID/status")


def rss_mb(m: MilterProcess) -> float:
    return status_mb(m, "VmRSS")


def reset_peak(m: MilterProcess) -> bool:
    """Start VmHWM (peak RSS) afresh, so a case reports its own peak; False where not allowed."""
    try:
        with open(f"/proc/{pid_of(m)}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def open_fds(m: MilterProcess) -> int:
    return len(os.listdir(f"/proc/{pid_of(m)}/fd"))


def wait_until(condition: Callable[[], bool], timeout: float = WAIT, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def signed(**kw: object) -> bytes:
    return sign(make_message(**kw), domain="example.org", selector="rsa", key=rsa_key())  # type: ignore[arg-type]


def the_ar(out: Outcome) -> str:
    ours = [v for _, n, v in out.inserted if n == AR]
    assert len(ours) == 1, out
    return ours[0].strip()


def served_correctly(m: MilterProcess, queue_id: str) -> None:
    """A good message now gets everything right: the milter is not just up but working."""
    with m.session(client_ip="192.0.2.10", helo="mail.example.org") as s:
        out = s.message(signed(), mail_from="alice@example.org", queue_id=queue_id)
    assert out.action == "accept", out
    ar = the_ar(out)
    assert "spf=pass" in ar and "dkim=pass" in ar and "dmarc=pass" in ar, ar


@dataclass
class Case:
    """What one fault case measured; `lines(text)` are the case's own new log lines with text."""

    name: str
    milter: MilterProcess
    log_from: int
    rss_before: float
    started: float
    elapsed: float = 0.0

    def new_log(self) -> str:
        return self.milter.log()[self.log_from:]

    def lines(self, *parts: str) -> list[str]:
        return [x for x in self.new_log().splitlines() if all(p in x for p in parts)]

    def logged_once(self, *parts: str) -> str:
        """The one log line with all of `parts`, waited for: logging runs on the milter's time."""
        wait_until(lambda: len(self.lines(*parts)) >= 1, timeout=10)
        found = self.lines(*parts)
        assert len(found) == 1, (parts, found, self.new_log()[-3000:])
        return found[0]


@contextlib.contextmanager
def fault_case(m: MilterProcess, name: str) -> Iterator[Case]:
    """Around one fault: afterwards the process is up, serves mail, and its memory settled."""
    peak = reset_peak(m)
    case = Case(name, m, len(m.log()), rss_mb(m), time.monotonic())
    yield case
    case.elapsed = time.monotonic() - case.started
    assert m.proc is not None and m.proc.poll() is None, f"{name}: the milter died:\n{m.log()[-3000:]}"
    served_correctly(m, "AFTER-" + name.upper().replace(" ", "-")[:40])
    peak_mb = status_mb(m, "VmHWM") if peak else float("nan")
    # Garbage collection and the trim after large messages run on the milter's own threads: give
    # them a moment, then take the figure that counts.
    wait_until(lambda: rss_mb(m) <= case.rss_before + 8, timeout=3)
    after = rss_mb(m)
    print(f"\nFAULT {name}: {case.elapsed:.2f} s; RSS {case.rss_before:.0f} MB before, "
          f"peak {peak_mb:.0f} MB, {after:.0f} MB after")
    assert after <= case.rss_before + RSS_SLACK_MB, (name, case.rss_before, after)
    assert "Traceback" not in case.new_log(), case.new_log()[-3000:]


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.add_zone(example_org())
        server.add_zone(example_net())
        for origin in [*QUICK, "slow.example"]:
            server.add_zone(quick_zone(origin))
        server.add_zone(zone("nodmarc.example", '@ IN TXT "v=spf1 ip4:192.0.2.0/24 -all"\n'))
        # _dmarc exists, with an A record only: TXT there is NODATA, not NXDOMAIN.
        server.add_zone(zone("nodata.example",
                             '@ IN TXT "v=spf1 ip4:192.0.2.0/24 -all"\n_dmarc IN A 192.0.2.99\n'))
        yield server


@pytest.fixture(scope="module")
def milter(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer) -> Iterator[MilterProcess]:
    # Started with a soft open-files limit far below the idle connections to come, as a shell or
    # a unit without LimitNOFILE may give it: the milter must raise it itself.
    m = start_milter(tmp_path_factory.mktemp("faults"), dns, nofile=256)
    for i in range(3):  # warm: modules loaded, first-use allocations made, before any baseline
        served_correctly(m, f"WARM{i}")
    BASELINE.update(rss=rss_mb(m), fds=open_fds(m))
    yield m
    m.stop()


@pytest.fixture(autouse=True)
def no_faults_left(dns: DnsServer) -> Iterator[None]:
    yield
    dns.clear_faults()


def one_message(m: MilterProcess, queue_id: str, *, mail_from: str = "alice@example.org",
                message: bytes | None = None) -> tuple[Outcome, float]:
    started = time.monotonic()
    with m.session(client_ip="192.0.2.10", helo="mail.example.org", timeout=WAIT) as s:
        out = s.message(message if message is not None else signed(), mail_from=mail_from,
                        queue_id=queue_id)
    return out, time.monotonic() - started


# --- DNS faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["stall", "servfail", "garbage"])
def test_dmarc_policy_lookup_failing_is_temperror_and_the_default_policy_tempfails(
        milter: MilterProcess, dns: DnsServer, kind: str) -> None:
    qid = f"DMARC-{kind.upper()}"
    with fault_case(milter, f"_dmarc {kind}") as case:
        dns.reset_counts()
        dns.set_fault("_dmarc.example.org", kind)
        out, seconds = one_message(milter, qid)
        dns.set_fault("_dmarc.example.org", None)
        asked = dns.query_count("_dmarc.example.org", "TXT")
    # policies/default.toml, rule dmarc-temperror: a 451 so that the sender retries, rather than
    # an accept that would let a spoof through whenever the domain's DNS falters.
    assert out.action == "tempfail" and out.reply is not None and out.reply.startswith("451 4.7.1"), out
    line = case.logged_once("message", f"qid={qid}")
    assert "dmarc=temperror" in line and "rule=dmarc-temperror" in line and "action=tempfail" in line
    assert "spf=pass" in line and "dkim=pass" in line, line
    if kind == "servfail":
        assert asked == 1  # SERVFAIL is an answer: no waiting, no retry
    # Never a hang: a stalled lookup ends at the configured timeout (garbage is dropped by the
    # resolver, so it waits the same way). The bound allows for every query the resolver made.
    assert seconds < DNS_TIMEOUT * max(1, asked) + 5, (seconds, asked)
    if kind != "servfail":
        assert seconds >= DNS_TIMEOUT * 0.8, seconds  # it did wait for the answer that never came


@pytest.mark.parametrize("kind", ["stall", "servfail", "garbage"])
def test_spf_lookup_failing_is_temperror_and_dkim_still_carries_dmarc(
        milter: MilterProcess, dns: DnsServer, kind: str) -> None:
    qid = f"SPF-{kind.upper()}"
    with fault_case(milter, f"SPF {kind}") as case:
        dns.reset_counts()
        dns.set_fault("example.org", kind)  # the MAIL FROM domain's TXT (SPF) record
        out, seconds = one_message(milter, qid)
        dns.set_fault("example.org", None)
        asked = dns.query_count("example.org", "TXT")
    ar = the_ar(out)
    assert "spf=temperror" in ar and "smtp.mailfrom=alice@example.org" in ar, ar
    # The DKIM signature aligns, so DMARC passes without SPF and the default policy accepts.
    assert "dkim=pass" in ar and "dmarc=pass" in ar, ar
    assert out.action == "accept", out
    line = case.logged_once("message", f"qid={qid}")
    assert "spf=temperror" in line and "action=accept" in line, line
    assert seconds < DNS_TIMEOUT * max(1, asked) + 5, (seconds, asked)


def test_nxdomain_and_nodata_are_answers_not_temperror(milter: MilterProcess) -> None:
    for domain in ("nodmarc.example", "nodata.example"):
        qid = f"NO-DMARC-{domain.split('.')[0].upper()}"
        with fault_case(milter, f"no DMARC record ({domain})") as case:
            msg = make_message(from_=f"a@{domain}")
            out, _ = one_message(milter, qid, mail_from=f"a@{domain}", message=msg)
        ar = the_ar(out)
        assert "spf=pass" in ar and "dmarc=none" in ar and "temperror" not in ar, ar
        assert out.action == "accept", out
        case.logged_once("message", f"qid={qid}", "dmarc=none")


def test_truncated_udp_answers_are_asked_again_over_tcp_with_the_same_result(
        milter: MilterProcess, dns: DnsServer) -> None:
    names = ("example.org", "rsa._domainkey.example.org", "_dmarc.example.org")
    message = signed()
    with fault_case(milter, "TC=1 on SPF, DKIM key and DMARC") as case:
        plain, _ = one_message(milter, "TC-NONE", message=message)
        dns.reset_counts()
        for name in names:
            dns.set_fault(name, "truncate")
        truncated, _ = one_message(milter, "TC-ALL", message=message)
        for name in names:
            dns.set_fault(name, None)
        asked = {(name, transport): dns.query_count(name, "TXT", transport)
                 for name in names for transport in ("udp", "tcp")}
    for name in names:
        # Asked once over UDP, truncated, and once more over TCP.
        assert asked[(name, "udp")] == asked[(name, "tcp")] == 1, asked
    assert the_ar(truncated) == the_ar(plain)
    assert "spf=pass" in the_ar(truncated) and "dkim=pass" in the_ar(truncated)
    assert truncated.action == plain.action == "accept"
    case.logged_once("message", "qid=TC-ALL", "action=accept")


def test_one_slow_name_does_not_hold_up_other_connections(tmp_path: Path, dns: DnsServer) -> None:
    delay = 4.0
    # A DNS timeout well past the delay (the resolver's first try alone lasts half of it), so the
    # late answer is used: the slow message waits for DNS, it does not fail.
    m = start_milter(tmp_path, dns, dns_timeout=10.0)
    try:
        served_correctly(m, "SLOW-WARM")
        with fault_case(m, "one name answering 4 s late") as case:
            dns.set_fault("_dmarc.slow.example", "stall", delay=delay)
            finished: dict[str, float] = {}

            def send(qid: str, domain: str) -> Outcome:
                out, _ = one_message(m, qid, mail_from=f"a@{domain}",
                                     message=make_message(from_=f"a@{domain}"))
                finished[qid] = time.monotonic()
                return out

            with concurrent.futures.ThreadPoolExecutor(len(QUICK) + 1) as pool:
                slow = pool.submit(send, "SLOW", "slow.example")
                assert wait_until(lambda: dns.query_count("_dmarc.slow.example", "TXT") >= 1, 10)
                others = [pool.submit(send, f"QUICK{i}", d) for i, d in enumerate(QUICK)]
                quick_outcomes = [f.result(timeout=WAIT) for f in others]
                slow_outcome = slow.result(timeout=WAIT)
            dns.set_fault("_dmarc.slow.example", None)
        released = dns.released("_dmarc.slow.example")
        assert released, "the late answer was never sent"
        for i, out in enumerate(quick_outcomes):
            assert out.action == "accept" and "dmarc=pass" in the_ar(out), out
            # Each of the others was done while the slow one was still waiting for its answer.
            assert finished[f"QUICK{i}"] < released[0] < finished["SLOW"], (finished, released)
        assert "dmarc=pass" in the_ar(slow_outcome)  # the late answer was used, not a timeout
        case.logged_once("message", "qid=SLOW", "action=accept")
        print(f"  slow message {finished['SLOW'] - case.started:.2f} s; the others done within "
              f"{max(finished[q] for q in finished if q != 'SLOW') - case.started:.2f} s")
    finally:
        m.stop()


# --- connection faults -----------------------------------------------------------------------------


def open_files_limit(m: MilterProcess) -> int:
    with open(f"/proc/{pid_of(m)}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no open-files limit in /proc/PID/limits")


def test_a_thousand_idle_connections_do_not_keep_a_new_client_out(milter: MilterProcess) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = IDLE_CONNECTIONS + 200
    if hard < need:
        pytest.skip(f"hard open-files limit {hard} is below {need}")
    # Started at 256, as a unit without LimitNOFILE would start it; raised at start-up.
    assert open_files_limit(milter) >= 2 * IDLE_CONNECTIONS
    fds_before = open_fds(milter)
    idle: list[socket.socket] = []
    with soft_nofile(max(soft, need)), fault_case(milter, f"{IDLE_CONNECTIONS} idle connections") as case:
        try:
            for _ in range(IDLE_CONNECTIONS):
                idle.append(socket.create_connection(("127.0.0.1", milter.port), timeout=5))
            # Every one of them accepted by libmilter, not just queued in the kernel's backlog.
            assert wait_until(lambda: open_fds(milter) >= fds_before + IDLE_CONNECTIONS), open_fds(milter)
            started = time.monotonic()
            served_correctly(milter, "PAST-IDLE")
            print(f"  a new client served in {time.monotonic() - started:.2f} s with "
                  f"{open_fds(milter) - fds_before} idle connections open")
        finally:
            for s in idle:
                s.close()
        # libmilter sees each one close and lets its descriptor go: nothing leaks.
        assert wait_until(lambda: open_fds(milter) <= fds_before + 2), (fds_before, open_fds(milter))
    # Silent connections reach no callback of ours, so neither the limit nor its log line is
    # involved; the one line is the message's.
    case.logged_once("message", "qid=PAST-IDLE", "action=accept")
    assert "connection limit" not in case.new_log()


class RawMta:
    """An MTA-side connection that stops wherever a test wants, to send broken things."""

    def __init__(self, port: int, *, protocol: int = OFFERED_PROTOCOL) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = MilterConnection(self.sock)
        self.actions, self.protocol = self.conn.optneg_mta(actions=C.SMFI_V6_ACTS, protocol=protocol)

    def connect(self) -> str:
        """SMFIC_CONNECT; the milter's reply command."""
        self.conn.send_macro(C.SMFIC_CONNECT, **{"j": "mx.test.example"})
        return str(self.conn.send_ar(C.SMFIC_CONNECT, hostname="mail.example.org", family="4",
                                     port=25, address="192.0.2.10")[0])

    def into_body(self, queue_id: str) -> None:
        """Connect, HELO, MAIL, RCPT, DATA, header fields and end of headers: ready for the body."""
        assert self.connect() == C.SMFIR_CONTINUE
        assert self.conn.send_ar(C.SMFIC_HELO, helo="mail.example.org")[0] == C.SMFIR_CONTINUE
        self.conn.send_macro(C.SMFIC_MAIL, i=queue_id)
        assert self.conn.send_ar(C.SMFIC_MAIL, args=["<alice@example.org>"])[0] == C.SMFIR_CONTINUE
        assert self.conn.send_ar(C.SMFIC_RCPT, args=["<bob@example.com>"])[0] == C.SMFIR_CONTINUE
        assert self.conn.send_ar(C.SMFIC_DATA)[0] == C.SMFIR_CONTINUE
        for name, value in ((b"From", b" alice@example.org"), (b"Subject", b" half a message")):
            self.frame(C.SMFIC_HEADER.encode(), name + b"\0" + value + b"\0")
            assert self.conn.recv()[0] == C.SMFIR_CONTINUE
        assert self.conn.send_ar(C.SMFIC_EOH)[0] == C.SMFIR_CONTINUE

    def frame(self, cmd: bytes, payload: bytes) -> None:
        self.sock.sendall(struct.pack("!L", len(payload) + 1) + cmd + payload)

    def send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # the milter may close on us half way: that is the point
            self.sock.sendall(data)

    def closed_by_milter(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
            return True
        except TimeoutError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


BODY = b"A line of the body that is not going to arrive in full.\r\n" * 200
BROKEN = {
    # A length that promises 1000 bytes, then 10 and the connection closes.
    "truncated packet": struct.pack("!L", 1001) + b"B" + b"0123456789",
    # Far over libmilter's 64 KiB packet limit: refused from the length alone, nothing allocated.
    "oversized packet": struct.pack("!L", 0x7FFFFFF0) + b"B" + b"x" * 100,
    "just over the packet limit": struct.pack("!L", LIBMILTER_MAX_PACKET + 2) + b"B" + b"x" * 100,
    # A well-formed frame with a command that does not exist, then bytes that are no frame at all.
    "unknown command": struct.pack("!L", 6) + b"Zjunk!" + bytes(range(256)),
    # A length of -1 and a control character for a command: no frame at all.
    "garbage bytes": b"\xff\xff\xff\xff\x01" + bytes(range(256)),
    # Half the body, and the MTA is gone.
    "client vanishing mid-body": struct.pack("!L", len(BODY) // 2 + 1) + b"B" + BODY[: len(BODY) // 2],
}


@pytest.mark.parametrize("what", list(BROKEN))
def test_broken_packets_in_the_middle_of_a_message(milter: MilterProcess, what: str) -> None:
    qid = "BROKEN-" + what.upper().replace(" ", "-")
    with fault_case(milter, what) as case:
        mta = RawMta(milter.port)
        try:
            mta.into_body(qid)
            mta.send(BROKEN[what])
        finally:
            mta.close()
    # The milter saw the message end without its end: one line, at info, with what had arrived.
    line = case.logged_once("message", f"qid={qid}", "action=abandoned")
    assert "headers=2" in line and "INFO" in line, line
    assert not case.lines("ERROR"), case.new_log()


@pytest.mark.parametrize("what", [w for w in BROKEN if w != "client vanishing mid-body"])
def test_broken_packets_before_negotiation(milter: MilterProcess, what: str) -> None:
    with fault_case(milter, f"{what} as the first packet") as case, \
            socket.create_connection(("127.0.0.1", milter.port), timeout=10) as s:
        with contextlib.suppress(OSError):  # libmilter may close before it has read it all
            s.sendall(BROKEN[what])
            s.shutdown(socket.SHUT_WR)
        # libmilter drops such a connection (a broken frame, or EOF inside one) by itself.
        s.settimeout(10)
        try:
            reply = s.recv(100)
        except TimeoutError:
            raise AssertionError("libmilter kept a broken connection open") from None
        except OSError:
            reply = b""  # reset: closed with our bytes unread
        assert reply == b""
    # Nothing reached a callback: libmilter reports these to syslog itself, not to our log.
    assert not case.lines("ERROR") and not case.lines("WARNING"), case.new_log()


def test_a_connection_stalled_inside_a_packet_is_dropped_after_milter_timeout(
        tmp_path: Path, dns: DnsServer) -> None:
    m = start_milter(tmp_path, dns, top="milter_timeout = 2")
    try:
        with fault_case(m, "stalled inside a packet"):
            mta = RawMta(m.port)
            try:
                mta.into_body("STALLED")
                mta.send(struct.pack("!L", 1001) + b"B" + b"only part of it")  # and nothing more
                started = time.monotonic()
                assert mta.closed_by_milter(timeout=15)
                waited = time.monotonic() - started
            finally:
                mta.close()
        assert 1.5 <= waited < 15, waited
        print(f"  dropped after {waited:.2f} s (milter_timeout = 2)")
    finally:
        m.stop()


def test_connections_over_max_connections_get_a_tempfail_logged_once_per_burst(
        tmp_path: Path, dns: DnsServer) -> None:
    limit, extra = 20, 10
    m = start_milter(tmp_path, dns, top=f"max_connections = {limit}\nmax_header_fields = 1000")
    admitted: list[MtaSession] = []
    refused: list[RawMta] = []
    try:
        with fault_case(m, f"{extra} connections over max_connections = {limit}") as case:
            try:
                admitted = [MtaSession(m.address, client_ip="192.0.2.10") for _ in range(limit)]
                for _ in range(extra):
                    # Offering "no reply at connect", as Postfix does: the milter must take it back
                    # for a connection it refuses, or the MTA would never read the refusal.
                    mta = RawMta(m.port, protocol=OFFERED_PROTOCOL | C.SMFIP_NR_CONN)
                    refused.append(mta)
                    assert not mta.protocol & C.SMFIP_NR_CONN
                    assert mta.connect() == C.SMFIR_TEMPFAIL
                    # An MTA that carries on anyway gets a tempfail for its message as well.
                    mta.conn.send_macro(C.SMFIC_MAIL, i="OVER")
                    reply = mta.conn.send_ar(C.SMFIC_MAIL, args=["<alice@example.org>"])
                    assert reply[0] == C.SMFIR_REPLYCODE and str(reply[1]["smtpcode"]) == "451"
                line = case.logged_once("connection limit reached")
                assert f"{limit} MTA connections open (max_connections = {limit})" in line
                # An admitted connection is unaffected, and one within the limit still has "no
                # reply at connect" when it asks.
                out = admitted[0].message(signed(), mail_from="alice@example.org", queue_id="IN-LIMIT")
                assert out.action == "accept" and "dkim=pass" in the_ar(out)
            finally:
                for session in admitted:
                    session.close()
                for mta in refused:
                    mta.close()
            again = case.logged_once("accepting connections again")
            assert f"{extra} refused meanwhile" in again, again
            fresh = RawMta(m.port, protocol=OFFERED_PROTOCOL | C.SMFIP_NR_CONN)
            assert fresh.protocol & C.SMFIP_NR_CONN
            fresh.close()
        assert len(case.lines("connection limit reached")) == 1  # once for the burst, not per connection
    finally:
        m.stop()


@pytest.mark.parametrize(("setting", "message"), [
    ("max_connections = 0", "max_connections: must be between 1 and 100000, got 0"),
    ("max_header_bytes = 1000", "max_header_bytes: must be between 65536 and"),
    ("max_header_fields = true", "max_header_fields: expected an integer, got a boolean"),
])
def test_a_bad_limit_refuses_to_start_naming_the_key(tmp_path: Path, setting: str, message: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'socket = "inet:8891@127.0.0.1"\n{setting}\n')
    r = subprocess.run([sys.executable, "-m", "authmilter", "serve", "-c", str(cfg)], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 78
    # The file, perhaps the line, the key and the reason.
    assert re.search(re.escape(str(cfg)) + r"(:\d+)?: " + re.escape(message), r.stderr), r.stderr


# --- huge header sections --------------------------------------------------------------------------


def test_ten_thousand_header_fields_get_a_verdict(milter: MilterProcess) -> None:
    fields = tuple(b"X-Field-%d: value %d" % (i, i) for i in range(10_000))
    with fault_case(milter, "10,000 header fields") as case:
        out, seconds = one_message(milter, "HDR-10K", message=signed(extra_headers=fields))
    ar = the_ar(out)
    assert out.action == "accept" and "spf=pass" in ar and "dkim=pass" in ar and "dmarc=pass" in ar
    case.logged_once("message", "qid=HDR-10K", "action=accept")
    print(f"  message took {seconds:.2f} s")


def test_a_30_mb_header_section_gets_the_fail_safe_reply(milter: MilterProcess) -> None:
    # 480 fields of 63 KB, each within libmilter's packet limit: 30 MB in all, over the default
    # max_header_bytes (16 MiB). Postfix would cut each field at 100 KB, but not their number.
    fields = tuple(b"X-Big-%d: " % i + b"y" * 63_000 for i in range(480))
    with fault_case(milter, "30 MB header section") as case:
        out, seconds = one_message(milter, "HDR-30MB", message=make_message(extra_headers=fields))
    assert out.action == "tempfail" and out.reply is not None and out.reply.startswith("451 4.7.1"), out
    line = case.logged_once("qid=HDR-30MB", "action=tempfail")
    assert "max_header_bytes = 16777216" in line, line
    print(f"  message took {seconds:.2f} s")


def test_one_30_mb_folded_header_is_refused_by_libmilter(milter: MilterProcess) -> None:
    # One field cannot be sent larger than libmilter's packet limit: it ends the connection at the
    # length prefix, and the MTA applies its milter_default_action (tempfail) to the message.
    payload = b"X-Huge\0 " + b"\n\t".join([b"z" * 76] * (30 * 1024 * 1024 // 78)) + b"\0"
    with fault_case(milter, "one 30 MB folded header") as case:
        mta = RawMta(milter.port)
        try:
            mta.into_body("HDR-FOLDED")
            mta.send(struct.pack("!L", len(payload) + 1) + b"L" + payload)
            assert mta.closed_by_milter(timeout=10)
        finally:
            mta.close()
    case.logged_once("message", "qid=HDR-FOLDED", "action=abandoned")


def test_too_many_header_fields_get_the_fail_safe_reply(tmp_path: Path, dns: DnsServer) -> None:
    m = start_milter(tmp_path, dns, top="max_header_fields = 1000")
    try:
        fields = tuple(b"X-Field-%d: v" % i for i in range(1500))
        with fault_case(m, "1,500 header fields over max_header_fields = 1000") as case:
            out, _ = one_message(m, "HDR-COUNT", message=signed(extra_headers=fields))
        assert out.action == "tempfail" and out.reply is not None and out.reply.startswith("451 4.7.1")
        line = case.logged_once("qid=HDR-COUNT", "action=tempfail")
        assert "more than max_header_fields = 1000" in line, line
    finally:
        m.stop()


def test_the_module_left_the_milter_as_it_found_it(milter: MilterProcess) -> None:
    # Last in this file: every case above went through this one process, which still serves,
    # holds no descriptor it did not hold when warm, and is about the size it was then.
    served_correctly(milter, "LAST")
    assert wait_until(lambda: open_fds(milter) <= BASELINE["fds"] + 2), (BASELINE, open_fds(milter))
    print(f"\nmodule milter: RSS {BASELINE['rss']:.0f} MB when warm, {rss_mb(milter):.0f} MB at the "
          f"end; {open_fds(milter)} descriptors ({BASELINE['fds']:.0f} when warm)")
    assert rss_mb(milter) <= BASELINE["rss"] + RSS_SLACK_MB
