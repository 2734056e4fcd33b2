"""What the policy decided on and what it decided: the facts of a transaction, the rule walk, the decision.

These are values like any result; the rule language that produces them is in core/decision.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Union


class Action(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    QUARANTINE = "quarantine"
    DISCARD = "discard"
    # A rule action only, never a verdict's: at RCPT TO it becomes a tempfail or lets the
    # recipient through, by what the greylisting store says (core/evaluate.py asks it).
    GREYLIST = "greylist"


@dataclass(frozen=True)
class Reply:
    code: str  # "550"
    status: str  # "5.7.1"
    text: str


class Stage(enum.Enum):
    """Where in the SMTP dialogue we are; ordered MAIL < RCPT < EOM."""

    MAIL = "mail"
    RCPT = "rcpt"
    EOM = "eom"

    @property
    def rank(self) -> int:
        return _STAGE_RANK[self.value]

    @property
    def phrase(self) -> str:
        return _STAGE_PHRASE[self.value]

    @property
    def known_phrase(self) -> str:
        """How error messages say when a fact becomes known."""
        return "at end of message" if self is Stage.EOM else f"from {self.phrase} on"

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Stage):
            return NotImplemented
        return self.rank < other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Stage):
            return NotImplemented
        return self.rank <= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Stage):
            return NotImplemented
        return self.rank > other.rank

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Stage):
            return NotImplemented
        return self.rank >= other.rank


_STAGE_RANK = {"mail": 0, "rcpt": 1, "eom": 2}
_STAGE_PHRASE = {"mail": "MAIL FROM", "rcpt": "RCPT TO", "eom": "end of message"}

FactValue = Union[str, bool, tuple[str, ...], None]  # noqa: UP007 - a runtime alias


@dataclass(frozen=True)
class Facts:
    """What the policy may look at, named like the condition keys.

    None means "not known at this stage". Empty strings are known absences (no verified client
    name, null sender) and match no name.
    """

    stage: Stage
    client_ip: str = ""
    client_host: str = ""
    helo: str = ""
    authenticated: bool = False
    daemon: str = ""
    sender_domain: str = ""
    rcpt_domain: tuple[str, ...] | None = None
    spf: str | None = None
    spf_helo: str | None = None
    dkim: tuple[str, ...] | None = None
    author_signed: bool | None = None
    author: str | None = None
    author_domain: str | None = None
    dmarc: str | None = None
    dmarc_policy: str | None = None
    temperror: bool | None = None
    permerror: bool | None = None
    arc: str | None = None
    # The hops of a passing ARC chain, oldest first, each "+sealer" if its ARC-Authentication-
    # Results vouched for the message (dmarc=pass) or "-sealer" if not; empty if the chain fails.
    arc_trusted_sealers: tuple[str, ...] | None = None
    # Connection facts (iprev, HELO): None until the milter has computed them for this connection.
    iprev: str | None = None
    iprev_host: str | None = None  # the forward-confirmed name; "" unless iprev is pass
    helo_syntax_ok: bool | None = None
    helo_fqdn: bool | None = None
    helo_bare_ip: bool | None = None
    helo_literal_mismatch: bool | None = None
    helo_is_ours: bool | None = None
    # DNS lists: the names of the block (dnsbl) and allow (dnswl) lists that list the client or a
    # domain of the message, each also as "name/meaning" for every meaning its codes have.
    dnsbl: tuple[str, ...] | None = None
    dnswl: tuple[str, ...] | None = None
    # The rate limits this recipient (or message) exceeded; () when none.
    ratelimit: tuple[str, ...] | None = None
    # Greylisting state of the recipient at hand (RCPT TO) or of each recipient (end of message).
    greylist: tuple[str, ...] | None = None

    def value(self, key: str) -> FactValue:
        if key not in _FACT_NAMES:
            raise KeyError(key)
        value: FactValue = getattr(self, key)
        return value

    def render(self, key: str) -> str:
        value = self.value(key)
        if value is None:
            return "(not known yet)" if self.stage is not Stage.EOM else "(unknown)"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, tuple):
            if not value:
                return {"dkim": "(no signatures)", "arc_trusted_sealers": "(no passing ARC chain)",
                        "greylist": "(not greylisted)"}.get(key, "(none)")
            return ", ".join(v or "(none)" for v in value)
        return value or "(none)"


# Every fact a condition key may name; `stage` says when the facts were taken, it is not one.
_FACT_NAMES = frozenset(f.name for f in fields(Facts)) - {"stage"}


@dataclass(frozen=True)
class ConditionTrace:
    key: str
    wanted: str
    actual: str
    matched: bool | None  # None: the fact is not known at this stage


@dataclass(frozen=True)
class RuleTrace:
    rule: str
    source: str
    matched: bool | None
    conditions: tuple[ConditionTrace, ...]
    # "no match" | "decided" | "monitor" (would act) | "deferred" | "skipped" (monitor, early)
    # | "unknown" (a fact missing at end of message)
    outcome: str
    note: str = ""


@dataclass(frozen=True)
class MonitorHit:
    """A monitored rule that matched: what it would have done."""

    rule: str
    source: str
    action: Action
    reply: Reply | None


@dataclass(frozen=True)
class Decision:
    """What the policy says at one stage.

    `deferred` (early stages only): nothing is decided yet and the SMTP dialogue goes on. Its
    `action` is ACCEPT only as a placeholder; a caller must check `deferred` first and must not
    accept the message early.
    """

    action: Action
    reply: Reply | None = None
    rule: str | None = None  # the deciding rule; None: none matched (accept) or deferred
    rule_source: str = ""  # "file:line" of the deciding rule
    override: str | None = None  # the deciding rule's DMARC override reason, when DMARC failed
    monitored: tuple[MonitorHit, ...] = ()
    deferred: bool = False
    quarantine_mode: str = "hold"
    quarantine_header: str = "X-Authmilter-Quarantine"
    trace: tuple[RuleTrace, ...] = ()
    stage: Stage = Stage.EOM
    reason: str = ""  # one line: why
    facts: Facts | None = None  # what was decided on, for explain()
