"""Properties of the message splitter and the From (author) parser, over generated input.

The splitter must lose nothing from a well-formed message and never raise on any bytes; the author
parser must never raise, must only ever return a normalized host name, and must find exactly the
domain of `Display <local@domain>` however the display name is written.
"""

from __future__ import annotations

import base64
import re
import warnings

from hypothesis import given
from hypothesis import strategies as st

from authmilter.core.checks.author import parse_author
from authmilter.core.message import split_message
from authmilter.core.model import Header
from authmilter.core.names import normalize_domain
from tests.propertysupport import atom, budget, charset, domain, dot_atom, fws

# --- the splitter ------------------------------------------------------------------------------------

FIELD_NAME = st.text("".join(chr(c) for c in range(33, 127) if c != 58), min_size=1, max_size=20).map(
    str.encode
)
# A line's content: any byte but CR, LF and NUL (a NUL ends a value, as the MTA reads it).
LINE = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b""))
CONTINUATION = st.tuples(st.sampled_from([b" ", b"\t"]), LINE).map(b"".join)
FIELD = st.tuples(FIELD_NAME, LINE, st.lists(CONTINUATION, max_size=3))
BODY_LINES = st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=6)


@budget(300)
@given(st.lists(FIELD, max_size=8), BODY_LINES, st.booleans())
def test_split_round_trips_a_well_formed_message(
    fields: list[tuple[bytes, bytes, list[bytes]]], body_lines: list[bytes], final_break: bool
) -> None:
    body = b"\r\n".join(body_lines) + (b"\r\n" if body_lines and final_break else b"")
    expected = tuple(Header(name, b"\r\n".join([first, *rest])) for name, first, rest in fields)
    raw = b"".join(h.raw() for h in expected) + b"\r\n" + body
    headers, got_body = split_message(raw)
    assert headers == expected
    assert got_body == body
    assert b"".join(h.raw() for h in headers) + b"\r\n" + got_body == raw


@budget(150)
@given(st.lists(FIELD, max_size=6), BODY_LINES)
def test_split_reads_bare_lf_as_crlf(
    fields: list[tuple[bytes, bytes, list[bytes]]], body_lines: list[bytes]
) -> None:
    # Files on disk have LF line ends; only where no CR stands next to a break is the mapping exact.
    fields = [(n, f.replace(b"\r", b""), [c.replace(b"\r", b"") for c in rest]) for n, f, rest in fields]
    body_lines = [line.replace(b"\r", b"") for line in body_lines]
    crlf = (
        b"".join(Header(n, b"\r\n".join([f, *rest])).raw() for n, f, rest in fields)
        + b"\r\n"
        + b"\r\n".join(body_lines)
    )
    assert split_message(crlf.replace(b"\r\n", b"\n")) == split_message(crlf)


