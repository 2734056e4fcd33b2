"""Tests for authmilter.files.keys: key formats, sizes, permissions, genkey and the published-record check."""

from __future__ import annotations

import base64
import math
import os
import re
import secrets
import stat
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import dns.zone
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from authmilter.core.dnsapi import DnsAnswer, DnsStatus
from authmilter.core.signing.dkim import SigningKey
from authmilter.files.keys import (
    KeyLoadProblem,
    KeyToolError,
    check_published,
    dns_record_text,
    generate_key,
    load_key,
)
from tests.unit.test_dkim import DictResolver


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def umask0() -> Iterator[None]:
    old = os.umask(0)  # so only the mode we asked for at creation counts
    try:
        yield
    finally:
        os.umask(old)


@cache
def rsa_private(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@cache
def ed_private() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def short_rsa() -> rsa.RSAPrivateKey:
    """A 512-bit key, which cryptography will not generate: built from primes of our own."""
    def probable_prime(bits: int) -> int:
        while True:
            n = secrets.randbits(bits) | (1 << (bits - 1)) | 1
            if all(pow(a, n - 1, n) == 1 for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)):
                return n

    e = 65537
    while True:
        p, q = probable_prime(256), probable_prime(256)
        if p != q and math.gcd(e, (p - 1) * (q - 1)) == 1:
            break
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q),
                                    rsa.rsa_crt_iqmp(p, q), rsa.RSAPublicNumbers(e, p * q))
    return numbers.private_key()


def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey,
        fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
        encryption: serialization.KeySerializationEncryption | None = None) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption or serialization.NoEncryption())


def write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # the test wants exactly this mode, whatever the umask
    return path


def load(path: Path) -> tuple[SigningKey | KeyLoadProblem, list[KeyLoadProblem]]:
    warnings: list[KeyLoadProblem] = []
    return load_key("k", "example.com", "s1", path, warnings), warnings


def assert_no_material(*texts: object, secret: bytes = b"") -> None:
    """No PEM armour and no line of the secret's PEM body in any of the texts."""
    lines = [line.decode("latin-1") for line in secret.splitlines() if line and not line.startswith(b"-----")]
    for t in texts:
        assert "PRIVATE KEY" not in str(t)
        assert not any(line in str(t) for line in lines)


def raw_public(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --- formats ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1
                                 serialization.PrivateFormat.PKCS8])
def test_rsa_pem(keydir: Path, fmt: serialization.PrivateFormat) -> None:
    key, warnings = load(write(keydir / "k.pem", pem(rsa_private(2048), fmt)))
    assert isinstance(key, SigningKey) and warnings == []
    assert (key.algorithm, key.bits, key.source, key.record_name) == (
        "rsa-sha256", 2048, str(keydir / "k.pem"), "s1._domainkey.example.com")
    public = rsa_private(2048).public_key().public_bytes(serialization.Encoding.DER,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    assert base64.b64decode(key.signer.public_key_b64()) == public
    assert_no_material(repr(key), secret=pem(rsa_private(2048), fmt))


def test_ed25519_pem(keydir: Path) -> None:
    key, warnings = load(write(keydir / "k.pem", pem(ed_private())))
    assert isinstance(key, SigningKey) and warnings == []
    assert (key.algorithm, key.bits) == ("ed25519-sha256", 256)
    assert base64.b64decode(key.signer.public_key_b64()) == raw_public(ed_private())


@pytest.mark.parametrize("form", ["seed", "seed+public", "seed with newline"])
def test_ed25519_base64_as_dkimpy_and_opendkim_take_it(keydir: Path, form: str) -> None:
    seed = ed_private().private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                      serialization.NoEncryption())
    data = {"seed": base64.b64encode(seed),
            "seed+public": base64.b64encode(seed + raw_public(ed_private())),
            "seed with newline": base64.b64encode(seed) + b"\n"}[form]
    key, _ = load(write(keydir / "k.key", data))
    assert isinstance(key, SigningKey) and key.algorithm == "ed25519-sha256"
    assert base64.b64decode(key.signer.public_key_b64()) == raw_public(ed_private())


