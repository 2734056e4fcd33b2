"""CPU cost of outbound DKIM signing against verification and against dkimpy's own signing.

    python -m benchmarks.signing [-n ITERATIONS] [--sizes 2,10,100]

For 2 KB, 10 KB and 100 KB messages it prints the CPU time (time.process_time, so other load on
the machine does not count) per message of:

  sign rsa / ed25519 / both   authmilter.core.signing.dkim.sign_message with an RSA-2048 key, an
                              Ed25519 key, and both at once (two signatures)
  verify rsa / ed / both      authmilter.core.checks.dkim.verify_dkim on the signed message, keys from
                              an in-memory resolver (no network, no cache misses to wait for)
  dkimpy rsa / ed25519        dkim.sign(), which parses the PEM each time and signs RSA in pure
                              Python: what signing would cost without our OpenSSL adapter

Keys are generated fresh at start-up; nothing is read from or written to disk.
"""

from __future__ import annotations

import argparse
import base64
import time
from collections.abc import Callable, Sequence
from functools import partial
from types import MappingProxyType

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from authmilter.core.checks.dkim import verify_dkim
from authmilter.core.dnsapi import DnsAnswer, DnsStatus
from authmilter.core.message import split_message
from authmilter.core.model import Transaction
from authmilter.core.signing.dkim import (
    Ed25519Signer,
    RsaSigner,
    SignEntry,
    SigningConfig,
    SigningKey,
    SigningOutcome,
    sign_message,
)

DOMAIN = "example.com"


class MemoryResolver:
    """TXT answers from a dict: the cost of DNS is not what is measured here."""

    def __init__(self, records: dict[str, bytes]) -> None:
        self.records = records

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        record = self.records.get(name.rstrip(".").lower())
        if record is None or rdtype != "TXT":
            return DnsAnswer(DnsStatus.NXDOMAIN)
        return DnsAnswer(DnsStatus.OK, ((record,),), ttl=300)


def message(size: int, *, indented: bool = False) -> bytes:
    """A text/plain message of about `size` bytes; `indented`: lines start with runs of spaces,
    as in HTML or quoted code, which relaxed canonicalization has to rewrite."""
    head = (b"From: Alice Example <alice@example.com>\r\n"
            b"To: Bob Example <bob@example.net>, Carol <carol@example.org>\r\n"
            b"Subject: Quarterly figures and the plan for next year\r\n"
            b"Date: Fri, 27 Nov 2026 12:00:00 +0000\r\n"
            b"Message-ID: <20261127120000.12345@mail.example.com>\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n"
            b"Received: from client.example.com (client.example.com [192.0.2.10])\r\n"
            b"\tby mail.example.com (Postfix) with ESMTPSA id 4XyZ1\r\n"
            b"\r\n")
    line = b"Please find the figures attached; the caf\xc3\xa9 budget is unchanged since June.\r\n"
    if indented:
        line = b"        <td class=\"figure\">" + line
    body = (line * (size // len(line) + 1))[: max(0, size - len(head))]
    return head + body.rsplit(b"\r\n", 1)[0] + b"\r\n"


def cpu_per_call(fn: Callable[[], object], iterations: int) -> float:
    """Seconds of CPU per call, after one warm-up call."""
    fn()
    start = time.process_time()
    for _ in range(iterations):
        fn()
    return (time.process_time() - start) / iterations


def with_signatures(raw: bytes, outcome: SigningOutcome) -> bytes:
    return b"".join(b"DKIM-Signature: " + v.encode() + b"\r\n" for v in reversed(outcome.signatures)) + raw


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.signing", description=__doc__.split("\n")[0])
    p.add_argument("-n", "--iterations", type=int, default=200, help="calls per figure (default 200)")
    p.add_argument("--sizes", default="2,10,100", help="message sizes in KB (default 2,10,100)")
    p.add_argument("--indented-size", type=int, default=10,
                   help="KB of a message whose lines start with runs of spaces (0: leave it out)")
    args = p.parse_args(argv)
    n = max(1, args.iterations)

    rsa_private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_private = ed25519.Ed25519PrivateKey.generate()
    rsa_key = SigningKey("rsa", DOMAIN, "rsa", "rsa-sha256", RsaSigner(rsa_private), 2048)
    ed_key = SigningKey("ed", DOMAIN, "ed", "ed25519-sha256", Ed25519Signer(ed_private), 256)
    keys = MappingProxyType({"rsa": rsa_key, "ed": ed_key})
    configs = {name: SigningConfig(entries=(SignEntry((DOMAIN,), names),), keys=keys)
               for name, names in (("rsa", ("rsa",)), ("ed", ("ed",)), ("both", ("rsa", "ed")))}
    resolver = MemoryResolver({k.record_name: f"v=DKIM1; k={k.signer.key_type}; p={k.signer.public_key_b64()}"
                               .encode() for k in (rsa_key, ed_key)})
    rsa_pem = rsa_private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    ed_seed = base64.b64encode(ed_private.private_bytes(serialization.Encoding.Raw,
                                                        serialization.PrivateFormat.Raw,
                                                        serialization.NoEncryption()))
    headers = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
               b"content-transfer-encoding"]

    columns = ("sign rsa", "sign ed", "sign both", "verify rsa", "verify ed", "verify both",
               "dkimpy rsa", "dkimpy ed")
    print(f"CPU ms per message, {n} iterations each (time.process_time)")
    print(f"{'message':>9}  " + "  ".join(f"{c:>11}" for c in columns))
    runs = [(f"{kb} KB", message(kb * 1024)) for kb in (int(s) for s in args.sizes.split(","))]
    if args.indented_size:
        runs.append((f"{args.indented_size} KB ind", message(args.indented_size * 1024, indented=True)))
    for label, raw in runs:
        fields, body = split_message(raw)
        tx = Transaction("192.0.2.10", "client.example.com", "alice@example.com", headers=fields, body=body,
                         macros=MappingProxyType({"{auth_authen}": "alice"}))
        now = time.time()
        figures: list[float] = []
        signed: dict[str, bytes] = {}
        for name, cfg in configs.items():
            outcome = sign_message(tx, cfg, now=now)
            if outcome.status != "signed":
                raise SystemExit(f"signing failed: {outcome.status} {outcome.reason}")
            signed[name] = with_signatures(raw, outcome)
            figures.append(cpu_per_call(partial(sign_message, tx, cfg, now=now), n))
        for name in configs:
            results = verify_dkim(signed[name], resolver, now=now)
            if any(r.result != "pass" for r in results):
                raise SystemExit(f"verification failed: {results}")
            figures.append(cpu_per_call(partial(verify_dkim, signed[name], resolver, now=now), n))
        # dkimpy's pure-Python RSA is slow enough that a quarter of the iterations tell the same.
        figures.append(cpu_per_call(partial(dkim.sign, raw, b"rsa", DOMAIN.encode(), rsa_pem,
                                            include_headers=headers), max(1, n // 4)))
        figures.append(cpu_per_call(partial(dkim.sign, raw, b"ed", DOMAIN.encode(), ed_seed,
                                            include_headers=headers,
                                            signature_algorithm=b"ed25519-sha256"), n))
        print(f"{label:>9}  " + "  ".join(f"{f * 1000:>11.3f}" for f in figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
