"""iprev and the HELO facts through a real `authmilter serve`, with PTR zones on the real DNS server:
early refusal at MAIL FROM, one lookup per connection, Authentication-Results, the log line, and
the shipped default policy, which acts on none of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dnsserver import DnsServer
from tests.integration.zones import example_org, reverse_dns
from tests.mailfactory import make_message, rsa_key, sign
from tests.milterclient import ROOT, MilterProcess

AR = "Authentication-Results"
PTR_10 = "10.2.0.192.in-addr.arpa"

POLICY = """
[[rules]]
name = "no-rdns"
when = { iprev = ["fail", "permerror"] }
stage = "mail"
action = "reject"
reply = { code = "550", status = "5.7.25", text = "Reverse DNS of your address does not confirm" }

[[rules]]
name = "helo-is-ours"
when = { helo_is_ours = true }
stage = "mail"
action = "reject"
"""


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.add_zone(example_org())
        for text in reverse_dns():
            server.add_zone(text)
        server.set_fault("30.2.0.192.in-addr.arpa", "servfail")
        yield server


def start(workdir: Path, dns: DnsServer, policy: Path) -> MilterProcess:
    m = MilterProcess(workdir, dns_port=dns.port, extra=f'policy = ["{policy}"]')
    # No DNS cache: every lookup the milter makes reaches the server, where the test counts it.
    m.config.write_text(m.config.read_text() + "cache_size = 0\n")
    return m.start()


@pytest.fixture(scope="module")
def milter(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer) -> Iterator[MilterProcess]:
    workdir = tmp_path_factory.mktemp("antispam")
    policy = workdir / "antispam.toml"
    policy.write_text(POLICY)
    m = start(workdir, dns, policy)
    yield m
    m.stop()


@pytest.fixture(scope="module")
def default_milter(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer) -> Iterator[MilterProcess]:
    m = start(tmp_path_factory.mktemp("default"), dns, ROOT / "policies" / "default.toml")
    yield m
    m.stop()


def signed() -> bytes:
    return sign(make_message(), domain="example.org", selector="rsa", key=rsa_key())


def the_ar(inserted: list[tuple[int, str, str]]) -> str:
    ours = [v for _, n, v in inserted if n == AR]
    assert len(ours) == 1, inserted
    return ours[0]


def log_line(m: MilterProcess, qid: str) -> str:
    return next(x for x in m.log().splitlines() if f"qid={qid}" in x and "action=" in x)


@pytest.mark.parametrize(("client_ip", "iprev"), [("203.0.113.5", "permerror"), ("192.0.2.20", "fail")])
def test_iprev_rule_refuses_at_mail_from(milter: MilterProcess, client_ip: str, iprev: str) -> None:
    qid = f"NORDNS{iprev.upper()}"
    with milter.session(client_ip=client_ip, helo="mail.rdns.example") as s:
        out = s.message(signed(), mail_from="alice@example.org", queue_id=qid)
    assert (out.action, out.stage) == ("reject", "mail")
    assert out.reply == "550 5.7.25 Reverse DNS of your address does not confirm"
    line = log_line(milter, qid)
    assert "stage=mail" in line and "rule=no-rdns" in line and f"iprev={iprev}" in line


def test_confirmed_client_passes_with_one_lookup_per_connection(milter: MilterProcess,
                                                                dns: DnsServer) -> None:
    dns.reset_counts()
    with milter.session(client_ip="192.0.2.10", helo="mail.rdns.example") as s:
        first = s.message(signed(), mail_from="alice@example.org", queue_id="PASS1")
        second = s.message(signed(), mail_from="alice@example.org", queue_id="PASS2")
    for out in (first, second):
        assert out.action == "accept"
        assert "iprev=pass policy.iprev=192.0.2.10 (mail.rdns.example);" in the_ar(out.inserted)
    # Two messages, one PTR and one A lookup: the connection kept the result (no DNS cache here).
    assert dns.query_count(PTR_10, "PTR") == 1
    assert dns.query_count("mail.rdns.example", "A") == 1
    assert "iprev=pass:mail.rdns.example" in log_line(milter, "PASS2")
    with milter.session(client_ip="192.0.2.10", helo="mail.rdns.example") as s:
        assert s.message(signed(), mail_from="alice@example.org", queue_id="PASS3").action == "accept"
    assert dns.query_count(PTR_10, "PTR") == 2  # a new connection asks again


def test_a_temperror_is_not_refused(milter: MilterProcess) -> None:
    with milter.session(client_ip="192.0.2.30", helo="mail.rdns.example") as s:
        out = s.message(signed(), mail_from="alice@example.org", queue_id="TEMP1")
    assert (out.action, out.stage) == ("accept", "eom")
    assert "iprev=temperror" in the_ar(out.inserted) and "policy.iprev=192.0.2.30" in the_ar(out.inserted)


def test_ipv6_client_is_confirmed_by_aaaa(milter: MilterProcess) -> None:
    with milter.session(client_ip="2001:db8::25", helo="mail6.rdns.example") as s:
        out = s.message(signed(), mail_from="alice@example.org", queue_id="SIX1")
    assert out.action == "accept"
    assert 'iprev=pass policy.iprev="2001:db8::25" (mail6.rdns.example);' in the_ar(out.inserted)


@pytest.mark.parametrize("helo", ["MX.test.example", "[198.51.100.1]"])
def test_helo_claiming_to_be_us_is_refused_at_mail_from(milter: MilterProcess, helo: str) -> None:
    qid = "OURSLITERAL" if helo.startswith("[") else "OURSNAME"
    with milter.session(client_ip="192.0.2.10", helo=helo, macros={"{daemon_addr}": "198.51.100.1"}) as s:
        out = s.message(signed(), mail_from="alice@example.org", queue_id=qid)
    assert (out.action, out.stage) == ("reject", "mail")
    assert out.reply is not None and out.reply.startswith("550 5.7.1 ")
    line = log_line(milter, qid)
    assert "rule=helo-is-ours" in line and "helo_flags=" in line and "ours" in line


def test_a_new_ehlo_on_the_connection_is_judged_again(milter: MilterProcess) -> None:
    from miltertest import constants as C

    with milter.session(client_ip="192.0.2.10", helo="mail.rdns.example") as s:
        assert s.message(signed(), mail_from="alice@example.org", queue_id="EHLO1").action == "accept"
        r = s.conn.send_ar(C.SMFIC_HELO, helo="mx.test.example")  # as after STARTTLS
        assert r[0] == C.SMFIR_CONTINUE
        again = s.message(signed(), mail_from="alice@example.org", queue_id="EHLO2")
    assert (again.action, again.stage) == ("reject", "mail")


# --- the shipped default policy acts on none of it -------------------------------------------------


@pytest.mark.parametrize(("client_ip", "helo", "iprev", "flags"), [
    ("203.0.113.5", "203.0.113.5", "permerror", "bare-ip"),
    ("192.0.2.20", "mx.test.example", "fail", "ours"),
    ("192.0.2.20", "[192.0.2.99]", "fail", "literal-mismatch"),
    ("192.0.2.30", "localhost", "temperror", "not-fqdn"),
])
def test_default_policy_accepts_whatever_rdns_and_helo_say(default_milter: MilterProcess, client_ip: str,
                                                          helo: str, iprev: str, flags: str) -> None:
    qid = f"DEF{client_ip.replace('.', '')}{len(helo)}"
    with default_milter.session(client_ip=client_ip, helo=helo) as s:
        out = s.message(signed(), mail_from="alice@example.org", queue_id=qid)
    assert (out.action, out.stage, out.reply) == ("accept", "eom", None)
    assert f"iprev={iprev}" in the_ar(out.inserted)
    line = log_line(default_milter, qid)
    assert f"iprev={iprev}" in line and f"helo_flags={flags}" in line and "rule=" not in line
