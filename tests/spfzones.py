"""SPF zone data shared by the unit tests (ZoneResolver) and the real-DNS tests (DnsServer).

Modelled on cases of the RFC 7208 test suite (tests/data/spf/rfc7208-tests.yml):
"macro-mania-in-domain" and "ptr-cname-loop", with documentation addresses and a few neighbours
of each case that show where the check goes on.
"""

from __future__ import annotations

from tests.zoneresolver import zone_text

# RFC 7208 section 7.1: "%%" expands to "%", "%_" to a space, "%-" to "%20". The owner names hold
# those characters literally; in master-file text a space is written \032.
MACRO_ZONE = zone_text(
    "macro.example",
    {
        # macro-mania-in-domain, as the test suite has it.
        "e1a": 'TXT "v=spf1 a:macro%%percent%_%_space%-url-space.macro.example -all"',
        r"macro%percent\032\032space%20url-space": "A 192.0.2.1",
        # One label per special expansion: "%", " " and "%20" each make a label of their own.
        "labels": 'TXT "v=spf1 exists:%{l}.%%.%_.%-.allow.macro.example -all"',
        r"test.%.\032.%20.allow": "A 127.0.0.2",
    },
)
# The names looked up, in the spelling ZoneData counts queries by (master-file escapes).
MACRO_MANIA_NAME = r"macro%percent\032\032space%20url-space.macro.example"
LABELS_NAME = r"test.%.\032.%20.allow.macro.example"

# ptr-cname-loop: the client's PTR target is a CNAME into a CNAME that points at itself (in
# mixed case, as in the suite).
LOOP_ZONE = zone_text(
    "loop.example",
    {
        "@": 'TXT "v=spf1 ptr"',  # no match and no "all": neutral
        "next": 'TXT "v=spf1 ptr:loop.example ip4:192.0.2.4 -all"',  # the check goes on past ptr
        "both": 'TXT "v=spf1 ptr:loop.example -all"',  # a second PTR target that does validate
        "loop4": "CNAME CNAME.loop.example.",
        "cname": "CNAME CNAME.loop.example.",
        "good": "A 192.0.2.5",
        "slow": "A 192.0.2.6",
    },
)
LOOP_REVERSE = zone_text(
    "2.0.192.in-addr.arpa",
    {
        "4": "PTR loop4.loop.example.",
        "5": ["PTR loop4.loop.example.", "PTR good.loop.example."],
        "6": "PTR slow.loop.example.",
    },
)
LOOP_ZONES = (LOOP_ZONE, LOOP_REVERSE)
