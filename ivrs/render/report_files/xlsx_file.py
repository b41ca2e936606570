"""Excel: the report's table in a sheet of its own, the header in an "About" sheet.

openpyxl's write-only mode streams each row to a temporary file as it arrives,
so memory does not grow with the rows. That mode writes a sheet's top (column
widths, frozen pane) when the first row goes out and its tail (the auto-filter)
when the sheet is closed: the widths are fitted from the first ``SAMPLE`` rows,
held back until then, and the filter's range is set once the rows are counted.

Cells are typed the way a reader of the report would sort and filter them: ints
as numbers, ``YYYY-MM-DDTHH:MM:SSZ`` as date-times (UTC, which Excel cannot store:
the About sheet says so), ``YYYY-MM-DD`` as dates; everything else is text, so
identifiers keep their leading zeros and a value starting with "=" stays a
value, never a formula.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, datetime
from itertools import chain, islice
from typing import IO

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ERROR_CODES
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

from core.output_text import for_medium
from core.report_charts import Chart

SAMPLE = 500  # rows that fit the column widths
MIN_WIDTH, MAX_WIDTH = 6, 60  # in characters
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
TIMESTAMP_FORMAT, DAY_FORMAT = "yyyy-mm-dd hh:mm:ss", "yyyy-mm-dd"
SHEET_TITLE_FORBIDDEN = re.compile(r"[\[\]:*?/\\]")
BOLD = Font(bold=True)


def write_xlsx(stream: IO[bytes], header, columns: list[str], rows: Iterable[tuple],
               chart: Chart | None = None) -> int:
    """Write the workbook to a binary stream; returns the number of rows."""
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(sheet_title(header.title or header.name))
    rows = iter(rows)
    sample = list(islice(rows, SAMPLE))
    for index, width in enumerate(column_widths(columns, sample), 1):
        sheet.column_dimensions[get_column_letter(index)].width = width
    sheet.freeze_panes = "A2"  # below the header row
    sheet.append([_bold(sheet, name) for name in columns])
    cells = TypedCells(sheet, len(columns))
    count = 0
    for row in chain(sample, rows):
        sheet.append(cells.row(row))
        count += 1
    last_column = get_column_letter(max(len(columns), 1))
    sheet.auto_filter.ref = f"A1:{last_column}{count + 1}"
    _about(workbook, header)
    workbook.save(stream)
    return count


class TypedCells:
    """A row's values as openpyxl's write-only sheet takes them: numbers and empty
    cells as they are, dates and timestamps as date cells with their number
    format, other text as text cells (forced when openpyxl would guess a formula).

    Each column has its own two styled cells (timestamp, date), reused from row to
    row: the sheet writes a row out as soon as it is appended (openpyxl reuses its
    own unstyled cell the same way), and a fresh styled cell per value costs about
    as much as the rest of the row."""

    def __init__(self, sheet, width: int) -> None:
        self.sheet = sheet
        self.moments = [_formatted(sheet, None, TIMESTAMP_FORMAT) for _ in range(width)]
        self.days = [_formatted(sheet, None, DAY_FORMAT) for _ in range(width)]

    def row(self, values: tuple) -> list:
        return [self.cell(index, value) for index, value in enumerate(values)]

    def cell(self, index: int, value):
        if value is None or value == "":
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        text = str(value)
        moment = _timestamp(text)
        if moment is not None:
            return self._styled(self.moments, index, moment, TIMESTAMP_FORMAT)
        day = _day(text)
        if day is not None:
            return self._styled(self.days, index, day, DAY_FORMAT)
        if _plain(text):
            return text  # openpyxl makes it a text cell, and a plain value is faster
        return _text(self.sheet, text)

    def _styled(self, cells: list, index: int, value, number_format: str):
        if index >= len(cells):  # a row wider than its columns: a cell of its own
            return _formatted(self.sheet, value, number_format)
        cells[index].value = value
        return cells[index]


def column_widths(columns: list[str], sample: list[tuple]) -> list[float]:
    """Widths in characters: the longest of the header and the sampled values as
    shown (a timestamp shows as 19 characters), within MIN_WIDTH..MAX_WIDTH."""
    widths = [len(name) + 2 for name in columns]  # room for the filter button
    for row in sample:
        for index, value in enumerate(row[:len(widths)]):
            shown = 19 if isinstance(value, str) and TIMESTAMP.fullmatch(value) else \
                len(str(value))
            widths[index] = max(widths[index], shown)
    return [min(max(width + 1, MIN_WIDTH), MAX_WIDTH) for width in widths]


def sheet_title(title: str) -> str:
    """Excel's rules for sheet names: at most 31 characters, none of []:*?/\\,
    and not "About", the header's sheet."""
    cleaned = SHEET_TITLE_FORBIDDEN.sub(" ", title).strip().strip("'")[:31] or "Report"
    return "Report" if cleaned.lower() == "about" else cleaned


def _about(workbook: Workbook, header) -> None:
    about = workbook.create_sheet("About")
    about.column_dimensions["A"].width = 100
    about.append([_bold(about, header.title)])
    for line in header.lines():
        about.append([_text(about, line)])
    about.append([_text(about, "Times are UTC.")])


def _plain(text: str) -> bool:
    """Text openpyxl takes for text as it is: not a formula, an error code or with
    characters XML cannot carry."""
    return not (text.startswith("=") or text in ERROR_CODES or for_medium(text, "table") != text)


def _timestamp(text: str) -> datetime | None:
    if not TIMESTAMP.fullmatch(text):
        return None
    try:  # naive: Excel has no time zones (strptime costs five times as much)
        return datetime(int(text[:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]),
                        int(text[14:16]), int(text[17:19]))
    except ValueError:
        return None


def _day(text: str) -> date | None:
    if not DAY.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _formatted(sheet, value: date | datetime | None, number_format: str) -> WriteOnlyCell:
    cell = WriteOnlyCell(sheet, value)
    cell.number_format = number_format
    return cell


def _text(sheet, text: str) -> WriteOnlyCell:
    """A text cell, whatever the text looks like (openpyxl would take "=..." for a
    formula and "#N/A" for an error); characters XML cannot carry are dropped."""
    cell = WriteOnlyCell(sheet, for_medium(text, "table"))
    cell.data_type = "s"
    return cell


def _bold(sheet, text: str) -> WriteOnlyCell:
    cell = _text(sheet, text)
    cell.font = BOLD
    return cell
