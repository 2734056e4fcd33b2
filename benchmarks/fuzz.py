"""A long fuzzing campaign against the core's `evaluate`: mutated real messages in, the rule checked.

    python -m benchmarks.fuzz --minutes 30            # or --inputs 1000000
    python -m benchmarks.fuzz --inputs 20000 --seed 7 --processes 2 --out /tmp/fuzz
    python -m benchmarks.fuzz --replay /tmp/fuzz/exception-0123456789ab.json

Seeds: `tests/data/dkim/*.eml`, messages made here with `tests.mailfactory` (signed by the p=reject
victim, by the attacker, spoofs, ARC-sealed, with a forged Authentication-Results: see
`tests.fuzzworld.seed_messages`), and the peers' conformance messages in
`../shared/conformance/peers/msgs` when that directory exists (a fresh clone has none; `--peers`
names another). Each input is one seed put through one to three mutations (byte-level and
structure-aware: see MUTATIONS), split as `authmilter check` splits a file (or, for a share of
them, handed over as header fields the way the milter builds them), and evaluated with
`policies/default.toml` against `tests.fuzzworld`'s zones.

What counts as a bug:

* an exception out of `evaluate` (it must catch everything itself): none expected;
* a verdict saying `evaluate` caught an exception of its own ("evaluation failed" and the like,
  with the traceback in `errors`): reported apart, with the first traceback of each kind;
* a check that swallowed an exception into its result ("internal error: ..."): also reported;
* a result outside the RFC vocabularies;
* the rule (`tests.fuzzworld.rule_violation`): a From naming the victim, not validly signed by it,
  accepted with dmarc=pass;
* an input that takes longer than `--input-timeout` (a hang).

`reader_differential` cases (a DMARC pass for another domain while a standard-library reader finds
the victim's address in From) are counted and saved for a look by hand, not counted as violations.
Every such input is saved to `--out` as NAME.eml (the message) and NAME.json (the envelope, how
it was made, what was found), a few per kind; `--replay` runs one again and prints its verdict.

Keys are derived from fixed labels, so a saved input replays with the same keys in a later run;
the seed messages carry the time they were signed at, so `--seed` repeats the mutations, not
every byte.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import multiprocessing
import os
import random
import re
import shlex
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import dkim

from authmilter.core.decision import Policy
from authmilter.core.evaluate import EvalSettings, evaluate
from authmilter.core.model import Header, Transaction, Verdict
from authmilter.files.policy import load_policy
from benchmarks.corpus import seeded_ed25519_key, seeded_rsa_key
from tests import fuzzworld as world

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT.parent / "shared" / "conformance" / "peers" / "msgs"
POLICY = ROOT / "policies" / "default.toml"
DEFAULT_OUT = ROOT / "benchmarks" / ".fuzz"
CHUNK = 500  # inputs per task handed to a worker: big enough to amortize, small enough to stop on time
MAX_MESSAGE = 2 << 20  # bytes; a mutation that grows a message past this is cut back
MAX_SEED = 1 << 20  # peer messages larger than this are left out of the corpus
SAVE_PER_KIND = 3
WEIRD_RECORDS = 200  # names of each kind (SPF, DMARC, DKIM key) with odd records in the attacker's zone
WEIRD_ENVELOPE_SHARE = 0.15  # inputs saved per distinct failure kind and worker
DIRECT_SHARE = 0.15
# How often each kind of seed is picked. The made ones carry the victim and the attacker, which is
# what the rule is about; the peers' 222 messages would otherwise drown them.
SEED_WEIGHTS = {
    "made": 0.55,
    "rfc": 0.1,
    "peer": 0.35,
}  # inputs handed over as header fields the way the milter builds them

VICTIM, ATTACKER = world.VICTIM, world.ATTACKER

# Charsets that either do not exist or that Python's codecs refuse to decode leniently.
ODD_CHARSETS = (
    "idna",
    "undefined",
    "utf-7",
    "unknown",
    "x-unknown",
    "rot13",
    "punycode",
    "base64",
    "hex",
    "uu",
    "zlib",
    "utf-16",
    "utf-32",
    "unicode_escape",
    "raw_unicode_escape",
    "mbcs",
    "cp65001",
    "utf-8*en",
    "iso-2022-jp",
    "latin-1",
    "us-ascii",
    "",
    "utf-8''",
    "bz2",
    "quopri",
    "palmos",
    "koi8-r",
)
EW_PAYLOADS = (
    f"ceo@{VICTIM}",
    f"<ceo@{VICTIM}>",
    f"CEO <ceo@{VICTIM}>",
    "\x00",
    "\r\n",
    "\u202e",
    f"\uff1cceo\uff20{VICTIM}\uff1e",
    "a" * 300,
    f"ceo@{VICTIM},m@{ATTACKER}",
    "=?",
    "?=",
)
FROM_TEMPLATES = (
    "ceo@{V}",
    "<ceo@{V}>",
    "CEO <ceo@{V}>",
    "ceo@{V} <m@{A}>",
    '"ceo@{V}" <m@{A}>',
    "m@{A} (ceo@{V})",
    "m@{A}, ceo@{V}",
    "<@{A}:ceo@{V}>",
    "<@{V}:m@{A}>",
    "ceo@{V}.",
    "ceo@{V}.{A}",
    "ceo@{A}.{V}",
    "ceo@[192.0.2.1]",
    "undisclosed-recipients:;",
    "group: ceo@{V};",
    "ceo@vict\u0131m.example",
    "ceo@\uff56\uff49\uff43\uff54\uff49\uff4d\uff0eexample",
    "ceo@victim\u3002example",
    "ceo@VICTIM.EXAMPLE",
    "ceo @ {V}",
    "ceo@ {V}",
    '"ceo"@{V}',
    "ceo(comment)@{V}",
    "ceo@(c){V}",
    "ceo@{V}(c)",
    "=?utf-8?q?ceo=40victim.example?= <m@{A}>",
    "m@{A}\r\n ceo@{V}",
    "m@{A}\r\nFrom: ceo@{V}",
    "<m@{A}> <ceo@{V}>",
    "m@{A}>ceo@{V}",
    "ceo@{V}\\@{A}",
    '"m@{A}"@{V}',
    "ceo@{V};m@{A}",
    "ceo@{V}>",
    "<ceo@{V}",
    "(<ceo@{V}>) m@{A}",
    "ceo@{V}\t",
    "\tceo@{V}",
    "",
    " ",
    "m@{A} ceo@{V}",
    "=?utf-8?b?Y2VvQHZpY3RpbS5leGFtcGxl?=@{A}",
    "ceo@=?utf-8?q?victim?=.example",
    "ceo@xn--victim-.example",
    "ceo@xn--vctim-9ta.example",
    "Mallory <m@{A}>",
    "m@{A}",
    "ceo@{V}\x00",
    "ceo\x00@{V}",
)
NAME_VARIANTS = (
    b"{} :",
    b"{}\t:",
    b"{}  \t :",
    b" {}:",
    b"{}::",
    b"{}\x00:",
    b"{}\r:",
    b"{}\x0b:",
    b"\t{}:",
    b"{}\xc2\xa0:",
    b"{}:",
)
TAG_VALUES = (
    VICTIM.encode(),
    ATTACKER.encode(),
    b"",
    b" ",
    b"rsa-sha1",
    b"rsa-sha256",
    b"ed25519-sha256",
    b"relaxed/simple",
    b"simple/relaxed",
    b"relaxed",
    b"nonsense/relaxed",
    b"from:from:to",
    b"from",
    b"to:subject",
    b"dkim-signature:from",
    b"0",
    b"1",
    b"99999999999999",
    b"-1",
    b"1e10",
    b"\x00",
    b"\xff\xfe",
    b"=",
    b";",
    b"AAAA",
    b"====",
    b"@" + VICTIM.encode(),
    b"x@" + VICTIM.encode(),
    b"x@sub." + ATTACKER.encode(),
    b"s1",
    b"e1",
    b"s1._domainkey",
    b"dns/txt",
    b"dns/txt:http",
    b"none",
    b"pass",
    b"fail",
    b"Pass",
    b"51",
    b"01",
    b"2",
    b"i=1",
    b"a" * 64,
    b"a." * 130,
    b"\r\n ",
    b"xn--zz",
    b"sub.victim.example",
    b"victim.example.",
)
AR_TEMPLATES = (
    "{I}; dmarc=pass",
    "{U}; spf=pass",
    "{I}.; dkim=pass",
    '"{I}"; dmarc=pass',
    "(c) {I}; x=y",
    "(nested (c)) {I} 1; dkim=pass",
    "\r\n {I};",
    "{I}(c); none",
    '"{Q}"; dmarc=pass',
    "{I}",
    "other.example; dmarc=pass header.from={I}",
    "{I}.evil.example; dmarc=pass",
    "(unterminated {I};",
    '"unterminated {I};',
    "\xe9{I}; spf=pass",
    "{I}\x00; spf=pass",
    "x{I}; spf=pass",
    "{I}x;",
)


@dataclass
class Draft:
    """A message as header fields (each one whole, continuation lines included) and a body."""

    fields: list[bytes]
    body: bytes
    separator: bytes = b"\r\n"  # between the header section and the body, after the last field

    @staticmethod
    def parse(raw: bytes) -> Draft:
        for blank in (b"\r\n\r\n", b"\n\n"):
            at = raw.find(blank)
            if at >= 0:
                break
        head, body = (raw[:at], raw[at + len(blank) :]) if at >= 0 else (raw, b"")
        fields: list[bytes] = []
        for line in re.split(rb"(?<=\n)", head):
            if line[:1] in (b" ", b"\t") and fields:
                fields[-1] += line
            elif line:
                fields.append(line)
        fields = [f.rstrip(b"\r\n") for f in fields]
        return Draft(fields, body)

    def render(self) -> bytes:
        return b"".join(f + b"\r\n" for f in self.fields) + self.separator + self.body

    def find(self, *names: bytes) -> list[int]:
        wanted = {n.lower() for n in names}
        return [i for i, f in enumerate(self.fields) if f.split(b":", 1)[0].strip().lower() in wanted]


@dataclass
class Mutator:
    rng: random.Random
    seeds: Sequence[tuple[str, bytes]]

    def pick_field(self, draft: Draft, preferred: Sequence[bytes]) -> int | None:
        if not draft.fields:
            return None
        hits = draft.find(*preferred)
        if hits and self.rng.random() < 0.8:
            return self.rng.choice(hits)
        return self.rng.randrange(len(draft.fields))

    def some_bytes(self, n: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, n))

    # -- the mutations ------------------------------------------------------------------------

    def name_variant(self, raw: bytes) -> bytes:
        d = Draft.parse(raw)
        i = self.pick_field(
            d,
            (
                b"from",
                b"dkim-signature",
                b"authentication-results",
                b"arc-seal",
                b"arc-message-signature",
                b"arc-authentication-results",
                b"to",
            ),
        )
        if i is None:
            return raw
        name, _, value = d.fields[i].partition(b":")
        name = name.strip()
        name = self.rng.choice((name, name.upper(), name.lower(), name.swapcase()))
        d.fields[i] = self.rng.choice(NAME_VARIANTS).replace(b"{}", name) + value
        return d.render()

    def duplicate(self, raw: bytes) -> bytes:
        d = Draft.parse(raw)
        i = self.pick_field(d, (b"from", b"dkim-signature", b"arc-seal", b"authentication-results"))
        if i is None:
            return raw
        copy = d.fields[i]
        if copy.lower().startswith(b"from") and self.rng.random() < 0.5:
            copy = b"From: " + self.rng.choice((f"ceo@{VICTIM}", f"m@{ATTACKER}", "")).encode()
        d.fields.insert(self.rng.randint(0, len(d.fields)), copy)
        return d.render()

    def remove(self, raw: bytes) -> bytes:
        d = Draft.parse(raw)
        if not d.fields:
            return raw
        if self.rng.random() < 0.3:
            name = d.fields[self.rng.randrange(len(d.fields))].split(b":", 1)[0]
            d.fields = [f for f in d.fields if f.split(b":", 1)[0] != name]
        else:
            del d.fields[self.rng.randrange(len(d.fields))]
        return d.render()

    def nul(self, raw: bytes) -> bytes:
        d = Draft.parse(raw)
        i = self.pick_field(d, (b"from", b"dkim-signature", b"authentication-results"))
        if i is None or self.rng.random() < 0.2:
            at = self.rng.randint(0, len(raw))
            return raw[:at] + b"\x00" * self.rng.randint(1, 3) + raw[at:]
        f = d.fields[i]
        at = self.rng.randint(0, len(f))
        d.fields[i] = f[:at] + b"\x00" + f[at:]
        return d.render()

    def encoded_word(self, raw: bytes) -> bytes:
        d = Draft.parse(raw)
        charset = self.rng.choice(ODD_CHARSETS)
        text = (
            self.rng.choice(EW_PAYLOADS) if self.rng.random() < 0.8 else self.some_bytes(40).decode("latin-1")
        )
        data = text.encode("utf-8", "surrogatepass")
        if self.rng.random() < 0.5:
            word = f"=?{charset}?B?{base64.b64encode(data).decode()}?="
        else:
            q = "".join(chr(b) if 33 <= b < 127 and b not in b"=?_ " else f"={b:02X}" for b in data)
            word = f"=?{charset}?Q?{q}?="
        shape = self.rng.choice(
            (
                "{W} <m@{A}>",
                "{W} <ceo@{V}>",
                "{W}{W} <m@{A}>",
                "m@{A} ({W})",
                '"{W}" <m@{A}>',
                "{W}@{A}",
                "m@{W}",
                "{W}. <m@{A}>",
                "{W}",
            )
        )
        value = shape.replace("{W}", word).replace("{A}", ATTACKER).replace("{V}", VICTIM)
        self._set_from(d, value.encode())
        return d.render()

    def from_variant(self, raw: bytes) -> bytes:
        d = Draft.parse(raw)
        value = self.rng.choice(FROM_TEMPLATES).replace("{V}", VICTIM).replace("{A}", ATTACKER)
        self._set_from(d, value.encode("utf-8"))
        return d.render()

    def _set_from(self, d: Draft, value: bytes) -> None:
        hits = d.find(b"from")
        line = b"From: " + value
        if hits:
            d.fields[self.rng.choice(hits)] = line
        else:
            d.fields.insert(0, line)

    def huge_fold(self, raw: bytes) -> bytes:
        d = Draft.parse(raw)
        i = self.pick_field(
            d, (b"from", b"dkim-signature", b"subject", b"arc-seal", b"authentication-results")
        )
        if i is None:
            return raw
        name, _, value = d.fields[i].partition(b":")
        n = self.rng.choice((50, 500, 5000, 20000))
        style = self.rng.randrange(5)
        if style == 0:
            value = value + b"\r\n x" * n
        elif style == 1:
            value = value + b"\r\n " * n  # whitespace-only folded lines
        elif style == 2:
            value = value + b" " + b"a" * (n * 10)  # one very long line
        elif style == 3:
            value = b"\r\n\t".join(value[k : k + 1] for k in range(len(value)))  # fold at every byte
        else:
            value = value + b" " * (n * 10)  # a long run of trailing spaces
        d.fields[i] = name + b":" + value
        return d.render()

    def _tags(self, value: bytes) -> list[bytes]:
        return value.split(b";")

    def _mutate_tags(self, value: bytes) -> bytes:
        tags = self._tags(value)
        for _ in range(self.rng.randint(1, 3)):
            op = self.rng.randrange(9)
            k = self.rng.randrange(len(tags)) if tags else 0
            if op == 0 and tags:
                del tags[k]
            elif op == 1 and tags:
                tags.insert(self.rng.randint(0, len(tags)), tags[k])
            elif op == 2 and tags:
                name = tags[k].split(b"=", 1)[0]
                tags[k] = name + b"=" + self.rng.choice(TAG_VALUES)
            elif op == 3 and tags:
                name, eq, val = tags[k].partition(b"=")
                tags[k] = (
                    self.rng.choice((name.upper(), b" " + name + b" ", name + b"\r\n ", b"x" + name))
                    + eq
                    + val
                )
            elif op == 4:
                tags.insert(
                    self.rng.randint(0, len(tags)),
                    self.rng.choice(
                        (
                            b" d=" + VICTIM.encode(),
                            b" x=1",
                            b" t=99999999999",
                            b" l=0",
                            b" l=99999999",
                            b" i=@" + VICTIM.encode(),
                            b" z=From:x",
                            b" zz",
                            b" =x",
                            b" v=1",
                            b" i=1",
                            b" cv=pass",
                        )
                    ),
                )
            elif op == 5 and tags:
                name, eq, val = tags[k].partition(b"=")
                if val:
                    at = self.rng.randrange(len(val))
                    val = val[:at] + bytes([self.rng.randrange(256)]) + val[at + 1 :]
                tags[k] = name + eq + val
            elif op == 6:
                self.rng.shuffle(tags)
            elif op == 7 and tags:
                tags[k] = tags[k].replace(b"=", self.rng.choice((b" = ", b"\r\n =\r\n ", b"==", b"")), 1)
            else:
                tags.append(b"")
        return b";".join(tags)

    def attacker_names(self, raw: bytes) -> bytes:
        """Point a signature, or the From, at one of the attacker's odd DNS records."""
        d = Draft.parse(raw)
        n = self.rng.randrange(WEIRD_RECORDS)
        hits = d.find(b"dkim-signature")
        if hits and self.rng.random() < 0.7:
            i = self.rng.choice(hits)
            name, _, value = d.fields[i].partition(b":")
            value = re.sub(rb"s=[^;]*", f"s=w{n}".encode(), value, count=1)
            if self.rng.random() < 0.3:
                value = re.sub(rb"d=[^;]*", b"d=" + ATTACKER.encode(), value, count=1)
            d.fields[i] = name + b":" + value
        else:
            self._set_from(d, f"Mallory <m@d{n}.{ATTACKER}>".encode())
        return d.render()

    def dkim_tag(self, raw: bytes) -> bytes:
        d = Draft.parse(raw)
        hits = d.find(b"dkim-signature")
        if not hits:
            d.fields.insert(
                0,
                b"DKIM-Signature: v=1; a=rsa-sha256; d="
                + VICTIM.encode()
                + b"; s=s1; h=from; bh=AAAA; b=AAAA",
            )
            hits = [0]
        i = self.rng.choice(hits)
        name, _, value = d.fields[i].partition(b":")
        d.fields[i] = name + b":" + self._mutate_tags(value)
        return d.render()

    def arc_tag(self, raw: bytes) -> bytes:
        d = Draft.parse(raw)
        hits = d.find(b"arc-seal", b"arc-message-signature", b"arc-authentication-results")
        if not hits:
            d.fields.insert(
                0, b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=" + ATTACKER.encode() + b"; s=s1; b=AAAA"
            )
            hits = [0]
        i = self.rng.choice(hits)
        name, _, value = d.fields[i].partition(b":")
        if self.rng.random() < 0.2:
            # A second set with the same or the next instance.
            copy = self.rng.choice(hits)
            d.fields.insert(
                0, re.sub(rb"i=\d+", self.rng.choice((b"i=1", b"i=2", b"i=50", b"i=51")), d.fields[copy])
            )
        else:
            d.fields[i] = name + b":" + self._mutate_tags(value)
        return d.render()

    def auth_results(self, raw: bytes) -> bytes:
        d = Draft.parse(raw)
        ours = world.AUTHSERV_ID
        value = (
            self.rng.choice(AR_TEMPLATES)
            .replace("{I}", ours)
            .replace("{U}", ours.upper())
            .replace("{Q}", ours.replace(".", "\\."))
        )
        name = self.rng.choice(
            (
                b"Authentication-Results",
                b"authentication-results",
                b"AUTHENTICATION-RESULTS",
                b"Authentication-Results ",
                b"ARC-Authentication-Results",
            )
        )
        d.fields.insert(self.rng.randint(0, len(d.fields)), name + b": " + value.encode("utf-8"))
        return d.render()

    def line_endings(self, raw: bytes) -> bytes:
        style = self.rng.randrange(4)
        if style == 0:
            return raw.replace(b"\r\n", b"\n")
        breaks = [m.start() for m in re.finditer(rb"\r\n", raw)]
        if not breaks:
            return raw
        at = self.rng.choice(breaks)
        new = (b"\n", b"\r", b"\r\r\n", b"\n\r")[style - 1]
        return raw[:at] + new + raw[at + 2 :]

    def byte_ops(self, raw: bytes) -> bytes:
        b = bytearray(raw)
        for _ in range(self.rng.randint(1, 8)):
            at = self.rng.randint(0, len(b))
            op = self.rng.randrange(4)
            if op == 0 and at < len(b):
                b[at] ^= 1 << self.rng.randrange(8)
            elif op == 1:
                b[at:at] = self.some_bytes(8)
            elif op == 2:
                del b[at : at + self.rng.randint(1, 16)]
            else:
                start = self.rng.randint(0, len(b))
                b[at:at] = b[start : start + self.rng.randint(1, 64)]
        return bytes(b)

    def random_bytes(self, raw: bytes) -> bytes:
        if self.rng.random() < 0.3:
            return self.some_bytes(600)
        at = self.rng.randint(0, len(raw))
        return raw[:at] + self.some_bytes(200) + raw[at + self.rng.randint(0, 200) :]

    def splice(self, raw: bytes) -> bytes:
        other = Draft.parse(self.rng.choice(self.seeds)[1])
        d = Draft.parse(raw)
        if self.rng.random() < 0.5 or not other.fields:
            d.body = other.body
        else:
            d.fields.insert(self.rng.randint(0, len(d.fields)), self.rng.choice(other.fields))
        return d.render()

    def body(self, raw: bytes) -> bytes:
        d = Draft.parse(raw)
        op = self.rng.randrange(5)
        if op == 0:
            d.body = d.body[: self.rng.randint(0, len(d.body))]
        elif op == 1:
            d.body += b"Click here: http://" + ATTACKER.encode() + b"/\r\n"
        elif op == 2:
            d.body = d.body.rstrip(b"\r\n")
        elif op == 3:
            d.body += b"\r\n" * self.rng.randint(1, 2000)
        else:
            d.body = b" \t" * self.rng.randint(1, 50_000) + d.body
        return d.render()


