"""The preview HTML page without a browser: escaping of hostile strings, and the empty summary."""

from __future__ import annotations

from html.parser import HTMLParser

from authmilter.reports.preview_html import render_html
from authmilter.reports.preview_model import (
    UNKNOWN,
    DomainChanges,
    DomainDay,
    Example,
    PreviewSummary,
    Transition,
)

HOSTILE = "<script>alert(1)</script>.example"
QUOTES = "\"' onmouseover=\"alert(2)\" x='.example"
T0 = 1_800_000_000


class Elements(HTMLParser):
    """Every start tag with its attributes, and the page's text, as a browser would parse them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Elements:
    p = Elements()
    p.feed(page)
    p.close()
    return p


def hostile_summary() -> PreviewSummary:
    t = Transition("accept", "reject", 2)
    odd = Transition("accept", "<marquee>bold</marquee>", 1)
    return PreviewSummary(
        since=T0, until=T0 + 86400, policy_files=("<img src=x onerror=alert(3)>.toml",),
        total=5, changed=3, unknown=0, skipped=0,
        actions_before=(("accept", 5),),
        actions_after=(("<marquee>bold</marquee>", 1), ("accept", 2), ("reject", 2)),
        transitions=(t, odd),
        domains=(DomainChanges(HOSTILE, 3, 2, (t,)), DomainChanges(QUOTES, 2, 1, (odd,))),
        examples=(Example(T0 + 60, "192.0.2.1", HOSTILE, "a@" + HOSTILE, "accept", "<i>r</i>",
                          "reject", "dmarc&fail", "reason with <script>x</script> & \"quotes\""),),
        days=(DomainDay(HOSTILE, "2027-01-15", 3, 1, 1, 1), DomainDay(QUOTES, "2027-01-15", 2, 2, 2, 0)),
    )


def test_hostile_strings_are_text_not_markup() -> None:
    page = render_html(hostile_summary())
    p = parse(page)
    names = [tag for tag, _ in p.tags]
    assert "script" not in names
    assert "img" not in names and "marquee" not in names and "i" not in names
    assert not any(k.startswith("on") for _, attrs in p.tags for k in attrs)
    # Shown literally, both in the tables and in the SVG legend/labels.
    text = "".join(p.text)
    assert HOSTILE in text and QUOTES in text
    assert "<img src=x onerror=alert(3)>.toml" in text
    assert "reason with <script>x</script> & \"quotes\"" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.example" in page
    # Attribute values keep the whole hostile string, quotes and all, inside the attribute.
    lines = [a for tag, a in p.tags if tag == "polyline"]
    assert sorted(a["data-domain"] or "" for a in lines) == sorted([HOSTILE, QUOTES])
    bars = [a for tag, a in p.tags if tag == "rect" and a.get("data-action") == "<marquee>bold</marquee>"]
    assert [(b["data-when"], b["data-count"]) for b in bars] == [("before", "0"), ("after", "1")]


def test_the_page_is_self_contained() -> None:
    page = render_html(hostile_summary())
    p = parse(page)
    for tag, attrs in p.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed", "img"), tag
        for name in ("src", "href"):
            assert name not in attrs, (tag, attrs)
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page
    assert "url(" not in page


def test_an_empty_summary_says_there_is_nothing_to_preview() -> None:
    empty = PreviewSummary(since=T0, until=T0 + 7 * 86400, policy_files=("draft.toml",), total=0,
                           changed=0, unknown=0, skipped=0, actions_before=(), actions_after=(),
                           transitions=(), domains=(), examples=(), days=())
    page = render_html(empty)
    p = parse(page)
    names = [tag for tag, _ in p.tags]
    assert "svg" not in names and "polyline" not in names and "rect" not in names
    assert "Nothing to preview" in "".join(p.text)
    ids = {a.get("id") for _, a in p.tags}
    assert {"nothing", "totals", "total-records"} <= ids
    assert page.count("<") == page.count(">")  # crude, but catches an unclosed tag we wrote


def test_records_without_dmarc_results_or_changes_draw_no_empty_line_chart() -> None:
    s = PreviewSummary(since=T0, until=T0 + 86400, policy_files=("draft.toml",), total=4, changed=0,
                       unknown=0, skipped=1, actions_before=(("accept", 4),),
                       actions_after=(("accept", 4),), transitions=(), domains=(), examples=(),
                       days=())
    p = parse(render_html(s))
    svgs = [a.get("id") for tag, a in p.tags if tag == "svg"]
    assert svgs == ["actions-chart"]
    ids = {a.get("id") for _, a in p.tags}
    assert {"passrate-empty", "transitions"} <= ids
    assert "decides every message as before" in "".join(p.text)


def test_at_most_ten_domains_are_charted_the_busiest() -> None:
    days = tuple(DomainDay(f"d{i:02}.example", "2027-01-15", 100 + i, 50, 50, 50) for i in range(14))
    s = PreviewSummary(since=T0, until=T0 + 86400, policy_files=("draft.toml",), total=2000, changed=0,
                       unknown=0, skipped=0, actions_before=(("accept", 2000),),
                       actions_after=((UNKNOWN, 2000),), transitions=(), domains=(), examples=(),
                       days=days)
    p = parse(render_html(s))
    charted = {a["data-domain"] for tag, a in p.tags if tag == "polyline"}
    assert charted == {f"d{i:02}.example" for i in range(4, 14)}
