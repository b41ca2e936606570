"""The ``ivrs`` command (click). Each command is a thin shell over a core service."""

from __future__ import annotations

import csv
import functools
import os
import sys

import click

from core.actors import ADMIN
from core.db import Database, database_url
from core.errors import FileErrors, IvrsError
from ivrs.report_files import WRITERS as REPORT_FORMATS


def _database() -> Database:
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ivrs")
def main() -> None:
    """ivrs: randomization and trial supply over the telephone and SMS.

    Configuration is by environment: DATABASE_URL (default: a SQLite file
    ivrs.sqlite3 here), IVRS_PIN_PEPPER, IVRS_ENV, IVRS_TODAY; see README.md.
    """


@main.command()
@handles_errors
def init() -> None:
    """Create or migrate the database at DATABASE_URL."""
    from core.migrate import current_revision, upgrade

    db = _database()
    upgrade(db.engine)
    click.echo(f"database ready at revision {current_revision(db.engine)} "
               f"({db.engine.url.render_as_string(hide_password=True)})")


@main.group()
def study() -> None:
    """Study definitions."""


@study.command("load")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@handles_errors
def study_load(path: str) -> None:
    """Load or update a study definition (validated, atomic, audited)."""
    from core.migrate import upgrade
    from core.study_loader import load_study

    db = _database()
    upgrade(db.engine)
    result = load_study(db, path)
    verb = "created" if result.created else "updated"
    click.echo(f"study {result.study_code} {verb}")
    for change in result.changes:
        click.echo(f"  {change}")
    if not result.created and not result.changes:
        click.echo("  no changes")


@main.group()
def mrl() -> None:
    """Master randomization lists."""


@mrl.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@study_option
@click.option("--event", default=None, help="Randomization event code (default: the first list event).")
@handles_errors
def mrl_import(path: str, study: str | None, event: str | None) -> None:
    """Import a master randomization list (all or nothing)."""
    from core.mrl import import_mrl

    result = import_mrl(_database(), path, study_code=study, event_code=event)
    click.echo(f"imported {result.rows} entries in {result.strata} strata")


@main.group()
def users() -> None:
    """User administration (a PIN set here is temporary: changed at the next call)."""


@users.command("add")
@click.argument("user_id")
@click.option("--name", required=True)
@click.option("--role", required=True)
@click.option("--site", "sites", multiple=True, help="Site code (repeatable).")
@click.option("--phone", default=None)
@click.option("--language", default=None,
              help="Default: the language of the user's first site (else the study's first).")
@click.option("--pin", required=True, help="Temporary PIN, 4-8 digits.")
@study_option
@handles_errors
def users_add(user_id, name, role, sites, phone, language, pin, study) -> None:
    from core.users import add_user

    add_user(_database(), user_code=user_id, name=name, role=role, sites=list(sites),
             phone=phone, language=language, pin=pin, actor=ADMIN, study=study)
    click.echo(f"user {user_id} added; the PIN must be changed at the first call")


def _lock_command(name: str, locked: bool) -> None:
    """``users lock`` and ``users unlock``: the same service, the other way round."""

    @users.command(name, help=f"{name.capitalize()} a user (audited).")
    @click.argument("user_id")
    @click.option("--reason", default=f"{name}ed by administrator")
    @study_option
    @handles_errors
    def command(user_id, reason, study) -> None:
        from core.users import set_locked

        set_locked(_database(), user_code=user_id, locked=locked, actor=ADMIN, reason=reason,
                   study=study)
        click.echo(f"user {user_id} {name}ed")


_lock_command("lock", True)
_lock_command("unlock", False)


@users.command("reset-pin")
@click.argument("user_id")
@click.option("--pin", required=True, help="Temporary PIN, 4-8 digits.")
@study_option
@handles_errors
def users_reset_pin(user_id, pin, study) -> None:
    from core.users import reset_pin

    reset_pin(_database(), user_code=user_id, pin=pin, actor=ADMIN, study=study)
    click.echo(f"user {user_id}: PIN reset; it must be changed at the next call")


@main.command()
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(list(REPORT_FORMATS)), default="csv",
              show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None,
              help="File to write (default: standard output for CSV, NAME.xlsx / NAME.pdf).")
