"""The real `authmilter serve` process, a real DNS server, an MTA-side milter client."""

from __future__ import annotations

import concurrent.futures
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dnsserver import DnsServer
from tests.integration.zones import example_net, example_org
from tests.mailfactory import ed25519_key, make_message, rsa_key, sign
from tests.milterclient import ROOT, MilterProcess

AR = "Authentication-Results"


# One DNS server and one milter process serve the whole module, as one MX serves many messages;
# tests that need their own configuration or faults start their own.
@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.add_zone(example_org())
        server.add_zone(example_net())
        yield server


@pytest.fixture(scope="module")
def milter(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer) -> Iterator[MilterProcess]:
    m = MilterProcess(tmp_path_factory.mktemp("milter"), dns_port=dns.port).start()
    yield m
    m.stop()


@pytest.fixture
def own_dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.add_zone(example_org())
        yield server


def signed(msg: bytes | None = None, **kw: object) -> bytes:
    msg = msg or make_message()
    return sign(msg, domain="example.org", selector="rsa", key=rsa_key(), **kw)  # type: ignore[arg-type]


def the_ar(outcome_inserted: list[tuple[int, str, str]]) -> str:
    ours = [v for i, n, v in outcome_inserted if n == AR]
    assert len(ours) == 1, outcome_inserted
    # We negotiate HDR_LEADSPC, so the value carries the one space after the colon itself.
    assert ours[0].startswith(" ") and not ours[0].startswith("  "), ours[0]
    return ours[0][1:]


def test_good_message_gets_one_header_on_top(milter: MilterProcess) -> None:
    with milter.session(client_ip="192.0.2.10", helo="mail.example.org") as s:
        out = s.message(signed(), mail_from="alice@example.org")
    assert out.action == "accept"
    assert [(i, n) for i, n, _ in out.inserted] == [(0, AR)]
    ar = the_ar(out.inserted)
    assert ar.startswith("mx.test.example;")
    assert "spf=pass" in ar and "smtp.mailfrom=alice@example.org" in ar
    assert re.search(r"dkim=pass [^;]*header\.d=example\.org", ar)
    assert "header.s=rsa" in ar and "header.a=rsa-sha256" in ar
    assert re.search(r"dmarc=pass [^;]*header\.from=example\.org", ar)
    assert out.changed == []


def test_unauthenticated_spoof_is_reported_as_failing(milter: MilterProcess) -> None:
    with milter.session(client_ip="203.0.113.5", helo="evil.example") as s:
        out = s.message(make_message(), mail_from="alice@example.org")
    ar = the_ar(out.inserted)
    assert "spf=fail" in ar and "dkim=none" in ar
    assert re.search(r"dmarc=fail [^;]*policy\.dmarc=reject", ar)
    assert out.action == "accept"  # this release reports; policies decide later


def test_rsa_and_ed25519_signatures_each_reported(milter: MilterProcess) -> None:
    msg = sign(signed(), domain="example.org", selector="ed", key=ed25519_key())
    with milter.session(client_ip="192.0.2.10") as s:
        out = s.message(msg, mail_from="alice@example.org")
    ar = the_ar(out.inserted)
    assert "header.a=rsa-sha256" in ar and "header.a=ed25519-sha256" in ar
    assert len(re.findall(r"dkim=pass", ar)) == 2


def test_leading_whitespace_and_8bit_headers_survive_simple_canonicalization(milter: MilterProcess) -> None:
    msg = make_message(subject="  two leading spaces", extra_headers=(
        b"X-Folded: first\r\n\t second\r\n   third", b"X-Eight-Bit: caf\xc3\xa9 \xff raw"))
    msg = sign(msg, domain="example.org", selector="rsa", key=rsa_key(), canonicalize=(b"simple", b"simple"),
               headers=[b"from", b"subject", b"x-folded", b"x-eight-bit"])
    with milter.session(client_ip="192.0.2.10") as s:
        out = s.message(msg, mail_from="alice@example.org")
    assert "dkim=pass" in the_ar(out.inserted)


@pytest.mark.parametrize("claimed", [
    "mx.test.example; spf=pass smtp.mailfrom=alice@example.org",
    '"mx.test.example"; dkim=pass header.d=example.org',
    "(comment) MX.Test.Example (another (nested)); dmarc=pass",
    "\r\n\tmx.test.example;\r\n\tdmarc=pass header.from=example.org",
])
def test_forged_headers_with_our_id_are_deleted_others_kept(milter: MilterProcess, claimed: str) -> None:
    forged = f"{AR}: {claimed}".encode()
    other = f"{AR}: mx.other.example; spf=fail smtp.mailfrom=x@example.org".encode()
    msg = make_message(extra_headers=(other, forged, other))
    with milter.session(client_ip="192.0.2.10") as s:
        out = s.message(msg, mail_from="alice@example.org")
    # The forged one is the second Authentication-Results field; deleting means an empty value.
    assert out.changed == [(2, AR, "")]
    assert len(out.inserted) == 1


