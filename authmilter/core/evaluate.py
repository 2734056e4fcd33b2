"""The one evaluation every shell shares: a transaction and a resolver in, a verdict out.

The milter, `authmilter check` and the tests all call these functions, so what an operator sees on
the command line is what the milter did. Rules kept here:

1. Checks report, the policy decides. `evaluate` runs the checks (iprev and HELO of the
   connection, SPF, DKIM, ARC, DMARC), then asks `policy.decide` what to do with the facts, then
   builds the Authentication-Results header. What an early stage already worked out comes back in
   an `EarlyResults` and is not asked for again.
2. Early stages only ever refuse. At MAIL FROM and RCPT TO a rule may reject or tempfail; nothing
   is accepted early, because an accepted message must still get its Authentication-Results.
3. Any exception inside a check or the decision becomes the configured fail-safe verdict: a bug
   or a hostile message must never turn into an accidental accept, nor pass on a forged
   Authentication-Results header. `fail_safe = "accept"` accepts such mail only when no From
   field names a domain that asks for enforcement (p, sp or np of reject or quarantine): a crafted
   message that breaks a check must not be the way round a domain's DMARC policy.
"""

from __future__ import annotations

import random
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from authmilter.core.authresults import build_authentication_results, forged_headers
from authmilter.core.checks.arc import verify_arc
from authmilter.core.checks.author import parse_author
from authmilter.core.checks.dkim import parse_parts, verify_dkim
from authmilter.core.checks.dmarc import discover_policy, evaluate_dmarc
from authmilter.core.checks.dnslists import DnsList, query_lists
from authmilter.core.checks.greylist import GreylistSettings, check_greylist
from authmilter.core.checks.helo import check_helo
from authmilter.core.checks.iprev import check_iprev
from authmilter.core.checks.ratelimit import RateLimit, check_rates
from authmilter.core.checks.spf import check_spf
from authmilter.core.decision import EMPTY_POLICY, Decision, Policy, Stage, decide, facts_for
from authmilter.core.decision.replies import CATALOGUE
from authmilter.core.dnsapi import Resolver
from authmilter.core.model import (
    Action,
    AuthorResult,
    DnsListResults,
    EarlyResults,
    GreylistResult,
    HeaderDelete,
    HeaderInsert,
    HeloResult,
    IprevResult,
    RateResult,
    Reply,
    Results,
    SigningOutcome,
    SpfResults,
    Transaction,
    Verdict,
)
from authmilter.core.names import address_domain, normalize_domain
from authmilter.core.prefetch import prefetch
from authmilter.core.signing.arc import seal_message
from authmilter.core.signing.dkim import (
    EMPTY_SIGNING,
    SigningConfig,
    outbound_reason,
    sign_message,
)
from authmilter.core.stateapi import StateStore

AUTH_RESULTS = "Authentication-Results"

# The reply for mail we could not evaluate: the cause is on our side and the sender should retry.
TEMPFAIL_REPLY: Reply = CATALOGUE["fail_safe"]
# Our own user's mail that must be signed and cannot be, right now: retry rather than send unsigned.
SIGNING_TEMPFAIL_REPLY = Reply("451", "4.7.1", "Message cannot be signed right now, please try again later")
DKIM_SIGNATURE = "DKIM-Signature"


@dataclass(frozen=True)
class EvalSettings:
    dkim_max_signatures: int = 10
    dkim_min_key_bits: int = 1024
    spf_check_helo: bool = True
    spf_timeout: float = 20.0
    fail_safe: str = "tempfail"  # "tempfail" | "accept": what evaluation errors do to mail
    dnslists: tuple[DnsList, ...] = ()  # in service: the shell leaves out those failing their self-test
    greylist: GreylistSettings = field(default_factory=GreylistSettings)
    ratelimits: tuple[RateLimit, ...] = ()
    # What a store that cannot answer does to a recipient greylisting or a rate limit asks about:
    # "accept" (fail open: not greylisted, not limited) or "tempfail" (fail closed).
    store_on_error: str = "accept"


NOTHING_KNOWN = EarlyResults()


def _spf(tx: Transaction, dns: Resolver, settings: EvalSettings) -> SpfResults:
    return check_spf(tx.client_ip, tx.helo, tx.mail_from, dns,
                     check_helo=settings.spf_check_helo, timeout=settings.spf_timeout)


def _iprev(tx: Transaction, dns: Resolver) -> IprevResult:
    return check_iprev(tx.client_ip, dns, clock=time.monotonic)