@click.option("--unblinded", is_flag=True, help="Include arms (unblinded role, PIN asked).")
@click.option("--user", "user_code", default=None, help="Unblinded user ID (with --unblinded).")
@click.option("--site", default=None, help="Only this site (reports that have sites).")
@click.option("--from", "start", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="From this date (YYYY-MM-DD, UTC), where the report has dates.")
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Up to this date, inclusive.")
@study_option
@handles_errors
def report(name, fmt, out, unblinded, user_code, site, start, end, study) -> None:
    """Write a report (SPEC §8): subjects, randomization, dispensing, kits,
    site-inventory, depot-inventory, shipments, unconfirmed-kits, unblinding,
    audit, user-activity, supply-overview."""
    import getpass

    from core.clock import utcnow
    from core.report_registry import SPECS
    from core.studies import get_study
    from ivrs.report_files import ReportHeader, is_binary, write_report

    spec = SPECS.get(name)
    if spec is None:
        raise IvrsError(f"unknown report {name} (reports: {', '.join(SPECS)})")
    filters = {key: value for key, value in (
        ("site", site), ("start", start and start.date()), ("end", end and end.date()))
        if value is not None}
    refused = sorted(set(filters) - spec.filters)
    if refused:
        options = {"site": "--site", "start": "--from", "end": "--to"}
        raise IvrsError(f"report {name} takes no {', '.join(options[f] for f in refused)}")
    db = _database()
    generated_by = f"cli:admin ({getpass.getuser()})"
    if unblinded:
        from core.users import authorize_unblinded

        if not user_code:
            raise IvrsError("--unblinded needs --user ID of an unblinded role")
        authorize_unblinded(db, user_code=user_code, pin=read_pin(), purpose=f"report {name}",
                            study=study)
        generated_by = f"user:{user_code}"
    if out is None and is_binary(fmt):
        out = f"{name}.{fmt}"
    with db.sessions() as session:
        study_row = get_study(session, study)
        columns, rows = spec.build(session, study_row, not unblinded, **filters)
        header = ReportHeader(
            name=name, title=spec.title, study=f"{study_row.code}: {study_row.name}",
            generated_at=utcnow(), generated_by=generated_by, blinded=not unblinded,
            filters={key: str(value) for key, value in filters.items()},
            notes=spec.notes(session, study_row) if spec.notes else [])
        chart = spec.chart(session, study_row, not unblinded, **filters) \
            if spec.chart is not None and fmt == "pdf" else None
        if out is None:
            write_report(fmt, sys.stdout, header, columns, rows, chart)
            return
        mode = "wb" if is_binary(fmt) else "w"
        with open(out, mode, **({} if is_binary(fmt) else
                                {"newline": "", "encoding": "utf-8"})) as stream:
            count = write_report(fmt, stream, header, columns, rows, chart)
    click.echo(f"report {name}: {count} rows written to {out}", err=True)


def read_pin() -> str:
    """A user's PIN: from IVRS_PIN in scripts, else asked without echo."""
    return os.environ.get("IVRS_PIN") or click.prompt("PIN", hide_input=True)


def write_csv(stream, columns, rows) -> None:
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)


@main.group()
def audit() -> None:
    """The tamper-evident audit trail."""


@audit.command("verify")
@study_option
@handles_errors
def audit_verify(study: str | None) -> None:
    """Recompute every hash; exit 1 naming the first broken row."""
    from sqlalchemy import func, select

    from core.audit import verify
    from core.models import AuditEvent, Study

    db = _database()
    broken = False
    with db.sessions() as session:
        query = select(Study).order_by(Study.code)
        if study:
            query = query.where(Study.code == study)
        for study_row in session.execute(query).scalars():
            problem = verify(session, study_row.id)
            rows = session.execute(select(func.count()).where(
                AuditEvent.study_id == study_row.id)).scalar_one()
            if problem:
                broken = True
                click.echo(f"BROKEN {study_row.code}: {problem}")
            else:
                click.echo(f"ok {study_row.code}: {rows} audit rows, chain intact")
    if broken:
        sys.exit(1)


@main.command()
@click.option("--dir", "directory", default=None, type=click.Path(file_okay=False),
              help="Where to create the demo database (default: ./ivrs-demo).")
def demo(directory: str | None) -> None:
    """Create a demo study in a SQLite file and play calls to it, printed as
    conversations, then the blinded reports. At a terminal, offers a call of
    your own; otherwise scripted, never waiting for input."""
    from ivrs.demo import run_demo

    run_demo(directory or "ivrs-demo", echo=click.echo)


import ivrs.cli_approvals  # noqa: E402,F401  (registers `approvals`)
import ivrs.cli_call  # noqa: E402,F401  (registers `call`)
import ivrs.cli_export  # noqa: E402,F401  (registers `export`)
import ivrs.cli_jobs  # noqa: E402,F401  (registers `supply run` and `outbox`)
import ivrs.cli_serve  # noqa: E402,F401  (registers `serve`)
import ivrs.cli_simulate  # noqa: E402,F401  (registers `simulate`; its commands load lazily)
import ivrs.cli_sms  # noqa: E402,F401  (registers `sms`)
import ivrs.cli_supply  # noqa: E402,F401  (registers `kits` and `shipments`)

if __name__ == "__main__":  # pragma: no cover
    main()
