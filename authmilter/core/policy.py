"""The policy: an ordered list of rules over facts about one SMTP transaction.

Read like a firewall: the first matching rule that is not in monitor mode decides, and when none
matches the message is accepted. Operators put their exceptions (trusted relays, lists) first.

Facts become known as the SMTP dialogue goes on (`Stage`). At MAIL FROM and RCPT TO a rule may
refuse early, but only if every rule before it could already be decided: a condition that is not
known yet stops the walk ("deferred"), so a later rule never acts before an earlier rule has had
its chance. Conditions are therefore three-valued (True, False, None = not known yet); a rule
with one known-false condition is out whatever the unknown ones turn out to be.

Nothing here does I/O: `policyfile` reads TOML and builds these objects.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Union

from authmilter.core.author import normalize_domain
from authmilter.core.model import Action, ArcHop, DkimResult, Reply, Results, SpfResults, Transaction
from authmilter.core.replies import CATALOGUE
from authmilter.core.spf import normalize_client_ip

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

# Only refusals happen early: an accepted message must still get its Authentication-Results, and
# quarantine and discard need the message.
EARLY_ACTIONS = frozenset({Action.REJECT, Action.TEMPFAIL})

# RFC 7489 section 6.7 / appendix C PolicyOverrideType values, as DMARC reports carry them.
OVERRIDES = ("forwarded", "local_policy", "mailing_list", "trusted_forwarder", "sampled_out", "other")

QUARANTINE_MODES = ("hold", "header")


# --- condition keys ------------------------------------------------------------------------------


class Kind(enum.Enum):
    NETWORKS = "networks"  # IP addresses and CIDR blocks
    NAMES = "names"  # domain names: "example.com" exactly, ".example.com" any subdomain
    WORDS = "words"  # free words compared exactly (MTA daemon names)
    CHOICES = "choices"  # result words from a fixed set
    FLAG = "flag"  # true / false


@dataclass(frozen=True)
class KeySpec:
    kind: Kind
    known_at: Stage
    choices: tuple[str, ...] = ()
    doc: str = ""


SPF_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
DKIM_RESULTS = ("pass", "fail", "neutral", "policy", "temperror", "permerror", "none")
DMARC_RESULTS = ("pass", "fail", "none", "temperror", "permerror")
DMARC_POLICIES = ("none", "quarantine", "reject")
ARC_RESULTS = ("none", "pass", "fail")

CONDITION_KEYS: Mapping[str, KeySpec] = MappingProxyType({
    "client_ip": KeySpec(Kind.NETWORKS, Stage.MAIL, doc="SMTP client address"),
    "client_host": KeySpec(Kind.NAMES, Stage.MAIL, doc="the MTA's verified reverse-DNS name of the client"),
    "helo": KeySpec(Kind.NAMES, Stage.MAIL, doc="HELO/EHLO name"),
    "authenticated": KeySpec(Kind.FLAG, Stage.MAIL, doc="SMTP AUTH succeeded ({auth_authen} set)"),
    "daemon": KeySpec(Kind.WORDS, Stage.MAIL, doc="the MTA daemon ({daemon_name})"),
    "sender_domain": KeySpec(Kind.NAMES, Stage.MAIL, doc="MAIL FROM domain"),
    "rcpt_domain": KeySpec(Kind.NAMES, Stage.RCPT, doc="recipient domain (at end of message: any)"),
    "spf": KeySpec(Kind.CHOICES, Stage.MAIL, SPF_RESULTS, doc="effective SPF result"),
    "spf_helo": KeySpec(Kind.CHOICES, Stage.MAIL, SPF_RESULTS, doc="SPF result of the HELO identity"),
    "dkim": KeySpec(Kind.CHOICES, Stage.EOM, DKIM_RESULTS, doc="result of any DKIM signature"),
    "author_signed": KeySpec(Kind.FLAG, Stage.EOM, doc="a DKIM signature of the author domain passes"),
    "author": KeySpec(Kind.CHOICES, Stage.EOM, ("valid", "invalid"), doc="From names exactly one author"),
    "author_domain": KeySpec(Kind.NAMES, Stage.EOM, doc="the From domain"),
    "dmarc": KeySpec(Kind.CHOICES, Stage.EOM, DMARC_RESULTS, doc="DMARC result"),
    "dmarc_policy": KeySpec(Kind.CHOICES, Stage.EOM, DMARC_POLICIES, doc="the DMARC policy that applies"),
    "arc": KeySpec(Kind.CHOICES, Stage.EOM, ARC_RESULTS, doc="ARC chain validation (RFC 8617)"),
    "arc_trusted_sealers": KeySpec(
        Kind.NAMES, Stage.EOM,
        doc="the ARC chain passes and its oldest hop sealed by one of these domains vouched for the "
            "message (its ARC-Authentication-Results said dmarc=pass)"),
    "temperror": KeySpec(Kind.FLAG, Stage.MAIL, doc="a check known so far is temperror"),
    "permerror": KeySpec(Kind.FLAG, Stage.MAIL, doc="a check known so far is permerror"),
})

# Facts the milter must compute at MAIL FROM for an early rule to see them.
SPF_KEYS = frozenset({"spf", "spf_helo", "temperror", "permerror"})

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]  # noqa: UP007 - a runtime alias
FactValue = Union[str, bool, tuple[str, ...], None]  # noqa: UP007


class ConditionError(ValueError):
    """A condition value the policy cannot use; `value` is the offending list element, if one."""

    def __init__(self, reason: str, value: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.value = value


@dataclass(frozen=True)
class Condition:
    """One `when` key. List keys match if any listed value matches; flags must be equal."""

    key: str
    values: tuple[str, ...] = ()  # normalized, as written for NETWORKS
    flag: bool | None = None
    networks: tuple[IPNetwork, ...] = ()

    @property
    def spec(self) -> KeySpec:
        return CONDITION_KEYS[self.key]

    @property
    def needs(self) -> Stage:
        """The earliest stage at which this condition can be true.

        "No temperror" can only be known once every check has run: at MAIL FROM only SPF has.
        """
        if self.key in ("temperror", "permerror") and self.flag is False:
            return Stage.EOM
        return self.spec.known_at

    def wanted(self) -> str:
        if self.flag is not None:
            return "true" if self.flag else "false"
        return ", ".join(self.values)

    def test(self, facts: Facts) -> bool | None:
        """True / False, or None when the fact is not known at this stage."""
        fact = facts.value(self.key)
        if fact is None:
            return None
        if isinstance(fact, bool):
            return fact is self.flag
        if isinstance(fact, tuple):
            if self.key == "arc_trusted_sealers":
                return _trusted_hop_vouches(fact, self.values)
            if self.key == "dkim":
                return any(r in self.values for r in fact) or (not fact and "none" in self.values)
            return any(_name_matches(d, self.values) for d in fact)  # rcpt_domain: any recipient
        if self.spec.kind is Kind.NETWORKS:
            return _ip_in(fact, self.networks)
        if self.spec.kind is Kind.NAMES:
            return _name_matches(fact, self.values)
        return fact in self.values

    def covers(self, other: Condition) -> bool:
        """Whether everything `other` (same key) matches is matched by this condition too."""
        if self.key == "arc_trusted_sealers":
            # The oldest listed sealer decides, so a longer list can match less: never "covers".
            return self.values == other.values
        if self.spec.kind is Kind.FLAG:
            return self.flag is other.flag
        if self.spec.kind is Kind.NETWORKS:
            return all(any(n.version == m.version and n.subnet_of(m)  # type: ignore[arg-type]
                           for m in self.networks) for n in other.networks)
        if self.spec.kind is Kind.NAMES:
            return all(any(_pattern_covers(p, q) for p in self.values) for q in other.values)
        return set(other.values) <= set(self.values)


def make_condition(key: str, raw: object) -> Condition:
    """A condition from a TOML value; raises ConditionError (KeyError for an unknown key)."""
    spec = CONDITION_KEYS[key]
    if spec.kind is Kind.FLAG:
        if not isinstance(raw, bool):
            raise ConditionError(f"expected true or false, got {_type_name(raw)}")
        return Condition(key, flag=raw)
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        raise ConditionError(f"expected a string or a list of strings, got {_type_name(raw)}")
    if not items:
        raise ConditionError("empty list: the rule would never match")
    texts: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConditionError(f"expected a list of strings, found {_type_name(item)}")
        texts.append(item)
    if spec.kind is Kind.NETWORKS:
        networks = tuple(_network(t) for t in texts)
        return Condition(key, values=tuple(str(n) for n in networks), networks=networks)
    if spec.kind is Kind.NAMES:
        return Condition(key, values=tuple(_name_pattern(t) for t in texts))
    if spec.kind is Kind.WORDS:
        for t in texts:
            if not t or any(c.isspace() or not c.isprintable() for c in t):
                raise ConditionError(f"{t!r} is not a name (empty, or has spaces or control characters)", t)
        return Condition(key, values=tuple(texts))
    for t in texts:
        if t not in spec.choices:
            raise ConditionError(f"{t!r} is not one of: {', '.join(spec.choices)}", t)
    return Condition(key, values=tuple(texts))


def _type_name(value: object) -> str:
    names = {bool: "a boolean", str: "a string", int: "an integer", float: "a number", list: "a list",
             dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _network(text: str) -> IPNetwork:
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise ConditionError(f"{text!r} is not an IP address or CIDR network", text) from None
        raise ConditionError(f"{text!r} has host bits set (the network is {loose})", text) from None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            # Client addresses arrive IPv4-mapped as plain IPv4 (see facts_for); keep one form.
            return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


def _name_pattern(text: str) -> str:
    pattern = text.strip()
    if "*" in pattern:
        raise ConditionError(f"{text!r}: wildcards are not supported; '.example.com' matches every "
                             "subdomain of example.com", text)
    suffix = pattern.startswith(".")
    try:
        name = normalize_domain(pattern[1:] if suffix else pattern)
    except ValueError as e:
        raise ConditionError(f"{text!r} is not a domain name ({e})", text) from None
    return "." + name if suffix else name


def _name_matches(name: str, patterns: Iterable[str]) -> bool:
    if not name:
        return False  # no name (null sender, unverified client) matches nothing
    return any(name.endswith(p) if p.startswith(".") else name == p for p in patterns)


def _pattern_covers(p: str, q: str) -> bool:
    return p == q or (p.startswith(".") and q.endswith(p))


def _ip_in(address: str, networks: Sequence[IPNetwork]) -> bool:
    if not address:
        return False
    ip = ipaddress.ip_address(address)
    return any(ip.version == n.version and ip in n for n in networks)


# --- facts ---------------------------------------------------------------------------------------


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

    def value(self, key: str) -> FactValue:
        if key not in CONDITION_KEYS:
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
                return {"dkim": "(no signatures)", "arc_trusted_sealers": "(no passing ARC chain)"}.get(
                    key, "(none)")
            return ", ".join(v or "(none)" for v in value)
        return value or "(none)"


def facts_for(
    tx: Transaction,
    results: Results | None,
    stage: Stage,
    *,
    spf: SpfResults | None = None,
    rcpt: str | None = None,
) -> Facts:
    """The facts known at `stage`. Later-stage facts stay None even if `results` holds them.

    `spf` is the SPF result the milter computed early; at end of message `results.spf` wins.
    `rcpt` is the recipient being decided at RCPT TO (default: the last of `tx.rcpts`).
    """
    spf_results = results.spf if results is not None and results.spf is not None else spf
    spf_result = spf_results.effective.result if spf_results is not None else None
    spf_helo: str | None = None
    if spf_results is not None:
        # No HELO result (check disabled, or a HELO name that is no domain) is SPF "none".
        spf_helo = spf_results.helo.result if spf_results.helo is not None else "none"

    rcpt_domain: tuple[str, ...] | None = None
    if stage is Stage.RCPT:
        current = rcpt if rcpt is not None else (tx.rcpts[-1] if tx.rcpts else None)
        rcpt_domain = None if current is None else (_address_domain(current),)
    elif stage is Stage.EOM:
        rcpt_domain = tuple(_address_domain(r) for r in tx.rcpts)

    final = stage is Stage.EOM and results is not None
    dkim: tuple[str, ...] | None = None
    author: str | None = None
    author_domain: str | None = None
    author_signed: bool | None = None
    dmarc: str | None = None
    dmarc_policy: str | None = None
    arc: str | None = None
    arc_hops: tuple[str, ...] | None = None
    if final and results is not None:
        dkim = tuple(d.result for d in results.dkim)
        a = results.author
        author_domain = "" if a.error or not a.domain else _domain_or_empty(a.domain)
        author = "valid" if author_domain else "invalid"
        author_signed = _author_signed(author_domain, results.dkim)
        if results.dmarc is not None:
            dmarc, dmarc_policy = results.dmarc.result, results.dmarc.policy
        arc, arc_hops = _arc_facts(results)
    observed = (spf_result, dmarc, *(dkim or ()))
    return Facts(
        stage=stage,
        client_ip=(normalize_client_ip(tx.client_ip) or "") if tx.client_ip else "",
        client_host=_client_host(tx.client_host),
        helo=_domain_or_empty(tx.helo),
        authenticated=bool(_macro(tx.macros, "auth_authen").strip()),
        daemon=_macro(tx.macros, "daemon_name"),
        sender_domain=_address_domain(tx.mail_from),
        rcpt_domain=rcpt_domain,
        spf=spf_result,
        spf_helo=spf_helo,
        dkim=dkim,
        author_signed=author_signed,
        author=author,
        author_domain=author_domain,
        dmarc=dmarc,
        dmarc_policy=dmarc_policy,
        temperror=_error_flag("temperror", observed, final),
        permerror=_error_flag("permerror", observed, final),
        arc=arc,
        arc_trusted_sealers=arc_hops,
    )


def _arc_facts(results: Results) -> tuple[str, tuple[str, ...]]:
    chain = results.arc
    if chain is None:
        return "none", ()
    if chain.result != "pass":
        return chain.result, ()
    hops = sorted(chain.hops, key=lambda h: h.instance)
    return "pass", tuple(("+" if _hop_vouches(h) else "-") + _domain_or_empty(h.sealer) for h in hops)


def _hop_vouches(hop: ArcHop) -> bool:
    """Whether this hop recorded, in its ARC-Authentication-Results, that DMARC passed there."""
    return ("dmarc", "pass") in hop.aar


def _trusted_hop_vouches(hops: Sequence[str], trusted: Sequence[str]) -> bool:
    # What counts is the oldest hop we trust, the one nearest the original sender: a later trusted
    # sealer only saw the message after hops we do not trust, so its word on DMARC counts less.
    for hop in hops:
        if _name_matches(hop[1:], trusted):
            return hop.startswith("+")
    return False


def _error_flag(kind: str, observed: Sequence[str | None], final: bool) -> bool | None:
    if kind in observed:
        return True
    # Before end of message a later check may still fail this way, so "no" is not known yet.
    return False if final else None


def _macro(macros: Mapping[str, str], name: str) -> str:
    # libmilter names long macros in braces; accept the bare name too.
    return macros.get("{" + name + "}", macros.get(name, "")) or ""


def _domain_or_empty(name: str) -> str:
    try:
        return normalize_domain(name.strip())
    except ValueError:
        return ""  # an address literal or garbage names no domain, so it matches no domain rule


def _address_domain(address: str) -> str:
    addr = address.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1].strip()
    if "@" not in addr:
        return ""
    return _domain_or_empty(addr.rsplit("@", 1)[1])


def _client_host(host: str | None) -> str:
    # Postfix says "unknown" and Sendmail "[address]" when the client's name did not verify.
    h = (host or "").strip()
    if not h or h.startswith("[") or h.lower() == "unknown":
        return ""
    return _domain_or_empty(h)


def _author_signed(author_domain: str, dkim: Sequence[DkimResult]) -> bool:
    if not author_domain:
        return False
    labels = author_domain.split(".")
    # The author domain or a parent of it; never a bare TLD (a "com" key must not vouch for all).
    signers = {author_domain} | {".".join(labels[i:]) for i in range(1, len(labels) - 1)}
    return any(d.result == "pass" and _domain_or_empty(d.domain) in signers for d in dkim)


# --- rules and policy ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    monitor: bool = False  # every rule only reports what it would do
    quarantine: str = "hold"  # "hold": the milter quarantine action; "header": add a header instead
    quarantine_header: str = "X-Authmilter-Quarantine"


@dataclass(frozen=True)
class Rule:
    name: str
    action: Action
    when: tuple[Condition, ...] = ()
    description: str = ""
    override: str | None = None  # DMARC override reason reported when this rule lets a failure through
    monitor: bool = False
    stage: Stage = Stage.EOM  # the earliest stage at which it may act
    reply: Reply | None = None  # resolved: reject/tempfail rules always have one
    reply_name: str = ""  # the catalogue entry `reply` came from; "" for an inline reply or none
    source: str = ""  # "file:line" of the rule

    def condition(self, key: str) -> Condition | None:
        return next((c for c in self.when if c.key == key), None)

    @property
    def needs(self) -> Stage:
        """The stage from which all of this rule's conditions can be true."""
        return max((c.needs for c in self.when), default=Stage.MAIL)

    @property
    def needs_spf(self) -> bool:
        return any(c.key in SPF_KEYS for c in self.when)


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    settings: Settings = field(default_factory=Settings)
    replies: Mapping[str, Reply] = field(default_factory=lambda: CATALOGUE)
    files: tuple[str, ...] = ()

    def acts_early(self, rule: Rule) -> bool:
        return (not self.settings.monitor and not rule.monitor and rule.stage < Stage.EOM
                and rule.action in EARLY_ACTIONS)

    # Cached: asked at every MAIL FROM and RCPT TO, and the rules of a loaded set never change.
    @functools.cached_property
    def earliest_stage(self) -> Stage:
        """The first stage at which any rule may act; the milter need not ask before it."""
        return min((r.stage for r in self.rules if self.acts_early(r)), default=Stage.EOM)

    @functools.cached_property
    def needs_early_spf(self) -> bool:
        """Whether the milter must compute SPF at MAIL FROM for early rules to be decidable.

        Not only the early rule's own conditions count: an earlier rule on SPF would stop the
        walk (deferred) if SPF were missing, and the early rule would never get its turn.
        """
        early = [i for i, r in enumerate(self.rules) if self.acts_early(r)]
        if not early:
            return False
        return any(not r.monitor and r.needs_spf for r in self.rules[: early[-1] + 1])


