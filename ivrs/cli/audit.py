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
    """Recompute every hash; exit 1 naming the first broken row."""
    from sqlalchemy import func, select

    from core.audit import verify
    from core.models import AuditEvent, Study

    db = open_database()
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