MUTATIONS: dict[str, Callable[[Mutator, bytes], bytes]] = {
    "name-variant": Mutator.name_variant,
    "duplicate": Mutator.duplicate,
    "remove": Mutator.remove,
    "nul": Mutator.nul,
    "encoded-word": Mutator.encoded_word,
    "from-variant": Mutator.from_variant,
    "huge-fold": Mutator.huge_fold,
    "dkim-tag": Mutator.dkim_tag,
    "attacker-dns": Mutator.attacker_names,
    "arc-tag": Mutator.arc_tag,
    "auth-results": Mutator.auth_results,
    "line-endings": Mutator.line_endings,
    "bytes": Mutator.byte_ops,
    "random": Mutator.random_bytes,
    "splice": Mutator.splice,
    "body": Mutator.body,
}


# --- the world every worker shares (built before the workers fork) ---------------------------------


@dataclass
class Campaign:
    keys: world.WorldKeys
    seeds: list[tuple[str, bytes]]
    policy: Policy
    out: Path
    timeout: float
    resolver: world.MemoResolver = field(init=False)
    settings: EvalSettings = field(default_factory=EvalSettings)

    groups: dict[str, list[tuple[str, bytes]]] = field(init=False)

    def __post_init__(self) -> None:
        self.resolver = world.MemoResolver(world.world_resolver(self.keys, attacker_dns(self.keys)))
        self.groups = {}
        for name, message in self.seeds:
            self.groups.setdefault(seed_group(name), []).append((name, message))


