"""The HELO facts: syntax (RFC 5321 sections 4.1.2 and 4.1.3), FQDN, bare addresses, literals
that are not the client's address, and names or addresses that are ours."""

from __future__ import annotations

import pytest

from authmilter.core.checks.helo import check_helo

CLIENT = "192.0.2.10"
OURS = {"our_names": ("mx.test.example", "not a host name;"),
        "our_addresses": ("198.51.100.1", "2001:db8::1")}

# (HELO, syntax_ok, fqdn, bare_ip, literal, literal_mismatch, is_ours)
CASES = [
    ("mail.example.org", True, True, False, False, False, False),
    ("  Mail.Example.ORG ", True, True, False, False, False, False),
    ("b\u00fccher.example", True, True, False, False, False, False),  # RFC 6531: U-labels allowed
    ("localhost", True, False, False, False, False, False),
    ("mail.example.org.", False, False, False, False, False, False),  # no trailing dot in a Domain
    ("mail_server.example.org", False, False, False, False, False, False),
    ("-bad.example.org", False, False, False, False, False, False),
    ("host.123", False, False, False, False, False, False),  # an all-digit TLD is no host name
    ("1.2.3", False, False, False, False, False, False),
    ("", False, False, False, False, False, False),
    ("[192.0.2.10]", True, False, False, True, False, False),
    ("[192.0.2.77]", True, False, False, True, True, False),
    ("[192.000.002.010]", True, False, False, True, False, False),  # Snum allows leading zeros
    ("[192.0.2.256]", False, False, False, False, False, False),
    ("[192.0.2]", False, False, False, False, False, False),
    ("[IPv6:::ffff:192.0.2.10]", True, False, False, True, False, False),  # mapped: the same client
    ("[ipv6:2001:db8::77]", True, False, False, True, True, False),
    ("[IPv6:fe80::1%eth0]", False, False, False, False, False, False),  # no zone ids in a literal
    ("[2001:db8::77]", False, False, False, False, False, False),  # the tag is required
    ("[x400:whatever]", False, False, False, False, False, False),  # no other tag is standardized
    ("192.0.2.10", False, False, True, False, False, False),
    ("192.0.2.77", False, False, True, False, True, False),
    ("2001:db8::77", False, False, True, False, True, False),
    ("mx.test.example", True, True, False, False, False, True),
    ("MX.Test.Example", True, True, False, False, False, True),
    ("[198.51.100.1]", True, False, False, True, True, True),
    ("[IPv6:2001:db8:0::1]", True, False, False, True, True, True),
    ("198.51.100.1", False, False, True, False, True, True),
]


@pytest.mark.parametrize(("helo", "syntax_ok", "fqdn", "bare_ip", "literal", "mismatch", "ours"), CASES,
                         ids=[c[0] or "(empty)" for c in CASES])
def test_flags(helo: str, syntax_ok: bool, fqdn: bool, bare_ip: bool, literal: bool, mismatch: bool,
               ours: bool) -> None:
    r = check_helo(helo, CLIENT, **OURS)
    assert (r.syntax_ok, r.fqdn, r.bare_ip, r.literal, r.literal_mismatch, r.is_ours) == (
        syntax_ok, fqdn, bare_ip, literal, mismatch, ours)
    assert r.helo == helo.strip()
    # Anything but a stranger's FQDN or its own address literal is explained.
    plain = (fqdn or (literal and not mismatch)) and not ours
    assert bool(r.reason) is not plain


def test_reasons_say_what_is_wrong() -> None:
    assert check_helo("192.0.2.10", CLIENT).reason == (
        "an IP address without the brackets of an address literal")
    assert check_helo("[192.0.2.77]", CLIENT).reason == (
        "the address 192.0.2.77 is not the client's (192.0.2.10)")
    assert check_helo("localhost", CLIENT).reason == "not a fully qualified domain name"
    assert check_helo("", CLIENT).reason == "no HELO name"
    assert check_helo("mx.test.example", CLIENT, our_names=("mx.test.example",)).reason == "our own name"


@pytest.mark.parametrize("client", ["::ffff:192.0.2.10", "[192.0.2.10]", "IPv6:::ffff:192.0.2.10"])
def test_the_client_address_is_compared_in_its_normal_form(client: str) -> None:
    assert check_helo("[192.0.2.10]", client).literal_mismatch is False
    assert check_helo("[192.0.2.11]", client).literal_mismatch is True


def test_without_a_client_address_no_mismatch_is_claimed() -> None:
    r = check_helo("[192.0.2.77]", None)
    assert (r.literal, r.literal_mismatch) == (True, False)


def test_nothing_is_ours_unless_we_are_told_who_we_are() -> None:
    assert check_helo("mx.test.example", CLIENT).is_ours is False
    assert check_helo("[198.51.100.1]", CLIENT, our_addresses=("", "junk")).is_ours is False
