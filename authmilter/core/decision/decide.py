"""Deciding: the rule walk over the facts, first match wins; and its explanation for operators."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from authmilter.core.decision.rules import CONDITION_KEYS, EARLY_ACTIONS, Kind, Policy, Rule
from authmilter.core.model import (
    Action,
    ConditionTrace,
    Decision,
    Facts,
    MonitorHit,
    Reply,
    RuleTrace,
    Stage,
)

__all__ = ["DEFERRED_STATES", "decide", "explain"]

# Greylisting states in which the recipient must come back later.
DEFERRED_STATES = frozenset({"new", "early", "expired-restart"})

def decide(policy: Policy, facts: Facts, *, trace: bool = True) -> Decision:
    """The first rule that acts on `facts`. `trace=False` records no per-rule trace: the same
    decision for less work, for the walks at MAIL FROM and RCPT TO that mostly just go on."""
    walk = _Walk(policy, facts, trace)
    for rule in policy.rules:
        decision = walk.step(rule)
        if decision is not None:
            return decision
    if walk.early:
        return walk.decision(Action.ACCEPT, deferred=True,
                             reason=f"deferred: no rule acts at {facts.stage.phrase}")
    return walk.decision(Action.ACCEPT, reason="no rule matched: accept")


class _Walk:
    """One walk down the rules: the trace and monitor hits so far."""

    def __init__(self, policy: Policy, facts: Facts, trace: bool = True) -> None:
        self.policy = policy
        self.facts = facts
        self.trace = trace
        self.early = facts.stage is not Stage.EOM
        self.traces: list[RuleTrace] = []
        self.hits: list[MonitorHit] = []

    def decision(self, action: Action, *, rule: Rule | None = None, deferred: bool = False,
                 reason: str) -> Decision:
        settings = self.policy.settings
        return Decision(
            action=action,
            reply=rule.reply if rule and not deferred else None,
            rule=rule.name if rule and not deferred else None,
            rule_source=rule.source if rule and not deferred else "",
            override=rule.override if rule and not deferred and self.facts.dmarc == "fail" else None,
            monitored=tuple(self.hits),
            deferred=deferred,
            quarantine_mode=settings.quarantine,
            quarantine_header=settings.quarantine_header,
            trace=tuple(self.traces),
            stage=self.facts.stage,
            reason=reason,
            facts=self.facts,
        )

    def step(self, rule: Rule) -> Decision | None:
        facts = self.facts
        if self.trace:
            conds = tuple(ConditionTrace(c.key, c.wanted(), facts.render(c.key), c.test(facts))
                          for c in rule.when)
            matched = _all(c.matched for c in conds)
        else:
            matched = _first_false(rule, facts)

        def note(outcome: str, text: str = "") -> None:
            if self.trace:
                self.traces.append(RuleTrace(rule.name, rule.source, matched, conds, outcome, text))

        if self.early and (self.policy.settings.monitor or rule.monitor):
            # Monitor rules never act, so they must not hold back a later rule either: turning
            # monitor on must change nothing. They are reported once, at end of message.
            note("skipped", "monitor: reported at end of message")
            return None
        if matched is False:
            note("no match")
            return None
        if matched is None:
            missing = ", ".join(c.key for c in rule.when if c.test(facts) is None)
            if not self.early:
                note("unknown", f"{missing} unknown: treated as no match")
                return None
            note("deferred", f"{missing} not known yet at {facts.stage.phrase}")
            return self.decision(Action.ACCEPT, deferred=True,
                                 reason=f"deferred: rule {rule.name} needs {missing}")
        if self.policy.settings.monitor or rule.monitor:
            self.hits.append(MonitorHit(rule.name, rule.source, rule.action, rule.reply))
            note("monitor", f"would {rule.action.value}")
            return None
        if rule.action is Action.GREYLIST and facts.stage is not Stage.MAIL:
            return self._greylist(rule, note)
        if self.early and not (rule.stage <= facts.stage and rule.action in EARLY_ACTIONS):
            # It matches now and will match again later: nothing after it may act first.
            when = rule.stage.phrase if rule.stage > facts.stage else "end of message"
            note("deferred", f"matches; {rule.action.value} is taken at {when}")
            return self.decision(Action.ACCEPT, deferred=True,
                                 reason=f"deferred: rule {rule.name} acts at {when}")
        note("decided", rule.action.value)
        return self.decision(rule.action, rule=rule, reason=f"rule {rule.name}: {rule.action.value}")


    def _greylist(self, rule: Rule, note: Callable[[str, str], None]) -> Decision | None:
        """A matching greylist rule: at RCPT TO the recipient's greylisting state decides; at end
        of message it has already acted, for each recipient."""
        facts = self.facts
        if not self.early:
            note("no match", "greylisting acted at RCPT TO")
            return None
        states = facts.greylist
        if not states:
            # The caller asks the store and walks again with the state in the facts.
            return self.decision(Action.GREYLIST, rule=rule, reason=f"rule {rule.name}: greylist")
        state = states[0]
        if state in DEFERRED_STATES:
            note("decided", f"greylist: {state}, deferred")
            return self.decision(Action.TEMPFAIL, rule=rule,
                                 reason=f"rule {rule.name}: greylisted ({state})")
        note("no match", f"greylist: {state}, let through")
        return None


def _first_false(rule: Rule, facts: Facts) -> bool | None:
    """`_all` of the rule's conditions, stopping at the first that fails."""
    unknown = False
    for cond in rule.when:
        result = cond.test(facts)
        if result is False:
            return False
        unknown = unknown or result is None
    return None if unknown else True