def seed_group(name: str) -> str:
    return "peer" if name.startswith("peer:") else "rfc" if name.startswith("rfc-") else "made"


def weird_envelope(rng: random.Random, env: world.Envelope) -> world.Envelope:
    n = rng.randrange(WEIRD_RECORDS)
    choice = rng.randrange(4)
    if choice == 0:
        return world.Envelope(env.client_ip, env.helo, f"bounce@spf{n}.{ATTACKER}")
    if choice == 1:
        return world.Envelope(env.client_ip, f"spf{n}.{ATTACKER}", "")
    if choice == 2:
        return world.Envelope(
            rng.choice(("2001:db8::7", "::ffff:203.0.113.7", "203.0.113.300", "")), env.helo, env.mail_from
        )
    return world.Envelope(
        env.client_ip,
        env.helo,
        rng.choice(
            (
                f'"ceo@{VICTIM}"@{ATTACKER}',
                f"<@relay.example:x@{ATTACKER}>",
                f"x@{ATTACKER}.",
                "x@[203.0.113.7]",
                f"x@{ATTACKER.upper()}",
                "@" + ATTACKER,
                "x",
                f"x@-{ATTACKER}",
                f"x@sub.{ATTACKER}",
            )
        ),
    )


def _spf_record(rng: random.Random, n: int) -> bytes:
    terms = [
        "ip4:203.0.113.0/24",
        "ip4:0.0.0.0/0",
        "ip6:::/0",
        "a",
        "a:mail." + ATTACKER,
        "mx",
        "mx/24",
        f"include:spf{rng.randrange(WEIRD_RECORDS)}.{ATTACKER}",
        f"include:{VICTIM}",
        f"redirect=spf{(n + 1) % WEIRD_RECORDS}.{ATTACKER}",
        "exists:%{i}." + ATTACKER,
        "exists:%{l}.%{d}",
        "ptr",
        "ptr:" + ATTACKER,
        f"exp=exp.{ATTACKER}",
        "ip4:203.0.113.7/33",
        "ip4:203.0.113",
        "+all",
        "-all",
        "~all",
        "?all",
        "all",
        "a:%{h}",
        "%{ir}.%{v}._spf.%{d2}",
        "include:%{d}",
        "a//0",
        "ip6:2001:db8::/129",
        "redirect=",
        "include:",
        "v=spf1",
        "moo=bar",
        "a:" + "x" * 70 + ".example",
        "exists:%{l1r+-}.%{o}",
        "mx:%{S}",
        "-ip4:203.0.113.7",
        "?include:" + ATTACKER,
    ]
    words = [rng.choice(terms) for _ in range(rng.randint(0, 12))]
    if rng.random() < 0.1:
        words.append(rng.randbytes(rng.randint(1, 30)).decode("latin-1"))
    head = rng.choice(("v=spf1", "v=spf1", "v=spf1", "V=SPF1", "v=spf1 ", "v=spf10", "spf1"))
    return (head + " " + " ".join(words)).encode("utf-8")


