"""``ivrs webhooks``: the event stream's subscriptions (SPEC §10), and a pass of
its sender by hand.

``add`` prints the signing secret once: it is never shown again (``list``
shows none). A subscription is blinded unless made for an unblinded role
(``--role unblinded_statistician``): then its payloads carry arms, kit types
and lots, and ``add`` says so.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from core.errors import IvrsError
from ivrs.cli.common import handles_errors, open_database, study_option, write_csv

LIST_COLUMNS = ["id", "url", "event_types", "role", "blinded", "created_by", "created_at",
                "removed_at", "queued", "sending", "delivered", "failed"]


@click.group()
def webhooks() -> None:
    """Webhook subscriptions: signed events for other systems (an EDC, a CTMS)."""


@webhooks.command("add")
@click.argument("url")
@click.option("--events", "event_types", required=True, metavar="TYPE,TYPE,...",
              help="Event types, comma-separated (subject.randomized,kit.dispensed,...).")
@click.option("--role", default=None,
              help="The role the payloads are for (default project_manager, blinded).")
@study_option
@handles_errors
def webhooks_add(url: str, event_types: str, role: str | None, study: str | None) -> None:
    """Send events of the given types to URL (POST, signed)."""
    from core.actors import ADMIN
    from core.webhook_subscriptions import add_subscription

    made = add_subscription(open_database(), url=url, event_types=event_types, role=role,
                            actor=ADMIN, study=study)
    subscription = made.subscription
    click.echo(f"webhook subscription {subscription.id} added: "
               f"{', '.join(subscription.event_types)} for role {subscription.role}"
               + ("" if subscription.blinded
                  else " (UNBLINDED: its payloads carry arms, kit types and lots)"))
    click.echo(f"signing secret (shown only now; keep it for the receiver): {made.secret}")


@webhooks.command("list")
@study_option
@handles_errors
def webhooks_list(study: str | None) -> None:
    """Subscriptions as CSV, with their deliveries by status (never the secret)."""
    from core.webhook_subscriptions import list_subscriptions

    rows = []
    for item in list_subscriptions(open_database(), study=study):
        rows.append([item.id, item.url, ",".join(item.event_types), item.role,
                     "yes" if item.blinded else "no", item.created_by, _utc(item.created_at),
                     _utc(item.removed_at)]
                    + [item.deliveries.get(status, 0)
                       for status in ("queued", "sending", "delivered", "failed")])
    write_csv(sys.stdout, LIST_COLUMNS, rows)


@webhooks.command("remove")
@click.argument("subscription_id", type=int)
@click.option("--reason", default="removed by administrator", show_default=True)
@study_option
@handles_errors
def webhooks_remove(subscription_id: int, reason: str, study: str | None) -> None:
    """Stop sending to a subscription (what waits for it is not sent)."""
    from core.actors import ADMIN
    from core.webhook_subscriptions import remove_subscription

    remove_subscription(open_database(), subscription_id=subscription_id, reason=reason,
                        actor=ADMIN, study=study)
    click.echo(f"webhook subscription {subscription_id} removed")


@webhooks.command("replay")
@click.argument("subscription_id", type=int)
@click.option("--since-event", "since_event", type=int, default=None, metavar="N",
              help="From event N on (the number in evt_N).")
@click.option("--since", default=None, metavar="ISO-TIME",
              help="From this moment on (e.g. 2026-01-15T08:00:00Z; UTC when no zone).")
@study_option
@handles_errors
def webhooks_replay(subscription_id: int, since_event: int | None, since: str | None,
                    study: str | None) -> None:
    """Queue a subscription's events again (same webhook-id: receivers can drop
    what they have)."""
    from core.actors import ADMIN
    from core.webhook_subscriptions import replay

    queued = replay(open_database(), subscription_id=subscription_id, since_event=since_event,
                    since=_parse_time(since) if since is not None else None, actor=ADMIN,
                    study=study)
    click.echo(f"webhook subscription {subscription_id}: {queued} delivery(ies) queued; "
               "`ivrs serve` sends them within seconds (or `ivrs webhooks send`)")


@webhooks.command("send")
@handles_errors
def webhooks_send() -> None:
    """Send what is due now (``ivrs serve`` does it every second); prints counts."""
    from core.migrate import upgrade
    from ivrs.outbound.webhooks import send_pending_webhooks

    db = open_database()
    upgrade(db.engine)
    click.echo(f"webhooks: {send_pending_webhooks(db).summary()}")


def _parse_time(value: str) -> datetime:
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise IvrsError(f"--since {value!r} is not an ISO time such as "
                        "2026-01-15T08:00:00Z") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _utc(moment: datetime | None) -> str:
    from core.reports import _utc as utc  # one UTC format for every listing

    return utc(moment)