def test_several_messages_on_one_connection_with_rset(milter: MilterProcess) -> None:
    with milter.session(client_ip="192.0.2.10", helo="mail.example.org") as s:
        first = s.message(signed(), mail_from="alice@example.org", queue_id="Q1")
        # Half a message, then RSET: nothing of it may leak into the next one.
        s.conn.send_ar("M", args=["<x@example.net>"])
        s.abort()
        second = s.message(make_message(from_="bob@example.net"), mail_from="bob@example.net",
                           queue_id="Q2")
    assert "dkim=pass" in the_ar(first.inserted)
    ar2 = the_ar(second.inserted)
    assert "dkim=none" in ar2 and "header.from=example.net" in ar2
    assert "smtp.mailfrom=bob@example.net" in ar2 and "spf=softfail" in ar2


def test_null_sender_uses_helo_identity(milter: MilterProcess) -> None:
    with milter.session(client_ip="192.0.2.1", helo="mail.example.org") as s:
        out = s.message(signed(), mail_from="")
    ar = the_ar(out.inserted)
    assert "spf=pass" in ar and "smtp.helo=mail.example.org" in ar


def test_many_concurrent_connections(milter: MilterProcess) -> None:
    def one(n: int) -> str:
        msg = signed(make_message(message_id=f"<{n}@example.org>"))
        with milter.session(client_ip="192.0.2.10") as s:
            return the_ar(s.message(msg, mail_from="alice@example.org", queue_id=f"Q{n}").inserted)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(48)))
    assert all("dkim=pass" in ar and "dmarc=pass" in ar and "spf=pass" in ar for ar in results)


@pytest.mark.parametrize(("message", "expect"), [
    (make_message(from_="a@example.org").replace(b"From: a@example.org\r\n", b""), "dmarc=permerror"),
    (make_message(extra_headers=(b"From: mallory@example.net",)), "dmarc=permerror"),
    (make_message(from_="a@example.org, b@example.net"), "dmarc=permerror"),
    (make_message(from_="undisclosed"), "dmarc=permerror"),
    (make_message(from_='"unterminated <a@example.org>'), "dmarc=permerror"),
])
def test_bad_from_never_escapes_dmarc(milter: MilterProcess, message: bytes, expect: str) -> None:
    with milter.session(client_ip="192.0.2.10") as s:
        out = s.message(message, mail_from="alice@example.org")
    assert expect in the_ar(out.inserted)
    assert out.action == "accept"


def test_hostile_signatures_and_big_headers_get_results_not_crashes(milter: MilterProcess) -> None:
    bad_sigs = (
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=rsa; h=from; bh=!!!; b=@@@",
        b"DKIM-Signature: v=1; v=1; a=rsa-sha256; d=example.org",
        b"DKIM-Signature: garbage without tags",
    )
    big = tuple(b"X-Filler-%d: " % i + b"x" * 990 for i in range(10_500))  # > 10 MB of header fields
    with milter.session(client_ip="192.0.2.10") as s:
        out1 = s.message(make_message(extra_headers=bad_sigs), mail_from="alice@example.org")
        out2 = s.message(make_message(extra_headers=big), mail_from="alice@example.org")
        out3 = s.message(b"From: a@example.org\r\nSubject: headers only\r\n", mail_from="alice@example.org")
    ar1 = the_ar(out1.inserted)
    assert ar1.count("dkim=permerror") == 3
    assert "dmarc=pass" in ar1  # SPF still aligns
    assert "spf=pass" in the_ar(out2.inserted)
    assert "dkim=none" in the_ar(out3.inserted)
    assert milter.proc is not None and milter.proc.poll() is None


def test_dns_server_not_answering_is_temperror(tmp_path: Path, own_dns: DnsServer) -> None:
    own_dns.set_fault("rsa._domainkey.example.org", "timeout")
    own_dns.set_fault("_dmarc.example.org", "servfail")
    m = MilterProcess(tmp_path, dns_port=own_dns.port).start()
    try:
        with m.session(client_ip="192.0.2.10") as s:
            out = s.message(signed(), mail_from="alice@example.org")
    finally:
        m.stop()
    ar = the_ar(out.inserted)
    assert "dkim=temperror" in ar and "dmarc=temperror" in ar


def test_unix_socket_and_clean_sigterm(tmp_path: Path, own_dns: DnsServer) -> None:
    m = MilterProcess(tmp_path, dns_port=own_dns.port, socket_spec=f"unix:{tmp_path}/m.sock").start()
    with m.session(client_ip="192.0.2.10") as s:
        assert "dkim=pass" in the_ar(s.message(signed(), mail_from="alice@example.org").inserted)
    assert m.stop(signal.SIGTERM) == 0
    assert "stopped" in m.log()


def test_log_line_per_message(milter: MilterProcess) -> None:
    with milter.session(client_ip="192.0.2.10") as s:
        s.message(signed(), mail_from="alice@example.org", queue_id="LOGQ1")
    deadline = time.monotonic() + 5
    while "qid=LOGQ1" not in milter.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(x for x in milter.log().splitlines() if "qid=LOGQ1" in x)
    for part in ("client=192.0.2.10", "from=alice@example.org", "author=example.org", "spf=pass",
                 "dkim=pass:example.org", "dmarc=pass", "action=accept"):
        assert part in line
    assert "BEGIN" not in milter.log()  # no key material


