"""The preview HTML page as headless Chromium shows it: the DOM it built, and the pixels it drew.

Reading our own string back would only show that we wrote what we meant to write; a real
browser shows that the markup parses the way we meant (hostile text stays text, the SVG is
well-formed enough to be drawn), and the screenshot that the charts are actually painted.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import lxml.html
import pytest

from authmilter.reports.preview_html import BAR_COLOURS, render_html
from authmilter.reports.preview_model import (
    UNKNOWN,
    DomainChanges,
    DomainDay,
    Example,
    PreviewSummary,
    Transition,
)
from tests.debian import apt_install, tail

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT = 60.0
INSTALL_TIMEOUT = 600.0
WINDOW = (1200, 2000)
SCREENSHOT_COPY = Path("/tmp/preview-screenshot.png")

HOSTILE = "<script>alert(1)</script>.example"
DAY0 = 1_800_057_600  # 2027-01-16 00:00 UTC
DAYS = ("2027-01-16", "2027-01-17", "2027-01-18", "2027-01-19")


class ChromiumUnavailable(Exception):
    """Chromium is missing and cannot be installed."""


def ensure_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.geteuid() != 0:
        raise ChromiumUnavailable("chromium not installed and not root to apt-get install it")
    apt_install(["chromium"], error=ChromiumUnavailable, timeout=INSTALL_TIMEOUT)
    if not CHROMIUM.exists():
        raise ChromiumUnavailable(f"apt-get install chromium succeeded but {CHROMIUM} is missing")


@pytest.fixture(scope="module")
def chromium() -> Path:
    try:
        ensure_chromium()
    except ChromiumUnavailable as e:
        pytest.skip(f"headless Chromium unavailable (Debian package chromium): {e}")
    return CHROMIUM


def summary() -> PreviewSummary:
    """A week's worth of a small site: three author domains, one of them hostile, over four days."""
    a_rej = Transition("accept", "reject", 40)
    a_quar = Transition("accept", "quarantine", 25)
    r_acc = Transition("reject", "accept", 10)
    r_unk = Transition("reject", UNKNOWN, 5)
    days = []
    # Pass rates that differ per domain and per day, so the lines are not flat on each other.
    for domain, totals, passes in (
        ("example.com", (150, 160, 140, 150), (147, 150, 120, 149)),
        ("example.net", (80, 70, 75, 75), (40, 35, 60, 70)),
        (HOSTILE, (30, 0, 40, 30), (3, 0, 10, 0)),  # no mail on the second day: 3 points
    ):
        for day, total, passed in zip(DAYS, totals, passes, strict=True):
            if total:
                days.append(DomainDay(domain, day, total, passed, passed, max(passed - 2, 0)))
    examples = (
        Example(DAY0 + 3600, "192.0.2.10", "example.com", "bounce@example.com", "accept", "default",
                "reject", "dmarc-fail", "DMARC fail for example.com, p=reject"),
        Example(DAY0 + 90061, "198.51.100.7", "example.net", "news@example.net", "accept", "default",
                "quarantine", "spf-softfail", "SPF softfail and no aligned DKIM"),
        Example(DAY0 + 200000, "203.0.113.5", "example.com", "", "reject", "dnsbl",
                "accept", "default", "no rule matched"),
        Example(DAY0 + 250000, "203.0.113.66", HOSTILE, "x@" + HOSTILE, "reject", "helo-bad",
                UNKNOWN, "", f"decided after MAIL FROM <{HOSTILE}>; not recorded further"),
    )
    return PreviewSummary(
        since=DAY0, until=DAY0 + 4 * 86400, policy_files=("policies/default.toml", "draft/strict.toml"),
        total=1000, changed=80, unknown=5, skipped=3,
        actions_before=(("accept", 900), ("reject", 90), ("tempfail", 10)),
        actions_after=(("accept", 845), ("quarantine", 25), ("reject", 115), ("tempfail", 10),
                       (UNKNOWN, 5)),
        transitions=(a_rej, a_quar, r_acc, r_unk),
        domains=(
            DomainChanges("example.com", 600, 50, (Transition("accept", "reject", 30),
                                                   Transition("accept", "quarantine", 15),
                                                   Transition("reject", "accept", 5))),
            DomainChanges("example.net", 300, 20, (Transition("accept", "reject", 10),
                                                   Transition("accept", "quarantine", 5),
                                                   Transition("reject", "accept", 5))),
            DomainChanges(HOSTILE, 100, 10, (Transition("accept", "quarantine", 5),
                                             Transition("reject", UNKNOWN, 5))),
        ),
        examples=examples,
        days=tuple(days),
    )


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("preview") / "page.html"
    path.write_text(render_html(summary()), encoding="utf-8")
    return path


