"""PDF: the report on A4 landscape pages, drawn with reportlab's canvas as rows arrive.

Every page carries the report's title, its study, when and by whom it was
generated, whether it is blinded, and "Page N of M"; the first page adds the
filters and notes, then the chart if the report has one. The table follows,
its column header repeated on every page. Column widths are fitted to the page
from the header and the first ``SAMPLE`` rows; a cell too long for its column
is wrapped (at most ``MAX_LINES`` lines) and ends with an ellipsis beyond that.

Memory: rows are drawn straight onto the canvas as they arrive, never kept as
flowables (a platypus table holds every row's cells, styles and layout until
it is split into pages). What remains is reportlab's document, which keeps each
finished page's content stream (its drawing operators, as text) until
``save()`` compresses them into the file: memory grows with the pages at about
0.7 KB per row of the ``subjects`` report (7 MB for 10,000 rows, measured in
tests/test_report_formats.py), not with row objects. "of M" is the
deferred-total technique: each page draws a reference to one form, defined once
the last page is known (nothing per page, unlike keeping a copy of every
page's state to number them at the end).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import chain, islice
from typing import IO

from reportlab.graphics import renderPDF
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, landscape
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas

from core.output_text import for_medium
from core.report_charts import Chart
from ivrs.render.report_files.charts import PANEL_HEIGHT, panel_drawings

PAGE_WIDTH, PAGE_HEIGHT = landscape(A4)
MARGIN = 32
FONT, BOLD = "Helvetica", "Helvetica-Bold"
SIZE, LEADING = 7.5, 9  # table text
PAD = 3  # inside a cell, each side
MAX_LINES = 3  # per cell; then an ellipsis
SAMPLE = 200  # rows that fit the column widths
MIN_COLUMN = 28  # points
EXTRA_LINES = 24  # filters and notes on the first page, at most
FOOTER_Y = MARGIN - 14
TOTAL_PAGES_FORM = "total_pages"
ELLIPSIS = "…"
HEADER_FILL, STRIPE_FILL = colors.HexColor("#d9dee7"), colors.HexColor("#f3f5f8")
UNBLINDED_COLOR = colors.HexColor("#b00020")
# where a long value may break: after a space or separator, before a timestamp's "T"
BREAKS = re.compile(r"(?<=[\s_/,;])|(?<=\d)(?=T\d)|(?<=-)(?=[A-Za-z])")


def write_pdf(stream: IO[bytes], header, columns: list[str], rows: Iterable[tuple],
              chart: Chart | None = None) -> int:
    """Write the report to a binary stream; returns the number of rows."""
    rows = iter(rows)
    sample = list(islice(rows, SAMPLE))
    pages = Pages(stream, header)
    if chart is not None and chart.panels:
        pages.draw_chart(chart)
    table = TableDrawer(pages, columns, column_widths(columns, sample),
                        numeric_columns(len(columns), sample))
    count = 0
    for row in chain(sample, rows):
        table.draw_row(row)
        count += 1
    if count == 0:
        table.draw_nothing()
    pages.finish()
    return count


class Pages:
    """The canvas and its pages: the header band on each, the first page's extra
    lines, the footer, and the space left between them."""

    def __init__(self, stream: IO[bytes], header) -> None:
        self.header = header
        self.canvas = Canvas(stream, pagesize=(PAGE_WIDTH, PAGE_HEIGHT), pageCompression=1)
        self.canvas.setTitle(f"{header.title}: {header.study}")
        self.canvas.setAuthor(header.generated_by)
        self.canvas.setSubject("Blinded" if header.blinded else "UNBLINDED")
        self.number = 0
        self.y = 0.0  # the top of the free space on the current page
        self.new_page()

    @property
    def width(self) -> float:
        return PAGE_WIDTH - 2 * MARGIN

    def room(self) -> float:
        return self.y - (MARGIN + 4)

    def new_page(self) -> None:
        if self.number:
            self.canvas.showPage()
        self.number += 1
        canvas, header = self.canvas, self.header
        study, generated, blinding, *extra = header.lines()
        y = PAGE_HEIGHT - MARGIN - 12
        canvas.setFont(BOLD, 14)
        canvas.drawString(MARGIN, y, fit(header.title, self.width, BOLD, 14))
        canvas.setFont(FONT, 8.5)
        for line in (study, generated):
            y -= 12
            canvas.drawString(MARGIN, y, fit(line, self.width, FONT, 8.5))
        y -= 12
        canvas.setFont(BOLD, 8.5)
        canvas.setFillColor(colors.black if header.blinded else UNBLINDED_COLOR)
        canvas.drawString(MARGIN, y, blinding)
        canvas.setFillColor(colors.black)
        if self.number == 1:
            canvas.setFont(FONT, 8.5)
            parts = [part for line in extra for part in wrap(line, self.width, FONT, 8.5, 20)]
            if len(parts) > EXTRA_LINES:  # the header must leave room for the table
                parts = parts[:EXTRA_LINES - 1] + ["… (the Excel file's About sheet has all)"]
            for part in parts:
                y -= 11
                canvas.drawString(MARGIN, y, part)
        y -= 6
        canvas.setStrokeColor(colors.grey)
        canvas.setLineWidth(0.5)
        canvas.line(MARGIN, y, PAGE_WIDTH - MARGIN, y)
        self._footer()
        self.y = y - 8

    def _footer(self) -> None:
        canvas = self.canvas
        canvas.setFont(FONT, 7.5)
        canvas.drawString(MARGIN, FOOTER_Y, fit(f"ivrs report {self.header.name}",
                                                self.width / 2, FONT, 7.5))
        label = f"Page {self.number} of "
        x = PAGE_WIDTH - MARGIN - 70
        canvas.drawString(x, FOOTER_Y, label)
        canvas.saveState()
        canvas.translate(x + stringWidth(label, FONT, 7.5), FOOTER_Y)
        canvas.doForm(TOTAL_PAGES_FORM)  # defined by finish(), when M is known
        canvas.restoreState()

    def draw_chart(self, chart: Chart) -> None:
        """The chart's title, then its panels two abreast, before the table."""
        canvas = self.canvas
        canvas.setFont(BOLD, 11)
        canvas.drawString(MARGIN, self.y - 11, fit(chart.title, self.width, BOLD, 11))
        self.y -= 18
        gap = 16
        width = (self.width - gap) / 2
        for index, drawing in enumerate(panel_drawings(chart, width)):
            column = index % 2
            if column == 0 and self.room() < PANEL_HEIGHT:
                self.new_page()
            renderPDF.draw(drawing, canvas, MARGIN + column * (width + gap),
                           self.y - PANEL_HEIGHT)
            if column == 1 or index == len(chart.panels) - 1:
                self.y -= PANEL_HEIGHT + 12

    def finish(self) -> None:
        canvas = self.canvas
        canvas.showPage()
        canvas.beginForm(TOTAL_PAGES_FORM)
        canvas.setFont(FONT, 7.5)
        canvas.drawString(0, 0, str(self.number))
        canvas.endForm()
        canvas.save()


