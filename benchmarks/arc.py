"""CPU cost of ARC sealing: ours against dkimpy's `arc_sign`.

    python -m benchmarks.arc [-n ITERATIONS] [--sizes 2,10,100]

For 2 KB, 10 KB and 100 KB messages it prints the CPU time (time.process_time) per seal, i.e.
per ARC set of AAR + AMS + AS (two private-key operations), of:

  ours rsa        authmilter.core.signing.arc.seal_message with an RSA-2048 key parsed once (OpenSSL)
  ours ed25519    the same with an Ed25519 key (see arcseal's docstring on who accepts those)
  dkimpy rsa      dkim.arc_sign(): parses the PEM on every call and signs RSA in pure Python

All sign the same header list, relaxed/relaxed, on a message with no ARC set yet (i=1), and each
result is checked with dkimpy's ARC validator before it is timed. Keys are generated at start-up;
nothing is read from or written to disk.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from authmilter.core.signing.arc import ArcSealOutcome, seal_message
from authmilter.core.signing.dkim import Ed25519Signer, RsaSigner, SigningKey
from benchmarks.signing import cpu_per_call, message

DOMAIN = "example.net"
AUTHSERV_ID = "mx.example.net"
RESULTS = "arc=none;\r\n\tspf=pass smtp.mailfrom=example.com;\r\n\tdkim=pass header.d=example.com"
HEADERS = (b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
           b"content-transfer-encoding")


def with_set(raw: bytes, outcome: ArcSealOutcome) -> bytes:
    if outcome.status != "sealed":
        raise SystemExit(f"sealing failed: {outcome.status} {outcome.reason}")
    for name, value in outcome.headers:
        raw = f"{name}: {value}\r\n".encode() + raw
    return raw


def check(sealed: bytes, records: Mapping[bytes, bytes], what: str) -> None:
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.rstrip(b"."))

    cv, _, reason = dkim.ARC(sealed).verify(dnsfunc=dnsfunc)
    if cv != dkim.CV_Pass:
        raise SystemExit(f"{what}: dkimpy does not validate the set: {reason}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.arc", description=__doc__.split("\n")[0])
    p.add_argument("-n", "--iterations", type=int, default=200, help="seals per figure (default 200)")
    p.add_argument("--sizes", default="2,10,100", help="message sizes in KB (default 2,10,100)")
    args = p.parse_args(argv)
    n = max(1, args.iterations)

    rsa_private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_private = ed25519.Ed25519PrivateKey.generate()
    rsa_key = SigningKey("arc-rsa", DOMAIN, "arc", "rsa-sha256", RsaSigner(rsa_private), 2048)
    ed_key = SigningKey("arc-ed", DOMAIN, "arced", "ed25519-sha256", Ed25519Signer(ed_private), 256)
    records = {k.record_name.encode(): f"v=DKIM1; k={k.signer.key_type}; p={k.signer.public_key_b64()}"
               .encode() for k in (rsa_key, ed_key)}
    rsa_pem = rsa_private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    # dkimpy's ARC validator knows rsa-sha256 only; Ed25519 sets are checked with it widened.
    dkim.ARC_HASH_ALGORITHMS.setdefault(b"ed25519-sha256", hashlib.sha256)

    columns = ("ours rsa", "ours ed25519", "dkimpy rsa")
    print(f"CPU ms per ARC seal (AAR + AMS + AS), {n} iterations each (time.process_time)")
    print(f"{'message':>9}  " + "  ".join(f"{c:>12}" for c in columns))
    now = int(time.time())  # dkimpy's validator refuses a t= in the future
    for kb in (int(s) for s in args.sizes.split(",")):
        raw = message(kb * 1024)
        ar_field = f"Authentication-Results: {AUTHSERV_ID};\r\n\t{RESULTS}\r\n".encode()
        figures: list[float] = []
        for key in (rsa_key, ed_key):
            ours: Callable[[], ArcSealOutcome] = partial(
                seal_message, raw, key, authserv_id=AUTHSERV_ID, cv="none", now=now, include_headers=HEADERS,
                auth_results=f"{AUTHSERV_ID};\r\n\t{RESULTS}")
            check(with_set(raw, ours()), records, f"ours {key.algorithm}")
            figures.append(cpu_per_call(ours, n))
        # dkimpy takes this hop's results from an Authentication-Results field of the message.
        theirs = partial(dkim.arc_sign, ar_field + raw, b"arc", DOMAIN.encode(), rsa_pem,
                         AUTHSERV_ID.encode(), include_headers=list(HEADERS), timestamp=now)
        check(b"".join(theirs()) + ar_field + raw, records, "dkimpy")
        # Its pure-Python RSA is slow enough that a quarter of the iterations tell the same.
        figures.append(cpu_per_call(theirs, max(1, n // 4)))
        print(f"{f'{kb} KB':>9}  " + "  ".join(f"{f * 1000:>12.3f}" for f in figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
