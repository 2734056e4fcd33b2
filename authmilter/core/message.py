"""Split a raw message (as `authmilter check` reads it from a file) into header fields and body.

The milter never needs this: the MTA hands us fields one by one. It exists so that the command
line sees the very same `Header` values the milter would, including folding and leading space.

Two things an MTA does on the way are done here too, or `check` would judge a different message:
- A field name may have white space before its colon (RFC 5322 section 4.5, obs-optional):
  `From : a@b` is a From field, not the end of the header section (see `field_key`).
- A header value ends at its first NUL byte. Sendmail and Postfix keep header fields as C strings,
  and the milter protocol carries them as NUL-terminated strings (libmilter reads each value only
  up to the first NUL), so the milter never sees the rest, and Postfix delivers the field cut
  there too (tests/e2e shows it). Reading the file the same way is what makes `check` and the
  milter give one decision for one message.
"""

from __future__ import annotations

import re

from authmilter.core.model import Header

_LINE_BREAK = re.compile(rb"\r?\n")


def split_message(raw: bytes, notes: list[str] | None = None) -> tuple[tuple[Header, ...], bytes]:
    """Header fields and body, with every line break made CRLF as SMTP would deliver it.

    A line that is neither a field nor a continuation ends the header section, as it would for
    an MTA; so does the first empty line. Bare LF line endings are read as CRLF because files on
    disk usually have them and the MTA would have converted them in transit. What was changed on
    the way (a value cut at a NUL byte) is appended to `notes`, for the operator.
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
            if not colon or _bad_name(name.rstrip()):
                break
            headers.append((name, [value]))
        i += 1
    body_lines = lines[i:]
    body = b"\r\n".join(body_lines)
    if body_lines and trailing_break:
        body += b"\r\n"
    fields = []
    for name, parts in headers:
        value = b"\r\n".join(parts)
        nul = value.find(b"\x00")
        if nul >= 0:
            value = value[:nul]
            if notes is not None:
                notes.append(f"header field {name.decode('ascii')}: value read up to its NUL byte, "
                             "as the MTA hands it to milters and delivers it")
        fields.append(Header(name, value))
    return tuple(fields), body


def _bad_name(name: bytes) -> bool:
    # RFC 5322 field names are printable ASCII except colon; anything else is body, not header.
    return not name or any(c < 33 or c > 126 for c in name)
