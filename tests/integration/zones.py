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
