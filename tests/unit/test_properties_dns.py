"""Properties of DMARC and SPF evaluation over fuzzed DNS records, served by the zone resolver.

Whatever TXT records a domain publishes, `evaluate` ends in a verdict whose results come from the
RFC vocabularies, with no exception caught along the way; and no record the attacker can publish
makes an unsigned spoof of the p=reject victim pass DMARC.
"""

from __future__ import annotations

import functools

from hypothesis import given
from hypothesis import strategies as st

from authmilter.core.checks.dmarc import RecordError, parse_record
from authmilter.core.checks.spf import RESULTS, check_spf
from authmilter.core.decision import Policy
from authmilter.core.evaluate import EvalSettings, evaluate
from authmilter.core.model import Action, DmarcRecord, Verdict
from authmilter.files.policy import load_policy
from tests import fuzzworld as world
from tests.mailfactory import ed25519_key, rsa_key
from tests.propertysupport import ROOT, budget
from tests.zoneresolver import ZoneResolver

KEYS = world.WorldKeys(rsa_key(1024, 11), ed25519_key(11), rsa_key(1024, 12), ed25519_key(12))


@functools.cache
def policy() -> Policy:
    return load_policy([ROOT / "policies" / "default.toml"])


@functools.cache
def seeds() -> dict[str, bytes]:
    return world.seed_messages(KEYS)


def run(seed: str, envelope: str, dns: ZoneResolver) -> Verdict:
    verdict = evaluate(
        world.transaction(seeds()[seed], world.ENVELOPES[envelope]),
        dns,
        EvalSettings(),
        world.AUTHSERV_ID,
        policy(),
    )
    assert not world.internal_failure(verdict), verdict.errors
    assert world.vocabulary_problems(verdict) == [], verdict
    assert world.swallowed_errors(verdict) == [], verdict
    return verdict


# --- DMARC records -------------------------------------------------------------------------------

DMARC_TAG = st.one_of(
    st.sampled_from(
        [
            "p",
            "sp",
            "np",
            "pct",
            "adkim",
            "aspf",
            "rua",
            "ruf",
            "psd",
            "t",
            "fo",
            "ri",
            "rf",
            "v",
            "P",
            "Sp",
            "",
        ]
    ),
    st.text(max_size=6),
)
DMARC_VALUE = st.one_of(
    st.sampled_from(
        [
            "reject",
            "quarantine",
            "none",
            "REJECT",
            "rejected",
            "",
            "r",
            "s",
            "y",
            "n",
            "u",
            "0",
            "100",
            "101",
            "-1",
            "50",
            "007",
            "mailto:a@victim.example",
            "mailto:a@b!10m",
            "bogus",
            "DMARC1",
            "mailto:a@b,mailto:c@d",
            "http://x",
            "\x00",
            "\u00e9",
        ]
    ),
    st.text(max_size=12),
)
DMARC_HEAD = st.sampled_from(
    ["v=DMARC1", "v=DMARC1", " v=DMARC1", "v = DMARC1", "v=dmarc1", "V=DMARC1", "v=DMARC2", "", "p=reject"]
)
DMARC_RECORD = st.one_of(
    st.builds(
        lambda head, tags, sep: sep.join([head, *(f"{n}={v}" for n, v in tags)]),
        DMARC_HEAD,
        st.lists(st.tuples(DMARC_TAG, DMARC_VALUE), max_size=8),
        st.sampled_from(["; ", ";", " ; ", ";\t"]),
    ).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=120),
)


@budget(400)
@given(st.text(max_size=200) | DMARC_RECORD.map(lambda b: b.decode("utf-8", "replace")))
def test_parse_record_never_raises_and_gives_known_values(text: str) -> None:
    record = parse_record(text, "victim.example")
    if isinstance(record, RecordError):
        assert record.reason
        return
    assert isinstance(record, DmarcRecord)
    for value in (record.p, record.sp, record.np):
        assert value in (None, "none", "quarantine", "reject")
    assert record.adkim in ("r", "s") and record.aspf in ("r", "s")
    assert record.pct is None or 0 <= record.pct <= 100
    assert record.psd in (None, "y", "n", "u")
    if record.unusable:
        assert record.p is None or record.sp is None or record.np is None or record.rua == ()


@budget(120)
@given(
    st.lists(DMARC_RECORD, min_size=1, max_size=2),
    st.sampled_from(["spoof-unsigned", "spoof-attacker-signed", "spoof-arc", "victim-rsa-relaxed"]),
    st.sampled_from(list(world.ENVELOPES)),
)
def test_any_dmarc_record_of_the_victim_ends_in_a_sound_verdict(
    records: list[bytes], seed: str, envelope: str
) -> None:
    verdict = run(seed, envelope, world.world_resolver(KEYS, {f"_dmarc.{world.VICTIM}": records}))
    assert verdict.results is not None and verdict.results.dmarc is not None
    dmarc = verdict.results.dmarc
    if seed.startswith("spoof"):
        # Nothing aligned with the victim passed: no record can turn that into a pass.
        assert dmarc.result in ("fail", "none"), dmarc
        if dmarc.result == "fail" and dmarc.policy == "reject":
            assert verdict.action is Action.REJECT
    else:
        assert dmarc.result in ("pass", "none"), dmarc


