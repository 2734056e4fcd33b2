"""The signing file: TOML in, a validated `SigningConfig` out, or every problem as "file:line: key: reason".

Format (docs/signing.md has the whole story, etc/signing.example.toml a commented sample):

    [settings]            who is signed and how; every key optional
    [keys.NAME]           domain, selector, file: one private key (OpenDKIM's KeyTable)
    [[sign]]              match, keys, identity, use_sender_domain (OpenDKIM's SigningTable)

A file with any error is refused as a whole, like a policy file. Key files are different: a key
that is missing, unreadable or refused is a warning, the key is marked unavailable, and mail that
needs it gets the `on_key_error` action. That way one bad key file on a reload does not stop the
mail of every other domain, and the log names the file and the reason.

Line numbers come from the policy file reader's locator; problems use its `Problem` type.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from authmilter.core.decision import ConditionError, IPNetwork, make_condition
from authmilter.core.names import normalize_domain
from authmilter.core.signing.dkim import (
    BAD_AUTHOR_ACTIONS,
    KEY_ERROR_ACTIONS,
    SignEntry,
    SigningConfig,
    SigningKey,
    SigningSettings,
    header_name_problem,
    identity_within,
    parse_canonicalization,
    parse_identity,
    parse_pattern,
    pattern_covers,
)
from authmilter.files.keys import KeyLoadProblem, load_key, normalize_selector
from authmilter.files.policy import _NAME, Problem, _key, _Locator, _type_name, _unknown

__all__ = ["SigningError", "lint_signing", "load_signing", "parse_signing"]

_TOP_KEYS = ("settings", "keys", "sign", "arc")
_SETTINGS_KEYS = ("authenticated", "internal_networks", "daemons", "canonicalization", "headers",
                  "oversign", "expire", "on_key_error", "on_bad_author", "verify_signed")
_KEY_KEYS = ("domain", "selector", "file")
_SIGN_KEYS = ("match", "keys", "identity", "use_sender_domain")
# A signature that expires before a queued message is delivered fails; MTAs retry for days.
_SHORT_EXPIRY = 86400

KeyLoader = Callable[..., SigningKey | KeyLoadProblem]


class SigningError(Exception):
    """A signing file the milter refuses to run with; str() lists every problem, one per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def load_signing(path: str | Path) -> tuple[SigningConfig, list[Problem]]:
    """The signing file and its warnings (unavailable or weak keys); raises SigningError."""
    config, errors, warnings = _read(path)
    if errors or config is None:
        raise SigningError(errors)
    return config, warnings


def lint_signing(path: str | Path) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) for the file; no errors means the milter would load it."""
    _, errors, warnings = _read(path)
    return errors, warnings


def parse_signing(name: str, raw: bytes, *, base: Path | None = None,
                  loader: KeyLoader = load_key) -> tuple[SigningConfig | None, list[Problem], list[Problem]]:
    """One file's bytes to (config or None, errors, warnings); key files relative to `base`."""
    f = _File(name, base if base is not None else Path(name).resolve().parent, loader)
    f.read(raw)
    errors = sorted(f.errors, key=lambda p: p.line)
    warnings = sorted(f.warnings, key=lambda p: p.line)
    if errors:
        return None, errors, warnings
    return f.config(), [], warnings


def _read(path: str | Path) -> tuple[SigningConfig | None, list[Problem], list[Problem]]:
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        return None, [Problem(name, 0, "", f"cannot read: {e.strerror or e}")], []
    return parse_signing(name, raw)


@dataclass
class _KeyDraft:
    name: str
    path: tuple[str, ...]
    domain: str | None = None
    selector: str | None = None
    file: str | None = None
    ok: bool = True


