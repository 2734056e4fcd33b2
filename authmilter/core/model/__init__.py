"""Values that flow through the core: the transaction in, results and the verdict out.

All frozen: once a check has spoken, nothing downstream may quietly change what it said. This is
the ground floor: it imports nothing else of authmilter, and everything else may import it.
"""

from authmilter.core.model.decision import (
    Action,
    ConditionTrace,
    Decision,
    Facts,
    FactValue,
    MonitorHit,
    Reply,
    RuleTrace,
    Stage,
)
from authmilter.core.model.results import (
    ArcHop,
    ArcResult,
    AuthorResult,
    DkimResult,
    DmarcRecord,
    DmarcResult,
    DnsListResult,
    DnsListResults,
    EarlyResults,
    GreylistResult,
    HeloResult,
    IprevResult,
    RateResult,
    Results,
    SpfIdentity,
    SpfResult,
    SpfResults,
)
from authmilter.core.model.transaction import Header, Transaction, field_key
from authmilter.core.model.verdict import HeaderDelete, HeaderInsert, SigningOutcome, Verdict

__all__ = [
    "Action",
    "ArcHop",
    "ArcResult",
    "AuthorResult",
    "ConditionTrace",
    "Decision",
    "DkimResult",
    "DmarcRecord",
    "DmarcResult",
    "DnsListResult",
    "DnsListResults",
    "EarlyResults",
    "FactValue",
    "Facts",
    "GreylistResult",
    "Header",
    "HeaderDelete",
    "HeaderInsert",
    "HeloResult",
    "IprevResult",
    "MonitorHit",
    "RateResult",
    "Reply",
    "Results",
    "RuleTrace",
    "SigningOutcome",
    "SpfIdentity",
    "SpfResult",
    "SpfResults",
    "Stage",
    "Transaction",
    "Verdict",
    "field_key",
]
