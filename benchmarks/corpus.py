"""The load benchmark's deterministic corpus: sender domains, their DNS zones and keys, messages.

    python -m benchmarks.corpus --out DIR [-n 2000] [--seed 1]

The same seed and count give a byte-identical corpus (keys included: they are derived from the
seed, so they are test keys and nothing else). What is in it:

* 20 sender domains `sender01.bench` .. `sender20.bench`, each with an SPF record (ip4, some with
  `mx`/`a` and include chains two and three levels deep through `esp1.bench`/`esp2.bench`; -all,
  ~all, one ?all), a DMARC record (p none/quarantine/reject, some sp=, aspf/adkim r or s) and DKIM
  keys: RSA-2048 for most, `sender18` Ed25519 only, `sender19`/`sender20` both. `news.<d>` is an
  existing subdomain (a From domain for 10 % of mail) and `bounces.<d>` has the same SPF record
  (a MAIL FROM domain for 12 %).
* `outbound.bench` holds the keys the outbound scenario signs with.
* N messages: 95 % of 2-10 KB (a fifth of them indented HTML, which relaxed canonicalization has
  to rewrite), 4.5 % about 100 KB and 0.5 % about 1 MB (text plus a base64 attachment); 85 %
  validly signed by dkimpy (relaxed/relaxed), 10 % with the body altered after signing (a list
  footer), 5 % unsigned; 8 % from client addresses outside every SPF record (192.0.2.0/24); 1 %
  carrying a forged Authentication-Results that claims our authserv-id.

Client addresses inside SPF are 127.x.y.z with x >= 1, never 127.0.0.1, which the default policy
accepts as local submission without looking at anything. They are only data in the milter
protocol: nothing is ever sent to them.

Every message comes with its envelope and the results it must get, worked out here from the
plan (not by asking any verifier): SPF (pass inside the domain's ranges, else what its `all`
says), DKIM (pass / fail / none by category), DMARC (RFC 7489/9989 alignment, relaxed or strict,
policy p or sp for the subdomain) and the action under policies/default.toml.
"""

from __future__ import annotations

import argparse
import base64
import email.utils
import ipaddress
import json
import math
import multiprocessing
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.mailfactory import Key, private_pem, sign
from tests.zoneresolver import zone_text

# Bump when the generator changes what it writes, so cached corpora are rebuilt.
VERSION = 2
TLD = "bench"
N_DOMAINS = 20
RCPT_DOMAIN = f"rcpt.{TLD}"
AUTHSERV_ID = f"mx.{RCPT_DOMAIN}"
OUTBOUND_DOMAIN = f"outbound.{TLD}"
OUTBOUND_NETWORK = "127.200.0.0/16"  # internal_networks of the outbound scenario
OUTSIDE_NETWORK = "192.0.2.0/24"  # in no SPF record; TEST-NET-1, only ever data
ESP1_RANGES = ("127.101.0.0/17", "127.101.128.0/17")
ESP2_RANGE = "127.102.0.0/16"
TTL = 3600  # long enough that the milter's cache, not the DNS server, answers after warm-up
RSA_SELECTOR = "s2026r"
ED_SELECTOR = "s2026e"
OUT_RSA_SELECTOR = "out2048"
OUT_ED_SELECTOR = "outed"
# A fixed signing time (2026-01-01), in the past for anyone running this, so that the same seed
# gives the same bytes and no verifier sees a signature from the future.
SIGNING_TIME = 1767225600
SIGNED_HEADERS = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type"]
SPF_RESULT = {"-": "fail", "~": "softfail", "?": "neutral"}

SIZE_CLASSES = (("large", 0.005), ("medium", 0.045))  # the rest is "small"
CATEGORIES = (("broken", 0.10), ("unsigned", 0.05))  # the rest is "good"
OUTSIDE_SHARE = 0.08


# --- keys, derived from the seed --------------------------------------------------------------

_E = 65537
# Trial division in one gcd: most composite candidates share a factor with this.
_SMALL_PRODUCT = math.prod(p for p in range(3, 3000, 2) if all(p % q for q in range(3, math.isqrt(p) + 1, 2)))


