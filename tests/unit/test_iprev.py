"""iprev (RFC 8601 section 3) with the in-memory resolver: every result, the limits, IPv6, and
the Authentication-Results clause it becomes."""

from __future__ import annotations

from collections.abc import Mapping

import authres
import pytest

from authmilter.core.authresults import build_authentication_results
from authmilter.core.checks.iprev import (
    MAX_LOOKUPS,
    MAX_PTR_NAMES,
    MAX_UNANSWERED,
    TIME_BUDGET,
    check_iprev,
)
from authmilter.core.dnsapi import DnsAnswer
from authmilter.core.model import AuthorResult, IprevResult, Results
from tests.zoneresolver import ZoneResolver, zone_text

REVERSE4 = "2.0.192.in-addr.arpa"
# 2001:db8::/32 reversed: the 24 nibbles of the host part of 2001:db8::25 come on top of this.
REVERSE6 = "8.b.d.0.1.0.0.2.ip6.arpa"
HOST6 = "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0"


Records = Mapping[str, str | list[str]]


def resolver(ptr: Records, forward: Records | None = None, ptr6: Records | None = None) -> ZoneResolver:
    zones = [zone_text(REVERSE4, ptr), zone_text("example.org", forward or {})]
    if ptr6 is not None:
        zones.append(zone_text(REVERSE6, ptr6))
    return ZoneResolver(zones)


def forward_queries(dns: ZoneResolver, names: list[str], rdtype: str = "A") -> int:
    return sum(dns.query_count(n, rdtype) for n in names)


def test_pass_when_the_ptr_name_resolves_back() -> None:
    dns = resolver({"10": "PTR Mail.Example.Org."}, {"mail": ["A 192.0.2.99", "A 192.0.2.10"]})
    r = check_iprev("192.0.2.10", dns)
    assert r == IprevResult("pass", "192.0.2.10", host="mail.example.org", ptr_names=("mail.example.org",))
    assert dns.query_count("10.2.0.192.in-addr.arpa", "PTR") == 1
    assert dns.query_count("mail.example.org", "AAAA") == 0  # an IPv4 client is confirmed by A only


def test_fail_when_the_forward_lookup_names_other_addresses() -> None:
    dns = resolver({"10": "PTR mail.example.org."}, {"mail": "A 192.0.2.11"})
    r = check_iprev("192.0.2.10", dns)
    assert (r.result, r.host, r.ptr_names) == ("fail", "", ("mail.example.org",))
    assert "192.0.2.10" in r.reason


@pytest.mark.parametrize("forward", [
    {},  # the PTR name does not exist: NXDOMAIN
    {"mail": "AAAA 2001:db8::10"},  # it exists, but has no A record: NODATA
])
def test_fail_when_the_forward_lookup_finds_nothing(forward: Records) -> None:
    # RFC 8601 section 2.7.3: a forward query that completed without a result is "fail".
    r = check_iprev("192.0.2.10", resolver({"10": "PTR mail.example.org."}, forward))
    assert r.result == "fail"


def test_permerror_when_the_ptr_name_does_not_exist() -> None:
    # Section 2.7.3: "no PTR data are published" (NXDOMAIN or NODATA) is permerror, not fail.
    r = check_iprev("192.0.2.10", resolver({"11": "PTR other.example.org."}))
    assert (r.result, r.ptr_names) == ("permerror", ())
    assert "NXDOMAIN" in r.reason


def test_permerror_when_the_name_has_no_ptr_record() -> None:
    r = check_iprev("192.0.2.10", resolver({"10": 'TXT "not a pointer"'}))
    assert r.result == "permerror" and r.reason == "no PTR record"


def test_permerror_when_no_reverse_zone_exists_at_all() -> None:
    assert check_iprev("203.0.113.5", resolver({})).result == "permerror"


def test_temperror_when_the_ptr_lookup_fails() -> None:
    dns = resolver({"10": "PTR mail.example.org."}, {"mail": "A 192.0.2.10"})
    dns.set_fault("10.2.0.192.in-addr.arpa", "servfail")
    r = check_iprev("192.0.2.10", dns)
    assert r.result == "temperror" and "PTR" in r.reason
    assert dns.query_count("mail.example.org", "A") == 0


def test_temperror_when_the_only_forward_lookup_times_out() -> None:
    dns = resolver({"10": "PTR mail.example.org."}, {"mail": "A 192.0.2.10"})
    dns.set_fault("mail.example.org", "timeout")
    r = check_iprev("192.0.2.10", dns)
    assert (r.result, r.ptr_names) == ("temperror", ("mail.example.org",))
    assert "mail.example.org" in r.reason


