"""Tests for authmilter.core.checks.arc.verify_arc (RFC 8617 section 5.2).

Chains are sealed here with dkimpy's `dkim.arc_sign`, with keys generated once per module and
served by an in-memory `ZoneResolver`. Sets that dkimpy's sealer will not write (an ARC-Seal with
h=, cv=fail, a garbage AAR, odd tag spacing) are made by `craft_set`, which signs with dkimpy's
`gen_header` exactly as `ARC.sign` does, so the only thing wrong with them is what a test puts in.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.canonicalization import CanonicalizationPolicy
from dkim.crypto import parse_pem_private_key

from authmilter.core.checks.arc import MAX_INSTANCES, verify_arc
from authmilter.core.dnsapi import DnsAnswer
from authmilter.core.model import ArcHop
from tests.zoneresolver import ZoneResolver, zone_text

BASE = (
    b"From: Alice <alice@origin.example>\r\n"
    b"To: list@lists.example\r\n"
    b"Subject: the quarterly numbers\r\n"
    b"Date: Tue, 3 Jan 2017 12:22:54 -0800\r\n"
    b"Message-ID: <1@origin.example>\r\n"
    b"\r\n"
    b"Hello,\r\nthe numbers are in.\r\n"
)
SIGNED = [b"from", b"to", b"subject", b"date", b"message-id"]
RESULTS = (
    b"spf=pass smtp.mailfrom=alice@origin.example;\r\n dkim=pass header.d=origin.example;\r\n"
    b" dmarc=pass header.from=origin.example"
)
RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")


@dataclass(frozen=True)
class Sealer:
    domain: bytes
    selector: bytes
    pem: bytes
    record: str

    @property
    def key_name(self) -> str:
        return f"{self.selector.decode()}._domainkey.{self.domain.decode()}"


def _sealer(domain: str, selector: str, bits: int) -> Sealer:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
    return Sealer(domain.encode(), selector.encode(), pem, record)


@pytest.fixture(scope="module")
def lists() -> Sealer:
    return _sealer("lists.example", "s2048", 2048)


@pytest.fixture(scope="module")
def fwd() -> Sealer:
    return _sealer("fwd.example", "arc1", 1024)


def _txt(text: str) -> str:
    return "TXT " + " ".join(f'"{text[i : i + 200]}"' for i in range(0, len(text), 200))


def serve(*sealers: Sealer) -> ZoneResolver:
    resolver = ZoneResolver()
    for s in sealers:
        resolver.add_zone(zone_text(s.domain.decode(), {s.key_name + ".": _txt(s.record)}))
    return resolver


@pytest.fixture
def dns(lists: Sealer, fwd: Sealer) -> ZoneResolver:
    return serve(lists, fwd)


def seal(message: bytes, sealer: Sealer, cv: str | None = None, results: bytes = RESULTS) -> bytes:
    """One hop with dkimpy's sealer: its Authentication-Results (arc=cv when there is a chain), then a set.

    Earlier hops' Authentication-Results are dropped first, as a receiving MTA drops the ones that
    claim its own authserv-id: dkimpy's sealer reads every A-R of its authserv-id, and two arc=
    results make it seal cv=fail.
    """
    if b"\r\n\r\n" in message:
        kept = [f for f in fields(message) if not f.lower().startswith(b"authentication-results:")]
        message = rebuild(kept, message)
    ar = b"Authentication-Results: " + sealer.domain + b";\r\n " + results
    if cv is not None:
        ar += b";\r\n arc=" + cv.encode()
    message = ar + b"\r\n" + message
    new_set = dkim.arc_sign(
        message, sealer.selector, sealer.domain, sealer.pem, sealer.domain, include_headers=SIGNED
    )
    assert new_set, "dkimpy refused to seal"
    return b"".join(new_set) + message


def craft_set(
    message: bytes,
    sealer: Sealer,
    instance: int,
    cv: bytes,
    aar_payload: bytes = b"lists.example; dmarc=pass header.from=origin.example",
    *,
    instance_text: bytes | None = None,
    seal_extra: Sequence[tuple[bytes, bytes]] = (),
    ams_extra: Sequence[tuple[bytes, bytes]] = (),
    ams_c: bytes = b"relaxed/relaxed",
    signed: Sequence[bytes] = tuple(SIGNED),
) -> bytes:
    """Add set `instance` the way dkimpy's ARC.sign does, with whatever tags a test asks for.

    The message's existing sets must sit in the usual order (newest on top): the seal covers them
    selected by name from the bottom up, as dkimpy's sealer does.
    """
    i = instance_text if instance_text is not None else str(instance).encode()
    signer = dkim.ARC(message)
    signer.hasher = hashlib.sha256
    key = parse_pem_private_key(sealer.pem)
    aar = b" i=" + i + b"; " + aar_payload + b"\r\n"
    signer.headers = [(b"ARC-Authentication-Results", aar), *signer.headers]
    body_hash = base64.b64encode(hashlib.sha256(RELAXED.canonicalize_body(signer.body)).digest())
    stamp = str(int(time.time())).encode()
    ams_fields = [
        (b"i", i),
        (b"a", b"rsa-sha256"),
        (b"c", ams_c),
        (b"d", sealer.domain),
        (b"s", sealer.selector),
        (b"t", stamp),
        (b"h", b":".join(signed)),
        (b"bh", body_hash),
        *ams_extra,
        (b"b", b"0" * 60),
    ]
    ams: bytes = signer.gen_header(ams_fields, list(signed), RELAXED, b"ARC-Message-Signature", key)
    signer.headers = [(b"ARC-Message-Signature", b" " + ams), *signer.headers]
    seal_fields = [
        (b"i", i),
        (b"cv", cv),
        (b"a", b"rsa-sha256"),
        (b"d", sealer.domain),
        (b"s", sealer.selector),
        (b"t", stamp),
        *seal_extra,
        (b"b", b"0" * 60),
    ]
    covered = [b"arc-authentication-results", b"arc-message-signature", b"arc-seal"] * (instance - 1)
    covered += [b"arc-authentication-results", b"arc-message-signature"]
    arc_seal: bytes = signer.gen_header(seal_fields, covered, RELAXED, b"ARC-Seal", key)
    new_set = [b"ARC-Seal: ", arc_seal, b"ARC-Message-Signature: ", ams, b"ARC-Authentication-Results:", aar]
    return b"".join(new_set) + message


def fields(message: bytes) -> list[bytes]:
    """The header fields of `message`, each with its folded lines and final CRLF."""
    head = message.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    return re.findall(rb"[^ \t][^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*", head)


def rebuild(header_fields: Sequence[bytes], message: bytes) -> bytes:
    return b"".join(header_fields) + b"\r\n" + message.split(b"\r\n\r\n", 1)[1]


def arc_fields(message: bytes, name: bytes) -> list[int]:
    return [n for n, f in enumerate(fields(message)) if f.lower().startswith(name.lower() + b":")]


# --- valid chains ---------------------------------------------------------------------------------


def test_no_arc_headers_is_none(dns: ZoneResolver) -> None:
    result = verify_arc(BASE, dns)
    assert (result.result, result.instances, result.oldest_pass, result.hops) == ("none", 0, None, ())
    assert dns.total_queries() == 0


def test_one_hop(dns: ZoneResolver, lists: Sealer) -> None:
    result = verify_arc(seal(BASE, lists), dns)
    assert result.result == "pass", result.reason
    assert (result.instances, result.oldest_pass, result.sealers) == (1, 0, ("lists.example",))
    assert result.hops == (
        ArcHop(
            instance=1,
            sealer="lists.example",
            selector="s2048",
            cv="none",
            aar_authserv_id="lists.example",
            aar=(("spf", "pass"), ("dkim", "pass"), ("dmarc", "pass")),
            aar_header_from="origin.example",
        ),
    )


def test_two_hops(dns: ZoneResolver, lists: Sealer, fwd: Sealer) -> None:
    message = seal(seal(BASE, lists), fwd, cv="pass", results=b"spf=fail smtp.mailfrom=alice@origin.example")
    result = verify_arc(message, dns)
    assert result.result == "pass", result.reason
    assert (result.instances, result.oldest_pass) == (2, 0)
    assert result.sealers == ("lists.example", "fwd.example")
    assert [(h.instance, h.cv, h.aar_authserv_id) for h in result.hops] == [
        (1, "none", "lists.example"),
        (2, "pass", "fwd.example"),
    ]
    # The newest hop recorded what it saw, arc=pass included; the first still vouches for DMARC.
    assert result.hops[1].aar == (("spf", "fail"), ("arc", "pass"))
    assert result.hops[1].aar_header_from == ""
    assert result.hops[0].aar_header_from == "origin.example"


def test_lf_line_ends_read_like_crlf(dns: ZoneResolver, lists: Sealer, fwd: Sealer) -> None:
    message = seal(seal(BASE, lists), fwd, cv="pass")
    assert verify_arc(message.replace(b"\r\n", b"\n"), dns).result == "pass"


def test_fifty_sets_pass_and_a_fifty_first_fails(dns: ZoneResolver, fwd: Sealer) -> None:
    message = seal(BASE, fwd)
    for _ in range(MAX_INSTANCES - 1):
        message = seal(message, fwd, cv="pass")
    result = verify_arc(message, dns)
    assert (result.result, result.instances, result.oldest_pass) == ("pass", 50, 0), result.reason
    assert dns.query_count(fwd.key_name, "TXT") == 1  # one lookup per key, however many sets use it

    # A 51st set, even one that is otherwise well formed, is over the limit (section 5.2 step 1):
    # 153 ARC header fields cannot be 50 sets, which is decided before anything is parsed.
    over = craft_set(message, fwd, 51, b"pass")
    result = verify_arc(over, dns)
    assert result.result == "fail" and "more than 50 sets" in result.reason


def test_set_51_alone_fails(dns: ZoneResolver, lists: Sealer) -> None:
    result = verify_arc(craft_set(BASE, lists, 51, b"pass"), dns)
    assert result.result == "fail" and "i=51 is not a number from 1 to 50" in result.reason
    assert result.instances == 0


def test_more_than_150_arc_fields_fail_before_parsing(dns: ZoneResolver) -> None:
    junk = b"".join(b"ARC-Seal: whatever %d\r\n" % n for n in range(151))
    result = verify_arc(junk + BASE, dns)
    assert result.result == "fail" and "more than 50 sets" in result.reason
    assert dns.total_queries() == 0


def test_sets_out_of_the_usual_order_still_pass(dns: ZoneResolver, lists: Sealer, fwd: Sealer) -> None:
    # RFC 8617 5.1.1 orders a seal's input by instance, not by position in the header: moving set 1
    # above set 2 changes nothing (dkimpy's ARC.verify, which selects by position, fails this).
    message = seal(seal(BASE, lists), fwd, cv="pass")
    parts = fields(message)
    first_set = [f for f in parts if f.lower().startswith(b"arc-") and re.search(rb"[:;\s]i=1;", f)]
    assert len(first_set) == 3
    swapped = first_set + [f for f in parts if f not in first_set]
    assert swapped != parts
    assert verify_arc(rebuild(swapped, message), dns).result == "pass"


def test_tag_spacing_dkimpys_arc_verify_cannot_read(dns: ZoneResolver, lists: Sealer) -> None:
    # "i=1 ;" is a valid tag-list; dkimpy's ARC.verify looks for the text " i=1;" and raises.
    message = craft_set(BASE, lists, 1, b"none", instance_text=b"1 ")
    assert b"i=1 ; a=rsa-sha256" in message
    result = verify_arc(message, dns)
    assert result.result == "pass", result.reason


# --- header.oldest-pass -----------------------------------------------------------------------------


def test_change_between_hops_gives_oldest_pass(dns: ZoneResolver, lists: Sealer, fwd: Sealer) -> None:
    first = seal(BASE, lists)
    edited = first.replace(b"Subject: the quarterly numbers", b"Subject: [list] the quarterly numbers")
    result = verify_arc(seal(edited, fwd, cv="pass"), dns)
    assert (result.result, result.oldest_pass) == ("pass", 2), result.reason
    assert "i=1 no longer validates" in result.reason


def test_malformed_older_ams_only_moves_oldest_pass(dns: ZoneResolver, lists: Sealer, fwd: Sealer) -> None:
    # Section 5.2 step 5: older AMSs "do not affect the validity" (dkimpy's ARC.verify fails here).
    first = craft_set(BASE, lists, 1, b"none", ams_c=b"pancake/waffle")
    result = verify_arc(craft_set(first, fwd, 2, b"pass"), dns)
    assert (result.result, result.oldest_pass) == ("pass", 2), result.reason
    assert "canonicalization" in result.reason


# --- failures ---------------------------------------------------------------------------------------


def test_body_change_after_sealing_fails(dns: ZoneResolver, lists: Sealer, fwd: Sealer) -> None:
    message = seal(seal(BASE, lists), fwd, cv="pass")
    result = verify_arc(message.replace(b"the numbers are in.", b"the numbers are out."), dns)
    assert result.result == "fail"
    assert result.reason.startswith("ARC-Message-Signature i=2") and "body hash" in result.reason
    assert result.oldest_pass is None
    assert result.sealers == ("lists.example", "fwd.example")  # still described, for the logs


def test_changed_aar_breaks_the_seal(dns: ZoneResolver, lists: Sealer, fwd: Sealer) -> None:
    message = seal(seal(BASE, lists), fwd, cv="pass")
    forged = message.replace(b"ARC-Authentication-Results: i=1; lists.example;\r\n spf=pass",
                             b"ARC-Authentication-Results: i=1; lists.example;\r\n spf=fail")
    assert forged != message
    result = verify_arc(forged, dns)
    assert result.result == "fail" and result.reason.startswith("ARC-Seal i=2"), result.reason


@pytest.mark.parametrize("cut", [40, 200, -30])
def test_truncated_arc_seal_fails(dns: ZoneResolver, lists: Sealer, cut: int) -> None:
    parts = fields(seal(BASE, lists))
    (n,) = [k for k, f in enumerate(parts) if f.startswith(b"ARC-Seal:")]
    parts[n] = parts[n][:-2][:cut] + b"\r\n"
    result = verify_arc(rebuild(parts, BASE), dns)
    assert result.result == "fail", result.reason


@pytest.mark.parametrize("name", [b"ARC-Message-Signature", b"ARC-Authentication-Results"])
def test_truncated_ams_or_aar_fails(dns: ZoneResolver, lists: Sealer, name: bytes) -> None:
    parts = fields(seal(BASE, lists))
    (n,) = [k for k, f in enumerate(parts) if f.startswith(name + b":")]
    parts[n] = parts[n][: len(parts[n]) // 2].rstrip(b"\r\n") + b"\r\n"
    result = verify_arc(rebuild(parts, BASE), dns)
    assert result.result == "fail", result.reason


def test_duplicated_set_fails(dns: ZoneResolver, lists: Sealer) -> None:
    message = seal(BASE, lists)
    parts = fields(message)
    result = verify_arc(rebuild(parts[:3] + parts, message), dns)
    assert result.result == "fail" and "has 2 ARC-Authentication-Results fields" in result.reason
    assert result.hops == ()


@pytest.mark.parametrize("name", [b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results"])
def test_one_duplicated_field_fails(dns: ZoneResolver, lists: Sealer, name: bytes) -> None:
    message = seal(BASE, lists)
    parts = fields(message)
    (n,) = [k for k, f in enumerate(parts) if f.startswith(name + b":")]
    result = verify_arc(rebuild([parts[n], *parts], message), dns)
    assert result.result == "fail" and f"has 2 {name.decode()} fields" in result.reason


def test_missing_ams_fails(dns: ZoneResolver, lists: Sealer) -> None:
    message = seal(BASE, lists)
    parts = [f for f in fields(message) if not f.startswith(b"ARC-Message-Signature:")]
    result = verify_arc(rebuild(parts, message), dns)
    assert result.result == "fail" and "0 ARC-Message-Signature fields" in result.reason


def test_gap_in_instances_fails(dns: ZoneResolver, lists: Sealer, fwd: Sealer) -> None:
    message = craft_set(seal(BASE, lists), fwd, 3, b"pass")
    result = verify_arc(message, dns)
    assert result.result == "fail" and "no ARC Set i=2" in result.reason


@pytest.mark.parametrize("value", [b"0", b"51", b"x", b"", b"1.0", b"007", b"-1"])
def test_bad_instance_fails(dns: ZoneResolver, lists: Sealer, value: bytes) -> None:
    # The whole set carries the bad value, validly signed: only the number itself is wrong.
    result = verify_arc(craft_set(BASE, lists, 1, b"none", instance_text=value), dns)
    assert result.result == "fail"
    assert "is not a number from 1 to 50" in result.reason or "instance tag" in result.reason, result.reason


def test_aar_must_open_with_instance(dns: ZoneResolver, lists: Sealer) -> None:
    message = seal(BASE, lists).replace(
        b"ARC-Authentication-Results: i=1; lists.example;", b"ARC-Authentication-Results: lists.example; i=1;"
    )
    result = verify_arc(message, dns)
    assert result.result == "fail" and "does not open with its instance tag" in result.reason


def test_arc_seal_with_h_tag_fails(dns: ZoneResolver, lists: Sealer) -> None:
    # Validly signed in every other respect: RFC 8617 4.1.3 alone makes it fail.
    message = craft_set(BASE, lists, 1, b"none", seal_extra=[(b"h", b"from")])
    result = verify_arc(message, dns)
    assert result.result == "fail" and "h= tag" in result.reason
    assert dns.total_queries() == 0


@pytest.mark.parametrize(
    "value",
    [
        b" this is not a tag list at all",
        b" \x00\xff\xfe;;==;",
        b" i=1; cv=none; a=rsa-sha256; b=!!!; d=x; s=y",
    ],
)
def test_seal_over_garbage_fails(dns: ZoneResolver, lists: Sealer, value: bytes) -> None:
    parts = fields(seal(BASE, lists))
    (n,) = [k for k, f in enumerate(parts) if f.startswith(b"ARC-Seal:")]
    parts[n] = b"ARC-Seal:" + value + b"\r\n"
    result = verify_arc(rebuild(parts, BASE), dns)
    assert result.result == "fail" and result.reason, result.reason


def test_latest_seal_with_cv_fail_fails(dns: ZoneResolver, lists: Sealer, fwd: Sealer) -> None:
    # A validly signed cv=fail set: the sealer said the chain it received was broken.
    message = craft_set(seal(BASE, lists), fwd, 2, b"fail")
    result = verify_arc(message, dns)
    assert result.result == "fail" and "i=2 says cv=fail" in result.reason
    assert [h.cv for h in result.hops] == ["none", "fail"]
    assert dns.total_queries() == 0  # decided by step 2, before any signature


@pytest.mark.parametrize(("first", "second", "words"), [
    (b"pass", b"pass", "i=1 says cv=pass; it must be cv=none"),
    (b"none", b"none", "i=2 says cv=none; it must be cv=pass"),
    (b"fail", b"pass", "i=1 says cv=fail"),
    (b"none", b"bogus", "invalid cv=bogus"),
])
def test_cv_sequence_is_checked(
    dns: ZoneResolver, lists: Sealer, fwd: Sealer, first: bytes, second: bytes, words: str
) -> None:
    message = craft_set(craft_set(BASE, lists, 1, first), fwd, 2, second)
    result = verify_arc(message, dns)
    assert result.result == "fail" and words in result.reason, result.reason


def test_cv_is_case_insensitive(dns: ZoneResolver, lists: Sealer, fwd: Sealer) -> None:
    # chain-status is ABNF literal text, which RFC 5234 2.3 reads case-insensitively.
    result = verify_arc(craft_set(craft_set(BASE, lists, 1, b"None"), fwd, 2, b"PASS"), dns)
    assert result.result == "pass", result.reason
    assert [h.cv for h in result.hops] == ["none", "pass"]


def test_ams_signing_arc_seal_fails(dns: ZoneResolver, lists: Sealer, fwd: Sealer) -> None:
    message = seal(BASE, lists)
    ams_h = [*SIGNED, b"arc-seal"]
    signed = dkim.arc_sign(
        b"Authentication-Results: fwd.example; arc=pass\r\n" + message,
        fwd.selector, fwd.domain, fwd.pem, fwd.domain, include_headers=ams_h,
    )
    result = verify_arc(b"".join(signed) + message, dns)
    assert result.result == "fail" and "h= includes ARC-Seal" in result.reason


def test_ams_without_from_fails(dns: ZoneResolver, lists: Sealer) -> None:
    # Validly signed over To and Subject: RFC 6376 6.1.1 alone makes it fail.
    message = craft_set(BASE, lists, 1, b"none", signed=(b"to", b"subject"))
    result = verify_arc(message, dns)
    assert result.result == "fail" and "From not signed" in result.reason


def test_short_rsa_key_fails(lists: Sealer) -> None:
    weak = _sealer("weak.example", "old", 1024)
    result = verify_arc(seal(BASE, weak), serve(weak), min_key_bits=2048)
    assert result.result == "fail" and "RSA key too short (1024 bits < 2048)" in result.reason


def test_timestamp_in_the_future_fails(dns: ZoneResolver, lists: Sealer) -> None:
    message = seal(BASE, lists)
    result = verify_arc(message, dns, now=time.time() - 10 * 86400)
    assert result.result == "fail" and "t= is in the future" in result.reason


# --- DNS ----------------------------------------------------------------------------------------------


def test_key_temperror_fails_and_says_so(dns: ZoneResolver, lists: Sealer) -> None:
    dns.set_fault(lists.key_name, "timeout")
    result = verify_arc(seal(BASE, lists), dns)
    assert result.result == "fail"
    assert "temporary" in result.reason and "RFC 8617 section 5.2.1" in result.reason


def test_missing_key_fails(lists: Sealer) -> None:
    result = verify_arc(seal(BASE, lists), ZoneResolver())
    assert result.result == "fail" and "NXDOMAIN" in result.reason


def test_revoked_key_fails(lists: Sealer) -> None:
    revoked = Sealer(lists.domain, lists.selector, lists.pem, "v=DKIM1; k=rsa; p=")
    result = verify_arc(seal(BASE, lists), serve(revoked))
    assert result.result == "fail" and "revoked" in result.reason


def test_failure_stops_the_walk(dns: ZoneResolver, lists: Sealer, fwd: Sealer) -> None:
    # The newest AMS fails on the body hash: no key is looked up at all.
    message = seal(seal(BASE, lists), fwd, cv="pass").replace(b"numbers are in", b"numbers are IN")
    assert verify_arc(message, dns).result == "fail"
    assert dns.total_queries() == 0


def test_distinct_key_lookups_are_capped(dns: ZoneResolver, lists: Sealer, fwd: Sealer) -> None:
    message = seal(seal(BASE, lists), fwd, cv="pass")
    result = verify_arc(message, dns, max_key_lookups=1)
    assert result.result == "fail" and "more than 1 keys" in result.reason
    assert dns.total_queries() == 1


def test_resolver_that_raises_is_contained(lists: Sealer) -> None:
    class Broken:
        def query(self, name: str, rdtype: str) -> DnsAnswer:
            raise RuntimeError("boom")

    result = verify_arc(seal(BASE, lists), Broken())
    assert result.result == "fail" and "temporary" in result.reason


# --- the hops' AAR ------------------------------------------------------------------------------------


def test_garbage_aar_does_not_break_a_valid_chain(dns: ZoneResolver, lists: Sealer) -> None:
    # RFC 8617 3.4: the authres-payload's syntax does not affect the chain's validity.
    message = craft_set(BASE, lists, 1, b"none", aar_payload=b"mx.example; ((( spf=pass =;= \x01garbage")
    result = verify_arc(message, dns)
    assert result.result == "pass", result.reason
    (hop,) = result.hops
    assert (hop.aar_authserv_id, hop.aar, hop.aar_header_from) == ("mx.example", (), "")


def test_aar_values_are_cleaned(dns: ZoneResolver, lists: Sealer) -> None:
    payload = (
        b"mx.example; spf=pass smtp.mailfrom=a@b.example; x-weird=P\xc3\xa4ss;"
        b" dmarc=pass header.from=Origin.EXAMPLE"
    )
    result = verify_arc(craft_set(BASE, lists, 1, b"none", aar_payload=payload), dns)
    assert result.result == "pass", result.reason
    (hop,) = result.hops
    # authres refuses the field for its non-ASCII clause; the others are read one by one.
    assert hop.aar == (("spf", "pass"), ("dmarc", "pass"))
    assert hop.aar_header_from == "origin.example"


def test_aar_results_are_capped(dns: ZoneResolver, lists: Sealer) -> None:
    payload = b"mx.example; " + b"; ".join(b"x%d=pass" % n for n in range(100))
    result = verify_arc(craft_set(BASE, lists, 1, b"none", aar_payload=payload), dns)
    assert result.result == "pass", result.reason
    assert len(result.hops[0].aar) == 32


def test_long_aar_is_described_in_part(dns: ZoneResolver, lists: Sealer) -> None:
    payload = b"mx.example; dmarc=pass header.from=origin.example; " + b"; ".join(
        b"x%d=pass (%s)" % (n, b"c" * 150) for n in range(90)
    )
    assert len(payload) > 14000
    result = verify_arc(craft_set(BASE, lists, 1, b"none", aar_payload=payload), dns)
    assert result.result == "pass", result.reason
    (hop,) = result.hops
    assert hop.aar[0] == ("dmarc", "pass") and 20 < len(hop.aar) < 32
    assert hop.aar_header_from == "origin.example"


def test_hostile_sealer_domain_is_reported_safely(dns: ZoneResolver, lists: Sealer) -> None:
    message = seal(BASE, lists)
    hostile = message.replace(
        b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=lists.example;",
        b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=lists.example\x01\x7f(evil) dkim=pass;",
    )
    assert hostile != message
    result = verify_arc(hostile, dns)
    assert result.result == "fail" and "d= is not a valid domain name" in result.reason
    assert result.sealers == ("lists.example??(evil) dkim=pass",)  # described, control characters defused
    assert all(" " <= c <= "~" for c in result.reason)


# --- never raises ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\r\n",
        b"ARC-Seal:",
        b"ARC-Seal: i=1\r\nARC-Message-Signature: i=1\r\nARC-Authentication-Results: i=1;\r\n\r\n",
        b" ARC-Seal: continuation first\r\n\r\n",
        b"ARC-Seal: i=1; " + b"b=" + b"A" * 20000 + b"\r\n\r\n",
        b"ARC-Seal: i=1; cv=none;\r\n \r\n \r\n b=abc\r\n\r\n",
        bytes(range(256)) * 10,
    ],
)
def test_never_raises(dns: ZoneResolver, message: bytes) -> None:
    result = verify_arc(message, dns)
    assert result.result in ("none", "fail")
    assert result.reason
