"""The ARC validation suite (tests/data/arc, see SOURCE.md there) through a real DNS server.

Every case's key records are served by `tests.dnsserver.DnsServer` and read through the product
resolver, `authmilter.dns.DnsResolver`; the message goes to `verify_arc` and its result is compared
with the case's `cv`. The suite was written for draft-ietf-dmarc-arc-protocol-18; the cases where
RFC 8617 asks something else of a validator are in KNOWN_DIFFERENCES with the reason (and in
tests/data/arc/RESULTS.md), and each is asserted to still differ, so that a fix or a regression in
either direction shows up here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from authmilter.core.checks.arc import verify_arc
from authmilter.core.model import ArcResult
from authmilter.dns import DnsResolver
from tests.dnsserver import DnsServer
from tests.zoneresolver import zone_text

DATA = Path(__file__).resolve().parent.parent / "data" / "arc"
SUITE = DATA / "arc-draft-validation-tests.yml"
RESULTS_MD = DATA / "RESULTS.md"

# The suite's expected cv, case-insensitively; "" is its "undefined" (see KNOWN_DIFFERENCES).
_EXPECTED = {"none": "none", "pass": "pass", "fail": "fail", "": "undefined"}

# case id -> (what authmilter answers, why that is right under RFC 8617)
_CV_FAIL = (
    "A seal in the chain says cv=fail. The suite leaves the status undefined (empty cv; its issue #9: "
    "'the empty cv values here are intended to specify undefined'), as dkimpy returns no status. "
    "RFC 8617 section 5.2 makes it \"fail\": step 2 when the newest seal says cv=fail, step 3.3 when "
    "any seal does; and the A-R result set for arc is none/pass/fail only (section 10.1)."
)
KNOWN_DIFFERENCES: dict[str, tuple[str, str]] = {
    "cv_fail_i1_as_cv_fail": ("fail", _CV_FAIL),
    "cv_fail_i2_as2_fail": ("fail", _CV_FAIL),
    "cv_fail_i2_as1_fail": ("fail", _CV_FAIL),
    "ams_fields_c_na": (
        "fail",
        "The AMS has no c= and was made with relaxed/relaxed. RFC 8617 section 4.1.2 gives the AMS "
        "'the same syntax and semantics as the DKIM-Signature field' except its name, v= and i=, so "
        "a missing c= means simple/simple (RFC 6376 section 3.5), under which this signature does not "
        "verify. The suite assumes relaxed/relaxed (dkimpy's ARC default); OpenARC refuses an AMS "
        "without c= altogether.",
    ),
    "ams_fields_h_empty": (
        "fail",
        "The AMS has an empty h=, so it signs no From. RFC 6376 section 6.1.1 (inherited through "
        "RFC 8617 section 4.1.2) says a verifier MUST fail a signature whose h= lacks From, and "
        "RFC 6376's h= syntax needs at least one name; otherwise the set, with its AAR, could be "
        "replayed onto any message with the same body.",
    ),
}


@dataclass(frozen=True)
class Case:
    id: str
    scenario: str
    description: str
    expected: str  # none | pass | fail | undefined
    message: bytes
    records: tuple[tuple[str, str], ...]  # (owner name, TXT text)


def _load() -> list[Case]:
    cases: list[Case] = []
    with SUITE.open("rb") as f:
        for scenario in yaml.safe_load_all(f):
            records = tuple(
                (name.lower().rstrip("."), "".join(line.strip() for line in str(text).splitlines()))
                for name, text in (scenario.get("txt-records") or {}).items()
            )
            for case_id, test in scenario["tests"].items():
                message = re.sub(r"\r?\n", "\r\n", str(test["message"])).encode("utf-8")
                cases.append(
                    Case(
                        id=case_id,
                        scenario=str(scenario.get("description", "")).strip(),
                        description=str(test.get("description", "")).strip(),
                        expected=_EXPECTED[str(test.get("cv") or "").strip().lower()],
                        message=message,
                        records=records,
                    )
                )
    return cases


CASES = _load()


def _quoted(text: str) -> str:
    # Master-file character-strings: at most 255 octets each, with " and \ escaped.
    chunks = [text[i : i + 200] for i in range(0, len(text), 200)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


def _zones(records: tuple[tuple[str, str], ...]) -> list[str]:
    """One zone per registered domain (example.org, example2.org) holding the scenario's records."""
    by_origin: dict[str, dict[str, str]] = {}
    for name, text in records:
        origin = ".".join(name.split(".")[-2:])
        by_origin.setdefault(origin, {})[name + "."] = "TXT " + _quoted(text)
    return [zone_text(origin, owners) for origin, owners in by_origin.items()]


