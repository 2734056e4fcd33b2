"""`dnswire.read_simple` against dnspython's own reading of the same reply.

The reader exists only to save CPU, so it must never say anything dnspython's reading (from_wire,
the question check, the chaining rules of `authmilter.dns`) would not: for every reply, made or
mutated, it gives None or exactly dnspython's answer. And it must take the shapes it is there for,
or it saves nothing: the unmutated replies below are all read by it.
"""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from authmilter.core.dnsapi import DnsAnswer, DnsStatus
from authmilter.dns import _answers, _read_answer, dns_name
from authmilter.dnswire import Question, read_simple
from tests.propertysupport import budget

QNAME = "2.0.0.127.zen.example"


def by_dnspython(data: bytes, question: Question) -> DnsAnswer | None:
    """What the direct path made of a reply before `read_simple` (None: the Resolver's turn)."""
    try:
        response = dns.message.from_wire(data)
    except Exception:
        return None
    if response.flags & dns.flags.TC or not _answers(response, question.qname, question.rdtype):
        return None
    if not isinstance(response, dns.message.QueryMessage):
        return None
    return _read_answer(response, question.qname, "192.0.2.53", only=False)


def question(name: str = QNAME, rdtype: str = "A") -> Question:
    qname = dns_name(name)
    assert qname is not None
    return Question(qname, int(dns.rdatatype.from_text(rdtype)))


def reply(q: Question, *, rcode: int = dns.rcode.NXDOMAIN, soa_owner: str | None = "zen.example",
          soa_ttl: int = 3600, minimum: int = 300, addresses: tuple[tuple[str, int], ...] = (),
          edns: bool = True, qname_case: str | None = None) -> bytes:
    query = dns.message.make_query(qname_case or q.qname.to_text(), q.rdtype,
                                   use_edns=0 if edns else False, payload=1232)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    for address, ttl in addresses:
        response.answer.append(dns.rrset.from_text(response.question[0].name, ttl, "IN", "A", address))
    if soa_owner == "":  # the root zone's, as a resolver says no such TLD
        response.authority.append(dns.rrset.from_text(
            ".", soa_ttl, "IN", "SOA",
            f"a.root-servers.net. nstld.verisign-grs.com. 1 1800 900 604800 {minimum}"))
    elif soa_owner is not None:
        response.authority.append(dns.rrset.from_text(
            soa_owner + ".", soa_ttl, "IN", "SOA",
            f"ns1.{soa_owner}. hostmaster.{soa_owner}. 1 7200 900 1209600 {minimum}"))
    return response.to_wire()


def uncompressed_nxdomain(q: Question) -> bytes:
    """An NXDOMAIN whose SOA names are spelled out in full, as some servers send them."""
    name = dns.name.from_text("example.").to_wire() or b""
    rdata = (dns.name.from_text("ns.example.").to_wire() or b"") + \
        (dns.name.from_text("h.example.").to_wire() or b"") + struct.pack("!IIIII", 1, 2, 3, 4, 60)
    return b"".join((struct.pack("!HHHHHH", 7, 0x8183, 1, 0, 1, 0), q.name_wire, q.type_class,
                     name, struct.pack("!HHIH", 6, 1, 120, len(rdata)), rdata))


BASES: dict[str, tuple[Question, bytes]] = {
    "nxdomain, SOA at the zone": (question(), reply(question())),
    "nxdomain, the root's SOA": (question(), reply(question(), soa_owner="")),
    "nxdomain, no SOA": (question(), reply(question(), soa_owner=None)),
    "nxdomain, no EDNS": (question(), reply(question(), edns=False)),
    "nxdomain, SOA TTL below MINIMUM": (question(), reply(question(), soa_ttl=20, minimum=300)),
    "nxdomain, TTL with the top bit": (question(), reply(question(), soa_ttl=0x80000001)),
    "nxdomain, echoed in upper case": (question(), reply(question(), qname_case=QNAME.upper())),
    "nxdomain, names spelled out": (question("a.example"), uncompressed_nxdomain(question("a.example"))),
    "nodata": (question(rdtype="AAAA"), reply(question(rdtype="AAAA"), rcode=dns.rcode.NOERROR)),
    "nodata for TXT": (question("_dmarc.example", "TXT"),
                       reply(question("_dmarc.example", "TXT"), rcode=dns.rcode.NOERROR,
                             soa_owner="example")),
    "one address": (question(), reply(question(), rcode=dns.rcode.NOERROR, soa_owner=None,
                                      addresses=(("127.0.0.2", 900),))),
    "two addresses": (question(), reply(question(), rcode=dns.rcode.NOERROR, soa_owner=None,
                                        addresses=(("127.0.0.10", 900), ("127.0.0.4", 60)))),
    "an address with a TTL's top bit set": (
        question(), reply(question(), rcode=dns.rcode.NOERROR, soa_owner=None,
                          addresses=(("127.0.0.2", 0x80000000),))),
    "an address twice": (question(), reply(question(), rcode=dns.rcode.NOERROR, soa_owner=None,
                                           addresses=(("127.0.0.2", 900), ("127.0.0.2", 30)))),
}


