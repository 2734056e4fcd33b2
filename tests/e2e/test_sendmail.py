"""Through a real Sendmail 8.17, configured with the lines docs/sendmail.md gives.

One Sendmail (tests/e2e/sendmail.py: Debian's binary, unpacked, never installed) and one authmilter
(shipped default policy) serve the whole module; Sendmail relays what it accepts to an SMTP sink.
The zones, keys and client addresses are the Postfix suite's (conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.dnsserver import DnsServer
from tests.e2e.conftest import (
    AUTHORISED_IP,
    AUTHSERV_ID,
    DEFAULT_POLICY,
    OUTSIDE_IP,
    RCPT,
    authserv_id,
    ours,
    signed,
    start_milter,
)
from tests.e2e.postfix import Delivered, Reply, SmtpClient
from tests.e2e.sendmail import (
    SendmailInstance,
    SendmailTree,
    SendmailUnavailable,
    SmtpSink,
    ensure_m4,
    obtain,
    running,
    wait_for,
)
from tests.integration.zones import zone
from tests.mailfactory import make_message
from tests.milterclient import MilterProcess, free_port

SENDMAIL_DNS_HOSTS = [f"127.0.53.{n}" for n in range(53, 73)]


@pytest.fixture(scope="module", autouse=True)
def postfix_installed() -> str:
    """Overrides the e2e suite's Postfix install: this module does not use Postfix."""
    return "not needed"


@pytest.fixture(scope="session")
def sendmail_tree() -> SendmailTree:
    t0 = time.monotonic()
    try:
        ensure_m4()
        tree = obtain()
    except SendmailUnavailable as e:
        if e.offline:
            pytest.skip(f"Sendmail cannot be obtained from the Debian mirror: {e}")
        problem = str(e)
    else:
        print(f"sendmail {tree.version} ready in {time.monotonic() - t0:.1f}s at {tree.root}")
        return tree
    pytest.fail(f"Sendmail could not be prepared: {problem}", pytrace=False)


def slowdns_example() -> str:
    """Its _dmarc name is never answered (a fault on the server): authmilter's lookup times out."""
    return zone("slowdns.example", """
@ IN TXT "v=spf1 ip4:127.0.2.0/24 -all"
mail IN TXT "v=spf1 ip4:127.0.2.0/24 -all"
_dmarc IN TXT "v=DMARC1; p=reject"
""")


@pytest.fixture(scope="module")
def dns(dns: DnsServer) -> DnsServer:
    """The e2e zones, plus one whose DMARC record times out."""
    dns.add_zone(slowdns_example())
    dns.set_fault("_dmarc.slowdns.example", "timeout")
    return dns


@pytest.fixture(scope="module")
def sendmail_dns() -> Iterator[DnsServer]:
    """What Sendmail's libc resolver asks (port 53: resolv.conf has no port); it holds no zone, so
    every name is NXDOMAIN at once: Sendmail never waits on DNS and never asks the network."""
    server: DnsServer | None = None
    for host in SENDMAIL_DNS_HOSTS:
        with contextlib.suppress(OSError):
            server = DnsServer(host=host, port=53).start()
            break
    if server is None:
        raise RuntimeError(f"port 53 is taken on {SENDMAIL_DNS_HOSTS[0]}..{SENDMAIL_DNS_HOSTS[-1]}")
    try:
        yield server
    finally:
        server.stop()


