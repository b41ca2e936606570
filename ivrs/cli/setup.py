"""``ivrs init``, ``ivrs study load``, ``ivrs mrl import``: the database, the study
definition and its master randomization list."""

from __future__ import annotations

import click

from ivrs.cli.common import handles_errors, open_database, study_option


@click.command()
@handles_errors
def init() -> None:
    """Create or migrate the database at DATABASE_URL."""
    from core.migrate import current_revision, upgrade

    db = open_database()
    upgrade(db.engine)
    click.echo(f"database ready at revision {current_revision(db.engine)} "
               f"({db.engine.url.render_as_string(hide_password=True)})")


@click.group()
def study() -> None:
    """Study definitions."""


@study.command("load")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@handles_errors
def study_load(path: str) -> None:
    """Load or update a study definition (validated, atomic, audited)."""
    from core.migrate import upgrade
    from core.study_loader import load_study

    db = open_database()
    upgrade(db.engine)
    result = load_study(db, path)
    verb = "created" if result.created else "updated"
    click.echo(f"study {result.study_code} {verb}")
    for change in result.changes:
        click.echo(f"  {change}")
    if not result.created and not result.changes:
        click.echo("  no changes")


@click.group()
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

    result = import_mrl(open_database(), path, study_code=study, event_code=event)
    click.echo(f"imported {result.rows} entries in {result.strata} strata")
