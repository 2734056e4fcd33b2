"""Split a raw message (as `authmilter check` reads it from a file) into header fields and body.

The milter never needs this: the MTA hands us fields one by one. It exists so that the command
line sees the very same `Header` values the milter would, including folding and leading space.
"""

from __future__ import annotations

import re

from authmilter.core.model import Header

_LINE_BREAK = re.compile(rb"\r?\n")


def split_message(raw: bytes) -> tuple[tuple[Header, ...], bytes]:
    """Header fields and body, with every line break made CRLF as SMTP would deliver it.

    A line that is neither a field nor a continuation ends the header section, as it would for
    an MTA; so does the first empty line. Bare LF line endings are read as CRLF because files on
    disk usually have them and the MTA would have converted them in transit.
    """
    lines = _LINE_BREAK.split(raw)
    # split() leaves a last element after a final line break; it is not a line of its own.
    trailing_break = len(lines) > 1 and lines[-1] == b""
    if trailing_break:
        lines.pop()
    headers: list[tuple[bytes, list[bytes]]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line == b"":
            i += 1
            break
        if line[:1] in (b" ", b"\t") and headers:
            headers[-1][1].append(line)
        else:
            name, colon, value = line.partition(b":")
            if not colon or not name or _bad_name(name):
                break
            headers.append((name, [value]))
        i += 1
    body_lines = lines[i:]
    body = b"\r\n".join(body_lines)
    if body_lines and trailing_break:
        body += b"\r\n"
    fields = tuple(Header(name, b"\r\n".join(parts)) for name, parts in headers)
    return fields, body


def _bad_name(name: bytes) -> bool:
    # RFC 5322 field names are printable ASCII except colon; anything else is body, not header.
    return any(c < 33 or c > 126 for c in name)
