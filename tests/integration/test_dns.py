"""authmilter.dns against a real DNS server on 127.0.0.1 (tests.dnsserver)."""

from __future__ import annotations

import selectors
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

import tests.zoneresolver
from authmilter.core.dnsapi import DnsAnswer, DnsStatus
from authmilter.dns import DnsCache, DnsResolver
from tests.dnsserver import DnsServer
from tests.zoneresolver import zone_text

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 0.5
# dnspython's back-off between retry rounds can add up to 0.2 s to a dead server's lifetime.
SLACK = 0.35


def _long_txt(tag: str, count: int) -> list[str]:
    return [f'TXT "{tag}{i}{"x" * 240}" "{"y" * 250}"' for i in range(count)]


ZONE = zone_text(
    "example.com",
    {
        "@": [
            "MX 10 mx",
            "MX 20 mx2.example.net.",
            'TXT "v=spf1 " "ip4:192.0.2.0/24 " "-all"',
            'TXT "other"',
        ],
        "mx": ["A 192.0.2.1", "AAAA 2001:db8::1"],
        "www": "CNAME mx",
        "offsite": "CNAME mail.example.org.",
        "dangling": "CNAME gone",
        "loop": "CNAME loop2",
        "loop2": "CNAME LOOP",  # back to the start, in another case
        "self": "CNAME self",
        **{f"hop{i}": f"CNAME hop{i + 1}" for i in range(17)},  # 17 CNAMEs, no loop
        "hop17": "A 192.0.2.17",
        "nullmx": "MX 0 .",
        "short": "5 A 192.0.2.5",
        "zero": "0 A 192.0.2.6",
        "deep.empty": "A 192.0.2.7",
        "xn--bcher-kva": "A 192.0.2.9",
        "mid": _long_txt("mid", 2),  # over 512 octets, under our EDNS size of 1232
        "big": _long_txt("big", 6),  # over 1232 octets: only TCP can carry it
    },
    negative_ttl=60,
)
OTHER = zone_text("example.org", {"mail": "A 198.51.100.1"}, negative_ttl=30)
REVERSE = zone_text("2.0.192.in-addr.arpa", {"1": "PTR mx.example.com."})
NO_SOA = zone_text("nosoa.test", {"a": "A 192.0.2.10"}, soa=False)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server(dns_server: DnsServer) -> DnsServer:
    for text in (ZONE, OTHER, REVERSE, NO_SOA):
        dns_server.add_zone(text)
    return dns_server


def resolver(server: DnsServer, cache: DnsCache | None = None, timeout: float = 2.0) -> DnsResolver:
    return DnsResolver(["127.0.0.1"], port=server.port, timeout=timeout, cache=cache)


# -- record types ------------------------------------------------------------------------------


def test_a_and_aaaa(server: DnsServer) -> None:
    r = resolver(server)
    assert r.query("mx.example.com", "A") == DnsAnswer(DnsStatus.OK, ("192.0.2.1",), ttl=300)
    assert r.query("mx.example.com", "AAAA") == DnsAnswer(DnsStatus.OK, ("2001:db8::1",), ttl=300)


def test_mx_without_trailing_dots(server: DnsServer) -> None:
    answer = resolver(server).query("example.com", "MX")
    assert answer.ok
    assert sorted(answer.records) == [(10, "mx.example.com"), (20, "mx2.example.net")]


def test_null_mx_exchange_is_empty(server: DnsServer) -> None:
    assert resolver(server).query("nullmx.example.com", "MX").records == ((0, ""),)


def test_ptr(server: DnsServer) -> None:
    answer = resolver(server).query("1.2.0.192.in-addr.arpa", "PTR")
    assert answer == DnsAnswer(DnsStatus.OK, ("mx.example.com",), ttl=300)


def test_txt_keeps_character_strings_and_every_record(server: DnsServer) -> None:
    answer = resolver(server).query("example.com", "TXT")
    assert answer.ok
    assert sorted(answer.records) == [(b"other",), (b"v=spf1 ", b"ip4:192.0.2.0/24 ", b"-all")]
    assert sorted(answer.txt_strings()) == [b"other", b"v=spf1 ip4:192.0.2.0/24 -all"]


def test_ttl_is_the_rrset_ttl(server: DnsServer) -> None:
    assert resolver(server).query("short.example.com", "A").ttl == 5


