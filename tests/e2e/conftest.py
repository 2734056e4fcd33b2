"""Fixtures for the end-to-end tests: Postfix installed, a DNS server, authmilter, a private Postfix.

Client addresses: Postfix tells the milter the real TCP peer address, so every SMTP session binds
its source address to a chosen loopback address (Linux routes all of 127.0.0.0/8 to lo). The
zones below list 127.0.2.0/24 as the senders' authorised outbound servers; 127.0.9.9 is an
outside host. 127.0.0.1 itself is never used for test mail: the default policy accepts it as
local submission without looking at DMARC.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import pytest

from tests.dnsserver import DnsServer
from tests.e2e.postfix import (
    Delivered,
    PostfixClash,
    PostfixInstance,
    PostfixUnavailable,
    Reply,
    SmtpClient,
    ensure_installed,
)
from tests.integration.zones import zone
from tests.mailfactory import make_message, rsa_key, sign, write_private_key
from tests.milterclient import ROOT, MilterProcess, free_port

DEFAULT_POLICY = ROOT / "policies" / "default.toml"
AUTHSERV_ID = "mx.test.example"
RCPT = "bob@rcpt.example"
AUTHORISED_IP = "127.0.2.10"  # inside every test sender's SPF record
OUTSIDE_IP = "127.0.9.9"  # inside none of them
INTERNAL_IP = "127.0.3.5"  # our own users' network: their mail is signed, not verified
INSTALL_TIMEOUT = 600.0


def sender_example() -> str:
    """Does everything right: SPF for 127.0.2.0/24, an RSA key, p=reject."""
    return zone("sender.example", f"""
@ IN TXT "v=spf1 ip4:127.0.2.0/24 -all"
mail IN A 127.0.2.10
mail IN TXT "v=spf1 ip4:127.0.2.0/24 -all"
_dmarc IN TXT "v=DMARC1; p=reject; adkim=r; aspf=r"
rsa._domainkey IN TXT {rsa_key().zone_txt()}
""")


def tempfail_example() -> str:
    """Its _dmarc name answers SERVFAIL (set as a fault on the server)."""
    return zone("tempfail.example", """
@ IN TXT "v=spf1 ip4:127.0.2.0/24 -all"
mail IN TXT "v=spf1 ip4:127.0.2.0/24 -all"
_dmarc IN TXT "v=DMARC1; p=reject"
""")


def quarantine_example() -> str:
    return zone("quarantine.example", """
@ IN TXT "v=spf1 ip4:127.0.2.0/24 -all"
_dmarc IN TXT "v=DMARC1; p=quarantine"
""")


def outside_example() -> str:
    """Where the outside host says HELO from; present so its HELO check has an answer, not REFUSED."""
    return zone("outside.example", """
mail IN A 127.0.9.9
mail IN TXT "v=spf1 ip4:127.0.9.9 -all"
""")


@pytest.fixture(scope="session", autouse=True)
def postfix_installed() -> str:
    """Installs Postfix when missing. Without it these tests fail (not skip): a suite that goes
    green without ever running its end-to-end part would hide exactly what it is for. The one
    exception is a machine with another MTA installed, which installing Postfix would remove:
    the Postfix tests skip there, saying so, and the Sendmail ones still run."""
    clash = problem = ""
    try:
        done = ensure_installed(INSTALL_TIMEOUT)
    except PostfixClash as e:
        clash = str(e)
    except PostfixUnavailable as e:
        problem = str(e)
    else:
        if done != "already installed":
            # Once per machine; shown in pytest's warnings summary so nobody wonders where it came from.
            warnings.warn(f"tests/e2e: postfix {done}", stacklevel=1)
        return done
    if clash:
        pytest.skip(clash)
    # Outside the except block, so that the report is apt's words and not a chained traceback.
    pytest.fail(f"Postfix is needed for tests/e2e and could not be installed: {problem}", pytrace=False)


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        for z in (sender_example(), tempfail_example(), quarantine_example(), outside_example()):
            server.add_zone(z)
        server.set_fault("_dmarc.tempfail.example", "servfail")
        yield server


SIGNING = """
[settings]
internal_networks = ["127.0.3.0/24"]

[keys.sender]
domain = "sender.example"
selector = "rsa"
file = "keys/sender.pem"

