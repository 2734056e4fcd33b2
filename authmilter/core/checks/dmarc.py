"""DMARC evaluation per RFC 9989 (DMARCbis), reading RFC 7489 records compatibly.

Policy discovery and Organizational Domains come from the DNS Tree Walk (RFC 9989 section 4.10),
not from a public suffix list. Every lookup goes through one memoizing wrapper per evaluation, so
a name is asked at most once per message and the work stays bounded: at most 8 queries per walk
(section 4.10), one walk per distinct identifier that could align, plus one existence query.

Section references below are to RFC 9989 unless another RFC is named.
"""

from __future__ import annotations

import contextlib
import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from authmilter.core.dnsapi import DnsAnswer, DnsStatus, Resolver
from authmilter.core.model import AuthorResult, DkimResult, DmarcRecord, DmarcResult, SpfIdentity, SpfResults
from authmilter.core.names import normalize_domain

__all__ = [
    "MAX_WALK_QUERIES",
    "OrgDomain",
    "PolicyDiscovery",
    "RecordError",
    "TreeWalk",
    "discover_policy",
    "evaluate_dmarc",
    "organizational_domain",
    "parse_record",
    "tree_walk",
]

MAX_WALK_QUERIES = 8  # section 4.10: no walk asks more than eight names
_SHORTCUT_LABELS = 7  # section 4.10 step 4: long names jump to their last seven labels
# Relaxed alignment needs a walk per identifier. Only identifiers under the author's
# Organizational Domain can align, so an attacker cannot inflate this with foreign domains; the
# cap only limits how many signatures from one organization we bother to walk for.
MAX_RELAXED_WALKS = 10

_POLICIES = frozenset({"none", "quarantine", "reject"})
_NEXT_LOWER = {"reject": "quarantine", "quarantine": "none", "none": "none"}
_WSP = " \t"
_TAG_NAME = re.compile(r"[A-Za-z]+\Z")
_TAG_VALUE = re.compile(r"[\x20-\x3a\x3c-\x7e]+\Z")  # section 4.8 dmarc-value: printable but ';'
# A light RFC 3986 check: scheme ":" and no characters a URI may never contain. The optional
# "!size" suffix is RFC 7489 syntax that section 4.8 keeps as obsolete-but-parseable.
_REPORT_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s,!\"<>\\^`{|}]+(?:![0-9]+[kmgt]?)?\Z", re.IGNORECASE)
_PCT = re.compile(r"[0-9]{1,3}\Z")


@dataclass(frozen=True)
class RecordError:
    """A TXT string that is not a DMARC record at all (section 4.7 "v" tag rules)."""

    reason: str


@dataclass(frozen=True)
class TreeWalk:
    """One DNS Tree Walk (section 4.10) starting at `start`."""

    start: str
    queried: tuple[str, ...]  # names whose _dmarc TXT was asked, in order
    records: tuple[DmarcRecord, ...]  # one per name holding exactly one DMARC record, longest first
    temperror: str = ""  # the name whose lookup failed; the walk stopped there
    notes: tuple[str, ...] = ()  # e.g. record sets discarded for holding several DMARC records


@dataclass(frozen=True)
class OrgDomain:
    domain: str | None  # None when a DNS temporary error left it undetermined
    walk: TreeWalk
    reason: str = ""


@dataclass(frozen=True)
class PolicyDiscovery:
    """Where the DMARC Policy Record for a domain is (section 4.10.1), if anywhere."""

    record: DmarcRecord | None
    domain: str = ""  # the DMARC Policy Domain: where `record` was found
    org_domain: str = ""  # the Organizational Domain, when discovery had to determine it
    temperror: bool = False
    queried: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    reason: str = ""


