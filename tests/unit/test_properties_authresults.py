"""Properties of forged Authentication-Results detection (`forged_headers`).

Every field whose authserv-id is ours, written in any case, with a trailing dot, quoted (with
quoted-pairs), after any CFWS (white space, folding, nested comments with quoted-pairs), followed
by anything, is deleted; a well-formed field of anyone else is kept, even when our id appears in its
results; and nothing raises.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from authmilter.core.authresults import HEADER_NAME, forged_headers
from authmilter.core.model import Header, HeaderDelete
from tests.propertysupport import budget

OURS = "mx.rcpt.example"
ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_"


def _case(text: str, flips: list[bool]) -> str:
    return (
        "".join(c.swapcase() if flips[i % len(flips)] else c for i, c in enumerate(text)) if flips else text
    )


def _quoted(text: str, escape: list[bool]) -> str:
    # A quoted-pair may stand for any character; "\" and '"' must be one.
    out = []
    for i, c in enumerate(text):
        out.append("\\" + c if c in '\\"' or (escape and escape[i % len(escape)]) else c)
    return '"' + "".join(out) + '"'


comment_text = st.text(
    st.characters(
        blacklist_characters="()\\", blacklist_categories=("Cs",), max_codepoint=0x7E, min_codepoint=0x20
    ),
    max_size=10,
)


def _nested(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    parts = inner | comment_text | st.sampled_from(["\\(", "\\)", "\\\\", "\r\n "])
    return st.lists(parts, max_size=3).map(lambda ps: "(" + "".join(ps) + ")")


comment = st.recursive(comment_text.map(lambda t: "(" + t + ")"), _nested, max_leaves=4)
cfws = st.lists(st.sampled_from([" ", "\t", "\r\n ", "\r\n\t"]) | comment, max_size=3).map("".join)
TAILS = st.sampled_from(
    [
        "; spf=pass",
        " 1; dkim=pass header.d=example.com",
        ";",
        " (c); none",
        " ;x=y",
        "\r\n ;",
        "",
        "; dmarc=pass header.from=" + OURS,
        " ; arc=none",
        "(no space);",
    ]
)

our_id = st.builds(
    lambda flips, dot, quote, escape: (_quoted if quote else lambda t, _e: t)(
        _case(OURS, flips) + dot, escape
    ),
    st.lists(st.booleans(), max_size=5),
    st.sampled_from(["", "."]),
    st.booleans(),
    st.lists(st.booleans(), max_size=3),
)
other_id = st.text(ID_CHARS, min_size=1, max_size=25).filter(lambda t: t.lower().rstrip(".") != OURS)
other_id = other_id | st.sampled_from([OURS + ".evil", "x" + OURS, OURS + "x", "sub." + OURS, OURS[:-1]])
names = st.sampled_from([HEADER_NAME, HEADER_NAME.lower(), HEADER_NAME.upper(), "authentication-RESULTS"])

ours_value = st.builds(lambda pre, ident, tail: " " + pre + ident + tail, cfws, our_id, TAILS)
other_value = st.builds(
    lambda pre, ident, quote, tail: " " + pre + (_quoted(ident, []) if quote else ident) + tail,
    cfws,
    other_id,
    st.booleans(),
    TAILS,
)
unrelated = st.sampled_from(
    [
        Header(b"Received", f" from {OURS} by {OURS}; Tue".encode()),
        Header(b"X-Authentication-Results", f" {OURS}; spf=pass".encode()),
        Header(b"ARC-Authentication-Results", f" i=1; {OURS}; spf=pass".encode()),
        Header(b"From", b" a@example.com"),
    ]
)


@budget(400)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just(True), names, ours_value),
            st.tuples(st.just(False), names, other_value),
            unrelated,
        ),
        max_size=8,
    )
)
def test_ours_are_deleted_and_others_kept(fields: list[object]) -> None:
    headers: list[Header] = []
    expected: list[int] = []
    occurrence = 0
    for item in fields:
        if isinstance(item, Header):
            headers.append(item)
            continue
        assert isinstance(item, tuple)
        is_ours, name, value = item
        occurrence += 1
        headers.append(Header(name.encode(), value.encode()))
        if is_ours:
            expected.append(occurrence)
    deletes = forged_headers(headers, OURS)
    assert deletes == tuple(HeaderDelete(HEADER_NAME, n) for n in reversed(expected)), headers


@budget(150)
@given(our_id, cfws, TAILS, st.sampled_from([b" ", b"\t", b"  \t"]))
def test_white_space_before_the_colon_is_still_authentication_results(
    ident: str, pre: str, tail: str, space: bytes
) -> None:
    # RFC 5322 obs-optional: `Authentication-Results :` is that field to a reader, so a forgery
    # written that way must go too, counted among the others as the MTA counts it.
    headers = [
        Header(b"Authentication-Results", b" other.example; spf=pass"),
        Header(b"Authentication-Results" + space, (" " + pre + ident + tail).encode()),
    ]
    assert forged_headers(headers, OURS) == (HeaderDelete(HEADER_NAME, 2),)


@budget(300)
@given(
    st.lists(st.tuples(names.map(str.encode) | st.binary(max_size=30), st.binary(max_size=200)), max_size=6),
    st.text(max_size=40),
)
def test_never_raises_and_deletes_only_authentication_results(
    fields: list[tuple[bytes, bytes]], ours: str
) -> None:
    headers = [Header(name, value) for name, value in fields]
    deletes = forged_headers(headers, ours)
    count = sum(1 for h in headers if h.key == HEADER_NAME.lower().encode())
    numbers = [d.occurrence for d in deletes]
    assert all(d.name == HEADER_NAME for d in deletes)
    assert numbers == sorted(set(numbers), reverse=True) and all(1 <= n <= count for n in numbers)


@budget(200)
@given(st.binary(max_size=120), st.sampled_from([OURS, OURS.upper(), OURS + "."]))
def test_arbitrary_values_mentioning_our_id_up_front_are_deleted(junk: bytes, written: str) -> None:
    # Whatever follows, a value that opens with our id (then white space, ";" or a comment) is ours.
    for sep in (b";", b" ", b"(", b"\t"):
        value = b" " + written.encode() + sep + junk
        assert forged_headers([Header(b"Authentication-Results", value)], OURS) == (
            HeaderDelete(HEADER_NAME, 1),
        ), value