def test_ed25519_64_bytes_with_a_foreign_public_half_is_refused(keydir: Path) -> None:
    seed = ed_private().private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                      serialization.NoEncryption())
    other = raw_public(ed25519.Ed25519PrivateKey.generate())
    key, _ = load(write(keydir / "k.key", base64.b64encode(seed + other)))
    assert isinstance(key, KeyLoadProblem) and "does not match" in key.reason


# --- sizes ---------------------------------------------------------------------------------------


def test_rsa_under_1024_is_refused(keydir: Path) -> None:
    key, _ = load(write(keydir / "k.pem", pem(short_rsa())))
    assert isinstance(key, KeyLoadProblem) and key.fatal
    assert re.search(r"refused: RSA key of 51\d bits", key.reason)


def test_rsa_1024_is_used_but_warned(keydir: Path) -> None:
    key, warnings = load(write(keydir / "k.pem", pem(rsa_private(1024))))
    assert isinstance(key, SigningKey) and key.bits == 1024
    assert [w.fatal for w in warnings] == [False] and "weak RSA key of 1024 bits" in warnings[0].reason


# --- permissions ---------------------------------------------------------------------------------


def test_world_writable_key_is_refused(keydir: Path) -> None:
    key, _ = load(write(keydir / "k.pem", pem(ed_private()), 0o602))
    assert isinstance(key, KeyLoadProblem) and "world-writable" in key.reason


def test_key_in_world_writable_directory_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    key, _ = load(write(d / "k.pem", pem(ed_private())))
    assert isinstance(key, KeyLoadProblem) and f"directory {d} is world-writable" in key.reason


def test_symlink_is_judged_by_the_real_file_and_its_directory(tmp_path: Path, keydir: Path) -> None:
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o1777)  # sticky or not, a key does not belong in /tmp
    target = write(d / "k.pem", pem(ed_private()))
    (keydir / "link.pem").symlink_to(target)
    key, _ = load(keydir / "link.pem")
    assert isinstance(key, KeyLoadProblem) and "world-writable" in key.reason


@pytest.mark.parametrize(("mode", "expected"), [(0o640, "readable by group or others (mode 0640)"),
                                                (0o604, "readable by group or others (mode 0604)"),
                                                (0o620, "writable by its group (mode 0620)"),
                                                (0o400, None)])
def test_loose_permissions_are_warned(keydir: Path, mode: int, expected: str | None) -> None:
    key, warnings = load(write(keydir / "k.pem", pem(ed_private()), mode))
    assert isinstance(key, SigningKey)
    assert [w.reason.split(";")[0] for w in warnings] == ([expected] if expected else [])


# --- bad files -----------------------------------------------------------------------------------


def test_missing_file(keydir: Path) -> None:
    key, _ = load(keydir / "nope.pem")
    assert isinstance(key, KeyLoadProblem)
    assert str(key) == f"{keydir / 'nope.pem'}: key k: cannot read: No such file or directory"


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "not a PEM private key or a base64 Ed25519 key"),
    (b"hello world\n", "not a PEM private key or a base64 Ed25519 key"),
    (base64.b64encode(b"x" * 31), "not a PEM private key or a base64 Ed25519 key"),
    (b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n",
     "not a readable PEM private key"),
    (b"\x00\xff" * 100, "not a PEM private key or a base64 Ed25519 key"),
])
def test_garbage(keydir: Path, data: bytes, reason: str) -> None:
    key, _ = load(write(keydir / "k.pem", data))
    assert isinstance(key, KeyLoadProblem) and key.reason == reason
    assert_no_material(key, secret=data)


def test_public_key_encrypted_key_and_ec_key_are_refused(keydir: Path) -> None:
    public = rsa_private(2048).public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    encrypted = pem(rsa_private(2048), encryption=serialization.BestAvailableEncryption(b"pass phrase"))
    ec_key = pem(ec.generate_private_key(ec.SECP256R1()))
    reasons = []
    for i, data in enumerate((public, encrypted, ec_key)):
        key, _ = load(write(keydir / f"{i}.pem", data))
        assert isinstance(key, KeyLoadProblem)
        reasons.append(key.reason)
        assert_no_material(key, secret=data)
    assert reasons[0] == "not a readable PEM private key"
    assert reasons[1].startswith("encrypted private keys are not supported")
    assert reasons[2].startswith("unsupported key type") and "RSA or Ed25519" in reasons[2]


