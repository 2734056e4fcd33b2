"""check_spf through authmilter.dns against the real DNS server on 127.0.0.1 (tests.dnsserver).

The same zones as the zone-resolver cases in tests/unit/test_spf.py (tests.spfzones): what
pyspf asks must survive our name conversion, the cache and dnspython on the wire.
"""

from __future__ import annotations

import pytest

from authmilter.core.checks.spf import check_spf
from authmilter.dns import DnsCache, DnsResolver
from tests.dnsserver import DnsServer
from tests.spfzones import LABELS_NAME, LOOP_ZONES, MACRO_MANIA_NAME, MACRO_ZONE


@pytest.fixture(params=["uncached", "cached"])
def resolver(request: pytest.FixtureRequest, dns_server: DnsServer) -> DnsResolver:
    for text in (MACRO_ZONE, *LOOP_ZONES):
        dns_server.add_zone(text)
    cache = DnsCache() if request.param == "cached" else None
    return DnsResolver(["127.0.0.1"], port=dns_server.port, timeout=0.5, cache=cache)


def test_macro_mania_in_domain(dns_server: DnsServer, resolver: DnsResolver) -> None:
    for _ in range(2):  # the second time from the cache, when there is one
        res = check_spf("192.0.2.1", "mail.macro.example", "test@e1a.macro.example", resolver)
        assert res.effective.result == "pass", res.effective
    asked = dns_server.query_count(MACRO_MANIA_NAME, "A")
    assert asked == (1 if resolver.cache is not None else 2)
    res = check_spf("192.0.2.99", "mail.macro.example", "test@e1a.macro.example", resolver)
    assert res.effective.result == "fail"


def test_labels_of_percent_and_space_are_asked_for_exactly(
    dns_server: DnsServer, resolver: DnsResolver
) -> None:
    res = check_spf("192.0.2.1", "mail.macro.example", "test@labels.macro.example", resolver)
    assert res.effective.result == "pass", res.effective
    assert dns_server.query_count(LABELS_NAME, "A") == 1
    other = check_spf("192.0.2.1", "mail.macro.example", "other@labels.macro.example", resolver)
    assert other.effective.result == "fail", other.effective
    assert dns_server.query_count(LABELS_NAME.replace("test.", "other.", 1), "A") == 1


@pytest.mark.parametrize(
    ("ip", "mail_from", "result"),
    [
        ("192.0.2.4", "postmaster@loop.example", "neutral"),  # RFC 7208 test suite: ptr-cname-loop
        ("192.0.2.4", "postmaster@next.loop.example", "pass"),
        ("192.0.2.5", "postmaster@both.loop.example", "pass"),
    ],
)
def test_ptr_target_in_a_cname_loop_is_skipped(
    dns_server: DnsServer, resolver: DnsResolver, ip: str, mail_from: str, result: str
) -> None:
    res = check_spf(ip, "loop.example", mail_from, resolver, check_helo=False)
    assert res.effective.result == result, res.effective
    assert dns_server.query_count("loop4.loop.example", "A") == 1


@pytest.mark.parametrize("fault", ["servfail", "timeout"])
def test_ptr_target_that_cannot_be_asked_is_still_temperror(
    dns_server: DnsServer, resolver: DnsResolver, fault: str
) -> None:
    dns_server.set_fault("slow.loop.example", fault)
    res = check_spf("192.0.2.6", "loop.example", "postmaster@loop.example", resolver)
    assert res.effective.result == "temperror", res.effective
