"""``ivrs audit verify``: recompute the tamper-evident audit chain."""

from __future__ import annotations

import sys

import click

from ivrs.cli.common import handles_errors, open_database, study_option


@click.group()
def audit() -> None:
    """The tamper-evident audit trail."""


@audit.command("verify")
@study_option
@handles_errors
def audit_verify(study: str | None) -> None:
    """Recompute every hash; exit 1 naming the first broken row. The outcome is
    recorded in the chain (an ``audit_verified`` row: the dashboard's checkpoint)."""
    from sqlalchemy import select

    from core.actors import ADMIN
    from core.audit_checkpoints import record_verification
    from core.models import Study

    db = open_database()
    with db.reads() as session:
        query = select(Study.code).order_by(Study.code)
        if study:
            query = query.where(Study.code == study)
        codes = list(session.scalars(query))
    broken = False
    for code in codes:
        found = record_verification(db, actor=ADMIN, study=code)
        if not found.intact:
            broken = True
            click.echo(f"BROKEN {code}: {found.problem}")
        else:
            click.echo(f"ok {code}: {found.rows} audit rows, chain intact")
    if broken:
        sys.exit(1)
