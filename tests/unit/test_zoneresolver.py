"""The in-memory resolver the core's unit tests use: same zone text, same answer shapes."""

from __future__ import annotations

import pytest

from authmilter.core.dnsapi import DnsAnswer, DnsStatus
from tests.zoneresolver import ZoneResolver, zone_text

ZONE = zone_text(
    "example.com",
    {
        "@": ["MX 10 mx", 'TXT "v=spf1 " "-all"'],
        "mx": ["A 192.0.2.1", "AAAA 2001:db8::1"],
        "www": "CNAME mx",
        "short": "5 A 192.0.2.5",
        "deep.empty": "A 192.0.2.7",
        "xn--bcher-kva": "A 192.0.2.9",
    },
    negative_ttl=60,
)
REVERSE = zone_text("2.0.192.in-addr.arpa", {"1": "PTR mx.example.com."})


@pytest.fixture
def zr() -> ZoneResolver:
    return ZoneResolver([ZONE, REVERSE])


def test_record_shapes(zr: ZoneResolver) -> None:
    assert zr.query("example.com", "TXT") == DnsAnswer(DnsStatus.OK, ((b"v=spf1 ", b"-all"),), ttl=300)
    assert zr.query("example.com", "MX").records == ((10, "mx.example.com"),)
    assert zr.query("mx.example.com", "A").records == ("192.0.2.1",)
    assert zr.query("mx.example.com", "AAAA").records == ("2001:db8::1",)
    assert zr.query("1.2.0.192.in-addr.arpa", "PTR").records == ("mx.example.com",)
    assert zr.query("short.example.com", "A").ttl == 5


def test_names_cname_and_idna(zr: ZoneResolver) -> None:
    assert zr.query("WWW.Example.com.", "a").records == ("192.0.2.1",)
    assert zr.query("bücher.example.com", "A").records == ("192.0.2.9",)


def test_negative_answers(zr: ZoneResolver) -> None:
    assert zr.query("nope.example.com", "A") == DnsAnswer(DnsStatus.NXDOMAIN, ttl=60)
    assert zr.query("mx.example.com", "TXT") == DnsAnswer(DnsStatus.NODATA, ttl=60)
    assert zr.query("empty.example.com", "A").status is DnsStatus.NODATA
    assert zr.query("a..example.com", "A") == DnsAnswer(DnsStatus.NXDOMAIN, error="invalid name")


@pytest.mark.parametrize("fault", ["timeout", "servfail", "garbage"])
def test_faults_are_temperror(zr: ZoneResolver, fault: str) -> None:
    zr.set_fault("MX.example.com", fault)
    assert zr.query("mx.example.com", "A") == DnsAnswer(DnsStatus.TEMPERROR, error=fault)
    zr.set_fault("mx.example.com", None)
    assert zr.query("mx.example.com", "A").ok


def test_outside_every_zone_is_nxdomain_and_refused_is_a_fault(zr: ZoneResolver) -> None:
    assert zr.query("example.net", "A").status is DnsStatus.NXDOMAIN
    zr.set_fault("example.net", "refused")
    assert zr.query("example.net", "A").status is DnsStatus.TEMPERROR


def test_zones_can_be_replaced_and_queries_are_counted(zr: ZoneResolver) -> None:
    zr.set_zone(zone_text("example.com", {"mx": "A 192.0.2.99"}))
    assert zr.query("mx.example.com", "A").records == ("192.0.2.99",)
    assert zr.query("1.2.0.192.in-addr.arpa", "PTR").status is DnsStatus.NXDOMAIN  # zone replaced
    assert zr.query_count("mx.example.com", "A") == 1
    with pytest.raises(ValueError):
        zr.set_fault("x.example.com", "explode")


def test_cname_loop_is_nodata_and_an_endless_chain_temperror() -> None:
    zr = ZoneResolver([zone_text("example.com", {
        "loop": "CNAME loop2",
        "loop2": "CNAME Loop",
        **{f"hop{i}": f"CNAME hop{i + 1}" for i in range(12)},
        "hop12": "A 192.0.2.12",
    })])
    for name in ("loop.example.com", "loop2.example.com"):
        assert zr.query(name, "A") == DnsAnswer(DnsStatus.NODATA, error="CNAME loop")
    assert zr.query("loop.example.com", "CNAME").records == ("loop2.example.com.",)
    assert zr.query("hop0.example.com", "A") == DnsAnswer(DnsStatus.TEMPERROR, error="SERVFAIL")
    assert zr.query("hop6.example.com", "A").records == ("192.0.2.12",)
