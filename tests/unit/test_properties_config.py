"""Properties of the config and policy-file loaders over generated and mutated files.

Any bytes end in a loaded config (or policy) or in a clean error that names the file and a line or
key, never in another exception; and what loads is usable: a loaded config starts, a loaded
policy never makes an evaluation fail.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from authmilter.core.authresults import build_authentication_results
from authmilter.core.decision import CONDITION_KEYS, Policy
from authmilter.core.evaluate import EvalSettings, evaluate_transaction
from authmilter.core.model import AuthorResult, Results
from authmilter.files.config import Config, ConfigError, load_config
from authmilter.files.policy import PolicyError, parse_policy
from tests import fuzzworld as world
from tests.mailfactory import ed25519_key, rsa_key
from tests.propertysupport import ROOT, budget

SAMPLE_CONFIG = (ROOT / "etc" / "authmilter.toml").read_bytes()
POLICY_FILES = [
    (ROOT / "policies" / "default.toml").read_bytes(),
    *(p.read_bytes() for p in sorted((ROOT / "policies" / "examples").glob("*.toml"))),
]


# --- writing TOML ----------------------------------------------------------------------------------


def toml_string(text: str) -> str:
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_string(key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"


def toml_document(top: dict[str, Any], tables: dict[str, dict[str, Any]]) -> str:
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in top.items()]
    for name, table in tables.items():
        lines.append(f"[{toml_key(name)}]")
        lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


scalar = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=20))
toml_any = st.recursive(
    scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def mutate_lines(raw: bytes, ops: list[tuple[int, int, bytes]]) -> bytes:
    lines = raw.split(b"\n")
    for op, at, junk in ops:
        i = at % len(lines)
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[at * 7 % len(lines)])
        elif op == 2:
            key, eq, _ = lines[i].partition(b"=")
            lines[i] = key + eq + b" " + junk if eq else junk
        elif op == 3:
            lines.insert(i, junk)
        else:
            cut = at % (len(lines[i]) + 1)
            lines[i] = lines[i][:cut] + junk + lines[i][cut:]
        if not lines:
            lines = [b""]
    return b"\n".join(lines)


JUNK = st.one_of(
    st.binary(max_size=12),
    st.sampled_from(
        [
            b"true",
            b"1e400",
            b"-0",
            b"nan",
            b"inf",
            b"[[rules]]",
            b'"""',
            b"9" * 30,
            b"1979-05-27T07:32:00Z",
            b"{}",
            b"[]",
            b"'''",
            b'"\\u0000"',
            b'"\\ud800"',
            b'"\\u00e9x"',
            b"[dns]",
            b"[dns",
            b"[[",
            b'"a\\u0000b"',
            b"0x10",
            b'["1.2.3.4", 5]',
            b'"\\u0661\\u0662"',
            b"= 3",
            b"x.y = 1",
            b"\xff",
            b"\x00",
            b"\r",
        ]
    ),
)
LINE_OPS = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 200), JUNK), min_size=1, max_size=6)


# --- the config ------------------------------------------------------------------------------------

CONFIG_TOP: dict[str, Any] = {
    "socket": [
        "inet:8891@127.0.0.1",
        "unix:/run/a.sock",
        "inet:\u0661\u0662@127.0.0.1",
        "inet:0@::1",
        "inet6:25",
    ],
    "authserv_id": ["mx.example.com", "mx.ex\u00e4mple", "mx\u0001", "", " mx ", "MX.EXAMPLE.COM."],
    "log_level": ["info", "debug", "loud"],
    "log_format": ["kv", "json"],
    "log_target": ["stderr", "syslog"],
    "syslog_socket": ["/dev/log", "dev/log", "/dev/\u0000log"],
    "milter_timeout": [300, 0, 3601],
    "workers": [1, "auto", 0, 2.0, "2"],
    "pin_workers": [True, "yes"],
    "fail_safe": ["tempfail", "accept", "reject"],
    "signing": ["signing.toml", "a\u0000b", ""],
    "policy": [["../policies/default.toml"], "p.toml", [3], ["a\u0000"]],
}
CONFIG_TABLES: dict[str, dict[str, list[Any]]] = {
    "dns": {
        "nameservers": [["127.0.0.1"], ["::1", "192.0.2.53"], [1], [True], ["resolver"], ["fe80::1%eth0"]],
        "port": [53, 0, 65536],
        "timeout": [5.0, 0.0, 60],
        "cache_size": [0, 10000, -1],
    },
    "dkim": {"max_signatures": [10, 0, 101], "min_key_bits": [1024, 512, 2048]},
    "spf": {"check_helo": [True, False], "timeout": [20.0, 0.5]},
    "spool": {"above": [0, 1048576, -1], "directory": ["", "/tmp", "relative"]},
    "metrics": {"listen": ["", "127.0.0.1:9100", "[::1]:9100", "127.0.0.1:\u0661\u0662", "host:9100"]},
}


