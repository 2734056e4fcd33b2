"""DKIM private keys on disk: loading them for signing, generating new ones, checking their DNS.

The I/O half of signing: files are opened and checked here, and the core gets parsed keys
(`authmilter.core.signing.dkim.SigningKey`). Rules kept:

* Key material never appears in a message, a log line or an exception we raise: reasons are our
  own words, never the text of a parser's exception.
* A key file anyone could replace is no key of ours: a world-writable file or directory is
  refused. A file others can read is still used (refusing would stop mail) but warned about.
* Keys are written once, with O_EXCL and mode 0600 from the first byte: never written and then
  chmod-ed (a window in which others could read it), never over an existing key.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.util import InvalidTagValueList, parse_tag_value

from authmilter.core.dnsapi import DnsStatus, Resolver
from authmilter.core.names import normalize_domain
from authmilter.core.signing.dkim import Ed25519Signer, RsaSigner, SigningKey
from authmilter.files.access import Account

__all__ = [
    "GENKEY_RSA_BITS",
    "MAX_KEY_FILE_BYTES",
    "MIN_RSA_BITS",
    "WEAK_RSA_BITS",
    "GeneratedKey",
    "KeyCheck",
    "KeyLoadProblem",
    "KeyToolError",
    "check_published",
    "dns_record_text",
    "generate_key",
    "load_key",
    "normalize_selector",
]

MIN_RSA_BITS = 1024  # RFC 8301 3.2: verifiers MUST NOT accept less, so signing with less is futile
WEAK_RSA_BITS = 2048  # RFC 8301 3.2: signers SHOULD use at least this
GENKEY_RSA_BITS = (2048, 3072, 4096)
# An RSA-16384 PEM is ~12 KB; anything far larger is not a key and is not read into memory.
MAX_KEY_FILE_BYTES = 65536
TXT_STRING_MAX = 255  # RFC 1035 3.3.14: one character-string holds at most 255 bytes

_SELECTOR_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")


class KeyToolError(Exception):
    """genkey cannot do what was asked; str() is the operator-facing reason."""


@dataclass(frozen=True)
class KeyLoadProblem:
    """Why a key cannot be used (fatal), or what is wrong with one that is used anyway."""

    name: str
    path: str
    reason: str
    fatal: bool = True

    def __str__(self) -> str:
        return f"{self.path}: key {self.name}: {self.reason}"


def normalize_selector(text: str) -> str:
    """A selector as a lower-case DNS name (RFC 6376 3.1); ValueError says why not."""
    name = text.strip().lower()
    if not name or not all(_SELECTOR_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"{text!r} is not a selector (DNS labels of letters, digits, '-' and '_')")
    return name


# --- loading ------------------------------------------------------------------------------------


def load_key(name: str, domain: str, selector: str, path: str | Path,
             warnings: list[KeyLoadProblem] | None = None) -> SigningKey | KeyLoadProblem:
    """The key in `path`, parsed once, or why it cannot be used.

    Formats: PEM (PKCS#1 or PKCS#8 RSA, PKCS#8 Ed25519), and the base64 Ed25519 key dkimpy and
    OpenDKIM take (the 32-byte seed, or libsodium's 64-byte seed + public key). Problems that do
    not stop the key from being used are appended to `warnings`.
    """
    where = str(path)

    def problem(reason: str, fatal: bool = True) -> KeyLoadProblem:
        return KeyLoadProblem(name, where, reason, fatal)

    try:
        data, mode, dir_mode, directory = _read(where)
    except _Refused as e:
        return problem(str(e))
    except OSError as e:
        return problem(f"cannot read: {e.strerror or type(e).__name__}")
    if mode & stat.S_IWOTH:
        return problem("refused: the key file is world-writable, so anyone could replace it")
    if dir_mode & stat.S_IWOTH:
        return problem(f"refused: its directory {directory} is world-writable, so anyone could "
                       "replace the key")
    parsed = _parse(data)
    if isinstance(parsed, str):
        return problem(parsed)
    notes: list[KeyLoadProblem] = []
    if isinstance(parsed, rsa.RSAPrivateKey):
        bits = parsed.key_size
        if bits < MIN_RSA_BITS:
            return problem(f"refused: RSA key of {bits} bits; verifiers reject keys under "
                           f"{MIN_RSA_BITS} bits (RFC 8301)")
        if bits < WEAK_RSA_BITS:
            notes.append(problem(f"weak RSA key of {bits} bits; use at least {WEAK_RSA_BITS} "
                                 "(RFC 8301)", fatal=False))
        key = SigningKey(name, domain, selector, "rsa-sha256", RsaSigner(parsed), bits, where)
    else:
        key = SigningKey(name, domain, selector, "ed25519-sha256", Ed25519Signer(parsed), 256, where)
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        notes.append(problem(f"readable by group or others (mode {stat.S_IMODE(mode):04o}); "
                             "chmod 600 it", fatal=False))
    elif mode & stat.S_IWGRP:
        notes.append(problem(f"writable by its group (mode {stat.S_IMODE(mode):04o}); chmod 600 it",
                             fatal=False))
    if warnings is not None:
        warnings.extend(notes)
    return key


class _Refused(Exception):
    pass


def _read(path: str) -> tuple[bytes, int, int, str]:
    """(contents, file mode, mode of the directory holding the real file, that directory)."""
    # O_NONBLOCK: a FIFO put where the key should be must not hang the milter's reload.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)  # the file we actually read, not whatever the name points to later
        if not stat.S_ISREG(st.st_mode):
            raise _Refused("not a regular file")
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise _Refused(f"larger than {MAX_KEY_FILE_BYTES} bytes: not a key file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_KEY_FILE_BYTES:
            chunk = os.read(fd, MAX_KEY_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_KEY_FILE_BYTES:
            raise _Refused(f"larger than {MAX_KEY_FILE_BYTES} bytes: not a key file")
    finally:
        os.close(fd)
    # Whoever can write the directory of the real file can swap the key under a symlink too.
    directory = os.path.dirname(os.path.realpath(path)) or "."
    return b"".join(chunks), st.st_mode, os.stat(directory).st_mode, directory


def _parse(data: bytes) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | str:
    """The private key, or why the data is not one we can use (never quoting the data)."""
    if b"-----BEGIN" in data:
        if b"ENCRYPTED" in data:
            return "encrypted private keys are not supported (nobody could type the pass phrase)"
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            return "not a readable PEM private key"
        if isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            return key
        return f"unsupported key type {type(key).__name__.removeprefix('_')}: DKIM signs with RSA or Ed25519"
    try:
        raw = base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) not in (32, 64):
        return "not a PEM private key or a base64 Ed25519 key"
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(raw[:32])
    if len(raw) == 64 and raw[32:] != ed.public_key().public_bytes(serialization.Encoding.Raw,
                                                                   serialization.PublicFormat.Raw):
        # libsodium's form carries the public key; one that does not belong to the seed is corrupt.
        return "not a valid Ed25519 key (its public half does not match its seed)"
    return ed


# --- generating ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedKey:
    path: str
    domain: str
    selector: str
    record_name: str  # "selector._domainkey.domain"
    txt: str  # the record's value, unsplit
    zone_text: str  # the master-file line(s) to paste
    algorithm: str


def generate_key(domain: str, selector: str, key_type: str = "rsa", bits: int = 2048,
                 out_dir: str | Path = ".", owner: Account | None = None) -> GeneratedKey:
    """Write a new private key (PEM PKCS#8, mode 0600) to OUT/DOMAIN.SELECTOR.pem.

    With `owner` (root only), the file is that account's, so that the service running as it can
    read the key; a directory made for it is root's, in the owner's group, mode 0750.
    Raises KeyToolError for a bad name, type or size, or when the file already exists.
    """
    if owner is not None and not owner.is_current and os.geteuid() != 0:
        raise KeyToolError(f"only root can make a key for {owner.name} (--user)")
    try:
        domain = normalize_domain(domain)
        selector = normalize_selector(selector)
    except ValueError as e:
        raise KeyToolError(str(e)) from None
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if key_type == "rsa":
        if bits not in GENKEY_RSA_BITS:
            raise KeyToolError(f"RSA keys are {', '.join(map(str, GENKEY_RSA_BITS))} bits, not {bits}")
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        signer: RsaSigner | Ed25519Signer = RsaSigner(private)
        algorithm = "rsa-sha256"
    elif key_type == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
        signer = Ed25519Signer(private)
        algorithm = "ed25519-sha256"
    else:
        raise KeyToolError(f"key type must be rsa or ed25519, not {key_type!r}")
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    directory = Path(out_dir)
    made = not directory.exists()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if made and owner is not None and not owner.is_current:
            # The service may enter and read, never add or swap files.
            os.chown(directory, -1, owner.gid)
            os.chmod(directory, 0o750)
    except OSError as e:
        raise KeyToolError(f"cannot create {directory}: {e.strerror or type(e).__name__}") from None
    path = directory / f"{domain}.{selector}.pem"
    _write_new(path, pem, owner)
    txt = f"v=DKIM1; k={signer.key_type}; p={signer.public_key_b64()}"
    record_name = f"{selector}._domainkey.{domain}"
    return GeneratedKey(str(path), domain, selector, record_name, txt, dns_record_text(record_name, txt),
                        algorithm)


def _write_new(path: Path, data: bytes, owner: Account | None = None) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyToolError(f"{path} already exists; refusing to overwrite a key") from None
    except OSError as e:
        raise KeyToolError(f"cannot create {path}: {e.strerror or type(e).__name__}") from None
    try:
        if owner is not None and not owner.is_current:
            # Before the first byte, so the key is never root's copy that later changes hands.
            os.fchown(fd, owner.uid, owner.gid)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        path.unlink(missing_ok=True)  # half a key is worse than none
        raise KeyToolError(f"cannot write {path}: {e.strerror or type(e).__name__}") from None
    os.close(fd)


def dns_record_text(record_name: str, txt: str) -> str:
    """The TXT record as master-file text: `NAME. IN TXT ( "..." "..." )`, one string per line.

    Each string holds at most 255 bytes (RFC 1035); verifiers join them with nothing in between
    (RFC 6376 3.6.2.2), so splitting anywhere is safe. Parentheses let the record span lines.
    """
    data = txt.encode("ascii")
    strings = [data[i:i + TXT_STRING_MAX].decode("ascii") for i in range(0, len(data), TXT_STRING_MAX)]
    body = "\n\t".join(f'"{s}"' for s in strings)
    return f"{record_name}. IN TXT ( {body} )"


# --- checking what is published -----------------------------------------------------------------


@dataclass(frozen=True)
class KeyCheck:
    """status: ok | missing (no key record) | mismatch (a record, not this key's) | temperror"""

    status: str
    reason: str
    warnings: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def check_published(key: SigningKey, resolver: Resolver) -> KeyCheck:
    """Whether the key record at selector._domainkey.domain holds this private key's public key."""
    name = key.record_name
    answer = resolver.query(name, "TXT")
    if answer.status is DnsStatus.TEMPERROR:
        return KeyCheck("temperror", f"{name}: lookup failed ({answer.error or 'temporary error'})")
    if answer.status is not DnsStatus.OK:
        kind = "no such name" if answer.status is DnsStatus.NXDOMAIN else "no TXT record"
        return KeyCheck("missing", f"{name}: {kind}")
    records: list[dict[bytes, bytes]] = []
    for text in answer.txt_strings():
        try:
            tags: dict[bytes, bytes] = parse_tag_value(text)
        except InvalidTagValueList:
            continue
        if tags.get(b"v", b"DKIM1") == b"DKIM1" and b"p" in tags:
            records.append(tags)
    if not records:
        return KeyCheck("missing", f"{name}: no DKIM key record among its TXT records")
    ours = base64.b64decode(key.signer.public_key_b64())
    why: list[str] = []
    for tags in records:
        problem = _record_problem(tags, key.signer.key_type, ours, key.algorithm)
        if problem is None:
            notes = []
            if b"y" in [f.strip() for f in tags.get(b"t", b"").split(b":")]:
                notes.append(f"{name}: the record is in testing mode (t=y)")
            if len(records) > 1:
                notes.append(f"{name}: {len(records)} key records published; verifiers may try "
                             "only one")
            return KeyCheck("ok", f"{name}: published key matches ({key.algorithm}, {key.bits} bits)",
                            tuple(notes))
        why.append(problem)
    return KeyCheck("mismatch", f"{name}: " + "; ".join(dict.fromkeys(why)))


def _record_problem(tags: dict[bytes, bytes], key_type: str, ours: bytes, algorithm: str) -> str | None:
    published_type = tags.get(b"k", b"rsa").strip().lower().decode("ascii", "replace")
    if published_type != key_type:
        return f"record has k={published_type}, the key is {key_type}"
    p = re.sub(rb"\s+", b"", tags[b"p"])
    if not p:
        return "record is revoked (empty p=)"
    if b"h" in tags and b"sha256" not in [h.strip().lower() for h in tags[b"h"].split(b":")]:
        return f"record's h= does not allow sha256, which {algorithm} needs"
    services = [s.strip().lower() for s in tags.get(b"s", b"*").split(b":")]
    if b"*" not in services and b"email" not in services:
        return "record's s= does not include email"
    try:
        published = base64.b64decode(p, validate=True)
    except (binascii.Error, ValueError):
        return "record's p= is not base64"
    if key_type == "ed25519":
        return None if published == ours else "published public key differs from the private key's"
    try:
        # SubjectPublicKeyInfo (what everyone publishes) or a bare PKCS#1 RSAPublicKey.
        public = serialization.load_der_public_key(published)
    except (ValueError, UnsupportedAlgorithm):
        return "record's p= is not an RSA public key"
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return None if spki == ours else "published public key differs from the private key's"
