"""What the CSV importers (MRL, kit list) share: reading the file and collecting errors.

Every problem is reported with file, line and column, all of them at once (up
to a limit: a file wrong on every row needs no 100,000-line answer).
"""

from __future__ import annotations

import csv
import io
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from core.errors import FileError, FileErrors

MAX_REPORTED_ERRORS = 100


def read_bytes(file: str) -> bytes:
    try:
        return Path(file).read_bytes()
    except OSError as exc:
        raise FileErrors([FileError(file, None, None,
                                    f"cannot read the file: {exc.strerror}")]) from None


def decode(raw: bytes, file: str) -> str:
    """UTF-8 text (a byte-order mark is accepted), or an error naming the line."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise FileErrors([FileError(file, line, None, f"not UTF-8 text (byte "
                                                      f"0x{raw[exc.start]:02x})")]) from None


class ErrorCollector:
    """Collects a file's errors; ``fail()`` turns them into one ``FileErrors``."""

    file: str

    def __init__(self, file: str):
        self.file = file
        self.errors: list[FileError] = []
        self.error_count = 0

    def error(self, line: int | None, column: str | None, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(FileError(self.file, line, column, message))

    def fail(self) -> FileErrors:
        errors = list(self.errors)
        if self.error_count > len(errors):
            errors.append(FileError(self.file, None, None,
                                    f"... and {self.error_count - len(errors)} more errors"))
        return FileErrors(errors)


class CsvParser(ErrorCollector, ABC):
    """Reads a CSV with a header row: blank lines skipped, a row with the wrong
    number of fields reported, each other row handed to ``read_row`` as a dict of
    stripped values. Subclasses check the header (``read_header``) and the rows."""

    @abstractmethod
    def read_header(self, header: list[str] | None) -> list[str]:
        """The checked column names (errors raised via ``fail``)."""

    @abstractmethod
    def read_row(self, line: int, values: dict[str, str]) -> Any | None:
        """One checked row, or None when it had errors (recorded with ``error``)."""

    def parse(self, text: str) -> list[Any]:
        reader = csv.reader(io.StringIO(text, newline=""))
        columns = self.read_header(next(reader, None))
        rows: list[Any] = []
        last_line = 1
        for fields in reader:
            line, last_line = last_line + 1, reader.line_num  # a quoted field may span lines
            if not fields:
                continue  # a blank line
            if len(fields) != len(columns):
                self.error(line, None, f"{len(fields)} fields, but the header has "
                                       f"{len(columns)} ({','.join(columns)})")
                continue
            row = self.read_row(line, dict(zip(columns, (value.strip() for value in fields))))
            if row is not None:
                rows.append(row)
        if not rows and not self.error_count:
            self.error(None, None, "no rows after the header")
        if self.error_count:
            raise self.fail()
        return rows
