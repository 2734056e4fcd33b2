"""Every signature authmilter makes must verify at OpenDKIM, the verifier most receivers share code with."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.interop.opendkim import OpenDkimVerifier
from tests.mailfactory import ed25519_key, make_message, rsa_key, write_private_key
from tests.milterclient import MilterProcess, passed_on

DOMAIN = "signed.example"


def signing_file(canonicalization: str) -> str:
    return f"""
[settings]
internal_networks = ["10.9.0.0/16"]
canonicalization = "{canonicalization}"

[keys.rsa]
domain = "{DOMAIN}"
selector = "rsa"
file = "keys/rsa.pem"

[keys.ed]
domain = "{DOMAIN}"
selector = "ed"
file = "keys/ed.pem"

[[sign]]
match = ["{DOMAIN}", "*.{DOMAIN}"]
keys = ["rsa", "ed"]
"""


@pytest.fixture(scope="module", params=["relaxed/relaxed", "simple/simple", "relaxed/simple"])
def signer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           opendkim: OpenDkimVerifier) -> Iterator[MilterProcess]:
    work = tmp_path_factory.mktemp("signer")
    (work / "keys").mkdir(mode=0o700)
    write_private_key(work / "keys" / "rsa.pem", rsa_key())
    write_private_key(work / "keys" / "ed.pem", ed25519_key())
    (work / "signing.toml").write_text(signing_file(request.param))
    opendkim.publish_key(DOMAIN, "rsa", rsa_key())
    opendkim.publish_key(DOMAIN, "ed", ed25519_key())
    assert opendkim.dns is not None
    m = MilterProcess(work, dns_port=opendkim.dns.port, extra=f'signing = "{work / "signing.toml"}"').start()
    yield m
    m.stop()


MESSAGES = {
    "plain": make_message(from_=f"alice@{DOMAIN}"),
    "subdomain author": make_message(from_=f"Alerts <noreply@alerts.{DOMAIN}>"),
    "folded and 8-bit headers": make_message(
        from_=f'"Ren\u00e9e" <renee@{DOMAIN}>',
        subject="a subject that goes on and on",
        extra_headers=(b"X-Note: caf\xc3\xa9", b"References: <a@x.example>\r\n\t<b@x.example>",
                       b"Cc:  two  spaces <c@x.example>")),
    "whitespace in body": make_message(from_=f"alice@{DOMAIN}",
                                       body=b"tab\there  \r\n  indented\r\n\r\n\r\n"),
    "large body": make_message(from_=f"alice@{DOMAIN}", body=b"line of text\r\n" * 8000),
}


@pytest.mark.parametrize("name", list(MESSAGES))
def test_opendkim_verifies_every_signature_we_make(signer: MilterProcess, opendkim: OpenDkimVerifier,
                                                   name: str) -> None:
    message = MESSAGES[name]
    with signer.session(client_ip="10.9.1.1") as s:
        out = s.message(message, mail_from=f"alice@{DOMAIN}")
    assert [n for _, n, _ in out.inserted] == ["DKIM-Signature", "DKIM-Signature"]
    assert opendkim.verify(passed_on(message, out)) == ["pass", "pass"]


def test_tampering_is_caught_by_opendkim(signer: MilterProcess, opendkim: OpenDkimVerifier) -> None:
    message = MESSAGES["plain"]
    with signer.session(client_ip="10.9.1.1") as s:
        out = s.message(message, mail_from=f"alice@{DOMAIN}")
    sent = passed_on(message, out)
    assert opendkim.verify(sent.replace(b"See you.", b"Send money.")) == ["fail", "fail"]