@pytest.fixture(scope="module")
def outcomes() -> Iterator[dict[str, ArcResult]]:
    """Every case verified once, each with exactly its scenario's records being served."""
    with DnsServer() as server:
        # Uncached, so each scenario sees only its own records.
        resolver = DnsResolver(["127.0.0.1"], port=server.port, timeout=2.0)
        results: dict[str, ArcResult] = {}
        for case in CASES:
            server.clear_zones()
            for text in _zones(case.records):
                server.add_zone(text)
            results[case.id] = verify_arc(case.message, resolver)
        yield results


def test_suite_is_complete() -> None:
    assert len(CASES) == 171
    assert len({c.id for c in CASES}) == len(CASES)
    assert set(KNOWN_DIFFERENCES) <= {c.id for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_validation_case(case: Case, outcomes: dict[str, ArcResult]) -> None:
    result = outcomes[case.id]
    if case.id in KNOWN_DIFFERENCES:
        ours, why = KNOWN_DIFFERENCES[case.id]
        assert result.result == ours, f"{case.id}: documented as {ours}, got {result.result}: {result.reason}"
        assert result.result != case.expected, f"{case.id} now agrees with the suite: drop it ({why[:40]}...)"
    else:
        assert result.result == case.expected, f"{case.id} ({case.description}): {result.reason}"


def test_totals(outcomes: dict[str, ArcResult], capsys: pytest.CaptureFixture[str]) -> None:
    agree = [c.id for c in CASES if outcomes[c.id].result == c.expected]
    differ = [c.id for c in CASES if outcomes[c.id].result != c.expected]
    with capsys.disabled():
        print(f"\nARC validation suite: {len(agree)}/{len(CASES)} as the suite expects, "
              f"{len(differ)} known differences (RFC 8617): {', '.join(differ)}")
    assert sorted(differ) == sorted(KNOWN_DIFFERENCES)
    assert len(agree) == 166


def test_results_md_lists_exactly_the_known_differences() -> None:
    # RESULTS.md is the human-readable copy of KNOWN_DIFFERENCES: keep the two in step.
    listed = set(re.findall(r"^\| `([a-z0-9_]+)` \|", RESULTS_MD.read_text(), re.MULTILINE))
    assert listed == set(KNOWN_DIFFERENCES)


def test_passing_chains_report_hops(outcomes: dict[str, ArcResult]) -> None:
    # What the A-R clause and policy read from a validated chain of the suite's i=2 case.
    result = outcomes["cv_pass_i2_1"]
    assert (result.result, result.instances, result.oldest_pass) == ("pass", 2, 0)
    assert result.sealers == ("example.org", "example.org")
    first = result.hops[0]
    assert (first.instance, first.cv, first.aar_authserv_id) == (1, "none", "lists.example.org")
    assert ("dmarc", "pass") in first.aar
    assert result.hops[1].cv == "pass"
    # The suite's case whose first AMS was broken by a later header change: still a pass.
    broken_first = outcomes["cv_pass_i2_1_ams1_invalid"]
    assert (broken_first.result, broken_first.oldest_pass) == ("pass", 2)


@pytest.mark.parametrize("fault", ["servfail", "timeout"])
def test_key_lookup_failure_through_real_dns_fails_the_chain(dns_server: DnsServer, fault: str) -> None:
    # RFC 8617 section 5.2.1: a DNS failure is final for ARC; the reason says it was temporary.
    case = next(c for c in CASES if c.id == "cv_pass_i1_1")
    for text in _zones(case.records):
        dns_server.add_zone(text)
    dns_server.set_fault("dummy._domainkey.example.org", fault)
    resolver = DnsResolver(["127.0.0.1"], port=dns_server.port, timeout=0.5)
    result = verify_arc(case.message, resolver)
    assert result.result == "fail"
    assert "temporary" in result.reason and "RFC 8617 section 5.2.1" in result.reason
