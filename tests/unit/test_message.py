from __future__ import annotations

import pytest

from authmilter.core.message import split_message
from authmilter.core.model import Header


def test_crlf_message_with_folding_and_leading_space_kept() -> None:
    raw = b"From:  Alice <a@example.org>\r\nSubject: one\r\n\ttwo\r\nX-8bit: caf\xc3\xa9\r\n\r\nbody\r\n"
    headers, body = split_message(raw)
    assert headers == (
        Header(b"From", b"  Alice <a@example.org>"),
        Header(b"Subject", b" one\r\n\ttwo"),
        Header(b"X-8bit", b" caf\xc3\xa9"),
    )
    assert body == b"body\r\n"


def test_lf_only_file_reads_as_crlf() -> None:
    headers, body = split_message(b"From: a@example.org\nTo: b@example.com\n\nline1\nline2\n")
    assert [h.name for h in headers] == [b"From", b"To"]
    assert body == b"line1\r\nline2\r\n"


def test_headers_only_and_body_only() -> None:
    headers, body = split_message(b"From: a@example.org\r\nSubject: x\r\n")
    assert len(headers) == 2 and body == b""
    headers, body = split_message(b"just a body line\r\nand another\r\n")
    assert headers == () and body == b"just a body line\r\nand another\r\n"


def test_message_bytes_round_trip() -> None:
    from authmilter.core.model import Transaction

    raw = b"From: a@example.org\r\nSubject: x\r\n y\r\n\r\nbody\r\n\r\n"
    headers, body = split_message(raw)
    tx = Transaction(client_ip=None, helo="h", mail_from="", headers=headers, body=body)
    assert tx.message_bytes() == raw


def test_nul_and_empty_input_do_not_break() -> None:
    headers, body = split_message(b"")
    assert headers == () and body == b""
    notes: list[str] = []
    headers, body = split_message(b"From: a\x00b@example.org\r\n\r\nx\x00y\r\n", notes)
    # A header value ends at its NUL, as libmilter hands it over and Postfix delivers it; the body
    # travels with its length and keeps every byte.
    assert headers[0].value == b" a" and body == b"x\x00y\r\n"
    assert notes == ["header field From: value read up to its NUL byte, as the MTA hands it to milters "
                     "and delivers it"]


def test_nul_cuts_the_rest_of_a_folded_value() -> None:
    headers, _ = split_message(b"Subject: one\x00two\r\n three\r\nTo: b@example.org\r\n\r\n")
    assert [(h.name, h.value) for h in headers] == [(b"Subject", b" one"), (b"To", b" b@example.org")]


@pytest.mark.parametrize("line", [b"From : a@example.org", b"From\t: a@example.org",
                                  b"From \t :a@example.org", b"From\x0b: a@example.org",
                                  b"From\x0c: a@example.org", b"From\r: a@example.org"])
def test_white_space_before_the_colon_is_still_a_field(line: bytes) -> None:
    # RFC 5322 section 4.5 (obs-optional): the name is From; the bytes before the colon are kept
    # for simple canonicalization.
    headers, body = split_message(b"To: b@example.org\r\n" + line + b"\r\nSubject: s\r\n\r\nbody\r\n")
    assert [h.key for h in headers] == [b"to", b"from", b"subject"]
    assert headers[1].raw() == line + b"\r\n" and body == b"body\r\n"


@pytest.mark.parametrize("line", [b"\x0bFrom: x", b"Fr\x0bom: x", b": x", b"From x", b"From\xc2\xa0: x"])
def test_a_line_that_is_no_field_still_ends_the_header_section(line: bytes) -> None:
    headers, body = split_message(b"To: b@example.org\r\n" + line + b"\r\n\r\nbody\r\n")
    assert [h.key for h in headers] == [b"to"]
    assert body.startswith(line + b"\r\n")