def _helo(tx: Transaction, authserv_id: str) -> HeloResult:
    # Who we are, as far as the MTA tells us: its $j and the address the client connected to.
    names = (authserv_id, _macro(tx, "j"))
    addresses = (_macro(tx, "daemon_addr"), _macro(tx, "if_addr"))
    return check_helo(tx.helo, tx.client_ip, our_names=names, our_addresses=addresses)


def _macro(tx: Transaction, name: str) -> str:
    # libmilter names long macros in braces; accept the bare name too.
    return tx.macros.get("{" + name + "}", tx.macros.get(name, "")) or ""


def early_verdict(
    tx: Transaction,
    dns: Resolver,
    settings: EvalSettings,
    policy: Policy,
    stage: Stage,
    *,
    rcpt: str | None = None,
    known: EarlyResults = NOTHING_KNOWN,
    authserv_id: str = "",
    store: StateStore | None = None,
    signing: SigningConfig = EMPTY_SIGNING,
    now: float | None = None,
) -> tuple[Verdict | None, EarlyResults]:
    """A refusal at MAIL FROM or RCPT TO, or None to go on; and what is known now, to hand back.

    SPF, iprev and the DNS lists are worked out only when a rule that may act this early needs
    them; the HELO facts cost nothing and are worked out whenever a rule may act. Rate limits are
    counted at every stage they count at (messages at MAIL FROM, recipients at RCPT TO) whenever a
    rule looks at them, even one that acts only at end of message. A greylist rule that matches
    at RCPT TO asks `store` about the recipient's triplet, and the rules are walked again with
    the answer.
    """
    now = time.time() if now is None else now
    fresh: tuple[RateResult, ...] = ()
    try:
        if policy.counts_rates and settings.ratelimits and stage is not Stage.EOM:
            fresh = _count_rates(tx, settings, stage, rcpt, store, signing, now)
            known = replace(known, rates=known.rates + fresh)
    except Exception:
        return _early_failure(settings, stage, known)
    if store is not None and settings.store_on_error == "tempfail" and any(r.error for r in fresh):
        return _store_failure(known, stage, fresh[0].error), known
    if policy.earliest_stage > stage:
        return None, known
    try:
        needs_dns = ((known.spf is None and (policy.needs_early_spf or policy.greylists))
                     or (known.iprev is None and policy.needs_early_iprev)
                     or (known.dnslists is None and bool(settings.dnslists) and policy.needs_early_lists))
        if needs_dns and stage is Stage.MAIL:
            # Once a lookup must wait for DNS this early, ask everything the envelope will need
            # (iprev, SPF and the lists at end of message, if not sooner) at once: the answers
            # land in the resolver's cache, and the later stages find them there.
            # When the message is there already (`check`, evaluate_transaction), its names too.
            dns = prefetch(tx, dns, known=known, lists=settings.dnslists,
                           spf_helo=settings.spf_check_helo, eom=bool(tx.headers))
        if known.spf is None and (policy.needs_early_spf or (
                rcpt is not None and policy.greylists and settings.greylist.by_spf_domain)):
            # A greylist rule keys on the SPF-passing domain, and end of message needs SPF anyway:
            # worked out before the facts, they are built once per recipient, not twice. No rule
            # an early walk can decide by looks at SPF (else it would be needed early), so having
            # it here changes no decision.
            known = replace(known, spf=_spf(tx, dns, settings))
        if known.iprev is None and policy.needs_early_iprev:
            known = replace(known, iprev=_iprev(tx, dns))
        if known.helo is None:
            known = replace(known, helo=_helo(tx, authserv_id))
        if known.dnslists is None and policy.needs_early_lists:
            # With no list configured nothing is listed: a known fact, so that a rule on it does
            # not hold back the early rules after it.
            lists = _lists(tx, dns, settings, known.helo) if settings.dnslists else DnsListResults(())
            known = replace(known, dnslists=lists)
        # At RCPT TO the facts count this recipient's buckets and those of the whole message.
        rates = _rates_for(known.rates, fresh, stage) if policy.counts_rates else None

        facts = facts_for(tx, None, stage, spf=known.spf, rcpt=rcpt, iprev=known.iprev, helo=known.helo,
                          dnslists=known.dnslists, rates=rates)
        # Most early walks just go on; the trace is drawn only for a walk that refuses (below).
        decision = decide(policy, facts, trace=False)
        if decision.action is Action.GREYLIST and rcpt is not None:
            # SPF, when the key needs it, was worked out above with the other early results.
            grey = _greylist(tx, rcpt, known, store, settings, now)
            known = replace(known, greylist=(*known.greylist, grey))
            if grey.state == "error" and settings.store_on_error == "tempfail":
                return _store_failure(known, stage, grey.error), known
            # The same facts and the recipient's greylisting state (built anew: cheaper than
            # dataclasses.replace on 35 fields), walked again from the top, so that the rules
            # before the greylist rule are where they were.
            facts = facts_for(tx, None, stage, spf=known.spf, rcpt=rcpt, iprev=known.iprev, helo=known.helo,
                              dnslists=known.dnslists, rates=rates, greylist=(grey,))
            decision = decide(policy, facts, trace=False)
        if decision.deferred or decision.action not in (Action.REJECT, Action.TEMPFAIL):
            return None, known
        decision = decide(policy, facts)  # the same walk again, traced for the log and --explain
    except Exception:
        return _early_failure(settings, stage, known)
    return Verdict(decision.action, decision.reply, _early_results(known), "", stage=stage.value,
                   decision=decision, reason=f"rule {decision.rule}"), known


