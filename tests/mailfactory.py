"""Keys, DNS records and signed messages made by the tests themselves (nothing secret, nothing shared)."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa


@dataclass(frozen=True)
class Key:
    kind: str  # "rsa" | "ed25519"
    private_pem: bytes  # what dkimpy's sign() takes
    public_b64: str

    def txt(self) -> str:
        return f"v=DKIM1; k={self.kind}; p={self.public_b64}"

    def zone_txt(self) -> str:
        """The record as master-file text, split into 255-byte strings."""
        t = self.txt()
        return " ".join(f'"{t[i:i + 255]}"' for i in range(0, len(t), 255))


@cache
def rsa_key(bits: int = 2048, n: int = 0) -> Key:
    k = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                          serialization.NoEncryption())
    der = k.public_key().public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    return Key("rsa", pem, base64.b64encode(der).decode())


@cache
def ed25519_key(n: int = 0) -> Key:
    k = ed25519.Ed25519PrivateKey.generate()
    raw = k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                          serialization.NoEncryption())
    pub = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # dkimpy takes an Ed25519 private key as the base64 of its 32-byte seed.
    return Key("ed25519", base64.b64encode(raw), base64.b64encode(pub).decode())


def private_pem(key: Key) -> bytes:
    """The private key as a PEM file holds it (PKCS#8 for Ed25519, whose dkimpy form is a seed)."""
    if key.kind == "rsa":
        return key.private_pem
    seed = base64.b64decode(key.private_pem)
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def write_private_key(path: Path, key: Key) -> Path:
    """Created with mode 0600 from the start, as a key file must be."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem(key))
    return path


def make_message(*, from_: str = "Alice <alice@example.org>", to: str = "bob@example.com",
                 subject: str = "Hello", body: bytes = b"Hi Bob,\r\n\r\nSee you.\r\n",
                 extra_headers: tuple[bytes, ...] = (), message_id: str = "<1@example.org>") -> bytes:
    head = [
        f"From: {from_}".encode(),
        f"To: {to}".encode(),
        f"Subject: {subject}".encode(),
        b"Date: Fri, 27 Nov 2026 12:00:00 +0000",
        f"Message-ID: {message_id}".encode(),
        *extra_headers,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def sign(message: bytes, *, domain: str, selector: str, key: Key,
         canonicalize: tuple[bytes, bytes] = (b"relaxed", b"relaxed"),
         headers: list[bytes] | None = None) -> bytes:
    """The message with a DKIM-Signature on top, made by dkimpy."""
    sig = dkim.sign(
        message, selector.encode(), domain.encode(), key.private_pem,
        canonicalize=canonicalize,
        include_headers=headers or [b"from", b"to", b"subject", b"date", b"message-id"],
        signature_algorithm=b"ed25519-sha256" if key.kind == "ed25519" else b"rsa-sha256",
    )
    return bytes(sig) + message
