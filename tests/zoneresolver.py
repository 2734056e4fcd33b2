"""Zone data for tests, and a socket-free `Resolver` that answers from it.

`ZoneData` holds master-file zones, fault injections and query counters; it is what the real
test server (`tests.dnsserver.DnsServer`) serves and what `ZoneResolver` answers from, so the
core's unit tests and the integration tests can share identical zone text.

Faults, set per exact name (case-insensitive), for every record type:
  timeout   the server never answers; ZoneResolver says TEMPERROR
  servfail  SERVFAIL; TEMPERROR
  garbage   the server replies with bytes that are not a DNS message; TEMPERROR
  refused   REFUSED; TEMPERROR
A CNAME loop is answered NOERROR with the loop's CNAMEs, as authoritative servers answer it;
ZoneResolver then says NODATA ("CNAME loop"), as DnsResolver does. A name outside every zone is
NXDOMAIN: the zones stand in for the whole DNS, so what they do not hold does not exist (a DMARC
tree walk up to `_dmarc.org` must see NXDOMAIN, as it would on the Internet), and that NXDOMAIN
carries the root zone's SOA, as a recursive resolver relays it, so resolvers may cache it for a
day as they would. Wildcards are not implemented.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.SOA
import dns.rrset
import dns.zone

from authmilter.core.dnsapi import DnsAnswer, DnsStatus
from authmilter.dns import CNAME_LOOP, INVALID_NAME, cname_loops, dns_name, record_from_rdata

FAULTS = frozenset({"timeout", "servfail", "garbage", "refused"})
MAX_CHAIN = 8  # CNAME hops (without a loop) before we give up, as a recursive resolver would


def zone_text(
    origin: str,
    records: Mapping[str, str | Iterable[str]] | str = "",
    *,
    ttl: int = 300,
    negative_ttl: int = 300,
    soa_ttl: int | None = None,
    soa: bool = True,
) -> str:
    """Master-file text for `origin`: an SOA (unless soa=False) plus `records`.

    `records` maps owner names ("@", relative or absolute) to one or more "[TTL] TYPE RDATA"
    strings, e.g. {"@": ['MX 10 mx', 'TXT "v=spf1 -all"'], "mx": "60 A 192.0.2.1"}, or is
    master-file lines already. `negative_ttl` is the SOA MINIMUM (RFC 2308).
    """
    origin = origin.rstrip(".") + "."
    lines = [f"$ORIGIN {origin}", f"$TTL {ttl}"]
    if soa:
        lines.append(f"@ {soa_ttl or ttl} IN SOA ns hostmaster 1 3600 600 86400 {negative_ttl}")
        lines.append("@ IN NS ns")
    if isinstance(records, str):
        lines.append(records)
    else:
        for owner, rdatas in records.items():
            for rdata in [rdatas] if isinstance(rdatas, str) else rdatas:
                lines.append(f"{owner} {rdata}")
    return "\n".join(lines) + "\n"


def name_key(name: dns.name.Name | str) -> str:
    """The spelling counters and faults are keyed by: lower-case A-labels, no final dot."""
    if isinstance(name, str):
        name = dns.name.from_text(name)
    return name.to_text(omit_final_dot=True).lower()


@dataclass
class Lookup:
    """An authoritative answer: the rcode, the answer section, the authority section."""

    rcode: dns.rcode.Rcode
    answer: list[dns.rrset.RRset] = field(default_factory=list)
    authority: list[dns.rrset.RRset] = field(default_factory=list)


class ZoneData:
    """Zones by origin, faults by name and query counters; safe to change while being served."""

    def __init__(self, zones: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._zones: dict[dns.name.Name, dns.zone.Zone] = {}
        self._faults: dict[str, str] = {}
        self._counts: Counter[tuple[str, str, str]] = Counter()
        for text in zones:
            self.add_zone(text)

    # -- zone data -----------------------------------------------------------------------

    def add_zone(self, text: str, origin: str | None = None) -> str:
        """Add (or replace) the zone in `text`; `origin` is needed when it has no $ORIGIN.

        Zones without an SOA are accepted: their negative answers then carry none, which is how
        tests reach "no SOA, not cacheable". Returns the origin.
        """
        zone = dns.zone.from_text(text, origin=origin, relativize=False, check_origin=False)
        assert zone.origin is not None
        with self._lock:
            self._zones[zone.origin] = zone
        return name_key(zone.origin)

    def set_zone(self, text: str, origin: str | None = None) -> str:
        """Serve exactly this one zone from now on."""
        self.clear_zones()
        return self.add_zone(text, origin)

    def remove_zone(self, origin: str) -> None:
        with self._lock:
            self._zones.pop(dns.name.from_text(origin), None)

    def clear_zones(self) -> None:
        with self._lock:
            self._zones.clear()

    # -- faults and counters -------------------------------------------------------------

    def set_fault(self, name: str, fault: str | None) -> None:
        """Make `name` misbehave (see the module doc), or behave again with fault=None."""
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)}")
        with self._lock:
            if fault is None:
                self._faults.pop(name_key(name), None)
            else:
                self._faults[name_key(name)] = fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def fault_for(self, name: dns.name.Name | str) -> str | None:
        with self._lock:
            return self._faults.get(name_key(name))

    def note_query(self, name: dns.name.Name | str, rdtype: str, transport: str) -> None:
        with self._lock:
            self._counts[(name_key(name), rdtype.upper(), transport)] += 1

    def query_count(self, name: str, rdtype: str, transport: str | None = None) -> int:
        """Queries seen for (name, type), over one transport ("udp", "tcp", "memory") or all."""
        key, rdtype = name_key(name), rdtype.upper()
        with self._lock:
            return sum(
                n
                for (qn, qt, tr), n in self._counts.items()
                if qn == key and qt == rdtype and transport in (None, tr)
            )

    def total_queries(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()

    # -- answering -----------------------------------------------------------------------

    def _zone_for(self, name: dns.name.Name) -> dns.zone.Zone | None:
        # The deepest origin wins, so a delegated child zone shadows its parent.
        found = [origin for origin in self._zones if name.is_subdomain(origin)]
        return self._zones[max(found, key=len)] if found else None

    def lookup(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> Lookup:
        """Answer as an authoritative server would, chasing CNAMEs through every zone held here.

        A real authoritative server stops at its zone's edge; we go on because the stub resolver
        under test cannot chase CNAMEs itself and this server stands in for its recursive resolver.
        A CNAME loop is answered as authoritative servers (BIND, NSD) answer one: NOERROR with
        each CNAME of the loop once, so clients see the loop itself. A chain longer than
        MAX_CHAIN without a loop is SERVFAIL, as recursive resolvers give up on those.
        """
        with self._lock:
            zone = self._zone_for(qname)
            if zone is None:
                return Lookup(dns.rcode.NXDOMAIN, authority=[_ROOT_SOA])
            result = Lookup(dns.rcode.NOERROR)
            name = qname
            seen = {qname}
            for _ in range(MAX_CHAIN):
                node = zone.get_node(name)
                if node is None:
                    # An empty non-terminal (only its children have records) exists: NODATA.
                    if not any(owner.is_subdomain(name) for owner in zone.nodes):
                        result.rcode = dns.rcode.NXDOMAIN
                    result.authority = _soa(zone)
                    return result
                rdataset = node.get_rdataset(dns.rdataclass.IN, rdtype)
                cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
                if rdataset is not None:
                    result.answer.append(_rrset(name, rdataset))
                    return result
                if cname is None:
                    result.authority = _soa(zone)
                    return result
                result.answer.append(_rrset(name, cname))
                target = cname[0]
                assert isinstance(target, dns.rdtypes.ANY.CNAME.CNAME)
                name = target.target
                if name in seen:
                    return result  # a CNAME loop: the chain is the whole answer
                seen.add(name)
                next_zone = self._zone_for(name)
                if next_zone is None:
                    return result  # the chain leaves our data: the CNAME is all we know
                zone = next_zone
            return Lookup(dns.rcode.SERVFAIL)  # a chain too long to follow


def _rrset(name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    return dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset))


# The root zone's SOA as the root servers publish it (serial aside): TTL and minimum one day.
_ROOT_SOA = dns.rrset.from_text(
    ".", 86400, "IN", "SOA", "a.root-servers.net. nstld.verisign-grs.com. 2026112700 1800 900 604800 86400")


def _soa(zone: dns.zone.Zone) -> list[dns.rrset.RRset]:
    assert zone.origin is not None
    soa = zone.get_rdataset(zone.origin, dns.rdatatype.SOA)
    return [] if soa is None else [_rrset(zone.origin, soa)]


def _negative_ttl(found: Lookup) -> int:
    for rrset in found.authority:
        soa = rrset[0]
        assert isinstance(soa, dns.rdtypes.ANY.SOA.SOA)
        return min([rrset.ttl, soa.minimum, *(r.ttl for r in found.answer)])
    return 0


class ZoneResolver(ZoneData):
    """The core's `Resolver`, answering from `ZoneData` in memory: no sockets, no threads."""

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        qname = dns_name(name)
        if qname is None:
            return INVALID_NAME
        try:
            rdtype_value = dns.rdatatype.RdataType.make(rdtype.upper())
        except Exception as exc:
            return DnsAnswer(DnsStatus.TEMPERROR, error=str(exc))
        self.note_query(qname, rdtype, "memory")
        fault = self.fault_for(qname)
        if fault is not None:
            return DnsAnswer(DnsStatus.TEMPERROR, error=fault)
        found = self.lookup(qname, rdtype_value)
        if found.rcode == dns.rcode.NXDOMAIN:
            return DnsAnswer(DnsStatus.NXDOMAIN, ttl=_negative_ttl(found))
        if found.rcode != dns.rcode.NOERROR:
            return DnsAnswer(DnsStatus.TEMPERROR, error=dns.rcode.to_text(found.rcode))
        final = found.answer[-1] if found.answer else None
        if rdtype_value != dns.rdatatype.CNAME and cname_loops(qname, found.answer):
            return CNAME_LOOP  # what DnsResolver makes of the same answer on the wire
        if final is None or final.rdtype != rdtype_value:
            return DnsAnswer(DnsStatus.NODATA, ttl=_negative_ttl(found))
        records = tuple(record_from_rdata(rdata) for rdata in final)
        return DnsAnswer(DnsStatus.OK, records, ttl=min(rrset.ttl for rrset in found.answer))