def test_a_confirming_name_wins_over_one_that_could_not_be_looked_up() -> None:
    dns = resolver({"10": ["PTR a.example.org.", "PTR b.example.org."]},
                   {"a": "A 192.0.2.10", "b": "A 192.0.2.10"})
    dns.set_fault("a.example.org", "servfail")
    r = check_iprev("192.0.2.10", dns)
    assert (r.result, r.host) == ("pass", "b.example.org")


def test_a_failed_forward_lookup_makes_temperror_even_when_another_name_fails() -> None:
    # The name that could not be looked up might have confirmed: no definite "fail" yet.
    dns = resolver({"10": ["PTR a.example.org.", "PTR b.example.org."]},
                   {"a": "A 192.0.2.10", "b": "A 192.0.2.99"})
    dns.set_fault("a.example.org", "timeout")
    assert check_iprev("192.0.2.10", dns).result == "temperror"


def test_many_ptr_names_are_capped_in_sorted_order() -> None:
    names = [f"h{i:02d}.example.org" for i in range(30)]
    # Only the last name in sorted order confirms: past the cap, it is never looked up.
    forward = {f"h{i:02d}": "A 192.0.2.99" for i in range(29)} | {"h29": "A 192.0.2.10"}
    dns = resolver({"10": [f"PTR {n}." for n in reversed(names)]}, forward)
    r = check_iprev("192.0.2.10", dns)
    assert r.result == "fail"
    assert r.ptr_names == tuple(names[:MAX_PTR_NAMES])
    assert "20 more PTR names not followed" in r.reason
    assert forward_queries(dns, names) == MAX_PTR_NAMES
    assert dns.query_count("h29.example.org", "A") == 0
    assert dns.total_queries() <= MAX_LOOKUPS == 11


def test_a_confirming_name_within_the_cap_passes() -> None:
    names = [f"h{i:02d}.example.org" for i in range(30)]
    forward = {f"h{i:02d}": "A 192.0.2.99" for i in range(30)} | {"h03": "A 192.0.2.10"}
    dns = resolver({"10": [f"PTR {n}." for n in names]}, forward)
    r = check_iprev("192.0.2.10", dns)
    assert (r.result, r.host) == ("pass", "h03.example.org")
    assert forward_queries(dns, names) == 4  # stops at the first confirmation


def test_gives_up_after_a_few_unanswered_forward_lookups() -> None:
    names = [f"h{i}.example.org" for i in range(8)]
    dns = resolver({"10": [f"PTR {n}." for n in names]}, {f"h{i}": "A 192.0.2.10" for i in range(8)})
    for n in names:
        dns.set_fault(n, "timeout")
    r = check_iprev("192.0.2.10", dns)
    assert r.result == "temperror" and "gave up" in r.reason
    assert forward_queries(dns, names) == MAX_UNANSWERED == 3


class SlowResolver:
    """Answers from the zones, each answer taking `seconds` on a clock of its own."""

    def __init__(self, zones: ZoneResolver, seconds: float) -> None:
        self.zones, self.seconds, self.now = zones, seconds, 1000.0

    def clock(self) -> float:
        return self.now

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        self.now += self.seconds
        return self.zones.query(name, rdtype)


def test_no_lookup_starts_once_the_time_budget_is_spent() -> None:
    names = [f"h{i}.example.org" for i in range(10)]
    zones = resolver({"10": [f"PTR {n}." for n in names]}, {f"h{i}": "A 192.0.2.99" for i in range(10)}
                     | {"h9": "A 192.0.2.10"})
    slow = SlowResolver(zones, 4.0)  # each answer just before a 5 s resolver timeout
    r = check_iprev("192.0.2.10", slow, clock=slow.clock, budget=TIME_BUDGET)
    assert r.result == "temperror" and r.reason == "gave up after 10 s of DNS lookups"
    # The PTR lookup ends at 4 s, the first forward one at 8; the second starts inside the budget
    # and ends at 12 s, and no third one starts.
    assert forward_queries(zones, names) == 2 and slow.now == 1000.0 + 3 * 4.0
    # Without a clock only the lookup limits apply, and the tenth name confirms.
    assert check_iprev("192.0.2.10", SlowResolver(zones, 4.0)).result == "pass"