# -- CNAMEs ------------------------------------------------------------------------------------


def test_cname_is_followed(server: DnsServer) -> None:
    assert resolver(server).query("www.example.com", "A").records == ("192.0.2.1",)


def test_cname_into_another_zone(server: DnsServer) -> None:
    assert resolver(server).query("offsite.example.com", "A").records == ("198.51.100.1",)


def test_cname_to_nothing_is_nxdomain(server: DnsServer) -> None:
    assert resolver(server).query("dangling.example.com", "A").status is DnsStatus.NXDOMAIN


def test_server_answers_a_cname_loop_with_its_cnames(server: DnsServer) -> None:
    query = dns.message.make_query("loop.example.com", "A")
    reply = dns.query.udp(query, "127.0.0.1", port=server.port, timeout=2)
    assert reply.rcode() == dns.rcode.NOERROR
    # Lower case on the wire: name compression points "LOOP" at the owner spelled "loop".
    assert [rrset.to_text().lower().split() for rrset in reply.answer] == [
        ["loop.example.com.", "300", "in", "cname", "loop2.example.com."],
        ["loop2.example.com.", "300", "in", "cname", "loop.example.com."],
    ]


@pytest.mark.parametrize("name", ["loop.example.com", "LOOP2.example.com", "self.example.com"])
@pytest.mark.parametrize("rdtype", ["A", "AAAA", "TXT"])
def test_cname_loop_is_nodata_not_temperror(server: DnsServer, name: str, rdtype: str) -> None:
    assert resolver(server).query(name, rdtype) == DnsAnswer(DnsStatus.NODATA, error="CNAME loop")


def test_cname_loop_is_not_cached(server: DnsServer) -> None:
    r = resolver(server, DnsCache())
    for _ in range(2):
        assert r.query("loop.example.com", "A").status is DnsStatus.NODATA
    assert server.query_count("loop.example.com", "A") == 2


def test_servfail_for_a_looping_name_stays_temperror(server: DnsServer) -> None:
    # What a recursive resolver that refuses loops sends: it cannot be told from other SERVFAILs.
    server.set_fault("loop.example.com", "servfail")
    assert resolver(server).query("loop.example.com", "A").status is DnsStatus.TEMPERROR


@pytest.mark.parametrize("server_limit", [tests.zoneresolver.MAX_CHAIN, 20])
def test_long_cname_chain_without_loop_stays_temperror(
    server: DnsServer, monkeypatch: pytest.MonkeyPatch, server_limit: int
) -> None:
    # With its own limit the server says SERVFAIL; past it, dnspython gives up after 16 hops of a
    # chain that does not loop, and the record may well exist further on.
    monkeypatch.setattr(tests.zoneresolver, "MAX_CHAIN", server_limit)
    answer = resolver(server).query("hop0.example.com", "A")
    assert answer.status is DnsStatus.TEMPERROR
    assert ("too long" in answer.error) == (server_limit == 20), answer


# -- negative answers --------------------------------------------------------------------------


def test_nxdomain_carries_the_negative_ttl(server: DnsServer) -> None:
    # SOA TTL 300, SOA MINIMUM 60: RFC 2308 says the smaller.
    assert resolver(server).query("nope.example.com", "A") == DnsAnswer(DnsStatus.NXDOMAIN, ttl=60)


def test_nodata(server: DnsServer) -> None:
    assert resolver(server).query("mx.example.com", "TXT") == DnsAnswer(DnsStatus.NODATA, ttl=60)


def test_empty_non_terminal_is_nodata(server: DnsServer) -> None:
    assert resolver(server).query("empty.example.com", "A").status is DnsStatus.NODATA


# -- failures ----------------------------------------------------------------------------------


def test_servfail_is_temperror(server: DnsServer) -> None:
    server.set_fault("mx.example.com", "servfail")
    answer = resolver(server).query("mx.example.com", "A")
    assert answer.status is DnsStatus.TEMPERROR
    assert "SERVFAIL" in answer.error


def test_refused_is_temperror(server: DnsServer) -> None:
    server.set_fault("example.invalid", "refused")
    answer = resolver(server).query("example.invalid", "A")
    assert answer.status is DnsStatus.TEMPERROR
    assert "REFUSED" in answer.error


