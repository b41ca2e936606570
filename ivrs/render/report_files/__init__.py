"""Reports as files: CSV, Excel and PDF (SPEC §8, ``ivrs report --format``).

A report arrives as a header (title, study, when and by whom, blinded or not,
filters, notes), its columns and its rows, streamed: each writer consumes the
rows once, in order, and never holds them all. Every format carries the same
rows; CSV is the plain table (SPEC's columns, nothing above them), the others
add the header (Excel in an "About" sheet, PDF on every page) and, for PDF, the
report's chart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO

from core.report_charts import Chart


@dataclass(frozen=True)
class ReportHeader:
    name: str  # the report's name: "subjects"
    title: str  # "Subjects"
    study: str  # "DEMO-301: Demo study of ..."
    generated_at: datetime  # UTC
    generated_by: str  # "user:5004 Ada Lovelace", "cli:admin (root)"
    blinded: bool
    filters: dict[str, str] = field(default_factory=dict)  # as given: {"site": "101"}
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The header as text lines, the same in every format that shows it."""
        lines = [f"Study: {self.study}",
                 f"Generated: {self.generated_at:%Y-%m-%d %H:%M:%S} UTC by {self.generated_by}",
                 "Blinded" if self.blinded else "UNBLINDED: contains treatment allocation"]
        if self.filters:
            lines.append("Filters: " + ", ".join(f"{k}={v}" for k, v in self.filters.items()))
        return lines + list(self.notes)


# format -> (writer, binary?); a writer is (stream, header, columns, rows, chart) -> rows written
Writer = Callable[[IO, ReportHeader, list[str], Iterable[tuple], Chart | None], int]


def _csv_writer():
    from ivrs.render.report_files.csv_file import write_csv
    return write_csv


def _xlsx_writer():
    from ivrs.render.report_files.xlsx_file import write_xlsx
    return write_xlsx


def _pdf_writer():
    from ivrs.render.report_files.pdf_file import write_pdf
    return write_pdf


WRITERS: dict[str, tuple[Callable[[], Writer], bool]] = {"csv": (_csv_writer, False),
                                                        "xlsx": (_xlsx_writer, True),
                                                        "pdf": (_pdf_writer, True)}


def write_report(fmt: str, stream: IO, header: ReportHeader, columns: list[str],
                 rows: Iterable[tuple], chart: Chart | None = None) -> int:
    """Write one report in ``fmt`` to an open stream (binary for Excel and PDF);
    returns the number of rows written."""
    load, _ = WRITERS[fmt]
    return load()(stream, header, columns, rows, chart)


def is_binary(fmt: str) -> bool:
    return WRITERS[fmt][1]
