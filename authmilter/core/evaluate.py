"""The one evaluation every shell shares: a transaction and a resolver in, a verdict out.

The milter, `authmilter check` and the tests all call `evaluate`, so what an operator sees on the
command line is what the milter did. Any exception inside a check becomes the configured fail-safe
verdict here: a bug or a hostile message must never turn into an accidental accept with a missing
or forged Authentication-Results header.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from authmilter.core.author import parse_author
from authmilter.core.authresults import build_authentication_results, forged_headers
from authmilter.core.dkim import verify_dkim
from authmilter.core.dmarc import evaluate_dmarc
from authmilter.core.dnsapi import Resolver
from authmilter.core.model import (
    Action,
    HeaderDelete,
    HeaderInsert,
    Reply,
    Results,
    Transaction,
    Verdict,
)
from authmilter.core.spf import check_spf

AUTH_RESULTS = "Authentication-Results"

# The reply for mail we could not evaluate. 451 4.7.1 because the cause is on our side and the
# sender should retry; the text names no internals.
TEMPFAIL_REPLY = Reply("451", "4.7.1", "Temporary authentication failure, try again later")


@dataclass(frozen=True)
class EvalSettings:
    dkim_max_signatures: int = 10
    dkim_min_key_bits: int = 1024
    spf_check_helo: bool = True
    spf_timeout: float = 20.0
    fail_safe: str = "tempfail"  # "tempfail" | "accept": what evaluation errors do to mail


def evaluate(
    tx: Transaction,
    dns: Resolver,
    settings: EvalSettings,
    authserv_id: str,
    *,
    sample: Callable[[], float] = random.random,
) -> Verdict:
    try:
        deletes = forged_headers(tx.headers, authserv_id)
    except Exception:
        # Without knowing which headers are forged we cannot pass the message on safely, so this
        # one tempfails even where the operator chose to accept on errors.
        return Verdict(Action.TEMPFAIL, TEMPFAIL_REPLY, None, "", (), (), "forged-header scan failed",
                       (traceback.format_exc(),))
    try:
        spf = check_spf(
            tx.client_ip, tx.helo, tx.mail_from, dns,
            check_helo=settings.spf_check_helo, timeout=settings.spf_timeout,
        )
        dkim = verify_dkim(
            tx.message_bytes(), dns,
            max_signatures=settings.dkim_max_signatures, min_key_bits=settings.dkim_min_key_bits,
        )
        author = parse_author(tx.headers)
        dmarc = evaluate_dmarc(author, spf, dkim, dns, sample=sample)
        results = Results(spf=spf, dkim=dkim, author=author, dmarc=dmarc)
        ar = build_authentication_results(authserv_id, results, client_ip=tx.client_ip)
    except Exception:
        return _fail_safe(settings, None, deletes, "evaluation failed", traceback.format_exc())
    return Verdict(
        action=Action.ACCEPT,
        reply=None,
        results=results,
        authentication_results=ar,
        header_deletes=deletes,
        header_inserts=(HeaderInsert(0, AUTH_RESULTS, ar),),
        reason="accepted: no policy rejects",
    )


def _fail_safe(
    settings: EvalSettings,
    results: Results | None,
    deletes: tuple[HeaderDelete, ...],
    reason: str,
    detail: str,
) -> Verdict:
    if settings.fail_safe == "accept":
        # Accepted without our header, but never with a forged one claiming to be ours.
        return Verdict(Action.ACCEPT, None, results, "", deletes, (), reason, (detail,))
    return Verdict(Action.TEMPFAIL, TEMPFAIL_REPLY, results, "", (), (), reason, (detail,))