@dataclass
class SendmailRig:
    sendmail: SendmailInstance
    sink: SmtpSink
    milter: MilterProcess
    dns: DnsServer
    workdir: Path
    generations: list[MilterProcess] = field(default_factory=list)

    def restart_milter(self) -> MilterProcess:
        self.milter.stop()
        self.milter = start_milter(self.workdir, self.dns, self.milter.port, self.generations)
        return self.milter

    def send(self, message: bytes, *, mail_from: str, source_ip: str = AUTHORISED_IP,
             helo: str = "mail.sender.example", rcpts: tuple[str, ...] = (RCPT,)) -> Reply:
        with SmtpClient(self.sendmail.smtp_port, source_ip=source_ip, helo=helo) as c:
            return c.send(message, mail_from=mail_from, rcpts=rcpts)

    def delivered(self, message_id: str, count: int = 1) -> list[Delivered]:
        found = wait_for(self.sink, message_id, count)
        assert len(found) >= count, f"{message_id}: {len(found)} of {count} reached the sink"
        return [r.message for r in found]

    def assert_not_delivered(self, message_id: str, settle: float = 1.0) -> None:
        # Sendmail delivers in a background child, so an accepted message reaches the sink a
        # moment after the 250 (well under 0.1 s here); a refused one must not turn up then either.
        time.sleep(settle)
        assert self.sink.with_id(message_id) == []
        waiting = [e.queue_id for e in self.sendmail.queue() if message_id in e.control]
        assert waiting == [], f"{message_id} is in Sendmail's queue: {waiting}"

    def logs(self) -> str:
        return (f"--- sendmail log ---\n{self.sendmail.log()}\n"
                f"--- authmilter log ---\n{self.milter.log()[-4000:]}")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer, sendmail_dns: DnsServer,
        sendmail_tree: SendmailTree) -> Iterator[SendmailRig]:
    t0 = time.monotonic()
    workdir = tmp_path_factory.mktemp("e2e-sendmail")
    milter_port = free_port()
    started: list[MilterProcess] = []
    sink = SmtpSink().start()
    instance = SendmailInstance(sendmail_tree, milter_socket=f"inet:{milter_port}@127.0.0.1",
                                smtp_port=free_port(), sink_port=sink.port, dns_address=sendmail_dns.address)
    try:
        milter = start_milter(workdir, dns, milter_port, started)
        r = SendmailRig(instance, sink, milter, dns, workdir, started)
        instance.start()
        print(f"sendmail rig up in {time.monotonic() - t0:.1f}s in {instance.base}: smtp 127.0.0.1:"
              f"{instance.smtp_port}, milter 127.0.0.1:{milter_port}, sink 127.0.0.1:{sink.port}")
        yield r
    finally:
        instance.stop()
        for m in started:
            m.stop()
        sink.stop()
        instance.cleanup()


# --- helpers ---------------------------------------------------------------------------------


def sendmail_queue_id(d: Delivered) -> str:
    """The queue ID in Sendmail's own Received field ("... by sendmail.e2e.test ... id X")."""
    for value in d.headers("Received"):
        if m := re.search(r"by sendmail\.e2e\.test .*?\bid (\w+)", value, re.DOTALL):
            return m.group(1)
    raise AssertionError(f"no Received field of Sendmail's: {d.headers('Received')}")


# --- the configuration as Sendmail reads it -----------------------------------------------------


def test_sendmail_reads_the_docs_lines_as_they_are_meant(rig: SendmailRig) -> None:
    cf = rig.sendmail.cf.read_text().splitlines()
    # What the Quick check in docs/sendmail.md greps for: the X line and the Milter.macros options.
    [x_line] = [line for line in cf if line.startswith("Xauthmilter,")]
    assert "F=T" in x_line and "T=C:30s;S:60s;R:60s;E:5m" in x_line, x_line
    assert "O Milter.macros.connect=j, _, {daemon_name}, {if_name}, {if_addr}" in cf
    assert "O Milter.macros.eom={msg_id}, i" in cf
    # Sendmail's own parse (debug class 64): timeouts in seconds, macro lists whole.
    parsed = rig.sendmail.run("-d64.50", "-bt")
    out = parsed.stdout + parsed.stderr
    for timeout in ("C=30", "S=60", "R=60", "E=300"):
        assert f"Xauthmilter: {timeout}" in out, out
    assert "milter_set_option(macros.envfrom = i, {auth_type}, {auth_authen}," in out, out


# --- accepted mail ---------------------------------------------------------------------------


