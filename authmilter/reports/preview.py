"""`authmilter policy preview`: recorded traffic decided again under a draft policy.

Each history record keeps the facts the policy saw. A message that reached end of message is
walked as the milter walks it: at MAIL FROM and RCPT TO with the facts known there (derived
from the recorded ones by forgetting what was not known yet), then at end of message. So a
draft that rejects a DNS-listed client at RCPT TO shows as a reject, and a draft that adds
greylisting shows as "greylist" for mail that was never greylisted before: the first attempt
would get a 451, and whether the sender retries cannot be known from the record.

A message that was refused at MAIL FROM was never seen further: if the draft lets it go on,
its fate depends on checks that never ran, and it is counted as "unknown".
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from authmilter.core.decision import Policy, Stage, decide
from authmilter.core.history import HistoryError, HistoryRecord, facts_from
from authmilter.core.model import Decision, Facts
from authmilter.reports.preview_model import (
    UNKNOWN,
    DomainChanges,
    DomainDay,
    Example,
    PreviewSummary,
    Transition,
)

__all__ = ["Previewer", "Redecided", "redecide"]

EXAMPLES_PER_TRANSITION = 5
CHART_DOMAINS = 10


@dataclass(frozen=True)
class Redecided:
    action: str  # an Action value, "greylist", or UNKNOWN
    rule: str
    reason: str


def _at(facts: Facts, stage: Stage) -> Facts:
    """The facts that were known at an earlier `stage` of the same transaction."""
    f = replace(facts, stage=stage, dkim=None, author_signed=None, author=None, author_domain=None,
                dmarc=None, dmarc_policy=None, arc=None, arc_trusted_sealers=None,
                temperror=True if facts.spf == "temperror" else None,
                permerror=True if facts.spf == "permerror" else None)
    if stage is Stage.MAIL:
        return replace(f, rcpt_domain=None, ratelimit=None, greylist=None)
    return replace(f, rcpt_domain=(facts.rcpt_domain or ("",))[:1],
                   greylist=(facts.greylist or ())[:1])


def redecide(policy: Policy, facts: Facts) -> Redecided:
    """What `policy` would have done with a transaction whose decisive facts were `facts`."""
    stages = {Stage.MAIL: (Stage.MAIL,), Stage.RCPT: (Stage.MAIL, Stage.RCPT),
              Stage.EOM: (Stage.MAIL, Stage.RCPT, Stage.EOM)}[facts.stage]
    for stage in stages:
        at = facts if stage is facts.stage else _at(facts, stage)
        d: Decision = decide(policy, at, trace=False)
        if stage is Stage.EOM or not d.deferred:
            return Redecided(d.action.value, d.rule or "", d.reason)
    return Redecided(UNKNOWN, "", f"decided after {facts.stage.phrase}; not recorded further")


@dataclass
class Previewer:
    """Feeds on records one at a time: memory grows with domains and days, not messages."""

    policy: Policy
    since: int
    until: int
    policy_files: tuple[str, ...]
    total: int = 0
    skipped: int = 0
    before: Counter[str] = field(default_factory=Counter)
    after: Counter[str] = field(default_factory=Counter)
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)
    per_domain: dict[str, Counter[tuple[str, str]]] = field(default_factory=lambda: defaultdict(Counter))
    domain_totals: Counter[str] = field(default_factory=Counter)
    examples: dict[tuple[str, str], list[Example]] = field(default_factory=lambda: defaultdict(list))
    days: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    def add(self, record: HistoryRecord) -> None:
        try:
            facts = facts_from(record.facts)
            new = redecide(self.policy, facts)
        except (HistoryError, TypeError, ValueError):
            self.skipped += 1
            return
        self.total += 1
        old = record.action
        self.before[old] += 1
        self.after[new.action] += 1
        domain = record.header_from
        self.domain_totals[domain] += 1
        if record.dmarc in ("pass", "fail"):
            day = datetime.fromtimestamp(record.time, UTC).strftime("%Y-%m-%d")
            counts = self.days.setdefault((domain, day), [0, 0, 0, 0])
            counts[0] += 1
            counts[1] += record.dmarc == "pass"
            counts[2] += record.dkim_aligned
            counts[3] += record.spf_aligned
        if new.action == old:
            return
        key = (old, new.action)
        self.transitions[key] += 1
        self.per_domain[domain][key] += 1
        shown = self.examples[key]
        if len(shown) < EXAMPLES_PER_TRANSITION:
            shown.append(Example(time=record.time, client_ip=record.client_ip, header_from=domain,
                                 envelope_from=record.envelope_from, old_action=old,
                                 old_rule=record.rule, new_action=new.action, new_rule=new.rule,
                                 reason=new.reason))

    def add_all(self, records: Iterable[HistoryRecord]) -> None:
        for record in records:
            self.add(record)

    def summary(self) -> PreviewSummary:
        def ordered(c: Counter[tuple[str, str]]) -> tuple[Transition, ...]:
            return tuple(Transition(o, n, k) for (o, n), k in
                         sorted(c.items(), key=lambda item: (-item[1], item[0])))

        domains = sorted(self.per_domain.items(), key=lambda item: (-sum(item[1].values()), item[0]))
        busiest = [d for d, _ in self.domain_totals.most_common(CHART_DOMAINS)]
        days = tuple(DomainDay(d, day, *counts) for (d, day), counts in sorted(self.days.items())
                     if d in busiest)
        return PreviewSummary(
            since=self.since, until=self.until, policy_files=self.policy_files, total=self.total,
            changed=sum(self.transitions.values()), unknown=self.after[UNKNOWN],
            skipped=self.skipped,
            actions_before=tuple(sorted(self.before.items())),
            actions_after=tuple(sorted(self.after.items())),
            transitions=ordered(self.transitions),
            domains=tuple(DomainChanges(d, self.domain_totals[d], sum(c.values()), ordered(c))
                          for d, c in domains),
            examples=tuple(e for t in ordered(self.transitions) for e in self.examples[(t.old, t.new)]),
            days=days,
        )


def render_text(s: PreviewSummary, *, domains: int = 20) -> str:
    """The summary for a terminal."""
    def when(t: int) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")

    lines = [f"policy preview: {', '.join(s.policy_files)}",
             f"recorded traffic {when(s.since)} to {when(s.until)} UTC: {s.total} messages"
             + (f" ({s.skipped} unreadable records skipped)" if s.skipped else "")]
    if not s.total:
        lines.append("nothing recorded in that period: nothing to preview")
        return "\n".join(lines) + "\n"
    lines.append(f"{s.changed} would be handled differently ({100 * s.changed / s.total:.1f}%)"
                 + (f", {s.unknown} of them unknown (refused before DATA, the draft would go on)"
                    if s.unknown else ""))
    before, after = dict(s.actions_before), dict(s.actions_after)
    lines.append("")
    lines.append(f"  {'action':<12}{'now':>10}{'draft':>10}")
    for action in sorted(set(before) | set(after)):
        lines.append(f"  {action:<12}{before.get(action, 0):>10}{after.get(action, 0):>10}")
    if s.transitions:
        lines.append("")
        lines.append("changes:")
        for t in s.transitions:
            lines.append(f"  {t.old} -> {t.new}: {t.count}")
        lines.append("")
        lines.append("by author domain:")
        for d in s.domains[:domains]:
            moves = ", ".join(f"{t.old}->{t.new} {t.count}" for t in d.transitions)
            lines.append(f"  {d.domain or '(no From domain)'}: {d.changed} of {d.total} ({moves})")
        if len(s.domains) > domains:
            lines.append(f"  ... and {len(s.domains) - domains} more domains")
        lines.append("")
        lines.append("examples:")
        for e in s.examples:
            lines.append(f"  {when(e.time)} {e.client_ip or '-'} from={e.header_from or '-'} "
                         f"{e.old_action}({e.old_rule or '-'}) -> {e.new_action}({e.new_rule or '-'}): "
                         f"{e.reason}")
    return "\n".join(lines) + "\n"
