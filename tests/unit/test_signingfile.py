"""Tests for authmilter.files.signing: a valid file loads; every mistake is named as file:line: key:
reason."""

from __future__ import annotations

import ipaddress
import os
import textwrap
from functools import cache
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from authmilter.core.signing.dkim import DEFAULT_HEADERS, SignEntry, SigningSettings
from authmilter.files.policy import Problem
from authmilter.files.signing import SigningError, lint_signing, load_signing

ROOT = Path(__file__).resolve().parents[2]


@cache
def rsa_pem(bits: int = 2048) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@cache
def ed_pem() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def put(path: Path, data: bytes, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    put(keys / "rsa.pem", rsa_pem())
    put(keys / "ed.pem", ed_pem())
    return tmp_path


KEYS = """
[keys.rsa]
domain = "example.com"
selector = "2026a"
file = "keys/rsa.pem"

[keys.ed]
domain = "example.com"
selector = "2026e"
file = "keys/ed.pem"
"""

SIGN = """
[[sign]]
match = ["example.com", "*.example.com"]
keys = ["rsa", "ed"]
"""


def write(workdir: Path, text: str, name: str = "signing.toml") -> Path:
    path = workdir / name
    path.write_text(textwrap.dedent(text))
    return path


def errors(workdir: Path, text: str) -> list[str]:
    path = write(workdir, text)
    with pytest.raises(SigningError) as info:
        load_signing(path)
    found, _ = lint_signing(path)
    assert [str(p) for p in found] == [str(p) for p in info.value.problems]
    return [str(p).replace(str(path), "F") for p in info.value.problems]


def one_error(workdir: Path, text: str) -> str:
    found = errors(workdir, text)
    assert len(found) == 1, found
    return found[0]


# --- a good file ---------------------------------------------------------------------------------


def test_full_file_loads(workdir: Path) -> None:
    path = write(workdir, """
        [settings]
        authenticated = false
        internal_networks = ["10.0.0.0/8", "2001:db8::/32", "::ffff:192.0.2.0/120"]
        daemons = ["submission", "smtps"]
        canonicalization = "Simple/Relaxed"
        headers = ["From", "To", "Subject", "X-Custom"]
        oversign = ["from", "subject"]
        expire = 604800
        on_key_error = "accept"
        on_bad_author = "tempfail"
        verify_signed = true
        """ + KEYS + """
        [[sign]]
        match = "alice@Example.com"
        keys = ["ed"]
        identity = "alice@example.com"

        [[sign]]
        match = ["example.com", "*.example.com"]
        keys = ["rsa", "ed"]

        [[sign]]
        match = ["bounce.example.com"]
        keys = ["rsa"]
        use_sender_domain = true
        """)
    config, warnings = load_signing(path)
    assert warnings == []
    assert config.settings == SigningSettings(
        authenticated=False,
        internal_networks=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"),
                           ipaddress.ip_network("192.0.2.0/24")),
        daemons=("submission", "smtps"), canonicalization="simple/relaxed",
        headers=("from", "to", "subject", "x-custom"), oversign=("from", "subject"),
        expire_seconds=604800, on_key_error="accept", on_bad_author="tempfail", verify_signed=True)
    assert config.entries == (
        SignEntry(("alice@example.com",), ("ed",), "alice@example.com", False, f"{path}:24"),
        SignEntry(("example.com", "*.example.com"), ("rsa", "ed"), "", False, f"{path}:29"),
        SignEntry(("bounce.example.com",), ("rsa",), "", True, f"{path}:33"),
    )
    assert sorted(config.keys) == ["ed", "rsa"] and dict(config.unavailable) == {}
    assert (config.keys["rsa"].algorithm, config.keys["rsa"].selector) == ("rsa-sha256", "2026a")
    assert config.keys["ed"].algorithm == "ed25519-sha256"
    assert config.file == str(path)


def test_defaults(workdir: Path) -> None:
    config, _ = load_signing(write(workdir, KEYS + SIGN))
    assert config.settings == SigningSettings()
    assert config.settings.headers == DEFAULT_HEADERS
    assert config.settings.canonicalization == "relaxed/relaxed"
    empty, warnings = load_signing(write(workdir, "", "empty.toml"))
    assert empty.entries == () and warnings == []