[[sign]]
match = ["sender.example"]
keys = ["sender"]
"""


def write_signing(home: Path) -> Path:
    """Signing for sender.example with the key its zone publishes, for mail from INTERNAL_IP."""
    keys = home / "keys"
    keys.mkdir(mode=0o700)
    write_private_key(keys / "sender.pem", rsa_key())
    (home / "signing.toml").write_text(SIGNING)
    return home / "signing.toml"


def start_milter(workdir: Path, dns: DnsServer, port: int, started: list[MilterProcess]) -> MilterProcess:
    """authmilter with the shipped default policy on 127.0.0.1:`port`, in its own directory."""
    home = workdir / f"milter{len(started)}"
    home.mkdir()
    signing = write_signing(home)
    m = MilterProcess(home, dns_port=dns.port, authserv_id=AUTHSERV_ID,
                      extra=f'policy = ["{DEFAULT_POLICY}"]\nsigning = "{signing}"', port=port)
    started.append(m)  # before start(): a process that fails to come up is still stopped
    return m.start()


@dataclass
class Rig:
    """One Postfix in front of one authmilter; `milter` is replaced when a test restarts it."""

    postfix: PostfixInstance
    milter: MilterProcess
    dns: DnsServer
    workdir: Path
    generations: list[MilterProcess] = field(default_factory=list)

    def restart_milter(self) -> MilterProcess:
        """A new authmilter process on the port Postfix is configured for."""
        self.milter.stop()
        self.milter = start_milter(self.workdir, self.dns, self.postfix.milter_port, self.generations)
        return self.milter

    def client(self, source_ip: str = AUTHORISED_IP, helo: str = "mail.sender.example") -> SmtpClient:
        return SmtpClient(self.postfix.smtp_port, source_ip=source_ip, helo=helo)

    def send(self, message: bytes, *, mail_from: str, source_ip: str = AUTHORISED_IP,
             helo: str = "mail.sender.example", rcpts: tuple[str, ...] = (RCPT,)) -> Reply:
        with self.client(source_ip, helo) as c:
            return c.send(message, mail_from=mail_from, rcpts=rcpts)

    def logs(self) -> str:
        return (f"--- postfix maillog ---\n{self.postfix.maillog()}\n"
                f"--- authmilter log ---\n{self.milter.log()[-4000:]}")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer, postfix_installed: str) -> Iterator[Rig]:
    t0 = time.monotonic()
    workdir = tmp_path_factory.mktemp("e2e")
    # Started first so its port can go into main.cf; Postfix connects to it per SMTP session.
    milter_port = free_port()
    postfix = PostfixInstance(milter_port=milter_port, smtp_port=free_port())
    started: list[MilterProcess] = []
    try:
        r = Rig(postfix, start_milter(workdir, dns, milter_port, started), dns, workdir, started)
        postfix.start()
        print(f"e2e rig up in {time.monotonic() - t0:.1f}s: postfix ({postfix_installed}) in {postfix.base}, "
              f"smtpd 127.0.0.1:{postfix.smtp_port}, milter 127.0.0.1:{milter_port}")
        yield r
    finally:
        postfix.stop()
        for m in started:
            m.stop()
        postfix.cleanup()


# --- messages and headers, for every MTA's suite ------------------------------------------------


def signed(local: str, message_id: str, *, extra: tuple[bytes, ...] = ()) -> bytes:
    """A message from LOCAL@sender.example, DKIM-signed by sender.example (From..Message-ID)."""
    msg = make_message(from_=f"Alice <{local}@sender.example>", to=RCPT, message_id=message_id,
                       extra_headers=extra)
    return sign(msg, domain="sender.example", selector="rsa", key=rsa_key())


def authserv_id(value: str) -> str:
    return value.split(";", 1)[0].strip()


def ours(d: Delivered) -> list[str]:
    return [v for v in d.headers("Authentication-Results") if authserv_id(v) == AUTHSERV_ID]


@runtime_checkable
class HasLogs(Protocol):
    def logs(self) -> str: ...


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed e2e test shows the MTA's log and authmilter's log: the reason is usually there."""
    report = yield
    rig = getattr(item, "funcargs", {}).get("rig")
    # Any rig with logs(): the Sendmail suite's rig shows Sendmail's log the same way.
    if report.failed and isinstance(rig, HasLogs):
        report.sections.append(("e2e logs", rig.logs()))
    return report