EMPTY_POLICY = Policy()


def rule_problems(rule: Rule) -> list[tuple[str, str]]:
    """(key within the rule, reason) for a well-typed rule that cannot work as written."""
    problems: list[tuple[str, str]] = []
    if rule.stage < Stage.EOM:
        if rule.action not in EARLY_ACTIONS:
            problems.append(("stage", f'stage "{rule.stage.value}" only applies to reject and tempfail '
                                      f"rules; {rule.action.value} happens at end of message"))
        for c in rule.when:
            if c.needs > rule.stage:
                what = f"{c.key} = false" if c.flag is False else c.key
                problems.append(("stage", f'stage "{rule.stage.value}" is too early: {what} is known '
                                          f"only {c.needs.known_phrase}"))
    if rule.override is not None and rule.action in EARLY_ACTIONS:
        problems.append(("override", "an override reason only applies to rules that let mail through "
                                     "(accept, quarantine, discard)"))
    author = rule.condition("author")
    if author is not None and author.values == ("invalid",):
        for key in ("author_domain", "author_signed"):
            other = rule.condition(key)
            if other is not None and other.flag is not False:
                problems.append((f"when.{key}", f'never matches: with author = "invalid" there is no '
                                                f"author domain, so {key} cannot match"))
    signed, dkim = rule.condition("author_signed"), rule.condition("dkim")
    if signed is not None and signed.flag and dkim is not None and "pass" not in dkim.values:
        problems.append(("when.author_signed", "never matches: author_signed = true needs a passing "
                                               "signature, which the dkim condition excludes"))
    return problems