def test_key_paths_are_relative_to_the_signing_file(workdir: Path, tmp_path_factory: pytest.TempPathFactory,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    config, warnings = load_signing(write(workdir, KEYS + SIGN))
    assert warnings == [] and sorted(config.keys) == ["ed", "rsa"]
    absolute = KEYS.replace('"keys/rsa.pem"', f'"{workdir / "keys" / "rsa.pem"}"')
    config, _ = load_signing(write(workdir, absolute + SIGN, "abs.toml"))
    assert "rsa" in config.keys


# --- key problems are warnings, the key unavailable -------------------------------------------


def test_unavailable_keys_are_warnings_with_file_and_line(workdir: Path) -> None:
    put(workdir / "keys" / "weak.pem", rsa_pem(1024), 0o640)
    put(workdir / "keys" / "garbage.pem", b"not a key")
    put(workdir / "keys" / "open.pem", ed_pem(), 0o666)
    path = write(workdir, """
        [keys.missing]
        domain = "example.com"
        selector = "m"
        file = "keys/missing.pem"

        [keys.weak]
        domain = "example.com"
        selector = "w"
        file = "keys/weak.pem"

        [keys.garbage]
        domain = "example.com"
        selector = "g"
        file = "keys/garbage.pem"

        [keys.open]
        domain = "example.com"
        selector = "o"
        file = "keys/open.pem"

        [keys.spare]
        domain = "example.com"
        selector = "spare"
        file = "keys/ed.pem"

        [[sign]]
        match = "*"
        keys = ["missing", "weak", "garbage", "open"]
        """)
    config, warnings = load_signing(path)
    k = workdir / "keys"
    assert [str(w).replace(str(path), "F") for w in warnings] == [
        f"F:5: keys.missing.file: key unavailable: {k}/missing.pem: cannot read: No such file or directory",
        f"F:10: keys.weak.file: {k}/weak.pem: weak RSA key of 1024 bits; use at least 2048 (RFC 8301)",
        f"F:10: keys.weak.file: {k}/weak.pem: readable by group or others (mode 0640); chmod 600 it",
        f"F:15: keys.garbage.file: key unavailable: {k}/garbage.pem: not a PEM private key or a base64 "
        "Ed25519 key",
        f"F:20: keys.open.file: key unavailable: {k}/open.pem: refused: the key file is world-writable, so "
        "anyone could replace it",
        "F:22: keys.spare: not used by any [[sign]] entry",
    ]
    assert sorted(config.keys) == ["spare", "weak"]
    assert sorted(config.unavailable) == ["garbage", "missing", "open"]
    assert "No such file" in config.unavailable["missing"]
    assert not any("PRIVATE KEY" in str(w) for w in warnings)


def test_the_shipped_example_loads_with_its_keys_unavailable() -> None:
    config, warnings = load_signing(ROOT / "etc" / "signing.example.toml")
    assert len(config.entries) == 1 and config.entries[0].keys == ("example-rsa", "example-ed")
    assert sorted(config.unavailable) == ["example-ed", "example-rsa"]
    assert all("key unavailable" in w.reason for w in warnings) and len(warnings) == 2


def test_short_expiry_is_warned(workdir: Path) -> None:
    _, warnings = load_signing(write(workdir, "[settings]\nexpire = 3600\n" + KEYS + SIGN))
    assert [w.key for w in warnings] == ["settings.expire"] and warnings[0].line == 2


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ('[setings]\nauthenticated = true\n', "F:1: setings: unknown key (did you mean 'settings'?)"),
    ('[settings]\nauthenticate = true\n',
     "F:2: settings.authenticate: unknown key (did you mean 'authenticated'?)"),
    ('[settings]\nauthenticated = "yes"\n',
     "F:2: settings.authenticated: expected true or false, got a string"),
    ('[settings]\nverify_signed = 1\n',
     "F:2: settings.verify_signed: expected true or false, got an integer"),
    ('[settings]\ninternal_networks = [\n  "10.0.0.0/8",\n  "10.0.0.300/8",\n]\n',
     "F:4: settings.internal_networks: '10.0.0.300/8' is not an IP address or CIDR network"),
    ('[settings]\ninternal_networks = ["10.0.0.1/8"]\n',
     "F:2: settings.internal_networks: '10.0.0.1/8' has host bits set (the network is 10.0.0.0/8)"),
    ('[settings]\ninternal_networks = "10.0.0.0/8"\n',
     "F:2: settings.internal_networks: expected a list of strings, got a string"),
    ('[settings]\ndaemons = ["sub mission"]\n', "F:2: settings.daemons: 'sub mission' is not a name"),
    ('[settings]\ncanonicalization = "relaxed"\n',
     "F:2: settings.canonicalization: must be header/body, one of relaxed/relaxed"),
    ('[settings]\ncanonicalization = "fancy/simple"\n',
     "F:2: settings.canonicalization: must be one of relaxed/relaxed, relaxed/simple"),
    ('[settings]\ncanonicalization = 1\n', "F:2: settings.canonicalization: expected a string"),
    ('[settings]\nheaders = ["to", "subject"]\n', "F:2: settings.headers: must include From"),
    ('[settings]\nheaders = [\n "from",\n "Received",\n]\n',
     "F:4: settings.headers: Received must not be signed: it changes in transit"),
    ('[settings]\nheaders = ["from", "bad name"]\n',
     "F:2: settings.headers: 'bad name' is not a header field name"),
    ('[settings]\nheaders = ["from", "To", "to"]\n', "F:2: settings.headers: to is listed twice"),
    ('[settings]\noversign = ["dkim-signature"]\n',
     "F:2: settings.oversign: dkim-signature must not be signed"),
    ('[settings]\nheaders = "from"\n', "F:2: settings.headers: expected a list of header field names"),
    ('[settings]\nexpire = -1\n',
     "F:2: settings.expire: must be 0 (no x=) or a positive number of seconds, got -1"),
    ('[settings]\nexpire = true\n', "F:2: settings.expire: expected a number of seconds, got a boolean"),
    ('[settings]\nexpire = 1.5\n', "F:2: settings.expire: expected a number of seconds, got a number"),
    ('[settings]\non_key_error = "reject"\n',
     "F:2: settings.on_key_error: must be one of tempfail, accept, got 'reject'"),
    ('[settings]\non_bad_author = "discard"\n',
     "F:2: settings.on_bad_author: must be one of reject, tempfail, accept, got 'discard'"),
    ('settings = 1\n', "F:1: settings: expected a table, got an integer"),
    ('sign = 1\n', "F:1: sign: expected [[sign]] tables"),
])
def test_settings_errors(workdir: Path, text: str, expected: str) -> None:
    assert one_error(workdir, text).startswith(expected)