def test_signed_mail_is_delivered_with_our_header_on_top(rig: SendmailRig) -> None:
    mid = "<good@sender.example>"
    msg = signed("alice", mid, extra=(
        b"Authentication-Results: other.example; spf=pass smtp.mailfrom=other.example",
    ))

    reply = rig.send(msg, mail_from="alice@sender.example")

    assert (reply.stage, reply.code) == ("eom", 250), str(reply)
    [d] = rig.delivered(mid)
    [ar] = ours(d)
    assert re.search(r"\bspf=pass\b", ar) and re.search(r"\bdkim=pass\b", ar), ar
    assert re.search(r"\bdmarc=pass\b", ar) and "header.from=sender.example" in ar, ar
    # Observed: the milter's insert at index 0 lands above Sendmail's own Received field, which
    # Sendmail had passed to the milter as the first header.
    names = [n.lower() for n, _ in d.header_fields()]
    assert names[:3] == ["authentication-results", "received", "dkim-signature"], names
    assert [authserv_id(v) for v in d.headers("Authentication-Results")] == [AUTHSERV_ID, "other.example"]
    # Our field has a space after the colon, as every other field does (HDR_LEADSPC negotiated).
    assert b"\nAuthentication-Results: " in b"\n" + d.raw
    # docs/sendmail.md: the `i` macro reaches authmilter, so its log line's qid= is Sendmail's ID.
    qid = sendmail_queue_id(d)
    assert re.search(rf"qid={qid}\b", rig.milter.log()), (qid, rig.milter.log()[-2000:])


def test_forged_results_claiming_our_authserv_id_are_removed(rig: SendmailRig) -> None:
    mid = "<forged@sender.example>"
    # Two forgeries around another ADMD's field: the deletions must hit the right ones among
    # several of the same name (Sendmail counts smfi_chgheader's index per field name).
    msg = signed("alice", mid, extra=(
        b"Authentication-Results: mx.test.example; dkim=pass header.d=forged-one.example",
        b"Authentication-Results: other.example; spf=pass smtp.mailfrom=other.example",
        b"Authentication-Results: MX.TEST.EXAMPLE; dmarc=pass header.from=forged-two.example",
    ))

    reply = rig.send(msg, mail_from="alice@sender.example")

    assert (reply.stage, reply.code) == ("eom", 250), str(reply)
    [d] = rig.delivered(mid)
    assert b"forged-one" not in d.raw and b"forged-two" not in d.raw
    assert [authserv_id(v) for v in d.headers("Authentication-Results")] == [AUTHSERV_ID, "other.example"]
    assert len(ours(d)) == 1


def test_dmarc_quarantine_is_held_in_sendmails_quarantine_and_can_be_released(rig: SendmailRig) -> None:
    mid = "<held@quarantine.example>"
    msg = make_message(from_="bob@quarantine.example", to=RCPT, message_id=mid)

    reply = rig.send(msg, mail_from="bob@quarantine.example", source_ip=OUTSIDE_IP,
                     helo="mail.outside.example")

    assert (reply.stage, reply.code) == ("eom", 250), str(reply)  # quarantine is not a refusal
    rig.sendmail.wait_log(r"stat=quarantined")
    time.sleep(1.0)  # what an accepted message would need to reach the sink
    assert rig.sink.with_id(mid) == []
    [held] = [e for e in rig.sendmail.queue() if mid in e.control]
    # The control file is hf, not qf, and holds the reason on its "q" line.
    assert held.kind == "h", held
    reason = next(line[1:] for line in held.control.splitlines() if line.startswith("q"))
    assert "DMARC" in reason or "quarantine" in reason.lower(), reason
    # As docs/sendmail.md says: a plain mailq does not show it; mailq -qQ does, with its reason.
    plain = rig.sendmail.run("-bp")
    assert held.queue_id not in plain.stdout, plain.stdout
    listed = rig.sendmail.run("-bp", "-qQ")
    assert held.queue_id in listed.stdout and reason in listed.stdout, listed.stdout + listed.stderr
    rig.sendmail.wait_log(rf"{held.queue_id}: .*quarantine=")

    # The release commands docs/sendmail.md gives: un-quarantine, then deliver now.
    released = rig.sendmail.run("-qQ", "-Q", f"-qI{held.queue_id}")
    assert released.returncode == 0, released.stdout + released.stderr
    assert [e.kind for e in rig.sendmail.queue() if e.queue_id == held.queue_id] == ["q"]
    delivered = rig.sendmail.run(f"-qI{held.queue_id}")
    assert delivered.returncode == 0, delivered.stdout + delivered.stderr
    [d] = rig.delivered(mid)
    [ar] = ours(d)  # the header authmilter added before the hold goes out with the message
    assert re.search(r"\bdmarc=fail\b", ar), ar
    time.sleep(0.5)
    assert len(rig.sink.with_id(mid)) == 1
    assert [e for e in rig.sendmail.queue() if e.queue_id == held.queue_id] == []