def _early_results(known: EarlyResults) -> Results:
    return Results(spf=known.spf, dkim=(), author=AuthorResult(None), dmarc=None, iprev=known.iprev,
                   helo=known.helo, dnslists=known.dnslists, greylist=known.greylist, rates=known.rates)


def _early_failure(settings: EvalSettings, stage: Stage,
                   known: EarlyResults) -> tuple[Verdict | None, EarlyResults]:
    if settings.fail_safe == "accept":
        return None, known
    return _fail_safe(settings, None, (), "early decision failed", traceback.format_exc(),
                      stage=stage), known


def _store_failure(known: EarlyResults, stage: Stage, error: str) -> Verdict:
    """The state store could not answer and the operator chose to fail closed."""
    return Verdict(Action.TEMPFAIL, TEMPFAIL_REPLY, _early_results(known), "", (), (),
                   f"state store unavailable (store_on_error is tempfail): {error}", stage=stage.value)


def _count_rates(tx: Transaction, settings: EvalSettings, stage: Stage, rcpt: str | None,
                 store: StateStore | None, signing: SigningConfig, now: float) -> tuple[RateResult, ...]:
    count = "recipients" if stage is Stage.RCPT else "messages"
    if stage is Stage.RCPT and rcpt is None:
        return ()
    if store is None:
        return tuple(RateResult(limit.name, "", False, error="no state store")
                     for limit in settings.ratelimits if limit.count == count)
    # Our users' mail: an authenticated sender always, and whatever else the signing file says.
    authenticated = bool((tx.macros.get("{auth_authen}") or tx.macros.get("auth_authen") or "").strip())
    outbound = authenticated or bool(outbound_reason(tx, signing.settings))
    return check_rates(settings.ratelimits, count, tx.client_ip or "", tx.mail_from, rcpt, tx.macros,
                       outbound, store, now)


def _rates_for(counted: tuple[RateResult, ...], fresh: tuple[RateResult, ...],
               stage: Stage) -> tuple[RateResult, ...]:
    """The buckets that speak for this stage: at RCPT TO this recipient's and the message's,
    not those of the recipients before it."""
    if stage is not Stage.RCPT:
        return counted
    return tuple(r for r in counted if not r.rcpt) + fresh


def _greylist(tx: Transaction, rcpt: str, known: EarlyResults, store: StateStore | None,
              settings: EvalSettings, now: float) -> GreylistResult:
    if store is None:
        return GreylistResult(rcpt, "error", error="no state store")
    return check_greylist(tx.client_ip or "", tx.mail_from, rcpt, tx.macros, known.spf, store,
                          settings.greylist, now)


def _lists(tx: Transaction, dns: Resolver, settings: EvalSettings, helo: HeloResult | None,
           author_domain: str | None = None) -> DnsListResults:
    domains: dict[str, str | None] = {
        "helo": tx.helo if helo is not None and helo.fqdn else None,
        "mailfrom": address_domain(tx.mail_from),
    }
    if author_domain is not None:
        domains["from"] = author_domain
    return query_lists(settings.dnslists, tx.client_ip, domains, dns, clock=time.monotonic)