def unreachable(rules: Sequence[Rule]) -> list[tuple[int, int]]:
    """(later, earlier) index pairs: `earlier` is not monitored and matches all `later` matches.

    Only implications between conditions on the same key are seen, so this finds dead rules
    without ever flagging a live one. Global monitor mode is ignored: a policy previewed in
    monitor mode must stay valid when enforced.
    """
    found: list[tuple[int, int]] = []
    for j, later in enumerate(rules):
        for i in range(j):
            earlier = rules[i]
            if earlier.monitor:
                continue
            if all((lc := later.condition(c.key)) is not None and c.covers(lc) for c in earlier.when):
                found.append((j, i))
                break
    return found


# --- decisions -----------------------------------------------------------------------------------


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


def decide(policy: Policy, facts: Facts) -> Decision:
    walk = _Walk(policy, facts)
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

    def __init__(self, policy: Policy, facts: Facts) -> None:
        self.policy = policy
        self.facts = facts
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
        conds = tuple(ConditionTrace(c.key, c.wanted(), facts.render(c.key), c.test(facts))
                      for c in rule.when)
        matched = _all(c.matched for c in conds)

        def note(outcome: str, text: str = "") -> None:
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
            missing = ", ".join(c.key for c in conds if c.matched is None)
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
        if self.early and not (rule.stage <= facts.stage and rule.action in EARLY_ACTIONS):
            # It matches now and will match again later: nothing after it may act first.
            when = rule.stage.phrase if rule.stage > facts.stage else "end of message"
            note("deferred", f"matches; {rule.action.value} is taken at {when}")
            return self.decision(Action.ACCEPT, deferred=True,
                                 reason=f"deferred: rule {rule.name} acts at {when}")
        note("decided", rule.action.value)
        return self.decision(rule.action, rule=rule, reason=f"rule {rule.name}: {rule.action.value}")


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
