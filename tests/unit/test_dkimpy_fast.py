"""core/dkimpy_fast: each shortcut gives exactly what dkimpy's own code gives."""

from __future__ import annotations

import itertools

import dkim
import pytest
from dkim.canonicalization import CanonicalizationPolicy

from authmilter.core import dkimpy_fast

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