def test_outside_every_zone_is_nxdomain(server: DnsServer) -> None:
    assert resolver(server).query("nothing.invalid", "TXT").status is DnsStatus.NXDOMAIN


def test_timeout_is_temperror_within_the_budget(server: DnsServer) -> None:
    server.set_fault("MX.example.com", "timeout")
    started = time.monotonic()
    answer = resolver(server, timeout=TIMEOUT).query("mx.example.com", "A")
    elapsed = time.monotonic() - started
    assert answer == DnsAnswer(DnsStatus.TEMPERROR, error="timeout")
    assert TIMEOUT * 0.8 <= elapsed < TIMEOUT + SLACK


def test_garbage_reply_is_temperror(server: DnsServer) -> None:
    server.set_fault("mx.example.com", "garbage")
    started = time.monotonic()
    answer = resolver(server, timeout=TIMEOUT).query("mx.example.com", "A")
    assert answer.status is DnsStatus.TEMPERROR
    assert time.monotonic() - started < TIMEOUT + SLACK


def test_nobody_listening_is_temperror(server: DnsServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    answer = DnsResolver(["127.0.0.1"], port=closed_port, timeout=TIMEOUT).query("example.com", "A")
    assert answer.status is DnsStatus.TEMPERROR


def test_nobody_listening_is_said_at_once_not_after_the_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    started = time.monotonic()
    answer = DnsResolver(["127.0.0.1"], port=closed_port, timeout=5.0).query("example.com", "A")
    assert answer.status is DnsStatus.TEMPERROR
    assert "connection refused" in answer.error and str(closed_port) in answer.error
    assert time.monotonic() - started < 1.0


def test_every_nameserver_refusing_is_said_at_once_naming_them_all() -> None:
    # dnspython's own sockets never hear the ICMP port unreachable: left to it, this waited
    # out the whole lifetime and said "timeout", once per lookup of a `check`.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    started = time.monotonic()
    answer = DnsResolver(["127.0.0.1", "127.0.0.2", "127.0.0.3"], port=closed_port, timeout=5.0).query(
        "example.com", "A")
    assert answer.status is DnsStatus.TEMPERROR
    assert answer.error == (f"127.0.0.1, 127.0.0.2, 127.0.0.3: connection refused (nothing listening on port "
                            f"{closed_port})")
    assert time.monotonic() - started < 1.0


def test_a_refused_first_nameserver_is_not_the_last_word(server: DnsServer) -> None:
    # Nothing listens on 127.0.0.2 at the server's port: the second nameserver is asked.
    answer = DnsResolver(["127.0.0.2", "127.0.0.1"], port=server.port, timeout=2.0).query(
        "mx.example.com", "A")
    assert answer.status is DnsStatus.OK and answer.records == ("192.0.2.1",)


def test_servfail_from_the_first_nameserver_asks_the_second(server: DnsServer) -> None:
    # The same server under two addresses, so the second try gets the same SERVFAIL: asked twice.
    server.set_fault("mx.example.com", "servfail")
    before = server.query_count("mx.example.com", "A")
    answer = DnsResolver(["127.0.0.1", "127.0.0.1"], port=server.port, timeout=2.0).query(
        "mx.example.com", "A")
    assert answer.status is DnsStatus.TEMPERROR and "SERVFAIL" in answer.error
    assert server.query_count("mx.example.com", "A") - before >= 2


# Every kind of answer the direct UDP path reads, against dnspython's Resolver reading the same.
PARITY = [
    ("mx.example.com", "A"), ("mx.example.com", "AAAA"), ("example.com", "MX"),
    ("nullmx.example.com", "MX"), ("example.com", "TXT"), ("1.2.0.192.in-addr.arpa", "PTR"),
    ("www.example.com", "A"), ("offsite.example.com", "A"), ("dangling.example.com", "A"),
    ("loop.example.com", "A"), ("nothing.example.com", "A"), ("mx.example.com", "TXT"),
    ("deep.example.com", "A"), ("mid.example.com", "TXT"), ("big.example.com", "TXT"),
    ("short.example.com", "A"), ("a.nosoa.test", "MX"), ("b.nosoa.test", "A"), ("nothing.invalid", "A"),
]


@pytest.mark.parametrize(("name", "rdtype"), PARITY)
def test_direct_path_answers_as_the_resolver_does(server: DnsServer, name: str, rdtype: str) -> None:
    direct = resolver(server)
    through_resolver = resolver(server)
    through_resolver._fast = ()  # the dnspython Resolver alone, as before the direct path
    before = server.query_count(name, rdtype)
    got = direct.query(name, rdtype)
    asked = server.query_count(name, rdtype) - before
    expected = through_resolver.query(name, rdtype)
    # The server hands out records of an RRset in any order, as real ones do.
    assert (got.status, got.ttl, got.error, sorted(got.records)) == (
        expected.status, expected.ttl, expected.error, sorted(expected.records))
    # One question per lookup (a truncated one: once over UDP, once over TCP), never re-asked.
    assert asked == (2 if name == "big.example.com" else 1)


def test_a_stray_reply_is_ignored_and_the_real_one_read(server: DnsServer) -> None:
    # A "resolver" that first sends a reply with another id (as a spoofer guessing would), then
    # passes the question to the real server and relays its answer.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as relay:
        relay.bind(("127.0.0.1", 0))
        relay.settimeout(5)

        def serve() -> None:
            data, client = relay.recvfrom(4096)
            query = dns.message.from_wire(data)
            forged = dns.message.make_response(query)
            forged.id = (query.id + 1) % 65536
            forged.set_rcode(dns.rcode.NXDOMAIN)
            relay.sendto(forged.to_wire(), client)
            relay.sendto(dns.query.udp(query, "127.0.0.1", port=server.port, timeout=2).to_wire(), client)

        with ThreadPoolExecutor(1) as pool:
            job = pool.submit(serve)
            answer = DnsResolver(["127.0.0.1"], port=relay.getsockname()[1], timeout=2.0).query(
                "mx.example.com", "A")
            job.result(timeout=5)
    assert answer.status is DnsStatus.OK and answer.records == ("192.0.2.1",)


def test_unknown_type_is_temperror_not_an_exception(server: DnsServer) -> None:
    assert resolver(server).query("example.com", "NOSUCHTYPE").status is DnsStatus.TEMPERROR


# -- names -------------------------------------------------------------------------------------


def test_names_are_case_insensitive_with_or_without_final_dot(server: DnsServer) -> None:
    r = resolver(server)
    for name in ("MX.Example.COM", "mx.example.com.", "mx.example.com"):
        assert r.query(name, "a").records == ("192.0.2.1",)


def test_idna_name(server: DnsServer) -> None:
    r = resolver(server)
    assert r.query("bücher.example.com", "A").records == ("192.0.2.9",)
    assert r.query("BÜCHER.example.com.", "A").records == ("192.0.2.9",)
    assert r.query("bücher\u3002example\u3002com", "A").records == ("192.0.2.9",)


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "a..example.com",
        ".example.com",
        "x" * 64 + ".example.com",
        ("a" * 63 + ".") * 4 + "com",
        "ü" * 70 + ".example.com",
    ],
)
def test_invalid_names_are_nxdomain_without_asking(server: DnsServer, name: str) -> None:
    assert resolver(server).query(name, "TXT") == DnsAnswer(DnsStatus.NXDOMAIN, error="invalid name")
    assert server.total_queries() == 0