# --- record syntax -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)  # the same few records arrive with message after message
def parse_record(txt: str, domain: str = "") -> DmarcRecord | RecordError:
    """Parse one TXT string (character-strings already joined) as a DMARC Policy Record.

    A RecordError means "not a DMARC record": v=DMARC1 is not the first tag (section 4.7). Every
    other problem still yields a record, since section 4.8 says syntax errors fall back to defaults
    or are ignored; what was ignored is listed in `errors`, and invalid p/sp/np are handled as
    section 4.10.1 says (p=none when rua has a valid URI, otherwise `unusable`).
    """
    # Leading white space is outside the grammar; tolerating it means a sloppy record still
    # applies rather than silently turning DMARC off for its domain.
    segments = txt.lstrip(_WSP).split(";")
    name, eq, value = segments[0].partition("=")
    if not eq or name.strip(_WSP).lower() != "v":
        return RecordError("first tag is not v")
    if value.strip(_WSP) != "DMARC1":  # case-sensitive (%s"DMARC1")
        return RecordError(f"v={value.strip(_WSP)!r} is not DMARC1")

    errors: list[str] = []
    tags: dict[str, str] = {}
    duplicated: set[str] = set()
    for segment in segments[1:]:
        seg = segment.strip(_WSP)
        if not seg:
            continue  # the optional trailing ";" (and tolerated empty ones)
        tag, eq, val = seg.partition("=")
        tag, val = tag.strip(_WSP), val.strip(_WSP)
        if not eq or not _TAG_NAME.match(tag):
            errors.append(f"malformed tag {seg!r} ignored")
            continue
        tag = tag.lower()  # ABNF literals are case-insensitive
        if tag == "v":
            errors.append("repeated v tag ignored")
            continue
        if tag in tags:
            duplicated.add(tag)
        tags[tag] = val

    def value_of(tag: str) -> str | None:
        val = tags.get(tag)
        if val is None:
            return None
        if tag in duplicated:
            # RFC 6376 tag-lists forbid duplicates; with two values we cannot know which one the
            # owner meant, so the tag counts as invalid.
            errors.append(f"{tag} given more than once")
            return ""
        if not _TAG_VALUE.match(val):
            errors.append(f"{tag} has characters outside the DMARC value syntax")
            return ""
        return val

    bad_policy: list[str] = []

    def policy_tag(tag: str) -> str | None:
        val = value_of(tag)
        if val is None:
            return None
        if val.lower() in _POLICIES:
            return val.lower()
        bad_policy.append(f"{tag}={val!r}")
        return None

    p, sp, np_ = policy_tag("p"), policy_tag("sp"), policy_tag("np")

    def uris(tag: str) -> list[str]:
        found: list[str] = []
        for uri in (u.strip(_WSP) for u in (value_of(tag) or "").split(",") if u.strip(_WSP)):
            if _REPORT_URI.match(uri):
                found.append(uri)
            else:
                errors.append(f"{tag} URI {uri!r} ignored")
        return found

    rua, ruf = uris("rua"), uris("ruf")

    unusable = ""
    if bad_policy:
        # Section 4.10.1: an invalid p, sp or np means p=none if rua has a valid URI, otherwise
        # no DMARC processing for messages this record governs.
        if rua:
            errors.append(f"invalid {', '.join(bad_policy)}: acting as p=none because rua is valid")
            p, sp, np_ = "none", None, None
        else:
            unusable = f"invalid {', '.join(bad_policy)} and no valid rua URI"

    def choice(tag: str, allowed: tuple[str, ...]) -> str | None:
        val = value_of(tag)
        if val is None:
            return None
        if val.lower() in allowed:
            return val.lower()
        errors.append(f"{tag}={val!r} invalid; default used")
        return None

    adkim = choice("adkim", ("r", "s")) or "r"
    aspf = choice("aspf", ("r", "s")) or "r"
    t_flag = choice("t", ("y", "n")) == "y"
    psd = choice("psd", ("y", "n", "u"))

    pct: int | None = None
    pct_val = value_of("pct")
    if pct_val is not None:
        # RFC 7489 only (section C.5.2 removed it); kept so older records keep their meaning.
        if _PCT.match(pct_val) and int(pct_val) <= 100:
            pct = int(pct_val)
        else:
            errors.append(f"pct={pct_val!r} invalid; ignored")
    fo = value_of("fo")
    if fo is not None:
        # RFC 9991 section 3.1: a colon-separated list of 0, 1, d and s; an unknown option is left
        # out, and a list left empty means the default, 0.
        options = [o.strip(_WSP).lower() for o in fo.split(":")]
        known = [o for o in options if o in ("0", "1", "d", "s")]
        if len(known) != len(options):
            errors.append(f"fo={fo!r} has unknown options; ignored")
        fo = ":".join(dict.fromkeys(known)) or None
    # Appendix A.6: t=y is what pct=0 came to mean in practice.
    testing = t_flag or pct == 0

    return DmarcRecord(
        domain=domain,
        p=p,
        sp=sp,
        np=np_,
        adkim=adkim,
        aspf=aspf,
        pct=pct,
        t=testing,
        psd=psd,
        raw=txt,
        rua=tuple(rua),
        ruf=tuple(ruf),
        fo=fo,
        unusable=unusable,
        errors=tuple(errors),
    )