def _dmarc_record(rng: random.Random) -> bytes:
    tags = [
        "p=reject",
        "p=none",
        "p=quarantine",
        "p=bogus",
        "sp=reject",
        "sp=",
        "np=reject",
        "pct=0",
        "pct=50",
        "pct=101",
        "pct=-1",
        "adkim=s",
        "aspf=s",
        "adkim=x",
        "t=y",
        "t=n",
        "psd=y",
        "psd=n",
        "psd=u",
        "rua=mailto:r@" + ATTACKER,
        "rua=bogus",
        "rua=mailto:a@b!10m",
        "ruf=x",
        "fo=1",
        "p=reject;p=none",
        "v=DMARC1",
        "=",
        "p",
        "\x00",
        "p=REJECT",
    ]
    head = rng.choice(("v=DMARC1", "v=DMARC1", " v=DMARC1", "v=dmarc1", "v = DMARC1", "v=DMARC2", ""))
    return "; ".join([head] + [rng.choice(tags) for _ in range(rng.randint(0, 8))]).encode("utf-8")


def _key_record(rng: random.Random, keys: world.WorldKeys) -> list[bytes]:
    key = rng.choice((keys.attacker_rsa, keys.attacker_ed, keys.victim_rsa))
    tags = [b"v=DKIM1", b"k=" + key.kind.encode(), b"p=" + key.public_b64.encode()]
    extras = [
        b"h=sha256",
        b"h=sha1",
        b"h=sha256:sha1",
        b"s=email",
        b"s=*",
        b"s=tlsrpt",
        b"t=y",
        b"t=s",
        b"t=y:s",
        b"k=rsa",
        b"k=ed25519",
        b"k=",
        b"p=",
        b"n=note",
        b"v=DKIM2",
        b"g=*",
        b"x=\xff",
    ]
    for _ in range(rng.randint(0, 4)):
        op = rng.randrange(4)
        if op == 0:
            tags.insert(rng.randint(0, len(tags)), rng.choice(extras))
        elif op == 1 and len(tags) > 1:
            del tags[rng.randrange(len(tags))]
        elif op == 2:
            p = rng.randrange(len(tags))
            at = rng.randint(0, len(tags[p]))
            tags[p] = tags[p][:at] + rng.choice((b" ", b"\r\n ", b"=", b";", b"A", b"\x00")) + tags[p][at:]
        else:
            tags[-1] = tags[-1][: rng.randint(0, len(tags[-1]))]
    record = b"; ".join(tags)
    return [record] if rng.random() < 0.8 else [record, b"v=DKIM1; p=" + rng.randbytes(12).hex().encode()]