class _File:
    def __init__(self, name: str, base: Path, loader: KeyLoader) -> None:
        self.name = name
        self.base = base
        self.loader = loader
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self.locator = _Locator("")
        self.settings: dict[str, Any] = {}
        self.key_drafts: list[_KeyDraft] = []
        self.entries: list[SignEntry] = []
        self.keys: dict[str, SigningKey] = {}
        self.unavailable: dict[str, str] = {}
        self.arc_key = ""
        self.arc_seal: tuple[str, ...] = ()

    def error(self, path: Sequence[str | int], key: str, reason: str, value: str | None = None) -> None:
        self.errors.append(Problem(self.name, self.locator.line(path, value), key, reason))

    def warn(self, path: Sequence[str | int], key: str, reason: str) -> None:
        self.warnings.append(Problem(self.name, self.locator.line(path), key, reason))

    def config(self) -> SigningConfig:
        return SigningConfig(
            settings=SigningSettings(**self.settings),
            entries=tuple(self.entries),
            keys=MappingProxyType(dict(self.keys)),
            unavailable=MappingProxyType(dict(self.unavailable)),
            file=self.name,
            arc_key=self.arc_key,
            arc_seal=self.arc_seal,
        )

    # -- the file as a whole ----------------------------------------------------------------

    def read(self, raw: bytes) -> None:
        data = self._parse(raw)
        if data is None:
            return
        for key in data:
            if key not in _TOP_KEYS:
                self.error((key,), _key(key), _unknown(key, _TOP_KEYS))
        self._read_settings(data.get("settings", {}))
        self._read_keys(data.get("keys", {}))
        self._read_sign(data.get("sign", []))
        self._read_arc(data.get("arc", {}))
        self._load_keys()

    def _parse(self, raw: bytes) -> dict[str, Any] | None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            self.errors.append(Problem(self.name, line, "", f"not UTF-8 (byte 0x{raw[e.start]:02x})"))
            return None
        text = text.removeprefix("\ufeff")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            message = str(e)
            m = re.search(r"\(at line (\d+), column (\d+)\)\s*\Z", message)
            line = int(m.group(1)) if m else 1
            reason = message[: m.start()].rstrip() + f" (column {m.group(2)})" if m else message
            self.errors.append(Problem(self.name, line, "", f"invalid TOML: {reason}"))
            return None
        self.locator = _Locator(text)
        return data

    # -- [arc] ------------------------------------------------------------------------------

    def _read_arc(self, value: object) -> None:
        if not isinstance(value, dict):
            self.error(("arc",), "arc", f"expected a table, got {_type_name(value)}")
            return
        known = {d.name for d in self.key_drafts}
        for key, v in value.items():
            path, name = ("arc", key), _key("arc", key)
            if key == "key":
                if not isinstance(v, str) or v not in known:
                    self.error(path, name, f"{v!r} is not a key defined under [keys]")
                else:
                    self.arc_key = v
            elif key == "seal":
                items = [v] if isinstance(v, str) else v
                if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
                    self.error(path, name, "expected a non-empty list of recipient patterns")
                    continue
                patterns: list[str] = []
                for item in items:
                    try:
                        patterns.append(parse_pattern(item))
                    except ValueError as e:
                        self.error(path, name, str(e), item)
                self.arc_seal = tuple(patterns)
            else:
                self.error(path, name, _unknown(key, ("key", "seal")))
        if value and (not self.arc_key) != (not self.arc_seal):
            self.error(("arc",), "arc", "sealing needs both a key and the recipients to seal for (seal)")

    # -- [settings] -------------------------------------------------------------------------

    def _read_settings(self, value: object) -> None:
        if not isinstance(value, dict):
            self.error(("settings",), "settings", f"expected a table, got {_type_name(value)}")
            return
        for key, v in value.items():
            path, name = ("settings", key), _key("settings", key)
            if key in ("authenticated", "verify_signed"):
                if isinstance(v, bool):
                    self.settings[key] = v
                else:
                    self.error(path, name, f"expected true or false, got {_type_name(v)}")
            elif key == "internal_networks":
                networks = self._condition_values(path, name, "client_ip", v)
                if networks is not None:
                    self.settings[key] = networks
            elif key == "daemons":
                words = self._condition_values(path, name, "daemon", v)
                if words is not None:
                    self.settings[key] = words
            elif key == "canonicalization":
                try:
                    self.settings[key] = parse_canonicalization(v if isinstance(v, str) else "")
                except ValueError as e:
                    self.error(path, name, str(e) if isinstance(v, str) else
                               f"expected a string like \"relaxed/relaxed\", got {_type_name(v)}")
            elif key in ("headers", "oversign"):
                names = self._header_names(path, name, v)
                if names is not None:
                    self.settings[key] = names
            elif key == "expire":
                if isinstance(v, bool) or not isinstance(v, int):
                    self.error(path, name, f"expected a number of seconds, got {_type_name(v)}")
                elif v < 0:
                    self.error(path, name, f"must be 0 (no x=) or a positive number of seconds, got {v}")
                else:
                    self.settings["expire_seconds"] = v
                    if 0 < v < _SHORT_EXPIRY:
                        self.warn(path, name, f"signatures expire after {v} s: mail that waits longer "
                                              "in a queue arrives with an expired signature")
            elif key in ("on_key_error", "on_bad_author"):
                choices = KEY_ERROR_ACTIONS if key == "on_key_error" else BAD_AUTHOR_ACTIONS
                if isinstance(v, str) and v in choices:
                    self.settings[key] = v
                else:
                    self.error(path, name, f"must be one of {', '.join(choices)}, got {v!r}")
            else:
                self.error(path, name, _unknown(key, _SETTINGS_KEYS))

    def _condition_values(self, path: tuple[str, ...], name: str, kind: str,
                          value: object) -> tuple[IPNetwork, ...] | tuple[str, ...] | None:
        """CIDRs or daemon names, validated exactly as the policy language validates them."""
        if value == []:
            return ()
        if isinstance(value, str):
            self.error(path, name, f"expected a list of strings, got {_type_name(value)}")
            return None
        try:
            condition = make_condition(kind, value)
        except ConditionError as e:
            self.error(path, name, e.reason, e.value)
            return None
        return condition.networks if kind == "client_ip" else condition.values

    def _header_names(self, path: tuple[str, ...], name: str, value: object) -> tuple[str, ...] | None:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(path, name, f"expected a list of header field names, got {_type_name(value)}")
            return None
        names: list[str] = []
        ok = True
        for item in value:
            problem = header_name_problem(item)
            if problem is not None:
                self.error(path, name, problem, item)
                ok = False
            elif item.lower() in names:
                self.error(path, name, f"{item} is listed twice", item)
                ok = False
            else:
                names.append(item.lower())
        if ok and path[-1] == "headers" and "from" not in names:
            self.error(path, name, "must include From: a signature that does not cover From vouches "
                                   "for nothing (RFC 6376 5.4)")
            ok = False
        return tuple(names) if ok else None

    # -- [keys.NAME] ------------------------------------------------------------------------

    def _read_keys(self, value: object) -> None:
        if not isinstance(value, dict):
            self.error(("keys",), "keys", f"expected [keys.NAME] tables, got {_type_name(value)}")
            return
        seen: dict[tuple[str, str], str] = {}
        for key_name, table in value.items():
            path = ("keys", key_name)
            label = _key("keys", key_name)
            if not _NAME.match(key_name):
                self.error(path, label, "key names are 1-64 lower-case letters, digits, '_', '-' and '.'")
                continue
            if not isinstance(table, dict):
                self.error(path, label, f"expected a table, got {_type_name(table)}")
                continue
            draft = _KeyDraft(key_name, path)
            for k, v in table.items():
                self._read_key_field(draft, k, v)
            for k in _KEY_KEYS:
                if k not in table:
                    self.error(path, label, f"missing {k}")
                    draft.ok = False
            if draft.ok and draft.domain and draft.selector:
                dns_name = f"{draft.selector}._domainkey.{draft.domain}"
                if len(dns_name) > 253:
                    self.error((*path, "selector"), f"{label}.selector", f"{dns_name} is longer than "
                                                                         "253 characters")
                    draft.ok = False
                elif (draft.domain, draft.selector) in seen:
                    self.error((*path, "selector"), f"{label}.selector", f"same domain and selector as key "
                               f"{seen[(draft.domain, draft.selector)]}: one DNS record cannot hold both")
                    draft.ok = False
                else:
                    seen[(draft.domain, draft.selector)] = key_name
            self.key_drafts.append(draft)

    def _read_key_field(self, draft: _KeyDraft, k: str, v: object) -> None:
        path, label = (*draft.path, k), _key("keys", draft.name, k)
        if k not in _KEY_KEYS:
            self.error(path, label, _unknown(k, _KEY_KEYS))
            draft.ok = False
            return
        if not isinstance(v, str) or not v.strip():
            self.error(path, label, f"expected a non-empty string, got {_type_name(v)}")
            draft.ok = False
            return
        try:
            if k == "domain":
                draft.domain = normalize_domain(v.strip())
            elif k == "selector":
                draft.selector = normalize_selector(v)
            else:
                draft.file = v
        except ValueError as e:
            self.error(path, label, f"{v!r} is not a domain name ({e})" if k == "domain" else str(e), v)
            draft.ok = False

    def _load_keys(self) -> None:
        used = {k for e in self.entries for k in e.keys}
        for d in self.key_drafts:
            if not d.ok or d.domain is None or d.selector is None or d.file is None:
                continue
            path, label = (*d.path, "file"), _key("keys", d.name, "file")
            found: list[KeyLoadProblem] = []
            result = self.loader(d.name, d.domain, d.selector, self.base / d.file, found)
            for w in found:
                self.warn(path, label, f"{w.path}: {w.reason}")
            if isinstance(result, KeyLoadProblem):
                self.unavailable[d.name] = f"{result.path}: {result.reason}"
                self.warn(path, label, f"key unavailable: {result.path}: {result.reason}")
            else:
                self.keys[d.name] = result
                if d.name == self.arc_key and result.algorithm != "rsa-sha256":
                    # RFC 8617 defines only rsa-sha256 for ARC; dkimpy and OpenARC refuse others.
                    self.warn(path, label, "ARC seals made with this key will not verify at most "
                                           "receivers: ARC signatures must be rsa-sha256")
            if d.name not in used and d.name != self.arc_key:
                self.warn(d.path, _key("keys", d.name), "not used by any [[sign]] entry")

    # -- [[sign]] ---------------------------------------------------------------------------

    def _read_sign(self, value: object) -> None:
        if not isinstance(value, list):
            self.error(("sign",), "sign", "expected [[sign]] tables")
            return
        key_names = {d.name for d in self.key_drafts}
        key_domains = {d.name: d.domain for d in self.key_drafts if d.domain}
        earlier: list[tuple[SignEntry, int]] = []
        for index, table in enumerate(value):
            path: tuple[str | int, ...] = ("sign", index)
            label = f"sign[{index + 1}]"
            if not isinstance(table, dict):
                self.error(path, label, f"expected a table, got {_type_name(table)}")
                continue
            entry = self._read_entry(path, label, table, key_names, key_domains)
            if entry is None:
                continue
            for pattern in entry.patterns:
                for other, other_index in earlier:
                    if other.use_sender_domain == entry.use_sender_domain and any(
                            pattern_covers(p, pattern) for p in other.patterns):
                        self.error((*path, "match"), f"{label}.match",
                                   f"{pattern!r} never matches: sign[{other_index + 1}] at {other.source} "
                                   "matches everything it matches first", pattern)
                        break
            earlier.append((entry, index))
            self.entries.append(entry)

    def _read_entry(self, path: tuple[str | int, ...], label: str, table: dict[str, Any],
                    key_names: set[str], key_domains: dict[str, str]) -> SignEntry | None:
        ok = True

        def bad(k: str, reason: str, value: str | None = None) -> None:
            nonlocal ok
            ok = False
            self.error((*path, k), f"{label}.{k}", reason, value)

        for k in table:
            if k not in _SIGN_KEYS:
                bad(k, _unknown(k, _SIGN_KEYS))
        patterns = self._strings(table, "match", bad)
        normalized: list[str] = []
        for text in patterns or ():
            try:
                pattern = parse_pattern(text)
            except ValueError as e:
                bad("match", f"{text!r} can never match: {e}", text)
                continue
            if pattern in normalized:
                bad("match", f"{text!r} is listed twice", text)
            normalized.append(pattern)
        keys = self._strings(table, "keys", bad) or []
        for k in keys:
            if k not in key_names:
                known = ", ".join(sorted(key_names)) or "none defined"
                bad("keys", f"unknown key {k!r} (keys: {known})", k)
        for k in {k for k in keys if keys.count(k) > 1}:
            bad("keys", f"key {k!r} is listed twice", k)
        identity = ""
        raw_identity = table.get("identity", "")
        if not isinstance(raw_identity, str):
            bad("identity", f"expected a string like \"@example.com\", got {_type_name(raw_identity)}")
        elif raw_identity:
            try:
                identity = parse_identity(raw_identity)
            except ValueError as e:
                bad("identity", str(e))
            for k in keys:
                domain = key_domains.get(k)
                if identity and domain and not identity_within(identity, domain):
                    bad("identity", f"i={identity} is outside d={domain} of key {k!r} (RFC 6376 3.5: "
                                    "i= must be d= or a subdomain of it)")
        use_sender = table.get("use_sender_domain", False)
        if not isinstance(use_sender, bool):
            bad("use_sender_domain", f"expected true or false, got {_type_name(use_sender)}")
        if not ok:
            return None
        return SignEntry(tuple(normalized), tuple(keys), identity, bool(use_sender),
                         f"{self.name}:{self.locator.line(path)}")

    @staticmethod
    def _strings(table: dict[str, Any], k: str, bad: Callable[..., None]) -> list[str] | None:
        if k not in table:
            bad(k, "missing: " + ("the patterns this entry signs" if k == "match" else
                                  "the names of the keys that sign"))
            return None
        v = table[k]
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            bad(k, f"expected a string or a list of strings, got {_type_name(v)}")
            return None
        if not items:
            bad(k, "empty list: the entry would " + ("never match" if k == "match" else "sign nothing"))
            return None
        return list(items)
