"""ARC through real milters: hop 1 and hop 2 seal with their own keys, hop 3 verifies and decides."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest

from tests.dnsserver import DnsServer
from tests.integration.zones import zone
from tests.mailfactory import Key, make_message, rsa_key, write_private_key
from tests.milterclient import ROOT, MilterProcess, passed_on
from tests.zoneresolver import ZoneResolver

ORIGIN_IP = "192.0.2.10"  # the author domain's own server
HOP1_IP = "198.51.100.1"  # a forwarder: not in the author's SPF
HOP2_IP = "198.51.100.2"
HOP1_KEY, HOP2_KEY = rsa_key(2048, 1), rsa_key(2048, 2)


def zones() -> list[str]:
    # The author domain signs nothing and relies on SPF alone, so forwarding breaks its DMARC.
    return [
        zone("origin.example", '@ IN TXT "v=spf1 ip4:192.0.2.0/24 -all"\n'
                               '_dmarc IN TXT "v=DMARC1; p=reject"\n'),
        zone("hop1.example", f"arc._domainkey IN TXT {HOP1_KEY.zone_txt()}\n"),
        zone("hop2.example", f"arc._domainkey IN TXT {HOP2_KEY.zone_txt()}\n"),
    ]


def sealer(work: Path, dns: DnsServer, domain: str, key: Key, extra: str = "") -> MilterProcess:
    work.mkdir()
    (work / "keys").mkdir(mode=0o700)
    write_private_key(work / "keys" / "arc.pem", key)
    (work / "signing.toml").write_text(f"""
[settings]
authenticated = false

[keys.arc]
domain = "{domain}"
selector = "arc"
file = "keys/arc.pem"

[arc]
key = "arc"
seal = ["*"]
""")
    return MilterProcess(work, dns_port=dns.port, authserv_id=f"mx.{domain}",
                         extra=f'signing = "{work / "signing.toml"}"\n{extra}').start()


Net = tuple[DnsServer, MilterProcess, MilterProcess, Path]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    work = tmp_path_factory.mktemp("arc")
    with DnsServer(zones()) as dns:
        hop1 = sealer(work / "hop1", dns, "hop1.example", HOP1_KEY)
        hop2 = sealer(work / "hop2", dns, "hop2.example", HOP2_KEY)
        try:
            yield dns, hop1, hop2, work
        finally:
            hop1.stop()
            hop2.stop()


def through(m: MilterProcess, message: bytes, client_ip: str) -> bytes:
    with m.session(client_ip=client_ip, helo="relay.example") as s:
        out = s.message(message, mail_from="alice@origin.example", rcpts=("bob@dest.example",))
    assert out.action == "accept", out
    return passed_on(message, out)


def original() -> bytes:
    return make_message(from_="Alice <alice@origin.example>", to="list@hop1.example")


def check_json(config: Path, message: Path, client_ip: str) -> dict[str, object]:
    r = subprocess.run([sys.executable, "-m", "authmilter", "check", "-c", str(config), "--json",
                        "--client-ip", client_ip, "--helo", "relay.example",
                        "--mail-from", "alice@origin.example", str(message)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out: dict[str, object] = json.loads(r.stdout)
    return out


def hop3_config(work: Path, dns: DnsServer, trusted: str) -> Path:
    policy = work / f"trust-{trusted}.toml"
    policy.write_text(f"""
[[rules]]
name = "arc-forwarders"
when = {{ dmarc = "fail", arc_trusted_sealers = ["{trusted}"] }}
action = "accept"
override = "local_policy"
""")
    cfg = work / f"hop3-{trusted}.toml"
    default = ROOT / "policies" / "default.toml"
    cfg.write_text(f'authserv_id = "mx.dest.example"\npolicy = ["{policy}", "{default}"]\n'
                   f'[dns]\nnameservers = ["127.0.0.1"]\nport = {dns.port}\ntimeout = 1.0\n')
    return cfg


def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes | None:
    text = name.decode() if isinstance(name, bytes) else name
    answer = ZoneResolver(zones()).query(text.rstrip("."), "TXT")
    return answer.txt_strings()[0] if answer.ok else None


def test_two_sealing_hops_verify_as_pass_at_hop_three(net: Net) -> None:
    dns, hop1, hop2, work = net
    after1 = through(hop1, original(), ORIGIN_IP)
    after2 = through(hop2, after1, HOP1_IP)
    assert b"ARC-Seal: i=1;" in after1 and b"cv=none" in after1
    assert b"ARC-Seal: i=2;" in after2
    eml = work / "hop3.eml"
    eml.write_bytes(after2)
    out = check_json(hop3_config(work, dns, "hop1.example"), eml, HOP2_IP)
    arc = out["arc"]
    assert isinstance(arc, dict)
    assert (arc["result"], arc["instances"], arc["sealers"]) == ("pass", 2, ["hop1.example", "hop2.example"])
    assert "arc=pass" in str(out["authentication_results"])
    # dkimpy's ARC verifier agrees.
    cv, _, reason = dkim.arc_verify(after2, dnsfunc=dnsfunc)
    assert cv == dkim.CV_Pass, reason


def test_body_change_between_hops_fails_the_chain(net: Net) -> None:
    dns, hop1, hop2, work = net
    after1 = through(hop1, original(), ORIGIN_IP)
    tampered = after1.replace(b"See you.", b"See you at the bank.")
    after2 = through(hop2, tampered, HOP1_IP)
    assert b"cv=fail" in after2  # hop 2 found the chain broken and sealed it as failed
    eml = work / "tampered.eml"
    eml.write_bytes(after2)
    arc = check_json(hop3_config(work, dns, "hop1.example"), eml, HOP2_IP)["arc"]
    assert isinstance(arc, dict) and arc["result"] == "fail"
    cv, _, reason = dkim.arc_verify(after2, dnsfunc=dnsfunc)
    # dkimpy reports a chain ended by a cv=fail seal as None ("the chain is terminated"): failed.
    assert cv in (dkim.CV_Fail, None) and cv != dkim.CV_Pass, reason


def test_dmarc_override_only_for_a_trusted_sealer(net: Net) -> None:
    dns, hop1, _, work = net
    forwarded = through(hop1, original(), ORIGIN_IP)  # DMARC passed at hop 1 (SPF from the origin)
    eml = work / "forwarded.eml"
    eml.write_bytes(forwarded)
    trusted = check_json(hop3_config(work, dns, "hop1.example"), eml, HOP1_IP)
    untrusted = check_json(hop3_config(work, dns, "other.example"), eml, HOP1_IP)
    dmarc = trusted["dmarc"]
    assert isinstance(dmarc, dict) and dmarc["result"] == "fail"  # SPF fails at hop 3, nothing signed
    assert trusted["action"] == "accept" and trusted["rule"] == "arc-forwarders"
    arc = trusted["arc"]
    assert isinstance(arc, dict) and arc["override"] == "local_policy" and arc["result"] == "pass"
    assert "override=local_policy" in str(trusted["authentication_results"])
    assert untrusted["action"] == "reject" and untrusted["rule"] == "dmarc-reject"
