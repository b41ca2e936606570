"""Errors the core raises; each carries a machine-readable code for the dialogs."""

from __future__ import annotations


class IvrsError(Exception):
    """A refusal or a bad input: clear message, nothing changed."""

    code = "error"

    def __init__(self, message: str, code: str | None = None, **params):
        super().__init__(message)
        if code:
            self.code = code
        self.params = params


class NotFound(IvrsError):
    code = "not_found"


class Refused(IvrsError):
    """A service declined to act (not eligible, list exhausted, wrong site ...)."""

    code = "refused"


class FileError(IvrsError):
    """A bad input file: names the file, the line and the field."""

    code = "bad_file"

    def __init__(self, file: str, line: int | None, field: str | None, message: str):
        self.file, self.line, self.field, self.message = file, line, field, message
        where = file if line is None else f"{file}:{line}"
        what = f" {field}:" if field else ""
        super().__init__(f"{where}:{what} {message}")


class FileErrors(IvrsError):
    """Every problem found in one file (we report them all, not just the first)."""

    code = "bad_file"

    def __init__(self, errors: list[FileError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
