"""ARC sealing against the signing half of the public ARC test suite (draft-18; tests/data/arc).

Each of the 17 cases gives a message, a key, a timestamp, the header list to sign and the
authserv-id, and the AAR, AMS and AS a sealer must produce (or none: "don't extend a failed
chain"). Two comparisons per case:

1. The suite's layout, exactly. Its README fixes a "standardized" layout (tags sorted, values
   lower-case, no folding) so that outputs can be predicted; RSA signatures are deterministic,
   so in that layout (`arcseal._seal(..., standardized=True)`) our AAR, AMS and AS must equal the
   suite's field for field, b= included. The suite folds its expected b= values at arbitrary
   points; white space inside b= and bh= is not part of the value (RFC 6376 3.5) and is removed
   before comparing, and runs of white space elsewhere are compared as one space, which is how
   relaxed canonicalization, and so every signature, reads them.
2. Our own layout (`seal_message`, what the milter adds): the same tag values except b=, the same
   AAR, and dkimpy's ARC validator, with the case's DNS records, accepting what we produced. Here
   the layout differs on purpose: i= comes first, as RFC 8617's grammar requires and draft-18's
   sorted layout does not, and h= and b= are folded. Layout is covered by the signatures, so b=
   differs from the suite's in every sealed case; that is asserted too.

The suite stamps each message's chain status into its Authentication-Results (arc=...), and
leaves consolidating Authentication-Results into the AAR to the implementation while fixing one
way of doing it for the test (README, "AR Consolidation"). Our sealer takes this hop's A-R value
from the caller, so this file does that consolidation, as the milter's caller will hand over the
value it built.

`KNOWN_DIFFERENCES` would list cases where RFC 8617 asks for something else than the suite; it is
empty: on every case our output matches. tests/data/arc/SIGN-RESULTS.md records the per-case
outcome; `python -m tests.integration.test_arc_sign_conformance` rewrites it, and a test checks
it is current.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import dkim
import dkim.util
import pytest
import yaml  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from authmilter.core.message import split_message
from authmilter.core.model import Header
from authmilter.core.signing.arc import AAR, AMS, AS, ArcSealOutcome, _seal, seal_message
from authmilter.core.signing.dkim import RsaSigner, SigningKey

SUITE_FILE = "arc-draft-sign-tests.yml"
DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "arc"
# Where the suite was staged before it was copied into the repository; read only if the copy is
# missing. Neither present is a failure, not a skip: conformance must not silently stop running.
STAGING_DIR = Path("/work/shared/conformance/arc")
RESULTS_FILE = DATA_DIR / "SIGN-RESULTS.md"
CASE_COUNT = 17

# case name -> why RFC 8617 wants something else than the suite (asserted to differ).
KNOWN_DIFFERENCES: dict[str, str] = {}

LAYOUT_DIFFERENCE = ("our layout puts i= first (RFC 8617's grammar: instance, then the tag list; "
                     "the suite sorts tags) and folds h= and b=; tags and AAR are the suite's, "
                     "b= differs because the layout is signed")


def suite_path() -> Path:
    for directory in (DATA_DIR, STAGING_DIR):
        if (directory / SUITE_FILE).is_file():
            return directory / SUITE_FILE
    pytest.fail(f"ARC signing suite {SUITE_FILE} is in neither {DATA_DIR} nor {STAGING_DIR}")


@dataclass(frozen=True)
class Case:
    name: str
    scenario: str
    message: bytes
    timestamp: int
    sig_headers: tuple[bytes, ...]
    srv_id: str
    expected: Mapping[str, str]  # field name -> value; empty when nothing is to be added
    key: SigningKey
    records: Mapping[str, bytes]  # DNS name (no trailing dot) -> TXT


@cache
def load_cases() -> tuple[Case, ...]:
    cases: list[Case] = []
    with suite_path().open(encoding="utf-8") as f:
        scenarios = list(yaml.safe_load_all(f))
    for scenario in scenarios:
        private = serialization.load_pem_private_key(scenario["privatekey"].encode("ascii"), None)
        assert isinstance(private, rsa.RSAPrivateKey)
        # 1024 bits: our key loader warns about that, and the sealer must still accept it.
        key = SigningKey(f"suite-{scenario['sel']}", scenario["domain"], scenario["sel"], "rsa-sha256",
                         RsaSigner(private), private.key_size)
        records = {name.rstrip("."): re.sub(r"\s+", "", text).encode("ascii")
                   for name, text in scenario["txt-records"].items()}
        for name, test in scenario["tests"].items():
            expected = {field: (test[tag] or "").strip()
                        for field, tag in ((AAR, "AAR"), (AMS, "AMS"), (AS, "AS"))}
            cases.append(Case(
                name=name,
                scenario=" ".join(scenario["description"].split()),
                message=test["message"].replace("\n", "\r\n").encode("utf-8"),
                timestamp=int(test["t"]),
                sig_headers=tuple(h.strip().encode("ascii") for h in test["sig-headers"].split(":")),
                srv_id=test["srv-id"],
                expected=expected if any(expected.values()) else {},
                key=key,
                records=records,
            ))
    return tuple(cases)


# --- the suite's Authentication-Results consolidation (its README, "AR Consolidation") -----------


def split_clauses(value: str) -> list[str]:
    """An A-R value split at the ";" that separate its parts (not those in quotes or comments)."""
    parts: list[str] = []
    current: list[str] = []
    depth, quoted, escaped = 0, False, False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif char == '"':
            quoted = True
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif char == ";" and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts


def consolidated(fields: tuple[Header, ...], srv_id: str) -> tuple[str, str]:
    """This hop's A-R value (all clauses of srv-id's A-R fields, in order, one a line) and the
    chain status stamped in it (its arc= result; "none" without one)."""
    clauses: list[str] = []
    for h in fields:
        if h.name.strip().lower() != b"authentication-results":
            continue
        parts = split_clauses(" ".join(h.value.decode("utf-8").split()))
        if parts[0].lower() == srv_id.lower():
            clauses += [p for p in parts[1:] if p]
    cv = "none"
    for clause in clauses:
        m = re.match(r"arc\s*=\s*(\w+)", clause, re.I)
        if m:
            cv = m.group(1).lower()
    return srv_id + "; " + ";\r\n\t".join(clauses), cv


def seal_case(case: Case, *, standardized: bool) -> ArcSealOutcome:
    fields, _ = split_message(case.message)
    auth_results, cv = consolidated(fields, case.srv_id)
    if standardized:
        return _seal(case.message, case.key, authserv_id=case.srv_id, auth_results=auth_results, cv=cv,
                     now=case.timestamp, include_headers=case.sig_headers, standardized=True)
    return seal_message(case.message, case.key, authserv_id=case.srv_id, auth_results=auth_results, cv=cv,
                        now=case.timestamp, include_headers=case.sig_headers)


# --- comparing ------------------------------------------------------------------------------------


def squash(name: str, value: str) -> str:
    """A field value as the comparison sees it: white space runs as one space, none inside b=/bh=."""
    text = " ".join(value.split())
    if name == AAR:
        return text
    tags = [t.strip() for t in text.split(";") if t.strip()]
    out = []
    for tag in tags:
        key, _, val = tag.partition("=")
        key, val = key.strip(), val.strip()
        if key in ("b", "bh"):
            val = "".join(val.split())
        out.append(f"{key}={val}")
    return "; ".join(out)


def tag_map(value: str) -> dict[str, str]:
    tags = dkim.util.parse_tag_value(re.sub(rb"\r?\n", b"", value.encode("ascii")))
    result = {k.decode(): re.sub(r"\s+", "", v.decode()) for k, v in tags.items()}
    return result


def suite_layout_differences(case: Case) -> list[str]:
    """Which fields of ours differ from the suite's in its own layout ([] if none; "status" if we
    add a set where it adds none or the reverse)."""
    out = seal_case(case, standardized=True)
    if not case.expected:
        return [] if out.status == "skipped" and not out.headers else ["status"]
    if out.status != "sealed":
        return ["status"]
    got = dict(out.headers)
    return [name for name in (AAR, AMS, AS) if squash(name, got[name]) != squash(name, case.expected[name])]


def dnsfunc_for(records: Mapping[str, bytes]) -> Any:
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.decode().rstrip("."))
    return dnsfunc


def with_set(message: bytes, out: ArcSealOutcome) -> bytes:
    for name, value in out.headers:  # each at the top, in the order given: AS, AMS, AAR from the top
        message = f"{name}: {value}\r\n".encode() + message
    return message


def newest_set_alone(message: bytes, records: Mapping[str, bytes]) -> dict[str, Any]:
    """dkimpy's AMS and AS checks of the newest set with the older sets removed: the scope of a
    cv=fail seal (RFC 8617 5.1.2). dkimpy picks the fields it hashes from the whole message."""
    fields, body = split_message(message)
    highest, _ = dkim.ARC(message).sorted_arc_headers()

    def older(h: Header) -> bool:
        m = dkim.ARC.INSTANCE_RE.search(h.value)
        return h.name.lower() in dkim.ARC.ARC_HEADERS and (m is None or int(m.group(1)) != highest)

    d = dkim.ARC(b"".join(h.raw() for h in fields if not older(h)) + b"\r\n" + body)
    _, arc_headers = d.sorted_arc_headers()
    result: dict[str, Any] = d.verify_instance(arc_headers, highest, dnsfunc=dnsfunc_for(records))
    return result


def our_layout_report(case: Case) -> tuple[list[str], str, bool]:
    """(tag values that differ from the suite's other than b=, dkimpy's verdict, whether it is
    the one expected) for our own layout."""
    out = seal_case(case, standardized=False)
    if not case.expected:
        ok = out.status == "skipped" and not out.headers
        return [], f"nothing added ({out.status}: {out.reason})", ok
    if out.status != "sealed":
        return ["status"], f"{out.status}: {out.reason}", False
    got = dict(out.headers)
    diffs = [] if squash(AAR, got[AAR]) == squash(AAR, case.expected[AAR]) else ["AAR"]
    for name in (AMS, AS):
        ours, theirs = tag_map(got[name]), tag_map(case.expected[name])
        ours.pop("b")
        theirs.pop("b")
        diffs += [f"{name} {k}=" for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
    sealed = with_set(case.message, out)
    cv, results, reason = dkim.ARC(sealed).verify(dnsfunc=dnsfunc_for(case.records))
    if out.cv == "fail":
        alone = newest_set_alone(sealed, case.records)
        ok = cv is None and "reported failure" in reason and bool(alone["ams-valid"] and alone["as-valid"])
        ams_ok, as_ok = ("valid" if alone[k] else "INVALID" for k in ("ams-valid", "as-valid"))
        verdict = f"chain ends at our cv=fail seal ({reason}); our set alone: AMS {ams_ok}, AS {as_ok}"
        return diffs, verdict, ok
    ok = cv == dkim.CV_Pass and results[0]["ams-valid"] and all(r["as-valid"] for r in results)
    return diffs, f"{(cv or b'none').decode()} ({reason}), {len(results)} set(s)", ok


# --- tests ----------------------------------------------------------------------------------------


def case_ids() -> list[str]:
    return [c.name for c in load_cases()]


def test_the_suite_has_all_its_signing_cases() -> None:
    assert len(load_cases()) == CASE_COUNT
    assert set(KNOWN_DIFFERENCES) <= set(case_ids())


@pytest.mark.parametrize("name", case_ids())
def test_suite_layout_reproduced_exactly(name: str) -> None:
    case = next(c for c in load_cases() if c.name == name)
    differences = suite_layout_differences(case)
    if name in KNOWN_DIFFERENCES:
        assert differences, f"{name} no longer differs: {KNOWN_DIFFERENCES[name]}"
    else:
        assert differences == [], differences


@pytest.mark.parametrize("name", case_ids())
def test_our_layout_same_tags_and_dkimpy_accepts_it(name: str) -> None:
    case = next(c for c in load_cases() if c.name == name)
    diffs, verdict, ok = our_layout_report(case)
    assert ok, verdict
    if name not in KNOWN_DIFFERENCES:
        assert diffs == [], diffs
    if case.expected:
        got = dict(seal_case(case, standardized=False).headers)
        for field in (AMS, AS):
            assert got[field].startswith("i="), field
            assert tag_map(got[field])["b"] != tag_map(case.expected[field])["b"], LAYOUT_DIFFERENCE


def test_the_exact_comparison_notices_small_changes() -> None:
    # A control: the comparison above would also "pass" if it compared nothing.
    case = next(c for c in load_cases() if c.name == "i1_base")
    assert suite_layout_differences(case) == []
    later = replace(case, timestamp=case.timestamp + 1)
    assert suite_layout_differences(later) == [AMS, AS]
    edited = replace(case, message=case.message.replace(b"Hey gang", b"Hey gang!"))
    assert suite_layout_differences(edited) == [AMS, AS]
    other_id = replace(case, srv_id="other.example.org")  # no A-R of its own: a different AAR
    assert suite_layout_differences(other_id) == [AAR, AS]


def test_results_file_is_current() -> None:
    assert RESULTS_FILE.is_file(), f"run python -m {__name__} to write {RESULTS_FILE}"
    assert RESULTS_FILE.read_text(encoding="utf-8") == results_markdown(), (
        f"{RESULTS_FILE} is out of date: python -m tests.integration.test_arc_sign_conformance")


# --- SIGN-RESULTS.md ------------------------------------------------------------------------------


def results_markdown() -> str:
    cases = load_cases()
    lines = [
        "# ARC signing conformance: results",
        "",
        "Written by `python -m tests.integration.test_arc_sign_conformance` from what",
        "`tests/integration/test_arc_sign_conformance.py` computes; a test fails when this file is",
        "out of date. Suite: `arc-draft-sign-tests.yml` (ARC test suite, draft-18; see LICENSE.txt).",
        "",
        "* **suite layout**: our AAR, AMS and AS in the suite's standardized layout compared with its",
        "  expected fields: exact, b= included (white space inside b=/bh= dropped, other runs as one",
        "  space, as relaxed canonicalization reads them).",
        "* **our layout**: what the milter adds. Tag values (all but b=) and the AAR compared with",
        "  the suite's, then the message with our set verified by dkimpy's ARC validator using the",
        "  case's DNS records. " + LAYOUT_DIFFERENCE[0].upper() + LAYOUT_DIFFERENCE[1:] + ".",
        "",
        "| case | scenario | suite layout | our layout: tags | our layout: dkimpy | differs / why |",
        "|---|---|---|---|---|---|",
    ]
    passed = 0
    for case in cases:
        suite_diffs = suite_layout_differences(case)
        tag_diffs, verdict, ok = our_layout_report(case)
        known = KNOWN_DIFFERENCES.get(case.name, "")
        suite_cell = ("identical (no set added, as expected)" if not case.expected and not suite_diffs
                      else "identical" if not suite_diffs else "DIFFERS: " + ", ".join(suite_diffs))
        tags_cell = ("-" if not case.expected else "same" if not tag_diffs
                     else "DIFFERS: " + ", ".join(tag_diffs))
        why = known or ("-" if not case.expected else "layout only (see above)")
        if not suite_diffs and not tag_diffs and ok:
            passed += 1
        lines.append(f"| {case.name} | {case.scenario} | {suite_cell} | {tags_cell} | "
                     f"{'' if ok else 'UNEXPECTED: '}{verdict} | {why} |")
    lines += [
        "",
        f"{passed} of {len(cases)} cases conform; known differences from draft-18 under RFC 8617: "
        f"{len(KNOWN_DIFFERENCES) or 'none'}.",
        "",
        "Notes:",
        "",
        "* AR consolidation (`ar_merged1`, `ar_merged2`) is the caller's job in authmilter: the test",
        "  consolidates the suite's Authentication-Results as its README prescribes and hands the",
        "  value to the sealer, as the milter hands over the A-R value it built.",
        "* `i1_base_fail`, `i2_base_fail`: the sealer is told cv=fail (stamped in the suite's A-R) and",
        "  seals cv=fail with the AS over its own set only (RFC 8617 5.1.2), which the suite's b=",
        "  confirms; dkimpy ends validation at a cv=fail seal, so the set is also checked alone.",
        "* `no_additional_sig`: the newest seal already says cv=fail, so nothing is added.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    RESULTS_FILE.write_text(results_markdown(), encoding="utf-8")
    print(f"wrote {RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
