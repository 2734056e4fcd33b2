"""The overarching properties, over the whole of `evaluate`.

1. Every input ends in a verdict: no exception, no fail-safe verdict saying the evaluation itself
   broke, no check that swallowed an exception, every result from the RFC vocabularies.
2. A From naming the p=reject victim that no valid signature of the victim covers is never
   accepted with dmarc=pass, however the From is written and whoever else signed the message.

The inputs are the campaign's (`benchmarks/fuzz.py`): its seed messages and its mutations, chosen
and ordered by Hypothesis, so a failure shrinks to the fewest mutations that still break it.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import random

from hypothesis import given
from hypothesis import strategies as st

from authmilter.core.decision import Policy
from authmilter.core.decision.decide import decide
from authmilter.core.decision.facts import facts_for
from authmilter.core.evaluate import EvalSettings, evaluate
from authmilter.core.model import Action, Header, Stage, Transaction, Verdict
from authmilter.files.policy import load_policy
from benchmarks.fuzz import MUTATIONS, Mutator
from tests import fuzzworld as world
from tests.mailfactory import ed25519_key, make_message, rsa_key, sign
from tests.propertysupport import ROOT, budget, charset, domain

KEYS = world.WorldKeys(rsa_key(1024, 11), ed25519_key(11), rsa_key(1024, 12), ed25519_key(12))


@functools.cache
def policy() -> Policy:
    return load_policy([ROOT / "policies" / "default.toml"])


@functools.cache
def seeds() -> list[tuple[str, bytes]]:
    return sorted(world.seed_messages(KEYS).items())


@functools.cache
def dns() -> world.MemoResolver:
    return world.MemoResolver(world.world_resolver(KEYS))


def mutated(pick: int, mutations: list[str], rng_seed: int) -> bytes:
    """Seed message number `pick`, put through `mutations` in order."""
    _, message = seeds()[pick % len(seeds())]
    mutator = Mutator(random.Random(rng_seed), seeds())
    for mutation in mutations:
        message = MUTATIONS[mutation](mutator, message)
    return message


def judged(tx: Transaction) -> Verdict:
    verdict = evaluate(tx, dns(), EvalSettings(), world.AUTHSERV_ID, policy())
    assert not world.internal_failure(verdict), verdict.errors
    assert world.vocabulary_problems(verdict) == [], verdict
    assert world.swallowed_errors(verdict) == [], verdict
    assert world.rule_violation(tx, verdict, KEYS) is None, world.rule_violation(tx, verdict, KEYS)
    return verdict


@budget(400)
@given(
    st.integers(0, 10_000),
    st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=1, max_size=3),
    st.integers(0, 2**32),
    st.sampled_from(sorted(world.ENVELOPES)),
)
def test_mutated_messages_end_in_a_sound_verdict(
    pick: int, mutations: list[str], rng_seed: int, envelope: str
) -> None:
    judged(world.transaction(mutated(pick, mutations, rng_seed), world.ENVELOPES[envelope]))


@budget(150)
@given(st.binary(max_size=600), st.sampled_from(sorted(world.ENVELOPES)))
def test_arbitrary_bytes_end_in_a_sound_verdict(raw: bytes, envelope: str) -> None:
    judged(world.transaction(raw, world.ENVELOPES[envelope]))


@budget(150)
@given(
    st.lists(
        st.tuples(
            st.binary(min_size=1, max_size=30).filter(lambda n: b"\x00" not in n and b":" not in n),
            st.binary(max_size=100),
        ),
        max_size=8,
    ),
    st.binary(max_size=200),
)
def test_arbitrary_milter_fields_end_in_a_sound_verdict(
    fields: list[tuple[bytes, bytes]], body: bytes
) -> None:
    # What the milter could hand over: any name the MTA passes, any value (no NUL: C strings).
    headers = tuple(Header(name, value.replace(b"\x00", b"")) for name, value in fields)
    env = world.ENVELOPES["attacker"]
    judged(Transaction(env.client_ip, env.helo, env.mail_from, (f"u@{world.RCPT_DOMAIN}",), headers, body))


VICTIM_ADDRESSES = st.sampled_from(
    [
        f"ceo@{world.VICTIM}",
        f"ceo@{world.VICTIM.upper()}",
        f"ceo@{world.VICTIM}.",
        f"ceo@sub.{world.VICTIM}",
        f'"ceo"@{world.VICTIM}',
        f"ceo@{world.VICTIM} ",
        "ceo@\uff56ictim.example",
        "ceo@victim\u3002example",
    ]
)
ATTACKER_ADDRESSES = st.sampled_from(
    [f"m@{world.ATTACKER}", f"m@mail.{world.ATTACKER}", f"<m@{world.ATTACKER}>"]
)


def _encoded(cs: str, text: str, b: bool) -> str:
    data = text.encode()
    return (
        f"=?{cs}?B?{base64.b64encode(data).decode()}?="
        if b
        else f"=?{cs}?Q?" + "".join(f"={c:02X}" for c in data) + "?="
    )


FROM_PARTS = st.one_of(
    VICTIM_ADDRESSES,
    ATTACKER_ADDRESSES,
    VICTIM_ADDRESSES.map(lambda a: f"<{a}>"),
    VICTIM_ADDRESSES.map(lambda a: f'"{a}"'),
    VICTIM_ADDRESSES.map(lambda a: f"({a})"),
    st.builds(_encoded, charset, VICTIM_ADDRESSES | VICTIM_ADDRESSES.map(lambda a: f"<{a}>"), st.booleans()),
    st.sampled_from(
        [
            " ",
            "\t",
            "\r\n ",
            ",",
            ";",
            ":",
            "<",
            ">",
            "@",
            ".",
            "\\",
            '"',
            "(",
            ")",
            "CEO",
            "=?",
            "?=",
            "\u202e",
            "\u200b",
            "@victim.example:",
            "group:",
            "\x00",
        ]
    ),
    domain.map(lambda d: f"x@{d}"),
)


@budget(250)
@given(
    st.lists(FROM_PARTS, min_size=1, max_size=8).map("".join),
    st.sampled_from(["attacker-ed", "attacker-rsa", "unsigned"]),
    st.sampled_from([b"From", b"From ", b"from", b"FROM\t"]),
    st.booleans(),
    st.sampled_from(sorted(world.ENVELOPES)),
)
def test_a_spoofed_from_of_the_victim_is_never_accepted_with_dmarc_pass(
    from_value: str, signer: str, field_name: bytes, second_from: bool, envelope: str
) -> None:
    message = make_message(from_="placeholder@placeholder.example")
    head, _, body = message.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.startswith(b"From:")]
    froms = [field_name + b": " + from_value.encode("utf-8", "surrogatepass")]
    if second_from:
        froms.append(b"From: Mallory <m@" + world.ATTACKER.encode() + b">")
    message = b"\r\n".join([*froms, *lines]) + b"\r\n\r\n" + body
    if signer != "unsigned":
        # The attacker signs whatever From it likes, with its own valid key.
        key, selector = (
            (KEYS.attacker_ed, world.ED_SELECTOR)
            if signer == "attacker-ed"
            else (KEYS.attacker_rsa, world.RSA_SELECTOR)
        )
        # dkimpy refuses to sign some of these; the message goes unsigned then.
        with contextlib.suppress(Exception):
            message = sign(message, domain=world.ATTACKER, selector=selector, key=key)
    tx = world.transaction(message, world.ENVELOPES[envelope])
    verdict = judged(tx)
    assert world.reader_differential(tx, verdict) is None, (world.reader_differential(tx, verdict), message)
    dmarc = verdict.results.dmarc if verdict.results else None
    if dmarc is not None and world.is_victim(dmarc.domain):
        assert dmarc.result != "pass" and verdict.action is not Action.ACCEPT, verdict


@functools.cache
def every_policy() -> list[Policy]:
    examples = sorted((ROOT / "policies" / "examples").glob("*.toml"))
    return [policy()] + [load_policy([path]) for path in examples]


@budget(150)
@given(
    st.integers(0, 10_000),
    st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=2),
    st.integers(0, 2**32),
    st.sampled_from(sorted(world.ENVELOPES)),
)
def test_an_untraced_walk_decides_as_the_traced_one(
    pick: int, mutations: list[str], rng_seed: int, envelope: str
) -> None:
    # The early walks skip the trace; what they decide must not depend on it, at any stage.
    tx = world.transaction(mutated(pick, mutations, rng_seed), world.ENVELOPES[envelope])
    verdict = evaluate(tx, dns(), EvalSettings(), world.AUTHSERV_ID, policy(), sample=lambda: 0.5)
    results = verdict.results
    # The milter's end of message walks untraced too: the same verdict, without the trace.
    quiet = evaluate(tx, dns(), EvalSettings(), world.AUTHSERV_ID, policy(), sample=lambda: 0.5, trace=False)
    if verdict.decision is not None:
        verdict = dataclasses.replace(verdict, decision=dataclasses.replace(verdict.decision, trace=()))
    assert quiet == verdict
    for stage in Stage:
        facts = facts_for(tx, results if stage is Stage.EOM else None, stage,
                          spf=results.spf, iprev=results.iprev, helo=results.helo)
        for rules in every_policy():
            traced, untraced = decide(rules, facts), decide(rules, facts, trace=False)
            assert dataclasses.replace(traced, trace=()) == untraced
