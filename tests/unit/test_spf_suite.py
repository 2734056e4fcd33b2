"""The openspf RFC 7208 test suite (tests/data/spf/rfc7208-tests.yml) through check_spf.

Each scenario's zone data is served by a ZoneResolver (one root zone holding every name), each test
case runs check_spf for its MAIL FROM (HELO when MAIL FROM is empty), and the result must be one of
those the case allows. Cases where our answer differs on purpose are listed in DIFFERENCES with the
reason; they are strict xfails, so a change in either direction shows up.

The suite's conventions for its zone data (from its header and its reference driver's behaviour):
SPF records also count as TXT records unless the name has TXT records of its own, "TXT: NONE"
only stops that, and "TIMEOUT" at a name makes every query for a type it holds no records of
time out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from authmilter.core.checks.spf import check_spf
from authmilter.core.dnsapi import DnsAnswer, DnsStatus
from tests.zoneresolver import ZoneResolver, name_key, zone_text

SUITE = Path(__file__).resolve().parent.parent / "data" / "spf" / "rfc7208-tests.yml"

# Cases where check_spf differs from the suite on purpose, with the reason: none at present.
# (Before the fixes for ptr-cname-loop and macro-mania-in-domain, those two were the only ones.)
DIFFERENCES: dict[str, str] = {}


class SuiteResolver(ZoneResolver):
    """ZoneResolver plus the suite's per-name TIMEOUT, which spares the types a name does hold."""

    def __init__(self, zone: str, timeouts: dict[str, set[str]]) -> None:
        super().__init__([zone])
        self.timeouts = timeouts  # name -> the record types held there

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        try:
            held = self.timeouts.get(name_key(name))
        except Exception:  # not a name dnspython can parse: ZoneResolver will say so
            held = None
        if held is not None and rdtype.upper() not in held:
            return DnsAnswer(DnsStatus.TEMPERROR, error="timeout (test suite TIMEOUT)")
        return super().query(name, rdtype)


def _escape(text: str) -> str:
    """`text` as one master-file name or quoted-string body: anything unusual as \\DDD."""
    return "".join(
        c if c.isascii() and (c.isalnum() or c in "-_.*%/:+=!#&',<>?@[]^`{|}~") else
        "".join(f"\\{b:03d}" for b in c.encode())
        for c in text
    )


def _absolute(name: str) -> str:
    return _escape(name.rstrip(".")) + "."


def _rdata(rdtype: str, value: Any) -> str | None:
    if rdtype in ("SPF", "TXT"):
        strings = [value] if isinstance(value, str) else list(value)
        return "TXT " + (" ".join(f'"{_escape(s)}"' for s in strings) or '""')
    if rdtype in ("A", "AAAA"):
        return f"{rdtype} {value}"
    if rdtype == "MX":
        preference, host = value
        return f"MX {preference} {_absolute(host) if host else '.'}"
    if rdtype in ("PTR", "CNAME"):
        return f"{rdtype} {_absolute(value)}"
    return None


@dataclass(frozen=True)
class Case:
    id: str
    scenario: str
    host: str
    helo: str
    mailfrom: str
    results: tuple[str, ...]
    explanation: str | None
    zone: str
    timeouts: dict[str, set[str]]


def _zone(zonedata: dict[str, list[Any]]) -> tuple[str, dict[str, set[str]]]:
    lines: list[str] = []
    timeouts: dict[str, set[str]] = {}
    for owner, records in zonedata.items():
        has_txt = any(isinstance(r, dict) and "TXT" in r for r in records)
        held: set[str] = set()
        for record in records:
            if record == "TIMEOUT":
                timeouts[name_key(_absolute(owner))] = held
                continue
            ((rdtype, value),) = record.items()
            if value == "NONE" or (rdtype == "SPF" and has_txt):
                continue  # "NONE" only suppresses the TXT copy; type SPF itself is never asked
            text = _rdata(rdtype, value)
            if text is not None:
                held.add("TXT" if rdtype == "SPF" else rdtype)
                lines.append(f"{_absolute(owner)} {text}")
    return zone_text(".", "\n".join(lines)), timeouts


def _cases() -> Iterator[Case]:
    with SUITE.open(encoding="utf-8") as f:
        scenarios = list(yaml.safe_load_all(f))
    for scenario in scenarios:
        zone, timeouts = _zone(scenario.get("zonedata") or {})
        for test_id, test in scenario["tests"].items():
            result = test["result"]
            yield Case(
                id=test_id,
                scenario=scenario["description"],
                host=str(test["host"]),
                helo=str(test["helo"]),
                mailfrom=str(test.get("mailfrom", "")),
                results=tuple(result) if isinstance(result, list) else (result,),
                explanation=test.get("explanation"),
                zone=zone,
                timeouts=timeouts,
            )


CASES = list(_cases())


def test_the_whole_suite_is_loaded() -> None:
    assert len(CASES) == len({c.id for c in CASES}) > 200
    assert set(DIFFERENCES) <= {c.id for c in CASES}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=DIFFERENCES[c.id], strict=True)])
        if c.id in DIFFERENCES else pytest.param(c, id=c.id)
        for c in CASES
    ],
)
def test_rfc7208_suite(case: Case) -> None:
    resolver = SuiteResolver(case.zone, case.timeouts)
    got = check_spf(case.host, case.helo, case.mailfrom, resolver, check_helo=False).effective
    assert got.result in case.results, (case.scenario, got)
    if case.explanation is not None and got.result == "fail":
        if case.explanation == "DEFAULT":
            assert "explanation:" not in got.reason, got
        else:
            assert got.reason.endswith("explanation: " + case.explanation), got