@pytest.mark.parametrize("name", BASES)
def test_the_simple_shapes_are_read_as_dnspython_reads_them(name: str) -> None:
    q, data = BASES[name]
    expected = by_dnspython(data, q)
    assert expected is not None
    assert read_simple(data, q) == expected


def test_what_it_reads_is_what_it_was_told() -> None:
    q = question()
    assert read_simple(reply(q, soa_ttl=3600, minimum=300), q) == DnsAnswer(DnsStatus.NXDOMAIN, ttl=300)
    assert read_simple(reply(q, soa_ttl=0x80000001), q) == DnsAnswer(DnsStatus.NXDOMAIN, ttl=0)
    twice = reply(q, rcode=dns.rcode.NOERROR, soa_owner=None,
                  addresses=(("127.0.0.2", 900), ("127.0.0.2", 30)))
    assert read_simple(twice, q) == DnsAnswer(DnsStatus.OK, ("127.0.0.2",), ttl=30)


def test_a_reply_to_another_question_is_not_read() -> None:
    q = question()
    assert read_simple(reply(question("3.0.0.127.zen.example")), q) is None
    assert read_simple(reply(question(rdtype="TXT")), q) is None


def test_other_shapes_are_left_to_dnspython() -> None:
    q = question()
    cname = dns.message.make_response(dns.message.make_query(QNAME, "A"))
    cname.answer.append(dns.rrset.from_text(QNAME + ".", 60, "IN", "CNAME", "other.example."))
    servfail = reply(q, rcode=dns.rcode.SERVFAIL)
    truncated = bytearray(reply(q))
    truncated[2] |= 0x02
    extended = bytearray(reply(q))
    extended[-6] = 1  # the OPT record's extended RCODE: 1 << 4 | NXDOMAIN is no NXDOMAIN
    for data in (cname.to_wire(), servfail, bytes(truncated), bytes(extended), reply(q)[:-1],
                 reply(q) + b"\x00"):
        assert read_simple(data, q) is None


@st.composite
def mutated(draw: st.DrawFn) -> tuple[Question, bytes]:
    q, data = draw(st.sampled_from(list(BASES.values())))
    wire = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "cut", "insert", "header", "word", "long"]))
        last = max(0, len(wire) - 1)
        # Half the time near the end, where the records are (the question takes the first half).
        at = draw(st.integers(0, last) | st.integers(max(0, last - 40), last))
        if kind == "set" and wire:
            wire[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del wire[at:at + draw(st.integers(1, 8))]
        elif kind == "word" and len(wire) >= 2:
            # Pointers, types, classes, lengths: the 16-bit fields a reader must check.
            at = min(at, len(wire) - 2)
            value = draw(st.sampled_from([0xC00C, 0xC00E, 0xC010, 0xC000, 0, 1, 4, 6, 41, 0x3F, 0x40]))
            wire[at:at + 2] = struct.pack("!H", value)
        elif kind == "long" and len(wire) >= 4:
            # TTLs (the top bit), and the OPT record's extended RCODE in its top byte.
            at = min(at, len(wire) - 4)
            value = draw(st.sampled_from([0x80000000, 0xFFFFFFFF, 0x01000000, 0, 5]))
            wire[at:at + 4] = struct.pack("!I", value)
        elif kind == "insert":
            wire[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif len(wire) >= 12:
            # The flags and the four counts are where a small change means the most.
            field = draw(st.integers(1, 5))
            value = draw(st.sampled_from([0, 1, 2, 3, 0x8183, 0x8180, 0x8580, 0xFFFF]))
            wire[field * 2:field * 2 + 2] = struct.pack("!H", value)
    return q, bytes(wire)


@budget(400)
@given(mutated())
def test_it_never_says_what_dnspython_would_not(case: tuple[Question, bytes]) -> None:
    q, data = case
    simple = read_simple(data, q)
    if simple is not None:
        assert simple == by_dnspython(data, q)
