"""Properties of DKIM and ARC verification over signatures whose tag lists are fuzzed.

Whatever a DKIM-Signature or an ARC set says, verification returns results from the RFC
vocabulary, never raises, never reports an exception of its own as the reason, and never passes
when no key in DNS could have made the signature.
"""

from __future__ import annotations

import functools
import re

from hypothesis import given
from hypothesis import strategies as st

from authmilter.core.checks.arc import verify_arc
from authmilter.core.checks.dkim import parse_message, verify_dkim
from authmilter.core.dnsapi import Resolver
from tests import fuzzworld as world
from tests.mailfactory import ed25519_key, rsa_key
from tests.propertysupport import budget
from tests.zoneresolver import ZoneResolver

KEYS = world.WorldKeys(rsa_key(1024, 11), ed25519_key(11), rsa_key(1024, 12), ed25519_key(12))
KEY_NAMES = [
    f"{sel}._domainkey.{d}"
    for d in (world.VICTIM, world.ATTACKER)
    for sel in (world.RSA_SELECTOR, world.ED_SELECTOR)
]


@functools.cache
def seeds() -> dict[str, bytes]:
    return world.seed_messages(KEYS)


@functools.cache
def resolver(kind: str) -> ZoneResolver:
    """The world as it is ("right"), with every key replaced by one nobody signed with ("wrong"),
    or with no key records at all ("none")."""
    if kind == "right":
        return world.world_resolver(KEYS)
    if kind == "wrong":
        others = {"rsa": rsa_key(1024, 13).txt().encode(), "ed25519": ed25519_key(13).txt().encode()}
        return world.world_resolver(
            KEYS,
            {
                name: [others["rsa" if world.RSA_SELECTOR in name.split(".")[0] else "ed25519"]]
                for name in KEY_NAMES
            },
        )
    return world.world_resolver(KEYS, {name: [] for name in KEY_NAMES})


TAG_NAMES = st.sampled_from(
    [
        b"v",
        b"a",
        b"b",
        b"bh",
        b"c",
        b"d",
        b"h",
        b"i",
        b"l",
        b"q",
        b"s",
        b"t",
        b"x",
        b"z",
        b"cv",
        b"V",
        b"D",
        b"xi",
        b"",
        b"1",
        b"a b",
    ]
)
TAG_VALUES = st.binary(max_size=40) | st.sampled_from(
    [
        world.VICTIM.encode(),
        world.ATTACKER.encode(),
        b"",
        b"rsa-sha1",
        b"rsa-sha256",
        b"ed25519-sha256",
        b"relaxed/relaxed",
        b"simple",
        b"relaxed/bogus",
        b"from",
        b"from:from",
        b"to:subject",
        b"0",
        b"1",
        b"99999999999999",
        b"999999999999999999999",
        b"-1",
        b"AAAA",
        b"====",
        b"x@" + world.VICTIM.encode(),
        b"@sub." + world.VICTIM.encode(),
        b"dns/txt",
        b"http",
        b"none",
        b"pass",
        b"fail",
        b"Pass",
        b"51",
        b"01",
        b"s1",
        b"e1",
        b"a." * 130,
        b"\r\n ",
        b"\r\n\r\n ",
        b"\x00",
        b"\xff",
        b"QUJD" * 200,
        b"i=1",
    ]
)
TAG_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("drop"), st.integers(0, 15)),
        st.tuples(st.just("dup"), st.integers(0, 15)),
        st.tuples(st.just("set"), st.integers(0, 15), TAG_VALUES),
        st.tuples(st.just("add"), TAG_NAMES, TAG_VALUES),
        st.tuples(st.just("rename"), st.integers(0, 15), TAG_NAMES),
        st.tuples(
            st.just("space"), st.integers(0, 15), st.sampled_from([b" ", b"\t", b"\r\n ", b"\r\n\t", b" ;"])
        ),
    ),
    min_size=1,
    max_size=4,
)


def mutate_tags(value: bytes, ops: list[tuple[object, ...]]) -> bytes:
    tags = value.split(b";")
    for op in ops:
        kind, rest = op[0], op[1:]
        at = rest[0] % len(tags) if tags and isinstance(rest[0], int) else 0
        if kind == "drop" and tags:
            del tags[at]
        elif kind == "dup" and tags:
            tags.insert(at, tags[at])
        elif kind == "set" and tags:
            assert isinstance(rest[1], bytes)
            tags[at] = tags[at].split(b"=", 1)[0] + b"=" + rest[1]
        elif kind == "add":
            assert isinstance(rest[0], bytes) and isinstance(rest[1], bytes)
            tags.append(b" " + rest[0] + b"=" + rest[1])
        elif kind == "rename" and tags:
            assert isinstance(rest[1], bytes)
            _, eq, val = tags[at].partition(b"=")
            tags[at] = rest[1] + eq + val
        elif kind == "space" and tags:
            assert isinstance(rest[1], bytes)
            tags[at] = tags[at].replace(b"=", rest[1] + b"=" + rest[1], 1)
    return b";".join(tags)