# --- refusals --------------------------------------------------------------------------------


def test_spoof_of_p_reject_domain_gets_550_5_7_26_at_end_of_data(rig: SendmailRig) -> None:
    mid = "<spoof@sender.example>"
    msg = make_message(from_="Alice <alice@sender.example>", to=RCPT, message_id=mid)

    reply = rig.send(msg, mail_from="alice@sender.example", source_ip=OUTSIDE_IP,
                     helo="mail.outside.example")

    assert (reply.stage, reply.code) == ("eom", 550), str(reply)
    assert reply.text.split()[0] == "5.7.26" and "DMARC" in reply.text, str(reply)
    rig.assert_not_delivered(mid)


def test_two_from_fields_get_550_5_7_x(rig: SendmailRig) -> None:
    mid = "<from-duplicate@sender.example>"
    msg = make_message(from_="Alice <alice@sender.example>", to=RCPT, message_id=mid)
    msg = msg.replace(b"To:", b"From: mallory@outside.example\r\nTo:", 1)

    reply = rig.send(msg, mail_from="alice@sender.example")

    assert (reply.stage, reply.code) == ("eom", 550), str(reply)
    assert reply.text.startswith("5.7."), str(reply)
    rig.assert_not_delivered(mid)


@pytest.mark.parametrize(("domain", "fault"),
                         [("tempfail.example", "servfail"), ("slowdns.example", "timeout")])
def test_dns_failure_on_dmarc_policy_gets_451_4_7_x(rig: SendmailRig, domain: str, fault: str) -> None:
    mid = f"<temp-{fault}@{domain}>"
    msg = make_message(from_=f"carol@{domain}", to=RCPT, message_id=mid)

    t0 = time.monotonic()
    reply = rig.send(msg, mail_from=f"carol@{domain}", helo=f"mail.{domain}")
    took = time.monotonic() - t0

    # Within Sendmail's R: and E: timeouts from the docs, so the 451 is authmilter's own.
    assert (reply.stage, reply.code) == ("eom", 451), str(reply)
    assert reply.text.startswith("4.7."), str(reply)
    assert took < 30, f"{took:.1f}s"
    rig.assert_not_delivered(mid)


# --- failure of the milter -------------------------------------------------------------------


def test_while_authmilter_is_down_sendmail_tempfails_and_nothing_is_lost(rig: SendmailRig) -> None:
    mid = "<while-down@sender.example>"
    msg = signed("alice", mid)
    rig.milter.stop()
    try:
        down = rig.send(msg, mail_from="alice@sender.example")
    finally:
        rig.restart_milter()

    # F=T: Sendmail cannot reach the filter at connect and tempfails the session's commands from
    # MAIL on ("Milter: initialization failed, temp failing commands"), so the sender keeps it.
    assert (down.stage, down.code) == ("mail", 451), str(down)
    assert down.text.startswith("4.3.2"), str(down)
    rig.sendmail.wait_log(r"Milter \(authmilter\): error connecting to filter")
    rig.assert_not_delivered(mid, settle=0.2)

    # The sender's retry, now that authmilter is back, is checked and delivered, once.
    again = rig.send(msg, mail_from="alice@sender.example")

    assert (again.stage, again.code) == ("eom", 250), str(again)
    [d] = rig.delivered(mid)
    assert len(ours(d)) == 1
    time.sleep(1.0)
    assert len(rig.sink.with_id(mid)) == 1


# --- the unix socket, and what Sendmail itself looks up ----------------------------------------


