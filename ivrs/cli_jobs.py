"""``ivrs supply run`` and ``ivrs outbox``: the supply job and the messages it leaves.

Registered on the main command group by the import at the bottom of
``ivrs/cli.py``. Output is blinded: shipments are shown with their total kit
count, never per kit type.
"""

from __future__ import annotations

import json
import os

import click

from core.errors import IvrsError
from ivrs.cli import _database, handles_errors, main, study_option


@main.group()
def supply() -> None:
    """Trial supply jobs."""


@supply.command("run")
@study_option
@click.option("--today", "today", default=None, metavar="YYYY-MM-DD",
              help="The date to run as (UAT only, like IVRS_TODAY).")
@handles_errors
def supply_run(study: str | None, today: str | None) -> None:
    """Run the expiry and resupply jobs, then the kit confirmation reminders, once and
    print what they did."""
    from core.clock import today as clock_today
    from core.clock import utcnow as clock_utcnow
    from core.migrate import upgrade
    from core.supply.confirmation import run_confirmation_reminders
    from core.supply.expiry import run_expiry
    from core.supply.resupply import run_resupply

    day = _parse_day(today) if today else clock_today()
    db = _database()
    upgrade(db.engine)
    expiry = run_expiry(db, study=study, today=day)
    click.echo(f"{day.isoformat()}: {expiry.expired} kit(s) expired, "
               f"{expiry.warnings} expiry warning(s)")
    shipments = run_resupply(db, study=study, today=day)
    for shipment in shipments:
        click.echo(f"shipment {shipment.shipment_number} to site {shipment.site} "
                   f"({shipment.reason}): {shipment.kits} kits")
    if not shipments:
        click.echo("no shipment needed")
    # --today moves the date only, like IVRS_TODAY: the time of day stays real.
    now = clock_utcnow()
    now = now.replace(year=day.year, month=day.month, day=day.day)
    reminders = run_confirmation_reminders(db, study=study, now=now)
    click.echo(f"{len(reminders)} kit confirmation reminder(s)")


def _parse_day(value: str):
    from datetime import date

    if os.environ.get("IVRS_ENV", "uat") == "production":
        raise IvrsError("--today is for UAT only: it is refused when IVRS_ENV is production")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise IvrsError(f"--today {value!r} is not a YYYY-MM-DD date") from None


@main.command()
@click.option("--all", "include_sent", is_flag=True, help="Include notifications already sent.")
@study_option
@handles_errors
def outbox(include_sent: bool, study: str | None) -> None:
    """List the outbound notifications waiting to be sent (no Twilio/SMTP configured)."""
    from core.studies import get_study
    from core.supply.outbox import list_notifications

    with _database().sessions() as session:
        study_row = get_study(session, study)
        rows = list_notifications(session, study_row.id, include_sent=include_sent)
        for row in rows:
            params = json.dumps(row.params or {}, ensure_ascii=False, sort_keys=True)
            status = f" [{row.status}]" if include_sent else ""
            click.echo(f"{row.kind}\t{row.audience}\t{row.message_id}\t{params}{status}")
        if not rows:
            click.echo("outbox empty")
