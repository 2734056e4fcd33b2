"""RFC5322.From extraction: one author domain, or an error that keeps DMARC from being skipped."""

from __future__ import annotations

import pytest

from authmilter.core.checks.author import parse_author
from authmilter.core.model import AuthorResult, Header
from authmilter.core.names import normalize_domain


def author(*values: bytes, name: bytes = b"From") -> AuthorResult:
    headers = [Header(b"Subject", b" hi"), *(Header(name, v) for v in values), Header(b"To", b" x@y.example")]
    return parse_author(headers)


def domain_of(value: bytes) -> str | None:
    result = author(value)
    assert result.error == "" if result.domain else result.error != ""
    return result.domain


def error_of(value: bytes) -> str:
    result = author(value)
    assert result.domain is None, result
    assert result.error
    return result.error


# --- accepted ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b" user@example.com", "example.com"),
        (b"user@example.com", "example.com"),  # no leading space
        (b" <user@example.com>", "example.com"),
        (b" John Doe <user@example.com>", "example.com"),
        (b' "Doe, John" <user@example.com>', "example.com"),  # comma inside quotes: one address
        (b' "Doe, John <x@evil.example>, " <user@example.com>', None),  # but not a bracketed address
        (b' "a\\"b, c" <user@example.com>', "example.com"),  # escaped quote inside quotes
        (b" user@example.com (Doe, John)", "example.com"),  # comma inside a comment
        (b" (outer (nested) comment) user@example.com", "example.com"),
        (b" user (c) @ example.com", "example.com"),  # CFWS around the dot-atoms is RFC 5322 syntax
        (b" =?utf-8?q?J=C3=B6rg_Doe?= <user@example.com>", "example.com"),  # encoded-word display name
        (b" =?iso-8859-1?b?Sv5yZw==?= <user@example.com>", "example.com"),
        (b' "John Doe"@example.com', "example.com"),  # quoted local part
        (b' <"john..doe"@example.com>', "example.com"),
        (b" user@Example.COM", "example.com"),  # lower-cased
        (b" user@example.com.", "example.com"),  # trailing dot stripped
        (b" <user@example.com.>", "example.com"),
        (b" user@b\xc3\xbccher.example", "xn--bcher-kva.example"),  # U-label to A-label
        (b" user@XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        (b" J\xc3\xb6rg <j\xc3\xb6rg@example.com>", "example.com"),  # RFC 6532 UTF-8
        (b" John\r\n Doe\r\n\t<user@example.com>", "example.com"),  # folded
        (b" John\n Doe <user@example.com>", "example.com"),  # LF-only folding
        (b" user@example.com\r\n", "example.com"),  # a stray final line break hides nothing
        (b' "ceo@bank.example" <user@example.com>', "example.com"),  # quoted name with '@': allowed
        (b" Mr. John Doe <user@example.com>", "example.com"),  # obs-phrase "."
        (b" user@localhost", "localhost"),
        (b" user@bank\xef\xbc\x8eexample", "bank.example"),  # fullwidth full stop is a label separator
        (
            b" user@\xef\xbd\x82\xef\xbd\x81\xef\xbd\x8e\xef\xbd\x8b.example",
            "bank.example",
        ),  # fullwidth letters
    ],
)
def test_single_from_variants(value: bytes, expected: str | None) -> None:
    assert domain_of(value) == expected


def test_addresses_reported() -> None:
    result = author(b' "Doe, John" <John.Doe@Example.com>')
    assert result == AuthorResult(domain="example.com", addresses=("John.Doe@example.com",))


@pytest.mark.parametrize("name", [b"from", b"FROM", b"From ", b"fRoM\t"])
def test_header_name_variants_count_as_from(name: bytes) -> None:
    assert author(b" user@example.com", name=name).domain == "example.com"


def test_other_address_fields_ignored() -> None:
    headers = [
        Header(b"Sender", b" s@sender.example"),
        Header(b"Resent-From", b" r@resent.example"),
        Header(b"Reply-To", b" a@x.example, b@y.example"),
        Header(b"From", b" user@example.com"),
    ]
    assert parse_author(headers).domain == "example.com"


# --- refused -----------------------------------------------------------------------------------


def test_no_from() -> None:
    result = parse_author([Header(b"Subject", b" hi"), Header(b"Sender", b" a@example.com")])
    assert result.domain is None
    assert result.error == "no From header field"


def test_two_from_fields_same_domain() -> None:
    result = author(b" a@example.com", b" a@example.com")
    assert result.domain is None
    assert result.error == "2 From header fields"
    assert result.addresses == ("a@example.com", "a@example.com")


def test_two_from_fields_different_domains() -> None:
    result = author(b" ceo@bank.example", b" x@evil.example")
    assert result.domain is None
    assert result.error == "2 From header fields"


def test_second_from_unparseable_still_counts() -> None:
    assert author(b" a@example.com", b" <<<").error == "2 From header fields"


@pytest.mark.parametrize(
    "value",
    [
        b" a@example.com, b@example.com",
        b" a@example.com, b@other.example",
        b' "A" <a@example.com>, "B" <b@other.example>',
        b" a@example.com,b@example.com",
    ],
)
def test_several_addresses(value: bytes) -> None:
    assert error_of(value) == "From holds 2 addresses"