def test_unix_socket_as_the_docs_give_it(rig: SendmailRig, sendmail_tree: SendmailTree,
                                         sendmail_dns: DnsServer, tmp_path: Path) -> None:
    # A second Sendmail with S=local:..., and an authmilter on socket = "unix:...": the socket
    # srwxrwx--- in a directory of mode 0750, as authmilter.service (UMask=0007,
    # RuntimeDirectoryMode=0750) makes them. Sendmail refuses to start when a directory on the
    # socket's path is group- or world-writable, so it lives under the instance's own directory.
    instance = SendmailInstance(sendmail_tree, milter_socket="local:PLACEHOLDER", smtp_port=free_port(),
                                sink_port=rig.sink.port, dns_address=sendmail_dns.address)
    run_dir = instance.base / "run"
    run_dir.mkdir(mode=0o750)
    sock = run_dir / "authmilter.sock"
    assert len(str(sock)) < 100, f"{sock}: too long for a unix socket's sun_path (108 bytes)"
    instance.milter_socket = f"local:{sock}"
    home = tmp_path / "milter-unix"
    home.mkdir()
    milter = MilterProcess(home, dns_port=rig.dns.port, authserv_id=AUTHSERV_ID,
                           extra=f'policy = ["{DEFAULT_POLICY}"]', socket_spec=f"unix:{sock}")
    try:
        milter.start()
        sock.chmod(0o770)
        with running(instance):
            mid = "<unix-socket@sender.example>"
            with SmtpClient(instance.smtp_port, source_ip=AUTHORISED_IP, helo="mail.sender.example") as c:
                reply = c.send(signed("alice", mid), mail_from="alice@sender.example", rcpts=(RCPT,))
            assert (reply.stage, reply.code) == ("eom", 250), f"{reply}\n{instance.log()}"
            [d] = rig.delivered(mid)
            [ar] = ours(d)
            assert re.search(r"\bdmarc=pass\b", ar), ar
    finally:
        milter.stop()


def test_sendmails_own_lookups_go_to_the_tests_dns_server(rig: SendmailRig, sendmail_dns: DnsServer) -> None:
    # The reverse lookup of each SMTP client goes through the libc resolver, whatever the service
    # switch says; in Sendmail's namespace that is the test's server, which answers NXDOMAIN.
    before = sendmail_dns.query_count("9.9.0.127.in-addr.arpa", "PTR")
    msg = make_message(from_="mallory@outside.example", to=RCPT, message_id="<lookup@outside.example>")
    reply = rig.send(msg, mail_from="mallory@outside.example", source_ip=OUTSIDE_IP,
                     helo="mail.outside.example")
    assert reply.code == 250, str(reply)
    assert sendmail_dns.query_count("9.9.0.127.in-addr.arpa", "PTR") > before


# --- obtaining Sendmail ------------------------------------------------------------------------

FAKE_APT = """#!/bin/sh
echo "$*" >> "{log}"
case "$*" in
  *update*) echo "W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease \
Temporary failure resolving 'deb.debian.org'"; exit 0 ;;
esac
{download}
"""


@pytest.mark.parametrize("case", ["offline", "broken"])
def test_only_an_unreachable_mirror_counts_as_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      case: str) -> None:
    # Offline: apt knows no sendmail and cannot update its lists -> the module skips. A .deb that
    # dpkg cannot unpack is a real problem -> the module fails; neither leaves a half-made cache.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "apt.log"
    download = ('echo "E: Unable to locate package sendmail-bin" >&2; exit 100' if case == "offline"
                else 'for p in "$@"; do echo junk > "${p}_1.0_all.deb"; done; exit 0')
    (bin_dir / "apt-get").write_text(FAKE_APT.format(log=calls, download=download))
    (bin_dir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    cache = tmp_path / "cache"

    with pytest.raises(SendmailUnavailable) as raised:
        obtain(cache)

    assert raised.value.offline is (case == "offline"), str(raised.value)
    assert not (cache / "current").exists()
    assert [p.name for p in cache.iterdir()] == [".lock"]
    if case == "offline":
        assert "Temporary failure resolving" in str(raised.value)
        verbs = [line.split()[3] for line in calls.read_text().splitlines()]  # after -q -o X
        assert verbs == ["download", "update"]
    else:
        assert "dpkg -x" in str(raised.value)