def evaluate(
    tx: Transaction,
    dns: Resolver,
    settings: EvalSettings,
    authserv_id: str,
    policy: Policy = EMPTY_POLICY,
    *,
    sample: Callable[[], float] = random.random,
    known: EarlyResults = NOTHING_KNOWN,
    signing: SigningConfig = EMPTY_SIGNING,
    now: float | None = None,
    trace: bool = True,
) -> Verdict:
    """The end-of-message verdict. `known` holds what an early stage (or an earlier message on the
    same connection) already worked out: it is reused, not asked for again. `trace=False` leaves
    out the per-rule trace (`check --explain` shows it; the milter's log line does not): the
    same decision for less work.

    Our own users' mail (`signing` says who that is) is signed; it is also verified only when the
    signing settings ask for it. The steps: forged headers, signing, the checks, the decision and
    its Authentication-Results, ARC sealing; each failure has its fail-safe answer.
    """
    try:
        deletes = forged_headers(tx.headers, authserv_id)
    except Exception:
        # Without knowing which headers are forged we cannot pass the message on safely, so this
        # one tempfails even where the operator chose to accept on errors.
        return Verdict(Action.TEMPFAIL, TEMPFAIL_REPLY, None, "", (), (), "forged-header scan failed",
                       (traceback.format_exc(),))
    now = time.time() if now is None else now
    try:
        outbound = _outbound(tx, signing, deletes, now)
    except Exception:
        return _fail_safe(settings, None, (), "signing failed", traceback.format_exc(), guard=(tx, dns))
    if outbound.verdict is not None:
        return outbound.verdict
    try:
        results = run_checks(tx, dns, settings, known=known, sample=sample, authserv_id=authserv_id)
    except Exception:
        return _fail_safe(settings, None, deletes, "evaluation failed", traceback.format_exc(),
                          guard=(tx, dns))
    try:
        decision = decide(policy, facts_for(tx, results, Stage.EOM, spf=results.spf), trace=trace)
        failed = results.dmarc is not None and results.dmarc.result == "fail"
        ar = build_authentication_results(authserv_id, results, client_ip=tx.client_ip,
                                          dmarc_override=decision.override if failed else None)
    except Exception:
        return _fail_safe(settings, results, deletes, "policy decision failed", traceback.format_exc(),
                          guard=(tx, dns))
    verdict = _from_decision(decision, results, ar, deletes)
    if signing.arc_seal and verdict.action in (Action.ACCEPT, Action.QUARANTINE) and \
            signing.arc_recipient(tx.rcpts):
        verdict = _seal(verdict, tx.message_bytes(), signing, authserv_id, now)
    if outbound.reason:
        # Signatures first, so the Authentication-Results inserted after them ends up on top.
        verdict = replace(verdict, header_inserts=outbound.signed + verdict.header_inserts,
                          outbound=outbound.reason, signing=outbound.outcome)
    return verdict


def run_checks(
    tx: Transaction,
    dns: Resolver,
    settings: EvalSettings,
    *,
    known: EarlyResults = NOTHING_KNOWN,
    sample: Callable[[], float] = random.random,
    authserv_id: str = "",
) -> Results:
    """Every check of core.checks on one message, in the order their inputs need; those `known`
    already are not run again. `authserv_id` is one of our names for the HELO check."""
    author = parse_author(tx.headers)  # once, for the prefetch plan and for DMARC
    dns = prefetch(tx, dns, known=known, lists=settings.dnslists, spf_helo=settings.spf_check_helo,
                   author=author)
    iprev = known.iprev or _iprev(tx, dns)
    helo = known.helo or _helo(tx, authserv_id)
    spf = known.spf or _spf(tx, dns, settings)
    parsed = parse_parts(tx.headers, tx.body)  # once, for DKIM and ARC both
    dkim = verify_dkim(parsed, dns, max_signatures=settings.dkim_max_signatures,
                       min_key_bits=settings.dkim_min_key_bits)
    arc = verify_arc(parsed, dns)
    dmarc = evaluate_dmarc(author, spf, dkim, dns, sample=sample)
    lists = _eom_lists(tx, dns, settings, known, helo, author)
    kept = set(tx.rcpts)
    return Results(spf=spf, dkim=dkim, author=author, dmarc=dmarc, arc=arc, iprev=iprev, helo=helo,
                   dnslists=lists, greylist=tuple(g for g in known.greylist if g.rcpt in kept),
                   rates=tuple(r for r in known.rates if not r.rcpt or r.rcpt in kept))


