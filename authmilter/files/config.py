"""Load and validate the one TOML config file.

Every error names the file, the key and the reason, because an operator reading a refusal to
start at 3 a.m. should not have to guess which of forty lines is wrong. Unknown keys are errors,
not warnings: a misspelt key silently ignored is a security setting silently not applied.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket as _socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from authmilter.core.checks.dnslists import KINDS, DnsList
from authmilter.core.checks.greylist import GreylistSettings
from authmilter.core.checks.ratelimit import COUNTS, DIRECTIONS, RATE_KEYS, RateLimit
from authmilter.core.evaluate import EvalSettings
from authmilter.defaults import DEFAULT_POLICY
from authmilter.files.policy import _Locator


class ConfigError(Exception):
    """A config the milter refuses to run with; str() is the operator-facing message.

    `key_path` is the key at fault, as TOML nests it, so that `load_config` can add its line.
    """

    def __init__(self, message: str, key_path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.key_path = key_path


@dataclass(frozen=True)
class DnsSettings:
    nameservers: tuple[str, ...] = ()  # empty: the system resolver (/etc/resolv.conf)
    port: int = 53
    timeout: float = 5.0
    cache_size: int = 10000


@dataclass(frozen=True)
class StoreSettings:
    """Where greylisting and rate-limit state lives; opened only when a rule needs it."""

    backend: str = "sqlite"  # "sqlite" | "redis"
    path: str = "/var/lib/authmilter/state.db"  # sqlite; the unit's StateDirectory
    url: str = ""  # redis: redis://host:port/db, rediss://, unix://
    sentinels: tuple[tuple[str, int], ...] = ()  # redis through Sentinel, with `service`
    service: str = ""
    prefix: str = "authmilter:"
    timeout: float = 1.0  # seconds: a store slower than this counts as down for that message
    password_file: str = ""  # redis: a file holding the password (kept out of the config)


@dataclass(frozen=True)
class HistorySettings:
    """Where the record of every evaluated message goes, for DMARC reports and policy preview."""

    enabled: bool = True
    backend: str = "sqlite"  # "sqlite" | "postgresql" | "redis"
    path: str = "/var/lib/authmilter/history.db"  # sqlite
    url: str = ""  # postgresql: a libpq DSN or postgresql:// URL; redis: empty uses [store]'s server
    retention_days: int = 35
    queue: int = 10000  # records waiting for the writer; more are dropped (and counted), never waited for


@dataclass(frozen=True)
class ReportSettings:
    """Who we are in the DMARC reports we send, and how they leave."""

    org_name: str = ""
    email: str = ""  # the contact the report names, and the From of report messages
    extra_contact_info: str = ""
    receiver_domain: str = ""  # in report file names; empty: the domain of `email`
    smtp: str = "127.0.0.1:25"  # the local MTA that delivers them
    aggregate: bool = True  # `authmilter report send` sends aggregate reports
    failure: bool = False  # per-message failure reports (RFC 9991), from the milter
    failure_per_hour: int = 10  # per reported domain and milter process
    max_attempts: int = 6  # a destination failing this many times in a row is given up for the day


@dataclass(frozen=True)
class Config:
    path: str
    socket: str = "inet:8891@127.0.0.1"
    authserv_id: str = ""  # empty: the MTA's j macro, else this host's name
    log_level: str = "info"
    log_format: str = "kv"  # "kv" (key=value) | "json"
    log_target: str = "stderr"  # "stderr" (journald under systemd) | "syslog"
    syslog_socket: str = "/dev/log"
    metrics_listen: str = ""  # "ADDRESS:PORT" for the Prometheus endpoint; empty: off
    milter_timeout: int = 300
    # MTA connections one process serves at once (counted from option negotiation to close); one
    # more is tempfailed at connect. Per process: each worker has its own threads and memory.
    max_connections: int = 1000
    # What one message's header section may hold before it gets the fail-safe reply instead of a
    # verdict: every field is kept in memory until the end of the message.
    max_header_bytes: int = 16 * 1024 * 1024
    max_header_fields: int = 20000
    # Processes serving the socket: a count, or "auto" for one per CPU. 1 (no supervisor) is the
    # default because it is what small sites need and because [metrics] needs it.
    workers: int | str = 1
    # With workers > 1: each worker stays on one CPU (round robin over those this process may
    # use), so that its threads' GIL hand-offs do not cross CPUs.
    pin_workers: bool = True
    # A message body larger than this goes to a temporary file while it arrives instead of memory.
    spool_above: int = 1024 * 1024
    spool_directory: str = ""  # empty: the system's temporary directory ($TMPDIR, else /tmp)
    dns: DnsSettings = field(default_factory=DnsSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    # Seconds between RFC 5782 self-tests of each DNS list; 0: never (lists always in service).
    dnslist_self_test: float = 3600.0
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    policy_files: tuple[str, ...] = ()  # absolute; empty: no rules, every message accepted
    signing_file: str = ""  # absolute; empty: nothing is signed
    history: HistorySettings = field(default_factory=HistorySettings)
    reports: ReportSettings = field(default_factory=ReportSettings)


_LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_WORKERS = 256
MAX_CONNECTIONS = 100_000
_FAIL_SAFE = ("tempfail", "accept")


class _Reader:
    """Pops typed keys out of one TOML table, so whatever is left over is, by definition, unknown."""

    def __init__(self, path: str, table: Mapping[str, Any], prefix: str = "",
                 parts: tuple[str | int, ...] = ()) -> None:
        self.path = path
        self.table = dict(table)
        self.prefix = prefix
        self.parts = parts
        self.known: set[str] = set()  # every key asked for, present or not: for "did you mean"

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.prefix}{_display_key(key)}: {reason}", (*self.parts, key))

    def take(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.known.add(key)
        if key not in self.table:
            return default
        value = self.table.pop(key)
        # bool is an int in Python; a port of `true` is a mistake, not 1.
        if isinstance(value, bool) and kind is not bool and bool not in _as_tuple(kind):
            raise self.error(key, f"expected {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise self.error(key, f"expected {_kind_name(kind)}, got {type(value).__name__}")
        return value

    def take_int(self, key: str, default: int, lo: int, hi: int) -> int:
        value: int = self.take(key, int, default)
        if not lo <= value <= hi:
            raise self.error(key, f"must be between {lo} and {hi}, got {value}")
        return value

    def take_float(self, key: str, default: float, lo: float, hi: float) -> float:
        value = float(self.take(key, (int, float), default))
        if not lo <= value <= hi:
            raise self.error(key, f"must be between {lo} and {hi}, got {value}")
        return value

    def take_choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value: str = self.take(key, str, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def take_path(self, key: str, default: str) -> str:
        value: str = self.take(key, str, default)
        if "\0" in value:
            # TOML allows "\u0000"; no file name holds one, and the OS refuses it with a traceback.
            raise self.error(key, "a file name cannot contain a NUL character")
        return value

    def sub(self, key: str) -> _Reader:
        value = self.take(key, dict, {})
        return _Reader(self.path, value, f"{self.prefix}{key}.", (*self.parts, key))

    def finish(self) -> None:
        if self.table:
            unknown = sorted(self.table)[0]
            close = difflib.get_close_matches(unknown, sorted(self.known), n=1, cutoff=0.6)
            hint = f"; did you mean {self.prefix}{close[0]}?" if close else ""
            raise self.error(unknown, f"unknown key{hint}")


def _toml_words(message: str) -> str:
    """tomllib's message, with what it usually means in words an operator can act on."""
    if message.startswith("Illegal character '\\n'"):
        return (f"a line ends inside a string: a closing quote is missing ({message}); a string "
                "that spans lines needs triple quotes")
    if message.startswith("Cannot overwrite a value") or message.startswith("Cannot declare"):
        return f"a key or table is given twice ({message})"
    return message


