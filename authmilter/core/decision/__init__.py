"""The decision: the policy language (`rules`), the facts it reads (`facts`), the walk that decides
(`decide`) and the catalogue of SMTP replies (`replies`).

Read like a firewall: the first matching rule that is not in monitor mode decides, and when none
matches the message is accepted. The values it produces (Facts, Decision, its trace) are in
core.model, so that a verdict can carry them without the model importing the rules.
"""

from authmilter.core.decision.decide import decide, explain
from authmilter.core.decision.facts import facts_for
from authmilter.core.decision.rules import (
    CONDITION_KEYS,
    EARLY_ACTIONS,
    EMPTY_POLICY,
    OVERRIDES,
    QUARANTINE_MODES,
    Condition,
    ConditionError,
    IPNetwork,
    KeySpec,
    Kind,
    Policy,
    Rule,
    Settings,
    make_condition,
    rule_problems,
    unreachable,
)
from authmilter.core.model import ConditionTrace, Decision, Facts, MonitorHit, RuleTrace, Stage

__all__ = [
    "CONDITION_KEYS",
    "EARLY_ACTIONS",
    "EMPTY_POLICY",
    "OVERRIDES",
    "QUARANTINE_MODES",
    "Condition",
    "ConditionError",
    "ConditionTrace",
    "Decision",
    "Facts",
    "IPNetwork",
    "KeySpec",
    "Kind",
    "MonitorHit",
    "Policy",
    "Rule",
    "RuleTrace",
    "Settings",
    "Stage",
    "decide",
    "explain",
    "facts_for",
    "make_condition",
    "rule_problems",
    "unreachable",
]