# --- DNS ---------------------------------------------------------------------------------------------


class _Memo:
    """Resolver wrapper that asks each (name, type) once per evaluation and counts queries."""

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver
        self._cache: dict[tuple[str, str], DnsAnswer] = {}
        self.queries = 0

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        key = (name.lower(), rdtype.upper())
        answer = self._cache.get(key)
        if answer is None:
            self.queries += 1
            try:
                answer = self._resolver.query(name, rdtype)
            except Exception as exc:  # the Resolver contract says never; fail closed if it does
                answer = DnsAnswer(DnsStatus.TEMPERROR, error=f"resolver raised {exc!r}")
            self._cache[key] = answer
        return answer


def _memo(resolver: Resolver) -> _Memo:
    return resolver if isinstance(resolver, _Memo) else _Memo(resolver)


def _records_at(lookup: _Memo, name: str) -> list[DmarcRecord] | None:
    """DMARC records at _dmarc.<name>; None on a DNS temporary error."""
    answer = lookup.query(f"_dmarc.{name}", "TXT")
    if answer.status is DnsStatus.TEMPERROR:
        return None
    if not answer.ok:
        return []
    found: list[DmarcRecord] = []
    for raw in answer.txt_strings():
        # Non-ASCII bytes cannot be part of a valid value; replacement characters make the
        # affected tag invalid instead of hiding the whole record.
        parsed = parse_record(raw.decode("utf-8", errors="replace"), domain=name)
        if isinstance(parsed, DmarcRecord):
            found.append(parsed)
    return found


def walk_targets(domain: str) -> list[str]:
    """Names a walk from `domain` asks about, in order (section 4.10 steps 1-7)."""
    labels = domain.split(".")
    targets = [domain]
    rest = labels[-_SHORTCUT_LABELS:] if len(labels) >= MAX_WALK_QUERIES else labels[1:]
    while rest:
        targets.append(".".join(rest))
        rest = rest[1:]
    return targets


def tree_walk(domain: str, resolver: Resolver) -> TreeWalk:
    """Walk from `domain` toward the root, stopping at a single record with psd=y or psd=n."""
    lookup = _memo(resolver)
    queried: list[str] = []
    records: list[DmarcRecord] = []
    notes: list[str] = []
    for target in walk_targets(domain):
        queried.append(target)
        found = _records_at(lookup, target)
        if found is None:
            return TreeWalk(domain, tuple(queried), tuple(records), temperror=target, notes=tuple(notes))
        if len(found) > 1:
            # Steps 2 and 6: several DMARC records at one name are all discarded; the walk goes on.
            notes.append(f"{len(found)} DMARC records at _dmarc.{target} discarded")
            continue
        if found:
            records.append(found[0])
            if found[0].psd in ("y", "n"):
                break
    return TreeWalk(domain, tuple(queried), tuple(records), notes=tuple(notes))


def _select_org(walk: TreeWalk) -> str:
    """Section 4.10.2 selection, over records longest name first."""
    for record in walk.records:
        if record.psd == "n":
            return record.domain
        if record.psd == "y" and record.domain != walk.start:
            # The Organizational Domain is the name one label below the PSD, toward the start.
            depth = record.domain.count(".") + 2
            return ".".join(walk.start.split(".")[-depth:])
    if walk.records:
        return walk.records[-1].domain  # the record at the name with the fewest labels
    return walk.start