def _display_key(key: str) -> str:
    # An unknown key can be anything TOML allows (empty, spaces, quotes): show it as TOML writes it.
    if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key):
        return key
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
             "dict": "a table", "list": "a list"}
    return " or ".join(names.get(k.__name__, k.__name__) for k in _as_tuple(kind))


def validate_socket(spec: str) -> str | None:
    """Why `spec` is not a libmilter socket we can open, or None if it is."""
    if spec.startswith("unix:") or spec.startswith("local:"):
        path = spec.split(":", 1)[1]
        if "\0" in path:
            return "a socket path cannot contain a NUL character"
        if not path.startswith("/"):
            return "a unix socket needs an absolute path"
        # sockaddr_un holds 108 bytes with the final NUL; libmilter would only say it cannot
        # open the socket.
        if len(path.encode()) > 107:
            return (f"the socket path is {len(path.encode())} bytes; a unix socket path may have at most "
                    "107: choose a shorter one (e.g. /run/authmilter/authmilter.sock)")
        return None
    if spec.startswith("inet:") or spec.startswith("inet6:"):
        rest = spec.split(":", 1)[1]
        port, _, host = rest.partition("@")
        if not _is_port(port):
            host_part, colon, port_part = rest.rpartition(":")
            if colon and not host and _is_port(port_part):
                # Postfix's own notation, as found in main.cf next to it.
                family = spec.split(":", 1)[0]
                return (f"bad port {port!r}: libmilter writes the port first, "
                        f"{family}:{port_part}@{host_part.strip('[]')} (Postfix's smtpd_milters "
                        f"writes the same socket as inet:{host_part}:{port_part})")
            return f"bad port {port!r} (expected inet:PORT@HOST)"
        if host:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                return f"bad listen address {host!r}: give an IP address"
        return None
    return "expected inet:PORT@ADDRESS, inet6:PORT@ADDRESS or unix:/PATH"


