"""Policy files: TOML in, a validated `Policy` out, or every problem as "file:line: key: reason".

A policy that loads with one problem is refused as a whole: a half-understood firewall is worse
than none. `lint` collects every problem instead of stopping at the first, so an operator fixes a
file in one pass.

tomllib reports no positions for keys, so `_Locator` finds them in the text itself: table
headers (counting `[[rules]]`), `key =` lines and keys inside inline tables. It only has to point
at the right line of a file tomllib already accepted, which keeps it small.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from authmilter.core.decision import (
    CONDITION_KEYS,
    EARLY_ACTIONS,
    OVERRIDES,
    QUARANTINE_MODES,
    Condition,
    ConditionError,
    Policy,
    Rule,
    Settings,
    Stage,
    make_condition,
    rule_problems,
    unreachable,
)
from authmilter.core.decision.replies import CATALOGUE, DEFAULT_REPLY, validate_reply
from authmilter.core.model import Action, Reply

__all__ = ["PolicyError", "Problem", "lint", "load_policy", "parse_policy"]

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}\Z")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")
_HEADER_NAME = re.compile(r"[!-9;-~]{1,64}\Z")  # RFC 5322 ftext
_TOP_KEYS = ("settings", "replies", "rules")
_SETTINGS_KEYS = ("monitor", "quarantine", "quarantine_header")
_REPLY_KEYS = ("code", "status", "text")
_RULE_KEYS = ("name", "description", "when", "action", "override", "monitor", "stage", "reply")
_ACTIONS = tuple(a.value for a in Action)
_STAGES = tuple(s.value for s in Stage)

PathItem = str | int


@dataclass(frozen=True)
class Problem:
    file: str
    line: int  # 1-based; 0 when no line applies (the file could not be read)
    key: str  # e.g. 'rules."dmarc-reject".when.client_ip'; "" for file-level problems
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.reason}" if self.key else f"{where}: {self.reason}"


class PolicyError(Exception):
    """Policy files the milter refuses to run with; str() lists every problem, one per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def load_policy(paths: Sequence[str | Path]) -> Policy:
    """Read and merge policy files in order; raises PolicyError listing every problem."""
    policy, problems = _build(_read_all(paths))
    if problems or policy is None:
        raise PolicyError(problems)
    return policy


def parse_policy(path: str, text: bytes) -> Policy:
    """One file's bytes to a Policy (the pure part of `load_policy`); raises PolicyError."""
    policy, problems = _build([(path, text, None)])
    if problems or policy is None:
        raise PolicyError(problems)
    return policy


def lint(paths: Sequence[str | Path]) -> list[Problem]:
    """Every problem in these files, read together as the milter would; [] when they load."""
    return _build(_read_all(paths))[1]


def _read_all(paths: Sequence[str | Path]) -> list[tuple[str, bytes, str | None]]:
    sources: list[tuple[str, bytes, str | None]] = []
    for p in paths:
        try:
            sources.append((str(p), Path(p).read_bytes(), None))
        except OSError as e:
            sources.append((str(p), b"", f"cannot read: {e.strerror or e}"))
    return sources


# --- locating keys in the text -------------------------------------------------------------------