def _eom_lists(tx: Transaction, dns: Resolver, settings: EvalSettings, known: EarlyResults,
               helo: HeloResult, author: AuthorResult) -> DnsListResults | None:
    """Every list asked about everything, or, when the lists were asked at MAIL FROM already,
    the domain lists about the From domain only."""
    if not settings.dnslists:
        return None
    author_domain = author.domain if author.domain and not author.error else None
    if known.dnslists is None:
        return _lists(tx, dns, settings, helo, author_domain)
    if author_domain is None:
        return known.dnslists
    domain_lists = tuple(x for x in settings.dnslists if x.kind == "domain")
    extra = query_lists(domain_lists, None, {"from": author_domain}, dns, clock=time.monotonic)
    return DnsListResults(known.dnslists.results + extra.results)


@dataclass(frozen=True)
class _Outbound:
    reason: str = ""  # why this is our users' mail to sign; "" for everyone else's
    outcome: SigningOutcome | None = None
    signed: tuple[HeaderInsert, ...] = ()
    verdict: Verdict | None = None  # the answer already, when there is nothing left to check


def _outbound(tx: Transaction, signing: SigningConfig, deletes: tuple[HeaderDelete, ...],
              now: float) -> _Outbound:
    reason = outbound_reason(tx, signing.settings) or ""
    if not reason:
        return _Outbound()
    outcome = sign_message(tx, signing, now=now)
    refusal = _signing_refusal(outcome, signing, reason)
    if refusal is not None:
        return _Outbound(reason, outcome, verdict=refusal)
    signed = tuple(HeaderInsert(0, DKIM_SIGNATURE, v) for v in outcome.signatures)
    if signing.settings.verify_signed:
        return _Outbound(reason, outcome, signed)
    return _Outbound(reason, outcome, signed, Verdict(
        Action.ACCEPT, None, None, "", deletes, signed, f"outbound ({reason}): {outcome.status}",
        outbound=reason, signing=outcome))


def _seal(verdict: Verdict, message: bytes, signing: SigningConfig, authserv_id: str, now: float) -> Verdict:
    """Add this hop's ARC set (RFC 8617) to mail we pass on, with the chain status we found."""
    key = signing.keys.get(signing.arc_key)
    if key is None:
        # Reported at load; forwarding the mail unsealed is what a hop without ARC would do.
        return replace(verdict, arc_seal=f"skipped: key {signing.arc_key} unavailable")
    cv = verdict.results.arc.result if verdict.results and verdict.results.arc else "none"
    outcome = seal_message(message, key, authserv_id=authserv_id,
                           auth_results=verdict.authentication_results, cv=cv, now=now)
    if outcome.status != "sealed":
        return replace(verdict, arc_seal=f"{outcome.status}: {outcome.reason}")
    arc_set = tuple(HeaderInsert(0, name, value) for name, value in outcome.headers)
    return replace(verdict, header_inserts=verdict.header_inserts + arc_set,
                   arc_seal=f"sealed i={outcome.instance} cv={outcome.cv}")


def _signing_refusal(outcome: SigningOutcome, signing: SigningConfig, outbound: str) -> Verdict | None:
    """What to do with our users' mail that should be signed and cannot be; None to go on."""
    if outcome.status == "key-unavailable":
        action = signing.settings.on_key_error
        reply = SIGNING_TEMPFAIL_REPLY
    elif outcome.status in ("bad-author", "error"):
        action = signing.settings.on_bad_author if outcome.status == "bad-author" else "tempfail"
        reply = CATALOGUE["bad_from"] if action == "reject" else SIGNING_TEMPFAIL_REPLY
    else:
        return None
    if action == "accept":
        return None  # the operator chose to send it unsigned; the log line says so
    return Verdict(Action.REJECT if action == "reject" else Action.TEMPFAIL, reply, None, "", (), (),
                   f"outbound ({outbound}): {outcome.status}", outbound=outbound, signing=outcome)


def evaluate_transaction(
    tx: Transaction,
    dns: Resolver,
    settings: EvalSettings,
    authserv_id: str,
    policy: Policy = EMPTY_POLICY,
    *,
    sample: Callable[[], float] = random.random,
    signing: SigningConfig = EMPTY_SIGNING,
    store: StateStore | None = None,
    now: float | None = None,
) -> Verdict:
    """The whole SMTP transaction as the milter sees it: MAIL FROM, each RCPT TO, end of message.

    Recipients refused at RCPT are dropped, as the MTA would drop them; if none is left the
    first refusal is the verdict.
    """
    verdict, known = early_verdict(tx, dns, settings, policy, Stage.MAIL, authserv_id=authserv_id,
                                   store=store, signing=signing, now=now)
    if verdict is not None:
        return verdict
    kept: list[str] = []
    refused: list[tuple[str, Verdict]] = []
    for rcpt in tx.rcpts:
        verdict, known = early_verdict(tx, dns, settings, policy, Stage.RCPT, rcpt=rcpt, known=known,
                                       authserv_id=authserv_id, store=store, signing=signing, now=now)
        if verdict is None:
            kept.append(rcpt)
        else:
            refused.append((rcpt, verdict))
    if refused and not kept:
        return refused[0][1]
    final = evaluate(replace(tx, rcpts=tuple(kept)), dns, settings, authserv_id, policy,
                     sample=sample, known=known, signing=signing, now=now)
    return replace(final, rejected_rcpts=tuple((r, v.reply) for r, v in refused if v.reply))


