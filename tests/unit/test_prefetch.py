"""The prefetch plan: the names a message's checks ask are asked in (at most) two batches first,
and the checks' results are the same with and without it. In-memory DNS; the concurrent batch
itself is tested against the real DNS server in tests/integration/test_dns_parallel.py."""

from __future__ import annotations

from dataclasses import replace

from authmilter.core.checks.dnslists import DnsList
from authmilter.core.dnsapi import DnsAnswer
from authmilter.core.evaluate import NOTHING_KNOWN, EvalSettings, run_checks
from authmilter.core.message import split_message
from authmilter.core.model import Transaction
from authmilter.core.prefetch import MAX_NAMES, prefetch
from tests.integration.zones import example_org, reverse_dns
from tests.mailfactory import make_message, rsa_key, sign
from tests.zoneresolver import ZoneResolver, zone_text

ZEN = DnsList("zen", "zen.example", "ip")
DBL = DnsList("dbl", "dbl.example", "domain")


class Recording:
    """A resolver that notes each query and in which batch (query_many call) it came."""

    def __init__(self, inner: ZoneResolver) -> None:
        self.inner = inner
        self.single: list[tuple[str, str]] = []
        self.batches: list[list[tuple[str, str]]] = []

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        self.single.append((name.lower(), rdtype))
        return self.inner.query(name, rdtype)

    def query_many(self, queries: list[tuple[str, str]]) -> dict[tuple[str, str], DnsAnswer]:
        batch = list(dict.fromkeys(queries))
        self.batches.append(batch)
        return {q: self.inner.query(*q) for q in batch}


def zones() -> ZoneResolver:
    spf = zone_text("spf.example", {"@": ['TXT "v=spf1 include:_spf.spf.example a mx -all"',
                                          "MX 10 mail.spf.example."],
                                    "_spf": 'TXT "v=spf1 ip4:192.0.2.0/24 -all"'})
    return ZoneResolver([example_org(), *reverse_dns(), spf,
                         zone_text("zen.example", {"2.0.0.127": "A 127.0.0.2"}),
                         zone_text("dbl.example", {"test": "A 127.0.1.2"})])


def tx(mail_from: str = "alice@example.org", client_ip: str = "192.0.2.10") -> Transaction:
    headers, body = split_message(sign(make_message(), domain="example.org", selector="rsa", key=rsa_key()))
    return Transaction(client_ip=client_ip, helo="mail.rdns.example", mail_from=mail_from,
                       rcpts=("bob@example.com",), headers=headers, body=body)


def test_a_signed_message_needs_nothing_after_the_batches() -> None:
    dns = Recording(zones())
    settings = EvalSettings(dnslists=(ZEN, DBL))
    run_checks(tx(), dns, settings)
    assert len(dns.batches) == 2  # nothing points further than the PTR name
    first = set(dns.batches[0])
    assert {("10.2.0.192.in-addr.arpa", "PTR"), ("example.org", "TXT"), ("mail.rdns.example", "TXT"),
            ("rsa._domainkey.example.org", "TXT"), ("_dmarc.example.org", "TXT"),
            ("10.2.0.192.zen.example", "A"), ("example.org.dbl.example", "A")} <= first
    assert set(dns.batches[1]) == {("mail.rdns.example", "A")}  # the PTR name, to confirm it
    # Everything the checks asked afterwards was already answered.
    assert dns.single == []


def test_spf_targets_are_followed_round_by_round() -> None:
    dns = Recording(zones())
    run_checks(tx(mail_from="bounce@spf.example"), dns, EvalSettings())
    second = set(dns.batches[1])
    assert {("_spf.spf.example", "TXT"), ("spf.example", "A"), ("spf.example", "MX")} <= second
    assert ("mail.spf.example", "A") in set(dns.batches[2])  # the MX's exchange
    assert len(dns.batches) <= 4


def test_results_are_the_same_with_and_without_prefetch() -> None:
    settings = EvalSettings(dnslists=(ZEN, DBL))
    plain = zones()
    # One transaction for both runs: signing again could cross a second and change t= and b=.
    message = tx()
    with_batches = run_checks(message, Recording(zones()), settings)

    class OneByOne:
        def query(self, name: str, rdtype: str) -> DnsAnswer:
            return plain.query(name, rdtype)

    one_by_one = run_checks(message, OneByOne(), settings)
    assert with_batches == one_by_one


def test_what_is_known_is_not_fetched_again() -> None:
    dns = Recording(zones())
    first = run_checks(tx(), dns, EvalSettings())
    known = replace(NOTHING_KNOWN, iprev=first.iprev, spf=first.spf)
    dns2 = Recording(zones())
    prefetch(tx(), dns2, known=known)
    asked = {q for batch in dns2.batches for q in batch}
    assert not any(rdtype == "PTR" for _, rdtype in asked)
    assert ("example.org", "TXT") not in asked


def test_a_hostile_message_is_bounded() -> None:
    fields = b"".join(b"DKIM-Signature: v=1; a=rsa-sha256; d=d%d.example; s=s; h=from; bh=x; b=y\r\n" % n
                      for n in range(200))
    headers, body = split_message(fields + make_message())
    t = Transaction(client_ip="192.0.2.10", helo="h.example", mail_from="a@example.org", rcpts=(),
                    headers=headers, body=body)
    dns = Recording(zones())
    prefetch(t, dns, known=NOTHING_KNOWN)
    assert all(len(batch) <= MAX_NAMES for batch in dns.batches)


def test_a_resolver_without_batches_is_asked_one_by_one() -> None:
    inner = zones()
    before = inner.total_queries()
    p = prefetch(tx(), inner, known=NOTHING_KNOWN)
    assert inner.total_queries() > before
    counted = inner.total_queries()
    assert p.query("_dmarc.example.org", "TXT").ok
    assert inner.total_queries() == counted  # answered from the batch