def test_duplicate_and_unusable_ptr_targets() -> None:
    ptr = ["PTR MAIL.example.org.", "PTR mail.example.org.", r"PTR bad\032name.example.org."]
    dns = resolver({"10": ptr}, {"mail": "A 192.0.2.10"})
    r = check_iprev("192.0.2.10", dns)
    assert (r.result, r.ptr_names) == ("pass", ("mail.example.org",))
    assert dns.query_count("mail.example.org", "A") == 1


def test_fail_when_no_ptr_target_is_a_host_name() -> None:
    r = check_iprev("192.0.2.10", resolver({"10": r"PTR bad\032name.example.org."}))
    assert r.result == "fail" and "host name" in r.reason


def test_ipv6_is_confirmed_by_aaaa() -> None:
    dns = resolver({}, {"mail6": ["A 192.0.2.25", "AAAA 2001:db8::25"]},
                   ptr6={HOST6: "PTR mail6.example.org."})
    r = check_iprev("2001:DB8:0:0::25", dns)
    assert (r.result, r.ip, r.host) == ("pass", "2001:db8::25", "mail6.example.org")
    assert dns.query_count("mail6.example.org", "A") == 0


def test_ipv6_is_not_confirmed_by_an_a_record() -> None:
    dns = resolver({}, {"mail6": "A 192.0.2.25"}, ptr6={HOST6: "PTR mail6.example.org."})
    assert check_iprev("2001:db8::25", dns).result == "fail"


@pytest.mark.parametrize("client", ["::ffff:192.0.2.10", "IPv6:::ffff:192.0.2.10", "[192.0.2.10]"])
def test_ipv4_mapped_and_bracketed_clients_are_checked_as_ipv4(client: str) -> None:
    dns = resolver({"10": "PTR mail.example.org."}, {"mail": "A 192.0.2.10"})
    r = check_iprev(client, dns)
    assert (r.result, r.ip) == ("pass", "192.0.2.10")
    assert dns.query_count("10.2.0.192.in-addr.arpa", "PTR") == 1


@pytest.mark.parametrize("client", [None, "", "  ", "unix:/run/socket", "192.0.2.300"])
def test_no_usable_client_address_is_none_without_lookups(client: str | None) -> None:
    dns = resolver({"10": "PTR mail.example.org."}, {"mail": "A 192.0.2.10"})
    r = check_iprev(client, dns)
    assert (r.result, r.ip) == ("none", "")
    assert dns.total_queries() == 0


class RaisingResolver:
    def query(self, name: str, rdtype: str) -> DnsAnswer:
        raise RuntimeError("resolver bug")


def test_a_raising_resolver_is_temperror() -> None:
    assert check_iprev("192.0.2.10", RaisingResolver()).result == "temperror"


# --- Authentication-Results ---------------------------------------------------------------------


def header(iprev: IprevResult) -> str:
    return build_authentication_results("mx.test.example", Results(None, (), AuthorResult(None), None,
                                                                   iprev=iprev))


def parsed(value: str) -> authres.AuthenticationResultsHeader:
    return authres.AuthenticationResultsHeader.parse_value(value.replace("\r\n", ""))


def test_pass_clause_reports_the_address_and_the_confirmed_name() -> None:
    value = header(IprevResult("pass", "192.0.2.10", "mail.example.org", ("mail.example.org",)))
    assert "\tiprev=pass policy.iprev=192.0.2.10 (mail.example.org);" in value
    clause = parsed(value).results[0]
    assert (clause.method, clause.result, clause.policy_iprev) == ("iprev", "pass", "192.0.2.10")


def test_ipv6_address_is_a_quoted_pvalue() -> None:
    value = header(IprevResult("pass", "2001:db8::25", "mail6.example.org"))
    assert 'iprev=pass policy.iprev="2001:db8::25" (mail6.example.org)' in value
    assert parsed(value).results[0].policy_iprev == "2001:db8::25"


@pytest.mark.parametrize("result", ["fail", "permerror", "temperror"])
def test_other_results_carry_a_reason_and_no_name(result: str) -> None:
    value = header(IprevResult(result, "192.0.2.10", "", ("liar.example.org",), reason="no luck"))
    assert f'iprev={result} reason="no luck" policy.iprev=192.0.2.10;' in value
    assert "liar.example.org" not in value  # an unconfirmed PTR name proves nothing
    assert parsed(value).results[0].result == result


def test_none_gives_no_clause() -> None:
    value = header(IprevResult("none", "", reason="no client address"))
    assert "iprev" not in value
    assert value.startswith("mx.test.example;") and "dkim=none" in value