def mutate_field(message: bytes, name: bytes, index: int, ops: list[tuple[object, ...]]) -> bytes:
    """`message` with the tag list of its index-th field called `name` put through `ops`."""
    head, sep, body = message.partition(b"\r\n\r\n")
    fields = re.split(rb"\r\n(?![ \t])", head)
    hits = [i for i, f in enumerate(fields) if f.split(b":", 1)[0].lower() == name.lower()]
    assert hits, name
    i = hits[index % len(hits)]
    field_name, _, value = fields[i].partition(b":")
    fields[i] = field_name + b":" + mutate_tags(value, ops)
    return b"\r\n".join(fields) + sep + body


def check_dkim(message: bytes, dns: Resolver) -> list[str]:
    results = verify_dkim(message, dns)
    assert isinstance(results, tuple)
    assert len(results) == min(len(parse_message(message).sig_positions), 51)
    for r in results:
        assert r.result in world.DKIM_RESULTS, r
        assert not r.reason.startswith("internal error"), r
    return [r.result for r in results]


SIGNED = ["victim-rsa-relaxed", "victim-ed-simple", "victim-two-signatures", "victim-mime", "victim-arc"]


@budget(150)
@given(st.sampled_from(SIGNED), st.integers(0, 1), TAG_OPS, st.sampled_from(["right", "wrong", "none"]))
def test_fuzzed_dkim_signature_gives_results_and_passes_only_with_the_key(
    seed: str, which: int, ops: list[tuple[object, ...]], keys: str
) -> None:
    message = mutate_field(seeds()[seed], b"DKIM-Signature", which, ops)
    results = check_dkim(message, resolver(keys))
    if keys != "right":
        assert "pass" not in results, message


@budget(100)
@given(
    st.sampled_from(SIGNED),
    st.lists(
        st.binary(max_size=300)
        | st.lists(st.tuples(TAG_NAMES, TAG_VALUES), max_size=12).map(
            lambda tags: b";".join(b" " + n + b"=" + v for n, v in tags)
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_arbitrary_dkim_signature_fields_never_pass(seed: str, values: list[bytes]) -> None:
    # No signer made these: whatever they claim, nothing can verify them, even with every key there.
    extra = b"".join(b"DKIM-Signature:" + v.replace(b"\r\n", b"\r\n ") + b"\r\n" for v in values)
    message = extra + seeds()[seed]
    results = check_dkim(message, resolver("right"))
    assert results[len(values) :] == ["pass"] * (len(results) - len(values)), results
    assert "pass" not in results[: len(values)], message


@budget(60)
@given(st.sampled_from(SIGNED), TAG_OPS, st.integers(0, 1))
def test_fuzzed_key_records_pass_only_with_the_real_key(
    seed: str, ops: list[tuple[object, ...]], which: int
) -> None:
    message = seeds()[seed]
    name = f"{world.RSA_SELECTOR}._domainkey.{world.VICTIM}"
    record = mutate_tags(KEYS.victim_rsa.txt().encode(), ops)
    extra = [b"v=DKIM1; p=" + rsa_key(1024, 13).public_b64.encode()] if which else []
    dns = world.world_resolver(KEYS, {name: [record, *extra]})
    results = verify_dkim(message, dns)
    for r in results:
        assert r.result in world.DKIM_RESULTS and not r.reason.startswith("internal error"), r
        if r.result == "pass" and r.selector == world.RSA_SELECTOR:
            # Only a record still holding the signer's public key can make it pass.
            p = re.search(rb"(?:^|;)\s*p\s*=([^;]*)", record)
            assert p is not None and re.sub(rb"\s", b"", p.group(1)) == KEYS.victim_rsa.public_b64.encode(), (
                record
            )


ARC_FIELDS = [b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results"]


@budget(150)
@given(
    st.sampled_from(["attacker-arc", "victim-arc", "spoof-arc"]),
    st.sampled_from(ARC_FIELDS),
    TAG_OPS,
    st.sampled_from(["right", "wrong", "none"]),
)
def test_fuzzed_arc_set_gives_a_result_and_passes_only_with_the_key(
    seed: str, field_name: bytes, ops: list[tuple[object, ...]], keys: str
) -> None:
    message = mutate_field(seeds()[seed], field_name, 0, ops)
    result = verify_arc(message, resolver(keys))
    assert result.result in world.ARC_RESULTS, result
    assert not result.reason.startswith("internal error"), result
    assert 0 <= result.instances <= 50
    if keys != "right":
        assert result.result != "pass", message
    if result.result == "pass":
        assert result.oldest_pass is not None and len(result.hops) == result.instances


@budget(60)
@given(st.lists(st.tuples(st.sampled_from(ARC_FIELDS), st.binary(max_size=200)), min_size=1, max_size=6))
def test_arbitrary_arc_fields_never_pass(fields: list[tuple[bytes, bytes]]) -> None:
    extra = b"".join(name + b":" + value.replace(b"\r\n", b"\r\n ") + b"\r\n" for name, value in fields)
    result = verify_arc(extra + seeds()["attacker-rsa"], resolver("right"))
    # The fields are found (their names open a line), and no sealer made them: the chain fails.
    assert result.result == "fail" and not result.reason.startswith("internal error"), result
