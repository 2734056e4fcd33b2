"""Outbound signing through the real milter: who is signed, with which keys, and that it verifies."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest

from authmilter.core.checks.dkim import verify_dkim
from tests.dnsserver import DnsServer
from tests.integration.zones import zone
from tests.mailfactory import Key, ed25519_key, make_message, rsa_key, write_private_key
from tests.milterclient import ROOT, MilterProcess, passed_on
from tests.zoneresolver import ZoneResolver

DOMAIN = "signer.example"


def signer_zone(rsa: Key, ed: Key) -> str:
    return zone(DOMAIN, f"""
@ IN TXT "v=spf1 ip4:198.51.100.0/24 -all"
_dmarc IN TXT "v=DMARC1; p=reject"
rsa2026._domainkey IN TXT {rsa.zone_txt()}
ed2026._domainkey IN TXT {ed.zone_txt()}
""")


SIGNING = """
[settings]
authenticated = true
internal_networks = ["10.1.0.0/16"]
daemons = ["submission"]

[keys.rsa]
domain = "signer.example"
selector = "rsa2026"
file = "keys/rsa.pem"

[keys.ed]
domain = "signer.example"
selector = "ed2026"
file = "keys/ed.pem"

[keys.gone]
domain = "broken.example"
selector = "s1"
file = "keys/missing.pem"

[[sign]]
match = ["signer.example", "*.signer.example"]
keys = ["rsa", "ed"]

[[sign]]
match = ["broken.example"]
keys = ["gone"]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DnsServer, MilterProcess]]:
    work = tmp_path_factory.mktemp("signing")
    keys = work / "keys"
    keys.mkdir(mode=0o700)
    write_private_key(keys / "rsa.pem", rsa_key())
    write_private_key(keys / "ed.pem", ed25519_key())
    (work / "signing.toml").write_text(SIGNING)
    with DnsServer() as dns:
        dns.add_zone(signer_zone(rsa_key(), ed25519_key()))
        extra = f'signing = "{work / "signing.toml"}"\npolicy = "{ROOT / "policies" / "default.toml"}"'
        m = MilterProcess(work, dns_port=dns.port, extra=extra).start()
        try:
            yield dns, m
        finally:
            m.stop()


def zone_resolver() -> ZoneResolver:
    return ZoneResolver([signer_zone(rsa_key(), ed25519_key())])


def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes | None:
    text = name.decode() if isinstance(name, bytes) else name
    answer = zone_resolver().query(text.rstrip("."), "TXT")
    return answer.txt_strings()[0] if answer.ok else None


def msg() -> bytes:
    return make_message(from_="Alice <alice@signer.example>", subject="Quarterly figures",
                        extra_headers=(b"X-Eight-Bit: caf\xc3\xa9",))


def test_authenticated_client_gets_rsa_and_ed25519_signatures_that_verify(
        setup: tuple[DnsServer, MilterProcess]) -> None:
    _, m = setup
    with m.session(client_ip="203.0.113.50") as s:
        out = s.message(msg(), mail_from="alice@signer.example", auth_user="alice")
    sigs = [v for _, n, v in out.inserted if n == "DKIM-Signature"]
    assert out.action == "accept" and len(sigs) == 2
    assert all(v.startswith(" v=1;") for v in sigs)  # one space after the colon, as HDR_LEADSPC wants
    final = passed_on(msg(), out)
    results = verify_dkim(final, zone_resolver())
    assert sorted((r.result, r.algorithm) for r in results) == [
        ("pass", "ed25519-sha256"), ("pass", "rsa-sha256")]
    # dkimpy's own verifier agrees, for each signature
    d = dkim.DKIM(final)
    assert d.verify(idx=0, dnsfunc=dnsfunc) and d.verify(idx=1, dnsfunc=dnsfunc)