def _entries(spec: dict[str, list[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.lists(
        st.sampled_from(sorted(spec)) | st.text(max_size=8), max_size=len(spec) + 1, unique=True
    ).flatmap(
        lambda keys: st.fixed_dictionaries(
            {k: (st.sampled_from(spec[k]) if k in spec else toml_any) | toml_any for k in keys}
        )
    )


config_document = st.builds(
    toml_document,
    _entries(CONFIG_TOP),
    st.lists(st.sampled_from(sorted(CONFIG_TABLES)), unique=True, max_size=5).flatmap(
        lambda names: st.fixed_dictionaries({n: _entries(CONFIG_TABLES[n]) for n in names})
    ),
).map(lambda s: s.encode("utf-8", "surrogatepass"))


def _clean_config_error(path: Path, error: ConfigError) -> None:
    text = str(error)
    assert text.startswith(f"{path}:"), text
    # Either a line (syntax, encoding) or the key at fault.
    assert re.match(rf"{re.escape(str(path))}:(\d+: | [A-Za-z0-9_.\"-]+: )", text) or re.search(
        r"\(at line \d+, column \d+\)", text
    ), text


def _usable(config: Config) -> None:
    """What a loaded config holds must work when the milter uses it."""
    assert all(isinstance(ns, str) and ipaddress.ip_address(ns) for ns in config.dns.nameservers), config.dns
    kind, _, rest = config.socket.partition(":")
    if kind in ("inet", "inet6"):
        assert re.fullmatch(r"[0-9]+(@.*)?", rest), config.socket
    if config.metrics_listen:
        assert re.fullmatch(r".*:[0-9]+", config.metrics_listen), config.metrics_listen
    if config.authserv_id:
        build_authentication_results(config.authserv_id, Results(None, (), AuthorResult(None), None))
    for path in (*config.policy_files, config.signing_file, config.syslog_socket):
        assert "\x00" not in path, path


def load(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "authmilter.toml"
        path.write_bytes(raw)
        try:
            config = load_config(path)
        except ConfigError as e:
            _clean_config_error(path, e)
        else:
            _usable(config)


@budget(300)
@given(st.binary(max_size=200) | st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_any_bytes_load_or_fail_cleanly(raw: bytes) -> None:
    load(raw)


@budget(400)
@given(config_document)
def test_generated_configs_load_usably_or_fail_cleanly(raw: bytes) -> None:
    load(raw)


@budget(200)
@given(LINE_OPS)
def test_mutated_sample_config_loads_usably_or_fails_cleanly(ops: list[tuple[int, int, bytes]]) -> None:
    load(mutate_lines(SAMPLE_CONFIG, ops))


# --- policy files ----------------------------------------------------------------------------------

KEYS = world.WorldKeys(rsa_key(1024, 11), ed25519_key(11), rsa_key(1024, 12), ed25519_key(12))


@functools.cache
def messages() -> list[bytes]:
    s = world.seed_messages(KEYS)
    return [s["victim-rsa-relaxed"], s["spoof-attacker-signed"], s["attacker-arc"]]


@functools.cache
def dns() -> world.MemoResolver:
    return world.MemoResolver(world.world_resolver(KEYS))


def _check_policy(name: str, raw: bytes) -> Policy | None:
    try:
        policy = parse_policy(name, raw)
    except PolicyError as e:
        lines = raw.count(b"\n") + 1
        assert e.problems
        for p in e.problems:
            assert p.file == name and 1 <= p.line <= lines, (p, lines)
            assert str(p).startswith(f"{name}:{p.line}: "), str(p)
        return None
    # Whatever loads must decide every message without the decision itself failing.
    for message in messages():
        tx = world.transaction(message, world.ENVELOPES["attacker"])
        verdict = evaluate_transaction(tx, dns(), EvalSettings(), world.AUTHSERV_ID, policy)
        assert not world.internal_failure(verdict), verdict.errors
    return policy


CONDITION_VALUES: list[Any] = [
    True,
    False,
    "pass",
    "fail",
    "none",
    "reject",
    "valid",
    "invalid",
    "192.0.2.0/24",
    "::ffff:192.0.2.0/120",
    "10.0.0.1/8",
    ".example.com",
    "example.com",
    "*.example.com",
    "smtpd",
    "a b",
    "",
    ["pass", "fail"],
    [],
    ["192.0.2.1", "2001:db8::/32"],
    ["mx.example.", "\u00e9xample.com"],
    3,
    ["x", 1],
    {"a": 1},
    "fe80::1%eth0",
]
RULE_VALUES: dict[str, list[Any]] = {
    "name": ["r", "Rule", "a" * 65, "x.y-z_1", 3, ""],
    "description": ["d", 1],
    "action": ["accept", "reject", "tempfail", "quarantine", "discard", "drop"],
    "override": ["forwarded", "x"],
    "monitor": [True, "no"],
    "stage": ["mail", "rcpt", "eom", "data"],
    "reply": [
        "dmarc_reject",
        "nope",
        {"code": "550", "status": "5.7.1", "text": "no"},
        {"code": "450", "status": "5.7.1", "text": "x"},
        {"code": "550"},
        5,
    ],
}


def _rule() -> st.SearchStrategy[dict[str, Any]]:
    when = st.dictionaries(
        st.sampled_from(sorted(CONDITION_KEYS)) | st.text(max_size=6),
        st.sampled_from(CONDITION_VALUES) | toml_any,
        max_size=3,
    )
    return st.fixed_dictionaries(
        {
            "name": st.sampled_from(RULE_VALUES["name"]) | st.text(max_size=8),
            "action": st.sampled_from(RULE_VALUES["action"]),
        },
        optional={
            k: st.sampled_from(v) | toml_any for k, v in RULE_VALUES.items() if k not in ("name", "action")
        }
        | {"when": when | toml_any},
    )


def _policy_document(settings: dict[str, Any], replies: dict[str, Any], rules: list[dict[str, Any]]) -> bytes:
    lines: list[str] = []
    if settings:
        lines.append("[settings]")
        lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in settings.items())
    for name, reply in replies.items():
        lines.append(f"[replies.{toml_key(name)}]")
        if isinstance(reply, dict):
            lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in reply.items())
        else:
            lines.append(f"x = {toml_value(reply)}")
    for rule in rules:
        lines.append("[[rules]]")
        lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in rule.items())
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")


policy_document = st.builds(
    _policy_document,
    st.dictionaries(
        st.sampled_from(["monitor", "quarantine", "quarantine_header", "monitr"]),
        st.sampled_from([True, "hold", "header", "X-Q", "X Q", "drop"]) | toml_any,
        max_size=3,
    ),
    st.dictionaries(
        st.sampled_from(["dmarc_reject", "mine", "Bad Name"]),
        st.fixed_dictionaries(
            {},
            optional={
                "code": st.sampled_from(["550", "451", "250", "5500", 550]),
                "status": st.sampled_from(["5.7.1", "4.7.1", "5.7", "x"]),
                "text": st.sampled_from(["no", "100%", "a\u0000b", "x" * 201, "\u00e9"]),
            },
        ),
        max_size=2,
    ),
    st.lists(_rule(), max_size=4),
)


@budget(150)
@given(policy_document)
def test_generated_policies_load_and_decide_or_fail_cleanly(raw: bytes) -> None:
    _check_policy("p.toml", raw)


@budget(150)
@given(st.sampled_from(range(len(POLICY_FILES))), LINE_OPS)
def test_mutated_shipped_policies_load_and_decide_or_fail_cleanly(
    which: int, ops: list[tuple[int, int, bytes]]
) -> None:
    _check_policy("p.toml", mutate_lines(POLICY_FILES[which], ops))


@budget(200)
@given(st.binary(max_size=200) | st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_any_bytes_as_a_policy_load_or_fail_cleanly(raw: bytes) -> None:
    _check_policy("p.toml", raw)