def _all(verdicts: Iterable[bool | None]) -> bool | None:
    """Three-valued AND: one False decides; otherwise any unknown leaves it unknown."""
    seen = list(verdicts)
    if False in seen:
        return False
    return None if None in seen else True


def _reply_text(reply: Reply | None) -> str:
    return f" {reply.code} {reply.status} {reply.text}" if reply else ""


def explain(decision: Decision, facts: Facts | None = None) -> list[str]:
    """Human lines for `authmilter check --explain`: facts, each rule walked, what decided."""
    facts = facts if facts is not None else decision.facts
    lines = [f"stage: {decision.stage.phrase}"]
    if facts is not None:
        lines.append("facts:")
        width = max(len(k) for k in CONDITION_KEYS)
        lines.extend(f"  {key:<{width}}  {facts.render(key)}" for key in CONDITION_KEYS)
    lines.append("rules:" if decision.trace else "rules: (none)")
    for n, t in enumerate(decision.trace, 1):
        where = f" ({t.source})" if t.source else ""
        note = f" -- {t.note}" if t.note else ""
        lines.append(f"  {n}. {t.rule}{where}: {t.outcome}{note}")
        for c in t.conditions:
            verdict = {True: "yes", False: "no", None: "not known"}[c.matched]
            wanted = f"= {c.wanted}" if CONDITION_KEYS[c.key].kind is Kind.FLAG else f"in [{c.wanted}]"
            lines.append(f"       {c.key} {wanted}: is {c.actual}: {verdict}")
        if not t.conditions:
            lines.append("       (no conditions: matches every message)")
    for m in decision.monitored:
        lines.append(f"monitor: rule {m.rule} ({m.source}) would {m.action.value}{_reply_text(m.reply)}")
    if decision.deferred:
        lines.append(f"decision: deferred ({decision.reason}); the dialogue continues")
        return lines
    if decision.rule:
        lines.append(f"decided by: rule {decision.rule} at {decision.rule_source}")
    else:
        lines.append("decided by: no rule matched, so the message is accepted")
    lines.append(f"action: {decision.action.value}{_reply_text(decision.reply)}")
    if decision.action is Action.QUARANTINE:
        how = ("held in the MTA's quarantine" if decision.quarantine_mode == "hold"
               else f"marked with a {decision.quarantine_header} header")
        lines.append(f"quarantine: {how}")
    if decision.override:
        lines.append(f"dmarc override: {decision.override}")
    return lines