def _probable_prime(n: int, rng: random.Random, rounds: int = 12) -> bool:
    """Miller-Rabin. 12 rounds leave a 4^-12 chance of a composite: plenty for test keys."""
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(rng: random.Random, bits: int) -> int:
    # About one odd number in 355 of this size is prime; 100000 tries cannot fail in practice,
    # but the loop stays bounded.
    for _ in range(100_000):
        # The top two bits set make the product of two such primes exactly 2*bits long.
        candidate = rng.getrandbits(bits) | (3 << (bits - 2)) | 1
        if math.gcd(candidate, _SMALL_PRODUCT) != 1 or math.gcd(candidate - 1, _E) != 1:
            continue
        if _probable_prime(candidate, rng):
            return candidate
    raise RuntimeError("no prime found")


def seeded_rsa_key(rng: random.Random, bits: int = 2048) -> Key:
    """An RSA key from `rng`: `cryptography` cannot generate from a seed, so build the numbers."""
    p = _prime(rng, bits // 2)
    q = _prime(rng, bits // 2)
    while q == p:
        q = _prime(rng, bits // 2)
    d = pow(_E, -1, math.lcm(p - 1, q - 1))
    key = rsa.RSAPrivateNumbers(
        p=p, q=q, d=d, dmp1=rsa.rsa_crt_dmp1(d, p), dmq1=rsa.rsa_crt_dmq1(d, q),
        iqmp=rsa.rsa_crt_iqmp(p, q), public_numbers=rsa.RSAPublicNumbers(_E, p * q),
    ).private_key()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return Key("rsa", pem, base64.b64encode(der).decode())


def seeded_ed25519_key(rng: random.Random) -> Key:
    seed = rng.randbytes(32)
    pub = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # tests.mailfactory.Key keeps an Ed25519 private key the way dkimpy takes it: base64 seed.
    return Key("ed25519", base64.b64encode(seed), base64.b64encode(pub).decode())


# --- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainPlan:
    name: str
    index: int
    spf: str  # the record, for the domain and for bounces.<domain>
    pass_ranges: tuple[str, ...]  # every client network the record authorises
    own_range: str
    esp_ranges: tuple[str, ...]
    all_qualifier: str  # "-", "~" or "?"
    p: str
    sp: str  # "" when the record has no sp=
    aspf: str
    adkim: str
    keys: tuple[str, ...]  # "rsa", "ed25519"

    @property
    def dmarc(self) -> str:
        sp = f"; sp={self.sp}" if self.sp else ""
        return (f"v=DMARC1; p={self.p}{sp}; adkim={self.adkim}; aspf={self.aspf}; "
                f"rua=mailto:dmarc-reports@{self.name}")

    def policy_for(self, author_domain: str) -> str:
        # news.<d> exists in DNS, so RFC 9989's sp (not np) applies to it; sp falls back to p.
        return self.p if author_domain == self.name else (self.sp or self.p)


@dataclass
class Expected:
    spf: str
    dkim: str
    dmarc: str
    policy: str
    action: str
    forged_ar: bool = False


@dataclass
class MessagePlan:
    id: int
    file: str
    size: int
    size_class: str
    category: str  # good | broken | unsigned
    client_ip: str
    client_host: str
    helo: str
    mail_from: str
    rcpts: list[str]
    from_domain: str
    sender_domain: str  # the plan's domain, d= of its signatures
    sig_algs: list[str]
    outside_spf: bool
    expect: Expected
    outbound_skip: int = 0  # DKIM-Signature fields on top, which the outbound scenario drops


def _shuffled_labels(rng: random.Random, n: int, shares: Sequence[tuple[str, float]], rest: str) -> list[str]:
    """Exactly round(n * share) of each label, shuffled: a small -n still gets its 1 MB messages."""
    labels: list[str] = []
    for label, share in shares:
        labels += [label] * max(1 if share and n >= 100 else 0, round(n * share))
    labels = labels[:n] + [rest] * max(0, n - len(labels))
    rng.shuffle(labels)
    return labels


def plan_domains(seed: int) -> list[DomainPlan]:
    rng = random.Random(f"authmilter-bench:{seed}:domains")
    policies = ["none"] * 6 + ["quarantine"] * 6 + ["reject"] * 8
    spf_kinds = ["plain"] * 8 + ["esp1"] * 7 + ["esp2"] * 5
    qualifiers = ["-"] * 11 + ["~"] * 8 + ["?"]
    for items in (policies, spf_kinds, qualifiers):
        rng.shuffle(items)
    plans = []
    for i in range(1, N_DOMAINS + 1):
        name = f"sender{i:02d}.{TLD}"
        own = f"127.{i}.0.0/16"
        kind, q = spf_kinds[i - 1], qualifiers[i - 1]
        esp: tuple[str, ...]
        if kind == "plain":
            spf, esp = f"v=spf1 ip4:{own} {q}all", ()
        elif kind == "esp1":
            # Three levels: the domain -> _spf.esp1 -> _nb2.esp1 -> _spf.esp2.
            spf, esp = f"v=spf1 ip4:{own} include:_spf.esp1.{TLD} {q}all", (*ESP1_RANGES, ESP2_RANGE)
        else:
            # mx: and a: name the domain explicitly so that bounces.<d> can share the record.
            spf = f"v=spf1 mx:{name} a:mail.{name} ip4:{own} include:_spf.esp2.{TLD} {q}all"
            esp = (ESP2_RANGE,)
        p = policies[i - 1]
        sp = rng.choice(["none", "quarantine", "reject"]) if rng.random() < 0.25 else ""
        keys = ("ed25519",) if i == 18 else ("rsa", "ed25519") if i in (19, 20) else ("rsa",)
        plans.append(DomainPlan(
            name=name, index=i, spf=spf, pass_ranges=(own, *esp), own_range=own, esp_ranges=esp,
            all_qualifier=q, p=p, sp=sp if sp != p else "",
            aspf="s" if rng.random() < 0.3 else "r", adkim="s" if rng.random() < 0.3 else "r", keys=keys))
    return plans


def expected_results(plan: DomainPlan, *, author: str, mail_from_domain: str, client_ip: str,
                     category: str, forged_ar: bool) -> Expected:
    """What RFC 7208 / 6376 / 7489 say this message gets, from the plan alone."""
    ip = ipaddress.ip_address(client_ip)
    spf = "pass" if any(ip in ipaddress.ip_network(r) for r in plan.pass_ranges) else \
        SPF_RESULT[plan.all_qualifier]
    dkim_result = {"good": "pass", "broken": "fail", "unsigned": "none"}[category]
    # Every domain here is the plan's domain or a subdomain of it, and the plan's domain is its
    # own organizational domain (the tree walk finds its record and none above it): relaxed
    # alignment always holds, strict needs the very same name.
    spf_aligned = spf == "pass" and (plan.aspf == "r" or mail_from_domain == author)
    dkim_aligned = dkim_result == "pass" and (plan.adkim == "r" or plan.name == author)
    dmarc = "pass" if spf_aligned or dkim_aligned else "fail"
    policy = plan.policy_for(author)
    action = "accept"
    if dmarc == "fail" and policy == "reject":
        action = "reject"
    elif dmarc == "fail" and policy == "quarantine":
        action = "quarantine"
    return Expected(spf=spf, dkim=dkim_result, dmarc=dmarc, policy=policy, action=action, forged_ar=forged_ar)


# --- zones ----------------------------------------------------------------------------------


def _q(text: str) -> str:
    return f'"{text}"'


def build_zones(plans: Sequence[DomainPlan], keys: dict[str, dict[str, Key]],
                outbound_keys: dict[str, Key]) -> dict[str, str]:
    zones: dict[str, str] = {}
    for pl in plans:
        i, d = pl.index, pl.name
        lines = [
            f"@ MX 10 mail.{d}.",
            f"@ TXT {_q(pl.spf)}",
            f"mail A 127.{i}.0.1",
            f"mail TXT {_q('v=spf1 a -all')}",
            f"bounces TXT {_q(pl.spf)}",
            f"news TXT {_q(f'v=spf1 ip4:{pl.own_range} -all')}",
            f"_dmarc TXT {_q(pl.dmarc)}",
        ]
        for kind, key in keys[d].items():
            selector = RSA_SELECTOR if kind == "rsa" else ED_SELECTOR
            lines.append(f"{selector}._domainkey TXT {key.zone_txt()}")
        zones[d] = zone_text(d, "\n".join(lines), ttl=TTL, negative_ttl=TTL)
    zones[f"esp1.{TLD}"] = zone_text(f"esp1.{TLD}", "\n".join([
        f"_spf TXT {_q(f'v=spf1 include:_nb1.esp1.{TLD} include:_nb2.esp1.{TLD} ~all')}",
        f"_nb1 TXT {_q(f'v=spf1 ip4:{ESP1_RANGES[0]} -all')}",
        f"_nb2 TXT {_q(f'v=spf1 ip4:{ESP1_RANGES[1]} include:_spf.esp2.{TLD} -all')}",
    ]), ttl=TTL, negative_ttl=TTL)
    zones[f"esp2.{TLD}"] = zone_text(f"esp2.{TLD}", f"_spf TXT {_q(f'v=spf1 ip4:{ESP2_RANGE} ~all')}",
                                     ttl=TTL, negative_ttl=TTL)
    out_lines = [f"@ TXT {_q('v=spf1 -all')}"]
    for kind, key in outbound_keys.items():
        selector = OUT_RSA_SELECTOR if kind == "rsa" else OUT_ED_SELECTOR
        out_lines.append(f"{selector}._domainkey TXT {key.zone_txt()}")
    zones[OUTBOUND_DOMAIN] = zone_text(OUTBOUND_DOMAIN, "\n".join(out_lines), ttl=TTL, negative_ttl=TTL)
    # The parents, empty but with an SOA: the DMARC tree walk asks _dmarc.bench, and outside
    # senders' HELO names end in .invalid. On the Internet the TLD's NXDOMAIN carries an SOA and is
    # cached (RFC 2308); without these zones it would not be, and every such message would cost
    # the milter a DNS round trip no real deployment pays.
    for parent in (TLD, "invalid"):
        zones[parent] = zone_text(parent, "", ttl=TTL, negative_ttl=TTL)
    return zones


# --- message bodies -------------------------------------------------------------------------

_SYLLABLES = ("ka", "lo", "mer", "tan", "vi", "sol", "dre", "qua", "ni", "pel", "or", "stu", "be", "ral",
              "fin", "ge", "cor", "du", "mi", "sen")


def vocabulary(seed: int) -> list[str]:
    rng = random.Random(f"authmilter-bench:{seed}:words")
    words = {"".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(600)}
    # A few 8-bit words, as real mail has: the milter must keep every byte as sent.
    return [*sorted(words), "café", "Grüße", "naïve", "Zürich", "déjà"]


class BodyMaker:
    def __init__(self, rng: random.Random, words: list[str]) -> None:
        self.rng = rng
        self.words = words

    def text_lines(self, nbytes: int, indent: str = "") -> list[bytes]:
        rng, words = self.rng, self.words
        lines: list[bytes] = []
        total = 0
        # Bounded by the byte count: every line adds at least a few bytes.
        while total < nbytes:
            n_words = rng.randint(6, 12)
            text = " ".join(rng.choice(words) for _ in range(n_words))
            line = (indent + text[:1].upper() + text[1:] + ".").encode()
            if indent:
                line = indent.encode() + b"<p class=\"body\">" + line.lstrip() + b"</p>"
            lines.append(line)
            total += len(line) + 2
            if rng.random() < 0.12:
                lines.append(b"")
                total += 2
        return lines

    def plain(self, nbytes: int) -> tuple[bytes, bytes]:
        body = b"\r\n".join(self.text_lines(nbytes)) + b"\r\n"
        return b"text/plain; charset=utf-8", body

    def html(self, nbytes: int) -> tuple[bytes, bytes]:
        # Runs of spaces at line starts: relaxed body canonicalization has to rewrite them.
        head = [b"<html>", b"  <body>", b"    <div>"]
        body = b"\r\n".join(head + self.text_lines(nbytes - 60, indent="      ") +
                            [b"    </div>", b"  </body>", b"</html>"]) + b"\r\n"
        return b"text/html; charset=utf-8", body

    def with_attachment(self, nbytes: int, boundary: str) -> tuple[bytes, bytes]:
        text = b"\r\n".join(self.text_lines(1500)) + b"\r\n"
        raw = self.rng.randbytes(max(1, (nbytes - len(text) - 400) * 3 // 4))
        b64 = base64.b64encode(raw)
        attachment = b"\r\n".join(b64[i:i + 76] for i in range(0, len(b64), 76)) + b"\r\n"
        b = boundary.encode()
        body = (b"--" + b + b"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text +
                b"--" + b + b"\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\n"
                b"Content-Transfer-Encoding: base64\r\n"
                b"Content-Disposition: attachment; filename=\"report.pdf\"\r\n\r\n" + attachment +
                b"--" + b + b"--\r\n")
        return f'multipart/mixed; boundary="{boundary}"'.encode(), body


# --- generation -------------------------------------------------------------------------------


class _FixedClock:
    """Stands in for dkimpy's `time` module: dkimpy stamps t= from time.time(), and a fixed t=
    makes the corpus the same bytes every time."""

    @staticmethod
    def time() -> float:
        return float(SIGNING_TIME)


def _random_host(rng: random.Random, network: str) -> str:
    net = ipaddress.ip_network(network)
    # Skip the network and broadcast addresses, and x.y.0.1, the domain's own mail host.
    return str(net[rng.randrange(2, net.num_addresses - 1)])


def _write_key(path: Path, key: Key) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem(key))


def _key_for(seed: int, domain: str, kind: str) -> Key:
    # One generator per key, so the keys can be made in parallel and still be the same.
    rng = random.Random(f"authmilter-bench:{seed}:key:{domain}:{kind}")
    return seeded_rsa_key(rng) if kind == "rsa" else seeded_ed25519_key(rng)


@dataclass
class _Job:
    """What every message needs, handed to the pool's workers once (they are forked)."""

    out: Path
    seed: int
    plans: list[DomainPlan]
    keys: dict[str, dict[str, Key]]
    words: list[str]
    sizes: list[str]
    categories: list[str]
    outside: list[str]


_JOB: _Job | None = None


def _init_worker(job: _Job) -> None:
    global _JOB
    _JOB = job
    # A pool worker lives for this corpus only, so its dkimpy may keep the fixed clock.
    dkim.time = _FixedClock


def _message_task(i: int) -> MessagePlan:
    job = _JOB
    assert job is not None
    raw, meta = _one_message(i, job.seed, job.plans, job.keys, job.words, job.sizes[i], job.categories[i],
                             job.outside[i] == "out")
    (job.out / meta.file).write_bytes(raw)
    return meta


def generate(out: Path, n: int, seed: int, *, processes: int | None = None) -> dict[str, Any]:
    """Write the corpus into `out` (created, must not exist yet); returns the manifest.

    Keys (pure-Python prime search) and dkimpy's pure-Python RSA signing take most of the time,
    so both run on every core.
    """
    out.mkdir(parents=True)
    (out / "msgs").mkdir()
    (out / "zones").mkdir()
    keys_dir = out / "keys"
    keys_dir.mkdir(mode=0o700)
    plans = plan_domains(seed)
    wanted = [(pl.name, kind) for pl in plans for kind in pl.keys] + \
        [(OUTBOUND_DOMAIN, "rsa"), (OUTBOUND_DOMAIN, "ed25519")]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes or os.cpu_count() or 1) as pool:
        made = pool.starmap(_key_for, [(seed, d, kind) for d, kind in wanted], chunksize=1)
    keys: dict[str, dict[str, Key]] = {}
    for (d, kind), key in zip(wanted, made, strict=True):
        keys.setdefault(d, {})[kind] = key
    outbound_keys = keys.pop(OUTBOUND_DOMAIN)
    key_files = {}
    for kind, key in outbound_keys.items():
        selector = OUT_RSA_SELECTOR if kind == "rsa" else OUT_ED_SELECTOR
        path = keys_dir / f"{OUTBOUND_DOMAIN}.{selector}.pem"
        _write_key(path, key)
        key_files[kind] = {"selector": selector, "file": f"keys/{path.name}"}
    zones = build_zones(plans, keys, outbound_keys)
    for origin, text in zones.items():
        (out / "zones" / f"{origin}.zone").write_text(text)
    dkim_records = {}
    for d, ks in keys.items():
        for kind, key in ks.items():
            dkim_records[f"{RSA_SELECTOR if kind == 'rsa' else ED_SELECTOR}._domainkey.{d}"] = key.txt()
    for kind, key in outbound_keys.items():
        selector = OUT_RSA_SELECTOR if kind == "rsa" else OUT_ED_SELECTOR
        dkim_records[f"{selector}._domainkey.{OUTBOUND_DOMAIN}"] = key.txt()

    alloc = random.Random(f"authmilter-bench:{seed}:alloc:{n}")
    job = _Job(out=out, seed=seed, plans=plans, keys=keys, words=vocabulary(seed),
               sizes=_shuffled_labels(alloc, n, SIZE_CLASSES, "small"),
               categories=_shuffled_labels(alloc, n, CATEGORIES, "good"),
               outside=_shuffled_labels(alloc, n, (("out", OUTSIDE_SHARE),), "in"))
    with ctx.Pool(processes or os.cpu_count() or 1, initializer=_init_worker, initargs=(job,)) as pool:
        messages = pool.map(_message_task, range(n), chunksize=8)
    manifest: dict[str, Any] = {
        "version": VERSION, "seed": seed, "count": n, "tld": TLD, "authserv_id": AUTHSERV_ID,
        "rcpt_domain": RCPT_DOMAIN, "outbound": {"domain": OUTBOUND_DOMAIN, "network": OUTBOUND_NETWORK,
                                                  "keys": key_files},
        "domains": [asdict(pl) | {"dmarc": pl.dmarc} for pl in plans],
        "dkim_records": dkim_records,
        "zones": sorted(f"zones/{origin}.zone" for origin in zones),
        "messages": [asdict(m) for m in messages],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _one_message(i: int, seed: int, plans: Sequence[DomainPlan], keys: dict[str, dict[str, Key]],
                 words: list[str], size_class: str, category: str,
                 outside_spf: bool) -> tuple[bytes, MessagePlan]:
    # One generator per message: a message does not change when another one's code path does.
    rng = random.Random(f"authmilter-bench:{seed}:msg:{i}")
    bodies = BodyMaker(rng, words)
    pl = rng.choice(plans)
    d = pl.name
    author = f"news.{d}" if rng.random() < 0.10 else d
    mail_from_domain = f"bounces.{d}" if rng.random() < 0.12 else d
    if outside_spf:
        client_ip = _random_host(rng, OUTSIDE_NETWORK)
        client_host = "unknown"
        helo = f"host{rng.randrange(1000)}.dyn.invalid"
    elif pl.esp_ranges and rng.random() < 0.3:
        network = rng.choice(pl.esp_ranges)
        client_ip = _random_host(rng, network)
        esp = "esp2" if network == ESP2_RANGE else "esp1"
        client_host = helo = f"mta{rng.randrange(1, 50)}.{esp}.{TLD}"
    else:
        client_ip = _random_host(rng, pl.own_range)
        client_host = helo = f"mail.{d}"
    forged_ar = rng.random() < 0.01
    target = {"small": rng.randint(2048, 10240), "medium": rng.randint(92_000, 108_000),
              "large": rng.randint(1_000_000, 1_090_000)}[size_class]
    rcpts = [f"user{rng.randrange(1, 5000)}@{RCPT_DOMAIN}"]
    if rng.random() < 0.1:
        rcpts.append(f"user{rng.randrange(1, 5000)}@{RCPT_DOMAIN}")
    when = SIGNING_TIME - rng.randrange(0, 3600)
    date = email.utils.formatdate(when, usegmt=True)
    local = rng.choice(["alice", "bob", "carol", "dave", "erin", "news", "billing", "noreply"])
    if size_class != "small":
        ctype, body = bodies.with_attachment(target, f"=_b{seed}_{i}")
    elif rng.random() < 0.2:
        ctype, body = bodies.html(target - 600)
    else:
        ctype, body = bodies.plain(target - 600)
    headers = [
        f"From: {local.title()} <{local}@{author}>".encode(),
        f"To: <{rcpts[0]}>".encode(),
        f"Subject: Bench message {i} {rng.choice(bodies.words)}".encode(),
        f"Date: {date}".encode(),
        f"Message-ID: <{seed}.{i}.{rng.getrandbits(40):x}@{author}>".encode(),
        b"MIME-Version: 1.0",
        b"Content-Type: " + ctype,
    ]
    if rng.random() < 0.15:
        headers.append(f"List-Id: <announce.{d}>".encode())
    message = b"\r\n".join(headers) + b"\r\n\r\n" + body
    sig_algs: list[str] = []
    if category != "unsigned":
        for kind, key in keys[d].items():
            message = sign(message, domain=d, selector=RSA_SELECTOR if kind == "rsa" else ED_SELECTOR,
                           key=key, headers=SIGNED_HEADERS)
            sig_algs.append(kind)
        if category == "broken":
            # What a mailing list does: a footer appended after the signature was made.
            message += b"-- \r\nYou received this because you subscribed to a list.\r\n"
    qid = f"{i:06X}Q"
    received = (f"Received: from {helo} ({client_host} [{client_ip}])\r\n"
                f"\tby {AUTHSERV_ID} (Postfix) with ESMTPS id {qid}\r\n"
                f"\tfor <{rcpts[0]}>; {date}\r\n").encode()
    top = received
    if forged_ar:
        forged = f"Authentication-Results: {AUTHSERV_ID}; dkim=pass header.d=bank.example; dmarc=pass\r\n"
        top += forged.encode()
    message = top + message
    meta = MessagePlan(
        id=i, file=f"msgs/{i:06d}.eml", size=len(message), size_class=size_class, category=category,
        client_ip=client_ip, client_host=client_host, helo=helo,
        mail_from=f"bounce-{i}@{mail_from_domain}", rcpts=rcpts, from_domain=author, sender_domain=d,
        sig_algs=sig_algs, outside_spf=outside_spf,
        expect=expected_results(pl, author=author, mail_from_domain=mail_from_domain, client_ip=client_ip,
                                category=category, forged_ar=forged_ar),
    )
    return message, meta


# --- cache ------------------------------------------------------------------------------------

CACHE = Path(__file__).resolve().parent / ".corpus"


@dataclass
class Corpus:
    path: Path
    manifest: dict[str, Any]
    temporary: bool = False
    generated_seconds: float | None = None
    messages: list[bytes] = field(default_factory=list)

    def load_messages(self) -> None:
        self.messages = [(self.path / m["file"]).read_bytes() for m in self.manifest["messages"]]

    def cleanup(self) -> None:
        if self.temporary:
            shutil.rmtree(self.path, ignore_errors=True)


def cache_name(n: int, seed: int) -> str:
    return f"v{VERSION}-seed{seed}-n{n}"


def obtain(n: int, seed: int, *, keep: bool) -> Corpus:
    """The cached corpus for (n, seed) if there is one; else a new one, cached if `keep`."""
    cached = CACHE / cache_name(n, seed)
    if (cached / "manifest.json").exists():
        return Corpus(cached, json.loads((cached / "manifest.json").read_text()))
    if keep:
        CACHE.mkdir(exist_ok=True)
        # Built beside its final name and renamed, so an interrupted run leaves no half corpus
        # that a later run would take for a whole one.
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=CACHE))
        started = time.monotonic()
        manifest = generate(staging / "c", n, seed)
        try:
            (staging / "c").rename(cached)
        except OSError:
            # Another run cached the same corpus meanwhile: same seed, same bytes, so use theirs.
            shutil.rmtree(staging, ignore_errors=True)
            return Corpus(cached, json.loads((cached / "manifest.json").read_text()))
        staging.rmdir()
        return Corpus(cached, manifest, generated_seconds=time.monotonic() - started)
    tmp = Path(tempfile.mkdtemp(prefix="authmilter-corpus-"))
    started = time.monotonic()
    manifest = generate(tmp / "c", n, seed)
    return Corpus(tmp / "c", manifest, temporary=True, generated_seconds=time.monotonic() - started)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.corpus", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="directory to create")
    p.add_argument("-n", type=int, default=2000, help="messages (default 2000)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    started = time.monotonic()
    manifest = generate(Path(args.out), args.n, args.seed)
    total = sum(m["size"] for m in manifest["messages"])
    print(f"{args.n} messages, {total / 1e6:.1f} MB, in {time.monotonic() - started:.1f} s: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
