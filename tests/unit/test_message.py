from __future__ import annotations

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
    headers, body = split_message(b"From: a\x00b@example.org\r\n\r\nx\x00y\r\n")
    assert headers[0].value == b" a\x00b@example.org" and body == b"x\x00y\r\n"