def attacker_dns(keys: world.WorldKeys) -> dict[str, list[bytes]]:
    """The attacker's own odd DNS: SPF, DMARC and key records it is free to publish, fixed per run."""
    rng = random.Random("authmilter-fuzz dns")
    records: dict[str, list[bytes]] = {}
    for n in range(WEIRD_RECORDS):
        records[f"spf{n}.{ATTACKER}"] = [_spf_record(rng, n)] * rng.choice((1, 1, 1, 2))
        records[f"_dmarc.d{n}.{ATTACKER}"] = [_dmarc_record(rng)]
        records[f"w{n}._domainkey.{ATTACKER}"] = _key_record(rng, keys)
    return records


def campaign_keys() -> world.WorldKeys:
    # Fixed labels, not --seed: an input saved by any run replays against the same keys.
    def rng(label: str) -> random.Random:
        return random.Random(f"authmilter-fuzz {label}")

    return world.WorldKeys(
        victim_rsa=seeded_rsa_key(rng("victim rsa"), 1024),
        victim_ed=seeded_ed25519_key(rng("victim ed")),
        attacker_rsa=seeded_rsa_key(rng("attacker rsa"), 1024),
        attacker_ed=seeded_ed25519_key(rng("attacker ed")),
    )


def build_corpus(keys: world.WorldKeys, peers: Path | None) -> list[tuple[str, bytes]]:
    seeds = list(world.seed_messages(keys).items())
    # One signature with l=, which allows content after the signed length: still a valid signature.
    plain = world.seed_messages(keys)["spoof-unsigned"]
    sig = dkim.sign(
        plain,
        world.RSA_SELECTOR.encode(),
        VICTIM.encode(),
        keys.victim_rsa.private_pem,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject"],
        length=True,
    )
    seeds.append(("victim-l-tag", bytes(sig) + plain))
    if peers is not None and peers.is_dir():
        for path in sorted(peers.rglob("*.eml")):
            if path.stat().st_size <= MAX_SEED:
                seeds.append((f"peer:{path.relative_to(peers)}", path.read_bytes()))
    return seeds