def _normalized(raw: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", raw)


@budget(400)
@given(
    st.binary(max_size=400)
    | st.lists(
        st.sampled_from(
            [
                b"From: a@b.example",
                b"From : x",
                b"\r\n",
                b"\n",
                b" folded",
                b"\tx",
                b":",
                b"No colon",
                b"\x00",
                b"\r",
                b"DKIM-Signature: v=1",
                b"\xff\xfe",
                b"a" * 100,
            ]
        ),
        max_size=20,
    ).map(b"".join)
)
def test_split_never_raises_and_returns_valid_names(raw: bytes) -> None:
    headers, body = split_message(raw)
    for h in headers:
        # The name a field is known by (white space before the colon dropped) is RFC 5322 ftext.
        assert h.key and all(33 <= c <= 126 and c != 58 for c in h.key), h
        # A line break inside a value is always a fold: CRLF then white space.
        assert re.fullmatch(rb"(?:[^\r\n]|\r(?!\n)|\r\n[ \t])*", h.value), h
        assert b"\x00" not in h.value  # the MTA hands a value over only up to a NUL
    if b"\x00" not in raw:
        # Nothing is lost or invented: the fields, the blank line (if any) and the body are the input.
        head = b"".join(h.raw() for h in headers)
        norm = _normalized(raw)
        assert norm in (head + body, head + b"\r\n" + body) or (norm + b"\r\n" == head and body == b"")


# --- the author parser --------------------------------------------------------------------------------

_LDH_NAME = re.compile(
    r"(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\Z"
)


def _assert_sane(result: object) -> None:
    from authmilter.core.model import AuthorResult

    assert isinstance(result, AuthorResult)
    if result.domain is None:
        assert result.error
    else:
        assert not result.error
        assert _LDH_NAME.match(result.domain), result
        assert normalize_domain(result.domain) == result.domain
        assert len(result.addresses) == 1 and result.addresses[0].endswith("@" + result.domain)


def _encoded_word(cs: str, payload: bytes, b_encoding: bool) -> str:
    if b_encoding:
        return f"=?{cs}?B?{base64.b64encode(payload).decode()}?="
    # RFC 2047 section 5 (3): in a phrase, Q leaves only letters, digits and "!*+-/" unencoded.
    safe = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!*+-/"
    return f"=?{cs}?Q?" + "".join(chr(b) if b in safe else f"={b:02X}" for b in payload) + "?="


encoded_word = st.builds(_encoded_word, charset, st.binary(max_size=30), st.booleans())
comment = st.builds(
    lambda t: "(" + t.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")",
    st.text(max_size=15),
)
quoted = st.builds(lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"', st.text(max_size=15))
TOKENS = st.one_of(
    atom,
    quoted,
    comment,
    encoded_word,
    fws,
    domain,
    st.sampled_from(
        [
            "<",
            ">",
            "@",
            ",",
            ";",
            ":",
            ".",
            "[",
            "]",
            "\\",
            "\x00",
            "\r\n",
            "\n",
            "<>",
            "@victim.example:",
            "undisclosed:;",
            "=?",
            "?=",
        ]
    ),
)
FROM_NAMES = st.sampled_from(
    [b"From", b"from", b"FROM", b"From ", b"From\t", b"To", b"Sender", b"Resent-From"]
)


@budget(500)
@given(
    st.lists(
        st.tuples(
            FROM_NAMES,
            st.binary(max_size=200)
            | st.lists(TOKENS, max_size=15).map(lambda ts: "".join(ts).encode("utf-8", "surrogatepass")),
        ),
        max_size=3,
    )
)
def test_parse_author_never_raises_and_returns_a_host_name(fields: list[tuple[bytes, bytes]]) -> None:
    _assert_sane(parse_author([Header(name, b" " + value) for name, value in fields]))


display_word = st.one_of(
    atom,
    st.builds(
        lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"',
        st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="<>"), max_size=15),
    ),
)
display = st.lists(st.tuples(display_word, st.sampled_from([" ", "\t", "\r\n ", "  "])), max_size=4).map(
    lambda ws: "".join(w + sep for w, sep in ws)
)
local_part = dot_atom | st.builds(lambda t: '"' + t + '"', st.text("abcdefghij .-+", min_size=1, max_size=10))


@budget(300)
@given(
    display,
    local_part,
    domain,
    st.sampled_from(["", " (a comment)", "(c)"]),
    fws,
    st.sampled_from([b"From", b"from", b"FROM"]),
)
def test_display_name_and_address_gives_exactly_that_domain(
    name: str, local: str, dom: str, comment_text: str, space: str, field_name: bytes
) -> None:
    case_mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(dom))
    value = f"{space}{name}<{local}@{case_mixed}>{comment_text}".encode()
    result = parse_author([Header(b"To", b" someone@else.example"), Header(field_name, b" " + value)])
    assert (result.domain, result.error) == (dom, ""), value


@budget(200)
@given(st.lists(encoded_word, min_size=1, max_size=3), domain, st.sampled_from(["", " ", "."]))
def test_encoded_words_in_the_display_name_never_change_the_domain(
    words: list[str], dom: str, sep: str
) -> None:
    value = f" {sep.join(words)} <ceo@{dom}>".encode()
    result = parse_author([Header(b"From", value)])
    _assert_sane(result)
    # Refusing is allowed (a decoded name that hides an address or control characters); reading
    # another domain never is.
    assert result.domain in (dom, None), value
    if result.domain is None:
        assert result.error.startswith("unparseable From: ") and any(
            why in result.error for why in ("angle brackets", "control characters")
        ), result


@budget(100)
@given(domain, st.sampled_from([b"From :", b"From\t:", b"From  \t:", b"FROM :"]))
def test_white_space_before_the_colon_is_still_the_from_field(dom: str, written: bytes) -> None:
    # RFC 5322 section 4.5 (obs-optional): a reader takes `From :` for From. Two such fields are two
    # From fields, and one alone is the author.
    headers, _ = split_message(written + f" <ceo@{dom}>\r\n\r\nbody\r\n".encode())
    assert parse_author(headers).domain == dom
    headers, _ = split_message(b"From: a@b.example\r\n" + written + f" <ceo@{dom}>\r\n\r\n".encode())
    assert parse_author(headers).domain is None


@budget(100)
@given(st.sampled_from(["unicode_escape", "raw_unicode_escape", "utf-8", "idna", "undefined"]),
       st.binary(max_size=8))
def test_decoding_encoded_words_never_warns(cs: str, payload: bytes) -> None:
    word = _encoded_word(cs, b"\\" + payload, False)  # a backslash escape for the codecs that read them
    value = f" {word} <ceo@victim.example>".encode()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_sane(parse_author([Header(b"From", value)]))