def test_not_a_regular_file_and_a_fifo_does_not_hang(keydir: Path) -> None:
    os.mkfifo(keydir / "fifo", 0o600)
    key, _ = load(keydir / "fifo")
    assert isinstance(key, KeyLoadProblem) and key.reason == "not a regular file"
    key, _ = load(keydir)
    assert isinstance(key, KeyLoadProblem)


def test_huge_file_is_not_read(keydir: Path) -> None:
    key, _ = load(write(keydir / "big.pem", b"A" * 100_000))
    assert isinstance(key, KeyLoadProblem) and "larger than 65536 bytes" in key.reason


# --- genkey --------------------------------------------------------------------------------------


def test_genkey_writes_0600_pkcs8_and_refuses_to_overwrite(tmp_path: Path, umask0: None) -> None:
    out = tmp_path / "new" / "keys"
    g = generate_key("Example.COM", "2026a", "rsa", 2048, out)
    path = Path(g.path)
    assert path == out / "example.com.2026a.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # even with umask 0: created so, not chmod-ed
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    data = path.read_bytes()
    assert data.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    key, warnings = load(path)
    assert isinstance(key, SigningKey) and key.bits == 2048 and warnings == []
    with pytest.raises(KeyToolError, match="already exists"):
        generate_key("example.com", "2026a", "ed25519", 2048, out)
    assert path.read_bytes() == data
    assert_no_material(g.zone_text, g.txt, repr(g), secret=data)


@pytest.mark.parametrize(("args", "message"), [
    (("exa mple.com", "s1", "rsa", 2048), "not a host name label"),
    (("example.com", "bad selector", "rsa", 2048), "not a selector"),
    (("example.com", "s1", "dsa", 2048), "rsa or ed25519"),
    (("example.com", "s1", "rsa", 1024), "2048, 3072, 4096 bits"),
])
def test_genkey_refuses_bad_arguments(tmp_path: Path, args: tuple[str, str, str, int], message: str) -> None:
    with pytest.raises(KeyToolError, match=message):
        generate_key(*args, tmp_path)
    assert list(tmp_path.iterdir()) == []


def zone_txt(text: str, origin: str = "example.com") -> bytes:
    """What a real zone file parser makes of the record text: the strings, joined."""
    z = dns.zone.from_text(f"$ORIGIN {origin}.\n$TTL 300\n@ SOA ns hm 1 1 1 1 1\n@ NS ns\n{text}\n",
                           relativize=False)
    for node in z.nodes.values():
        for rdataset in node.rdatasets:
            if rdataset.rdtype == dns.rdatatype.TXT:
                (rdata,) = list(rdataset)
                assert all(len(s) <= 255 for s in rdata.strings)
                return b"".join(rdata.strings)
    raise AssertionError(f"no TXT record in {text!r}")


@pytest.mark.parametrize(("key_type", "bits"), [("rsa", 2048), ("rsa", 4096), ("ed25519", 0)])
def test_record_round_trips_to_the_private_key(tmp_path: Path, key_type: str, bits: int) -> None:
    g = generate_key("example.com", "s1", key_type, bits or 2048, tmp_path)
    assert zone_txt(g.zone_text).decode() == g.txt
    key, _ = load(Path(g.path))
    assert isinstance(key, SigningKey)
    assert g.txt == f"v=DKIM1; k={key_type}; p={key.signer.public_key_b64()}"
    assert check_published(key, DictResolver({"s1._domainkey.example.com": [tuple(
        s.encode() for s in re.findall(r'"([^"]*)"', g.zone_text))]})).ok


