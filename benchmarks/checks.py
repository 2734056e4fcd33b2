"""Did the milter get it right? Observed results against the corpus's expectations.

A fast wrong answer must show: every measured message's SPF, DKIM and DMARC results and the
action are compared with what the corpus says they must be, and every DKIM-Signature added in the
outbound scenario is verified by dkimpy (not by our own verifier) against the same zone data.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dkim

from benchmarks.driver import Record, summarize_dkim

METHODS = ("spf", "dkim", "dmarc", "action")


def read_log(text: str) -> dict[str, dict[str, str]]:
    """qid -> the fields of its per-message log line (the milter logs JSON lines here)."""
    by_qid: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("msg") == "message" and "qid" in entry:
            by_qid[str(entry["qid"])] = {k: str(v) for k, v in entry.items()}
    return by_qid


def _log_dkim(field_value: str) -> str:
    # "pass:sender01.bench,fail:sender01.bench" or "none"
    return summarize_dkim([part.partition(":")[0] for part in field_value.split(",") if part])


@dataclass
class InboundCheck:
    messages: int = 0
    agree: Counter[str] = field(default_factory=Counter)
    compared: Counter[str] = field(default_factory=Counter)
    disagreements: Counter[str] = field(default_factory=Counter)  # "dmarc fail→pass" -> count
    examples: dict[str, list[int]] = field(default_factory=dict)  # same key -> corpus ids
    from_log: int = 0  # messages whose results came from the log (rejected: no header to read)
    forged_expected: int = 0
    forged_deleted: int = 0
    observed: dict[str, Counter[str]] = field(default_factory=dict)  # method -> result -> count

    def percent(self, method: str) -> float:
        return 100.0 * self.agree[method] / self.compared[method] if self.compared[method] else 0.0

    def summary(self) -> str:
        parts = [f"{m} {self.percent(m):.1f}%" for m in METHODS if self.compared[m]]
        if self.forged_expected:
            parts.append(f"forged A-R deleted {self.forged_deleted}/{self.forged_expected}")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "percent": {m: round(self.percent(m), 3) for m in METHODS if self.compared[m]},
            "agree": dict(self.agree), "compared": dict(self.compared),
            "disagreements": dict(self.disagreements.most_common()),
            "examples": {k: v for k, v in self.examples.items()},
            "results_from_log": self.from_log,
            "forged_ar": {"expected": self.forged_expected, "deleted": self.forged_deleted},
            "observed": {m: dict(c.most_common()) for m, c in self.observed.items()},
        }

    def results_line(self) -> str:
        return "; ".join(f"{m} " + " ".join(f"{r} {n}" for r, n in self.observed[m].most_common())
                         for m in ("spf", "dkim", "dmarc") if m in self.observed)


def check_inbound(records: Iterable[Record], manifest: dict[str, Any], log: dict[str, dict[str, str]],
                  tag: str) -> InboundCheck:
    messages = manifest["messages"]
    check = InboundCheck()
    for rec in records:
        meta = messages[rec.msg]
        expect = meta["expect"]
        check.messages += 1
        observed = {"spf": rec.spf, "dkim": rec.dkim, "dmarc": rec.dmarc, "action": rec.action}
        if not rec.spf and rec.action != "error":
            entry = log.get(f"{tag}{rec.seq:07d}")
            if entry is not None:
                check.from_log += 1
                observed.update(spf=entry.get("spf", ""), dkim=_log_dkim(entry.get("dkim", "")),
                                dmarc=entry.get("dmarc", ""))
        for method in METHODS:
            want, got = expect[method], observed[method] or "missing"
            check.observed.setdefault(method, Counter())[got] += 1
            check.compared[method] += 1
            if want == got:
                check.agree[method] += 1
            else:
                key = f"{method} {want}→{got}"
                check.disagreements[key] += 1
                ids = check.examples.setdefault(key, [])
                if len(ids) < 5 and meta["id"] not in ids:
                    ids.append(meta["id"])
        if expect["forged_ar"] and rec.action not in ("reject", "tempfail", "error"):
            check.forged_expected += 1
            check.forged_deleted += rec.deleted_ar > 0
    return check


# --- outbound ------------------------------------------------------------------------------------


@dataclass
class SignatureCheck:
    messages: int = 0
    expected: int = 0  # signatures that should have been added
    added: int = 0
    verified: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[int]] = field(default_factory=dict)

    def summary(self) -> str:
        text = f"sigs ok {self.verified}/{self.expected}"
        if self.added != self.expected:
            text += f" ({self.added} added)"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "expected": self.expected, "added": self.added,
                "verified": self.verified, "failures": dict(self.failures.most_common()),
                "examples": self.examples}


_RECORDS: dict[bytes, bytes] = {}


def _dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
    return _RECORDS.get(name.rstrip(b".").lower())


def _verify_one(job: tuple[int, bytes, tuple[tuple[int, str], ...]]) -> tuple[int, int, list[str]]:
    """(corpus id, verified count, failure reasons) for one message and the fields inserted into it."""
    ident, raw, inserted = job
    head, sep, body = raw.partition(b"\r\n\r\n")
    fields = _unfold(head)
    for index, value in inserted:
        # The milter sends folded values with LF (the MTA turns them back into CRLF) and, with
        # HDR_LEADSPC, with the space after the colon as part of the value.
        fields.insert(min(index, len(fields)), b"DKIM-Signature:" + value.replace("\n", "\r\n").encode())
    message = b"\r\n".join(fields) + b"\r\n" + sep[2:] + body
    ok, reasons = 0, []
    for i in range(len(inserted)):
        try:
            if dkim.DKIM(message).verify(idx=i, dnsfunc=_dnsfunc):
                ok += 1
            else:
                reasons.append("did not verify")
        except dkim.DKIMException as e:
            reasons.append(f"{type(e).__name__}: {e}"[:80])
    return ident, ok, reasons


def _unfold(head: bytes) -> list[bytes]:
    """Header fields, each with its folds kept."""
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        elif line:
            fields.append(line)
    return fields


def check_signatures(records: Sequence[Record], raws: Sequence[bytes], manifest: dict[str, Any],
                     per_message: int) -> SignatureCheck:
    """Verify every kept DKIM-Signature with dkimpy, on every core (dkimpy's canonicalization is slow)."""
    check = SignatureCheck()
    jobs = []
    for rec in records:
        if not rec.signatures and rec.seq >= len(raws):
            continue  # a later lap of a long run: its signatures were not kept
        check.messages += 1
        check.expected += per_message
        check.added += len(rec.signatures)
        if len(rec.signatures) != per_message:
            key = f"{len(rec.signatures)} signature(s) added, {per_message} expected ({rec.action})"
            check.failures[key] += 1
            check.examples.setdefault(key, []).append(rec.msg)
        if rec.signatures:
            jobs.append((manifest["messages"][rec.msg]["id"], raws[rec.msg], rec.signatures))
    _RECORDS.clear()
    _RECORDS.update({k.encode(): v.encode() for k, v in manifest["dkim_records"].items()})
    ctx = multiprocessing.get_context("fork")  # workers inherit _RECORDS
    with ctx.Pool(os.cpu_count() or 1) as pool:
        for ident, ok, reasons in pool.imap_unordered(_verify_one, jobs, chunksize=16):
            check.verified += ok
            for reason in reasons:
                check.failures[reason] += 1
                ids = check.examples.setdefault(reason, [])
                if len(ids) < 5:
                    ids.append(ident)
    return check
