"""Webhook subscriptions: where the event stream goes (SPEC §10), administered
at the server's shell.

A subscription is an URL, the event types it wants (``core.events.EVENT_TYPES``)
and the role it is made for: a blinded role by default (``project_manager``),
whose payloads never carry an arm, a kit type or a lot; made for an unblinded
role (``unblinded_statistician``) it gets them. Its signing secret follows the
Standard Webhooks convention (``whsec_`` and the base64 of 32 random bytes):
it is made here and shown once; every delivery is signed with it, so it is
kept as it is, never written to the audit trail, a log or a listing.

Bad input (an URL that is not http(s), an unknown event type or role) is
refused before anything is written. Adding, removing and replaying are
administrator's work, audited (``webhook_added``, ``webhook_removed``,
``webhook_replayed``); the audit rows name the URL without its user
information or query (where a receiver's token would be), never the secret.

Removing is soft (``removed_at``): the deliveries made for the subscription
stay as the record of what was sent, and those still waiting are not sent
any more. A replay queues the subscription's deliveries again from an event
number or a moment on, each with its event's id (``webhook-id``), so that a
receiver that lost them, or was added after them, can have them (and one
that has them recognises them); events it never had get deliveries too.
"""

from __future__ import annotations

import base64
import secrets
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import exists, func, insert, literal, select, update

from core.actors import ROLES, UNBLINDED_ROLES, Actor
from core.clock import as_utc
from core.db import Database
from core.errors import IvrsError, NotFound, Refused
from core.events import EVENT_TYPES, EXPANDED
from core.models import Event, EventDelivery, Timestamp, WebhookSubscription
from core.service import service_call
from core.studies import study_ref

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
DEFAULT_ROLE = "project_manager"
# An administrator's powers stay at the server's shell, as an API client's do.
SUBSCRIPTION_ROLES = frozenset(ROLES - {"admin"})
MAX_URL = 2000
QUEUED, SENDING = "queued", "sending"  # core.event_deliveries' statuses


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def check_url(url: str | None) -> str:
    """An http(s) URL with a host, or a clear refusal."""
    url = (url or "").strip()
    if not url or len(url) > MAX_URL or any(c.isspace() or ord(c) < 32 for c in url):
        raise IvrsError(f"the webhook URL must be an http:// or https:// URL of at most "
                        f"{MAX_URL} characters, without spaces", code="bad_url")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 — raises ValueError for a port that is not a number
    except ValueError:
        raise IvrsError(f"the webhook URL {url!r} is not an URL", code="bad_url") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise IvrsError(f"the webhook URL {url!r} must start with http:// or https:// and name "
                        "a host", code="bad_url")
    return url


