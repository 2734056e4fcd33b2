"""The greylisting triplet key (authmilter.core.checks.greylist)."""

from __future__ import annotations

import pytest

from authmilter.core.checks.greylist import greylist_key, normalize_sender


@pytest.mark.parametrize(("first", "retry"), [
    ("192.0.2.10", "192.0.2.200"),          # same /24
    ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9"),  # same /64
    ("::ffff:192.0.2.10", "192.0.2.11"),   # mapped IPv4 is IPv4
])
def test_a_retry_from_the_same_network_is_the_same_triplet(first: str, retry: str) -> None:
    assert greylist_key(first, "a@example.org", "bob@example.com") == \
        greylist_key(retry, "a@example.org", "bob@example.com")


@pytest.mark.parametrize(("first", "retry"), [
    ("192.0.2.10", "192.0.3.10"),
    ("2001:db8:1:2::1", "2001:db8:1:3::1"),
])
def test_another_network_is_another_triplet(first: str, retry: str) -> None:
    assert greylist_key(first, "a@example.org", "bob@example.com") != \
        greylist_key(retry, "a@example.org", "bob@example.com")


def test_an_spf_pass_domain_stands_for_the_network() -> None:
    a = greylist_key("192.0.2.10", "a@example.org", "bob@example.com", spf_pass_domain="Example.ORG")
    b = greylist_key("198.51.100.7", "a@example.org", "bob@example.com", spf_pass_domain="example.org")
    assert a == b and a.startswith("spf:example.org ")
    off = greylist_key("198.51.100.7", "a@example.org", "bob@example.com", spf_pass_domain="example.org",
                       by_spf_domain=False)
    assert off.startswith("198.51.100.0/24 ")


@pytest.mark.parametrize(("raw", "expected"), [
    ("<>", ""),
    ("", ""),
    ("Alice@Example.ORG", "alice@example.org"),
    ("prvs=1234abcd=alice@example.org", "alice@example.org"),
    ("bounce-12345-678@lists.example.org", "bounce-#-#@lists.example.org"),
    ("<a@B\u00fccher.example>", "a@xn--bcher-kva.example"),
])
def test_sender_normalisation(raw: str, expected: str) -> None:
    assert normalize_sender(raw) == expected


def test_verp_retries_match_and_recipients_do_not() -> None:
    first = greylist_key("192.0.2.1", "bounce-1001@lists.example.org", "Bob@Example.com")
    retry = greylist_key("192.0.2.1", "bounce-1002@lists.example.org", "bob@example.com")
    other = greylist_key("192.0.2.1", "bounce-1002@lists.example.org", "carol@example.com")
    assert first == retry != other


def test_null_sender_and_missing_ip_have_their_own_slot() -> None:
    assert greylist_key("", "<>", "bob@example.com") == "noip <> bob@example.com"
