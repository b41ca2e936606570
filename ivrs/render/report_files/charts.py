"""A report's chart (``core.report_charts.Chart``) drawn with reportlab.graphics.

One drawing per panel: its title, a line plot with one line per series over a
date axis, a legend naming the series, and the panel's note under it. The PDF
writer places the drawings on its pages (``ivrs.render.report_files.pdf_file``).
"""

from __future__ import annotations

import math
from datetime import date

from reportlab.graphics.charts.legends import Legend
from reportlab.graphics.charts.lineplots import LinePlot
from reportlab.graphics.shapes import Drawing, Group, String
from reportlab.graphics.widgets.markers import makeMarker
from reportlab.lib import colors
from reportlab.pdfbase.pdfmetrics import stringWidth

from core.report_charts import Chart, Panel, Series

FONT, BOLD = "Helvetica", "Helvetica-Bold"
PALETTE = (colors.HexColor("#1f77b4"), colors.HexColor("#ff7f0e"), colors.HexColor("#2ca02c"),
           colors.HexColor("#d62728"), colors.HexColor("#9467bd"), colors.HexColor("#8c564b"),
           colors.HexColor("#e377c2"), colors.HexColor("#7f7f7f"))
PANEL_HEIGHT = 200
TICKS = 5  # date labels along the x axis, at most
LEGEND_ITEM = 95  # width given to one legend entry


def panel_drawings(chart: Chart, width: float) -> list[Drawing]:
    """Each panel of the chart as a drawing ``width`` wide and PANEL_HEIGHT high."""
    return [panel_drawing(panel, chart.y_label, width) for panel in chart.panels]


def panel_drawing(panel: Panel, y_label: str, width: float) -> Drawing:
    drawing = Drawing(width, PANEL_HEIGHT)
    drawing.add(String(0, PANEL_HEIGHT - 10, _fit(panel.title, width, BOLD, 9),
                       fontName=BOLD, fontSize=9))
    # (colour, series) of the series with points: colours follow the legend's order
    series = [(PALETTE[index % len(PALETTE)], s) for index, s in enumerate(panel.series)
              if s.points]
    note_height = 12 if panel.note else 0
    per_row = max(1, int(width // LEGEND_ITEM))
    legend_rows = math.ceil(len(panel.series) / per_row)
    bottom = note_height + legend_rows * 10 + 24  # room for the note, legend and date labels
    top = PANEL_HEIGHT - 18
    if series:
        drawing.add(_plot(series, 40, bottom, width - 52, top - bottom))
    else:
        drawing.add(String(40, (top + bottom) / 2, "No data", fontName=FONT, fontSize=8,
                           fillColor=colors.grey))
    drawing.add(_y_title(y_label, 8, (top + bottom) / 2))
    if panel.series:
        drawing.add(_legend(panel, per_row, note_height + legend_rows * 10))
    if panel.note:
        drawing.add(String(0, 2, _fit(panel.note, width, FONT, 7.5), fontName=FONT,
                           fontSize=7.5))
    return drawing


def _plot(series: list[tuple[colors.Color, Series]], x: float, y: float, width: float,
          height: float) -> LinePlot:
    plot = LinePlot()
    plot.x, plot.y, plot.width, plot.height = x, y, width, height
    plot.data = [[(day.toordinal(), value) for day, value in s.points] for _, s in series]
    days = [day.toordinal() for _, s in series for day, _ in s.points]
    values = [value for _, s in series for _, value in s.points]
    first, last = min(days), max(days)
    if first == last:
        first, last = first - 1, last + 1
    plot.xValueAxis.valueMin, plot.xValueAxis.valueMax = first, last
    plot.xValueAxis.valueSteps = _day_ticks(first, last)
    plot.xValueAxis.labelTextFormat = lambda value: date.fromordinal(int(round(value))).isoformat()
    plot.xValueAxis.labels.fontName, plot.xValueAxis.labels.fontSize = FONT, 6.5
    plot.yValueAxis.valueMin = min(0, min(values))
    plot.yValueAxis.valueMax = max(1, max(values))
    plot.yValueAxis.rangeRound = "ceiling"
    plot.yValueAxis.labels.fontName, plot.yValueAxis.labels.fontSize = FONT, 6.5
    plot.yValueAxis.visibleGrid = True
    plot.yValueAxis.gridStrokeColor = colors.HexColor("#e0e0e0")
    for index, (color, _) in enumerate(series):
        plot.lines[index].strokeColor = color
        plot.lines[index].strokeWidth = 1.2
        plot.lines[index].symbol = makeMarker("FilledCircle", size=2.5, fillColor=color,
                                              strokeColor=color)
    return plot


def _legend(panel: Panel, per_row: int, top: float) -> Legend:
    legend = Legend()
    legend.x, legend.y = 40, top
    legend.fontName, legend.fontSize = FONT, 7
    legend.dx, legend.dy, legend.deltax, legend.deltay = 8, 6, LEGEND_ITEM, 10
    legend.columnMaximum = math.ceil(len(panel.series) / per_row)
    legend.alignment = "right"
    legend.colorNamePairs = [(PALETTE[index % len(PALETTE)], s.label)
                             for index, s in enumerate(panel.series)]
    return legend


def _y_title(label: str, x: float, y: float) -> Group:
    title = Group(String(0, 0, label, fontName=FONT, fontSize=7, textAnchor="middle"))
    title.translate(x, y)
    title.rotate(90)
    return title


def _day_ticks(first: int, last: int) -> list[int]:
    """At most TICKS whole days from first to last, evenly spread."""
    step = max(1, math.ceil((last - first) / (TICKS - 1)))
    return list(range(first, last + 1, step))


def _fit(text: str, width: float, font: str, size: float) -> str:
    if stringWidth(text, font, size) <= width:
        return text
    while text and stringWidth(text + "…", font, size) > width:
        text = text[:-1]
    return text + "…"
