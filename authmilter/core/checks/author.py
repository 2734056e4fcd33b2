"""The RFC5322.From author domain, as DMARC needs it (RFC 9989 section 5.3.1).

DMARC protects exactly one thing: the domain a reader sees in From. If we extract a different
domain from the one a mail client displays, or give up in a way that skips DMARC, a spoofed
message walks through (the OpenDMARC CVE-2019-16378 class). So this module is deliberately
narrow: it accepts exactly one From field holding exactly one plain mailbox, and turns anything
ambiguous into an error, which the DMARC step reports as permerror rather than "none".

The parser is a small RFC 5322 section 3.4 tokenizer written for this purpose rather than
`email.utils`, whose forgiving parsing has itself disagreed with mail clients about where an
address ends (CVE-2023-27043, commas in display names). Obsolete forms that only serve to
confuse (route addresses, whitespace inside a domain, empty list members) are refused.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import contextlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from authmilter.core.model import AuthorResult, Header
from authmilter.core.names import normalize_domain

__all__ = ["parse_author"]


class _Malformed(Exception):
    """The From value cannot be read unambiguously; the message says why."""


# RFC 5322 section 3.2.3 atext; RFC 6532 adds every non-ASCII character (control characters are
# refused earlier, so only printable ones get here).
_ATEXT_ASCII = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
_SPECIALS = frozenset("<>@,;:.")

# RFC 2047 encoded-word. Only ever legitimate in display names and comments.
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
# Python codecs that are no MIME charset: they turn escape sequences in the sender's bytes into
# other characters (and warn while doing it), or refuse to decode at all.
_NOT_CHARSETS = frozenset({"unicode-escape", "raw-unicode-escape", "idna", "punycode", "undefined",
                           "charmap"})
# An address in angle brackets inside text a reader sees (display name, comment). A naive parser
# or a decode-before-parse client would pick that one up instead of the real address.
_BRACKETED_ADDRESS = re.compile(r"<[^<>]*@[^<>]*>")
# A line break that is no folding, then a From field: an MTA that passes a bare CR or LF inside a
# value (Postfix turns a bare CR into a space, Sendmail keeps it) delivers a second From line that
# a client splitting at CR or LF shows.
_HIDDEN_FROM = re.compile(rb"(?:\r\n|\r|\n)(?=[^ \t])from[\t-\r ]*:", re.IGNORECASE)



@dataclass(frozen=True)
class _Token:
    kind: str  # "atom" | "qstring" | "literal" | one of _SPECIALS
    text: str
    cfws_before: bool  # white space or a comment came right before it


@dataclass(frozen=True)
class _Mailbox:
    local: str
    domain: str  # as written (not yet normalized)


def parse_author(headers: Sequence[Header]) -> AuthorResult:
    """Find the single author domain in the message's From field, or say precisely why not."""
    froms = [h for h in headers if h.key == b"from"]
    froms += [h for h in headers if h.key != b"from" and _HIDDEN_FROM.search(h.value)]
    if not froms:
        return AuthorResult(domain=None, error="no From header field")
    if len(froms) > 1:
        # Even identical copies are refused: RFC 5322 allows one, and clients differ in which one
        # they show, so there is no single author domain to evaluate (RFC 9989 section 11.5).
        seen: list[str] = []
        for h in froms:
            # Only for the diagnostic list; an unreadable copy adds nothing to it.
            with contextlib.suppress(_Malformed):
                seen.extend(f"{m.local}@{m.domain}" for m in _parse_value(h.value))
        return AuthorResult(domain=None, addresses=tuple(seen), error=f"{len(froms)} From header fields")
    try:
        mailboxes = _parse_value(froms[0].value)
    except _Malformed as exc:
        return AuthorResult(domain=None, error=f"unparseable From: {exc}")
    addresses = tuple(f"{m.local}@{m.domain}" for m in mailboxes)
    if len(mailboxes) != 1:
        return AuthorResult(domain=None, addresses=addresses, error=f"From holds {len(mailboxes)} addresses")
    try:
        domain = normalize_domain(mailboxes[0].domain)
    except ValueError as exc:
        return AuthorResult(domain=None, addresses=addresses, error=f"invalid From domain: {exc}")
    return AuthorResult(domain=domain, addresses=(f"{mailboxes[0].local}@{domain}",))


