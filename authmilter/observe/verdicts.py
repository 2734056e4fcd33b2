"""Verdicts as plain data, for `authmilter check --json` and for log lines.

One place decides the field names, so what an operator greps for in the log is what the JSON
calls it too.
"""

from __future__ import annotations

from typing import Any

from authmilter.core.model import (
    Action,
    DkimResult,
    DmarcResult,
    DnsListResults,
    GreylistResult,
    HeloResult,
    IprevResult,
    RateResult,
    Reply,
    SpfResult,
    Verdict,
)


def _spf(r: SpfResult | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"result": r.result, "domain": r.domain, "identity": r.identity.value, "reason": r.reason}


def _dkim(r: DkimResult) -> dict[str, Any]:
    return {
        "result": r.result,
        "domain": r.domain,
        "selector": r.selector,
        "algorithm": r.algorithm,
        "b": r.b_prefix,
        "identity": r.identity,
        "key_bits": r.key_bits,
        "reason": r.reason,
    }


def _dmarc(r: DmarcResult | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {
        "result": r.result,
        "domain": r.domain,
        "policy": r.policy,
        "applied_tag": r.applied_tag,
        "org_domain": r.org_domain,
        "record_domain": r.record.domain if r.record else None,
        "spf_aligned": r.spf_aligned,
        "dkim_aligned": r.dkim_aligned,
        "aligned_by": r.aligned_by,
        "testing": r.testing,
        "reason": r.reason,
    }


def _arc(v: Verdict) -> dict[str, Any] | None:
    chain = v.results.arc if v.results is not None else None
    if chain is None:
        return None
    d = v.decision
    override = None
    if d is not None and d.override and d.rule:
        # Reported as an ARC override only when the deciding rule looked at the ARC chain.
        decided = next((t for t in d.trace if t.rule == d.rule), None)
        if decided is not None and any(c.key.startswith("arc") for c in decided.conditions):
            override = d.override
    return {
        "result": chain.result,
        "instances": chain.instances,
        "oldest_pass": chain.oldest_pass,
        "sealers": list(chain.sealers),
        "override": override,
        "reason": chain.reason,
        "sealed": v.arc_seal or None,
    }


def _iprev(r: IprevResult | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"result": r.result, "ip": r.ip, "host": r.host or None, "ptr_names": list(r.ptr_names),
            "reason": r.reason}


def _helo(r: HeloResult | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"name": r.helo, "syntax_ok": r.syntax_ok, "fqdn": r.fqdn, "bare_ip": r.bare_ip,
            "literal": r.literal, "literal_mismatch": r.literal_mismatch, "is_ours": r.is_ours,
            "reason": r.reason}


def helo_flags(r: HeloResult) -> str:
    """The log line's `helo_flags`: what is notable about the HELO name; "" for a plain FQDN."""
    flags = [
        ("invalid", not r.syntax_ok and not r.bare_ip),
        ("bare-ip", r.bare_ip),
        ("not-fqdn", r.syntax_ok and not r.fqdn and not r.literal),
        ("literal-mismatch", r.literal_mismatch),
        ("ours", r.is_ours),
    ]
    return ",".join(name for name, present in flags if present)


def _dnslists(r: DnsListResults | None) -> list[dict[str, Any]]:
    if r is None:
        return []
    return [{"list": x.list_name, "zone": x.zone, "identity": x.identity, "queried": x.queried,
             "status": x.status, "allow": x.allow, "codes": list(x.codes), "meanings": list(x.meanings),
             "ignored": list(x.ignored), "reason": x.reason} for x in r.results]


def _greylist(g: GreylistResult) -> dict[str, Any]:
    return {"rcpt": g.rcpt, "state": g.state, "key": g.key or None, "passes": g.passes,
            "wait": round(g.wait, 1), "error": g.error or None}


def _rate(r: RateResult) -> dict[str, Any]:
    return {"limit": r.limit, "key": r.key, "exceeded": r.exceeded,
            "tokens_left": round(r.tokens_left, 2), "retry_after": round(min(r.retry_after, 1e9), 1),
            "error": r.error or None}


def _reply(r: Reply | None) -> dict[str, str] | None:
    return None if r is None else {"code": r.code, "status": r.status, "text": r.text}


def verdict_to_dict(v: Verdict) -> dict[str, Any]:
    res = v.results
    d = v.decision
    return {
        "action": v.action.value,
        "reply": _reply(v.reply),
        "stage": v.stage,
        "rule": d.rule if d else None,
        "rule_source": d.rule_source if d and d.rule else None,
        "override": d.override if d else None,
        "monitor": [{"rule": m.rule, "action": m.action.value, "reply": _reply(m.reply)}
                    for m in (d.monitored if d else ())],
        "quarantine": None if v.action is not Action.QUARANTINE else (
            "hold" if v.quarantine_hold else "header"),
        "rejected_rcpts": [{"rcpt": r, "reply": _reply(rep)} for r, rep in v.rejected_rcpts],
        "arc": _arc(v),
        "outbound": v.outbound or None,
        "signing": None if v.signing is None else {
            "status": v.signing.status, "domain": v.signing.domain, "keys": list(v.signing.keys),
            "signatures": len(v.signing.signatures), "reason": v.signing.reason},
        "reason": v.reason,
        "authentication_results": v.authentication_results or None,
        "iprev": _iprev(res.iprev) if res else None,
        "helo": _helo(res.helo) if res else None,
        "spf": _spf(res.spf.effective) if res and res.spf else None,
        "spf_helo": _spf(res.spf.helo) if res and res.spf else None,
        "dkim": [_dkim(d) for d in res.dkim] if res else [],
        "author": None if res is None else {
            "domain": res.author.domain, "addresses": list(res.author.addresses),
            "error": res.author.error},
        "dmarc": _dmarc(res.dmarc) if res else None,
        "dnslists": _dnslists(res.dnslists) if res else [],
        "greylist": [_greylist(g) for g in res.greylist] if res else [],
        "ratelimits": [_rate(r) for r in res.rates] if res else [],
        "deleted_headers": [{"name": d.name, "occurrence": d.occurrence} for d in v.header_deletes],
        "errors": [e.strip().splitlines()[-1] for e in v.errors if e.strip()],
    }


def log_fields(v: Verdict, *, queue_id: str, client_ip: str | None, helo: str,
               mail_from: str) -> dict[str, str]:
    """The fields of the one log line per message: all an operator needs to see why, nothing secret.

    Never key material, never the body; header content only as the author domain.
    """
    parts: list[tuple[str, str]] = [
        ("qid", queue_id or "-"), ("client", client_ip or "-"), ("helo", helo or "-"),
        ("from", mail_from or "<>"),
    ]
    res = v.results
    if res is not None and res.arc is not None and res.arc.result != "none":
        parts.append(("arc", res.arc.result))
    if v.arc_seal:
        parts.append(("arc_seal", v.arc_seal))
    if res is not None and res.iprev is not None and res.iprev.result != "none":
        host = f":{res.iprev.host}" if res.iprev.host else ""
        parts.append(("iprev", res.iprev.result + host))
    if res is not None and res.helo is not None and helo_flags(res.helo):
        parts.append(("helo_flags", helo_flags(res.helo)))
    if res is not None:
        if res.author.domain or res.author.error:
            parts.append(("author", res.author.domain or f"error:{res.author.error}"))
        if res.spf:
            parts.append(("spf", res.spf.effective.result))
        if v.stage == "eom":  # at MAIL or RCPT there is no message yet to have signatures
            parts.append(("dkim", ",".join(f"{d.result}:{d.domain}" for d in res.dkim) or "none"))
        if res.dmarc:
            parts.append(("dmarc", res.dmarc.result))
            parts.append(("policy", res.dmarc.policy or "-"))
        if res.dnslists is not None:
            listed = [f"{x.list_name}:{x.identity}" for x in res.dnslists.results if x.listed]
            broken = [f"{x.list_name}:{x.status}" for x in res.dnslists.results
                      if x.status in ("unusable", "temperror")]
            if listed:
                parts.append(("listed", ",".join(dict.fromkeys(listed))))
            if broken:
                parts.append(("dnslist_errors", ",".join(dict.fromkeys(broken))))
        for g in res.greylist:
            parts.append(("greylist", f"{g.state}:{g.rcpt}"))
        exceeded = [r.limit for r in res.rates if r.exceeded]
        if exceeded:
            parts.append(("ratelimit", ",".join(dict.fromkeys(exceeded))))
    if v.outbound:
        parts.append(("outbound", v.outbound))
    if v.signing is not None:
        parts.append(("signing", v.signing.status))
        if v.signing.keys:
            parts.append(("sign_keys", ",".join(v.signing.keys)))
    if v.stage != "eom":
        parts.append(("stage", v.stage))
    parts.append(("action", v.action.value))
    if v.reply:
        parts.append(("reply", f"{v.reply.code} {v.reply.status}"))
    d = v.decision
    if d is not None:
        if d.rule:
            parts.append(("rule", d.rule))
        if d.override:
            parts.append(("override", d.override))
        for m in d.monitored:
            # What the rule would have done: the line operators grep while previewing a policy.
            parts.append(("would", f"{m.action.value}:{m.rule}"))
    if v.header_deletes:
        parts.append(("forged_ar_deleted", str(len(v.header_deletes))))
    if v.errors:
        parts.append(("error", v.reason))
    fields: dict[str, str] = {}
    for key, value in parts:
        # Several monitored rules may each say what they would do: keep them all.
        fields[key] = f"{fields[key]},{value}" if key in fields else value
    return fields