_CAMPAIGN: Campaign | None = None


class Hang(BaseException):
    """Raised by the alarm; a BaseException so that evaluate's own `except Exception` lets it through."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang()


# --- one chunk of inputs, in a worker --------------------------------------------------------------


@dataclass
class Finding:
    count: int = 0
    first: str = ""  # the first traceback or detail of this kind
    saved: str = ""  # the file it was saved to


@dataclass
class Stats:
    inputs: int = 0
    seconds: float = 0.0  # wall time spent evaluating (not mutating)
    mutations: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    dmarc: Counter[str] = field(default_factory=Counter)
    modes: Counter[str] = field(default_factory=Counter)
    exceptions: dict[str, Finding] = field(default_factory=dict)
    internal: dict[str, Finding] = field(default_factory=dict)
    swallowed: dict[str, Finding] = field(default_factory=dict)
    vocabulary: dict[str, Finding] = field(default_factory=dict)
    violations: dict[str, Finding] = field(default_factory=dict)
    differentials: dict[str, Finding] = field(default_factory=dict)
    hangs: dict[str, Finding] = field(default_factory=dict)
    slowest: list[tuple[float, str]] = field(default_factory=list)

    def merge(self, other: Stats) -> None:
        self.inputs += other.inputs
        self.seconds += other.seconds
        for name in ("mutations", "actions", "dmarc", "modes"):
            getattr(self, name).update(getattr(other, name))
        for name in (
            "exceptions",
            "internal",
            "swallowed",
            "vocabulary",
            "violations",
            "differentials",
            "hangs",
        ):
            mine: dict[str, Finding] = getattr(self, name)
            for kind, found in getattr(other, name).items():
                if kind in mine:
                    mine[kind].count += found.count
                else:
                    mine[kind] = found
        self.slowest = sorted(self.slowest + other.slowest, reverse=True)[:10]


def traceback_kind(text: str) -> str:
    """Exception type and innermost frame of a formatted traceback: what tells two bugs apart."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', text)
    last = text.strip().splitlines()[-1] if text.strip() else "?"
    exc = last.split(":", 1)[0]
    if not frames:
        return exc
    path, line, func = frames[-1]
    return f"{exc} at {Path(path).name}:{line} in {func}"


def _record(table: dict[str, Finding], kind: str, detail: str, save: Callable[[str], str]) -> None:
    found = table.get(kind)
    if found is None:
        found = table[kind] = Finding(first=detail)
    found.count += 1
    if found.count <= SAVE_PER_KIND:
        path = save(kind)
        found.saved = found.saved or path


def _direct_headers(raw: bytes) -> tuple[Header, ...]:
    """Header fields as the milter builds them from what the MTA hands over.

    The MTA passes each field as C strings (so nothing after a NUL), names without the colon;
    the milter turns bare LF into CRLF in values.
    """
    out: list[Header] = []
    for f in Draft.parse(raw).fields:
        name, colon, value = f.partition(b":")
        name = name.split(b"\x00", 1)[0]
        if not colon or not name:
            continue
        value = re.sub(rb"\r?\n", b"\r\n", value.split(b"\x00", 1)[0])
        out.append(Header(name, value))
    return tuple(out)


def judge(c: Campaign, tx: Transaction, verdict: Verdict) -> list[tuple[str, str, str]]:
    """(table, kind, detail) for everything wrong with this verdict."""
    found: list[tuple[str, str, str]] = []
    if world.internal_failure(verdict):
        detail = verdict.errors[0] if verdict.errors else ""
        found.append(("internal", f"{verdict.reason}: {traceback_kind(detail)}", detail))
    for text in world.swallowed_errors(verdict):
        found.append(("swallowed", text, text))
    for text in world.vocabulary_problems(verdict):
        found.append(("vocabulary", text, text))
    violation = world.rule_violation(tx, verdict, c.keys)
    if violation:
        found.append(("violations", violation.split(" (", 1)[0], violation))
    differential = world.reader_differential(tx, verdict)
    if differential:
        found.append(("differentials", differential.split(";", 1)[0], differential))
    return found


