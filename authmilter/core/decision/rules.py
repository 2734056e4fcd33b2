"""The rule language: condition keys, conditions, rules and a policy (an ordered list of rules).

Read like a firewall: the first matching rule that is not in monitor mode decides, and when none
matches the message is accepted. Operators put their exceptions (trusted relays, lists) first.

Facts become known as the SMTP dialogue goes on (`Stage`). At MAIL FROM and RCPT TO a rule may
refuse early, but only if every rule before it could already be decided: a condition that is not
known yet stops the walk ("deferred"), so a later rule never acts before an earlier rule has had
its chance. Conditions are therefore three-valued (True, False, None = not known yet); a rule
with one known-false condition is out whatever the unknown ones turn out to be.

Nothing here does I/O: `authmilter.files.policy` reads TOML and builds these objects. The facts a
rule looks at are taken in `facts`; the walk over the rules is in `decide`.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Union

from authmilter.core.decision.replies import CATALOGUE
from authmilter.core.model import Action, Facts, Reply, Stage
from authmilter.core.names import normalize_domain

__all__ = [
    "CONDITION_KEYS",
    "EARLY_ACTIONS",
    "EMPTY_POLICY",
    "OVERRIDES",
    "QUARANTINE_MODES",
    "Condition",
    "ConditionError",
    "IPNetwork",
    "KeySpec",
    "Kind",
    "Policy",
    "Rule",
    "Settings",
    "make_condition",
    "rule_problems",
    "unreachable",
]





# Only refusals happen early: an accepted message must still get its Authentication-Results, and
# quarantine and discard need the message.
EARLY_ACTIONS = frozenset({Action.REJECT, Action.TEMPFAIL, Action.GREYLIST})

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
IPREV_RESULTS = ("pass", "fail", "temperror", "permerror", "none")
GREYLIST_STATES = ("new", "early", "expired-restart", "passed", "auto-allowed", "skipped", "error", "none")

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
    "iprev": KeySpec(Kind.CHOICES, Stage.MAIL, IPREV_RESULTS,
                     doc="forward-confirmed reverse DNS of the client (RFC 8601 iprev)"),
    "iprev_host": KeySpec(Kind.NAMES, Stage.MAIL, doc="the client's forward-confirmed PTR name"),
    "helo_syntax_ok": KeySpec(Kind.FLAG, Stage.MAIL,
                              doc="HELO is a valid domain name or address literal"),
    "helo_fqdn": KeySpec(Kind.FLAG, Stage.MAIL, doc="HELO is a valid domain name with a dot"),
    "helo_bare_ip": KeySpec(Kind.FLAG, Stage.MAIL, doc="HELO is an IP address without brackets"),
    "helo_literal_mismatch": KeySpec(Kind.FLAG, Stage.MAIL,
                                     doc="HELO names an address that is not the client's"),
    "helo_is_ours": KeySpec(Kind.FLAG, Stage.MAIL, doc="HELO is our own name or address"),
    "dnsbl": KeySpec(Kind.WORDS, Stage.MAIL,
                     doc='block lists listing the client or a domain ("name" or "name/meaning"; '
                         "From-domain lists at end of message)"),
    "dnswl": KeySpec(Kind.WORDS, Stage.MAIL, doc='allow lists listing the client or a domain ("name" or '
                                                 '"name/meaning")'),
    "ratelimit": KeySpec(Kind.WORDS, Stage.RCPT, doc="rate limits this recipient or message exceeds"),
    "greylist": KeySpec(Kind.CHOICES, Stage.EOM, GREYLIST_STATES,
                        doc="greylisting state of any recipient (none: no greylist rule acted)"),
})

# Facts the milter must compute at MAIL FROM for an early rule to see them. The HELO facts need
# no such list: they cost no lookup, so they are worked out whenever an early rule may act.
SPF_KEYS = frozenset({"spf", "spf_helo", "temperror", "permerror"})
IPREV_KEYS = frozenset({"iprev", "iprev_host"})
LIST_KEYS = frozenset({"dnsbl", "dnswl"})

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]  # noqa: UP007 - a runtime alias


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
            if self.key in ("dkim", "greylist"):
                return any(r in self.values for r in fact) or (not fact and "none" in self.values)
            if self.spec.kind is Kind.WORDS:
                return any(r in self.values for r in fact)
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


def _trusted_hop_vouches(hops: Sequence[str], trusted: Sequence[str]) -> bool:
    # What counts is the oldest hop we trust, the one nearest the original sender: a later trusted
    # sealer only saw the message after hops we do not trust, so its word on DMARC counts less.
    for hop in hops:
        if _name_matches(hop[1:], trusted):
            return hop.startswith("+")
    return False


@functools.lru_cache(maxsize=4096)  # every walk tests the client address; few distinct clients
def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(address)


def _ip_in(address: str, networks: Sequence[IPNetwork]) -> bool:
    if not address:
        return False
    ip = _ip(address)
    return any(ip.version == n.version and ip in n for n in networks)


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

    @property
    def needs_iprev(self) -> bool:
        return any(c.key in IPREV_KEYS for c in self.when)

    @property
    def needs_lists(self) -> bool:
        return any(c.key in LIST_KEYS for c in self.when)


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
        return any(r.needs_spf for r in self._walked_early)

    @functools.cached_property
    def needs_early_iprev(self) -> bool:
        """Whether the milter must check iprev at MAIL FROM, for the reason SPF may be needed."""
        return any(r.needs_iprev for r in self._walked_early)

    @functools.cached_property
    def needs_early_lists(self) -> bool:
        """Whether the milter must ask the DNS lists at MAIL FROM, for the reason SPF may be."""
        return any(r.needs_lists for r in self._walked_early)

    @functools.cached_property
    def counts_rates(self) -> bool:
        """Whether any rule looks at rate limits: only then are buckets counted at all."""
        return any(c.key == "ratelimit" for r in self.rules for c in r.when)

    @functools.cached_property
    def greylists(self) -> bool:
        return any(r.action is Action.GREYLIST for r in self.rules)

    @functools.cached_property
    def _walked_early(self) -> tuple[Rule, ...]:
        """The rules an early walk may have to decide: those up to the last one that acts early
        (monitored ones are skipped early, so what they look at is never needed then)."""
        early = [i for i, r in enumerate(self.rules) if self.acts_early(r)]
        if not early:
            return ()
        return tuple(r for r in self.rules[: early[-1] + 1] if not r.monitor)


EMPTY_POLICY = Policy()


def rule_problems(rule: Rule) -> list[tuple[str, str]]:
    """(key within the rule, reason) for a well-typed rule that cannot work as written."""
    problems: list[tuple[str, str]] = []
    if rule.action is Action.GREYLIST and rule.stage is not Stage.RCPT:
        problems.append(("stage", "greylisting acts at RCPT TO (stage \"rcpt\"), for each recipient"))
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
            if earlier.monitor or earlier.action is Action.GREYLIST:
                continue  # a greylist rule lets every retry that passes go on down the rules
            if all((lc := later.condition(c.key)) is not None and c.covers(lc) for c in earlier.when):
                found.append((j, i))
                break
    return found