def _mask(text: str) -> str:
    """The text with comments and string contents blanked, so only structure is left to match.

    Line breaks are kept, so line numbers stay the same.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            end = text.find("\n", i)
            end = n if end < 0 else end
            out.append(" " * (end - i))
            i = end
        elif c in "\"'":
            delim = c * 3 if text.startswith(c * 3, i) else c
            j = i + len(delim)
            while j < n and not text.startswith(delim, j) and (len(delim) == 3 or text[j] != "\n"):
                j += 2 if c == '"' and text[j] == "\\" else 1
            body = text[i + len(delim): j]
            close = delim if text.startswith(delim, j) else ""
            out.append(delim + "".join(ch if ch == "\n" else " " for ch in body) + close)
            i = j + len(close)
        else:
            out.append(c)
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class _Section:
    line: int  # the header line; 0 for the root table
    path: tuple[PathItem, ...]
    start: int  # first body line
    end: int  # last body line


_ARRAY_HEADER = re.compile(r"\s*\[\[\s*(.*?)\s*\]\]\s*\Z")
_TABLE_HEADER = re.compile(r"\s*\[\s*(.*?)\s*\]\s*\Z")
_KEY_LINE = re.compile(r"\s*([A-Za-z0-9_-]+(?:\s*\.\s*[A-Za-z0-9_-]+)*)\s*=")


class _Locator:
    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")
        self.masked = _mask(text).split("\n")
        self.sections = self._sections()

    def _sections(self) -> list[_Section]:
        headers: list[tuple[int, tuple[PathItem, ...]]] = []
        arrays: dict[tuple[str, ...], int] = {}
        depth = 0
        for number, line in enumerate(self.masked, 1):
            # A line of a multi-line array can look like a header; only depth 0 has headers.
            header = (_ARRAY_HEADER.match(line) or _TABLE_HEADER.match(line)) if depth == 0 else None
            if header is None:
                depth = max(0, depth + sum(line.count(o) for o in "[{") - sum(line.count(c) for c in "]}"))
                continue
            is_array = header.re is _ARRAY_HEADER
            parts = tuple(p.strip().strip("\"'") for p in header.group(1).split("."))
            path: list[PathItem] = []
            for k, part in enumerate(parts):
                path.append(part)
                prefix = parts[: k + 1]
                if is_array and k == len(parts) - 1:
                    arrays[prefix] = arrays.get(prefix, 0) + 1
                if prefix in arrays:  # [rules.when] belongs to the latest [[rules]]
                    path.append(arrays[prefix] - 1)
            headers.append((number, tuple(path)))
        sections = [_Section(0, (), 1, (headers[0][0] - 1) if headers else len(self.lines))]
        for i, (number, header_path) in enumerate(headers):
            end = headers[i + 1][0] - 1 if i + 1 < len(headers) else len(self.lines)
            sections.append(_Section(number, header_path, number + 1, end))
        return sections

    def _value_end(self, line: int, limit: int) -> int:
        """The last line of the value that starts on `line` (multi-line arrays)."""
        depth = 0
        for number in range(line, limit + 1):
            text = self.masked[number - 1]
            if number == line:
                text = text.split("=", 1)[-1]
            depth += sum(text.count(o) for o in "[{") - sum(text.count(c) for c in "]}")
            if depth <= 0:
                return number
        return limit

    def find(self, path: Sequence[PathItem]) -> tuple[int, int]:
        """(line of the key or table at `path`, last line of its value), as near as can be told."""
        best = self.sections[0]
        for s in self.sections:
            if len(s.path) > len(best.path) and tuple(path[: len(s.path)]) == s.path:
                best = s
        line, end = max(best.line, 1), best.end
        rest = [p for p in path[len(best.path):] if isinstance(p, str)]
        if not rest:
            return line, end
        found, depth = 0, 0
        for number in range(best.start, best.end + 1):
            m = _KEY_LINE.match(self.masked[number - 1])
            if m is None:
                continue
            dotted = [k.strip() for k in m.group(1).split(".")]
            k = 0
            while k < min(len(dotted), len(rest)) and dotted[k] == rest[k]:
                k += 1
            if k > depth:
                found, depth = number, k
        if not found:
            return line, end
        line, end = found, self._value_end(found, best.end)
        for key in rest[depth:]:
            pattern = re.compile(r"(?<![A-Za-z0-9_-])" + re.escape(key) + r"\s*=")
            hit = next((n for n in range(line, end + 1) if pattern.search(self.masked[n - 1])), None)
            if hit is None:
                break
            line = hit
        return line, end

    def line(self, path: Sequence[PathItem], value: str | None = None) -> int:
        """The line of `path`; with `value`, the line inside it where that string is written."""
        line, end = self.find(path)
        if value is not None:
            for quote in ('"', "'"):
                needle = quote + value + quote
                hit = next((n for n in range(line, end + 1) if needle in self.lines[n - 1]), None)
                if hit is not None:
                    return hit
        return line


# --- reading one file ----------------------------------------------------------------------------


def _type_name(value: object) -> str:
    names = {bool: "a boolean", str: "a string", int: "an integer", float: "a number", list: "a list",
             dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _unknown(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.7)
    hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(known)}"
    return f"unknown key ({hint})"


def _key(*parts: str) -> str:
    return ".".join(p if _BARE_KEY.match(p) else f'"{p}"' for p in parts)


@dataclass
class _ReplyDraft:
    name: str
    fields: dict[str, str]
    path: tuple[PathItem, ...]
    ok: bool = True  # False: a field was already reported; merging it would only add noise


@dataclass
class _RuleDraft:
    index: int
    name: str | None
    key: str  # how problems name this rule: rules."name" or rules[N]
    path: tuple[PathItem, ...]
    source: str
    ok: bool = True
    action: Action | None = None
    when: list[Condition] = field(default_factory=list)
    description: str = ""
    override: str | None = None
    monitor: bool = False
    stage: Stage | None = None  # None: not given (end of message; RCPT TO for greylist rules)
    reply_name: str | None = None
    reply_inline: Reply | None = None


class _File:
    """One policy file read into drafts; cross-file checks happen in `_build`."""

    def __init__(self, name: str, raw: bytes, read_error: str | None) -> None:
        self.name = name
        self.problems: list[Problem] = []
        self.settings: dict[str, Any] = {}
        self.replies: list[_ReplyDraft] = []
        self.rules: list[_RuleDraft] = []
        self.locator = _Locator("")
        if read_error is not None:
            self.problems.append(Problem(name, 0, "", read_error))
            return
        data = self._parse(raw)
        if data is None:
            return
        for key, value in data.items():
            if key == "settings":
                self._read_settings(value)
            elif key == "replies":
                self._read_replies(value)
            elif key == "rules":
                self._read_rules(value)
            else:
                self.problem((key,), _key(key), _unknown(key, _TOP_KEYS))

    def _parse(self, raw: bytes) -> dict[str, Any] | None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
            self.problems.append(Problem(self.name, line, "", f"not UTF-8 (byte 0x{raw[e.start]:02x} at "
                                                              f"column {column})"))
            return None
        text = text.removeprefix("\ufeff")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            message = str(e)
            m = re.search(r"\(at line (\d+), column (\d+)\)\s*\Z", message)
            # "(at end of document)": the last line. Counted in "\n" as TOML and editors count
            # lines; str.splitlines() also breaks at form feeds, vertical tabs and more.
            line = int(m.group(1)) if m else text.rstrip("\n").count("\n") + 1
            reason = message[: m.start()].rstrip() + f" (column {m.group(2)})" if m else message
            self.problems.append(Problem(self.name, line, "", f"invalid TOML: {reason}"))
            return None
        self.locator = _Locator(text)
        return data

    def problem(self, path: Sequence[PathItem], key: str, reason: str, value: str | None = None) -> None:
        self.problems.append(Problem(self.name, self.locator.line(path, value), key, reason))

    def _table(self, path: tuple[PathItem, ...], key: str, value: object) -> dict[str, Any] | None:
        if isinstance(value, dict):
            return value
        self.problem(path, key, f"expected a table, got {_type_name(value)}")
        return None

    def _read_settings(self, value: object) -> None:
        table = self._table(("settings",), "settings", value)
        for key, v in (table or {}).items():
            path, name = ("settings", key), _key("settings", key)
            if key == "monitor":
                if isinstance(v, bool):
                    self.settings[key] = v
                else:
                    self.problem(path, name, f"expected true or false, got {_type_name(v)}")
            elif key == "quarantine":
                if v in QUARANTINE_MODES:
                    self.settings[key] = v
                else:
                    self.problem(path, name, f"must be one of {', '.join(QUARANTINE_MODES)}, got {v!r}")
            elif key == "quarantine_header":
                if isinstance(v, str) and _HEADER_NAME.match(v):
                    self.settings[key] = v
                else:
                    self.problem(path, name, f"must be a header field name (printable ASCII, no ':' or "
                                             f"spaces, at most 64 characters), got {v!r}")
            else:
                self.problem(path, name, _unknown(key, _SETTINGS_KEYS))

    def _read_replies(self, value: object) -> None:
        table = self._table(("replies",), "replies", value)
        for name, entry in (table or {}).items():
            path: tuple[PathItem, ...] = ("replies", name)
            if not _NAME.match(name):
                self.problem(path, _key("replies", name), "reply names are lower-case letters, digits, "
                                                          "'_', '-' and '.'")
                continue
            body = self._table(path, _key("replies", name), entry)
            if body is None:
                continue
            draft = _ReplyDraft(name, {}, path)
            for key, v in body.items():
                if key not in _REPLY_KEYS:
                    self.problem((*path, key), _key("replies", name, key), _unknown(key, _REPLY_KEYS))
                    draft.ok = False
                elif not isinstance(v, str):
                    self.problem((*path, key), _key("replies", name, key),
                                 f'expected a string (like "550"), got {_type_name(v)}')
                    draft.ok = False
                else:
                    draft.fields[key] = v
            self.replies.append(draft)

    def _read_rules(self, value: object) -> None:
        if not isinstance(value, list):
            self.problem(("rules",), "rules", "expected [[rules]] tables")
            return
        for index, entry in enumerate(value):
            path: tuple[PathItem, ...] = ("rules", index)
            if not isinstance(entry, dict):
                self.problem(path, f"rules[{index + 1}]", f"expected a table, got {_type_name(entry)}")
                continue
            self.rules.append(self._read_rule(index, entry))

    def _read_rule(self, index: int, table: dict[str, Any]) -> _RuleDraft:
        path: tuple[PathItem, ...] = ("rules", index)
        raw_name = table.get("name")
        name = raw_name if isinstance(raw_name, str) and _NAME.match(raw_name) else None
        key = f'rules."{name}"' if name else f"rules[{index + 1}]"
        draft = _RuleDraft(index, name, key, path, f"{self.name}:{self.locator.line(path)}")

        if raw_name is None:
            self._bad(draft, "name", "missing: every rule needs a unique name")
        elif name is None:
            self._bad(draft, "name", "must be 1-64 lower-case letters, digits, '_', '-' or '.', starting "
                                     f"with a letter or digit; got {raw_name!r}")
        if "action" not in table:
            self._bad(draft, "action", f"missing: one of {', '.join(_ACTIONS)}")
        for k, v in table.items():
            if k == "action":
                if isinstance(v, str) and v in _ACTIONS:
                    draft.action = Action(v)
                else:
                    self._bad(draft, k, f"unknown action {v!r} (expected one of {', '.join(_ACTIONS)})")
            elif k == "description":
                if isinstance(v, str):
                    draft.description = v
                else:
                    self._bad(draft, k, f"expected a string, got {_type_name(v)}")
            elif k == "monitor":
                if isinstance(v, bool):
                    draft.monitor = v
                else:
                    self._bad(draft, k, f"expected true or false, got {_type_name(v)}")
            elif k == "stage":
                if isinstance(v, str) and v in _STAGES:
                    draft.stage = Stage(v)
                else:
                    self._bad(draft, k, f"must be one of {', '.join(_STAGES)}, got {v!r}")
            elif k == "override":
                if isinstance(v, str) and v in OVERRIDES:
                    draft.override = v
                else:
                    self._bad(draft, k, f"unknown override reason {v!r} (expected one of "
                                        f"{', '.join(OVERRIDES)})")
            elif k == "when":
                self._read_when(draft, v)
            elif k == "reply":
                self._read_rule_reply(draft, v)
            elif k != "name":
                self._bad(draft, k, _unknown(k, _RULE_KEYS))
        return draft

    def _bad(self, draft: _RuleDraft, sub: str, reason: str, value: str | None = None) -> None:
        draft.ok = False
        self.problem((*draft.path, *sub.split(".")), f"{draft.key}.{sub}", reason, value)

    def _read_when(self, draft: _RuleDraft, value: object) -> None:
        if not isinstance(value, dict):
            self._bad(draft, "when", f"expected a table of conditions, got {_type_name(value)}")
            return
        for k, v in value.items():
            if k not in CONDITION_KEYS:
                self._bad(draft, f"when.{k}", _unknown(k, list(CONDITION_KEYS)))
                continue
            try:
                draft.when.append(make_condition(k, v))
            except ConditionError as e:
                self._bad(draft, f"when.{k}", e.reason, e.value)

    def _read_rule_reply(self, draft: _RuleDraft, value: object) -> None:
        if isinstance(value, str):
            draft.reply_name = value
            return
        if not isinstance(value, dict):
            self._bad(draft, "reply", "expected a reply name or a table {code, status, text}, got "
                                      f"{_type_name(value)}")
            return
        fields: dict[str, str] = {}
        for k, v in value.items():
            if k not in _REPLY_KEYS:
                self._bad(draft, f"reply.{k}", _unknown(k, _REPLY_KEYS))
            elif not isinstance(v, str):
                self._bad(draft, f"reply.{k}", f"expected a string, got {_type_name(v)}")
            else:
                fields[k] = v
        missing = [k for k in _REPLY_KEYS if k not in value]
        if missing:
            self._bad(draft, "reply", "an inline reply needs code, status and text (missing: "
                                      f"{', '.join(missing)})")
            return
        if len(fields) < len(_REPLY_KEYS):
            return
        reply = Reply(fields["code"], fields["status"], fields["text"])
        problems = validate_reply(reply)
        for p in problems:
            self._bad(draft, f"reply.{p.field}", p.reason)
        if not problems:
            draft.reply_inline = reply


# --- merging files -------------------------------------------------------------------------------


def _build(sources: Sequence[tuple[str, bytes, str | None]]) -> tuple[Policy | None, list[Problem]]:
    files = [_File(name, raw, error) for name, raw, error in sources]
    problems = [p for f in files for p in f.problems]

    settings: dict[str, Any] = {}
    for f in files:
        settings.update(f.settings)  # later files override earlier ones, key by key
    catalogue = dict(CATALOGUE)
    for f in files:
        for draft in f.replies:
            _merge_reply(f, draft, catalogue, problems)

    rules: list[Rule] = []
    drafts: list[tuple[_File, _RuleDraft]] = []
    first_seen: dict[str, str] = {}
    for f in files:
        for d in f.rules:
            if d.name is not None:
                if d.name in first_seen:
                    problems.append(Problem(f.name, f.locator.line((*d.path, "name")), f"{d.key}.name",
                                            f"duplicate rule name {d.name!r} (first defined at "
                                            f"{first_seen[d.name]})"))
                    d.ok = False
                else:
                    first_seen[d.name] = d.source
            rule = _finish_rule(f, d, catalogue, problems)
            if rule is not None:
                rules.append(rule)
                drafts.append((f, d))

    for later, earlier in unreachable(rules):
        f, d = drafts[later]
        problems.append(Problem(f.name, f.locator.line(d.path), d.key,
                                f"unreachable: rule {rules[earlier].name!r} at {rules[earlier].source} "
                                "already matches everything this rule matches"))
    if problems:
        # Per file, top to bottom, whichever check found them: the order an operator fixes them in.
        order = {name: i for i, (name, _, _) in reversed(list(enumerate(sources)))}
        return None, sorted(problems, key=lambda p: (order.get(p.file, 0), p.line))
    policy = Policy(
        rules=tuple(rules),
        settings=Settings(**settings),
        replies=MappingProxyType(catalogue),
        files=tuple(f.name for f in files),
    )
    return policy, []


def _merge_reply(f: _File, draft: _ReplyDraft, catalogue: dict[str, Reply], problems: list[Problem]) -> None:
    if not draft.ok:
        return
    base = catalogue.get(draft.name)
    key = _key("replies", draft.name)
    if base is None:
        missing = [k for k in _REPLY_KEYS if k not in draft.fields]
        if missing:
            # A partial entry can only adjust an existing reply; a new one must be complete.
            problems.append(Problem(f.name, f.locator.line(draft.path), key, "a new reply needs code, "
                                    f"status and text (missing: {', '.join(missing)})"))
            return
        base = Reply("", "", "")
    reply = Reply(draft.fields.get("code", base.code), draft.fields.get("status", base.status),
                  draft.fields.get("text", base.text))
    found = validate_reply(reply)
    for p in found:
        at = (*draft.path, p.field) if p.field in draft.fields else draft.path
        problems.append(Problem(f.name, f.locator.line(at), _key("replies", draft.name, p.field), p.reason))
    if not found:
        catalogue[draft.name] = reply


def _finish_rule(
    f: _File, d: _RuleDraft, catalogue: Mapping[str, Reply], problems: list[Problem]
) -> Rule | None:
    """The rule, once its reply is resolved against the merged catalogue; None if anything is wrong."""

    def add(sub: str, reason: str) -> None:
        path = (*d.path, *sub.split(".")) if sub else d.path
        problems.append(Problem(f.name, f.locator.line(path), f"{d.key}.{sub}" if sub else d.key, reason))

    if not d.ok or d.action is None or d.name is None:
        return None
    reply, reply_name = d.reply_inline, ""
    given = d.reply_name is not None or d.reply_inline is not None
    if d.reply_name is not None:
        if d.reply_name in catalogue:
            reply, reply_name = catalogue[d.reply_name], d.reply_name
        else:
            add("reply", f"unknown reply {d.reply_name!r} (known: {', '.join(sorted(catalogue))})")
            return None
    if given and d.action not in EARLY_ACTIONS:
        add("reply", f"a reply only applies to reject, tempfail and greylist rules, not {d.action.value}")
        return None
    if reply is None and d.action in EARLY_ACTIONS:
        reply_name = DEFAULT_REPLY[d.action]
        reply = catalogue[reply_name]
    if reply is not None:
        mismatch = [p.reason for p in validate_reply(reply, d.action) if not p.field]
        if mismatch:
            which = f" (reply {reply_name!r})" if given else f" (the default reply {reply_name!r})"
            add("reply" if given else "action", mismatch[0] + (which if reply_name else ""))
            return None
    rule = Rule(
        name=d.name,
        action=d.action,
        when=tuple(d.when),
        description=d.description,
        override=d.override,
        monitor=d.monitor,
        stage=d.stage if d.stage is not None else (
            Stage.RCPT if d.action is Action.GREYLIST else Stage.EOM),
        reply=reply,
        reply_name=reply_name,
        source=d.source,
    )
    found = rule_problems(rule)
    for sub, reason in found:
        add(sub, reason)
    return rule
