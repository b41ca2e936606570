"""``ivrs export odm`` and ``ivrs export sdtm``: CDISC exports (SPEC §2).

Blinded by default. ``--unblinded`` works as for reports: ``--user ID`` of an
unblinded role, whose PIN is asked (or read from ``IVRS_PIN``), and the view is
audited. Files are written under a temporary name and renamed when complete,
so a failed export never leaves a half file where a complete one is expected.
On PostgreSQL the export reads one snapshot (REPEATABLE READ): subjects
randomized while it runs are either wholly in it or not at all.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from core.errors import IvrsError
from ivrs.cli.common import handles_errors, open_database, read_pin, study_option

unblinded_option = click.option("--unblinded", is_flag=True,
                                help="Include the treatment (unblinded role, PIN asked).")
user_option = click.option("--user", "user_code", default=None,
                           help="Unblinded user ID (with --unblinded).")


@click.group()
def export() -> None:
    """CDISC exports: ODM 1.3.2 XML for an EDC, SDTM-shaped EX and DS tables."""


@export.command("odm")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None,
              help="File to write (default: standard output).")
@unblinded_option
@user_option
@study_option
@handles_errors
def export_odm(out: str | None, unblinded: bool, user_code: str | None,
               study: str | None) -> None:
    """Randomization and dispensing data as ODM 1.3.2 ClinicalData (XML)."""
    from core.exports.odm import write_odm

    db = open_database()
    _authorize(db, unblinded, user_code, study, "export odm")
    with _snapshot(db) as session:
        study_row = _study(session, study)
        if out is None:
            write_odm(session, study_row, sys.stdout.buffer, blinded=not unblinded)
            sys.stdout.buffer.flush()
            return
        with _replacing(Path(out), "wb") as stream:
            count = write_odm(session, study_row, stream, blinded=not unblinded)
    click.echo(f"ODM export: {count} subjects written to {out}", err=True)


@export.command("sdtm")
@click.option("--out-dir", required=True, type=click.Path(file_okay=False, writable=True),
              help="Directory for ex.csv and ds.csv (created if missing).")
@unblinded_option
@user_option
@study_option
@handles_errors
def export_sdtm(out_dir: str, unblinded: bool, user_code: str | None,
                study: str | None) -> None:
    """Exposure (ex.csv) and disposition (ds.csv), SDTM-shaped CSV."""
    from core.exports.sdtm import write_ds, write_ex

    db = open_database()
    _authorize(db, unblinded, user_code, study, "export sdtm")
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with _snapshot(db) as session:
        study_row = _study(session, study)
        with _replacing(directory / "ex.csv", "w") as stream:
            ex_rows = write_ex(session, study_row, stream, blinded=not unblinded)
        with _replacing(directory / "ds.csv", "w") as stream:
            ds_rows = write_ds(session, study_row, stream)
    click.echo(f"SDTM export: {ex_rows} EX rows, {ds_rows} DS rows written to {directory}",
               err=True)


def _authorize(db, unblinded: bool, user_code: str | None, study: str | None,
               purpose: str) -> None:
    if not unblinded:
        return
    from core.users import authorize_unblinded

    if not user_code:
        raise IvrsError("--unblinded needs --user ID of an unblinded role")
    authorize_unblinded(db, user_code=user_code, pin=read_pin(), purpose=purpose, study=study)


def _study(session, code: str | None):
    from core.studies import get_study

    return get_study(session, code)


@contextmanager
def _snapshot(db):
    """A session whose queries all see one state of the database."""
    with db.sessions() as session:
        if db.engine.dialect.name == "postgresql":
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        yield session


@contextmanager
def _replacing(path: Path, mode: str):
    """Write ``path.part`` and rename it to ``path`` once complete."""
    partial = path.with_name(path.name + ".part")
    options = {} if "b" in mode else {"newline": "", "encoding": "utf-8"}
    try:
        with open(partial, mode, **options) as stream:
            yield stream
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