@pytest.mark.parametrize(
    "value",
    [
        b" Team: a@example.com;",
        b" Team: a@example.com, b@example.com;",
        b" undisclosed-recipients:;",
        b" a@example.com, Team: b@example.com;",
    ],
)
def test_group_syntax(value: bytes) -> None:
    assert "group syntax" in error_of(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b" user", "address has no domain"),
        (b" John Doe", "address has no domain"),
        (b" <user>", "address has no domain"),
        (b" user@", "address has no domain"),
        (b" <user@>", "malformed domain"),
        (b" <>", "empty address <>"),
        (b" @example.com", "missing local part"),
        (b" user@[192.0.2.1]", "domain literal"),
    ],
)
def test_no_usable_domain(value: bytes, message: str) -> None:
    assert message in error_of(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"", "empty From"),
        (b"   ", "empty From"),
        (b" (just a comment)", "empty From"),
        (b' "unterminated <user@example.com>', "unterminated quoted string"),
        (b" (unterminated user@example.com", "unbalanced '('"),
        (b" user@example.com)", "unbalanced ')'"),
        (b" <user@example.com", "unbalanced '<'"),
        (b" user@example.com>", "unexpected '>'"),
        (b" >user@example.com", "unbalanced '>'"),
        (b" John <user@example.com> <x@evil.example>", "after '>'"),
        (b" <user@example.com> trailing", "after '>'"),
        (b" ceo@bank.example <x@evil.example>", "unquoted address in display name"),
        (b" John ceo@bank.example <x@evil.example>", "unquoted address in display name"),
        (b' "Bank" <ceo@bank.example> <x@evil.example>', "after '>'"),
        (b' "Bank <ceo@bank.example>" <x@evil.example>', "angle brackets"),
        (b" =?utf-8?q?Bank_=3Cceo=40bank.example=3E?= <x@evil.example>", "angle brackets"),
        (b" =?utf-8?b?PGNlb0BiYW5rLmV4YW1wbGU+?= <x@evil.example>", "angle brackets"),
        (b" x@evil.example (<ceo@bank.example>)", "angle brackets"),
        (b' "Bank \xef\xbc\x9cceo@bank.example\xef\xbc\x9e" <x@evil.example>', "angle brackets"),  # fullwidth
        (b" =?utf-8?q?Bank=0D=0ABcc=3A_ceo=40bank.example?= <x@evil.example>", "control characters"),
        (b" =?utf-8?q?ceo=40bank.example?=@evil.example", "encoded-word in address"),
        (b" <=?utf-8?q?ceo?=@evil.example>", "encoded-word in address"),
        (b" user@=?utf-8?q?bank.example?=", "encoded-word"),
        (b' "ceo@bank.example"@evil.example', "quoted local part"),
        (b" <@route.example:user@example.com>", "route address"),
        (b" a@example.com,", "empty member"),
        (b" a@example.com,,b@example.com", "empty member"),
        (b" , a@example.com", "empty address"),
        (b" a@b@example.com", "unexpected '@'"),
        (b" user@example . com", "inside domain"),
        (b" user@example.(c)com", "inside domain"),
        (b" user@example..com", "malformed domain"),
        (b" user\\@example.com", "unexpected character"),
        (b" [user@example.com", "unterminated domain literal"),
    ],
)
def test_unparseable(value: bytes, message: str) -> None:
    error = error_of(value)
    assert message in error, error


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b" user@example.com\x00", "NUL"),
        (b" user\x00@example.com", "NUL"),
        (b" user@example.com\rx", "bare CR"),
        (b" user@example.com\r", "bare CR"),
        (b" a@example.com\nFrom: b@evil.example", "line break not followed by white space"),
        (b" a@example.com\r\nBcc: b@evil.example", "line break not followed by white space"),
        (b" user@example.com\x1b", "control character"),
        (b" Name\xc2\x85 <user@example.com>", "control character"),  # C1 NEL
        (b" user@ex\xff.com", "not valid UTF-8"),
    ],
)
def test_garbage_bytes(value: bytes, message: str) -> None:
    assert message in error_of(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b" user@bank.example!evil.example", "not a host name label"),
        (b" user@-bank.example", "not a host name label"),
        (b" user@under_score.example", "not a host name label"),
        (b" user@fa\xc3\x9f.example", "IDNA2003 and IDNA2008"),  # sharp s
        (b" user@xn--zz.example", "not a valid A-label"),
        (b" user@xn--abc.example", "not a valid A-label"),  # decodes to ASCII only: not an A-label
        (b" user@" + b"a" * 64 + b".example", "not a host name label"),
        (b" user@" + b"a." * 130 + b"example", "longer than 253"),
    ],
)
def test_invalid_domains(value: bytes, message: str) -> None:
    error = error_of(value)
    assert error.startswith("invalid From domain")
    assert message in error


def test_normalize_domain() -> None:
    assert normalize_domain("Example.COM.") == "example.com"
    assert normalize_domain("b\u00fccher.example") == "xn--bcher-kva.example"
    assert normalize_domain("a\u3002example") == "a.example"
    for bad in ("", ".", "a..b", "a_b.example", "\u00df.example"):
        with pytest.raises(ValueError):
            normalize_domain(bad)