def test_longest_valid_name_is_asked(server: DnsServer) -> None:
    name = ".".join(["a" * 61] * 4)  # 4 * 62 - 1 = 247 characters
    assert resolver(server).query(name, "A").status is DnsStatus.NXDOMAIN  # outside every zone
    assert server.total_queries() == 1


# -- transport ---------------------------------------------------------------------------------


def test_answer_over_512_fits_in_edns_udp(server: DnsServer) -> None:
    answer = resolver(server).query("mid.example.com", "TXT")
    assert len(answer.records) == 2
    assert server.query_count("mid.example.com", "TXT", "udp") == 1
    assert server.query_count("mid.example.com", "TXT", "tcp") == 0


def test_large_txt_arrives_by_tcp_fallback(server: DnsServer) -> None:
    answer = resolver(server).query("big.example.com", "TXT")
    assert answer.ok
    assert sorted(s[0][:4] for s in answer.records) == [f"big{i}".encode() for i in range(6)]
    assert sum(len(b"".join(r)) for r in answer.records) > 1232
    assert server.query_count("big.example.com", "TXT", "udp") == 1
    assert server.query_count("big.example.com", "TXT", "tcp") == 1


def test_server_truncates_at_512_without_edns(server: DnsServer) -> None:
    query = dns.message.make_query("mid.example.com", "TXT")
    reply = dns.query.udp(query, "127.0.0.1", port=server.port, timeout=2)
    assert reply.flags & dns.flags.TC
    assert not reply.answer
    query.use_edns(0, 0, 4096)
    reply = dns.query.udp(query, "127.0.0.1", port=server.port, timeout=2)
    assert not reply.flags & dns.flags.TC
    assert reply.flags & dns.flags.AA
    assert len(reply.answer[0]) == 2


