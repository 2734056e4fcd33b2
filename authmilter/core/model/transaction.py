"""What the MTA hands over: one SMTP transaction and its header fields, as received."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


def field_key(name: bytes) -> bytes:
    """The name a header field is known by: lower case, without white space before the colon.

    RFC 5322 section 4.5 (obs-optional) lets white space stand between a field name and its colon,
    and receivers must read `From :` as From. Every match on a field name goes through this, so
    no check can see a field that another one misses; the name as received stays in `Header.name`
    for canonicalization, which must hash the bytes that were signed. Any ASCII white space counts,
    not only SP and HTAB: a lenient reader may take `From\x0b:` for From too, and it is what
    relaxed canonicalization strips. (Postfix turns a bare CR into a space and makes a line with
    other control characters the start of the body, so through it these never get here.)
    """
    return name.rstrip().lower()


@dataclass(frozen=True)
class Header:
    """One header field exactly as received.

    `name` is every byte before the colon (white space before it included); `value` is every byte
    after the colon, leading white space included, with folding line breaks as CRLF. 8-bit bytes
    are kept: relaxed and simple canonicalization must see what was signed.
    """

    name: bytes
    value: bytes

    @property
    def key(self) -> bytes:
        return field_key(self.name)

    def raw(self) -> bytes:
        return self.name + b":" + self.value + b"\r\n"


@dataclass(frozen=True)
class Transaction:
    client_ip: str | None
    helo: str
    mail_from: str  # "" is the null sender <>
    rcpts: tuple[str, ...] = ()
    headers: tuple[Header, ...] = ()
    body: bytes = b""
    client_host: str | None = None
    queue_id: str = ""
    macros: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def message_bytes(self) -> bytes:
        """The message as DKIM sees it: header fields, an empty line, the body."""
        return b"".join(h.raw() for h in self.headers) + b"\r\n" + self.body