def run_one(c: Campaign, message: bytes, env: world.Envelope, direct: bool) -> tuple[Transaction, Verdict]:
    tx = world.transaction(message, env, _direct_headers(message) if direct else None)
    return tx, evaluate(tx, c.resolver, c.settings, world.AUTHSERV_ID, c.policy)


def run_chunk(task: tuple[int, int, int]) -> Stats:
    seed, chunk, count = task
    c = _CAMPAIGN
    assert c is not None, "the campaign is built before the workers start"
    rng = random.Random(f"{seed}:{chunk}")
    mutator = Mutator(rng, c.seeds)
    names = list(MUTATIONS)
    stats = Stats()
    groups = [g for g in (c.groups.get(k, []) for k in SEED_WEIGHTS) if g]
    weights = [w for k, w in SEED_WEIGHTS.items() if c.groups.get(k)]
    for index in range(count):
        seed_name, message = rng.choice(rng.choices(groups, weights)[0])
        applied = [rng.choice(names) for _ in range(rng.choice((1, 1, 2, 3)))]
        for name in applied:
            message = MUTATIONS[name](mutator, message)[:MAX_MESSAGE]
        stats.mutations.update(applied)
        envelope = world.ENVELOPES[rng.choice(tuple(world.ENVELOPES))]
        if rng.random() < WEIRD_ENVELOPE_SHARE:
            envelope = weird_envelope(rng, envelope)
        direct = rng.random() < DIRECT_SHARE
        stats.modes["milter fields" if direct else "split file"] += 1
        meta = {
            "seed": seed,
            "chunk": chunk,
            "index": index,
            "from_seed": seed_name,
            "mutations": applied,
            "envelope": asdict(envelope),
            "direct": direct,
        }

        def save(kind: str, detail: str = "", message: bytes = message, meta: dict[str, Any] = meta) -> str:
            return save_input(c.out, kind, message, {**meta, "kind": kind, "detail": detail})

        start = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, c.timeout)
        try:
            tx, verdict = run_one(c, message, envelope, direct)
        except Hang:
            stats.inputs += 1
            _record(
                stats.hangs,
                f"over {c.timeout:g} s",
                f"seed {seed_name}, {applied}",
                lambda k: save("hang " + k),
            )
            continue
        except Exception:
            stats.inputs += 1
            text = traceback.format_exc()
            _record(stats.exceptions, traceback_kind(text), text, lambda k, t=text: save("exception " + k, t))
            continue
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        took = time.perf_counter() - start
        stats.inputs += 1
        stats.seconds += took
        if len(stats.slowest) < 10 or took > stats.slowest[-1][0]:
            stats.slowest = sorted(
                [*stats.slowest, (took, f"{seed_name} {'+'.join(applied)}")], reverse=True
            )[:10]
        stats.actions[verdict.action.value] += 1
        dmarc = verdict.results.dmarc.result if verdict.results and verdict.results.dmarc else "(no result)"
        stats.dmarc[dmarc] += 1
        for table, kind, detail in judge(c, tx, verdict):
            _record(getattr(stats, table), kind, detail, lambda k, t=table, d=detail: save(f"{t} {k}", d))
    return stats


