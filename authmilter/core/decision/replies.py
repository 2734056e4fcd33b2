"""The SMTP replies policies may send, by name, and what makes a reply acceptable.

Codes follow RFC 5321, enhanced status codes RFC 3463, and the authentication-specific ones
RFC 7372 (X.7.20-X.7.26). Texts state the reason in plain words and never name internals (rule
names, DNS servers, exception text): the sender's postmaster reads them, and so may an attacker
probing our configuration.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from authmilter.core.model import Action, Reply

__all__ = ["CATALOGUE", "DEFAULT_REPLY", "ReplyProblem", "validate_reply"]

CATALOGUE: Mapping[str, Reply] = MappingProxyType({
    # What a reject or tempfail rule without its own reply sends.
    "reject": Reply("550", "5.7.1", "Message rejected by the recipient's mail policy"),
    "tempfail": Reply("451", "4.7.1", "Message temporarily deferred, please try again later"),
    # RFC 7372 has no DMARC code; 5.7.26 ("multiple authentication checks failed") is what DMARC
    # rejections are commonly sent with, since DMARC fails only when SPF and DKIM both fail to align.
    "dmarc_reject": Reply("550", "5.7.26",
                          "Message rejected: it fails the DMARC policy of the domain in its From header"),
    # A DNS failure on the way to the DMARC policy: the sender's retry will likely succeed.
    "dmarc_temperror": Reply(
        "451", "4.7.1", "The DMARC policy of the From domain could not be checked, please try again later"),
    "spf_fail": Reply(
        "550", "5.7.23", "Message rejected: the sender domain's SPF record does not allow this host"),
    "spf_permerror": Reply("550", "5.7.24", "Message rejected: the sender domain's SPF record is invalid"),
    "spf_temperror": Reply(
        "451", "4.7.24", "The SPF record of the sender domain could not be checked, please try again later"),
    "dkim_none": Reply("550", "5.7.20", "Message rejected: it carries no valid DKIM signature"),
    "dkim_author": Reply(
        "550", "5.7.22", "Message rejected: no valid DKIM signature of the domain in its From header"),
    "bad_from": Reply(
        "550", "5.7.1", "Message rejected: the From header must name exactly one author address"),
    # RFC 6647 section 2.1: a temporary failure the sender's MTA retries; 4.7.1 as postgrey sends.
    "greylisted": Reply("451", "4.7.1", "Greylisted, please try again later"),
    "rate_limited": Reply("450", "4.7.1", "Too much mail from you right now, please try again later"),
    # Our own failure to evaluate: never the sender's fault, so always temporary.
    "fail_safe": Reply("451", "4.7.1", "Temporary authentication failure, please try again later"),
})

# The catalogue entry a reject or tempfail rule gets when it names no reply.
DEFAULT_REPLY: Mapping[Action, str] = MappingProxyType({Action.REJECT: "reject", Action.TEMPFAIL: "tempfail",
                                                        Action.GREYLIST: "greylisted"})

TEXT_MAX = 200
_CODE = re.compile(r"[45][0-9][0-9]\Z")
_STATUS = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\Z")


@dataclass(frozen=True)
class ReplyProblem:
    field: str  # "code" | "status" | "text", or "" when the reply as a whole does not fit the action
    reason: str


def validate_reply(reply: Reply, action: Action | None = None) -> list[ReplyProblem]:
    """Everything wrong with `reply`, alone and (given `action`) as the reply of such a rule."""
    problems: list[ReplyProblem] = []
    code_ok = bool(_CODE.match(reply.code))
    if not code_ok:
        problems.append(ReplyProblem("code", f"must be a 3-digit 4xx or 5xx SMTP code, got {reply.code!r}"))
    m = _STATUS.match(reply.status)
    if m is None:
        problems.append(ReplyProblem(
            "status", f"must be an enhanced status code (class.subject.detail, like 5.7.1), "
                      f"got {reply.status!r}"))
    elif code_ok and m.group(1) != reply.code[0]:
        # RFC 3463 section 2: the class must agree with the basic code, or clients act on either.
        problems.append(ReplyProblem(
            "status", f"class {m.group(1)} of {reply.status!r} does not match the code {reply.code}"))
    problems.extend(ReplyProblem("text", reason) for reason in _text_problems(reply.text))
    if action is not None and code_ok:
        wanted = {Action.REJECT: "5", Action.TEMPFAIL: "4", Action.GREYLIST: "4"}.get(action)
        if wanted is not None and reply.code[0] != wanted:
            problems.append(ReplyProblem(
                "", f"a {action.value} rule needs a {wanted}xx reply, got {reply.code}"))
    return problems


def _text_problems(text: str) -> list[str]:
    if not text.strip():
        return ["must not be empty"]
    problems: list[str] = []
    if "\r" in text or "\n" in text:
        problems.append("must be one line (no CR or LF)")
    elif any(not " " <= c <= "~" for c in text):
        # The reply goes out on the SMTP wire as-is; RFC 5321 replies are ASCII.
        problems.append("must be printable ASCII")
    if "%" in text:
        # libmilter's smfi_setreply reads '%' as a format character and drops texts with a lone one.
        problems.append("must not contain '%'")
    if len(text) > TEXT_MAX:
        problems.append(f"must be at most {TEXT_MAX} characters, got {len(text)}")
    return problems