def test_internal_network_and_submission_daemon_are_signed_strangers_are_not(
        setup: tuple[DnsServer, MilterProcess]) -> None:
    _, m = setup
    with m.session(client_ip="10.1.2.3") as s:
        internal = s.message(msg(), mail_from="alice@signer.example")
    with m.session(client_ip="203.0.113.50", macros={"{daemon_name}": "submission"}) as s:
        submission = s.message(msg(), mail_from="alice@signer.example")
    with m.session(client_ip="203.0.113.50") as s:
        stranger = s.message(msg(), mail_from="alice@signer.example")
    assert len([n for _, n, _ in internal.inserted if n == "DKIM-Signature"]) == 2
    assert len([n for _, n, _ in submission.inserted if n == "DKIM-Signature"]) == 2
    # A stranger using our p=reject domain is verified, not signed, and the policy refuses it.
    assert stranger.action == "reject" and stranger.reply is not None and "5.7.26" in stranger.reply
    assert not [n for _, n, _ in stranger.inserted if n == "DKIM-Signature"]
    assert "outbound=internal" in m.log() and "signing=signed" in m.log()


def test_oversigning_blocks_a_header_added_after_signing(setup: tuple[DnsServer, MilterProcess]) -> None:
    _, m = setup
    with m.session(client_ip="10.1.2.3") as s:
        out = s.message(msg(), mail_from="alice@signer.example")
    final = passed_on(msg(), out)
    assert {r.result for r in verify_dkim(final, zone_resolver())} == {"pass"}
    head, body = final.split(b"\r\n\r\n", 1)
    tampered = head + b"\r\nSubject: Please wire the money" + b"\r\n\r\n" + body
    assert {r.result for r in verify_dkim(tampered, zone_resolver())} == {"fail"}
    assert not dkim.DKIM(tampered).verify(idx=0, dnsfunc=dnsfunc)


def test_unavailable_key_tempfails_instead_of_sending_unsigned(
        setup: tuple[DnsServer, MilterProcess]) -> None:
    _, m = setup
    with m.session(client_ip="10.1.2.3") as s:
        out = s.message(make_message(from_="bob@broken.example"), mail_from="bob@broken.example")
    assert out.action == "tempfail" and out.reply is not None and out.reply.startswith("451 4.7.")
    assert "missing.pem" in m.log()  # reported at load, with the file
    assert "PRIVATE KEY" not in m.log()


def test_no_table_entry_is_sent_unsigned_and_logged(setup: tuple[DnsServer, MilterProcess]) -> None:
    _, m = setup
    with m.session(client_ip="10.1.2.3") as s:
        out = s.message(make_message(from_="carol@elsewhere.example"), mail_from="carol@elsewhere.example",
                        queue_id="NOENTRY1")
    assert out.action == "accept" and not [n for _, n, _ in out.inserted if n == "DKIM-Signature"]
    line = next(x for x in m.log().splitlines() if "qid=NOENTRY1" in x)
    assert "signing=no-entry" in line


def test_message_without_from_is_refused_not_sent_unsigned(setup: tuple[DnsServer, MilterProcess]) -> None:
    _, m = setup
    no_from = make_message().replace(b"From: Alice <alice@example.org>\r\n", b"")
    with m.session(client_ip="10.1.2.3") as s:
        out = s.message(no_from, mail_from="alice@signer.example")
    assert out.action == "reject" and out.reply is not None and out.reply.startswith("550 5.7.1 ")


def test_key_rotation_is_a_reload(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    write_private_key(keys / "rsa.pem", rsa_key())
    write_private_key(keys / "ed.pem", ed25519_key())
    signing = tmp_path / "signing.toml"
    signing.write_text(SIGNING)
    with DnsServer() as dns:
        m = MilterProcess(tmp_path, dns_port=dns.port, extra=f'signing = "{signing}"').start()
        assert m.proc is not None
        try:
            with m.session(client_ip="10.1.2.3") as s:
                before = s.message(msg(), mail_from="alice@signer.example")
            # The new selector goes live: only the Ed25519 key, under a new name.
            signing.write_text(SIGNING.replace('selector = "ed2026"', 'selector = "ed2027"')
                               .replace('keys = ["rsa", "ed"]', 'keys = ["ed"]'))
            os.kill(m.proc.pid, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "generation 2" not in m.log() and time.monotonic() < deadline:
                time.sleep(0.05)
            with m.session(client_ip="10.1.2.3") as s:
                after = s.message(msg(), mail_from="alice@signer.example")
        finally:
            m.stop()
    selectors = [[re.search(r"\bs=([\w.-]+)", v).group(1)  # type: ignore[union-attr]
                  for _, n, v in out.inserted if n == "DKIM-Signature"] for out in (before, after)]
    assert sorted(selectors[0]) == ["ed2026", "rsa2026"]
    assert selectors[1] == ["ed2027"]
