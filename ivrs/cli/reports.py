"""``ivrs report NAME``: the reports of SPEC §8 in CSV, Excel or PDF, blinded by default."""

from __future__ import annotations

import sys

import click

from core.errors import IvrsError
from ivrs.cli.common import handles_errors, open_database, read_pin, study_option
from ivrs.render.report_files import WRITERS as REPORT_FORMATS


@click.command()
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
    from ivrs.render.report_files import ReportHeader, is_binary, write_report

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
    db = open_database()
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