def organizational_domain(domain: str, resolver: Resolver) -> OrgDomain:
    """The Organizational Domain of `domain` by the DNS Tree Walk (section 4.10.2)."""
    walk = tree_walk(domain, resolver)
    if walk.temperror:
        return OrgDomain(None, walk, f"DNS temporary error at _dmarc.{walk.temperror}")
    return OrgDomain(_select_org(walk), walk)


def discover_policy(domain: str, resolver: Resolver) -> PolicyDiscovery:
    """The DMARC Policy Record that applies to Author Domain `domain` (section 4.10.1).

    Preference: the Author Domain's own record, then its Organizational Domain's, then its Public
    Suffix Domain's.
    """
    lookup = _memo(resolver)
    own = _records_at(lookup, domain)
    if own is None:
        return PolicyDiscovery(
            None, temperror=True, queried=(domain,), reason=f"DNS temporary error at _dmarc.{domain}"
        )
    if len(own) == 1:
        record = own[0]
        # A psd=y or psd=n record at the start stops the walk there, making it the
        # Organizational Domain as well; otherwise that needs a walk we have not done yet.
        org = domain if record.psd in ("y", "n") else ""
        return PolicyDiscovery(record, domain, org, queried=(domain,))
    walk = tree_walk(domain, lookup)  # re-asks _dmarc.<domain> from the memo, not the network
    if walk.temperror:
        return PolicyDiscovery(
            None,
            temperror=True,
            queried=walk.queried,
            notes=walk.notes,
            reason=f"DNS temporary error at _dmarc.{walk.temperror}",
        )
    if not walk.records:
        return PolicyDiscovery(None, queried=walk.queried, notes=walk.notes, reason="no DMARC policy record")
    org = _select_org(walk)
    chosen = next((r for r in walk.records if r.domain == org), None)
    if chosen is None:
        # The Organizational Domain publishes nothing; the psd=y record that defined it is the
        # Public Suffix Domain's policy.
        chosen = next(r for r in walk.records if r.psd == "y")
    return PolicyDiscovery(chosen, chosen.domain, org, queried=walk.queried, notes=walk.notes)


# --- evaluation --------------------------------------------------------------------------------------


