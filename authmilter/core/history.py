"""What one evaluated message leaves behind for DMARC reports and policy preview: a compact,
self-contained record, built from the verdict with no I/O.

A record holds what RFC 9990 aggregate reports need (source IP, identifiers, the SPF and DKIM
results, the DMARC evaluation, the published policy and what we applied), and what
`policy preview` needs to decide the message again under another policy: the facts the policy
saw, at the stage that decided. It holds no header field or body byte and no local part of an
address: the history is kept for weeks, and a report of counts needs none of it.

The JSON form (`dumps`/`loads`) is what every history store keeps, one line per message, so
SQLite, PostgreSQL and Redis stores hold the same thing. It carries a version number: a reader
refuses a record from a future version instead of guessing what it meant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from authmilter.core.model import Facts, Stage, Transaction, Verdict
from authmilter.core.names import address_domain

__all__ = [
    "HISTORY_VERSION",
    "DkimEntry",
    "HistoryError",
    "HistoryRecord",
    "PublishedPolicy",
    "SpfEntry",
    "dumps",
    "facts_from",
    "loads",
    "record_for",
]

HISTORY_VERSION = 1
# RFC 9990 section 3.1.3.2 (auth_results): a row reports at most this many DKIM results.
MAX_DKIM_RESULTS = 100


class HistoryError(ValueError):
    """A stored record that cannot be read back; str() says why."""


@dataclass(frozen=True)
class SpfEntry:
    domain: str
    scope: str  # "mfrom" | "helo"
    result: str  # RFC 8601 SPF result


@dataclass(frozen=True)
class DkimEntry:
    domain: str  # d=
    selector: str  # s=
    result: str  # RFC 8601 DKIM result
    human_result: str = ""  # our reason, for the report's human_result


@dataclass(frozen=True)
class PublishedPolicy:
    """The DMARC record that applied, as RFC 9990's policy_published reports it."""

    domain: str  # where the record was found
    p: str  # "none" | "quarantine" | "reject"
    sp: str | None
    np: str | None
    adkim: str
    aspf: str
    testing: bool  # t=y (or RFC 7489 pct=0)
    psd: str | None  # "y" | "n" | "u" | None
    fo: str | None = None
    pct: int | None = None  # RFC 7489 records only
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    discovery_method: str = "treewalk"  # RFC 9989 section 4.10


@dataclass(frozen=True)
class HistoryRecord:
    time: int  # seconds since the epoch, when the verdict was given
    client_ip: str  # "" when the MTA gave none (a local pickup)
    envelope_from: str  # the MAIL FROM domain; for the null sender, the HELO name
    envelope_to: tuple[str, ...]  # the recipient domains, each once, in order
    header_from: str  # the author domain; "" when the From names no single one
    spf: tuple[SpfEntry, ...]
    dkim: tuple[DkimEntry, ...]
    # DMARC: "pass" | "fail" | "none" | "temperror" | "permerror"; "" when it was not evaluated
    dmarc: str
    dkim_aligned: bool
    spf_aligned: bool
    policy: PublishedPolicy | None  # None: no usable DMARC record, so nothing to report to
    requested: str  # the policy that applied to this message (p, sp or np after t=): "" if none
    disposition: str  # RFC 9990: "none" | "pass" | "quarantine" | "reject"; "" when no policy
    override: str  # RFC 9990 reason type when we did not apply the requested policy; else ""
    action: str  # ours: "accept" | "reject" | "tempfail" | "quarantine" | "discard"
    rule: str  # the deciding rule; "" when none matched, or for the fail-safe
    stage: str  # "mail" | "rcpt" | "eom"
    facts: dict[str, Any]  # the decisive stage's Facts as JSON values, arrays as tuples (see facts_from)
    queue_id: str = ""

    @property
    def reportable(self) -> bool:
        """Whether an aggregate report covers this message: DMARC was evaluated under a policy."""
        return self.policy is not None and self.dmarc in ("pass", "fail")