def test_server_survives_hostile_input(server: DnsServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(2)
        for junk in (b"", b"x", b"\x12\x34garbage", bytes(range(256)) * 4):
            udp.sendto(junk, server.address)
        udp.sendto(b"\x12\x34garbage", server.address)
        assert udp.recv(512)[:2] == b"\x12\x34"  # a FORMERR echoing the ID
    with socket.create_connection(server.address, timeout=2) as tcp:
        tcp.sendall(b"\x00\x05hello\x00\x01z")
    with socket.create_connection(server.address, timeout=2) as tcp:
        tcp.sendall(b"\xff\xff only part of a message")
    assert resolver(server).query("mx.example.com", "A").ok


def test_stop_is_quick_even_with_a_silent_connection_open(dns_server: DnsServer) -> None:
    with socket.create_connection(dns_server.address, timeout=2):
        time.sleep(0.1)
        started = time.monotonic()
        dns_server.stop()
        assert time.monotonic() - started < 1.0


# -- caching -----------------------------------------------------------------------------------


def test_positive_answers_are_cached(server: DnsServer) -> None:
    cache = DnsCache()
    r = resolver(server, cache)
    first = r.query("mx.example.com", "A")
    second = r.query("MX.example.com.", "A")
    assert first.records == second.records == ("192.0.2.1",)
    assert server.query_count("mx.example.com", "A") == 1
    assert (cache.stats().hits, cache.stats().misses) == (1, 1)


def test_cached_answer_reports_the_ttl_left(server: DnsServer) -> None:
    clock = FakeClock()
    r = resolver(server, DnsCache(clock=clock))
    r.query("mx.example.com", "A")
    clock.now += 100
    assert r.query("mx.example.com", "A").ttl == 200


def test_ttl_zero_is_not_cached(server: DnsServer) -> None:
    r = resolver(server, DnsCache())
    assert r.query("zero.example.com", "A").ttl == 0
    r.query("zero.example.com", "A")
    assert server.query_count("zero.example.com", "A") == 2


def test_entries_expire_by_the_injected_clock(server: DnsServer) -> None:
    clock = FakeClock()
    r = resolver(server, DnsCache(clock=clock))
    r.query("short.example.com", "A")
    clock.now += 4.9
    r.query("short.example.com", "A")
    assert server.query_count("short.example.com", "A") == 1
    clock.now += 0.2
    r.query("short.example.com", "A")
    assert server.query_count("short.example.com", "A") == 2


def test_negative_answers_are_cached_for_the_soa_minimum(server: DnsServer) -> None:
    clock = FakeClock()
    r = resolver(server, DnsCache(clock=clock))
    for _ in range(3):
        assert r.query("nope.example.com", "A").status is DnsStatus.NXDOMAIN
        assert r.query("mx.example.com", "TXT").status is DnsStatus.NODATA
    assert server.query_count("nope.example.com", "A") == 1
    assert server.query_count("mx.example.com", "TXT") == 1
    clock.now += 61
    r.query("nope.example.com", "A")
    r.query("mx.example.com", "TXT")
    assert server.query_count("nope.example.com", "A") == 2
    assert server.query_count("mx.example.com", "TXT") == 2


def test_negative_answer_without_soa_is_not_cached(server: DnsServer) -> None:
    r = resolver(server, DnsCache())
    assert r.query("gone.nosoa.test", "A") == DnsAnswer(DnsStatus.NXDOMAIN, ttl=0)
    r.query("gone.nosoa.test", "A")
    assert server.query_count("gone.nosoa.test", "A") == 2


def test_temperror_is_not_cached(server: DnsServer) -> None:
    cache = DnsCache()
    r = resolver(server, cache)
    server.set_fault("mx.example.com", "servfail")
    assert r.query("mx.example.com", "A").status is DnsStatus.TEMPERROR
    server.set_fault("mx.example.com", None)
    assert r.query("mx.example.com", "A").ok
    assert server.query_count("mx.example.com", "A") == 2
    assert len(cache) == 1


def test_max_ttl_caps_the_cache_lifetime(server: DnsServer) -> None:
    clock = FakeClock()
    r = resolver(server, DnsCache(max_ttl=10, clock=clock))
    r.query("mx.example.com", "A")
    clock.now += 11
    r.query("mx.example.com", "A")
    assert server.query_count("mx.example.com", "A") == 2


def test_cache_bound_evicts_the_oldest(server: DnsServer) -> None:
    cache = DnsCache(max_entries=2)
    r = resolver(server, cache)
    for name in ("mx.example.com", "www.example.com", "short.example.com"):
        r.query(name, "A")
    assert len(cache) == 2
    assert cache.stats().evictions == 1
    r.query("short.example.com", "A")
    r.query("mx.example.com", "A")  # the oldest went first
    assert server.query_count("short.example.com", "A") == 1
    assert server.query_count("mx.example.com", "A") == 2


def test_cache_evicts_expired_entries_before_live_ones() -> None:
    clock = FakeClock()
    cache = DnsCache(max_entries=3, clock=clock)
    ok = DnsAnswer(DnsStatus.OK, ("192.0.2.1",), ttl=100)
    cache.put("old-but-live", "A", ok)
    cache.put("short-lived", "A", DnsAnswer(DnsStatus.OK, ("192.0.2.2",), ttl=10))
    cache.put("third", "A", ok)
    clock.now += 20
    cache.put("fourth", "A", ok)
    assert cache.get("old-but-live", "A") is not None
    assert cache.get("short-lived", "A") is None
    assert cache.stats() == cache.stats().__class__(hits=1, misses=1, entries=3, evictions=0)


def test_cache_refuses_what_must_not_be_kept() -> None:
    cache = DnsCache()
    assert not cache.put("a", "A", DnsAnswer(DnsStatus.TEMPERROR, error="timeout"))
    assert not cache.put("a", "A", DnsAnswer(DnsStatus.OK, ("192.0.2.1",), ttl=0))
    assert not cache.put("a", "A", DnsAnswer(DnsStatus.NXDOMAIN, ttl=0))
    assert len(cache) == 0


# -- threads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cached", [False, True])
def test_many_threads_at_once(server: DnsServer, cached: bool) -> None:
    r = resolver(server, DnsCache() if cached else None)
    expected = {
        ("mx.example.com", "A"): ("192.0.2.1",),
        ("www.example.com", "A"): ("192.0.2.1",),
        ("mx.example.com", "AAAA"): ("2001:db8::1",),
        ("bücher.example.com", "A"): ("192.0.2.9",),
        ("1.2.0.192.in-addr.arpa", "PTR"): ("mx.example.com",),
    }
    cases = list(expected) * 4

    def worker(_: int) -> list[bool]:
        return [r.query(name, rdtype).records == expected[(name, rdtype)] for name, rdtype in cases]

    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(worker, i) for i in range(16)]
        results = [f.result(timeout=20) for f in futures]
    assert all(all(r) for r in results)


# -- the server as a process -------------------------------------------------------------------


def test_server_runs_as_a_process(tmp_path: Path) -> None:
    zone_file = tmp_path / "example.com.zone"
    zone_file.write_text(ZONE)
    bare = tmp_path / "example.org"
    bare.write_text(OTHER.replace("$ORIGIN example.org.\n", ""))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.dnsserver",
            "--zone",
            str(zone_file),
            "--zone",
            str(bare),
            "--port",
            "0",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=10), "no READY line within 10 s"
        word, port = proc.stdout.readline().split()
        assert word == "READY"
        r = DnsResolver(["127.0.0.1"], port=int(port), timeout=2.0)
        assert r.query("mx.example.com", "A").records == ("192.0.2.1",)
        assert r.query("mail.example.org", "A").records == ("198.51.100.1",)
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0