class TableDrawer:
    """The table, row by row: a new page (with the column header again) whenever
    the next row does not fit."""

    def __init__(self, pages: Pages, columns: list[str], widths: list[float],
                 numeric: list[bool]) -> None:
        self.pages, self.columns, self.widths, self.numeric = pages, columns, widths, numeric
        self.header_lines = [wrap(name, width - 2 * PAD, BOLD, SIZE)
                             for name, width in zip(columns, widths)]
        self.header_height = max((len(lines) for lines in self.header_lines), default=1) \
            * LEADING + 2 * PAD
        self.striped = False
        self.header_page = 0  # the page whose column header is drawn

    def draw_row(self, row: tuple) -> None:
        cells = [("" if value is None else for_medium(str(value), "table"), _is_number(value))
                 for value in row[:len(self.widths)]]
        lines = [wrap(text, width - 2 * PAD, FONT, SIZE) for (text, _), width
                 in zip(cells, self.widths)]
        height = max((len(cell) for cell in lines), default=1) * LEADING + 2 * PAD
        self._make_room(height)
        canvas, top = self.pages.canvas, self.pages.y
        if self.striped:
            canvas.setFillColor(STRIPE_FILL)
            canvas.rect(MARGIN, top - height, sum(self.widths), height, stroke=0, fill=1)
            canvas.setFillColor(colors.black)
        self.striped = not self.striped
        self._draw_cells(top, lines, [numeric for _, numeric in cells], FONT)
        self.pages.y = top - height

    def draw_nothing(self) -> None:
        self._make_room(LEADING + 2 * PAD)
        self.pages.canvas.setFont(FONT, SIZE)
        self.pages.canvas.drawString(MARGIN + PAD, self.pages.y - PAD - SIZE, "No rows.")
        self.pages.y -= LEADING + 2 * PAD

    def _make_room(self, height: float) -> None:
        pages = self.pages
        if self.header_page == pages.number and pages.room() < height:
            pages.new_page()
        if self.header_page != pages.number:
            self._draw_header()

    def _draw_header(self) -> None:
        pages, canvas = self.pages, self.pages.canvas
        if pages.room() < self.header_height + 2 * LEADING:
            pages.new_page()
        top = pages.y
        canvas.setFillColor(HEADER_FILL)
        canvas.rect(MARGIN, top - self.header_height, sum(self.widths), self.header_height,
                    stroke=0, fill=1)
        canvas.setFillColor(colors.black)
        self._draw_cells(top, self.header_lines, self.numeric, BOLD)  # aligned as the values
        pages.y = top - self.header_height
        self.header_page = pages.number
        self.striped = False

    def _draw_cells(self, top: float, cells: list[list[str]], right: list[bool],
                    font: str) -> None:
        """A row's cells, each its lines from the top of the row; one text object
        for the row (a drawString per cell would cost an object and operators each)."""
        text = self.pages.canvas.beginText()
        text.setFont(font, SIZE, LEADING)
        x = MARGIN
        for lines, width, numeric in zip(cells, self.widths, right):
            y = top - PAD - SIZE
            for line in lines:
                if line:
                    shift = width - PAD - stringWidth(line, font, SIZE) if numeric else PAD
                    text.setTextOrigin(x + shift, y)
                    text.textLine(line)
                y -= LEADING
            x += width
        self.pages.canvas.drawText(text)