def _from_decision(
    decision: Decision, results: Results, ar: str, deletes: tuple[HeaderDelete, ...]
) -> Verdict:
    inserts = [HeaderInsert(0, AUTH_RESULTS, ar)]
    hold = False
    if decision.action is Action.QUARANTINE:
        if decision.quarantine_mode == "header":
            inserts.append(HeaderInsert(1, decision.quarantine_header, f"rule {decision.rule}"))
        else:
            hold = True
    reason = f"rule {decision.rule}" if decision.rule else "no rule matched"
    return Verdict(
        action=decision.action,
        reply=decision.reply,
        results=results,
        authentication_results=ar,
        header_deletes=deletes,
        header_inserts=tuple(inserts),
        reason=reason,
        decision=decision,
        quarantine_hold=hold,
    )


def _fail_safe(
    settings: EvalSettings,
    results: Results | None,
    deletes: tuple[HeaderDelete, ...],
    reason: str,
    detail: str,
    *,
    stage: Stage = Stage.EOM,
    guard: tuple[Transaction, Resolver] | None = None,
) -> Verdict:
    """The verdict for mail we could not evaluate. `guard` (the message and the resolver) is given
    at end of message, where "accept" must first rule out a From domain that asks for enforcement."""
    if settings.fail_safe == "accept":
        enforced = _enforcing_author(results, *guard) if guard is not None else ""
        if not enforced:
            # Accepted without our header, but never with a forged one claiming to be ours.
            return Verdict(Action.ACCEPT, None, results, "", deletes, (), reason, (detail,),
                           stage=stage.value)
        reason = f"{reason}; tempfail although fail_safe is accept: {enforced}"
    return Verdict(Action.TEMPFAIL, TEMPFAIL_REPLY, results, "", (), (), reason, (detail,),
                   stage=stage.value)


_ENFORCING = frozenset({"reject", "quarantine"})
# Anything after an "@" up to a delimiter of the address syntax: deliberately looser than the From
# parser, which is what may just have failed. Domains that do not normalise are no DNS names and
# can hold no DMARC record.
_AT_DOMAIN = re.compile(rb"@[ \t]*([^\s<>,;:()\"\[\]\\@]+)")
_MAX_GUARD_DOMAINS = 3


def _enforcing_author(results: Results | None, tx: Transaction, dns: Resolver) -> str:
    """Why mail that failed evaluation must not be accepted unevaluated, or "" if nothing says so.

    Reads the DMARC result when there is one; otherwise every domain found after an "@" in the From
    fields, each asked for its policy record (at most a few, so a hostile From costs little DNS). A
    lookup that fails counts as enforcing: the policy may well be reject.
    """
    dmarc = results.dmarc if results is not None else None
    if dmarc is not None and dmarc.policy in _ENFORCING:
        return f"{dmarc.domain} publishes p={dmarc.policy}"
    domains: list[str] = []
    for h in tx.headers:
        if h.key != b"from":
            continue
        for m in _AT_DOMAIN.finditer(h.value):
            try:
                domain = normalize_domain(m.group(1).decode("utf-8", "replace"))
            except ValueError:
                continue
            if domain not in domains:
                domains.append(domain)
    for domain in domains[:_MAX_GUARD_DOMAINS]:
        try:
            found = discover_policy(domain, dns)
        except Exception:
            return f"the DMARC policy of {domain} could not be read"
        if found.temperror:
            return f"the DMARC policy of {domain} is unknown (DNS temporary error)"
        record = found.record
        if record is not None and _ENFORCING.intersection((record.p, record.sp, record.np)):
            return f"{domain} is covered by a DMARC record that asks for enforcement"
    if len(domains) > _MAX_GUARD_DOMAINS:
        return f"From names {len(domains)} domains"
    return ""
