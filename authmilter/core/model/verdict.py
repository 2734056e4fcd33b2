"""What the core answers for a message: header edits, the SMTP reply, and why."""

from __future__ import annotations

from dataclasses import dataclass

from authmilter.core.model.decision import Action, Decision, Reply
from authmilter.core.model.results import Results


@dataclass(frozen=True)
class HeaderInsert:
    index: int  # 0 is the top
    name: str
    value: str


@dataclass(frozen=True)
class HeaderDelete:
    name: str
    occurrence: int  # 1-based among fields of this name, as smfi_chgheader counts


@dataclass(frozen=True)
class SigningOutcome:
    """What signing did. `signatures` are DKIM-Signature values: folded with CRLF + white space,
    without the field name and the space after the colon, in the order of the entry's keys.

    status: signed | no-entry (no table entry matches: sent unsigned, not an error) |
            key-unavailable | bad-author | error
    """

    status: str
    signatures: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()  # key names used (signed), or the one that was missing
    reason: str = ""  # one line for the log; never key material
    domain: str = ""  # the domain the table was matched on (author, or envelope sender)
    entry: str = ""  # "file:line" of the matching entry


@dataclass(frozen=True)
class Verdict:
    action: Action
    reply: Reply | None
    results: Results | None
    authentication_results: str  # the header value we add ("" when none is added)
    header_deletes: tuple[HeaderDelete, ...] = ()
    header_inserts: tuple[HeaderInsert, ...] = ()
    reason: str = ""
    errors: tuple[str, ...] = ()
    stage: str = "eom"  # where it was decided: "mail", "rcpt" or "eom"
    decision: Decision | None = None  # the policy's decision, with its trace; None on fail-safe
    quarantine_hold: bool = False  # QUARANTINE by the milter quarantine action (else by a header)
    rejected_rcpts: tuple[tuple[str, Reply], ...] = ()  # recipients refused at RCPT
    outbound: str = ""  # why this is our users' mail to sign ("authenticated", ...); "" inbound
    signing: SigningOutcome | None = None
    arc_seal: str = ""  # what ARC sealing did ("sealed i=2 cv=pass", "skipped: ..."); "" not asked