def _parse_value(raw: bytes) -> list[_Mailbox]:
    text = _unfold(raw)
    tokens, comments = _tokenize(text)
    if not tokens:
        raise _Malformed("empty From")
    return _parse_mailbox_list(tokens, comments)


def _unfold(raw: bytes) -> str:
    """Bytes after the colon to one logical line, refusing anything but clean folding."""
    if b"\x00" in raw:
        raise _Malformed("NUL byte")
    try:
        text = raw.decode("utf-8")  # RFC 6532: 8-bit header content is UTF-8
    except UnicodeDecodeError:
        raise _Malformed("not valid UTF-8") from None
    # The value ends before the field's own CRLF; tolerate one anyway, it hides nothing.
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if text.isascii() and text.isprintable():
        return text  # no line break, no control character: nothing to unfold or refuse
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\r":
            if text[i + 1 : i + 2] != "\n":
                raise _Malformed("bare CR")
            i += 1
            ch = "\n"
        if ch == "\n":
            # Folding is a line break followed by white space; anything else would be a second
            # header line smuggled inside this one.
            if text[i + 1 : i + 2] not in (" ", "\t"):
                raise _Malformed("line break not followed by white space")
            i += 1
            continue
        if ch != "\t" and unicodedata.category(ch) == "Cc":
            raise _Malformed(f"control character U+{ord(ch):04X}")
        out.append(ch)
        i += 1
    return "".join(out)


def _tokenize(text: str) -> tuple[list[_Token], list[str]]:
    tokens: list[_Token] = []
    comments: list[str] = []
    gap = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t":
            gap = True
            i += 1
        elif ch == "(":
            i, body = _read_comment(text, i)
            comments.append(body)
            gap = True
        elif ch == '"':
            i, body = _read_delimited(text, i, '"', "quoted string")
            tokens.append(_Token("qstring", body, gap))
            gap = False
        elif ch == "[":
            i, body = _read_delimited(text, i, "]", "domain literal")
            tokens.append(_Token("literal", body, gap))
            gap = False
        elif ch in _SPECIALS:
            tokens.append(_Token(ch, ch, gap))
            gap = False
            i += 1
        elif ch in _ATEXT_ASCII or ord(ch) > 0x7F:
            j = i
            while j < n and (text[j] in _ATEXT_ASCII or ord(text[j]) > 0x7F):
                j += 1
            tokens.append(_Token("atom", text[i:j], gap))
            gap = False
            i = j
        elif ch == ")":
            raise _Malformed("unbalanced ')'")
        elif ch == "]":
            raise _Malformed("unbalanced ']'")
        else:
            raise _Malformed(f"unexpected character {ch!r}")
    return tokens, comments


def _read_comment(text: str, start: int) -> tuple[int, str]:
    """Comments nest (RFC 5322 section 3.2.2); return the position after it and its text."""
    depth = 0
    body: list[str] = []
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text):
                break
            body.append(text[i + 1])
            i += 2
            continue
        if ch == "(":
            depth += 1
            if depth > 1:
                body.append(ch)
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i + 1, "".join(body)
            body.append(ch)
        else:
            body.append(ch)
        i += 1
    raise _Malformed("unbalanced '(' (unterminated comment)")


def _read_delimited(text: str, start: int, close: str, what: str) -> tuple[int, str]:
    """A quoted string or domain literal, with quoted-pairs; returns the unescaped content."""
    body: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text):
                break
            body.append(text[i + 1])
            i += 2
            continue
        if ch == close:
            return i + 1, "".join(body)
        if close == "]" and ch == "[":
            raise _Malformed("'[' inside domain literal")
        body.append(ch)
        i += 1
    raise _Malformed(f"unterminated {what}")


