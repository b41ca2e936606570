"""The dashboard's SVG charts (ivrs.render.charts): well-formed, accessible,
escaped, to scale, deterministic, and a valid picture when there is no data."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import date, timedelta

from ivrs.render.charts import Bar, bar_chart, step_chart

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = '<script>alert("x")</script> & Co'


def parsed(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg" and root.get("role") == "img"
    title, desc = root.find(f"{SVG}title"), root.find(f"{SVG}desc")
    assert title is not None and desc is not None
    assert root.get("aria-labelledby") == f"{title.get('id')} {desc.get('id')}"
    return root


def bars_of(root: ET.Element) -> list[ET.Element]:
    return [g.find(f"{SVG}rect") for g in root.iter(f"{SVG}g")
            if "bar" in g.get("class", "").split()]


def test_bar_lengths_are_proportional_to_the_values():
    root = parsed(bar_chart([Bar("101", 10), Bar("102", 5), Bar("103", 0)],
                            chart_id="c", title="Enrollment", description="per site"))
    widths = [float(rect.get("width")) for rect in bars_of(root)]
    assert widths[0] > 0 and widths[1] == widths[0] / 2 and widths[2] == 0


def test_targets_and_the_threshold_are_on_the_same_scale():
    root = parsed(bar_chart([Bar("101", 5, target=10), Bar("102", 20, flagged=True)],
                            chart_id="c", title="t", description="d", threshold=10,
                            threshold_label="low under"))
    (first, second) = bars_of(root)
    left = float(first.get("x"))
    tick = next(p for p in root.iter(f"{SVG}path") if p.get("class") == "target")
    tick_x = float(re.match(r"M([\d.]+)", tick.get("d")).group(1))
    line = next(e for e in root.iter(f"{SVG}line") if e.get("class") == "threshold")
    assert tick_x - left == float(line.get("x1")) - left == float(first.get("width")) * 2
    assert float(second.get("width")) == float(first.get("width")) * 4
    # flagged: hatched and marked, not colour alone
    assert second.get("fill").startswith("url(#") and "!" in "".join(root.itertext())


def test_hostile_labels_are_escaped():
    svg = bar_chart([Bar(HOSTILE, 3, target=4)], chart_id='x" onload="evil', title=HOSTILE,
                    description=HOSTILE, target_label=HOSTILE)
    root = parsed(svg)
    assert "<script>" not in svg and not list(root.iter("script"))
    assert HOSTILE in "".join(root.itertext())
    assert all(not name.startswith("on") for e in root.iter() for name in e.attrib)
    step = step_chart([(date(2026, 1, 5), 1)], chart_id="s", title=HOSTILE,
                      description=HOSTILE, cap=3, cap_label=HOSTILE,
                      day=lambda on: HOSTILE)
    assert "<script>" not in step and HOSTILE in "".join(parsed(step).itertext())


def test_numbers_and_dates_go_through_the_callers_formatters():
    svg = bar_chart([Bar("101", 1234)], chart_id="c", title="t", description="d",
                    number=lambda n: f"{n:,.0f}".replace(",", "\u202f"))
    assert "1\u202f234" in svg
    step = step_chart([(date(2026, 1, 5), 1), (date(2026, 1, 12), 3)], chart_id="s",
                      title="t", description="d", day=lambda on: on.strftime("%d/%m"))
    assert "05/01" in step and "12/01" in step


def test_the_step_chart_rises_with_the_total_and_shows_the_cap():
    start = date(2026, 1, 5)
    points = [(start + timedelta(weeks=n), float(total)) for n, total in enumerate([1, 4, 4, 9])]
    root = parsed(step_chart(points, chart_id="s", title="t", description="d", cap=12,
                             cap_label="cap"))
    dots = [(float(c.get("cx")), float(c.get("cy"))) for c in root.iter(f"{SVG}circle")]
    assert [x for x, _ in dots] == sorted(x for x, _ in dots)
    ys = [y for _, y in dots]  # SVG's y grows downwards
    assert ys[0] > ys[1] == ys[2] > ys[3]
    cap = next(e for e in root.iter(f"{SVG}line") if e.get("class") == "cap")
    assert float(cap.get("y1")) < ys[3]


def test_no_data_is_a_valid_chart_that_says_so():
    for svg in (bar_chart([], chart_id="c", title="t", description="d", no_data="Nothing yet"),
                step_chart([], chart_id="s", title="t", description="d",
                           no_data="Nothing yet")):
        assert "Nothing yet" in "".join(parsed(svg).itertext())
    zero = parsed(bar_chart([Bar("101", 0)], chart_id="c", title="t", description="d"))
    assert [float(r.get("width")) for r in bars_of(zero)] == [0]


def test_the_output_is_deterministic():
    bars = [Bar("101", 3, target=5), Bar("102", 1, flagged=True)]
    make = lambda: bar_chart(bars, chart_id="c", title="t", description="d", threshold=2)
    assert make() == make()
