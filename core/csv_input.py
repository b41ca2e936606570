"""What the CSV importers (MRL, kit list) share: reading the file and collecting errors.

Every problem is reported with file, line and column, all of them at once (up
to a limit: a file wrong on every row needs no 100,000-line answer).
"""

from __future__ import annotations

from pathlib import Path

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
