"""The facts of a transaction, named like the condition keys, at the stage they are known."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from authmilter.core.model import (
    ArcHop,
    DkimResult,
    DnsListResults,
    Facts,
    GreylistResult,
    HeloResult,
    IprevResult,
    RateResult,
    Results,
    SpfResults,
    Stage,
    Transaction,
)
from authmilter.core.names import address_domain as _address_domain
from authmilter.core.names import normalize_client_ip, normalize_domain

__all__ = ["facts_for"]


def facts_for(
    tx: Transaction,
    results: Results | None,
    stage: Stage,
    *,
    spf: SpfResults | None = None,
    rcpt: str | None = None,
    iprev: IprevResult | None = None,
    helo: HeloResult | None = None,
    dnslists: DnsListResults | None = None,
    rates: tuple[RateResult, ...] | None = None,
    greylist: tuple[GreylistResult, ...] | None = None,
) -> Facts:
    """The facts known at `stage`. Later-stage facts stay None even if `results` holds them.

    `spf` is the SPF result the milter computed early; at end of message `results.spf` wins.
    `iprev` and `helo` are the connection's results worked out early; `results` wins for them
    too. A result not handed in leaves its facts None (not known yet), so a rule on them waits
    rather than guesses.
    `dnslists`, `rates` and `greylist` are what is known of them so far (results win at end of
    message); `rates` None means not counted (no rule looks at them), `greylist` None means the
    store has not been asked for this recipient yet.
    `rcpt` is the recipient being decided at RCPT TO (default: the last of `tx.rcpts`).
    """
    if results is not None:
        iprev = results.iprev or iprev
        helo = results.helo or helo
        dnslists = results.dnslists or dnslists
        rates = results.rates or rates
        greylist = results.greylist or greylist
    spf_results = results.spf if results is not None and results.spf is not None else spf
    spf_result = spf_results.effective.result if spf_results is not None else None
    spf_helo: str | None = None
    if spf_results is not None:
        # No HELO result (check disabled, or a HELO name that is no domain) is SPF "none".
        spf_helo = spf_results.helo.result if spf_results.helo is not None else "none"

    rcpt_domain: tuple[str, ...] | None = None
    if stage is Stage.RCPT:
        current = rcpt if rcpt is not None else (tx.rcpts[-1] if tx.rcpts else None)
        rcpt_domain = None if current is None else (_address_domain(current),)
    elif stage is Stage.EOM:
        rcpt_domain = tuple(_address_domain(r) for r in tx.rcpts)

    final = stage is Stage.EOM and results is not None
    dkim: tuple[str, ...] | None = None
    author: str | None = None
    author_domain: str | None = None
    author_signed: bool | None = None
    dmarc: str | None = None
    dmarc_policy: str | None = None
    arc: str | None = None
    arc_hops: tuple[str, ...] | None = None
    if final and results is not None:
        dkim = tuple(d.result for d in results.dkim)
        a = results.author
        author_domain = "" if a.error or not a.domain else _domain_or_empty(a.domain)
        author = "valid" if author_domain else "invalid"
        author_signed = _author_signed(author_domain, results.dkim)
        if results.dmarc is not None:
            dmarc, dmarc_policy = results.dmarc.result, results.dmarc.policy
        arc, arc_hops = _arc_facts(results)
    # iprev stays out of these: a PTR lookup that times out says nothing about who wrote the
    # message, and policies written for SPF, DKIM and DMARC errors (strict.toml tempfails on
    # `temperror = true`) must not start refusing mail from hosts with slow reverse DNS.
    observed = (spf_result, dmarc, *(dkim or ()))
    return Facts(
        stage=stage,
        client_ip=(normalize_client_ip(tx.client_ip) or "") if tx.client_ip else "",
        client_host=_client_host(tx.client_host),
        helo=_domain_or_empty(tx.helo),
        authenticated=bool(_macro(tx.macros, "auth_authen").strip()),
        daemon=_macro(tx.macros, "daemon_name"),
        sender_domain=_address_domain(tx.mail_from),
        rcpt_domain=rcpt_domain,
        spf=spf_result,
        spf_helo=spf_helo,
        dkim=dkim,
        author_signed=author_signed,
        author=author,
        author_domain=author_domain,
        dmarc=dmarc,
        dmarc_policy=dmarc_policy,
        temperror=_error_flag("temperror", observed, final),
        permerror=_error_flag("permerror", observed, final),
        arc=arc,
        arc_trusted_sealers=arc_hops,
        iprev=iprev.result if iprev is not None else None,
        iprev_host=(_domain_or_empty(iprev.host) if iprev.result == "pass" else "") if iprev else None,
        helo_syntax_ok=helo.syntax_ok if helo is not None else None,
        helo_fqdn=helo.fqdn if helo is not None else None,
        helo_bare_ip=helo.bare_ip if helo is not None else None,
        helo_literal_mismatch=helo.literal_mismatch if helo is not None else None,
        helo_is_ours=helo.is_ours if helo is not None else None,
        dnsbl=_listings(dnslists, stage, allow=False),
        dnswl=_listings(dnslists, stage, allow=True),
        ratelimit=_exceeded(rates, stage),
        greylist=_grey_states(greylist, stage),
    )


def _listings(dnslists: DnsListResults | None, stage: Stage, *, allow: bool) -> tuple[str, ...] | None:
    if dnslists is None:
        return () if stage is Stage.EOM else None  # at the end: no list configured
    names: dict[str, None] = {}
    for r in dnslists.allowlisted if allow else dnslists.blocklisted:
        names[r.list_name] = None
        for meaning in r.meanings:
            names[f"{r.list_name}/{meaning}"] = None
    return tuple(names)


def _exceeded(rates: tuple[RateResult, ...] | None, stage: Stage) -> tuple[str, ...] | None:
    if stage is Stage.MAIL:
        return None  # recipients are counted from RCPT TO on
    if rates is None:
        return () if stage is Stage.EOM else None
    return tuple(dict.fromkeys(r.limit for r in rates if r.exceeded))


def _grey_states(greylist: tuple[GreylistResult, ...] | None, stage: Stage) -> tuple[str, ...] | None:
    if stage is Stage.MAIL:
        return None
    if not greylist:
        return () if stage is Stage.EOM else None
    return tuple(dict.fromkeys(g.state for g in greylist))


def _arc_facts(results: Results) -> tuple[str, tuple[str, ...]]:
    chain = results.arc
    if chain is None:
        return "none", ()
    if chain.result != "pass":
        return chain.result, ()
    hops = sorted(chain.hops, key=lambda h: h.instance)
    return "pass", tuple(("+" if _hop_vouches(h) else "-") + _domain_or_empty(h.sealer) for h in hops)


def _hop_vouches(hop: ArcHop) -> bool:
    """Whether this hop recorded, in its ARC-Authentication-Results, that DMARC passed there."""
    return ("dmarc", "pass") in hop.aar


def _error_flag(kind: str, observed: Sequence[str | None], final: bool) -> bool | None:
    if kind in observed:
        return True
    # Before end of message a later check may still fail this way, so "no" is not known yet.
    return False if final else None


def _macro(macros: Mapping[str, str], name: str) -> str:
    # libmilter names long macros in braces; accept the bare name too.
    return macros.get("{" + name + "}", macros.get(name, "")) or ""


def _domain_or_empty(name: str) -> str:
    try:
        return normalize_domain(name.strip())
    except ValueError:
        return ""  # an address literal or garbage names no domain, so it matches no domain rule


def _client_host(host: str | None) -> str:
    # Postfix says "unknown" and Sendmail "[address]" when the client's name did not verify.
    h = (host or "").strip()
    if not h or h.startswith("[") or h.lower() == "unknown":
        return ""
    return _domain_or_empty(h)


def _author_signed(author_domain: str, dkim: Sequence[DkimResult]) -> bool:
    if not author_domain:
        return False
    labels = author_domain.split(".")
    # The author domain or a parent of it; never a bare TLD (a "com" key must not vouch for all).
    signers = {author_domain} | {".".join(labels[i:]) for i in range(1, len(labels) - 1)}
    return any(d.result == "pass" and _domain_or_empty(d.domain) in signers for d in dkim)