def numeric_columns(count: int, sample: list[tuple]) -> list[bool]:
    """Columns whose sampled values are all numbers: their header aligns right too."""
    numbers = [False] * count
    for index in range(count):
        values = [row[index] for row in sample if len(row) > index and row[index] not in ("", None)]
        numbers[index] = bool(values) and all(_is_number(value) for value in values)
    return numbers


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def column_widths(columns: list[str], sample: list[tuple],
                  available: float = PAGE_WIDTH - 2 * MARGIN) -> list[float]:
    """Widths that fit the page, from the header and the sampled values.

    Each column would like its values on one line and its header unbroken; the
    header may wrap at "_" before any value has to. When even that does not fit,
    the widest columns share what the narrow ones leave (one cap for all of them,
    found by bisection), but none gets narrower than its longest unbreakable word
    (a date, a name) while the page has room for those."""
    sizes = [_ColumnSize(name) for name in columns]
    for row in sample:
        for size, value in zip(sizes, row):
            size.add("" if value is None else for_medium(str(value), "table"))
    natural = [size.natural for size in sizes]
    desired = [size.desired for size in sizes]
    floor = [size.floor for size in sizes]
    if sum(natural) <= available:
        return natural
    if sum(desired) <= available:  # the headers wrap, and share what room is left
        share = (available - sum(desired)) / (sum(natural) - sum(desired))
        return [want + (full - want) * share for want, full in zip(desired, natural)]
    if sum(floor) > available:
        return [width * available / sum(floor) for width in floor]
    low, high = 0.0, max(desired)
    for _ in range(40):
        cap = (low + high) / 2
        if sum(max(least, min(want, cap)) for least, want in zip(floor, desired)) > available:
            high = cap
        else:
            low = cap
    return [max(least, min(want, low)) for least, want in zip(floor, desired)]


class _ColumnSize:
    """What one column would like: ``natural`` (header and values on one line),
    ``desired`` (values on one line, the header wrapped) and ``floor`` (no word
    broken), in points with the cell's padding."""

    LONGEST_WORD = 110  # a longer word is broken anyway: it must not starve the others

    def __init__(self, name: str) -> None:
        self.header = stringWidth(name, BOLD, SIZE)
        self.header_word = _widest_word(name, BOLD)
        self.value = self.value_word = 0.0

    def add(self, text: str) -> None:
        width = stringWidth(text, FONT, SIZE)
        if width > self.value:
            self.value = width
        if width > self.value_word:  # only then can a word of it be wider
            self.value_word = max(self.value_word, _widest_word(text, FONT))

    @property
    def natural(self) -> float:
        return max(MIN_COLUMN, max(self.header, self.value) + 2 * PAD + 1)

    @property
    def desired(self) -> float:
        return max(MIN_COLUMN, max(self.header_word, self.value) + 2 * PAD + 1)

    @property
    def floor(self) -> float:
        word = min(max(self.header_word, self.value_word), self.LONGEST_WORD)
        return min(self.desired, max(MIN_COLUMN, word + 2 * PAD + 1))


def _widest_word(text: str, font: str) -> float:
    return max((stringWidth(word.strip(), font, SIZE) for word in BREAKS.split(text)),
               default=0.0)


def wrap(text: str, width: float, font: str, size: float,
         max_lines: int = MAX_LINES) -> list[str]:
    """The text in lines that fit ``width``, broken where it reads well when it can,
    at most ``max_lines`` of them, the last ending with an ellipsis if text is left."""
    rest = " ".join(text.split()) if "\n" in text or "\t" in text else text
    if stringWidth(rest, font, size) <= width:
        return [rest]  # most cells
    lines: list[str] = []
    while len(lines) < max_lines - 1 and stringWidth(rest, font, size) > width:
        cut = _fitting_prefix(rest, width, font, size)
        breaks = [match.start() for match in BREAKS.finditer(rest, 1, cut + 2)
                  if match.start() <= cut]
        if breaks:
            cut = breaks[-1]
        lines.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    lines.append(fit(rest, width, font, size))  # the last line: what is left, or its start
    return lines


def fit(text: str, width: float, font: str, size: float) -> str:
    """The text, shortened with an ellipsis if it is wider than ``width``."""
    if stringWidth(text, font, size) <= width:
        return text
    return text[:_fitting_prefix(text, width - stringWidth(ELLIPSIS, font, size),
                                 font, size)].rstrip() + ELLIPSIS


def _fitting_prefix(text: str, width: float, font: str, size: float) -> int:
    """The length of the longest prefix of text that fits width (at least 1, so
    that wrapping always moves on)."""
    low, high = 1, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if stringWidth(text[:middle], font, size) <= width:
            low = middle
        else:
            high = middle - 1
    return low
