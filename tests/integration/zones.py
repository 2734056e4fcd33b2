"""Zone data the integration tests serve from the real DNS server."""

from __future__ import annotations

from tests.mailfactory import ed25519_key, rsa_key

SOA = "@ 300 IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60\n@ 300 IN NS ns.{origin}.\n"


def zone(origin: str, body: str) -> str:
    return f"$ORIGIN {origin}.\n$TTL 300\n" + SOA.format(origin=origin) + body


def example_org() -> str:
    """A sender that does everything right: SPF for 192.0.2.0/24, RSA and Ed25519 keys, p=reject."""
    return zone("example.org", f"""
@ IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
mail IN A 192.0.2.1
mail IN TXT "v=spf1 a -all"
_dmarc IN TXT "v=DMARC1; p=reject; adkim=r; aspf=r"
rsa._domainkey IN TXT {rsa_key().zone_txt()}
ed._domainkey IN TXT {ed25519_key().zone_txt()}
""")


def example_net() -> str:
    """A sender with relaxed SPF and a monitoring-only policy."""
    return zone("example.net", """
@ IN TXT "v=spf1 ip4:198.51.100.0/24 ~all"
_dmarc IN TXT "v=DMARC1; p=none"
""")


# 2001:db8::25 in ip6.arpa: the 24 nibbles below 2001:db8::/32, lowest first.
HOST6_NIBBLES = "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0"


def reverse_dns() -> list[str]:
    """Reverse DNS for iprev: 192.0.2.10 and 2001:db8::25 confirm, 192.0.2.20 names a host that
    is elsewhere, 192.0.2.30's PTR name is for tests to break; 203.0.113.0/24 has no PTR zone."""
    return [
        zone("rdns.example", """
mail IN A 192.0.2.10
liar IN A 192.0.2.99
mail6 IN AAAA 2001:db8::25
"""),
        zone("2.0.192.in-addr.arpa", """
10 IN PTR mail.rdns.example.
20 IN PTR liar.rdns.example.
30 IN PTR mail.rdns.example.
"""),
        zone("8.b.d.0.1.0.0.2.ip6.arpa", f"""
{HOST6_NIBBLES} IN PTR mail6.rdns.example.
"""),
    ]