def test_record_text_splits_at_255_bytes() -> None:
    txt = "v=DKIM1; k=rsa; p=" + "A" * 700
    text = dns_record_text("s1._domainkey.example.com", txt)
    strings = re.findall(r'"([^"]*)"', text)
    assert [len(s) for s in strings] == [255, 255, 208] and "".join(strings) == txt
    assert text.startswith('s1._domainkey.example.com. IN TXT ( "v=DKIM1; k=rsa; p=')
    assert text.endswith('" )') and text.count("\n") == 2
    assert zone_txt(text).decode() == txt
    short = dns_record_text("e._domainkey.example.com", "v=DKIM1; k=ed25519; p=" + "B" * 44)
    assert short == 'e._domainkey.example.com. IN TXT ( "v=DKIM1; k=ed25519; p=' + "B" * 44 + '" )'


# --- the published record -----------------------------------------------------------------------


@pytest.fixture
def rsa_signing_key(keydir: Path) -> SigningKey:
    key, _ = load(write(keydir / "k.pem", pem(rsa_private(2048))))
    assert isinstance(key, SigningKey)
    return key


def txt(key: SigningKey, extra: str = "") -> bytes:
    return f"v=DKIM1; k={key.signer.key_type}; {extra}p={key.signer.public_key_b64()}".encode()


def test_check_published_ok_and_pkcs1_form(rsa_signing_key: SigningKey) -> None:
    name = rsa_signing_key.record_name
    assert check_published(rsa_signing_key, DictResolver({name: txt(rsa_signing_key)})).status == "ok"
    pkcs1 = rsa_private(2048).public_key().public_bytes(serialization.Encoding.DER,
                                                       serialization.PublicFormat.PKCS1)
    record = b"v=DKIM1; p=" + base64.b64encode(pkcs1)  # k= defaults to rsa
    assert check_published(rsa_signing_key, DictResolver({name: record})).ok
    testing = check_published(rsa_signing_key, DictResolver({name: txt(rsa_signing_key, "t=y; ")}))
    assert testing.ok and "testing mode" in testing.warnings[0]


@pytest.mark.parametrize(("zone", "status", "reason"), [
    ({}, "missing", "no such name"),
    ({"s1._domainkey.example.com": DnsAnswer(DnsStatus.NODATA)}, "missing", "no TXT record"),
    ({"s1._domainkey.example.com": b"v=spf1 -all"}, "missing", "no DKIM key record"),
    ({"s1._domainkey.example.com": DnsAnswer(DnsStatus.TEMPERROR, error="timeout")}, "temperror", "timeout"),
    ({"s1._domainkey.example.com": b"v=DKIM1; k=rsa; p="}, "mismatch", "revoked"),
    ({"s1._domainkey.example.com": b"v=DKIM1; k=ed25519; p=AAAA"}, "mismatch", "k=ed25519"),
    ({"s1._domainkey.example.com": b"v=DKIM1; h=sha1; p=AAAA"}, "mismatch", "h= does not allow sha256"),
    ({"s1._domainkey.example.com": b"v=DKIM1; s=tlsrpt; p=AAAA"}, "mismatch", "s= does not include email"),
    ({"s1._domainkey.example.com": b"v=DKIM1; p=!!!"}, "mismatch", "not base64"),
    ({"s1._domainkey.example.com": b"v=DKIM1; p=AAAA"}, "mismatch", "not an RSA public key"),
])
def test_check_published_problems(rsa_signing_key: SigningKey, zone: dict[str, object], status: str,
                                  reason: str) -> None:
    check = check_published(rsa_signing_key, DictResolver(zone))  # type: ignore[arg-type]
    assert check.status == status and not check.ok and reason in check.reason


def test_check_published_another_key(rsa_signing_key: SigningKey, keydir: Path) -> None:
    other, _ = load(write(keydir / "o.pem", pem(rsa_private(1024))))
    assert isinstance(other, SigningKey)
    check = check_published(rsa_signing_key, DictResolver({rsa_signing_key.record_name: txt(other)}))
    assert check.status == "mismatch" and "differs from the private key" in check.reason
    # During a rotation two records may sit at one name: one of them matching is enough.
    both = DictResolver({rsa_signing_key.record_name: [txt(other), txt(rsa_signing_key)]})
    check = check_published(rsa_signing_key, both)
    assert check.ok and "2 key records" in check.warnings[0]