def test_bad_config_refuses_to_start(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('socket = "inet:8891@127.0.0.1"\n[dns]\nport = 0\n')
    r = subprocess.run([sys.executable, "-m", "authmilter", "serve", "-c", str(cfg)], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 78
    assert f"{cfg}:3: dns.port: must be between 1 and 65535" in r.stderr


def test_authserv_id_defaults_to_the_mta_j_macro(tmp_path: Path, own_dns: DnsServer) -> None:
    m = MilterProcess(tmp_path, dns_port=own_dns.port, authserv_id="").start()
    try:
        forged = b"Authentication-Results: relay.example.com; dmarc=pass header.from=example.org"
        with m.session(client_ip="192.0.2.10", macros={"j": "relay.example.com"}) as s:
            out = s.message(signed(make_message(extra_headers=(forged,))), mail_from="alice@example.org")
    finally:
        m.stop()
    assert the_ar(out.inserted).startswith("relay.example.com;")
    assert out.changed == [(1, AR, "")]


def test_body_only_and_nul_bytes_in_body(milter: MilterProcess) -> None:
    with milter.session(client_ip="192.0.2.10") as s:
        body_only = s.message(b"\r\nno header fields at all\r\n", mail_from="alice@example.org")
        nul = s.message(signed(make_message(body=b"a\x00b\r\n\x00\r\n")), mail_from="alice@example.org")
    ar = the_ar(body_only.inserted)
    assert "dkim=none" in ar and "dmarc=permerror" in ar
    assert "dkim=pass" in the_ar(nul.inserted)


# --- no-reply flags (SMFIP_NR_*), as Postfix offers them ----------------------------------------


def test_with_no_reply_flags_headers_and_body_go_unanswered_and_the_result_is_the_same(
        milter: MilterProcess) -> None:
    from miltertest import constants as C

    from benchmarks.mta import POSTFIX_PROTOCOL, Conversation, Envelope, converse, prepare

    conv = Conversation(milter.address, timeout=10)
    try:
        conv.negotiate()
        assert conv.offered == POSTFIX_PROTOCOL
        no_reply = C.SMFIP_NR_CONN | C.SMFIP_NR_HELO | C.SMFIP_NR_HDR | C.SMFIP_NR_BODY
        assert conv.protocol & no_reply == no_reply
        # MAIL FROM and RCPT TO may be refused, so they are answered; EOH and DATA are not sent.
        assert conv.protocol & (C.SMFIP_NR_MAIL | C.SMFIP_NR_RCPT) == 0
        assert conv.protocol & (C.SMFIP_NOEOH | C.SMFIP_NODATA) == C.SMFIP_NOEOH | C.SMFIP_NODATA
    finally:
        conv.close()

    envelope = Envelope(client_ip="192.0.2.10", client_host="mail.example.org", helo="mail.example.org",
                        mail_from="alice@example.org", rcpts=("bob@example.com",))
    message = signed(make_message(body=b"Hello  there,\r\n\tindented\r\n" * 3000))  # > one 64 KB chunk
    with_nr = converse(milter.address, prepare(message, envelope), queue_id="NR1", timeout=10)
    without = converse(milter.address, prepare(message, envelope), queue_id="NR2", timeout=10,
                       no_reply=False)
    assert with_nr.action == without.action == "accept", (with_nr.error, without.error)
    assert with_nr.inserted == without.inserted
    ar = the_ar(with_nr.inserted)
    assert "dkim=pass" in ar and "spf=pass" in ar and "dmarc=pass" in ar


# --- large bodies go to a temporary file ----------------------------------------------------------


def test_a_body_above_the_spool_size_is_verified_from_an_unnamed_file(tmp_path: Path, dns: DnsServer) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    m = MilterProcess(tmp_path, dns_port=dns.port,
                      extra=f'[spool]\nabove = 1000\ndirectory = "{spool}"').start()
    try:
        body = b"A line  with\tspace runs, to canonicalize.  \r\n" * 2000 + b"\r\n\r\n"  # ~92 KB
        with m.session(client_ip="192.0.2.10", helo="mail.example.org") as s:
            big = s.message(signed(make_message(body=body)), mail_from="alice@example.org")
            small = s.message(signed(), mail_from="alice@example.org")
        for out in (big, small):
            assert out.action == "accept"
            assert "dkim=pass" in the_ar(out.inserted)
        assert list(spool.iterdir()) == []  # unnamed: nothing to clean up, even after a crash
        # The spool really is used above 1000 bytes: take its directory away and only the large
        # message fails, with the fail-safe reply and a log line saying why.
        spool.rmdir()
        with m.session(client_ip="192.0.2.10", helo="mail.example.org") as s:
            big = s.message(signed(make_message(body=body)), mail_from="alice@example.org")
            small = s.message(signed(), mail_from="alice@example.org")
        assert big.action == "tempfail" and big.reply.startswith("451 4.7.1")
        assert small.action == "accept"
        assert m.log().count("callback=body failed") == 1  # once, not once per 64 KB chunk
    finally:
        m.stop()