@pytest.mark.parametrize(("text", "expected"), [
    ('[keys.a]\ndomain = "example.com"\nselector = "s"\n', "F:1: keys.a: missing file"),
    ('[keys.a]\ndomain = "exa mple.com"\nselector = "s"\nfile = "x"\n',
     "F:2: keys.a.domain: 'exa mple.com' is not a domain name"),
    ('[keys.a]\ndomain = "example.com"\nselector = "bad selector"\nfile = "x"\n',
     "F:3: keys.a.selector: 'bad selector' is not a selector"),
    ('[keys.a]\ndomain = "example.com"\nselector = "s"\nfile = ""\n',
     "F:4: keys.a.file: expected a non-empty string"),
    ('[keys.a]\ndomain = "example.com"\nselector = "s"\nfile = "x"\npath = "y"\n',
     "F:5: keys.a.path: unknown key (expected one of: domain, selector, file)"),
    ('[keys.A]\ndomain = "example.com"\nselector = "s"\nfile = "x"\n',
     'F:1: keys.A: key names are 1-64 lower-case letters'),
    ('[keys]\na = 1\n', "F:2: keys.a: expected a table, got an integer"),
    ('[keys.a]\ndomain = "example.com"\nselector = "s"\nfile = "x"\n'
     '[keys.b]\ndomain = "Example.com"\nselector = "S"\nfile = "y"\n',
     "F:7: keys.b.selector: same domain and selector as key a"),
    ('[keys.a]\ndomain = "example.com"\nselector = "s"\nfile = "x"\n[keys.a]\nfile = "y"\n',
     "F:5: invalid TOML"),
])
def test_key_table_errors(workdir: Path, text: str, expected: str) -> None:
    assert one_error(workdir, text).startswith(expected)


