"""What `policy preview` found: recorded traffic decided again under a draft policy.

Plain values, so that the text output, `--json` and the HTML page (`preview_html`) all show the
same summary.
"""

from __future__ import annotations

from dataclasses import dataclass

# The "new action" of a record the draft cannot decide from what was recorded: it was refused
# before DATA, and the draft would let it go on to checks whose results were never computed.
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Transition:
    old: str  # our action as recorded: accept | reject | tempfail | quarantine | discard
    new: str  # under the draft, or UNKNOWN
    count: int


@dataclass(frozen=True)
class DomainChanges:
    domain: str  # the author (header From) domain; "" for mail with none
    total: int
    changed: int
    transitions: tuple[Transition, ...]  # only those with old != new, most frequent first


@dataclass(frozen=True)
class Example:
    time: int  # seconds since the epoch
    client_ip: str
    header_from: str
    envelope_from: str
    old_action: str
    old_rule: str
    new_action: str
    new_rule: str
    reason: str  # the draft's one-line reason


@dataclass(frozen=True)
class DomainDay:
    """DMARC results for one author domain on one UTC day, for the pass-rate chart."""

    domain: str
    day: str  # YYYY-MM-DD
    total: int  # messages that DMARC evaluated (pass or fail)
    dmarc_pass: int
    dkim_aligned: int
    spf_aligned: int


@dataclass(frozen=True)
class PreviewSummary:
    since: int
    until: int
    policy_files: tuple[str, ...]  # the draft
    total: int  # records read
    changed: int  # records whose action differs under the draft (UNKNOWN included)
    unknown: int  # records the draft cannot decide
    skipped: int  # records that could not be read
    actions_before: tuple[tuple[str, int], ...]  # action -> count, recorded
    actions_after: tuple[tuple[str, int], ...]  # action -> count, under the draft
    transitions: tuple[Transition, ...]  # every old -> new pair with old != new
    domains: tuple[DomainChanges, ...]  # domains with changes, most changed first
    examples: tuple[Example, ...]  # a few per transition
    days: tuple[DomainDay, ...]  # per domain and day, for the busiest domains