def _parse_mailbox_list(tokens: list[_Token], comments: list[str]) -> list[_Mailbox]:
    mailboxes: list[_Mailbox] = []
    decorations = list(comments)
    pos = 0
    while True:
        mailbox, pos, display = _parse_address(tokens, pos)
        mailboxes.append(mailbox)
        decorations.append(display)
        if pos == len(tokens):
            break
        if tokens[pos].kind != ",":
            raise _Malformed(f"unexpected {tokens[pos].text!r} after address")
        pos += 1
        if pos == len(tokens) or tokens[pos].kind == ",":
            raise _Malformed("empty member in address list")
    for text in decorations:
        _check_decoration(text)
    return mailboxes


def _parse_address(tokens: list[_Token], pos: int) -> tuple[_Mailbox, int, str]:
    """One address at `pos`: (mailbox, position after it, display-name text)."""
    j = pos
    while j < len(tokens) and tokens[j].kind not in ("<", ">", "@", ":", ";", ","):
        j += 1
    stop = tokens[j].kind if j < len(tokens) else ""
    if stop == ":":
        # RFC 6854 allows groups in From, but a group is a list of zero or more addresses: never
        # the single author DMARC needs.
        raise _Malformed("group syntax")
    if stop == "<":
        display = _phrase_text(tokens[pos:j])
        mailbox, end = _parse_angle_addr(tokens, j)
        return mailbox, end, display
    if stop == "@":
        end_of_member = next((k for k in range(j, len(tokens)) if tokens[k].kind == ","), len(tokens))
        if any(tok.kind == "<" for tok in tokens[j:end_of_member]):
            # "ceo@bank.example <x@evil.example>": which of the two is the address depends on
            # who parses it.
            raise _Malformed("unquoted address in display name")
        mailbox, end = _parse_addr_spec(tokens, pos)
        if end < len(tokens) and tokens[end].kind == "<":
            raise _Malformed("unquoted address in display name")
        return mailbox, end, ""
    if stop in (">", ";"):
        raise _Malformed(f"unbalanced {stop!r}")
    if j == pos:
        raise _Malformed("empty address")
    raise _Malformed("address has no domain")


def _phrase_text(tokens: list[_Token]) -> str:
    # display-name = phrase: words, plus "." under obs-phrase (RFC 5322 section 4.1).
    for tok in tokens:
        if tok.kind not in ("atom", "qstring", "."):
            raise _Malformed(f"unexpected {tok.text!r} in display name")
    if tokens and tokens[0].kind == ".":
        raise _Malformed("display name starts with '.'")
    # Rebuild the text as written (a space only where there was one), so an encoded-word split
    # by an obs-phrase "." is still recognised as one by the decoration check.
    return "".join((" " if tok.cfws_before and i else "") + tok.text for i, tok in enumerate(tokens))


def _parse_angle_addr(tokens: list[_Token], pos: int) -> tuple[_Mailbox, int]:
    pos += 1  # "<"
    if pos == len(tokens):
        raise _Malformed("unbalanced '<'")
    if tokens[pos].kind == "@":
        raise _Malformed("obsolete route address")
    if tokens[pos].kind == ">":
        raise _Malformed("empty address <>")
    mailbox, pos = _parse_addr_spec(tokens, pos)
    if pos == len(tokens) or tokens[pos].kind != ">":
        raise _Malformed("unbalanced '<'")
    pos += 1
    if pos < len(tokens) and tokens[pos].kind != ",":
        raise _Malformed(f"unexpected {tokens[pos].text!r} after '>'")
    return mailbox, pos