@pytest.mark.parametrize(("sign", "expected"), [
    ('[[sign]]\nkeys = ["rsa"]\n', "F:11: sign[1].match: missing"),
    ('[[sign]]\nmatch = "example.com"\n', "F:11: sign[1].keys: missing"),
    ('[[sign]]\nmatch = []\nkeys = ["rsa"]\n',
     "F:12: sign[1].match: empty list: the entry would never match"),
    ('[[sign]]\nmatch = "example.com"\nkeys = []\n',
     "F:13: sign[1].keys: empty list: the entry would sign nothing"),
    ('[[sign]]\nmatch = "example.com"\nkeys = ["rsa", "nope"]\n',
     "F:13: sign[1].keys: unknown key 'nope' (keys: ed, rsa)"),
    ('[[sign]]\nmatch = "example.com"\nkeys = ["rsa", "rsa"]\n',
     "F:13: sign[1].keys: key 'rsa' is listed twice"),
    ('[[sign]]\nmatch = [\n  "example.com",\n  "exa mple.com",\n]\nkeys = ["rsa"]\n',
     "F:14: sign[1].match: 'exa mple.com' can never match: 'exa mple.com' is not a domain name"),
    ('[[sign]]\nmatch = ["mail.*.example.com"]\nkeys = ["rsa"]\n',
     "F:12: sign[1].match: 'mail.*.example.com' can never match: '*' is allowed only alone"),
    ('[[sign]]\nmatch = ["example.com", "Example.com"]\nkeys = ["rsa"]\n',
     "F:12: sign[1].match: 'Example.com' is listed twice"),
    ('[[sign]]\nmatch = 5\nkeys = ["rsa"]\n', "F:12: sign[1].match: expected a string or a list of strings"),
    ('[[sign]]\nmatch = "example.com"\nkeys = ["rsa"]\nidentity = "@example.org"\n',
     "F:14: sign[1].identity: i=@example.org is outside d=example.com of key 'rsa'"),
    ('[[sign]]\nmatch = "example.com"\nkeys = ["rsa"]\nidentity = "example.com"\n',
     "F:14: sign[1].identity: must be an address or '@domain'"),
    ('[[sign]]\nmatch = "example.com"\nkeys = ["rsa"]\nuse_sender_domain = "yes"\n',
     "F:14: sign[1].use_sender_domain: expected true or false, got a string"),
    ('[[sign]]\nmatch = "example.com"\nkeys = ["rsa"]\nkey = "ed"\n',
     "F:14: sign[1].key: unknown key (did you mean 'keys'?)"),
    ('[[sign]]\nmatch = "*"\nkeys = ["rsa"]\n\n[[sign]]\nmatch = ["a@example.com"]\nkeys = ["ed"]\n',
     "F:16: sign[2].match: 'a@example.com' never matches: "
     "sign[1] at F:11 matches everything it matches first"),
    ('[[sign]]\nmatch = "*.example.com"\nkeys = ["rsa"]\n\n'
     '[[sign]]\nmatch = ["example.com", "mail.example.com"]\nkeys = ["ed"]\n',
     "F:16: sign[2].match: 'mail.example.com' never matches: sign[1] at F:11"),
])
def test_sign_errors(workdir: Path, sign: str, expected: str) -> None:
    text = KEYS.lstrip("\n") + "\n" + sign
    assert one_error(workdir, text).startswith(expected)


def test_sender_entries_are_not_shadowed_by_author_entries(workdir: Path) -> None:
    config, _ = load_signing(write(workdir, KEYS + """
        [[sign]]
        match = "*"
        keys = ["rsa"]

        [[sign]]
        match = "bounce.example.com"
        keys = ["ed"]
        use_sender_domain = true
        """))
    assert len(config.entries) == 2


def test_every_problem_at_once_in_line_order(workdir: Path) -> None:
    found = errors(workdir, """
        [settings]
        expire = -5
        on_key_error = "maybe"

        [keys.a]
        domain = "example.com"

        [[sign]]
        match = "exa mple.com"
        keys = ["b"]
        """)
    assert [p.split(":")[1] for p in found] == ["3", "4", "6", "6", "10", "11"]


def test_not_utf8_and_invalid_toml_and_unreadable(workdir: Path) -> None:
    path = workdir / "bad.toml"
    path.write_bytes(b'[settings]\n# caf\xe9\nauthenticated = true\n')
    with pytest.raises(SigningError) as info:
        load_signing(path)
    assert [str(p) for p in info.value.problems] == [f"{path}:2: not UTF-8 (byte 0xe9)"]
    path.write_bytes(b'[settings]\nauthenticated = \n')
    with pytest.raises(SigningError) as info:
        load_signing(path)
    assert str(info.value).startswith(f"{path}:2: invalid TOML:")
    errs, warnings = lint_signing(workdir / "nope.toml")
    assert [str(p) for p in errs] == [f"{workdir / 'nope.toml'}: cannot read: No such file or directory"]
    assert isinstance(errs[0], Problem) and errs[0].line == 0 and warnings == []
