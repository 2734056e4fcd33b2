"""Where log lines go (stderr for journald, or syslog) and how they look (key=value or JSON).

A per-message line carries its fields in `extra={"fields": {...}}`, so that the JSON form gets
real fields rather than a string to re-parse, and the key=value form stays greppable.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
from typing import Any


def _kv_value(value: Any) -> str:
    text = str(value)
    if text and not any(c.isspace() or c in '"=\\' for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class KeyValueFormatter(logging.Formatter):
    def __init__(self, with_time: bool) -> None:
        # journald and syslog stamp lines themselves; a second time stamp is noise there.
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if with_time else \
            "%(levelname)s %(name)s: %(message)s"
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            text += " " + " ".join(f"{k}={_kv_value(v)}" for k, v in fields.items())
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(
    level: str, fmt: str = "kv", target: str = "stderr", syslog_socket: str = "/dev/log"
) -> None:
    handler: logging.Handler
    if target == "syslog":
        handler = logging.handlers.SysLogHandler(
            address=syslog_socket, facility=logging.handlers.SysLogHandler.LOG_MAIL)
        # syslog wants a tag in front: "authmilter: ...".
        inner: logging.Formatter = JsonFormatter() if fmt == "json" else KeyValueFormatter(False)
        handler.setFormatter(_Tagged(inner))
    else:
        handler = logging.StreamHandler(sys.stderr)
        inner = JsonFormatter() if fmt == "json" else KeyValueFormatter(True)
        # journald takes every stderr line as level info unless it starts with <N>: without the
        # prefix, `journalctl -p err` and alerting on priority would never see our errors.
        handler.setFormatter(_Prioritized(inner) if stderr_is_journal() else inner)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def stderr_is_journal() -> bool:
    """Whether stderr is systemd's journal stream (systemd.exec(5): $JOURNAL_STREAM is its dev:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


_SYSLOG_LEVELS = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


class _Prioritized(logging.Formatter):
    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        level = next((n for floor, n in _SYSLOG_LEVELS if record.levelno >= floor), 7)
        # Every line of a multi-line record (a traceback), since journald reads each on its own.
        return "\n".join(f"<{level}>{line}" for line in self.inner.format(record).split("\n"))


class _Tagged(logging.Formatter):
    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return "authmilter: " + self.inner.format(record)
