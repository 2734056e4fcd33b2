"""SPF checks through pyspf, answered by an in-memory resolver (no sockets)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest
import spf as pyspf

from authmilter.core.checks import spf as spf_module
from authmilter.core.checks.spf import check_spf
from authmilter.core.dnsapi import DnsAnswer, DnsStatus
from authmilter.core.model import SpfIdentity, SpfResults
from authmilter.core.names import normalize_client_ip
from tests.spfzones import LABELS_NAME, LOOP_ZONES, MACRO_MANIA_NAME, MACRO_ZONE
from tests.zoneresolver import ZoneResolver

TEMP = "TEMPERROR"


def txt(*records: str) -> list[tuple[bytes, ...]]:
    """TXT records; a record longer than 255 bytes is split into character-strings like DNS."""
    out = []
    for record in records:
        raw = record.encode()
        out.append(tuple(raw[i : i + 255] for i in range(0, len(raw), 255)) or (b"",))
    return out


class DictResolver:
    """Answers from {(name, rdtype): records | TEMP}. A known name without that type is NODATA."""

    def __init__(self, zone: Mapping[tuple[str, str], Any], delay: float = 0.0) -> None:
        self.zone = {(name.lower(), rdtype): value for (name, rdtype), value in zone.items()}
        self.names = {name for name, _ in self.zone}
        self.delay = delay
        self.queries: list[tuple[str, str]] = []

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        self.queries.append((name, rdtype))
        if self.delay:
            time.sleep(self.delay)
        key = (name.lower().rstrip("."), rdtype)
        value = self.zone.get(key)
        if value == TEMP:
            return DnsAnswer(DnsStatus.TEMPERROR, error="timed out")
        if value is None:
            status = DnsStatus.NODATA if key[0] in self.names else DnsStatus.NXDOMAIN
            return DnsAnswer(status)
        return DnsAnswer(DnsStatus.OK, tuple(value), ttl=300)


def zone(extra: Mapping[tuple[str, str], Any] | None = None) -> dict[tuple[str, str], Any]:
    base: dict[tuple[str, str], Any] = {
        ("example.com", "TXT"): txt("v=spf1 ip4:192.0.2.0/24 ip6:2001:db8:1::/48 -all", "unrelated text"),
        ("softfail.example", "TXT"): txt("v=spf1 ip4:192.0.2.0/24 ~all"),
        ("neutral.example", "TXT"): txt("v=spf1 ip4:192.0.2.0/24 ?all"),
        ("nospf.example", "TXT"): txt("google-site-verification=abc"),
        ("nospf.example", "A"): ["198.51.100.7"],
        ("mx.example.org", "TXT"): txt("v=spf1 a -all"),
        ("mx.example.org", "A"): ["198.51.100.1"],
        ("mx.example.org", "AAAA"): ["2001:db8:2::25"],
    }
    base.update(extra or {})
    return base


def run(
    records: Mapping[tuple[str, str], Any] | None = None,
    ip: str | None = "192.0.2.10",
    helo: str = "mx.example.org",
    mail_from: str = "user@example.com",
    **kwargs: Any,
) -> SpfResults:
    return check_spf(ip, helo, mail_from, DictResolver(records or zone()), **kwargs)


# --- the seven results ----------------------------------------------------------------------------


def test_pass() -> None:
    res = run()
    eff = res.effective
    assert (eff.result, eff.identity, eff.domain, eff.sender) == (
        "pass",
        SpfIdentity.MAILFROM,
        "example.com",
        "user@example.com",
    )
    assert eff.reason == "matched ip4:192.0.2.0/24"


def test_fail() -> None:
    res = run(ip="203.0.113.5")
    assert res.effective.result == "fail"
    assert "-all" in res.effective.reason


def test_softfail() -> None:
    assert run(ip="203.0.113.5", mail_from="a@softfail.example").effective.result == "softfail"


def test_neutral() -> None:
    assert run(ip="203.0.113.5", mail_from="a@neutral.example").effective.result == "neutral"


@pytest.mark.parametrize("mail_from", ["a@nospf.example", "a@nonexistent.example"])
def test_none_without_record(mail_from: str) -> None:
    res = run(mail_from=mail_from)
    assert res.effective.result == "none"
    assert "no SPF record" in res.effective.reason


def test_temperror_from_dns() -> None:
    res = run(zone({("example.com", "TXT"): TEMP}))
    assert res.effective.result == "temperror"
    assert "timed out" in res.effective.reason


def test_permerror_syntax() -> None:
    res = run(zone({("example.com", "TXT"): txt("v=spf1 ip4:192.0.2.0/24 frobnicate:x -all")}))
    assert res.effective.result == "permerror"
    assert "frobnicate" in res.effective.reason


def test_permerror_bad_ip4() -> None:
    res = run(zone({("example.com", "TXT"): txt("v=spf1 ip4:192.0.2.300 -all")}))
    assert res.effective.result == "permerror"


def test_permerror_two_records() -> None:
    res = run(zone({("example.com", "TXT"): txt("v=spf1 -all", "v=spf1 +all")}))
    assert res.effective.result == "permerror"
    assert "Two or more" in res.effective.reason


def test_split_txt_strings_are_joined() -> None:
    long_record = "v=spf1 " + " ".join(f"ip4:198.51.100.{i}" for i in range(1, 30)) + " ip4:192.0.2.0/24 -all"
    assert len(long_record) > 255
    assert run(zone({("example.com", "TXT"): txt(long_record)})).effective.result == "pass"


# --- identities -----------------------------------------------------------------------------------


def test_helo_checked_separately() -> None:
    res = run(ip="198.51.100.1", mail_from="user@example.com")
    assert res.effective.result == "fail"  # 198.51.100.1 is not in example.com's record
    assert res.helo is not None
    helo = res.helo
    assert (helo.result, helo.identity, helo.domain, helo.sender) == (
        "pass",
        SpfIdentity.HELO,
        "mx.example.org",
        "mx.example.org",
    )


def test_null_sender_uses_helo() -> None:
    res = run(ip="198.51.100.1", mail_from="")
    eff = res.effective
    assert (eff.result, eff.identity, eff.domain, eff.sender) == (
        "pass",
        SpfIdentity.HELO,
        "mx.example.org",
        "mx.example.org",
    )
    assert res.helo == eff


def test_null_sender_in_brackets() -> None:
    assert run(ip="198.51.100.1", mail_from="<>").effective.identity is SpfIdentity.HELO


def test_null_sender_without_helo_check_still_uses_helo() -> None:
    res = run(ip="198.51.100.1", mail_from="", check_helo=False)
    assert res.effective.result == "pass"
    assert res.effective.identity is SpfIdentity.HELO
    assert res.helo is None


def test_check_helo_false() -> None:
    resolver = DictResolver(zone())
    res = check_spf("192.0.2.10", "mx.example.org", "user@example.com", resolver, check_helo=False)
    assert res.effective.result == "pass"
    assert res.helo is None
    assert all(name != "mx.example.org" for name, _ in resolver.queries)


@pytest.mark.parametrize("helo", ["", "[192.0.2.1]", "192.0.2.1", "[IPv6:2001:db8::1]", "localhost", "a..b"])
def test_helo_not_a_domain(helo: str) -> None:
    res = run(helo=helo)
    assert res.effective.result == "pass"
    assert res.helo is None
    null = run(helo=helo, mail_from="")
    assert null.effective.result == "none"
    assert null.effective.identity is SpfIdentity.HELO
    assert null.effective.sender == helo
    assert null.helo is None


def test_domain_only_local_part_uses_postmaster() -> None:
    records = zone({("example.com", "TXT"): txt("v=spf1 exists:%{l}.allow.example -all")})
    records[("postmaster.allow.example", "A")] = ["127.0.0.2"]
    assert run(records, mail_from="@example.com").effective.result == "pass"


def test_local_part_only_has_no_domain() -> None:
    res = run(mail_from="user")
    assert res.effective.result == "none"
    assert res.effective.identity is SpfIdentity.MAILFROM
    assert res.effective.reason == "MAIL FROM has no domain"


def test_domain_case_is_normalized() -> None:
    res = run(mail_from="User@EXAMPLE.Com.")
    assert res.effective.result == "pass"
    assert res.effective.domain == "example.com"
    assert res.effective.sender == "User@EXAMPLE.Com."


# --- mechanisms and modifiers ---------------------------------------------------------------------


def test_ip6_mechanism() -> None:
    assert run(ip="2001:db8:1::99").effective.result == "pass"
    assert run(ip="2001:db8:ffff::1").effective.result == "fail"


def test_a_mechanism_ipv6_uses_aaaa() -> None:
    res = run(ip="2001:db8:2::25", mail_from="", helo="mx.example.org")
    assert res.effective.result == "pass"


def test_ipv4_mapped_ipv6_is_ipv4() -> None:
    assert run(ip="::ffff:192.0.2.10").effective.result == "pass"
    assert run(ip="::ffff:203.0.113.1").effective.result == "fail"


@pytest.mark.parametrize(
    "ip", ["IPv6:2001:db8:1::5", "[2001:db8:1::5]", "2001:db8:1::5%eth0", " 192.0.2.10 "]
)
def test_client_ip_forms_mtas_send(ip: str) -> None:
    assert run(ip=ip).effective.result == "pass"


def test_mx_mechanism() -> None:
    records = zone(
        {
            ("mxdom.example", "TXT"): txt("v=spf1 mx -all"),
            ("mxdom.example", "MX"): [(10, "mx1.mxdom.example"), (20, "mx2.mxdom.example")],
            ("mx1.mxdom.example", "A"): ["203.0.113.1"],
            ("mx2.mxdom.example", "A"): ["203.0.113.2"],
        }
    )
    assert run(records, ip="203.0.113.2", mail_from="a@mxdom.example").effective.result == "pass"
    assert run(records, ip="203.0.113.3", mail_from="a@mxdom.example").effective.result == "fail"


def test_ptr_mechanism() -> None:
    records = zone(
        {
            ("ptr.example", "TXT"): txt("v=spf1 ptr -all"),
            ("7.113.0.203.in-addr.arpa", "PTR"): ["host.ptr.example"],
            ("host.ptr.example", "A"): ["203.0.113.7"],
        }
    )
    assert run(records, ip="203.0.113.7", mail_from="a@ptr.example").effective.result == "pass"


def test_include_chain() -> None:
    records = zone(
        {
            ("chain.example", "TXT"): txt("v=spf1 include:one.chain.example -all"),
            ("one.chain.example", "TXT"): txt("v=spf1 ip4:10.0.0.1 include:two.chain.example -all"),
            ("two.chain.example", "TXT"): txt("v=spf1 ip4:203.0.113.0/28 -all"),
        }
    )
    res = run(records, ip="203.0.113.9", mail_from="a@chain.example")
    assert res.effective.result == "pass"
    assert res.effective.reason == "matched include:one.chain.example"
    assert run(records, ip="203.0.113.99", mail_from="a@chain.example").effective.result == "fail"


def test_include_without_record_is_permerror() -> None:
    records = zone({("inc.example", "TXT"): txt("v=spf1 include:nospf.example -all")})
    assert run(records, mail_from="a@inc.example").effective.result == "permerror"


def test_include_temperror_propagates() -> None:
    records = zone(
        {
            ("inc.example", "TXT"): txt("v=spf1 include:broken.example -all"),
            ("broken.example", "TXT"): TEMP,
        }
    )
    assert run(records, mail_from="a@inc.example").effective.result == "temperror"


def test_redirect() -> None:
    records = zone({("redir.example", "TXT"): txt("v=spf1 redirect=example.com")})
    assert run(records, mail_from="a@redir.example").effective.result == "pass"
    assert run(records, ip="203.0.113.5", mail_from="a@redir.example").effective.result == "fail"


def test_redirect_to_nothing_is_permerror() -> None:
    records = zone({("redir.example", "TXT"): txt("v=spf1 redirect=nospf.example")})
    assert run(records, mail_from="a@redir.example").effective.result == "permerror"


def test_exp_explanation_in_reason() -> None:
    records = zone(
        {
            ("exp.example", "TXT"): txt("v=spf1 ip4:192.0.2.0/24 -all exp=why.exp.example"),
            ("why.exp.example", "TXT"): txt("%{i} is not one of %{d}'s designated mail servers."),
        }
    )
    res = run(records, ip="203.0.113.5", mail_from="a@exp.example")
    assert res.effective.result == "fail"
    assert "203.0.113.5 is not one of exp.example's designated mail servers." in res.effective.reason
    # A pass does not carry the explanation.
    assert "explanation" not in run(records, mail_from="a@exp.example").effective.reason


def test_exp_with_hostile_text_is_one_printable_line() -> None:
    records = zone(
        {
            ("exp.example", "TXT"): txt("v=spf1 -all exp=why.exp.example"),
            ("why.exp.example", "TXT"): ["x" * 600 + "\r\nX-Injected: yes"],
        }
    )
    reason = run(records, mail_from="a@exp.example").effective.reason
    assert "\n" not in reason and "\r" not in reason
    assert len(reason) <= 200


def test_macro_lookup_goes_to_resolver() -> None:
    records = zone({("macro.example", "TXT"): txt("v=spf1 exists:%{ir}.%{l}._spf.%{d} -all")})
    records[("10.2.0.192.user._spf.macro.example", "A")] = ["127.0.0.2"]
    assert run(records, mail_from="user@macro.example").effective.result == "pass"
    assert run(records, mail_from="other@macro.example").effective.result == "fail"


# RFC 7208 section 7.1: "%%", "%_" and "%-" put "%", " " and "%20" into the name to look up, and
# DNS labels can hold them: the name is asked for exactly as expanded.
def test_macro_mania_in_domain() -> None:
    resolver = ZoneResolver([MACRO_ZONE])
    res = check_spf("192.0.2.1", "mail.macro.example", "test@e1a.macro.example", resolver)
    assert (res.effective.result, res.effective.reason) == (
        "pass",
        "matched a:macro%%percent%_%_space%-url-space.macro.example",
    )
    assert resolver.query_count(MACRO_MANIA_NAME, "A") == 1
    other = check_spf("192.0.2.99", "mail.macro.example", "test@e1a.macro.example", resolver)
    assert other.effective.result == "fail"


def test_labels_of_percent_and_space_are_looked_up_as_expanded() -> None:
    resolver = ZoneResolver([MACRO_ZONE])
    res = check_spf("192.0.2.1", "mail.macro.example", "test@labels.macro.example", resolver)
    assert res.effective.result == "pass", res.effective
    assert resolver.query_count(LABELS_NAME, "A") == 1
    # A name that does not exist is just no match: neither the space nor the "%" is an error.
    other = check_spf("192.0.2.1", "mail.macro.example", "other@labels.macro.example", resolver)
    assert other.effective.result == "fail", other.effective
    assert resolver.query_count(LABELS_NAME.replace("test.", "other.", 1), "A") == 1


# RFC 7208 section 5.5: a PTR target whose A lookup fails is skipped, and the search goes on. The
# test suite's "ptr-cname-loop" has such a target behind a CNAME loop.
@pytest.mark.parametrize(
    ("ip", "mail_from", "result"),
    [
        ("192.0.2.4", "postmaster@loop.example", "neutral"),  # ptr-cname-loop itself
        ("192.0.2.4", "postmaster@next.loop.example", "pass"),  # the next mechanism decides
        ("192.0.2.5", "postmaster@both.loop.example", "pass"),  # the other PTR target validates
    ],
)
def test_ptr_target_in_a_cname_loop_is_skipped(ip: str, mail_from: str, result: str) -> None:
    resolver = ZoneResolver(LOOP_ZONES)
    res = check_spf(ip, "loop.example", mail_from, resolver, check_helo=False)
    assert res.effective.result == result, res.effective
    assert resolver.query_count("loop4.loop.example", "A") == 1


@pytest.mark.parametrize("fault", ["servfail", "timeout"])
def test_ptr_target_that_cannot_be_asked_is_still_temperror(fault: str) -> None:
    resolver = ZoneResolver(LOOP_ZONES)
    resolver.set_fault("slow.loop.example", fault)
    res = check_spf("192.0.2.6", "loop.example", "postmaster@loop.example", resolver)
    assert res.effective.result == "temperror", res.effective


# --- processing limits (RFC 7208 section 4.6.4) ---------------------------------------------------


def _lookup_zone(count: int) -> dict[tuple[str, str], Any]:
    mechanisms = " ".join(f"a:h{i}.many.example" for i in range(count))
    records = zone({("many.example", "TXT"): txt(f"v=spf1 {mechanisms} ip4:192.0.2.0/24 -all")})
    for i in range(count):
        records[(f"h{i}.many.example", "A")] = ["203.0.113.1"]
    return records


def test_ten_lookups_allowed() -> None:
    assert run(_lookup_zone(10), mail_from="a@many.example").effective.result == "pass"


def test_eleven_lookups_permerror() -> None:
    res = run(_lookup_zone(11), mail_from="a@many.example")
    assert res.effective.result == "permerror"
    assert "Too many DNS lookups" in res.effective.reason


def test_lookup_limit_counts_includes() -> None:
    records = zone()
    for i in range(12):
        records[(f"l{i}.loop.example", "TXT")] = txt(f"v=spf1 include:l{i + 1}.loop.example -all")
    assert run(records, mail_from="a@l0.loop.example").effective.result == "permerror"


def test_include_loop_is_permerror_not_exception() -> None:
    records = zone(
        {
            ("a.loop.example", "TXT"): txt("v=spf1 include:b.loop.example -all"),
            ("b.loop.example", "TXT"): txt("v=spf1 include:a.loop.example -all"),
        }
    )
    assert run(records, mail_from="x@a.loop.example").effective.result == "permerror"


def _void_zone(count: int) -> dict[tuple[str, str], Any]:
    mechanisms = " ".join(f"a:gone{i}.void.example" for i in range(count))
    return zone({("void.example", "TXT"): txt(f"v=spf1 {mechanisms} ip4:192.0.2.0/24 -all")})


def test_two_void_lookups_allowed() -> None:
    assert run(_void_zone(2), mail_from="a@void.example").effective.result == "pass"


def test_third_void_lookup_permerror() -> None:
    res = run(_void_zone(3), mail_from="a@void.example")
    assert res.effective.result == "permerror"
    assert "Void lookup" in res.effective.reason


def test_nodata_counts_as_void() -> None:
    records = zone(
        {("void.example", "TXT"): txt("v=spf1 a:nospf.example mx:nospf.example a:mx.example.org/0 -all")}
    )
    records[("nospf.example", "TXT")] = txt("unrelated")
    # nospf.example has TXT and A but no AAAA/MX: "mx" is void, "a" (IPv4 client) is not.
    assert run(records, ip="203.0.113.1", mail_from="a@void.example").effective.result == "pass"
    records[("void.example", "TXT")] = txt("v=spf1 mx:nospf.example mx:mx.example.org mx:example.com -all")
    assert run(records, mail_from="a@void.example").effective.result == "permerror"


def test_overall_timeout_is_temperror() -> None:
    records = zone(
        {
            ("slow.example", "TXT"): txt("v=spf1 a:h1.slow.example a:h2.slow.example a:h3.slow.example -all"),
            ("h1.slow.example", "A"): ["203.0.113.1"],
            ("h2.slow.example", "A"): ["203.0.113.2"],
            ("h3.slow.example", "A"): ["203.0.113.3"],
        }
    )
    resolver = DictResolver(records, delay=0.05)
    res = check_spf("192.0.2.10", "", "a@slow.example", resolver, timeout=0.08)
    assert res.effective.result == "temperror"
    # The budget stopped the evaluation early, it did not just label a finished one.
    assert len(resolver.queries) < 4


# --- inputs pyspf does not expect -----------------------------------------------------------------


def test_no_client_ip() -> None:
    for ip in (None, "", "   "):
        res = run(ip=ip)
        assert res.effective.result == "none"
        assert res.effective.identity is SpfIdentity.MAILFROM
        assert res.effective.domain == "example.com"
        assert "no client IP" in res.effective.reason
        assert res.helo is None


@pytest.mark.parametrize("ip", ["not-an-ip", "999.1.1.1", "192.0.2", "unknown", "::ffff:zz"])
def test_invalid_client_ip_is_none(ip: str) -> None:
    res = run(ip=ip)
    assert res.effective.result == "none"
    assert "not an IP address" in res.effective.reason


@pytest.mark.parametrize(
    ("helo", "mail_from"),
    [
        ("helo with spaces", "user@example.com"),
        ("mx.example.org", "user@exa mple.com"),
        ("bücher.example", "üser@example.com"),
        ("mx.example.org", "user@[192.0.2.1]"),
        ("x" * 5000, "user@" + "a." * 300 + "com"),
        ("mx.example.org", "user@" + "a" * 64 + ".com"),
        ("mx.\x00.org", "user@exa\x00mple.com"),
        ("mx.example.org", '"quoted\\"local@part"@example.com'),
        ("mx.example.org", "user@example.com\r\nX-Injected: 1"),
        ("mx.example.org", "user@-bad-.example"),
        ("mx.example.org", "user@xn--.example"),
        ("mx.example.org", "@"),
        ("mx.example.org", "<@relay.example:user@example.com>"),
    ],
)
def test_hostile_inputs_never_raise(helo: str, mail_from: str) -> None:
    results = []
    for ip in ("192.0.2.10", "2001:db8:1::1", "::ffff:192.0.2.10"):
        res = run(ip=ip, helo=helo, mail_from=mail_from)
        results.append(res.effective.result)
        assert res.effective.result in {
            "pass",
            "fail",
            "softfail",
            "neutral",
            "none",
            "temperror",
            "permerror",
        }
        assert res.helo is None or res.helo.identity is SpfIdentity.HELO
    assert len(results) == 3


@pytest.mark.parametrize(
    "mail_from",
    [
        "user@exa mple.com",
        "user@[192.0.2.1]",
        "user@localhost",
        "user@192.0.2.1",
        "user@example.com\r\nX: 1",
        "@",
    ],
)
def test_unusable_mail_from_domain_is_none(mail_from: str) -> None:
    res = run(mail_from=mail_from)
    assert res.effective.result == "none"
    assert res.effective.identity is SpfIdentity.MAILFROM
    assert res.helo is not None and res.helo.result == "fail"


def test_quoted_local_part_with_at_checks_real_domain() -> None:
    res = run(mail_from='"a@evil.example"@example.com')
    assert res.effective.result == "pass"
    assert res.effective.domain == "example.com"


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::FFFF:192.0.2.1", "192.0.2.1"),
        ("IPv6:2001:DB8::1", "2001:db8::1"),
        ("[192.0.2.1]", "192.0.2.1"),
        ("fe80::1%eth0", "fe80::1"),
        ("192.0.2.256", None),
        ("", None),
    ],
)
def test_normalize_client_ip(raw: str, normal: str | None) -> None:
    assert normalize_client_ip(raw) == normal


def test_source_route_is_stripped() -> None:
    assert run(mail_from="<@relay.example:user@example.com>").effective.result == "pass"


def test_idn_domain_is_checked_as_a_label() -> None:
    records = zone({("xn--bcher-kva.example", "TXT"): txt("v=spf1 ip4:192.0.2.0/24 -all")})
    resolver = DictResolver(records)
    res = check_spf("192.0.2.10", "", "user@bücher.example", resolver)
    assert res.effective.result == "pass"
    assert res.effective.domain == "xn--bcher-kva.example"
    assert ("xn--bcher-kva.example", "TXT") in resolver.queries


def test_non_ascii_local_part_in_macro_is_void_not_crash() -> None:
    records = zone({("macro.example", "TXT"): txt("v=spf1 exists:%{l}.x.macro.example -all")})
    resolver = DictResolver(records)
    res = check_spf("192.0.2.10", "", "jörg@macro.example", resolver)
    assert res.effective.result == "fail"
    assert all(name.isascii() for name, _ in resolver.queries)


def test_non_ascii_spf_record_is_permerror() -> None:
    records = zone({("example.com", "TXT"): [("v=spf1 ip4:192.0.2.0/24 ä -all".encode(),)]})
    assert run(records).effective.result == "permerror"


def test_malformed_a_record_from_resolver_is_permerror() -> None:
    records = zone(
        {
            ("bad.example", "TXT"): txt("v=spf1 a:host.bad.example -all"),
            ("host.bad.example", "A"): ["not-an-address"],
        }
    )
    assert run(records, mail_from="a@bad.example").effective.result == "permerror"


class RaisingResolver:
    def query(self, name: str, rdtype: str) -> DnsAnswer:
        raise OSError("socket exploded")


def test_resolver_that_raises_gives_temperror() -> None:
    res = check_spf("192.0.2.10", "mx.example.org", "user@example.com", RaisingResolver())
    assert res.effective.result == "temperror"
    assert res.helo is not None and res.helo.result == "temperror"


def test_pyspf_crash_is_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: Any, spf: Any = None) -> Any:
        raise AssertionError("Too many levels of recursion")

    monkeypatch.setattr(pyspf.query, "check", boom)
    res = run()
    assert res.effective.result == "permerror"
    assert "Too many levels of recursion" in res.effective.reason


def test_non_rfc_result_is_never_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        pyspf.query, "check", lambda self, spf=None: ("ambiguous", 0, "SPF Ambiguity Warning")
    )
    res = run()
    assert res.effective.result == "permerror"
    assert "ambiguous" in res.effective.reason


# --- isolation between concurrent checks ----------------------------------------------------------


def test_no_global_state_between_threads() -> None:
    """Two resolvers answer the same names differently; every thread must see only its own.

    The verdict depends on the second lookup, made after the first one slept, i.e. after other
    threads have started their own checks: a resolver kept in shared state would be swapped
    under us by then.
    """
    chain = {("shared.example", "TXT"): txt("v=spf1 include:policy.shared.example ?all")}
    allow = DictResolver(
        {**chain, ("policy.shared.example", "TXT"): txt("v=spf1 ip4:192.0.2.0/24 -all")}, delay=0.001
    )
    deny = DictResolver(
        {**chain, ("policy.shared.example", "TXT"): txt("v=spf1 ip4:10.0.0.0/8 -all")}, delay=0.001
    )
    barrier = threading.Barrier(16)
    outcomes: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(resolver: DictResolver, expected: str) -> None:
        barrier.wait()
        for _ in range(20):
            result = check_spf("192.0.2.1", "", "a@shared.example", resolver).effective.result
            with lock:
                outcomes.append((expected, result))

    threads = [
        threading.Thread(target=worker, args=(allow, "pass") if i % 2 else (deny, "neutral"))
        for i in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 16 * 20
    assert all(expected == got for expected, got in outcomes)
    assert {got for _, got in outcomes} == {"pass", "neutral"}


def test_resolver_not_left_installed() -> None:
    run()
    assert spf_module._current_resolver.get() is None
    run(zone({("example.com", "TXT"): TEMP}))
    assert spf_module._current_resolver.get() is None


def test_outside_check_spf_pyspf_keeps_its_own_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []

    def fake(name: str, qtype: str, strict: object = True, timeout: float = 20.0) -> list[Any]:
        calls.append((name, qtype))
        return []

    monkeypatch.setattr(spf_module, "_pyspf_lookup", fake)
    assert pyspf.DNSLookup is spf_module._dns_lookup
    assert pyspf.DNSLookup("example.com", "TXT", True, 5) == []
    assert calls == [("example.com", "TXT")]
    # Inside check_spf the same global goes to our resolver instead.
    assert run().effective.result == "pass"
    assert calls == [("example.com", "TXT")]
