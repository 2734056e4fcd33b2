"""The wire under `authmilter.dns`'s direct path: our question as a datagram, the UDP exchange of
a batch of questions (one or many) from one thread, and a reader for the replies most lookups get.

Why a reader of our own beside dnspython's: a milter's misses are mostly "no such name" (a DNS
list that does not list the client, a PTR that does not exist, a `_dmarc` name the tree walk asks)
and plain A answers (a listed client, iprev's forward lookup). dnspython's `from_wire` spends about
85 µs of CPU on such a 90-byte reply, building Name, Rdataset and enum objects the milter never
looks at. `read_simple` takes only replies of one rigid shape (our question echoed byte for byte,
no compression but pointers back into that question, at most one SOA in authority, at most an
empty OPT in additional, nothing after) and gives for them exactly what dnspython's reading would
give (a property test holds it to that); everything else, however slightly different, is None
and goes to dnspython as before.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import dns.entropy
import dns.name

from authmilter.core.dnsapi import DnsAnswer, DnsStatus

# 1232 avoids IP fragmentation on virtually every path (DNS Flag Day 2020); larger answers come
# back truncated and are asked again over TCP.
EDNS_PAYLOAD = 1232

_OPT_RR = b"\x00\x00\x29" + struct.pack("!H", EDNS_PAYLOAD) + b"\x00\x00\x00\x00\x00\x00"
_RD = 0x0100
_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_ID = struct.Struct("!H")
_TYPE_A, _TYPE_SOA, _TYPE_OPT, _CLASS_IN = 1, 6, 41, 1
_QR, _TC, _OPCODE = 0x8000, 0x0200, 0x7800
_NOERROR, _NXDOMAIN = 0, 3
_MAX_TTL = 0x7FFFFFFF  # RFC 2181 section 8: a TTL with the top bit set is read as 0, as dnspython does


@dataclass(frozen=True)
class Question:
    """One question as it goes on the wire, and what a reply must echo to be its answer."""

    qname: dns.name.Name
    rdtype: int
    name_wire: bytes = field(init=False)  # lower case: DNS names compare without case
    type_class: bytes = field(init=False)
    # Offset in a reply of every label boundary of the echoed name -> the name's wire length from
    # there: the only places a compression pointer in a reply `read_simple` accepts may point to.
    suffixes: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        # Lower-casing the wire form touches only the labels' letters: a label length is at most 63,
        # below "A" (65).
        wire = (self.qname.to_wire() or b"").lower()
        object.__setattr__(self, "name_wire", wire)
        object.__setattr__(self, "type_class", struct.pack("!HH", self.rdtype, _CLASS_IN))
        suffixes: dict[int, int] = {}
        at = 0
        while at < len(wire) and wire[at] != 0:
            suffixes[12 + at] = len(wire) - at
            at += wire[at] + 1
        suffixes[12 + at] = 1  # the root label
        object.__setattr__(self, "suffixes", suffixes)

    def datagram(self) -> tuple[int, bytes]:
        """(id, query): a fresh random id, recursion desired, EDNS0 with our payload size."""
        qid = dns.entropy.random_16()
        # One question and one additional record, the OPT.
        return qid, b"".join((_HEADER.pack(qid, _RD, 1, 0, 0, 1), self.name_wire, self.type_class,
                              _OPT_RR))


Outcome = bytes | OSError | None


def exchange_many(family: int, address: str, port: int, questions: Sequence[Question],
                  deadline: float) -> list[tuple[Outcome, float]]:
    """Every question at once, from this thread: all are sent, each from a fresh socket (a fresh
    random source port, as dnspython does) connected to the server (the kernel then drops
    datagrams from anyone else), then poll() waits for whichever replies first; a datagram with
    another id is not our answer and is skipped. Per question, in order: the reply (or the
    OSError its socket raised, ConnectionRefusedError when nothing listens there; or None when
    none came by `deadline`) and the seconds it took. Never raises OSError.

    One thread instead of one pool thread per question: no hand-over of the GIL and no wake-up
    per lookup, which cost more CPU than the exchange itself."""
    started = time.monotonic()
    outcomes: list[tuple[Outcome, float]] = [(None, 0.0)] * len(questions)
    open_: dict[int, tuple[int, socket.socket, int]] = {}  # fd -> (index, socket, id)
    poller = select.poll()
    try:
        for index, question in enumerate(questions):
            qid, wire = question.datagram()
            try:
                # Out of file descriptors (EMFILE) is this question's failure, not the batch's.
                sock = socket.socket(family, socket.SOCK_DGRAM)
            except OSError as e:
                outcomes[index] = (e, time.monotonic() - started)
                continue
            try:
                sock.setblocking(False)
                sock.connect((address, port))
                sock.send(wire)
            except OSError as e:
                sock.close()
                outcomes[index] = (e, time.monotonic() - started)
                continue
            open_[sock.fileno()] = (index, sock, qid)
            poller.register(sock, select.POLLIN)
        while open_:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd, _ in poller.poll(max(1, int(left * 1000 + 0.999))):
                index, sock, qid = open_[fd]
                outcome = _drain(sock, qid)
                if outcome is not None:
                    outcomes[index] = (outcome, time.monotonic() - started)
                    poller.unregister(fd)
                    del open_[fd]
                    sock.close()
    finally:
        for _, sock, _ in open_.values():
            sock.close()
    return outcomes


def _drain(sock: socket.socket, qid: int) -> bytes | OSError | None:
    """Every datagram waiting on `sock`: ours (by id), the error the socket reports, or None
    when only strays came."""
    while True:
        try:
            data = sock.recv(65535)
        except BlockingIOError:
            return None
        except OSError as e:
            return e
        if len(data) >= 12 and _ID.unpack_from(data)[0] == qid:
            return data


def read_simple(data: bytes, question: Question) -> DnsAnswer | None:
    """The answer in a reply of the simple shape (see the module's docstring), None for any other.

    Only for a reply already known to carry our id. What it gives: NXDOMAIN or NODATA with the
    negative TTL of RFC 2308 (min of the SOA's TTL and MINIMUM; 0 without an SOA), or for an A
    question the addresses in order of first appearance with the smallest TTL."""
    if len(data) < 12:
        return None
    _, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    rcode = flags & 0xF
    if (not flags & _QR or flags & (_OPCODE | _TC) or rcode not in (_NOERROR, _NXDOMAIN)
            or qdcount != 1 or nscount > 1 or arcount > 1):
        return None
    at = 12 + len(question.name_wire)
    if data[12:at].lower() != question.name_wire or data[at:at + 4] != question.type_class:
        return None
    at += 4
    addresses: list[str] = []
    ttl = _MAX_TTL + 1
    if ancount:
        if rcode != _NOERROR or question.rdtype != _TYPE_A or nscount:
            return None
        for _ in range(ancount):
            # The owner must be a pointer to the question's name: no CNAME, nothing else.
            if data[at:at + 2] != b"\xc0\x0c" or len(data) < at + 16:
                return None
            rdtype, rdclass, rr_ttl, rdlen = _RR.unpack_from(data, at + 2)
            if rdtype != _TYPE_A or rdclass != _CLASS_IN or rdlen != 4:
                return None
            address = socket.inet_ntoa(data[at + 12:at + 16])
            if address not in addresses:
                addresses.append(address)
            ttl = min(ttl, rr_ttl if rr_ttl <= _MAX_TTL else 0)
            at += 16
    negative_ttl = 0
    if nscount:
        found = _soa(data, at, question)
        if found is None:
            return None
        at, negative_ttl = found
    if arcount:
        # An OPT record: the root as owner, no options, and no extended RCODE bits (which would
        # make the RCODE something other than the header's).
        if len(data) < at + 11 or data[at] != 0:
            return None
        rdtype, _, opt_ttl, rdlen = _RR.unpack_from(data, at + 1)
        if rdtype != _TYPE_OPT or rdlen or opt_ttl >> 24:
            return None
        at += 11
    if at != len(data):
        return None
    if addresses:
        return DnsAnswer(DnsStatus.OK, tuple(addresses), ttl=ttl)
    status = DnsStatus.NXDOMAIN if rcode == _NXDOMAIN else DnsStatus.NODATA
    return DnsAnswer(status, ttl=negative_ttl)


def _soa(data: bytes, at: int, question: Question) -> tuple[int, int] | None:
    """(offset after it, min(TTL, MINIMUM)) of an IN SOA record at `at`; None for anything else."""
    at = _skip_name(data, at, len(data), question)
    if at < 0 or len(data) < at + 10:
        return None
    rdtype, rdclass, ttl, rdlen = _RR.unpack_from(data, at)
    at += 10
    end = at + rdlen
    if rdtype != _TYPE_SOA or rdclass != _CLASS_IN or end > len(data):
        return None
    at = _skip_name(data, at, end, question)  # MNAME
    if at >= 0:
        at = _skip_name(data, at, end, question)  # RNAME
    if at < 0 or at + 20 != end:
        return None
    minimum = struct.unpack_from("!I", data, end - 4)[0]
    return end, min(ttl if ttl <= _MAX_TTL else 0, minimum)


def _skip_name(data: bytes, at: int, end: int, question: Question) -> int:
    """The offset after a name at `at` that ends before `end`, or -1 when the name is not labels
    ending in the root or in one pointer to a label boundary of the question's name, or is longer
    than 255 octets."""
    length = 0
    while at < end:
        size = data[at]
        if size == 0:
            return at + 1 if length + 1 <= 255 else -1
        if size < 64:
            length += size + 1
            at += size + 1
            continue
        if size < 0xC0 or at + 2 > end:
            return -1
        suffix = question.suffixes.get(((size & 0x3F) << 8) | data[at + 1])
        if suffix is None or length + suffix > 255:
            return -1
        return at + 2
    return -1
