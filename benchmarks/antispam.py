"""The "antispam" load scenario: the inbound corpus with iprev, two DNS lists and greylisting on
SQLite switched on (benchmarks/load.py --scenario antispam).

The corpus's clients get reverse DNS that confirms (a 127.in-addr.arpa zone and a clients.bench
zone written here from the manifest), two IP lists (`zen.bench`, a block list, and `wl.bench`, an
allow list) answer their RFC 5782 test points and list none of the corpus's clients, so every
message costs the lookups and the verdicts stay what the corpus expects. Greylisting applies to
every recipient with `delay = 0`, and the warm-up sends the whole corpus once, so that in the
measured lap every triplet is found and passes: each recipient costs the store the same read and
writes as a first attempt, and the actions can still be checked against the corpus.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from benchmarks.services import POLICY

SOA = "@ 3600 IN SOA ns.bench. hostmaster.bench. 1 3600 600 86400 3600\n@ 3600 IN NS ns.bench.\n"

RULES = """# The antispam scenario of benchmarks/load.py: greylist every recipient (delay 0 in the
# config, so the measured lap passes), refuse clients on the block list at MAIL FROM.
[[rules]]
name = "vouched"
when = { dnswl = ["wl"] }
action = "accept"

[[rules]]
name = "listed"
when = { dnsbl = ["zen"] }
stage = "mail"
action = "reject"

[[rules]]
name = "greylist"
action = "greylist"
"""


def host_name(ip: str) -> str:
    return "h-" + ip.replace(".", "-") + ".clients.bench"


def write_zones(rundir: Path, manifest: dict[str, Any]) -> list[Path]:
    """Reverse and forward DNS for every client of the corpus, and the two lists."""
    ips = sorted({m["client_ip"] for m in manifest["messages"]}, key=ipaddress.ip_address)
    reverse = [SOA] + [f"{ipaddress.ip_address(ip).reverse_pointer}. 3600 IN PTR {host_name(ip)}.\n"
                       for ip in ips]
    forward = [SOA] + [f"{host_name(ip)}. 3600 IN A {ip}\n" for ip in ips]
    zones = {
        "127.in-addr.arpa": "".join(reverse),
        "clients.bench": "".join(forward),
        "zen.bench": SOA + "2.0.0.127 300 IN A 127.0.0.2\n",
        "wl.bench": SOA + "2.0.0.127 300 IN A 127.0.10.2\n",
    }
    paths = []
    for origin, text in zones.items():
        path = rundir / f"{origin}.zone"
        path.write_text(f"$ORIGIN {origin}.\n$TTL 3600\n{text}")
        paths.append(path)
    return paths


def config_extra(rundir: Path) -> str:
    """What the antispam scenario adds to the milter's config."""
    rules = rundir / "antispam-rules.toml"
    rules.write_text(RULES)
    return f"""policy = ["{rules}", "{POLICY}"]

[store]
path = "{rundir / 'state.db'}"

[greylist]
delay = 0
auto_allow_after = 0

[[dnslist]]
name = "zen"
zone = "zen.bench"
codes = {{ "127.0.0.2-127.0.0.11" = "listed" }}

[[dnslist]]
name = "wl"
zone = "wl.bench"
allow = true
"""
