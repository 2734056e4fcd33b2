"""DMARC (RFC 9989): record syntax, the DNS Tree Walk, alignment and the policy that applies."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pytest

from authmilter.core.checks.dmarc import (
    RecordError,
    discover_policy,
    evaluate_dmarc,
    organizational_domain,
    parse_record,
    tree_walk,
)
from authmilter.core.dnsapi import DnsAnswer, DnsStatus
from authmilter.core.model import (
    AuthorResult,
    DkimResult,
    DmarcRecord,
    DmarcResult,
    SpfIdentity,
    SpfResult,
    SpfResults,
)

TxtValue = str | tuple[str, ...]  # a tuple is one record split into character-strings


class FakeDns:
    """A tiny zone from a dict, logging every query.

    `txt` maps owner names to TXT records. A name exists if it, or a name below it, holds data
    (names in `txt` or `hosts`); otherwise it is NXDOMAIN. `hosts` have an A record. `temperror`
    holds names (any type) or "name/TYPE" that fail temporarily.
    """

    def __init__(
        self,
        txt: Mapping[str, TxtValue | Sequence[TxtValue]] | None = None,
        *,
        hosts: Iterable[str] = (),
        temperror: Iterable[str] = (),
    ) -> None:
        self.txt: dict[str, list[TxtValue]] = {}
        for name, value in (txt or {}).items():
            self.txt[name.lower()] = [value] if isinstance(value, (str, tuple)) else list(value)
        self.hosts = {h.lower() for h in hosts}
        self.temperror = set(temperror)
        self.log: list[tuple[str, str]] = []

    def _exists(self, name: str) -> bool:
        return any(n == name or n.endswith("." + name) for n in (*self.txt, *self.hosts))

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        name = name.lower().rstrip(".")
        self.log.append((name, rdtype))
        if name in self.temperror or f"{name}/{rdtype}" in self.temperror:
            return DnsAnswer(DnsStatus.TEMPERROR, error="timeout")
        if rdtype == "TXT" and name in self.txt:
            records = tuple(
                tuple(s.encode() for s in ((v,) if isinstance(v, str) else v)) for v in self.txt[name]
            )
            return DnsAnswer(DnsStatus.OK, records)
        if rdtype == "A" and name in self.hosts:
            return DnsAnswer(DnsStatus.OK, ("192.0.2.1",))
        return DnsAnswer(DnsStatus.NODATA if self._exists(name) else DnsStatus.NXDOMAIN)

    def txt_queries(self) -> list[str]:
        return [n.removeprefix("_dmarc.") for n, t in self.log if t == "TXT"]


def record(txt: str, domain: str = "") -> DmarcRecord:
    parsed = parse_record(txt, domain)
    assert isinstance(parsed, DmarcRecord), parsed
    return parsed


def spf_pass(domain: str, result: str = "pass") -> SpfResults:
    return SpfResults(
        effective=SpfResult(result, SpfIdentity.MAILFROM, domain, f"bounce@{domain}"),
        helo=None,
    )


def dkim(d: str, result: str = "pass") -> DkimResult:
    return DkimResult(result=result, domain=d, selector="s1", algorithm="rsa-sha256", b_prefix="abcdefgh")


def evaluate(
    author_domain: str,
    dns: FakeDns,
    *,
    spf: SpfResults | None = None,
    sigs: Sequence[DkimResult] = (),
    sample: float | None = None,
) -> DmarcResult:
    def sampler() -> float:
        assert sample is not None, "sampler called when it should not be"
        return sample

    return evaluate_dmarc(AuthorResult(domain=author_domain), spf, sigs, dns, sample=sampler)


# --- record syntax ---------------------------------------------------------------------------------


def test_parse_minimal_record_defaults() -> None:
    r = record("v=DMARC1; p=reject", "example.com")
    assert (r.domain, r.p, r.sp, r.np, r.adkim, r.aspf, r.pct, r.t, r.psd) == (
        "example.com",
        "reject",
        None,
        None,
        "r",
        "r",
        None,
        False,
        None,
    )
    assert r.errors == () and r.unusable == "" and r.raw == "v=DMARC1; p=reject"


def test_parse_is_case_insensitive_except_version() -> None:
    r = record("v=DMARC1;P=Quarantine;SP=REJECT;NP=None;ADKIM=s;aspf=S;T=Y;PSD=N;")
    assert (r.p, r.sp, r.np, r.adkim, r.aspf, r.t, r.psd) == (
        "quarantine",
        "reject",
        "none",
        "s",
        "s",
        True,
        "n",
    )


def test_parse_whitespace_and_trailing_separator() -> None:
    r = record("  v = DMARC1 ;\tp = reject ;  sp=none ;  ")
    assert (r.p, r.sp, r.errors) == ("reject", "none", ())


@pytest.mark.parametrize(
    "txt",
    [
        "p=reject; v=DMARC1",  # v must be first
        "v=dmarc1; p=reject",  # the version value is case-sensitive
        "v=DMARC2; p=reject",
        "v=DMARC1 p=reject",  # no separator: v's value is "DMARC1 p=reject"
        "v=spf1 -all",
        "",
        "DMARC1",
    ],
)
def test_not_a_dmarc_record(txt: str) -> None:
    assert isinstance(parse_record(txt), RecordError)


def test_version_only_record_is_a_record() -> None:
    assert record("v=DMARC1").p is None


def test_unknown_and_reporting_tags_are_ignored() -> None:
    r = record("v=DMARC1; p=reject; foo=bar; rf=afrf; ri=86400; fo=1:d; ruf=mailto:f@example.com; x=")
    assert r.p == "reject"
    assert r.errors == ()  # unknown tags are not even syntax-checked beyond tag=value


def test_missing_p_reads_as_none_policy() -> None:
    r = record("v=DMARC1; sp=reject")
    assert (r.p, r.sp, r.unusable) == (None, "reject", "")


def test_invalid_p_with_valid_rua_acts_as_p_none() -> None:
    r = record("v=DMARC1; p=bogus; sp=reject; rua=mailto:d@example.com")
    assert (r.p, r.sp, r.np, r.unusable) == ("none", None, None, "")
    assert r.rua == ("mailto:d@example.com",)
    assert any("acting as p=none" in e for e in r.errors)


@pytest.mark.parametrize(
    "txt",
    [
        "v=DMARC1; p=bogus",
        "v=DMARC1; p=reject; sp=maybe",
        "v=DMARC1; p=reject; np=",
        "v=DMARC1; p=bogus; rua=not a uri",
        "v=DMARC1; p=reject; p=none",  # duplicated: which one was meant?
    ],
)
def test_invalid_policy_without_rua_is_unusable(txt: str) -> None:
    assert record(txt).unusable


def test_invalid_alignment_and_flags_fall_back_to_defaults() -> None:
    r = record("v=DMARC1; p=reject; adkim=x; aspf=relaxed; t=maybe; psd=q")
    assert (r.adkim, r.aspf, r.t, r.psd, r.p) == ("r", "r", False, None, "reject")
    assert len(r.errors) == 4


def test_malformed_tag_is_ignored() -> None:
    r = record("v=DMARC1; p reject; sp=none")
    assert (r.p, r.sp) == (None, "none")
    assert r.errors == ("malformed tag 'p reject' ignored",)


def test_rua_list_with_obsolete_size_suffix() -> None:
    r = record("v=DMARC1; p=none; rua=mailto:a@example.com!10m, mailto:b@example.net,bogus")
    assert r.rua == ("mailto:a@example.com!10m", "mailto:b@example.net")


@pytest.mark.parametrize(
    ("pct", "expected", "testing"),
    [("100", 100, False), ("50", 50, False), ("0", 0, True), ("101", None, False), ("x", None, False)],
)
def test_pct_compatibility(pct: str, expected: int | None, testing: bool) -> None:
    r = record(f"v=DMARC1; p=reject; pct={pct}")
    assert (r.pct, r.t) == (expected, testing)


def test_psd_values() -> None:
    assert record("v=DMARC1; psd=y").psd == "y"
    assert record("v=DMARC1; psd=N").psd == "n"
    assert record("v=DMARC1; psd=u").psd == "u"


# --- the DNS Tree Walk -------------------------------------------------------------------------


def test_walk_of_long_name_matches_rfc_example() -> None:
    # RFC 9989 section 4.10: the eight queries for a.b.c.d.e.f.g.h.i.j.mail.example.com.
    dns = FakeDns()
    walk = tree_walk("a.b.c.d.e.f.g.h.i.j.mail.example.com", dns)
    expected = [
        "a.b.c.d.e.f.g.h.i.j.mail.example.com",
        "g.h.i.j.mail.example.com",
        "h.i.j.mail.example.com",
        "i.j.mail.example.com",
        "j.mail.example.com",
        "mail.example.com",
        "example.com",
        "com",
    ]
    assert list(walk.queried) == expected
    assert dns.txt_queries() == expected


@pytest.mark.parametrize("labels", [1, 2, 7, 8, 9, 30, 120])
def test_walk_never_asks_more_than_eight_names(labels: int) -> None:
    name = ".".join(f"l{i}" for i in range(labels - 1)) + ".example" if labels > 1 else "example"
    dns = FakeDns()
    tree_walk(name, dns)
    assert len(dns.log) == min(labels, 8)
    assert dns.txt_queries()[0] == name


def test_deep_psd_n_below_the_shortcut_is_never_seen() -> None:
    # Section 5.1.8: the record at b.c.d.e.f.g.example.com is skipped by the jump to 7 labels.
    dns = FakeDns(
        {
            "_dmarc.example.com": "v=DMARC1; p=reject",
            "_dmarc.b.c.d.e.f.g.example.com": "v=DMARC1; p=none; psd=n",
        }
    )
    found = discover_policy("mail.a.b.c.d.e.f.g.example.com", dns)
    assert found.domain == "example.com"
    assert "b.c.d.e.f.g.example.com" not in dns.txt_queries()


def test_walk_stops_at_psd_tag() -> None:
    dns = FakeDns({"_dmarc.mail.example.com": "v=DMARC1; p=none; psd=n"})
    walk = tree_walk("a.mail.example.com", dns)
    assert walk.queried == ("a.mail.example.com", "mail.example.com")


@pytest.mark.parametrize(
    ("zone", "start", "org"),
    [
        # RFC 9989 section 4.10.2 examples.
        (
            {"_dmarc.mail.example.com": "v=DMARC1; p=none", "_dmarc.example.com": "v=DMARC1; p=none"},
            "a.mail.example.com",
            "example.com",
        ),
        ({"_dmarc.mail.example.com": "v=DMARC1; p=none; psd=n"}, "a.mail.example.com", "mail.example.com"),
        ({"_dmarc.com": "v=DMARC1; p=none; psd=y"}, "a.mail.example.com", "example.com"),
        # Appendix B.4.1.
        (
            {"_dmarc.example.com": "v=DMARC1; p=none", "_dmarc.signing.example.com": "v=DMARC1; p=none"},
            "signing.example.com",
            "example.com",
        ),
        # Appendix B.4.3.
        (
            {
                "_dmarc.bank.example": "v=DMARC1; p=none; psd=y",
                "_dmarc.giant.bank.example": "v=DMARC1; p=none",
            },
            "giant.bank.example",
            "giant.bank.example",
        ),
        (
            {
                "_dmarc.bank.example": "v=DMARC1; p=none; psd=y",
                "_dmarc.giant.bank.example": "v=DMARC1; p=none",
            },
            "mail.giant.bank.example",
            "giant.bank.example",
        ),
        ({"_dmarc.bank.example": "v=DMARC1; p=none; psd=y"}, "mail.mega.bank.example", "mega.bank.example"),
        # psd=y at the start does not make the name below it an Organizational Domain.
        ({"_dmarc.bank.example": "v=DMARC1; p=none; psd=y"}, "bank.example", "bank.example"),
        # No records at all: the start is its own Organizational Domain.
        ({}, "a.b.example.com", "a.b.example.com"),
    ],
)
def test_organizational_domain(zone: dict[str, str], start: str, org: str) -> None:
    assert organizational_domain(start, FakeDns(zone)).domain == org


def test_organizational_domain_temperror() -> None:
    dns = FakeDns({"_dmarc.example.com": "v=DMARC1; p=none"}, temperror={"_dmarc.example.com"})
    result = organizational_domain("mail.example.com", dns)
    assert result.domain is None
    assert "example.com" in result.reason


# --- policy discovery --------------------------------------------------------------------------


def test_policy_at_author_domain() -> None:
    dns = FakeDns({"_dmarc.example.com": "v=DMARC1; p=reject"})
    found = discover_policy("example.com", dns)
    assert (found.domain, found.record and found.record.p) == ("example.com", "reject")
    assert dns.txt_queries() == ["example.com"]  # found at once: no walk


def test_policy_from_organizational_domain_not_nearest_parent() -> None:
    # Section 4.10.1: the Organizational Domain's record (fewest labels), not the closest one.
    dns = FakeDns(
        {"_dmarc.mail.example.com": "v=DMARC1; p=reject", "_dmarc.example.com": "v=DMARC1; p=quarantine"}
    )
    found = discover_policy("a.mail.example.com", dns)
    assert (found.domain, found.org_domain) == ("example.com", "example.com")


def test_policy_from_public_suffix_domain() -> None:
    dns = FakeDns({"_dmarc.bank.example": "v=DMARC1; p=reject; psd=y"})
    found = discover_policy("www.giant.bank.example", dns)
    assert (found.domain, found.org_domain) == ("bank.example", "giant.bank.example")


def test_multiple_records_discarded_and_walk_continues() -> None:
    dns = FakeDns(
        {
            "_dmarc.mail.example.com": ["v=DMARC1; p=none", "v=DMARC1; p=reject"],
            "_dmarc.example.com": "v=DMARC1; p=quarantine",
        }
    )
    found = discover_policy("mail.example.com", dns)
    assert found.domain == "example.com"
    assert any("2 DMARC records at _dmarc.mail.example.com discarded" in n for n in found.notes)


def test_non_dmarc_txt_records_ignored_and_strings_joined() -> None:
    dns = FakeDns({"_dmarc.example.com": ["v=spf1 -all", "hello", ("v=DMARC1; ", "p=reject")]})
    found = discover_policy("example.com", dns)
    assert found.record is not None and found.record.p == "reject"


def test_no_policy() -> None:
    found = discover_policy("example.com", FakeDns({"_dmarc.example.com": "v=spf1 -all"}))
    assert found.record is None and not found.temperror


@pytest.mark.parametrize("failing", ["_dmarc.mail.example.com", "_dmarc.example.com"])
def test_discovery_temperror(failing: str) -> None:
    dns = FakeDns({"_dmarc.example.com": "v=DMARC1; p=reject"}, temperror={failing})
    found = discover_policy("mail.example.com", dns)
    assert found.temperror and found.record is None


# --- evaluation --------------------------------------------------------------------------------

ORG = {"_dmarc.example.com": "v=DMARC1; p=reject"}


def test_author_error_is_permerror_without_dns() -> None:
    dns = FakeDns(ORG)
    result = evaluate_dmarc(AuthorResult(domain=None, error="2 From header fields"), None, [], dns)
    assert result.result == "permerror"
    assert "2 From header fields" in result.reason
    assert dns.log == []


def test_no_record_is_none() -> None:
    result = evaluate("example.org", FakeDns(ORG), sigs=[dkim("example.org")])
    assert (result.result, result.policy, result.record) == ("none", "", None)


def test_dkim_exact_pass() -> None:
    result = evaluate("example.com", FakeDns(ORG), sigs=[dkim("Example.COM")])
    assert (result.result, result.dkim_aligned, result.aligned_by) == ("pass", True, "dkim:example.com")
    assert (result.policy, result.applied_tag, result.org_domain) == ("reject", "p", "example.com")


@pytest.mark.parametrize(("adkim", "expected"), [("r", "pass"), ("s", "fail")])
def test_dkim_relaxed_vs_strict(adkim: str, expected: str) -> None:
    dns = FakeDns({"_dmarc.example.com": f"v=DMARC1; p=reject; adkim={adkim}"})
    result = evaluate("example.com", dns, sigs=[dkim("mail.example.com")])
    assert result.result == expected
    assert result.dkim_aligned is (expected == "pass")


def test_dkim_parent_domain_aligns_relaxed_for_subdomain_author() -> None:
    result = evaluate(
        "news.example.com", FakeDns(ORG, hosts={"news.example.com"}), sigs=[dkim("example.com")]
    )
    assert (result.result, result.aligned_by) == ("pass", "dkim:example.com")


def test_dkim_sibling_subdomains_align_relaxed() -> None:
    result = evaluate("a.example.com", FakeDns(ORG, hosts={"a.example.com"}), sigs=[dkim("b.example.com")])
    assert result.result == "pass"


# temperror is not among them: an aligned signature whose key lookup timed out makes DMARC
# temperror (test_an_aligned_check_that_timed_out_is_temperror_not_fail).
@pytest.mark.parametrize("status", ["fail", "neutral", "permerror", "policy"])
def test_only_passing_signatures_count(status: str) -> None:
    result = evaluate("example.com", FakeDns(ORG), sigs=[dkim("example.com", status)])
    assert (result.result, result.policy) == ("fail", "reject")


def test_unrelated_signer_does_not_align_and_is_not_walked() -> None:
    dns = FakeDns(ORG)
    result = evaluate("example.com", dns, sigs=[dkim("evil.example")])
    assert result.result == "fail"
    assert not any("evil.example" in name for name, _ in dns.log)


def test_psd_n_boundary_blocks_relaxed_alignment() -> None:
    dns = FakeDns({**ORG, "_dmarc.dept.example.com": "v=DMARC1; p=none; psd=n"})
    result = evaluate("example.com", dns, sigs=[dkim("dept.example.com")])
    assert result.result == "fail"


@pytest.mark.parametrize(("aspf", "expected"), [("r", "pass"), ("s", "fail")])
def test_spf_relaxed_vs_strict(aspf: str, expected: str) -> None:
    dns = FakeDns({"_dmarc.example.com": f"v=DMARC1; p=reject; aspf={aspf}"})
    result = evaluate("example.com", dns, spf=spf_pass("bounce.example.com"))
    assert result.result == expected
    if expected == "pass":
        assert (result.spf_aligned, result.aligned_by) == (True, "spf:bounce.example.com")


def test_spf_exact_strict_pass() -> None:
    dns = FakeDns({"_dmarc.example.com": "v=DMARC1; p=reject; aspf=s"})
    assert evaluate("example.com", dns, spf=spf_pass("EXAMPLE.com")).result == "pass"


@pytest.mark.parametrize("status", ["fail", "softfail", "neutral", "none", "permerror"])
def test_spf_non_pass_does_not_align(status: str) -> None:
    result = evaluate("example.com", FakeDns(ORG), spf=spf_pass("example.com", status))
    assert (result.result, result.spf_aligned) == ("fail", False)


def test_helo_identity_counts_when_mail_from_is_null() -> None:
    # RFC 9989 section 3.2.4 / RFC 7208 section 2.4: null MAIL FROM means postmaster@<HELO>.
    spf = SpfResults(
        effective=SpfResult("pass", SpfIdentity.HELO, "mx.example.com", "mx.example.com"),
        helo=SpfResult("pass", SpfIdentity.HELO, "mx.example.com", "mx.example.com"),
    )
    result = evaluate("example.com", FakeDns(ORG), spf=spf)
    assert (result.result, result.aligned_by) == ("pass", "spf:mx.example.com")
    assert "HELO" in result.reason


def test_helo_pass_does_not_rescue_failed_mail_from() -> None:
    spf = SpfResults(
        effective=SpfResult("fail", SpfIdentity.MAILFROM, "example.com", "x@example.com"),
        helo=SpfResult("pass", SpfIdentity.HELO, "mx.example.com", "mx.example.com"),
    )
    result = evaluate("example.com", FakeDns(ORG), spf=spf)
    assert (result.result, result.spf_aligned) == ("fail", False)


def test_both_mechanisms_reported() -> None:
    result = evaluate(
        "example.com", FakeDns(ORG), spf=spf_pass("bounce.example.com"), sigs=[dkim("example.com")]
    )
    assert (result.dkim_aligned, result.spf_aligned, result.aligned_by) == (True, True, "dkim:example.com")


# --- which policy applies ------------------------------------------------------------------------

SP_ORG = {"_dmarc.example.com": "v=DMARC1; p=reject; sp=quarantine"}


def test_p_for_organizational_domain_itself() -> None:
    result = evaluate("example.com", FakeDns(SP_ORG))
    assert (result.result, result.policy, result.applied_tag) == ("fail", "reject", "p")


def test_sp_for_existing_subdomain() -> None:
    result = evaluate("news.example.com", FakeDns(SP_ORG, hosts={"news.example.com"}))
    assert (result.result, result.policy, result.applied_tag) == ("fail", "quarantine", "sp")
    assert result.record is not None and result.record.domain == "example.com"
    assert result.org_domain == "example.com"


def test_p_for_subdomain_without_sp() -> None:
    result = evaluate("news.example.com", FakeDns(ORG, hosts={"news.example.com"}))
    assert (result.policy, result.applied_tag) == ("reject", "p")


def test_subdomain_with_its_own_record_uses_its_p() -> None:
    dns = FakeDns({**SP_ORG, "_dmarc.news.example.com": "v=DMARC1; p=none"})
    result = evaluate("news.example.com", dns)
    assert (result.policy, result.applied_tag, result.org_domain) == ("none", "p", "example.com")


NP_ORG = {"_dmarc.example.com": "v=DMARC1; p=none; sp=quarantine; np=reject"}


def test_np_for_non_existent_subdomain() -> None:
    dns = FakeDns(NP_ORG)
    result = evaluate("nosuch.example.com", dns)
    assert (result.result, result.policy, result.applied_tag) == ("fail", "reject", "np")
    assert ("nosuch.example.com", "A") in dns.log


def test_np_not_for_existing_subdomain() -> None:
    result = evaluate("www.example.com", FakeDns(NP_ORG, hosts={"www.example.com"}))
    assert (result.policy, result.applied_tag) == ("quarantine", "sp")


def test_np_not_for_subdomain_existing_without_address_records() -> None:
    # NODATA means the name exists (Appendix A.4); only NXDOMAIN selects np.
    dns = FakeDns({**NP_ORG, "_sip._tcp.www.example.com": "x"})
    assert evaluate("www.example.com", dns).applied_tag == "sp"


@pytest.mark.parametrize(
    ("txt", "policy", "tag"),
    [
        ("v=DMARC1; p=reject; sp=quarantine", "quarantine", "sp"),  # np absent: sp
        ("v=DMARC1; p=reject", "reject", "p"),  # np and sp absent: p
        ("v=DMARC1; sp=quarantine", "quarantine", "sp"),
        ("v=DMARC1", "none", "p"),  # p absent reads as none
    ],
)
def test_np_fallbacks(txt: str, policy: str, tag: str) -> None:
    dns = FakeDns({"_dmarc.example.com": txt})
    result = evaluate("nosuch.example.com", dns)
    assert (result.result, result.policy, result.applied_tag) == ("fail", policy, tag)
    assert ("nosuch.example.com", "A") not in dns.log  # without np, existence does not matter


def test_existence_not_checked_when_message_passes() -> None:
    dns = FakeDns(NP_ORG)
    result = evaluate("nosuch.example.com", dns, sigs=[dkim("example.com")])
    assert result.result == "pass"
    assert ("nosuch.example.com", "A") not in dns.log


def test_psd_policy_for_organization_without_record() -> None:
    dns = FakeDns(
        {"_dmarc.bank.example": "v=DMARC1; p=reject; sp=quarantine; psd=y"}, hosts={"giant.bank.example"}
    )
    result = evaluate("giant.bank.example", dns)
    assert (result.policy, result.applied_tag, result.org_domain) == (
        "quarantine",
        "sp",
        "giant.bank.example",
    )
    assert result.record is not None and result.record.domain == "bank.example"


def test_rfc_psd_example_end_to_end() -> None:
    # Appendix B.4.3: SPF (mail.giant.bank.example) aligns, DKIM (mail.mega.bank.example) does not.
    dns = FakeDns(
        {"_dmarc.bank.example": "v=DMARC1; p=none; psd=y", "_dmarc.giant.bank.example": "v=DMARC1; p=reject"}
    )
    result = evaluate(
        "giant.bank.example",
        dns,
        spf=spf_pass("mail.giant.bank.example"),
        sigs=[dkim("mail.mega.bank.example")],
    )
    assert (result.result, result.spf_aligned, result.dkim_aligned) == ("pass", True, False)
    assert (result.org_domain, result.policy) == ("giant.bank.example", "reject")


# --- testing mode and pct ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "lowered"), [("reject", "quarantine"), ("quarantine", "none"), ("none", "none")]
)
def test_t_y_applies_next_lower_policy(p: str, lowered: str) -> None:
    dns = FakeDns({"_dmarc.example.com": f"v=DMARC1; p={p}; t=y"})
    result = evaluate("example.com", dns)
    assert (result.result, result.policy, result.testing) == ("fail", lowered, True)


def test_pct_zero_is_testing() -> None:
    dns = FakeDns({"_dmarc.example.com": "v=DMARC1; p=reject; pct=0"})
    result = evaluate("example.com", dns)  # no sampling: pct=0 is t=y
    assert (result.policy, result.testing) == ("quarantine", True)


@pytest.mark.parametrize(("draw", "policy", "testing"), [(0.3, "reject", False), (0.5, "quarantine", True)])
def test_pct_50_samples(draw: float, policy: str, testing: bool) -> None:
    dns = FakeDns({"_dmarc.example.com": "v=DMARC1; p=reject; pct=50"})
    result = evaluate("example.com", dns, sample=draw)
    assert (result.result, result.policy, result.testing) == ("fail", policy, testing)


def test_pct_not_sampled_on_pass_or_full_percentage() -> None:
    dns = FakeDns({"_dmarc.example.com": "v=DMARC1; p=reject; pct=50"})
    assert evaluate("example.com", dns, sigs=[dkim("example.com")]).result == "pass"
    dns = FakeDns({"_dmarc.example.com": "v=DMARC1; p=reject; pct=100"})
    assert evaluate("example.com", dns).policy == "reject"


def test_pct_sampling_applies_to_sp() -> None:
    dns = FakeDns({"_dmarc.example.com": "v=DMARC1; p=none; sp=quarantine; pct=20"}, hosts={"a.example.com"})
    result = evaluate("a.example.com", dns, sample=0.9)
    assert (result.policy, result.applied_tag, result.testing) == ("none", "sp", True)


# --- broken records ----------------------------------------------------------------------------


def test_multiple_records_at_only_policy_name_gives_none() -> None:
    dns = FakeDns({"_dmarc.example.com": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]})
    result = evaluate("example.com", dns)
    assert result.result == "none"
    assert "2 DMARC records at _dmarc.example.com discarded" in result.reason


def test_unusable_record_means_no_dmarc_processing() -> None:
    dns = FakeDns({"_dmarc.example.com": "v=DMARC1; p=rejekt"})
    result = evaluate("example.com", dns)
    assert result.result == "none"
    assert result.record is not None and "no valid rua" in result.reason


def test_invalid_policy_with_rua_is_monitoring() -> None:
    dns = FakeDns({"_dmarc.example.com": "v=DMARC1; p=rejekt; rua=mailto:r@example.com"})
    result = evaluate("example.com", dns)
    assert (result.result, result.policy) == ("fail", "none")


# --- temporary DNS errors ------------------------------------------------------------------------


def test_policy_lookup_temperror() -> None:
    dns = FakeDns(ORG, temperror={"_dmarc.example.com"})
    result = evaluate("example.com", dns)
    assert (result.result, result.policy) == ("temperror", "")


def test_policy_lookup_temperror_despite_exact_alignment() -> None:
    dns = FakeDns(ORG, temperror={"_dmarc.example.com"})
    result = evaluate("example.com", dns, sigs=[dkim("example.com")])
    assert (result.result, result.dkim_aligned, result.aligned_by) == ("temperror", True, "dkim:example.com")


def test_temperror_during_walk_up() -> None:
    dns = FakeDns(ORG, hosts={"a.b.example.com"}, temperror={"_dmarc.com"})
    assert evaluate("a.b.example.com", dns).result == "temperror"


def test_temperror_in_identifier_walk_when_nothing_else_aligns() -> None:
    dns = FakeDns(ORG, temperror={"_dmarc.mail.example.com"})
    result = evaluate("example.com", dns, sigs=[dkim("mail.example.com")])
    assert result.result == "temperror"
    assert "mail.example.com" in result.reason


def test_temperror_in_identifier_walk_irrelevant_when_other_aligns() -> None:
    dns = FakeDns(ORG, temperror={"_dmarc.mail.example.com"})
    result = evaluate("example.com", dns, spf=spf_pass("example.com"), sigs=[dkim("mail.example.com")])
    assert (result.result, result.aligned_by) == ("pass", "spf:example.com")


def test_temperror_in_author_org_walk_with_relaxed_identifier() -> None:
    # The policy is the author's own record, but relaxed alignment needs the walk above it.
    dns = FakeDns({**ORG, "_dmarc.news.example.com": "v=DMARC1; p=reject"}, temperror={"_dmarc.com"})
    result = evaluate("news.example.com", dns, sigs=[dkim("example.com")])
    assert result.result == "temperror"


def test_existence_temperror() -> None:
    dns = FakeDns(NP_ORG, temperror={"www.example.com/A"})
    result = evaluate("www.example.com", dns)
    assert result.result == "temperror"
    assert "existence" in result.reason


# --- bounded, memoized DNS ---------------------------------------------------------------------


def test_each_name_asked_once_per_evaluation() -> None:
    dns = FakeDns(
        {**SP_ORG, "_dmarc.mail.example.com": "v=DMARC1; p=none"},
        hosts={"x.y.news.example.com"},
    )
    result = evaluate(
        "x.y.news.example.com",
        dns,
        spf=spf_pass("bounce.mail.example.com", "pass"),
        sigs=[
            dkim("mail.example.com", "fail"),
            dkim("a.mail.example.com"),
            dkim("A.MAIL.example.com"),
            dkim("example.com"),
        ],
    )
    assert result.result == "pass"
    assert len(dns.log) == len(set(dns.log))


def test_deep_author_domain_discovery_stays_within_eight_queries() -> None:
    author = ".".join(f"l{i}" for i in range(40)) + ".example.com"
    dns = FakeDns(ORG, hosts={author})
    result = evaluate(author, dns, sigs=[dkim("example.com")])
    assert result.result == "pass"
    assert len(dns.txt_queries()) <= 8
    assert dns.txt_queries()[0] == author


def test_relaxed_walks_are_capped() -> None:
    # Thirty passing signers under the author's organization, each its own psd=n organization, so
    # none aligns and each would need a walk of its own.
    zone = {"_dmarc.example.com": "v=DMARC1; p=reject"}
    zone.update({f"_dmarc.s{i}.example.com": "v=DMARC1; p=none; psd=n" for i in range(30)})
    dns = FakeDns(zone)
    result = evaluate("example.com", dns, sigs=[dkim(f"s{i}.example.com") for i in range(30)])
    assert result.result == "fail"
    assert len(dns.log) == 2 + 10  # the author's walk, then ten identifier walks of one new name each
    assert "more than 10 walks" in result.reason


# --- a check that could not finish ---------------------------------------------------------------


@pytest.mark.parametrize(("spf", "sigs"), [
    (spf_pass("example.com", "temperror"), ()),
    (spf_pass("bounce.example.com", "temperror"), ()),  # relaxed: aligned through the org domain
    (None, (dkim("example.com", "temperror"),)),
    (spf_pass("other.example", "fail"), (dkim("other.example"), dkim("mail.example.com", "temperror"))),
])
def test_an_aligned_check_that_timed_out_is_temperror_not_fail(
        spf: SpfResults | None, sigs: Sequence[DkimResult]) -> None:
    # A passing DNS fault must not let p=reject refuse, for good, mail a retry would authenticate.
    dns = FakeDns({"_dmarc.example.com": "v=DMARC1; p=reject"},
                  hosts={"bounce.example.com", "mail.example.com"})
    result = evaluate("example.com", dns, spf=spf, sigs=sigs)
    assert result.result == "temperror", result.reason
    assert "authentication undetermined" in result.reason and result.policy == "reject"


@pytest.mark.parametrize(("spf", "sigs"), [
    (spf_pass("attacker.example", "temperror"), ()),
    (None, (dkim("attacker.example", "temperror"),)),
    (spf_pass("example.com", "fail"), (dkim("attacker.example", "temperror"),)),
])
def test_a_timed_out_check_for_another_domain_still_fails(spf: SpfResults | None,
                                                          sigs: Sequence[DkimResult]) -> None:
    dns = FakeDns({"_dmarc.example.com": "v=DMARC1; p=reject"})
    result = evaluate("example.com", dns, spf=spf, sigs=sigs)
    assert result.result == "fail", result.reason


def test_strict_alignment_ignores_a_timed_out_subdomain() -> None:
    dns = FakeDns({"_dmarc.example.com": "v=DMARC1; p=reject; aspf=s"}, hosts={"bounce.example.com"})
    result = evaluate("example.com", dns, spf=spf_pass("bounce.example.com", "temperror"))
    assert result.result == "fail", result.reason