def parse_workers(value: object) -> int | str:
    """A worker count or "auto"; raises ValueError saying what is wrong."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'expected a number of processes or "auto", got {value!r}')
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"must be between 1 and {MAX_WORKERS}, got {value}")
    return value


def worker_count(workers: int | str) -> int:
    """How many processes `workers` means on this machine."""
    if workers != "auto":
        return int(workers)
    try:
        # The CPUs this process may run on (taskset, systemd's CPUAffinity=), not all there are.
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


def _is_port(text: str) -> bool:
    # str.isdigit() and int() also take other scripts' digits ("\u0661\u0662" is 12), which
    # libmilter and the HTTP server would not: ASCII digits only.
    return text.isascii() and text.isdigit() and 0 < int(text) < 65536


def _listen_problem(listen: str) -> str | None:
    host, sep, port = listen.rpartition(":")
    if not sep or not _is_port(port):
        return f"expected ADDRESS:PORT, got {listen!r}"
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f"bad address {host!r}: give an IP address"
    return None


def parse_config(path: str, data: Mapping[str, Any]) -> Config:
    top = _Reader(path, data)
    sock = top.take("socket", str, Config.socket)
    problem = validate_socket(sock)
    if problem:
        raise top.error("socket", problem)
    authserv_id = top.take("authserv_id", str, "").strip()
    if authserv_id and any(not "!" <= c <= "~" or c in ';"()\\' for c in authserv_id):
        # Printable ASCII only: Authentication-Results refuses anything else, so every message
        # would get the fail-safe reply.
        raise top.error("authserv_id", "must be a host name of printable ASCII, without spaces, quotes, "
                                       "';' or parentheses")
    log_level = top.take_choice("log_level", "info", _LOG_LEVELS)
    log_format = top.take_choice("log_format", "kv", ("kv", "json"))
    log_target = top.take_choice("log_target", "stderr", ("stderr", "syslog"))
    syslog_socket = top.take_path("syslog_socket", "/dev/log")
    if not syslog_socket.startswith("/"):
        raise top.error("syslog_socket", "needs an absolute path")
    milter_timeout = top.take_int("milter_timeout", 300, 1, 3600)
    max_connections = top.take_int("max_connections", Config.max_connections, 1, MAX_CONNECTIONS)
    # At least one whole milter packet's worth, or no real message could pass.
    max_header_bytes = top.take_int("max_header_bytes", Config.max_header_bytes, 64 * 1024, 1 << 30)
    max_header_fields = top.take_int("max_header_fields", Config.max_header_fields, 100, 10_000_000)
    try:
        top.known.add("workers")
        workers = parse_workers(top.table.pop("workers", 1))
    except ValueError as e:
        raise top.error("workers", str(e)) from None
    pin_workers = top.take("pin_workers", bool, True)
    fail_safe = top.take_choice("fail_safe", "tempfail", _FAIL_SAFE)
    signing = top.take_path("signing", "")
    signing_file = str((Path(path).resolve().parent / signing).resolve()) if signing else ""
    policy = top.take("policy", (str, list), None)
    base = Path(path).resolve().parent
    policy_files: list[str] = []
    if policy is None:
        # No `policy` key: the policy shipped with the program, so that a config file copied
        # anywhere (or a new one with two lines) protects as the sample does. `policy = []`
        # is how to say "no rules, accept everything".
        policy_files.append(str(DEFAULT_POLICY.resolve()))
    for item in [policy] if isinstance(policy, str) else policy or []:
        if not isinstance(item, str) or not item:
            raise top.error("policy", "expected a file name or a list of file names")
        if "\0" in item:
            raise top.error("policy", f"{item!r}: a file name cannot contain a NUL character")
        # Relative to the config file, so a config directory can be moved as a whole.
        resolved = (base / item).resolve()
        if not resolved.is_file():
            where = "" if Path(item).is_absolute() else f" (relative to this file's directory {base})"
            raise top.error("policy", f"{item!r} is {resolved}{where}, which is not a file; name an "
                                      "existing policy file, or leave `policy` out for the shipped "
                                      f"default ({DEFAULT_POLICY.resolve()})")
        policy_files.append(str(resolved))

    dns_r = top.sub("dns")
    nameservers = dns_r.take("nameservers", list, [])
    for ns in nameservers:
        try:
            # ip_address() also takes integers (1 is 0.0.0.1, and so is true).
            if not isinstance(ns, str):
                raise TypeError(ns)
            ipaddress.ip_address(ns)
        except (ValueError, TypeError):
            raise dns_r.error("nameservers", f"{ns!r} is not an IP address") from None
    dns = DnsSettings(
        nameservers=tuple(nameservers),
        port=dns_r.take_int("port", 53, 1, 65535),
        timeout=dns_r.take_float("timeout", 5.0, 0.1, 60.0),
        cache_size=dns_r.take_int("cache_size", 10000, 0, 10_000_000),
    )
    dns_r.finish()

    dkim_r = top.sub("dkim")
    max_sigs = dkim_r.take_int("max_signatures", 10, 1, 100)
    min_bits = dkim_r.take_int("min_key_bits", 1024, 1024, 16384)
    dkim_r.finish()

    spf_r = top.sub("spf")
    check_helo = spf_r.take("check_helo", bool, True)
    spf_timeout = spf_r.take_float("timeout", 20.0, 1.0, 120.0)
    spf_r.finish()

    spool_r = top.sub("spool")
    spool_above = spool_r.take_int("above", 1024 * 1024, 0, 1 << 40)
    spool_directory = spool_r.take_path("directory", "")
    if spool_directory and not os.path.isabs(spool_directory):
        raise spool_r.error("directory", "needs an absolute path")
    if spool_directory and not os.path.isdir(spool_directory):
        raise spool_r.error("directory", f"{spool_directory} is not a directory")
    spool_r.finish()

    metrics_r = top.sub("metrics")
    metrics_listen = metrics_r.take("listen", str, "").strip()
    if metrics_listen:
        problem = _listen_problem(metrics_listen)
        if problem:
            raise metrics_r.error("listen", problem)
    metrics_r.finish()
    store, store_on_error = _store_settings(top.sub("store"), base)
    history = _history_settings(top.sub("history"), base, store)
    reports = _report_settings(top.sub("reports"))
    greylist = _greylist_settings(top.sub("greylist"))
    ratelimits = tuple(_rate_limit(r) for r in _table_list(top, "ratelimit"))
    lists = tuple(_dns_list(r) for r in _table_list(top, "dnslist"))
    dnslists_r = top.sub("dnslists")
    self_test = dnslists_r.take_float("self_test_interval", 3600.0, 0.0, 7 * 86400.0)
    dnslists_r.finish()
    top.finish()

    return Config(
        path=path,
        socket=sock,
        authserv_id=authserv_id,
        log_level=log_level,
        log_format=log_format,
        log_target=log_target,
        syslog_socket=syslog_socket,
        metrics_listen=metrics_listen,
        milter_timeout=milter_timeout,
        max_connections=max_connections,
        max_header_bytes=max_header_bytes,
        max_header_fields=max_header_fields,
        workers=workers,
        pin_workers=pin_workers,
        spool_above=spool_above,
        spool_directory=spool_directory,
        dns=dns,
        store=store,
        dnslist_self_test=self_test,
        policy_files=tuple(policy_files),
        signing_file=signing_file,
        history=history,
        reports=reports,
        evaluation=EvalSettings(
            dkim_max_signatures=max_sigs,
            dkim_min_key_bits=min_bits,
            spf_check_helo=check_helo,
            spf_timeout=spf_timeout,
            fail_safe=fail_safe,
            dnslists=lists,
            greylist=greylist,
            ratelimits=ratelimits,
            store_on_error=store_on_error,
        ),
    )


def _table_list(top: _Reader, key: str) -> list[_Reader]:
    """`[[key]]` tables, each as a reader whose errors say `key[N].field`; names must be unique."""
    value = top.take(key, list, [])
    readers: list[_Reader] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise top.error(key, f"entry {index + 1}: expected a table ([[{key}]]), "
                                 f"got {type(item).__name__}")
        reader = _Reader(top.path, item, f"{top.prefix}{key}[{index + 1}].", (*top.parts, key, index))
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise reader.error("name", "needed: 1-64 lower-case letters, digits, '_', '-' or '.', starting "
                                       f"with a letter or digit (policy rules name it); got {name!r}")
        if name in seen:
            raise reader.error("name", f"{name!r} is the name of an earlier [[{key}]] too")
        seen.add(name)
        readers.append(reader)
    return readers


_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}\Z")
_MEANING = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}\Z")


def _duration(r: _Reader, key: str, default: float, lo: float, hi: float) -> float:
    return r.take_float(key, default, lo, hi)


def _store_settings(r: _Reader, base: Path) -> tuple[StoreSettings, str]:
    backend = r.take_choice("backend", "sqlite", ("sqlite", "redis"))
    path = r.take_path("path", StoreSettings.path)
    url = r.take("url", str, "").strip()
    sentinels_raw = r.take("sentinels", list, [])
    sentinels: list[tuple[str, int]] = []
    for item in sentinels_raw:
        host, _, port = item.rpartition(":") if isinstance(item, str) else ("", "", "")
        if not host or not _is_port(port):
            raise r.error("sentinels", f"{item!r} is not HOST:PORT")
        sentinels.append((host.strip("[]"), int(port)))
    service = r.take("service", str, "").strip()
    prefix = r.take("prefix", str, StoreSettings.prefix)
    timeout = r.take_float("timeout", 1.0, 0.05, 30.0)
    password_file = r.take_path("password_file", "")
    on_error = r.take_choice("on_error", "accept", ("accept", "tempfail"))
    if backend == "redis":
        if bool(url) == bool(sentinels):
            raise r.error("url" if url else "backend",
                          "redis needs either url (redis://host:port/db) or sentinels with service")
        if sentinels and not service:
            raise r.error("service", "needed with sentinels: the name their master is monitored under")
        if url and not url.startswith(("redis://", "rediss://", "unix://")):
            raise r.error("url", f"{url!r}: expected redis://, rediss:// or unix://")
    r.finish()
    return StoreSettings(
        backend=backend, path=str((base / path).resolve()), url=url, sentinels=tuple(sentinels),
        service=service, prefix=prefix, timeout=timeout,
        password_file=str((base / password_file).resolve()) if password_file else "",
    ), on_error


def _history_settings(r: _Reader, base: Path, store: StoreSettings) -> HistorySettings:
    enabled = r.take("enabled", bool, True)
    backend = r.take_choice("backend", "sqlite", ("sqlite", "postgresql", "redis"))
    # Beside the greylisting state by default: the one directory the unit lets us write.
    default_path = str(Path(store.path).parent / "history.db")
    path = r.take_path("path", default_path)
    url = r.take("url", str, "").strip()
    retention = r.take_int("retention_days", 35, 1, 3660)
    queue = r.take_int("queue", 10000, 1, 10_000_000)
    if backend == "postgresql" and not url:
        raise r.error("url", "postgresql needs url (postgresql://user@host/db or a libpq DSN)")
    if backend == "redis" and not url and store.backend != "redis":
        raise r.error("url", "redis needs url (redis://host:port/db), or [store] on Redis to share")
    if backend == "redis" and url and not url.startswith(("redis://", "rediss://", "unix://")):
        raise r.error("url", f"{url!r}: expected redis://, rediss:// or unix://")
    r.finish()
    return HistorySettings(enabled=enabled, backend=backend, path=str((base / path).resolve()),
                           url=url, retention_days=retention, queue=queue)


def _report_settings(r: _Reader) -> ReportSettings:
    org_name = r.take("org_name", str, "").strip()
    email = r.take("email", str, "").strip()
    if email and (email.count("@") != 1 or any(c.isspace() or c in "<>,;\"" for c in email)):
        raise r.error("email", f"{email!r} is not a plain address like dmarc-reports@example.com")
    extra = r.take("extra_contact_info", str, "").strip()
    receiver = r.take("receiver_domain", str, "").strip().lower()
    smtp = r.take("smtp", str, "127.0.0.1:25").strip()
    host, _, port = smtp.rpartition(":")
    if not host or not _is_port(port):
        raise r.error("smtp", f"{smtp!r} is not HOST:PORT")
    aggregate = r.take("aggregate", bool, True)
    failure = r.take("failure", bool, False)
    per_hour = r.take_int("failure_per_hour", 10, 0, 100000)
    attempts = r.take_int("max_attempts", 6, 1, 100)
    r.finish()
    return ReportSettings(org_name=org_name, email=email, extra_contact_info=extra,
                          receiver_domain=receiver or email.rpartition("@")[2].lower(), smtp=smtp,
                          aggregate=aggregate, failure=failure, failure_per_hour=per_hour,
                          max_attempts=attempts)


def _greylist_settings(r: _Reader) -> GreylistSettings:
    delay = r.take_float("delay", 300.0, 0.0, 86400.0)
    window = r.take_float("retry_window", 2 * 86400.0, 60.0, 30 * 86400.0)
    lifetime = r.take_float("lifetime", 35 * 86400.0, 3600.0, 400 * 86400.0)
    auto_allow = r.take_int("auto_allow_after", 5, 0, 1000)
    by_spf = r.take("by_spf_domain", bool, True)
    if not delay <= window:
        raise r.error("retry_window", f"must be at least delay ({delay:g} s), got {window:g}")
    if not window <= lifetime:
        raise r.error("lifetime", f"must be at least retry_window ({window:g} s), got {lifetime:g}")
    r.finish()
    return GreylistSettings(delay, window, lifetime, auto_allow, by_spf)


def _rate_limit(r: _Reader) -> RateLimit:
    name = r.take("name", str, "")
    key = r.take_choice("key", "client_ip", RATE_KEYS)
    if "rate" not in r.table:
        raise r.error("rate", "missing: how many recipients (or messages) per `per` seconds")
    rate = r.take_float("rate", 1.0, 0.001, 1e9)
    per = r.take_float("per", 3600.0, 1.0, 30 * 86400.0)
    burst = r.take_float("burst", 0.0, 0.0, 1e9)
    count = r.take_choice("count", "recipients", COUNTS)
    direction = r.take_choice("direction", "any", DIRECTIONS)
    r.finish()
    return RateLimit(name, key, rate, per, burst, count, direction)


def _dns_list(r: _Reader) -> DnsList:
    name = r.take("name", str, "")
    if "zone" not in r.table:
        raise r.error("zone", "missing: the list's DNS zone, e.g. zen.spamhaus.org")
    zone = r.take("zone", str, "")
    kind = r.take_choice("kind", "ip", KINDS)
    allow = r.take("allow", bool, False)
    identities = r.take("identities", list, [])
    for identity in identities:
        if identity not in ("helo", "mailfrom", "from"):
            raise r.error("identities", f"{identity!r} is not one of helo, mailfrom, from")
    if identities and kind == "ip":
        raise r.error("identities", "only domain lists (kind = \"domain\") are asked about domains")
    codes = r.take("codes", dict, {})
    for code, meaning in codes.items():
        if not isinstance(meaning, str) or not _MEANING.match(meaning):
            raise r.error("codes", f"{code}: the meaning must be one lower-case word (letters, digits, "
                                   f"'_', '-', '.'), as rules write it after the list's name; "
                                   f"got {meaning!r}")
    r.finish()
    try:
        return DnsList(name, zone, kind, codes, allow, tuple(identities))  # type: ignore[arg-type]
    except ValueError as e:
        raise r.error("codes" if "code" in str(e) else "zone", str(e)) from None


def load_config(path: str | Path) -> Config:
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{name}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{name}:{line}: not UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib's message carries "(at line N, column M)", or "(at end of document)".
        m = re.search(r"\(at line (\d+),", str(e))
        # Lines counted in "\n", as TOML does (str.splitlines() also breaks at form feeds).
        line = int(m.group(1)) if m else text.rstrip("\n").count("\n") + 1
        raise ConfigError(f"{name}:{line}: {_toml_words(str(e))}") from None
    try:
        return parse_config(name, data)
    except ConfigError as e:
        if not e.key_path:
            raise
        # tomllib reports no positions for keys; find the key's line in the text, as policy files do.
        line = _Locator(text).line(e.key_path)
        raise ConfigError(str(e).replace(f"{name}: ", f"{name}:{line}: ", 1), e.key_path) from None


def default_authserv_id(mta_j: str | None, hostname: Callable[[], str] = _socket.getfqdn) -> str:
    """RFC 8601 wants the name of the host that did the checks; the MTA's $j names it best."""
    return (mta_j or "").strip() or hostname()