def evaluate_dmarc(
    author: AuthorResult,
    spf: SpfResults | None,
    dkim: Sequence[DkimResult],
    resolver: Resolver,
    *,
    sample: Callable[[], float] = random.random,
) -> DmarcResult:
    """DMARC result for one message (section 5.3), with the policy that applies to it."""
    if author.error or author.domain is None:
        # Never "none": a From we cannot read must not be a way around DMARC (section 11.5).
        return DmarcResult(
            result="permerror",
            domain=author.domain or "",
            reason=f"no single author domain: {author.error or 'From has no domain'}",
        )
    try:
        domain = normalize_domain(author.domain)
    except ValueError as exc:
        return DmarcResult(result="permerror", domain=author.domain, reason=f"invalid author domain: {exc}")

    lookup = _Memo(resolver)
    notes: list[str] = []
    dkim_ids = _dkim_identifiers(dkim, notes)
    spf_id = _spf_identifier(spf, notes)

    discovery = discover_policy(domain, lookup)
    notes.extend(discovery.notes)
    if discovery.temperror:
        # Even an exact-match pass cannot make DMARC "pass" without knowing a policy record
        # exists (section 4.1), so a failed policy lookup is temperror regardless. The exact
        # matches are still reported, as information.
        exact_dkim = next((d for d in dkim_ids if d == domain), None)
        exact_spf = spf_id == domain
        if exact_dkim or exact_spf:
            notes.append("an identifier matches the author domain exactly, but the policy lookup failed")
        return DmarcResult(
            result="temperror",
            domain=domain,
            dkim_aligned=exact_dkim is not None,
            spf_aligned=exact_spf,
            aligned_by=f"dkim:{exact_dkim}" if exact_dkim else (f"spf:{spf_id}" if exact_spf else ""),
            reason=_join(discovery.reason, notes),
        )
    record = discovery.record
    if record is None:
        return DmarcResult(result="none", domain=domain, reason=_join(discovery.reason, notes))
    if record.unusable:
        return DmarcResult(
            result="none",
            domain=domain,
            record=record,
            reason=_join(f"record at _dmarc.{record.domain} not applied: {record.unusable}", notes),
        )

    align = _Alignment(domain, record, discovery, lookup, notes)
    dkim_by = next((d for d in dkim_ids if align.aligned(d, record.adkim)), None)
    spf_ok = spf_id is not None and align.aligned(spf_id, record.aspf)

    pending = [] if dkim_by is not None or spf_ok else _undetermined_checks(spf, dkim, align, record)
    if dkim_by is not None or spf_ok:
        result = "pass"
    elif align.undetermined:
        result = "temperror"
        notes.append("alignment undetermined: " + ", ".join(align.undetermined))
    elif pending:
        # An aligned identifier whose check could not finish (its DNS timed out) might have
        # passed: "fail" would have the domain owner's reject refuse, for good, mail that a retry
        # authenticates. temperror lets the policy tempfail it instead.
        result = "temperror"
        notes.append("authentication undetermined: " + ", ".join(pending))
    else:
        result = "fail"

    policy, tag, existence_error = _applicable_policy(domain, record, result, lookup)
    if existence_error:
        result = "temperror"
        notes.append(existence_error)

    testing = False
    if record.t:
        # Section 4.7 "t": the Domain Owner expects one level below the published policy.
        testing = True
        lowered = _NEXT_LOWER[policy]
        if lowered != policy and result == "fail":
            notes.append(f"t=y: {policy} lowered to {lowered}")
        policy = lowered
    elif result == "fail" and record.pct is not None and record.pct < 100 and policy != "none":
        # RFC 7489 section 6.6.4: messages outside the sampled percentage get the next-lower
        # policy. Sampled only when it can matter, so a pass costs no randomness.
        if sample() < record.pct / 100:
            notes.append(f"pct={record.pct}: sampled in")
        else:
            testing = True
            notes.append(f"pct={record.pct}: sampled out, {policy} lowered to {_NEXT_LOWER[policy]}")
            policy = _NEXT_LOWER[policy]

    return DmarcResult(
        result=result,
        domain=domain,
        policy=policy,
        applied_tag=tag,
        org_domain=align.org_domain([*dkim_ids, *([spf_id] if spf_id else [])]),
        record=record,
        spf_aligned=spf_ok,
        dkim_aligned=dkim_by is not None,
        aligned_by=f"dkim:{dkim_by}" if dkim_by else (f"spf:{spf_id}" if spf_ok else ""),
        testing=testing,
        reason=_join(f"policy record at _dmarc.{record.domain}", notes),
    )


def _undetermined_checks(
    spf: SpfResults | None, dkim: Sequence[DkimResult], align: _Alignment, record: DmarcRecord
) -> list[str]:
    """The checks that ended in temperror for an identifier that would align, so could have passed."""
    pending: list[str] = []
    if spf is not None and spf.effective.result.lower() == "temperror":
        with contextlib.suppress(ValueError):
            if align.aligned(normalize_domain(spf.effective.domain), record.aspf):
                pending.append(f"spf temperror for {spf.effective.domain}")
    for sig in dkim:
        if sig.result.lower() != "temperror":
            continue
        with contextlib.suppress(ValueError):
            if align.aligned(normalize_domain(sig.domain), record.adkim):
                pending.append(f"dkim temperror for d={sig.domain}")
                break
    return pending


def _dkim_identifiers(dkim: Sequence[DkimResult], notes: list[str]) -> list[str]:
    """Distinct d= of passing signatures (section 4.4.1), normalized, in signature order."""
    ids: list[str] = []
    for sig in dkim:
        if sig.result.lower() != "pass":
            continue
        try:
            d = normalize_domain(sig.domain)
        except ValueError as exc:
            notes.append(f"DKIM d={sig.domain!r} ignored: {exc}")
            continue
        if d not in ids:
            ids.append(d)
    return ids


