"""`authmilter genkey` and `authmilter testkey` as processes, against a real DNS server.

What genkey prints is pasted into a zone the server serves; testkey must then find every key
published and matching, and must exit non-zero when a record is missing or holds another key.
No output of either command may ever contain private key material.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from authmilter.core.signing.dkim import SigningKey
from authmilter.files.keys import load_key
from tests.dnsserver import DnsServer
from tests.integration.zones import zone
from tests.milterclient import ROOT

SIGNING = """
[keys.rsa]
domain = "example.com"
selector = "2026a"
file = "keys/example.com.2026a.pem"

[keys.ed]
domain = "example.com"
selector = "2026e"
file = "keys/example.com.2026e.pem"

[[sign]]
match = ["example.com", "*.example.com"]
keys = ["rsa", "ed"]
"""

_outputs: list[str] = []  # everything the commands printed, checked for key material at the end


def run(*args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "authmilter", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    _outputs.extend((r.stdout, r.stderr))
    return r


@pytest.fixture(autouse=True)
def no_key_material_in_output() -> Iterator[None]:
    yield
    leaked = [o for o in _outputs if "PRIVATE KEY" in o]
    _outputs.clear()
    assert not leaked


def genkey(work: Path, selector: str, *extra: str) -> str:
    r = run("genkey", "--domain", "example.com", "--selector", selector, "--out", str(work / "keys"), *extra)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{selector}._domainkey.example.com. IN TXT ( ")
    assert f"[keys.NAME]\ndomain = \"example.com\"\nselector = \"{selector}\"" in r.stderr
    return r.stdout


def publish(dns: DnsServer, *records: str) -> None:
    dns.set_zone(zone("example.com", "@ IN TXT \"v=spf1 -all\"\n" + "".join(records)))


def write_config(work: Path, dns: DnsServer, signing: bool = True) -> Path:
    (work / "signing.toml").write_text(SIGNING)
    config = work / "authmilter.toml"
    config.write_text(('signing = "signing.toml"\n' if signing else "")
                      + f'[dns]\nnameservers = ["127.0.0.1"]\nport = {dns.port}\ntimeout = 1.0\n')
    return config


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path


def test_genkey_records_verify_with_testkey(work: Path, dns_server: DnsServer) -> None:
    rsa_record = genkey(work, "2026a")
    ed_record = genkey(work, "2026e", "--type", "ed25519")
    for name in ("example.com.2026a.pem", "example.com.2026e.pem"):
        assert stat.S_IMODE((work / "keys" / name).stat().st_mode) == 0o600
    assert (work / "keys" / "example.com.2026a.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert all(len(s) <= 255 for s in rsa_record.split('"')[1::2])
    publish(dns_server, rsa_record, ed_record)
    me = pwd.getpwuid(os.geteuid()).pw_name
    r = run("testkey", "-c", str(write_config(work, dns_server)), "--user", me)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("ok ed: 2026e._domainkey.example.com: published key matches (ed25519")
    assert lines[1].startswith("ok rsa: 2026a._domainkey.example.com: published key matches (rsa-sha256")
    assert lines[2] == "ok: 2 key(s) published and matching"
    assert r.stderr == ""


def test_mismatched_and_missing_records_fail(work: Path, dns_server: DnsServer) -> None:
    genkey(work, "2026a")
    ed_record = genkey(work, "2026e", "--type", "ed25519")
    # Another key published under the RSA selector (a rotation gone wrong), no ed25519 record at all
    other = genkey(work / "other", "2026a")
    publish(dns_server, other)
    config = write_config(work, dns_server)
    r = run("testkey", "-c", str(config))
    assert r.returncode == 1
    assert "FAIL ed: 2026e._domainkey.example.com: no such name" in r.stdout
    assert ("FAIL rsa: 2026a._domainkey.example.com: published public key differs from the private key's"
            in r.stdout)
    assert "2 of 2 key(s) failed" in r.stderr
    publish(dns_server, other, ed_record)
    r = run("testkey", "-c", str(config))
    assert r.returncode == 1 and "ok ed:" in r.stdout and "FAIL rsa:" in r.stdout


def test_unavailable_key_and_weak_key_and_signing_override(work: Path, dns_server: DnsServer) -> None:
    # A 1024-bit RSA key readable by its group: used, but both are warned about
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (work / "keys").mkdir(mode=0o700)
    fd = os.open(work / "keys" / "example.com.2026a.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(fd, "wb") as f:
        f.write(weak.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    os.chmod(work / "keys" / "example.com.2026a.pem", 0o640)
    key = load_key("rsa", "example.com", "2026a", work / "keys" / "example.com.2026a.pem")
    assert isinstance(key, SigningKey)
    publish(dns_server, f'2026a._domainkey IN TXT "v=DKIM1; k=rsa; p={key.signer.public_key_b64()}"\n')
    config = write_config(work, dns_server, signing=False)
    r = run("testkey", "-c", str(config))
    assert r.returncode == 64 and "names no signing file" in r.stderr
    r = run("testkey", "-c", str(config), "--signing", str(work / "signing.toml"))
    assert r.returncode == 1  # the ed25519 key file does not exist
    assert "ok rsa:" in r.stdout and "1024 bits" in r.stdout
    assert "FAIL ed: key unavailable:" in r.stdout and "No such file or directory" in r.stdout
    assert "weak RSA key of 1024 bits" in r.stderr and "readable by group or others" in r.stderr


def test_genkey_refuses_to_overwrite(work: Path) -> None:
    genkey(work, "2026a")
    path = work / "keys" / "example.com.2026a.pem"
    before = path.read_bytes()
    r = run("genkey", "--domain", "example.com", "--selector", "2026a", "--out", str(work / "keys"))
    assert r.returncode == 1 and "already exists; refusing to overwrite" in r.stderr and r.stdout == ""
    assert path.read_bytes() == before
    r = run("genkey", "--domain", "example.com", "--selector", "x", "--type", "ed25519", "--bits", "2048")
    assert r.returncode == 64 and "--bits applies to RSA keys only" in r.stderr


def test_signing_file_errors_exit_78(work: Path, dns_server: DnsServer) -> None:
    config = write_config(work, dns_server)
    (work / "signing.toml").write_text('[[sign]]\nmatch = "example.com"\nkeys = ["nope"]\n')
    r = run("testkey", "-c", str(config))
    assert r.returncode == 78
    assert f"{work / 'signing.toml'}:3: sign[1].keys: unknown key 'nope'" in r.stderr


as_root = pytest.mark.skipif(os.geteuid() != 0, reason="making keys for another account needs root")


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A directory every account can enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="authmilter-keys-", dir="/var/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path)


@as_root
def test_genkey_makes_keys_the_milters_account_reads_and_testkey_checks_as_it(
        reachable: Path, dns_server: DnsServer) -> None:
    nobody = pwd.getpwnam("nobody")
    rsa_record = genkey(reachable, "2026a", "--user", "nobody")
    r = run("genkey", "--domain", "example.com", "--selector", "2026e", "--type", "ed25519",
            "--out", str(reachable / "keys"), "--user", "nobody")
    assert r.returncode == 0 and "owner nobody, mode 0600" in r.stderr and "warning" not in r.stderr
    for name in ("example.com.2026a.pem", "example.com.2026e.pem"):
        st = (reachable / "keys" / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (nobody.pw_uid, nobody.pw_gid, 0o600)
    # The directory genkey made is root's: the account may read keys in it, not add or swap them.
    st = (reachable / "keys").stat()
    assert (st.st_uid, grp.getgrgid(st.st_gid).gr_gid, stat.S_IMODE(st.st_mode)) == (0, nobody.pw_gid, 0o750)
    publish(dns_server, rsa_record, r.stdout)
    config = write_config(reachable, dns_server)
    r = run("testkey", "-c", str(config), "--user", "nobody")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "ok: 2 key(s) published and matching"

    # A key root made for itself (0600 root) loads fine for root, but not for the milter.
    os.chown(reachable / "keys" / "example.com.2026a.pem", 0, 0)
    r = run("testkey", "-c", str(config), "--user", "nobody")
    assert r.returncode == 1
    assert (f"FAIL rsa: the milter's account nobody cannot read {reachable}/keys/example.com.2026a.pem: "
            "Permission denied; chown nobody it") in r.stdout
    assert "ok ed:" in r.stdout and "1 of 2 key(s) failed" in r.stderr
    r = run("testkey", "-c", str(config), "--user", "no-such-account-here")
    assert r.returncode == 64 and "--user no-such-account-here: no such account" in r.stderr


@as_root
def test_genkey_warns_when_the_account_cannot_reach_its_key(work: Path) -> None:
    # tmp_path's parents are root's, mode 0700: nobody owns the key but cannot get to it.
    r = run("genkey", "--domain", "example.com", "--selector", "s", "--out", str(work / "keys"),
            "--user", "nobody")
    assert r.returncode == 0
    assert (f"warning: nobody cannot read {work}/keys/example.com.s.pem: Permission denied "
            "(check the file and every directory above it)") in r.stderr
    r = run("genkey", "--domain", "example.com", "--selector", "s2", "--out", str(work), "--user", "nobody-x")
    assert r.returncode == 64 and not (work / "example.com.s2.pem").exists()


def test_genkey_record_comes_before_its_hint_when_both_are_piped(work: Path) -> None:
    # One pipe for both, as `genkey ... 2>&1 | less` gives: the record must not come after the hint.
    # Python buffers a piped stdout unless told not to, as this environment may tell it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    r = subprocess.run([sys.executable, "-m", "authmilter", "genkey", "--domain", "example.com",
                        "--selector", "s", "--out", str(work)], cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60, env=env)
    assert r.returncode == 0
    assert r.stdout.startswith("s._domainkey.example.com. IN TXT ( ")
    assert r.stdout.index(" )\n") < r.stdout.index("authmilter: wrote ")
