"""CSV: the report's table only (SPEC §8's snake_case columns), one row per line."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import IO

from core.report_charts import Chart


def write_csv(stream: IO, header, columns: list[str], rows: Iterable[tuple],
              chart: Chart | None = None) -> int:
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow(row)
        count += 1
    return count
