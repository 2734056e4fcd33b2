"""The one-page HTML report of `authmilter policy preview --html FILE`.

The page is a single file that an operator opens from disk or mails to a colleague: inline CSS
and inline SVG, no script and nothing fetched, so it shows the same everywhere and offline.

Every string that came from the data (domains, addresses, rules, reasons) was written by whoever
sent the mail, so all of it goes through `_e` — in element text, in attributes and inside the
SVG alike. The numbers are ours and are formatted, not escaped.

Key elements carry stable ids and data attributes (`data-action`, `data-when`, `data-count`,
`data-domain`) so that tests, and anyone scraping the page, can read what it shows without
parsing the drawing.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from authmilter.reports.preview_model import UNKNOWN, DomainDay, PreviewSummary, Transition

__all__ = ["BAR_COLOURS", "DOMAIN_COLOURS", "MAX_CHART_DOMAINS", "render_html"]

# Solid colours, distinct from each other and from the domain palette, so a reader (and the
# screenshot test, which counts pixels of these exact values) can tell the two series apart.
BAR_COLOURS = {"before": "#2f5d9e", "after": "#e07b1a"}
BAR_LABELS = {"before": "recorded", "after": "under the draft"}

# Tableau 10: distinguishable by most readers, including the common forms of colour blindness.
DOMAIN_COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                  "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#7f7f7f")
MAX_CHART_DOMAINS = len(DOMAIN_COLOURS)  # more lines than colours would not be readable anyway

# Mild to severe, so the bars read left to right as the mail's fate gets worse; actions we do
# not know (a newer or foreign history) follow in name order.
ACTION_ORDER = ("accept", "greylist", "quarantine", "tempfail", "reject", "discard", UNKNOWN)

SVG_LABEL_CHARS = 40  # SVG text does not wrap; the tables below show the full strings

# Defence in depth: should escaping ever be missed, the browser still runs no script and loads
# nothing, because the page itself forbids it.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 24px auto; max-width: 1200px; padding: 0 16px; color: #1d1d1d; background: #fff; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.meta { color: #444; margin: 0.2em 0; }
.totals span { display: inline-block; margin-right: 1.5em; }
.totals b { font-size: 1.1em; }
.empty { padding: 1em; background: #f4f4f4; border: 1px solid #ddd; }
svg { max-width: 100%; height: auto; display: block; }
svg text { font-family: inherit; font-size: 12px; fill: #1d1d1d; }
svg .axis { stroke: #333; stroke-width: 1; }
svg .grid { stroke: #e3e3e3; stroke-width: 1; }
svg .axis-label { font-size: 13px; font-weight: 600; }
ul.legend { list-style: none; padding: 0; margin: 0.5em 0; }
ul.legend li { display: inline-block; margin: 0 1.2em 0.3em 0; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 0.4em;
          vertical-align: -1px; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
/* "anywhere" would let the table squeeze every column to a letter; "break-word" only breaks a
   word longer than its column, and .scroll catches a hostile one too long for the page. */
td, th { overflow-wrap: break-word; }
td.nowrap { white-space: nowrap; }
/* Addresses and reasons are where the long strings are: they give way, the rest stay whole. */
td.text { overflow-wrap: anywhere; min-width: 7em; }
.scroll { overflow-x: auto; }
.none { color: #777; font-style: italic; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _short(text: str, limit: int = SVG_LABEL_CHARS) -> str:
    # Cut before escaping, so an entity is never cut in half.
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _domain_label(domain: str) -> str:
    return domain or "(no From domain)"


def _utc(t: int, fmt: str) -> str:
    return datetime.fromtimestamp(t, UTC).strftime(fmt)


def _action_key(action: str) -> tuple[int, str]:
    return (ACTION_ORDER.index(action) if action in ACTION_ORDER else len(ACTION_ORDER), action)


def _nice_step(top: float, ticks: int = 5) -> int:
    """A step of 1, 2 or 5 times a power of ten giving about `ticks` gridlines up to `top`."""
    raw = max(top / ticks, 1.0)
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * power >= raw:
            return int(m * power)
    return int(10 * power)  # pragma: no cover - the loop always returns


def _num(n: int) -> str:
    return f"{n:,}"


def _actions_chart(summary: PreviewSummary) -> str:
    before, after = dict(summary.actions_before), dict(summary.actions_after)
    actions = sorted(set(before) | set(after), key=_action_key)
    if not actions:
        return '<p class="none">No actions recorded.</p>'
    group_w, bar_w, gap = 130, 48, 6
    left, right, top, bottom = 70, 20, 30, 60
    plot_h = 300
    width = max(left + right + group_w * len(actions), 420)
    height = top + plot_h + bottom
    peak = max([*before.values(), *after.values(), 1])
    step = _nice_step(peak)
    y_max = step * math.ceil(peak / step)

    def y(v: int) -> float:
        return top + plot_h - plot_h * v / y_max

    out = [f'<svg id="actions-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="Actions before and after">']
    for tick in range(0, y_max + 1, step):
        ty = y(tick)
        out.append(f'<line class="grid" x1="{left}" y1="{ty:.1f}" x2="{width - right}" y2="{ty:.1f}"/>')
        out.append(f'<text x="{left - 8}" y="{ty + 4:.1f}" text-anchor="end">{_num(tick)}</text>')
    for i, action in enumerate(actions):
        gx = left + i * group_w + (group_w - 2 * bar_w - gap) / 2
        for j, when in enumerate(("before", "after")):
            count = (before if when == "before" else after).get(action, 0)
            bx, by = gx + j * (bar_w + gap), y(count)
            h = top + plot_h - by
            out.append(f'<rect data-action="{_e(action)}" data-when="{when}" data-count="{count}" '
                       f'x="{bx:.1f}" y="{by:.1f}" width="{bar_w}" height="{h:.1f}" '
                       f'fill="{BAR_COLOURS[when]}"><title>{_e(action)} {BAR_LABELS[when]}: '
                       f'{_num(count)}</title></rect>')
            out.append(f'<text class="bar-value" x="{bx + bar_w / 2:.1f}" y="{by - 5:.1f}" '
                       f'text-anchor="middle">{_num(count)}</text>')
        out.append(f'<text x="{left + i * group_w + group_w / 2:.1f}" y="{top + plot_h + 18}" '
                   f'text-anchor="middle">{_e(_short(action, 18))}</text>')
    out.append(f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{width - right}" '
               f'y2="{top + plot_h}"/>')
    out.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}"/>')
    out.append(f'<text class="axis-label" x="{left + (width - left - right) / 2:.1f}" '
               f'y="{height - 12}" text-anchor="middle">action</text>')
    out.append(f'<text class="axis-label" x="16" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 16 {top + plot_h / 2:.1f})">messages</text>')
    out.append("</svg>")
    legend = "".join(f'<li data-when="{when}"><span class="swatch" style="background:{colour}">'
                     f'</span>{BAR_LABELS[when]}</li>' for when, colour in BAR_COLOURS.items())
    return "\n".join(out) + f'\n<ul class="legend" id="actions-legend">{legend}</ul>'


def _chart_domains(days: Iterable[DomainDay]) -> list[str]:
    """The busiest domains of `days`, by messages DMARC evaluated, at most MAX_CHART_DOMAINS."""
    volume: Counter[str] = Counter()
    for d in days:
        volume[d.domain] += d.total
    return [d for d, _ in sorted(volume.items(), key=lambda item: (-item[1], item[0]))][:MAX_CHART_DOMAINS]


def _passrate_chart(days: Sequence[DomainDay]) -> str:
    domains = _chart_domains(days)
    rows = [d for d in days if d.domain in domains and d.total > 0]
    if not rows:
        return '<p class="none" id="passrate-empty">No DMARC results were recorded in this period.</p>'
    dates = sorted({d.day for d in rows})
    left, right, top, bottom = 60, 50, 20, 60  # room for half a date label each side
    plot_w, plot_h = 880, 300
    width, height = left + plot_w + right, top + plot_h + bottom

    def x(day: str) -> float:
        if len(dates) == 1:
            return left + plot_w / 2
        return left + plot_w * dates.index(day) / (len(dates) - 1)

    def y(rate: float) -> float:
        return top + plot_h - plot_h * rate / 100

    out = [f'<svg id="passrate-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="DMARC pass rate per domain per day">']
    for tick in (0, 25, 50, 75, 100):
        ty = y(tick)
        out.append(f'<line class="grid" x1="{left}" y1="{ty:.1f}" x2="{left + plot_w}" y2="{ty:.1f}"/>')
        out.append(f'<text x="{left - 8}" y="{ty + 4:.1f}" text-anchor="end">{tick}%</text>')
    # Label about ten days at most: a label per day would overlap over a month.
    every = max(1, math.ceil(len(dates) / 10))
    for i, day in enumerate(dates):
        tx = x(day)
        out.append(f'<line class="axis" x1="{tx:.1f}" y1="{top + plot_h}" x2="{tx:.1f}" '
                   f'y2="{top + plot_h + 5}"/>')
        if i % every == 0:
            out.append(f'<text x="{tx:.1f}" y="{top + plot_h + 20}" text-anchor="middle">'
                       f'{_e(day)}</text>')
    out.append(f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" '
               f'y2="{top + plot_h}"/>')
    out.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}"/>')
    out.append(f'<text class="axis-label" x="{left + plot_w / 2:.1f}" y="{height - 12}" '
               f'text-anchor="middle">day (UTC)</text>')
    out.append(f'<text class="axis-label" x="16" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 16 {top + plot_h / 2:.1f})">DMARC pass %</text>')
    legend = []
    for domain, colour in zip(domains, DOMAIN_COLOURS, strict=False):
        points = sorted((d for d in rows if d.domain == domain), key=lambda d: d.day)
        coords = [(x(d.day), y(100 * d.dmarc_pass / d.total)) for d in points]
        # A domain may be absent on some days; the line joins the days it has rather than
        # inventing a 0% for days without mail.
        out.append(f'<polyline data-domain="{_e(domain)}" fill="none" stroke="{colour}" '
                   f'stroke-width="4" stroke-linejoin="round" stroke-linecap="round" '
                   f'points="{" ".join(f"{px:.1f},{py:.1f}" for px, py in coords)}"/>')
        for d, (px, py) in zip(points, coords, strict=True):
            rate = 100 * d.dmarc_pass / d.total
            out.append(f'<circle data-domain="{_e(domain)}" data-day="{_e(d.day)}" '
                       f'data-pass="{d.dmarc_pass}" data-total="{d.total}" cx="{px:.1f}" '
                       f'cy="{py:.1f}" r="5" fill="{colour}"><title>{_e(_domain_label(domain))} '
                       f'{_e(d.day)}: {rate:.1f}% ({_num(d.dmarc_pass)} of {_num(d.total)} pass; '
                       f'DKIM aligned {_num(d.dkim_aligned)}, SPF aligned {_num(d.spf_aligned)})'
                       f'</title></circle>')
        legend.append(f'<li data-domain="{_e(domain)}"><span class="swatch" '
                      f'style="background:{colour}"></span>{_e(_domain_label(domain))}</li>')
    out.append("</svg>")
    return "\n".join(out) + f'\n<ul class="legend" id="passrate-legend">{"".join(legend)}</ul>'


def _moves(transitions: Iterable[Transition]) -> str:
    return ", ".join(f"{_e(t.old)} \u2192 {_e(t.new)}: {_num(t.count)}" for t in transitions)


def _transitions_table(summary: PreviewSummary) -> str:
    if not summary.transitions:
        return '<p class="none" id="transitions">The draft decides every message as before.</p>'
    rows = "".join(f'<tr data-old="{_e(t.old)}" data-new="{_e(t.new)}" data-count="{t.count}">'
                   f'<td>{_e(t.old)}</td><td>{_e(t.new)}</td><td class="num">{_num(t.count)}</td>'
                   f'<td class="num">{100 * t.count / summary.total:.1f}%</td></tr>'
                   for t in summary.transitions)
    return ('<table id="transitions"><thead><tr><th>recorded</th><th>under the draft</th>'
            f'<th>messages</th><th>of all</th></tr></thead><tbody>{rows}</tbody></table>')


def _domains_table(summary: PreviewSummary) -> str:
    if not summary.domains:
        return '<p class="none" id="domains">No domain has mail the draft decides differently.</p>'
    rows = "".join(f'<tr data-domain="{_e(d.domain)}" data-total="{d.total}" data-changed="{d.changed}">'
                   f'<td class="text">{_e(_domain_label(d.domain))}</td><td class="num">{_num(d.total)}</td>'
                   f'<td class="num">{_num(d.changed)}</td><td>{_moves(d.transitions)}</td></tr>'
                   for d in summary.domains)
    return ('<table id="domains"><thead><tr><th>author domain</th><th>messages</th><th>changed</th>'
            f'<th>changes</th></tr></thead><tbody>{rows}</tbody></table>')


def _examples_table(summary: PreviewSummary) -> str:
    if not summary.examples:
        return '<p class="none" id="examples">No examples.</p>'

    def cell(text: str, cls: str = "") -> str:
        if not text:
            return '<td class="none">-</td>'
        return f'<td class="{cls}">{_e(text)}</td>' if cls else f"<td>{_e(text)}</td>"

    rows = "".join(f'<tr data-old="{_e(x.old_action)}" data-new="{_e(x.new_action)}">'
                   f'<td class="nowrap">{_utc(x.time, "%Y-%m-%dT%H:%M:%SZ")}</td>{cell(x.client_ip)}'
                   f'{cell(x.header_from, "text")}{cell(x.envelope_from, "text")}{cell(x.old_action)}'
                   f'{cell(x.old_rule)}{cell(x.new_action)}{cell(x.new_rule)}{cell(x.reason, "text")}</tr>'
                   for x in summary.examples)
    return ('<table id="examples"><thead><tr><th>time (UTC)</th><th>client IP</th><th>header From</th>'
            '<th>envelope From</th><th>recorded action</th><th>recorded rule</th>'
            '<th>draft action</th><th>draft rule</th><th>draft reason</th></tr></thead>'
            f'<tbody>{rows}</tbody></table>')


def render_html(summary: PreviewSummary) -> str:
    """The summary as one self-contained HTML page."""
    s = summary
    since, until = _utc(s.since, "%Y-%m-%d %H:%M"), _utc(s.until, "%Y-%m-%d %H:%M")
    title = f"authmilter policy preview, {_utc(s.since, '%Y-%m-%d')} to {_utc(s.until, '%Y-%m-%d')} UTC"
    files = ", ".join(f"<code>{_e(f)}</code>" for f in s.policy_files) or '<span class="none">none</span>'
    share = f" ({100 * s.changed / s.total:.1f}%)" if s.total else ""
    totals = (f'<p class="meta totals" id="totals">'
              f'<span>records: <b id="total-records" data-count="{s.total}">{_num(s.total)}</b></span>'
              f'<span>changed: <b id="total-changed" data-count="{s.changed}">{_num(s.changed)}</b>'
              f'{share}</span>'
              f'<span>unknown: <b id="total-unknown" data-count="{s.unknown}">{_num(s.unknown)}</b></span>'
              f'<span>skipped: <b id="total-skipped" data-count="{s.skipped}">{_num(s.skipped)}</b>'
              f'</span></p>')
    head = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta" id="period">Recorded traffic from <time>{since}</time> to '
        f'<time>{until}</time> UTC, decided again under the draft policy {files}.</p>',
        totals,
    ]
    if not s.total:
        body = ['<p class="empty" id="nothing">Nothing to preview: no readable records in this '
                'period.</p>']
    else:
        unknown_note = ("" if not s.unknown else
                        f'<p class="meta">{_num(s.unknown)} messages were refused before DATA and the '
                        'draft would let them go on to checks that never ran: their fate is '
                        '<b>unknown</b>.</p>')
        body = [
            unknown_note,
            '<section id="actions"><h2>Actions before and after</h2>',
            _actions_chart(s),
            "</section>",
            '<section id="passrate"><h2>DMARC pass rate per domain per day</h2>',
            _passrate_chart(s.days),
            "</section>",
            '<section><h2>Changes</h2>',
            '<div class="scroll">', _transitions_table(s), "</div>",
            "</section>",
            '<section><h2>Changes by author domain</h2>',
            '<div class="scroll">', _domains_table(s), "</div>",
            "</section>",
            '<section><h2>Examples</h2>',
            '<div class="scroll">', _examples_table(s), "</div>",
            "</section>",
        ]
    return "\n".join([*head, *body, "</body>", "</html>", ""])