@pytest.fixture
def profile() -> Iterator[Path]:
    # A fresh profile each run: nothing cached from an earlier page, no first-run state.
    d = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run_chromium(binary: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    command = [str(binary), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={profile}",
               # Screenshots in plain sRGB at one pixel per CSS pixel, so fill colours come out
               # as the exact values the page asked for.
               "--force-color-profile=srgb", "--force-device-scale-factor=1", "--hide-scrollbars",
               *args]
    try:
        done = subprocess.run(command, capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"chromium {' '.join(args)} did not finish within {TIMEOUT:.0f}s:\n{tail(e.stderr)}")
    assert done.returncode == 0, f"chromium exit {done.returncode}:\n{tail(done.stderr)}"
    return done


def count(tree: lxml.html.HtmlElement, xpath: str) -> int:
    return len(tree.xpath(xpath))


def test_the_dom_chromium_builds_shows_the_summary(chromium: Path, page: Path, profile: Path) -> None:
    s = summary()
    dom = run_chromium(chromium, profile, "--dump-dom", page.as_uri()).stdout.decode()
    tree = lxml.html.fromstring(dom)

    assert tree.findtext(".//title") == "authmilter policy preview, 2027-01-16 to 2027-01-20 UTC"
    for ident, value in (("total-records", 1000), ("total-changed", 80), ("total-unknown", 5),
                         ("total-skipped", 3)):
        (el,) = tree.xpath(f'//*[@id="{ident}"]')
        assert el.get("data-count") == str(value) and el.text_content() == f"{value:,}"
    period = tree.xpath('//*[@id="period"]')[0].text_content()
    assert "2027-01-16 00:00" in period and "2027-01-20 00:00" in period
    assert "policies/default.toml" in period and "draft/strict.toml" in period

    bars = tree.xpath('//*[@id="actions-chart"]//rect[@data-action]')
    shown = {(b.get("data-action"), b.get("data-when")): int(b.get("data-count")) for b in bars}
    before, after = dict(s.actions_before), dict(s.actions_after)
    expected = {(a, w): counts.get(a, 0) for a in set(before) | set(after)
                for w, counts in (("before", before), ("after", after))}
    assert shown == expected and len(bars) == len(expected)
    # The numbers are written on the bars too, not only in attributes.
    labels = [t.text_content() for t in tree.xpath('//*[@id="actions-chart"]//text[@class="bar-value"]')]
    assert sorted(labels) == sorted(f"{n:,}" for n in expected.values())

    lines = tree.xpath('//*[@id="passrate-chart"]//polyline')
    points = {ln.get("data-domain"): len(ln.get("points").split()) for ln in lines}
    assert points == {"example.com": 4, "example.net": 4, HOSTILE: 3}
    legend = [li.text_content() for li in tree.xpath('//*[@id="passrate-legend"]/li')]
    assert legend == ["example.com", "example.net", HOSTILE]  # busiest first

    rows = tree.xpath('//table[@id="transitions"]/tbody/tr')
    assert [[td.text_content() for td in r.xpath("td")][:3] for r in rows] == [
        ["accept", "reject", "40"], ["accept", "quarantine", "25"], ["reject", "accept", "10"],
        ["reject", UNKNOWN, "5"]]
    domains = tree.xpath('//table[@id="domains"]/tbody/tr')
    assert [r.xpath("td")[0].text_content() for r in domains] == ["example.com", "example.net", HOSTILE]
    assert count(tree, '//table[@id="examples"]/tbody/tr') == len(s.examples)
    first = [td.text_content() for td in tree.xpath('//table[@id="examples"]/tbody/tr[1]/td')]
    assert first == ["2027-01-16T01:00:00Z", "192.0.2.10", "example.com", "bounce@example.com",
                     "accept", "default", "reject", "dmarc-fail", "DMARC fail for example.com, p=reject"]

    # The hostile domain is text wherever it appears, and the page holds no script at all.
    assert count(tree, "//script") == 0
    assert HOSTILE in tree.text_content()
    assert count(tree, f'//td[text()="{HOSTILE}"]') >= 2
    assert "alert(1)" not in "".join(tree.xpath("//@*[starts-with(name(), 'on')]"))


def decode_png(data: bytes) -> tuple[int, int, Counter[str]]:
    """Width, height and how many pixels of each "#rrggbb" colour an 8-bit truecolour PNG has.

    Only what Chromium writes (8-bit RGB or RGBA, not interlaced): Pillow is not a dependency.
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    assert len(raw) == height * (stride + 1), "truncated image data"
    colours: Counter[str] = Counter()
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        # The five PNG filters, each undone against the already unfiltered bytes.
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 0:
                break
            if kind == 1:
                pred = a
            elif kind == 2:
                pred = b
            elif kind == 3:
                pred = (a + b) >> 1
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
            else:
                raise AssertionError(f"unknown PNG filter {kind}")
            line[i] = (line[i] + pred) & 0xFF
        colours.update(line[i:i + 3].hex() for i in range(0, stride, bpp))
        prev = line
    return width, height, Counter({f"#{k}": n for k, n in colours.items()})


def test_the_screenshot_shows_the_bars_and_the_lines(chromium: Path, page: Path, profile: Path,
                                                     tmp_path: Path) -> None:
    png = tmp_path / "preview.png"
    run_chromium(chromium, profile, f"--screenshot={png}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                 page.as_uri())
    assert png.exists(), "chromium wrote no screenshot"
    shutil.copyfile(png, SCREENSHOT_COPY)  # for a person to look at
    width, height, colours = decode_png(png.read_bytes())
    assert (width, height) == WINDOW
    total = width * height
    assert colours["#ffffff"] < 0.97 * total, "the page is (nearly) blank"

    # Which colour each domain's line has, as the page says; then that the image has it.
    tree = lxml.html.fromstring(page.read_text(encoding="utf-8"))
    strokes = {ln.get("data-domain"): ln.get("stroke") for ln in tree.xpath("//polyline")}
    assert set(strokes) == {"example.com", "example.net", HOSTILE}
    assert len(set(strokes.values()) | set(BAR_COLOURS.values())) == 5, "colours must be distinct"

    # The bars are large solid areas (the recorded accepts alone are ~270 x 48 px); a legend
    # swatch is 12 x 12, so these thresholds fail when only the legend is drawn.
    for when, colour in BAR_COLOURS.items():
        assert colours[colour] > 10_000, (when, colour, colours[colour])
    # A line 4 px wide across 900 px, with 5 px dots at its points, solid in the middle.
    for domain, colour in strokes.items():
        assert colours[colour] > 1_000, (domain, colour, colours[colour])