def record_for(tx: Transaction, verdict: Verdict, now: float) -> HistoryRecord | None:
    """The record of one verdict, or None when there is nothing to record (no decision was taken,
    as for a fail-safe verdict, whose facts are unknown)."""
    decision = verdict.decision
    if decision is None or decision.facts is None:
        return None
    results = verdict.results
    spf: tuple[SpfEntry, ...] = ()
    dkim: tuple[DkimEntry, ...] = ()
    header_from = ""
    dmarc = ""
    dkim_aligned = spf_aligned = False
    policy: PublishedPolicy | None = None
    requested = disposition = override = ""
    if results is not None:
        if results.spf is not None:
            entries = [results.spf.effective, *((results.spf.helo,) if results.spf.helo else ())]
            spf = tuple(SpfEntry(r.domain, "helo" if r.identity.value == "helo" else "mfrom", r.result)
                        for r in entries)
        dkim = tuple(DkimEntry(d.domain, d.selector, d.result, d.reason) for d in results.dkim)
        header_from = results.author.domain or "" if not results.author.error else ""
        if results.dmarc is not None:
            dm = results.dmarc
            dmarc = dm.result
            dkim_aligned, spf_aligned = dm.dkim_aligned, dm.spf_aligned
            header_from = dm.domain or header_from
            requested = dm.policy
            if dm.record is not None and not dm.record.unusable and dm.record.p is not None:
                r = dm.record
                policy = PublishedPolicy(
                    domain=r.domain, p=r.p or "none", sp=r.sp, np=r.np, adkim=r.adkim,
                    aspf=r.aspf, testing=r.t, psd=r.psd, fo=r.fo, pct=r.pct, rua=r.rua, ruf=r.ruf)
                disposition, override = _disposition(dmarc, requested, verdict.action.value,
                                                     decision.override, dm.testing)
    envelope_from = address_domain(tx.mail_from) if tx.mail_from else tx.helo.strip().lower()
    return HistoryRecord(
        time=int(now),
        client_ip=decision.facts.client_ip,
        envelope_from=envelope_from,
        envelope_to=tuple(dict.fromkeys(address_domain(r) for r in tx.rcpts)),
        header_from=header_from,
        spf=spf,
        dkim=dkim,
        dmarc=dmarc,
        dkim_aligned=dkim_aligned,
        spf_aligned=spf_aligned,
        policy=policy,
        requested=requested,
        disposition=disposition,
        override=override,
        action=verdict.action.value,
        rule=decision.rule or "",
        stage=verdict.stage,
        facts=_facts_json(decision.facts),
        queue_id=tx.queue_id,
    )


def _disposition(dmarc: str, requested: str, action: str, override: str | None,
                 testing: bool) -> tuple[str, str]:
    """RFC 9990's disposition and override reason for one message.

    A pass under an enforcing policy is "pass"; a failure is what we did with it (reject,
    quarantine, or none when delivered). Where that differs from what the domain asked, the
    reason is the deciding rule's override, else sampled_out (t=y, pct), else local_policy.
    """
    if dmarc != "fail":
        return ("pass" if dmarc == "pass" and requested in ("quarantine", "reject") else "none"), ""
    applied = {"reject": "reject", "quarantine": "quarantine"}.get(action, "none")
    if action == "tempfail":
        applied = "none"  # not delivered yet: the retry is what will be decided, and counted
    if applied == (requested or "none"):
        return applied, ""
    if override:
        return applied, override
    return applied, "sampled_out" if testing else "local_policy"


_FACT_FIELDS = {f.name: f for f in fields(Facts)}
_FACT_NAMES = tuple(name for name in _FACT_FIELDS if name != "stage")
# One encoder for every record: json.dumps with options builds a new one per call.
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _facts_json(facts: Facts) -> dict[str, Any]:
    # Tuples stay tuples: json writes them as arrays, and facts_from reads arrays back as tuples.
    out: dict[str, Any] = {"stage": facts.stage.value}
    for name in _FACT_NAMES:
        value = getattr(facts, name)
        if value is not None:
            out[name] = value
    return out



def facts_from(data: dict[str, Any]) -> Facts:
    """The Facts a record kept, for deciding them again. Unknown keys (from a newer version's
    facts) are left out, so that an older reader decides on what it knows."""
    try:
        stage = Stage(data.get("stage", "eom"))
    except ValueError as exc:
        raise HistoryError(f"unknown stage {data.get('stage')!r}") from exc
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name == "stage" or name not in _FACT_FIELDS:
            continue
        kwargs[name] = tuple(value) if isinstance(value, list) else value
    return Facts(stage=stage, **kwargs)


