"""Charts as inline SVG, rendered on the server: no JavaScript, no library.

Two kinds, enough for the dashboard (core.dashboard): a horizontal bar chart
with an optional target per bar (enrollment against a site's cap) and an
optional threshold line (days of cover against the low-cover line), and a step
chart over time (cumulative enrollment) with an optional cap line.

Accessibility (WCAG 2.1 AA): each chart is ``role="img"`` labelled by its
``<title>`` and ``<desc>``; the page shows a data table next to it (the chart
is a picture of that table, never the only place a number is). Colours have
at least 4.5:1 contrast on white, and meaning is never colour alone: a flagged
bar is also hatched and marked "!", a target is a tick with its own shape, a
threshold or cap is a dashed line with a label.

The caller passes every word already translated and a number (and date)
formatter for its locale (babel's, in the web door), so nothing here knows a
language. All text is escaped. Output is deterministic (the same data gives the
same bytes): coordinates are rounded, ids come from the caller's ``chart_id``,
which must be unique on the page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from html import escape

INK = "#1a1a1a"  # text and lines: 17:1 on white
BAR = "#1f5f99"  # 6.6:1 on white
FLAGGED = "#a33a00"  # 6.1:1 on white, hatched as well
GRID = "#767676"  # 4.5:1: the lightest grey allowed for a mark that carries meaning
FONT = 'font-family="sans-serif" font-size="12"'
WIDTH = 640
ROW = 26  # a bar's row height
LABEL_CHAR = 7  # px per character of a label, for the label column's width

Number = Callable[[float], str]


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    target: float | None = None  # e.g. the site's cap: drawn as a tick
    flagged: bool = False  # e.g. low cover: hatched, marked "!"


def _attr(value: str) -> str:
    return escape(value, quote=True)


def _n(value: float) -> str:
    """A coordinate, rounded so that the output is byte-stable."""
    text = f"{value:.1f}"
    return text.removesuffix(".0")


def _open(chart_id: str, title: str, description: str, height: float) -> list[str]:
    ident = _attr(chart_id)
    return [
        (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{WIDTH}" '
        f'height="{_n(height)}" viewBox="0 0 {WIDTH} {_n(height)}" '
        f'aria-labelledby="{ident}-title {ident}-desc">'),
        f'<title id="{ident}-title">{escape(title)}</title>',
        f'<desc id="{ident}-desc">{escape(description)}</desc>',
    ]


def _no_data(chart_id: str, title: str, description: str, no_data: str) -> str:
    return "\n".join([*_open(chart_id, title, description, 60),
                      (f'<text x="{WIDTH // 2}" y="34" text-anchor="middle" fill="{INK}" '
                      f'{FONT}>{escape(no_data)}</text>'), "</svg>"])


def bar_chart(bars: Sequence[Bar], *, chart_id: str, title: str, description: str,
              number: Number = str, no_data: str = "No data",
              threshold: float | None = None, threshold_label: str = "",
              target_label: str = "") -> str:
    """Horizontal bars, one per ``Bar``, lengths proportional to the values on
    one scale from 0 (which also holds every target and the threshold)."""
    if not bars:
        return _no_data(chart_id, title, description, no_data)
    label_width = min(240, max(60, LABEL_CHAR * max(len(bar.label) for bar in bars)))
    left, right = label_width + 12, WIDTH - 90  # room for the value after a bar
    top = 24 if threshold is not None else 8
    scale_max = max([bar.value for bar in bars]
                    + [bar.target for bar in bars if bar.target is not None]
                    + ([threshold] if threshold is not None else []) + [0])
    scale = (right - left) / scale_max if scale_max > 0 else 0.0
    height = top + ROW * len(bars) + 8
    ident = _attr(chart_id)
    parts = _open(chart_id, title, description, height)
    parts.append(f'<defs><pattern id="{ident}-hatch" width="6" height="6" '
                 f'patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
                 f'<rect width="6" height="6" fill="{FLAGGED}"/>'
                 f'<line x1="0" y1="0" x2="0" y2="6" stroke="#ffffff" stroke-width="2"/>'
                 f"</pattern></defs>")
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{_n(height - 8)}" '
                 f'stroke="{INK}"/>')
    for index, bar in enumerate(bars):
        y = top + ROW * index
        length = max(0.0, bar.value) * scale
        fill = f"url(#{ident}-hatch)" if bar.flagged else BAR
        value_text = number(bar.value) + (" !" if bar.flagged else "")
        parts.append(f'<g class="bar{" flagged" if bar.flagged else ""}">')
        parts.append(f'<text x="{label_width + 6}" y="{_n(y + 17)}" text-anchor="end" '
                     f'fill="{INK}" {FONT}>{escape(bar.label)}</text>')
        parts.append(f'<rect x="{left}" y="{_n(y + 5)}" width="{_n(length)}" height="16" '
                     f'fill="{fill}"><title>{escape(bar.label)}: {escape(value_text)}'
                     f"</title></rect>")
        parts.append(f'<text x="{_n(left + length + 6)}" y="{_n(y + 17)}" fill="{INK}" '
                     f"{FONT}>{escape(value_text)}</text>")
        if bar.target is not None:
            x = left + bar.target * scale
            parts.append(f'<path class="target" d="M{_n(x)} {_n(y + 2)}V{_n(y + 24)}'
                         f'M{_n(x - 4)} {_n(y + 2)}H{_n(x + 4)}" stroke="{INK}" '
                         f'stroke-width="2" fill="none"><title>{escape(target_label)} '
                         f"{escape(number(bar.target))}</title></path>")
        parts.append("</g>")
    if threshold is not None:
        x = left + threshold * scale
        parts.append(f'<line class="threshold" x1="{_n(x)}" y1="{top - 4}" x2="{_n(x)}" '
                     f'y2="{_n(height - 8)}" stroke="{INK}" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{_n(x)}" y="14" text-anchor="middle" fill="{INK}" {FONT}>'
                     f"{escape(threshold_label)} {escape(number(threshold))}</text>")
    parts.append("</svg>")
    return "\n".join(parts)


def step_chart(points: Sequence[tuple[date, float]], *, chart_id: str, title: str,
               description: str, number: Number = str,
               day: Callable[[date], str] = date.isoformat, no_data: str = "No data",
               cap: float | None = None, cap_label: str = "") -> str:
    """A running total over time (points in date order), as steps: the value
    holds until the next point. ``cap`` draws a dashed line with its label."""
    if not points:
        return _no_data(chart_id, title, description, no_data)
    height, left, right, top, bottom = 260, 56, WIDTH - 16, 20, 220
    first, last = points[0][0], points[-1][0]
    span = max(1, (last - first).days)
    y_max = max([value for _, value in points] + ([cap] if cap is not None else []) + [0])
    y_max = y_max or 1

    def x_of(on: date) -> float:
        return left + (on - first).days / span * (right - left)

    def y_of(value: float) -> float:
        return bottom - value / y_max * (bottom - top)

    parts = _open(chart_id, title, description, height)
    parts.append(f'<path class="axes" d="M{left} {top}V{bottom}H{right}" stroke="{INK}" '
                 f'fill="none"/>')
    for value in (0, y_max / 2, y_max):
        parts.append(f'<text x="{left - 6}" y="{_n(y_of(value) + 4)}" text-anchor="end" '
                     f'fill="{INK}" {FONT}>{escape(number(value))}</text>')
    for on, anchor in ((first, "start"), (last, "end")) if first != last else ((first, "start"),):
        parts.append(f'<text x="{_n(x_of(on))}" y="{bottom + 18}" text-anchor="{anchor}" '
                     f'fill="{INK}" {FONT}>{escape(day(on))}</text>')
    path = [f"M{_n(x_of(first))} {_n(y_of(points[0][1]))}"]
    for on, value in points[1:]:
        path.append(f"H{_n(x_of(on))}V{_n(y_of(value))}")
    if first == last:  # one point: a short level line, visible
        path.append(f"H{_n(x_of(first) + 12)}")
    parts.append(f'<path class="line" d="{"".join(path)}" stroke="{BAR}" stroke-width="2.5" '
                 f'fill="none"/>')
    for on, value in points:
        parts.append(f'<circle cx="{_n(x_of(on))}" cy="{_n(y_of(value))}" r="3" fill="{BAR}">'
                     f"<title>{escape(day(on))}: {escape(number(value))}</title></circle>")
    if cap is not None:
        y = y_of(cap)
        parts.append(f'<line class="cap" x1="{left}" y1="{_n(y)}" x2="{right}" y2="{_n(y)}" '
                     f'stroke="{INK}" stroke-dasharray="6 4"/>')
        parts.append(f'<text x="{right}" y="{_n(y - 5)}" text-anchor="end" fill="{INK}" '
                     f"{FONT}>{escape(cap_label)} {escape(number(cap))}</text>")
    parts.append("</svg>")
    return "\n".join(parts)
