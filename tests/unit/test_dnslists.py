"""DNS lists (RFC 5782) with the in-memory resolver: listings and their meanings, the answers that
make a list unusable, DNS failures, IPv6, domain lists, and the section 5 self-test."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from authmilter.core.checks.dnslists import (
    ERROR_CODES,
    UNKNOWN_CODE,
    DnsList,
    query_lists,
    query_name,
    self_test,
)
from authmilter.core.dnsapi import DnsAnswer
from authmilter.core.model import DnsListResult, DnsListResults
from tests.zoneresolver import ZoneResolver, zone_text

ZONE = "bl.example"
CLIENT = "192.0.2.1"
CLIENT_Q = f"1.2.0.192.{ZONE}"
CODES = {"127.0.0.2": "spam source", "127.0.0.4-127.0.0.7": "exploited host"}

Records = Mapping[str, str | list[str]]


def bl(codes: Mapping[str, str] | None = None, **kw: object) -> DnsList:
    return DnsList("bl", ZONE, codes=CODES if codes is None else codes, **kw)  # type: ignore[arg-type]


def zone(records: Records, origin: str = ZONE) -> ZoneResolver:
    return ZoneResolver([zone_text(origin, records)])


def one(results: DnsListResults) -> DnsListResult:
    assert len(results.results) == 1, results
    return results.results[0]


def ask(dnslist: DnsList, dns: ZoneResolver, client_ip: str | None = CLIENT) -> DnsListResult:
    return one(query_lists([dnslist], client_ip, {}, dns))


# -- listed, not listed ---------------------------------------------------------------------------

def test_listed_with_the_configured_meanings() -> None:
    dns = zone({"1.2.0.192": ["A 127.0.0.5", "A 127.0.0.2"]})
    r = ask(bl(), dns)
    assert r == DnsListResult("bl", ZONE, "ip", CLIENT_Q, "listed", codes=("127.0.0.2", "127.0.0.5"),
                              meanings=("spam source", "exploited host"))
    assert dns.query_count(CLIENT_Q, "A") == 1
    assert query_lists([bl()], CLIENT, {}, dns).blocklisted == (r,)


@pytest.mark.parametrize("records", [
    {"9.2.0.192": "A 127.0.0.2"},  # another address is listed; ours: NXDOMAIN
    {"1.2.0.192": 'TXT "listed, but no A record"'},  # NODATA
])
def test_not_listed(records: Records) -> None:
    r = ask(bl(), zone(records))
    assert (r.status, r.codes, r.meanings, r.listed) == ("not-listed", (), (), False)


def test_without_codes_any_loopback_answer_lists_as_unknown_code() -> None:
    r = ask(bl(codes={}), zone({"1.2.0.192": "A 127.0.0.77"}))
    assert (r.status, r.codes, r.meanings) == ("listed", ("127.0.0.77",), (UNKNOWN_CODE,))


def test_with_codes_an_unconfigured_code_is_ignored() -> None:
    dns = zone({"1.2.0.192": "A 127.0.0.10"})  # e.g. Spamhaus PBL, deliberately left out
    r = ask(bl(), dns)
    assert (r.status, r.codes, r.ignored) == ("not-listed", (), ("127.0.0.10",))
    assert "127.0.0.10" in r.reason
    # The matching codes of the same answer still list; the others are kept as ignored.
    r = ask(bl(), zone({"1.2.0.192": ["A 127.0.0.10", "A 127.0.0.4"]}))
    assert (r.status, r.codes, r.meanings, r.ignored) == (
        "listed", ("127.0.0.4",), ("exploited host",), ("127.0.0.10",))


def test_overlapping_ranges_give_every_meaning() -> None:
    dnslist = bl(codes={"127.0.0.2-127.0.0.3": "a", "127.0.0.3": "b"})
    r = ask(dnslist, zone({"1.2.0.192": "A 127.0.0.3"}))
    assert r.meanings == ("a; b",)


# -- answers that make the list unusable ----------------------------------------------------------

@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_error_codes_make_the_list_unusable(code: str) -> None:
    for codes in (CODES, {}, {"127.0.0.0-127.255.255.255": "anything"}):  # never a listing
        r = ask(bl(codes=codes), zone({"1.2.0.192": f"A {code}"}))
        assert (r.status, r.codes) == ("unusable", ())
        assert code in r.reason and ERROR_CODES[code] in r.reason


def test_spamhaus_error_codes_are_among_them() -> None:
    assert {"127.255.255.252", "127.255.255.254", "127.255.255.255"} <= set(ERROR_CODES)


def test_one_error_code_spoils_the_whole_answer() -> None:
    results = query_lists([bl()], CLIENT, {}, zone({"1.2.0.192": ["A 127.0.0.2", "A 127.255.255.254"]}))
    assert one(results).status == "unusable" and results.blocklisted == ()


@pytest.mark.parametrize("answer", ["192.0.2.99", "10.0.0.2", "128.0.0.2"])
def test_an_answer_outside_127_8_makes_the_list_unusable(answer: str) -> None:
    # What a lapsed list domain, parked with a wildcard, answers for every name.
    r = ask(bl(codes={}), zone({"1.2.0.192": f"A {answer}"}))
    assert (r.status, r.codes) == ("unusable", ())
    assert "127.0.0.0/8" in r.reason


def test_dnswl_over_limit_is_unusable_not_allowlisted() -> None:
    dnswl = DnsList("dnswl", "list.dnswl.example", codes={"127.0.0.0-127.0.255.254": "trusted"}, allow=True)
    over = query_lists([dnswl], CLIENT, {}, zone({"1.2.0.192": "A 127.0.0.255"}, "list.dnswl.example"))
    assert (one(over).status, one(over).allow, over.allowlisted) == ("unusable", True, ())
    listed = query_lists([dnswl], CLIENT, {}, zone({"1.2.0.192": "A 127.0.15.0"}, "list.dnswl.example"))
    assert listed.allowlisted == listed.results and one(listed).meanings == ("trusted",)
    assert listed.blocklisted == ()  # an allow listing is no block listing


# -- DNS failures ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["timeout", "servfail"])
def test_dns_failure_is_temperror_never_listed(fault: str) -> None:
    dns = zone({"1.2.0.192": "A 127.0.0.2"})
    dns.set_fault(CLIENT_Q, fault)
    results = query_lists([bl()], CLIENT, {}, dns)
    assert (one(results).status, results.blocklisted) == ("temperror", ())
    assert fault in one(results).reason


def test_a_resolver_that_raises_is_temperror() -> None:
    class Broken:
        def query(self, name: str, rdtype: str) -> DnsAnswer:
            raise RuntimeError("bug")

    r = one(query_lists([bl()], CLIENT, {}, Broken()))
    assert r.status == "temperror" and "RuntimeError" in r.reason


def test_the_time_budget_stops_new_lookups() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 6.0  # every look at the clock: 6 s later
        return now[0]

    dns = zone({"1.2.0.192": "A 127.0.0.2"}, ZONE)
    dns.add_zone(zone_text("other.example", {"1.2.0.192": "A 127.0.0.2"}))
    lists = [bl(), DnsList("other", "other.example"), DnsList("third", "third.example")]
    results = query_lists(lists, CLIENT, {}, dns, clock=clock, budget=10.0)
    assert [r.status for r in results.results] == ["listed", "temperror", "temperror"]
    assert dns.query_count("1.2.0.192.other.example", "A") == 0
    assert "not asked" in results.results[1].reason


# -- the names asked ------------------------------------------------------------------------------

def test_ipv6_is_asked_as_reversed_nibbles() -> None:
    nibbles = "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
    dns = zone({nibbles: "A 127.0.0.2"})
    r = ask(bl(), dns, "IPv6:2001:DB8::25")
    assert (r.status, r.queried) == ("listed", f"{nibbles}.{ZONE}")
    assert dns.query_count(f"{nibbles}.{ZONE}", "A") == 1


def test_ipv4_mapped_ipv6_is_asked_as_ipv4() -> None:
    assert query_name(bl(), "::ffff:192.0.2.1") == CLIENT_Q
    assert query_name(bl(), "[192.0.2.1]") == CLIENT_Q


@pytest.mark.parametrize("client_ip", [None, "", "unknown"])
def test_no_usable_client_address_asks_no_ip_list(client_ip: str | None) -> None:
    dns = zone({"1.2.0.192": "A 127.0.0.2"})
    assert query_lists([bl()], client_ip, {}, dns) == DnsListResults(())
    assert dns.total_queries() == 0


def test_domain_list_asks_each_identity_and_each_name_once() -> None:
    dbl = DnsList("dbl", "dbl.example", kind="domain", codes={"127.0.1.2-127.0.1.99": "spam domain"})
    dns = zone({"bad.example.org": "A 127.0.1.2"}, "dbl.example")
    domains = {"helo": "[192.0.2.1]", "mailfrom": "Bad.Example.Org", "from": "bad.example.org.",
               "dkim": "good.example.net"}
    results = query_lists([dbl, bl()], CLIENT, domains, dns)
    got = [(r.list_name, r.identity, r.queried, r.status) for r in results.results]
    assert got == [
        ("dbl", "mailfrom", "bad.example.org.dbl.example", "listed"),
        ("dbl", "from", "bad.example.org.dbl.example", "listed"),
        ("dbl", "dkim", "good.example.net.dbl.example", "not-listed"),
        ("bl", "ip", CLIENT_Q, "not-listed"),  # IP lists take the client address, not domains
    ]
    assert results.results[0].meanings == ("spam domain",)
    assert dns.query_count("bad.example.org.dbl.example", "A") == 1
    assert dns.total_queries() == 3  # the HELO address literal is no domain to ask about


# -- configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize(("kw", "message"), [
    ({"codes": {"127.0.0.9-127.0.0.2": "x"}}, "ends before"),
    ({"codes": {"192.0.2.1": "x"}}, "outside 127.0.0.0/8"),
    ({"codes": {"127.0.0.2-128.0.0.1": "x"}}, "outside 127.0.0.0/8"),
    ({"codes": {"spam": "x"}}, "not an IPv4"),
    ({"kind": "url"}, "kind"),
    ({"zone": "bad zone"}, "zone"),
])
def test_bad_list_specs_are_refused(kw: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"name": "x", "zone": ZONE, **kw}
    with pytest.raises(ValueError, match=message):
        DnsList(**args)  # type: ignore[arg-type]


def test_the_spec_is_frozen_and_normalised() -> None:
    codes = {"127.0.0.2": "spam"}
    dnslist = DnsList("x", "Zen.Example.", codes=codes)
    codes["127.0.0.3"] = "changed later"
    assert dnslist.zone == "zen.example" and dict(dnslist.codes) == {"127.0.0.2": "spam"}
    assert hash(dnslist) == hash(DnsList("x", "zen.example", codes={"127.0.0.2": "spam"}))
    with pytest.raises(AttributeError):
        dnslist.zone = "other.example"  # type: ignore[misc]


# -- the self-test (RFC 5782 section 5) -----------------------------------------------------------

def test_self_test_passes_for_a_working_ip_list() -> None:
    dns = zone({"2.0.0.127": "A 127.0.0.2"})
    assert self_test(bl(), dns) == (True, "")
    assert dns.query_count(f"2.0.0.127.{ZONE}", "A") == 1
    assert dns.query_count(f"1.0.0.127.{ZONE}", "A") == 1


def test_self_test_passes_for_a_working_domain_list() -> None:
    dbl = DnsList("dbl", "dbl.example", kind="domain")
    assert self_test(dbl, zone({"test": "A 127.0.1.2"}, "dbl.example")) == (True, "")


@pytest.mark.parametrize(("records", "reason"), [
    ({}, "not listed"),  # the test point is missing
    ({"2.0.0.127": "A 127.0.0.2", "1.0.0.127": "A 127.0.0.2"}, "127.0.0.1 is listed"),  # lists all
    ({"2.0.0.127": "A 127.255.255.254"}, "public or open resolver"),
    ({"2.0.0.127": "A 192.0.2.99"}, "outside 127.0.0.0/8"),
])
def test_self_test_fails_for_a_broken_ip_list(records: Records, reason: str) -> None:
    ok, why = self_test(bl(), zone(records))
    assert not ok and reason in why


def test_self_test_fails_when_the_list_cannot_be_asked() -> None:
    dns = zone({"2.0.0.127": "A 127.0.0.2"})
    dns.set_fault(f"2.0.0.127.{ZONE}", "timeout")
    ok, why = self_test(bl(), dns)
    assert not ok and "timeout" in why


def test_self_test_fails_for_a_domain_list_that_lists_invalid() -> None:
    dbl = DnsList("dbl", "dbl.example", kind="domain")
    ok, why = self_test(dbl, zone({"test": "A 127.0.1.2", "invalid": "A 127.0.1.2"}, "dbl.example"))
    assert not ok and "invalid is listed" in why
    ok, why = self_test(dbl, zone({"invalid": "A 127.0.1.2"}, "dbl.example"))
    assert not ok and "test point test is not listed" in why