def dumps(record: HistoryRecord) -> str:
    """The record as one line of compact JSON."""
    data: dict[str, Any] = {
        "v": HISTORY_VERSION,
        "t": record.time,
        "ip": record.client_ip,
        "ef": record.envelope_from,
        "et": record.envelope_to,
        "hf": record.header_from,
        "spf": [[s.domain, s.scope, s.result] for s in record.spf],
        "dkim": [[d.domain, d.selector, d.result, d.human_result] for d in record.dkim],
        "dmarc": record.dmarc,
        "da": record.dkim_aligned,
        "sa": record.spf_aligned,
        "req": record.requested,
        "disp": record.disposition,
        "act": record.action,
        "stage": record.stage,
        "facts": record.facts,
    }
    # Empty and default values are left out (loads puts them back): every byte is encoded once
    # per message, on the milter's CPU.
    if record.override:
        data["ovr"] = record.override
    if record.rule:
        data["rule"] = record.rule
    if record.queue_id:
        data["qid"] = record.queue_id
    if record.policy is not None:
        p = record.policy
        pol: dict[str, Any] = {"d": p.domain, "p": p.p, "adkim": p.adkim, "aspf": p.aspf, "t": p.testing}
        for key, value in (("sp", p.sp), ("np", p.np), ("psd", p.psd), ("fo", p.fo), ("pct", p.pct)):
            if value is not None:
                pol[key] = value
        if p.rua:
            pol["rua"] = p.rua
        if p.ruf:
            pol["ruf"] = p.ruf
        if p.discovery_method != "treewalk":
            pol["dm"] = p.discovery_method
        data["pol"] = pol
    return _ENCODE(data)


def loads(text: str | bytes) -> HistoryRecord:
    """A record from `dumps`; HistoryError when it is not one."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise HistoryError("not a JSON object")
        version = data.get("v")
        if version != HISTORY_VERSION:
            raise HistoryError(f"record version {version!r}; this authmilter reads {HISTORY_VERSION}")
        pol = data.get("pol")
        policy = None
        if pol is not None:
            policy = PublishedPolicy(
                domain=str(pol["d"]), p=str(pol["p"]), sp=pol.get("sp"), np=pol.get("np"),
                adkim=str(pol.get("adkim", "r")), aspf=str(pol.get("aspf", "r")),
                testing=bool(pol.get("t", False)), psd=pol.get("psd"), fo=pol.get("fo"),
                pct=pol.get("pct"), rua=tuple(pol.get("rua", ())), ruf=tuple(pol.get("ruf", ())),
                discovery_method=str(pol.get("dm", "treewalk")))
        facts = data.get("facts", {})
        if not isinstance(facts, dict):
            raise HistoryError("facts is not an object")
        # Arrays as tuples, as record_for keeps them: a record read back equals the one written.
        facts = {k: tuple(v) if isinstance(v, list) else v for k, v in facts.items()}
        return HistoryRecord(
            time=int(data["t"]),
            client_ip=str(data["ip"]),
            envelope_from=str(data["ef"]),
            envelope_to=tuple(str(d) for d in data["et"]),
            header_from=str(data["hf"]),
            spf=tuple(SpfEntry(str(d), str(s), str(r)) for d, s, r in data["spf"]),
            dkim=tuple(DkimEntry(str(d), str(s), str(r), str(h)) for d, s, r, h in data["dkim"]),
            dmarc=str(data["dmarc"]),
            dkim_aligned=bool(data["da"]),
            spf_aligned=bool(data["sa"]),
            policy=policy,
            requested=str(data["req"]),
            disposition=str(data["disp"]),
            override=str(data.get("ovr", "")),
            action=str(data["act"]),
            rule=str(data.get("rule", "")),
            stage=str(data["stage"]),
            facts=facts,
            queue_id=str(data.get("qid", "")),
        )
    except HistoryError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise HistoryError(f"malformed history record: {exc}") from exc
