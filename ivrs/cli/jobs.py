"""``ivrs supply run`` and ``ivrs outbox``: the supply job and the messages it leaves.

Output is blinded: shipments are shown with their total kit
count, never per kit type. With Twilio configured (TWILIO_ACCOUNT_SID,
TWILIO_AUTH_TOKEN, TWILIO_FROM_NUMBER) ``supply run`` ends with a pass of the
SMS sender, with SMTP_URL with a pass of the e-mail sender, and ``outbox send``
runs both by hand; ``outbox`` lists what waits on either channel, with the
text each recipient would get.
"""

from __future__ import annotations

import json
import os

import click

from core.errors import IvrsError
from ivrs.cli.common import handles_errors, open_database, study_option


@click.group()
def supply() -> None:
    """Trial supply jobs."""


@supply.command("run")
@study_option
@click.option("--today", "today", default=None, metavar="YYYY-MM-DD",
              help="The date to run as (UAT only, like IVRS_TODAY).")
@handles_errors
def supply_run(study: str | None, today: str | None) -> None:
    """Run the expiry and resupply jobs, the kit confirmation reminders, the expiry
    of stale approval requests and the audit chain's full verification once, and
    print what they did (exit 1 if the chain is broken)."""
    from core.actors import ADMIN
    from core.audit_checkpoints import record_verification
    from core.clock import today as clock_today
    from core.clock import utcnow as clock_utcnow
    from core.gates import expire_stale
    from core.migrate import upgrade
    from core.supply.confirmation import run_confirmation_reminders
    from core.supply.expiry import run_expiry
    from core.supply.resupply import run_resupply

    day = _parse_day(today) if today else clock_today()
    db = open_database()
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
    expired = expire_stale(db, study=study, now=now)
    click.echo(f"{len(expired)} approval request(s) expired"
               + (f": {', '.join(expired)}" if expired else ""))
    # The daily full check of the audit chain, recorded as the scheduler inside
    # ``serve`` records it: a deployment that runs this from cron instead keeps
    # the dashboard's checkpoint fresh too.
    chain = record_verification(db, actor=ADMIN, study=study)
    click.echo(f"audit chain: {chain.rows} rows, intact" if chain.intact
               else f"audit chain BROKEN: {chain.problem}")
    _send_if_configured(db)
    if not chain.intact:
        raise SystemExit(1)


def _send_if_configured(db) -> None:
    """The messages the jobs just queued go out now on each channel that is
    configured (``ivrs serve`` would send them within seconds; a cron job has no
    server)."""
    from ivrs.config import Settings
    from ivrs.outbound.email import send_pending_email
    from ivrs.outbound.notify import gateway, send_pending

    settings = Settings.from_env()
    sender = gateway(settings)
    if sender is not None:
        click.echo(f"SMS: {send_pending(db, sender).summary()}")
    if settings.smtp is not None:
        click.echo(f"e-mail: {send_pending_email(db, settings).summary()}")


def _parse_day(value: str):
    from datetime import date

    if os.environ.get("IVRS_ENV", "uat") == "production":
        raise IvrsError("--today is for UAT only: it is refused when IVRS_ENV is production")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise IvrsError(f"--today {value!r} is not a YYYY-MM-DD date") from None


@click.group(invoke_without_command=True)
@click.option("--all", "include_sent", is_flag=True,
              help="Include messages already sent (or given up), with their status.")
@study_option
@click.pass_context
@handles_errors
def outbox(ctx: click.Context, include_sent: bool, study: str | None) -> None:
    """List the outbound messages waiting to be sent, one line per recipient and
    channel: kind, audience, message id, parameters, recipient (a phone for an
    SMS, <address> for an e-mail) and the text they get (an e-mail's subject,
    then ' | ' and its body). Without Twilio every SMS waits here, without
    SMTP_URL every e-mail."""
    if ctx.invoked_subcommand is not None:
        return
    from core.deliveries import EMAIL
    from core.studies import get_study
    from ivrs.outbound.notify import outbox_entries

    db = open_database()
    with db.sessions() as session:
        study_id = get_study(session, study).id
    entries = outbox_entries(db, study_id, include_sent=include_sent)
    for entry in entries:
        note = entry.notification
        params = json.dumps(note.params or {}, ensure_ascii=False, sort_keys=True)
        if entry.user_code is None:
            recipient, words = "no recipient", "-"
        else:
            address = (f"<{entry.address}>" if entry.channel == EMAIL else entry.address)
            recipient = f"to {entry.user_code} {address} ({entry.language})"
            words = entry.text or f"(no text for message {note.message_id})"
            if entry.channel == EMAIL:
                words = f"{entry.subject} | {words}"
            if entry.english:
                words += f" | en: {entry.english}"
        status = f"\t[{entry.status}]" if include_sent else ""
        click.echo(f"{note.kind}\t{note.audience}\t{note.message_id}\t{params}\t"
                   f"{recipient}\t{words}{status}")
    if not entries:
        click.echo("outbox empty")


@outbox.command("send")
@handles_errors
def outbox_send() -> None:
    """Send what is due now, SMS through Twilio and e-mail through SMTP_URL
    (``ivrs serve`` does it every few seconds); one summary line per channel."""
    from core.migrate import upgrade
    from ivrs.config import Settings
    from ivrs.outbound.email import send_pending_email
    from ivrs.outbound.notify import gateway, send_pending

    settings = Settings.from_env()
    sender = gateway(settings)
    if sender is None and settings.smtp is None:
        raise IvrsError("outbound messages are not configured: set TWILIO_ACCOUNT_SID, "
                        "TWILIO_AUTH_TOKEN and TWILIO_FROM_NUMBER for SMS, SMTP_URL (and "
                        "SMTP_FROM) for e-mail; nothing was sent")
    db = open_database()
    upgrade(db.engine)
    click.echo(f"SMS: {send_pending(db, sender).summary()}")
    click.echo(f"e-mail: {send_pending_email(db, settings).summary()}")
