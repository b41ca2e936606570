"""CSV: the report's table only (SPEC §8's snake_case columns), one row per line."""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO

from core.report_charts import Chart
from core.reports import write_table


def write_csv(stream: IO, header, columns: list[str], rows: Iterable[tuple],
              chart: Chart | None = None) -> int:
    return write_table(stream, columns, rows)
