"""core/dkimpy_fast: each shortcut gives exactly what dkimpy's own code gives."""

from __future__ import annotations

import itertools
import re

import dkim
import pytest
from dkim.canonicalization import CanonicalizationPolicy
from hypothesis import given
from hypothesis import strategies as st

from authmilter.core import dkimpy_fast
from tests.mailfactory import make_message, rsa_key, sign
from tests.propertysupport import budget

TOKENS = (b"a", b" ", b"\t", b"\r\n", b"\r", b"\n", b"  ")
SAMPLES = [b"".join(p) for n in range(7) for p in itertools.product(TOKENS, repeat=n)]


def test_relaxed_headers_are_dkimpys_canonicalization() -> None:
    relaxed = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed").header_algorithm
    original = relaxed.canonicalize_headers.authmilter_original
    assert relaxed.canonicalize_headers is not original
    names = [b"Subject", b"FROM ", b"x-a\t"]
    for value in SAMPLES:
        headers = [(name, value) for name in names]
        assert relaxed.canonicalize_headers(headers) == original(headers), value


def test_relaxed_body_slow_path_is_dkimpys_canonicalization() -> None:
    original = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed").body_algorithm.canonicalize_body
    original = original.authmilter_original
    for body in [*SAMPLES, b"a  b \r\n\tc\t\r\n\r\n", b"x \r\n" * 300 + b"tail  "]:
        assert dkimpy_fast.relaxed_body_slow(body) == original(body), body


RECORD = (b"v=DKIM1; k=rsa; p=MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBANDiE2+Xi/WnO+s120NiiJhNyIButVu6zxqlVZ8W"
          b"3Q+vjhutbCvSOpa/gqHbiBrcR/7uSA9fZ3wzY7MsvnOYUSECAwEAAQ==")


def test_public_key_records_are_parsed_once() -> None:
    first = dkim.evaluate_pk(b"s._domainkey.example.com.", RECORD)
    again = dkim.evaluate_pk(b"s._domainkey.example.com.", RECORD)
    assert first is again
    assert first == dkim.evaluate_pk.authmilter_original(b"s._domainkey.example.com.", RECORD)
    rotated = dkim.evaluate_pk(b"s._domainkey.example.com.", RECORD.replace(b"v=DKIM1; ", b""))
    assert rotated is not first


@pytest.mark.parametrize("record", [b"v=DKIM1; p=notbase64!", b"v=DKIM2; p=", b"k=rsa; p=AAAA"])
def test_a_bad_key_record_fails_every_time_as_dkimpy_says(record: bytes) -> None:
    with pytest.raises(Exception) as expected:
        dkim.evaluate_pk.authmilter_original(b"s._domainkey.example.com.", record)
    for _ in range(2):
        with pytest.raises(expected.type):
            dkim.evaluate_pk(b"s._domainkey.example.com.", record)


def test_large_slow_bodies_are_canonicalized_piece_by_piece_to_the_same_bytes() -> None:
    original = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed").body_algorithm.canonicalize_body
    original = original.authmilter_original
    line = b"some  text\twith white space \r\n"
    piece = dkimpy_fast._PIECE
    bodies = [
        line * (3 * piece // len(line)),  # several pieces
        line * (piece // len(line)) + b"x" * piece + b"  \r\n\r\n\r\n",  # a line longer than a piece
        b"a  b\r\n" + b"\r\n" * piece,  # trailing empty lines across pieces
        b"\r\n" * piece + b" ",
    ]
    for body in bodies:
        assert bytes(dkimpy_fast.relaxed_body_slow(body)) == original(body)


def test_long_runs_of_white_space_take_linear_time() -> None:
    # dkimpy's own "[\t ]+\r\n" backtracks quadratically over a long run of spaces that no CRLF
    # ends: 2 MB of them would take it hours. Ours gives the one-space answer at once.
    body = b"a" + b" " * (2 * dkimpy_fast._PIECE) + b"b\r\n"
    assert bytes(dkimpy_fast.relaxed_body_slow(body)) == b"a b\r\n"
    small = b"a" + b" " * 5000 + b"b\r\n"
    assert dkimpy_fast.relaxed_body_slow(small) == b"a b\r\n"


# --- the b= tag emptied out of the signature field ---

BTAG_TOKENS = (b"b", b"=", b";", b" ", b"\t", b"\r\n", b"\n", b"\r", b"A", b"/", b"x", b"!", b"\x0b")
ORIGINAL_BTAG = dkimpy_fast.ORIGINAL_BTAG  # the object dkimpy compiled, kept before replacing it
assert ORIGINAL_BTAG is not None


def test_dkimpys_btag_pattern_is_the_one_replaced() -> None:
    # A dkimpy with another pattern keeps its own (and this test says the derivation is due).
    assert ORIGINAL_BTAG.pattern == dkimpy_fast.DKIMPY_BTAG
    assert dkim.RE_BTAG is dkimpy_fast.BTAG


def test_btag_is_dkimpys_on_every_short_field() -> None:
    for n in range(6):
        for parts in itertools.product(BTAG_TOKENS, repeat=n):
            value = b"; b=" + b"".join(parts)
            assert dkimpy_fast.BTAG.sub(rb"\1", value) == ORIGINAL_BTAG.sub(rb"\1", value), value


BTAG_PIECES = (*BTAG_TOKENS, b" b=", b";b =", b"\r\n\tb=", b"AAAA", b" \r\n ")


@budget(300)
@given(st.lists(st.sampled_from(BTAG_PIECES), max_size=60), st.binary(max_size=40))
def test_btag_is_dkimpys_on_any_field(parts: list[bytes], noise: bytes) -> None:
    value = b"v=1; a=rsa-sha256; d=example.org; s=s;" + b"".join(parts) + noise
    assert dkimpy_fast.BTAG.sub(rb"\1", value) == ORIGINAL_BTAG.sub(rb"\1", value)


def test_btag_empties_a_real_signatures_value() -> None:
    message = sign(make_message(), domain="example.org", selector="rsa", key=rsa_key())
    field = message.split(b"\r\n\r\n", 1)[0].split(b"DKIM-Signature:", 1)[1]
    field = field.split(b"\r\nFrom:", 1)[0] if b"\r\nFrom:" in field else field
    emptied = dkimpy_fast.BTAG.sub(rb"\1", field)
    assert emptied == ORIGINAL_BTAG.sub(rb"\1", field)
    assert re.search(rb"[;\s]b=\s*(;|\Z)", emptied) and b"bh=" in emptied