def save_input(out: Path, kind: str, message: bytes, meta: dict[str, Any]) -> str:
    digest = hashlib.sha256(message).hexdigest()[:12]
    slug = re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-")[:60]
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"{slug}-{digest}"
    base.with_suffix(".eml").write_bytes(message)
    base.with_suffix(".json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    return str(base.with_suffix(".json"))


def _init_worker() -> None:
    signal.signal(signal.SIGALRM, _alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the campaign


# --- reporting ---------------------------------------------------------------------------------------


def _table(title: str, counts: Counter[str], total: int) -> list[str]:
    lines = [f"{title}:"]
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {name:<24} {n:>10,}  {100 * n / max(total, 1):5.1f} %")
    return lines


def _findings(title: str, table: dict[str, Finding], *, show_first: bool) -> list[str]:
    total = sum(f.count for f in table.values())
    lines = [f"{title}: {total:,}" + ("" if total else " (none)")]
    for kind, found in sorted(table.items(), key=lambda kv: -kv[1].count):
        lines.append(f"  {found.count:>8,}  {kind}" + (f"  [{found.saved}]" if found.saved else ""))
        if show_first and found.first:
            lines.extend("            " + line for line in found.first.rstrip().splitlines()[-12:])
    return lines


def report(stats: Stats, wall: float, processes: int, corpus: Counter[str]) -> str:
    rate = stats.inputs / wall if wall else 0.0
    lines = [
        f"inputs: {stats.inputs:,} in {wall:,.1f} s wall: {rate:,.0f} inputs/s over {processes} processes "
        f"({rate / max(processes, 1):,.0f}/s each; evaluate itself "
        f"{1000 * stats.seconds / max(stats.inputs, 1):.2f} ms per input)",
        "corpus: " + ", ".join(f"{n} {k}" for k, n in sorted(corpus.items())),
        *_table("mutations applied", stats.mutations, sum(stats.mutations.values())),
        *_table("input modes", stats.modes, stats.inputs),
        *_table("verdict actions", stats.actions, stats.inputs),
        *_table("dmarc results", stats.dmarc, stats.inputs),
        *_findings("exceptions out of evaluate (0 expected)", stats.exceptions, show_first=True),
        *_findings("internal-failure verdicts (0 expected)", stats.internal, show_first=True),
        *_findings("exceptions swallowed by a check (0 expected)", stats.swallowed, show_first=False),
        *_findings("results outside the vocabulary (0 expected)", stats.vocabulary, show_first=False),
        *_findings("hangs (0 expected)", stats.hangs, show_first=False),
        *_findings("rule violations (0 expected)", stats.violations, show_first=True),
        *_findings("reader differentials (for a look by hand)", stats.differentials, show_first=True),
        "slowest inputs:",
        *(f"  {1000 * t:9.1f} ms  {what}" for t, what in stats.slowest),
    ]
    return "\n".join(lines)


def bugs(stats: Stats) -> int:
    return sum(
        sum(f.count for f in getattr(stats, name).values())
        for name in ("exceptions", "internal", "swallowed", "vocabulary", "hangs", "violations")
    )


# --- replay ----------------------------------------------------------------------------------------


def replay(path: Path, out: Path) -> int:
    meta_path = path.with_suffix(".json")
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    message = path.with_suffix(".eml").read_bytes()
    c = Campaign(campaign_keys(), [], load_policy([POLICY]), out, timeout=600.0)
    envelope = world.Envelope(**meta.get("envelope", asdict(world.ENVELOPES["attacker"])))
    direct = bool(meta.get("direct", False))
    print(
        f"replaying {path.with_suffix('.eml')} ({len(message):,} bytes), envelope {envelope}, "
        f"{'milter fields' if direct else 'split file'}; saved as: {meta.get('kind', '?')}"
    )
    start = time.perf_counter()
    try:
        tx, verdict = run_one(c, message, envelope, direct)
    except Exception:
        traceback.print_exc()
        return 2
    print(f"evaluate: {1000 * (time.perf_counter() - start):.1f} ms")
    print(f"action {verdict.action.value}, reason {verdict.reason!r}")
    if verdict.results is not None:
        r = verdict.results
        print(f"spf {r.spf.effective.result if r.spf else '-'}")
        print(f"dkim {[(d.result, d.domain, d.reason) for d in r.dkim]}")
        print(f"arc {r.arc.result if r.arc else '-'} {r.arc.reason if r.arc else ''}; author {r.author}")
        if r.dmarc is not None:
            print(f"dmarc {r.dmarc.result} for {r.dmarc.domain!r} ({r.dmarc.reason})")
    for err in verdict.errors:
        print(err)
    found = judge(c, tx, verdict)
    for table, _kind, detail in found:
        print(f"{table}: {detail}")
    return 2 if any(t != "differentials" for t, _, _ in found) else 0


# --- main ----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.split("\n")[0])
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--minutes", type=float, help="run for this long (default: 1 minute)")
    stop.add_argument("--inputs", type=int, help="run this many inputs")
    p.add_argument("--seed", type=int, default=1, help="mutation seed (default 1)")
    p.add_argument(
        "--processes",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="worker processes (default: the CPUs this process may use)",
    )
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"where failing inputs go (default {DEFAULT_OUT})"
    )
    p.add_argument(
        "--peers",
        type=Path,
        default=PEERS,
        help="directory of extra seed messages (*.eml), "
        "default ../shared/conformance/peers/msgs when it exists",
    )
    p.add_argument(
        "--input-timeout", type=float, default=10.0, help="seconds before an input counts as a hang"
    )
    p.add_argument("--progress", type=float, default=30.0, help="seconds between progress lines")
    p.add_argument("--json", type=Path, help="write the figures there too")
    p.add_argument(
        "--replay", type=Path, help="run one saved input (.eml or .json) again and print its verdict"
    )
    args = p.parse_args(argv)
    if args.replay:
        return replay(args.replay, args.out)

    command = "python -m benchmarks.fuzz " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    print(command, flush=True)
    keys = campaign_keys()
    seeds = build_corpus(keys, args.peers)
    corpus = Counter(seed_group(name) for name, _ in seeds)
    global _CAMPAIGN
    _CAMPAIGN = Campaign(keys, seeds, load_policy([POLICY]), args.out, args.input_timeout)

    deadline = time.monotonic() + 60 * (args.minutes if args.minutes is not None else 1.0)
    total = args.inputs
    processes = max(1, args.processes)
    tasks_sent = 0
    stats = Stats()
    start = last = time.monotonic()

    def more() -> bool:
        if total is not None:
            return tasks_sent * CHUNK < total
        return time.monotonic() < deadline

    def next_task() -> tuple[int, int, int]:
        nonlocal tasks_sent
        count = CHUNK if total is None else min(CHUNK, total - tasks_sent * CHUNK)
        task = (args.seed, tasks_sent, count)
        tasks_sent += 1
        return task

    ctx = multiprocessing.get_context("fork")  # workers inherit the built campaign
    interrupted = False
    with ctx.Pool(processes, initializer=_init_worker) as pool:
        pending = [pool.apply_async(run_chunk, (next_task(),)) for _ in range(2 * processes) if more()]
        try:
            while pending:
                done = [r for r in pending if r.ready()]
                if not done:
                    time.sleep(0.05)
                    continue
                for r in done:
                    pending.remove(r)
                    stats.merge(r.get())
                    if more() and not interrupted:
                        pending.append(pool.apply_async(run_chunk, (next_task(),)))
                now = time.monotonic()
                if now - last >= args.progress:
                    last = now
                    print(
                        f"  {now - start:7.0f} s  {stats.inputs:>10,} inputs  "
                        f"{stats.inputs / (now - start):7,.0f}/s  bugs so far {bugs(stats)}",
                        flush=True,
                    )
        except KeyboardInterrupt:
            interrupted = True
            pool.terminate()
    wall = time.monotonic() - start
    print(report(stats, wall, processes, corpus))
    print(command)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": command,
                    "inputs": stats.inputs,
                    "wall_seconds": wall,
                    "processes": processes,
                    "mutations": stats.mutations,
                    "actions": stats.actions,
                    "dmarc": stats.dmarc,
                    "modes": stats.modes,
                    **{
                        name: {
                            k: {"count": f.count, "first": f.first, "saved": f.saved}
                            for k, f in getattr(stats, name).items()
                        }
                        for name in (
                            "exceptions",
                            "internal",
                            "swallowed",
                            "vocabulary",
                            "hangs",
                            "violations",
                            "differentials",
                        )
                    },
                },
                indent=1,
                default=str,
            )
            + "\n"
        )
    return 2 if bugs(stats) else 0


if __name__ == "__main__":
    raise SystemExit(main())