def parse_event_types(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Event types from a comma-separated text or a list, checked against the
    known ones; in the known order, each once."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    wanted = {str(item).strip() for item in items} - {""}
    unknown = sorted(wanted - set(EVENT_TYPES))
    if unknown or not wanted:
        problem = (f"unknown event type {', '.join(unknown)}" if unknown
                   else "no event type given")
        raise IvrsError(f"{problem}: the event types are {', '.join(EVENT_TYPES)}",
                        code="bad_event_type")
    return [kind for kind in EVENT_TYPES if kind in wanted]


def shown_url(url: str) -> str:
    """The URL as the audit trail names it: no user information, no query or
    fragment (a receiver's token is often there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True)
class SubscriptionInfo:
    id: int
    url: str
    event_types: tuple[str, ...]
    role: str
    created_at: datetime
    created_by: str
    removed_at: datetime | None
    # deliveries by status (queued, sending, delivered, failed)
    deliveries: dict[str, int]

    @property
    def blinded(self) -> bool:
        return self.role not in UNBLINDED_ROLES


@dataclass(frozen=True)
class NewSubscription:
    subscription: SubscriptionInfo
    secret: str  # shown once


def add_subscription(db: Database, *, url: str, event_types: str | list[str], actor: Actor,
                     role: str | None = None, study: str | None = None) -> NewSubscription:
    """Subscribe ``url`` to ``event_types`` (audited ``webhook_added``, without
    the secret); the secret is in the answer only."""
    actor.require(frozenset(), "add webhook subscriptions")
    url = check_url(url)
    kinds = parse_event_types(event_types)
    role = (role or DEFAULT_ROLE).strip()
    if role not in SUBSCRIPTION_ROLES:
        raise IvrsError(f"role must be one of {', '.join(sorted(SUBSCRIPTION_ROLES))}",
                        code="bad_role")
    secret = new_secret()
    with service_call(db, study, "webhook_add", None, actor) as call:
        subscription = WebhookSubscription(study_id=call.study.id, url=url, event_types=kinds,
                                           role=role, secret=secret, created_by=actor.label)
        call.session.add(subscription)
        call.session.flush()
        call.audit.record("webhook_added", "webhook_subscription", subscription.id, new={
            "url": shown_url(url), "event_types": kinds, "role": role,
            "blinded": role not in UNBLINDED_ROLES})
        call.finish({"subscription": subscription.id})
        return NewSubscription(_info(subscription, {}), secret)


def list_subscriptions(db: Database, *, study: str | None = None) -> list[SubscriptionInfo]:
    """The study's subscriptions, removed ones included, with their deliveries'
    counts by status."""
    with db.reads() as session:
        ref = study_ref(session, study)
        counts: dict[int, Counter] = {}
        for subscription_id, status, count in session.execute(
                select(EventDelivery.subscription_id, EventDelivery.status, func.count())
                .where(EventDelivery.study_id == ref.id)
                .group_by(EventDelivery.subscription_id, EventDelivery.status)):
            counts.setdefault(subscription_id, Counter())[status] = count
        return [_info(row, counts.get(row.id, {})) for row in session.scalars(
            select(WebhookSubscription).where(WebhookSubscription.study_id == ref.id)
            .order_by(WebhookSubscription.id))]


def remove_subscription(db: Database, *, subscription_id: int, actor: Actor, reason: str,
                        study: str | None = None) -> SubscriptionInfo:
    """Stop sending to a subscription (audited ``webhook_removed``): what waits
    for it is not sent any more."""
    actor.require(frozenset(), "remove webhook subscriptions")
    reason = (reason or "").strip()
    if not reason:
        raise Refused("a reason is required", code="reason_required")
    with service_call(db, study, f"webhook_remove {subscription_id}", None, actor) as call:
        subscription = _locked(call.session, call.study.id, subscription_id)
        if subscription.removed_at is not None:
            raise Refused(f"webhook subscription {subscription_id} is removed already",
                          code="subscription_removed")
        subscription.removed_at = _now()
        waiting = call.session.scalar(select(func.count()).where(
            EventDelivery.subscription_id == subscription.id,
            EventDelivery.status.in_((QUEUED, SENDING))))
        call.audit.record("webhook_removed", "webhook_subscription", subscription.id,
                          reason=reason, old={"removed": False},
                          new={"removed": True, "url": shown_url(subscription.url),
                               "deliveries_not_sent": waiting})
        call.finish({"subscription": subscription.id})
        return _info(subscription, {})


def replay(db: Database, *, subscription_id: int, actor: Actor, since_event: int | None = None,
           since: datetime | None = None, study: str | None = None) -> int:
    """Queue again the subscription's deliveries of the events from event number
    ``since_event`` on, or from ``since`` on (exactly one of them), of the types it
    wants; each keeps its event's id. Events it has no delivery of get one.
    A delivery being sent right now is left to finish. Audited
    ``webhook_replayed``; returns how many deliveries were queued."""
    actor.require(frozenset(), "replay webhook deliveries")
    if (since_event is None) == (since is None):
        raise IvrsError("say where the replay starts: an event number or a time, not both",
                        code="bad_replay")
    if since_event is not None and since_event < 1:
        raise IvrsError("an event number is 1 or more", code="bad_replay")
    if since is not None:
        since = as_utc(since).astimezone(UTC)
    now = _now()
    with service_call(db, study, f"webhook_replay {subscription_id}", None, actor) as call:
        session = call.session
        subscription = _locked(session, call.study.id, subscription_id)
        if subscription.removed_at is not None:
            raise Refused(f"webhook subscription {subscription_id} is removed: nothing is "
                          "sent to it", code="subscription_removed")
        start = (Event.id >= since_event) if since_event is not None else (
            Event.occurred_at >= since)
        # Pending events are left to the expansion, which gives them their deliveries.
        replayed = (select(Event.id).where(
            Event.study_id == call.study.id, Event.status == EXPANDED,
            Event.type.in_(list(subscription.event_types)), start))
        mine = EventDelivery.subscription_id == subscription.id
        left_sending = session.scalar(select(func.count()).where(
            mine, EventDelivery.status == SENDING, EventDelivery.event_id.in_(replayed)))
        # A fresh start: the backoff and the 24 hours count from now.
        again = session.execute(
            update(EventDelivery)
            .where(mine, EventDelivery.status != SENDING, EventDelivery.event_id.in_(replayed))
            .values(status=QUEUED, next_attempt_at=now, created_at=now, updated_at=now,
                    delivered_at=None, error=None)
            .execution_options(synchronize_session=False)).rowcount
        missing = (
            select(literal(call.study.id), Event.id, literal(subscription.id),
                   Event.ordering_key, literal(QUEUED), literal(0), literal(now, Timestamp),
                   literal(now, Timestamp), literal(now, Timestamp))
            .where(Event.id.in_(replayed), ~exists().where(
                mine, EventDelivery.event_id == Event.id)))
        # Counted by what it returns: an INSERT's rowcount is not every driver's.
        table = EventDelivery.__table__
        new = len(session.execute(insert(table).from_select(
            ["study_id", "event_id", "subscription_id", "ordering_key", "status", "attempts",
             "next_attempt_at", "created_at", "updated_at"], missing)
            .returning(table.c.id)).all())
        queued = again + new
        call.audit.record("webhook_replayed", "webhook_subscription", subscription.id,
                          reason="replay asked by an administrator", new={
                              "since_event": since_event, "since": since,
                              "deliveries": queued, "left_sending": left_sending})
        call.finish({"subscription": subscription.id, "deliveries": queued})
        return queued


def _locked(session, study_id: int, subscription_id: int) -> WebhookSubscription:
    subscription = session.scalars(
        select(WebhookSubscription).where(WebhookSubscription.study_id == study_id,
                                          WebhookSubscription.id == subscription_id)
        .with_for_update()).first()
    if subscription is None:
        raise NotFound(f"no webhook subscription {subscription_id}",
                       code="unknown_subscription")
    return subscription


def _now() -> datetime:
    # The senders' clock: backoff and the 24 hours are real time, not IVRS_TODAY.
    return datetime.now(UTC)


def _info(row: WebhookSubscription, counts) -> SubscriptionInfo:
    return SubscriptionInfo(row.id, row.url, tuple(row.event_types), row.role,
                            as_utc(row.created_at), row.created_by,
                            as_utc(row.removed_at) if row.removed_at else None, dict(counts))