@budget(80)
@given(DMARC_RECORD, DMARC_RECORD, st.sampled_from(list(world.ENVELOPES)))
def test_attacker_dmarc_records_never_help_a_spoof(own: bytes, sub: bytes, envelope: str) -> None:
    dns = world.world_resolver(
        KEYS, {f"_dmarc.{world.ATTACKER}": [own], f"_dmarc.mail.{world.ATTACKER}": [sub]}
    )
    verdict = run("spoof-attacker-signed", envelope, dns)
    assert verdict.results is not None and verdict.results.dmarc is not None
    assert verdict.results.dmarc.result == "fail" and verdict.action is Action.REJECT


# --- SPF records ---------------------------------------------------------------------------------

NAMES = [
    world.ATTACKER,
    f"mail.{world.ATTACKER}",
    f"inc1.{world.ATTACKER}",
    f"inc2.{world.ATTACKER}",
    world.VICTIM,
    "nowhere.example",
    "%{d}",
    "%{i}.%{d}",
    "%{ir}.%{v}._spf.%{d2}",
    "%{l}.%{o}",
    "%{h}",
    "%{s}",
    "%{p}",
    "%{c}",
    "%{xyz}",
    "%%%_%-",
    "%{d9r}",
    "%{l1r+-}",
    "a..b",
    "-x-.example",
    ".",
]
MECHANISM = st.one_of(
    st.builds(
        lambda q, m: q + m,
        st.sampled_from(["", "+", "-", "~", "?"]),
        st.one_of(
            st.sampled_from(["all", "a", "mx", "ptr", "A", "MX", "all:x", "a/24", "mx//64", "a/33", "a/0"]),
            st.builds(
                lambda k, n: f"{k}:{n}",
                st.sampled_from(["a", "mx", "ptr", "include", "exists"]),
                st.sampled_from(NAMES),
            ),
            st.builds(
                lambda a, b, c: f"ip4:203.0.{a}.{b}/{c}",
                st.integers(0, 300),
                st.integers(0, 255),
                st.integers(0, 40),
            ),
            st.builds(lambda c: f"ip6:2001:db8::/{c}", st.integers(0, 140)),
            st.sampled_from(["ip4:203.0.113.7", "ip6:::ffff:203.0.113.7", "ip4:", "ip6:zz", "ip4:0.0.0.0/0"]),
        ),
    ),
    st.builds(
        lambda m, n: f"{m}={n}",
        st.sampled_from(["redirect", "exp", "moo", "REDIRECT", "redirect", ""]),
        st.sampled_from(NAMES),
    ),
    st.text(max_size=10),
)
SPF_RECORD = st.one_of(
    st.builds(
        lambda head, terms: " ".join([head, *terms]),
        st.sampled_from(["v=spf1", "v=spf1", "V=SPF1", "v=spf1 ", "v=spf10", "spf1", "v=spf1\t"]),
        st.lists(MECHANISM, max_size=10),
    ).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=80),
)


@budget(150)
@given(
    st.dictionaries(
        st.sampled_from(
            [world.ATTACKER, f"mail.{world.ATTACKER}", f"inc1.{world.ATTACKER}", f"inc2.{world.ATTACKER}"]
        ),
        st.lists(SPF_RECORD, min_size=1, max_size=2),
        min_size=1,
    ),
    st.sampled_from(list(world.ENVELOPES)),
    st.sampled_from(["spoof-unsigned", "attacker-rsa"]),
)
def test_any_spf_record_of_the_attacker_ends_in_a_sound_verdict(
    records: dict[str, list[bytes]], envelope: str, seed: str
) -> None:
    dns = world.world_resolver(KEYS, records)
    env = world.ENVELOPES[envelope]
    spf = check_spf(env.client_ip, env.helo, env.mail_from, dns)
    for result in (spf.effective, spf.helo):
        if result is not None:
            assert result.result in RESULTS
            assert len(result.reason) <= 200 and all(" " <= c <= "~" for c in result.reason), result
    verdict = run(seed, envelope, dns)
    assert verdict.results is not None and verdict.results.dmarc is not None
    if seed == "spoof-unsigned":
        # The attacker's SPF says nothing about the victim's From.
        assert verdict.results.dmarc.result == "fail" and verdict.action is Action.REJECT


@budget(60)
@given(st.lists(SPF_RECORD, min_size=1, max_size=2))
def test_any_spf_record_of_the_victim_gives_a_result(records: list[bytes]) -> None:
    dns = world.world_resolver(KEYS, {world.VICTIM: records})
    verdict = run("spoof-unsigned", "victim-spoof", dns)
    assert verdict.results is not None and verdict.results.spf is not None
    dmarc = verdict.results.dmarc
    assert dmarc is not None
    # The victim's own record may authorize the attacker's address; then, and only then, it passes.
    if dmarc.result == "pass":
        assert verdict.results.spf.effective.result == "pass" and dmarc.aligned_by == f"spf:{world.VICTIM}"