def _spf_identifier(spf: SpfResults | None, notes: list[str]) -> str | None:
    """The SPF-Authenticated Identifier (sections 3.2.4 and 4.4.2), if SPF passed.

    DMARC uses only the MAIL FROM identity. When MAIL FROM is null, RFC 7208 section 2.4 makes
    that identity postmaster@<HELO name>, so a HELO pass counts then and only then. That is
    exactly `SpfResults.effective`; the separate `helo` result is never used, so a HELO pass
    cannot stand in for a failed non-null MAIL FROM.
    """
    if spf is None or spf.effective.result.lower() != "pass":
        return None
    try:
        domain = normalize_domain(spf.effective.domain)
    except ValueError as exc:
        notes.append(f"SPF domain {spf.effective.domain!r} ignored: {exc}")
        return None
    if spf.effective.identity is SpfIdentity.HELO:
        notes.append("SPF identity is the HELO name (null MAIL FROM)")
    return domain


class _Alignment:
    """Identifier Alignment checks (section 4.10.2) sharing one memo of walks."""

    def __init__(
        self, author: str, record: DmarcRecord, discovery: PolicyDiscovery, lookup: _Memo, notes: list[str]
    ) -> None:
        self._author = author
        self._record = record
        self._lookup = lookup
        self._notes = notes
        self._orgs: dict[str, str | None] = {}
        self._walks = 0
        self.undetermined: list[str] = []
        if discovery.org_domain:
            self._orgs[author] = discovery.org_domain

    def _org_of(self, name: str) -> str | None:
        if name not in self._orgs:
            self._orgs[name] = organizational_domain(name, self._lookup).domain
        return self._orgs[name]

    def org_domain(self, identifiers: Sequence[str]) -> str:
        """The author's Organizational Domain for the result, computed if not yet known."""
        if self._author in self._orgs:
            return self._orgs[self._author] or ""
        if (
            self._record.domain == self._author
            and identifiers
            and all(i == self._author for i in identifiers)
        ):
            # Section 4.10.2 note: when the identifiers all equal the author domain and it has
            # its own record, that common domain is treated as the Organizational Domain.
            return self._author
        # Otherwise only the report field needs it (strict alignment never walks); a DNS error
        # here cannot change the result, so it just leaves the field empty.
        return self._org_of(self._author) or ""

    def aligned(self, identifier: str, mode: str) -> bool:
        if identifier == self._author:
            return True
        if mode == "s":
            return False
        author_org = self._org_of(self._author)
        if author_org is None:
            self.undetermined.append(f"{identifier} (author's Organizational Domain: DNS temporary error)")
            return False
        # An Organizational Domain is always the name itself or one of its ancestors, so only an
        # identifier at or under the author's can share it; others need no DNS at all.
        if identifier != author_org and not identifier.endswith("." + author_org):
            return False
        if identifier not in self._orgs:
            if self._walks >= MAX_RELAXED_WALKS:
                self._notes.append(f"{identifier} not checked: more than {MAX_RELAXED_WALKS} walks")
                return False
            self._walks += 1
        org = self._org_of(identifier)
        if org is None:
            self.undetermined.append(f"{identifier} (DNS temporary error)")
            return False
        return org == author_org


def _applicable_policy(domain: str, record: DmarcRecord, result: str, lookup: _Memo) -> tuple[str, str, str]:
    """(policy, tag it came from, DNS error text) per section 4.10.1; p missing means none."""
    if record.domain == domain:
        return record.p or "none", "p", ""
    # The author is a subdomain of the policy domain: sp, or np when the author does not exist,
    # each falling back (np -> sp -> p, section 4.7).
    policy, tag = (record.sp, "sp") if record.sp else (record.p or "none", "p")
    if record.np is None or result != "fail":
        # Existence only matters when a distinct np could apply to a failing message.
        return policy, tag, ""
    # Section 3.2.13 and Appendix A.4: non-existent means NXDOMAIN (RFC 8020), whatever the
    # type asked; any other answer, including NODATA, means the name exists.
    answer = lookup.query(domain, "A")
    if answer.status is DnsStatus.TEMPERROR:
        return policy, tag, f"existence of {domain} unknown (DNS temporary error)"
    if answer.status is DnsStatus.NXDOMAIN:
        return record.np, "np", ""
    return policy, tag, ""


def _join(head: str, notes: list[str]) -> str:
    return "; ".join([head, *notes]) if head else "; ".join(notes)
