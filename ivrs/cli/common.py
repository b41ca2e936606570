"""What every operator command shares: the database, refusals as messages, the
--study option, the PIN asked without echo, CSV on standard output. Imports no
command (each command module imports it)."""

from __future__ import annotations

import functools
import os
import sys

import click

from core.db import Database, database_url
from core.errors import FileErrors, IvrsError
from core.reports import write_table


def open_database() -> Database:
    return Database(database_url())


def handles_errors(command):
    """Turn the core's refusals into one clear message and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FileErrors as errors:
            for error in errors.errors:
                click.echo(f"error: {error}", err=True)
            click.echo(f"{len(errors.errors)} error(s); nothing was changed.", err=True)
            sys.exit(1)
        except IvrsError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(1)

    return wrapper


study_option = click.option("--study", "study", default=None, metavar="CODE",
                            help="Study code; needed only when several studies are loaded.")


def read_pin() -> str:
    """A user's PIN: from IVRS_PIN in scripts, else asked without echo."""
    return os.environ.get("IVRS_PIN") or click.prompt("PIN", hide_input=True)


def write_csv(stream, columns, rows) -> None:
    """A listing as CSV, its text filtered as a report's is (a reason typed by
    SMS must not reach the terminal as escape sequences)."""
    write_table(stream, columns, rows)