def _parse_addr_spec(tokens: list[_Token], pos: int) -> tuple[_Mailbox, int]:
    # local-part: dot-atom, quoted-string, or obs-local-part (words joined by dots). The local part
    # does not choose the domain, so the obsolete form is harmless here and accepted.
    words: list[str] = []
    while True:
        if pos == len(tokens) or tokens[pos].kind not in ("atom", "qstring"):
            raise _Malformed("missing local part" if not words else "malformed local part")
        word = tokens[pos].text
        if _ENCODED_WORD.search(word):
            raise _Malformed("encoded-word in address")
        if tokens[pos].kind == "qstring" and any(c in word for c in "@<>"):
            # Valid syntax, but bait for parsers that split at the first "@".
            raise _Malformed("quoted local part contains '@', '<' or '>'")
        words.append(word)
        pos += 1
        if pos < len(tokens) and tokens[pos].kind == ".":
            pos += 1
            continue
        break
    local = ".".join(words)
    if _ENCODED_WORD.search(local):
        raise _Malformed("encoded-word in address")
    if pos == len(tokens) or tokens[pos].kind != "@":
        raise _Malformed("address has no domain")
    pos += 1
    if pos == len(tokens):
        raise _Malformed("address has no domain")
    if tokens[pos].kind == "literal":
        raise _Malformed("domain literal has no DMARC domain")
    labels: list[str] = []
    while True:
        tok = tokens[pos] if pos < len(tokens) else None
        if tok is None or tok.kind != "atom":
            raise _Malformed("malformed domain")
        if labels and tok.cfws_before:
            raise _Malformed("white space or comment inside domain")
        labels.append(tok.text)
        pos += 1
        if pos < len(tokens) and tokens[pos].kind == ".":
            if tokens[pos].cfws_before:
                raise _Malformed("white space or comment inside domain")
            pos += 1
            nxt = tokens[pos] if pos < len(tokens) else None
            if nxt is None or nxt.kind in (",", ">"):
                labels.append("")  # one trailing dot, as in a fully qualified name
                break
            continue
        break
    domain = ".".join(labels)
    if _ENCODED_WORD.search(domain):
        raise _Malformed("encoded-word in address")
    return _Mailbox(local=local, domain=domain), pos


def _check_decoration(text: str) -> None:
    """Display names and comments may say anything, except look like a different address.

    Display-name spoofing in general is outside DMARC (RFC 9989 section 11.4), but an address in
    angle brackets there is what a naive or decode-before-parse reader takes as the address, so it
    is a parser differential, not just a misleading name. Fullwidth look-alikes are folded first.
    """
    decoded = _decode_encoded_words(text)
    for candidate in (text, decoded):
        folded = unicodedata.normalize("NFKC", candidate)
        if _BRACKETED_ADDRESS.search(folded):
            raise _Malformed("display name or comment contains an address in angle brackets")
    if any(ch != "\t" and unicodedata.category(ch) == "Cc" for ch in decoded):
        raise _Malformed("encoded-word hides control characters")


def _decode_encoded_words(text: str) -> str:
    def decode(match: re.Match[str]) -> str:
        charset, encoding, payload = match.group(1), match.group(2).lower(), match.group(3)
        try:
            if encoding == "b":
                data = base64.b64decode(payload + "=" * (-len(payload) % 4))
            else:
                data = _q_decode(payload)
        except (binascii.Error, ValueError):
            return match.group(0)
        charset = charset.split("*", 1)[0]  # RFC 2231 language suffix
        try:
            if codecs.lookup(charset).name in _NOT_CHARSETS:
                raise LookupError(charset)
            return data.decode(charset, errors="replace")
        except (LookupError, UnicodeError, ValueError, TypeError):
            # An unknown charset, or one Python's codec refuses ("idna" and "undefined" raise
            # UnicodeError whatever the bytes): undecodable text. latin-1 keeps every byte visible
            # to the look-alike checks, as a reader guessing at the charset might see it.
            return data.decode("latin-1")

    return _ENCODED_WORD.sub(decode, text)


def _q_decode(payload: str) -> bytes:
    out = bytearray()
    i = 0
    raw = payload.encode("utf-8")
    while i < len(raw):
        b = raw[i]
        if b == ord("_"):
            out.append(0x20)
        elif b == ord("="):
            pair = raw[i + 1 : i + 3]
            if len(pair) != 2 or not pair.isalnum():
                raise ValueError("bad Q escape")
            out.append(int(pair, 16))
            i += 3
            continue
        else:
            out.append(b)
        i += 1
    return bytes(out)
