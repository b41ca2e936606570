"""Event deliveries: the event stream's durable queue, one row per event and
subscription (SPEC §10). The database side of the webhook sender, free of HTTP:
``ivrs.outbound.webhooks`` does the talking.

It works as the SMS and e-mail outbox does (``core.deliveries``):

- *Expansion*: each pending event (``core.events``) becomes one delivery per
  active subscription of its study whose event types include its type
  (``pending`` -> ``expanded``, in a transaction of its own). The unique
  (event, subscription) pair makes it idempotent: whatever runs twice, an
  event has at most one delivery per subscription. The expansion also adds
  each kit's type and lot to the event's unblinded part (``kit_types``,
  ``lots``, by kit number): facts that never change, looked up here rather
  than in the service's transaction, which stays as cheap as it was.
- *Claim*: ``queued`` -> ``sending``, attempts + 1, in a transaction of its
  own that commits before the request leaves; only a ``queued`` row can be
  claimed, locked with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite
  serializes writers with ``BEGIN IMMEDIATE``), so parallel senders never
  claim one row twice.
- *Order*: a delivery is never claimed while an earlier event (a lower id) of
  the same ordering key (``subject:1010001``) is still queued or being sent to
  the same subscription, or still waits for its expansion. A receiver sees a
  subject's events in the order they happened, and a retry holds back what
  follows it (events of other keys go on). A delivery given up (``failed``)
  no longer holds anything back.
- *Outcomes* name their attempt and change nothing once the row has moved on.
  Delivered on a 2xx. Anything else (a timeout, no connection, 5xx, 429, any
  other status) is retried: a receiver that fixes itself gets what it missed.
  The wait doubles from 30 s to an hour (``core.deliveries``' bounds), counted
  from the delivery's creation rather than in attempts, and the delivery is
  given up (``failed``, audited ``webhook_failed``) only at its first failure
  24 hours or more after its creation. A replay (``core.webhook_subscriptions``)
  makes it new again: both clocks start afresh.
- *A sender killed* between its claim and the outcome leaves the row
  ``sending``: after ``STALE_AFTER`` it goes back to the queue as a failed
  attempt. The receiver may have had it: at least once on the wire, with the
  same ``webhook-id``; exactly one row per event and subscription here.

Blinding: the claimed message is built here (``core.events.message``): the
unblinded part joins ``data`` only for a subscription of an unblinded role.
Audit rows and log lines name deliveries, events, subscriptions and HTTP
statuses, never a payload or a secret.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, exists, select, update
from sqlalchemy.orm import Session, aliased

from core.actors import UNBLINDED_ROLES
from core.audit import AuditLog
from core.clock import as_utc
from core.db import Database
from core.deliveries import BACKOFF_FIRST, BACKOFF_MAX
from core.events import EXPANDED, KIT_CONFIRMED, KIT_DISPENSED, PENDING, message, webhook_id
from core.models import Event, EventDelivery, Kit, KitType, Lot, Study, WebhookSubscription

log = logging.getLogger("core.event_deliveries")

QUEUED = "queued"
SENDING = "sending"
DELIVERED = "delivered"
FAILED = "failed"
WAITING = (QUEUED, SENDING)

GIVE_UP_AFTER = timedelta(hours=24)
# A claim older than this has lost its sender: the HTTP timeout (10 s) keeps a
# live sender's attempts far inside it.
STALE_AFTER = timedelta(minutes=1)
SENDER_ACTOR = "system:webhooks"
SENDER_LOST = "sender_lost"
GIVEN_UP = "not delivered within 24 hours"


def retry_wait(age: timedelta) -> timedelta:
    """The wait after a failed attempt of a delivery ``age`` old: as long as it
    has waited so far (so the waits double), between 30 s and an hour."""
    return min(max(age, BACKOFF_FIRST), BACKOFF_MAX)


# --- expansion ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Waiting:
    """What a sender's pass has to do, found with one read."""

    events: bool  # pending events to expand
    due: bool  # deliveries due to be sent
    stale: bool  # deliveries whose sender is gone

    def __bool__(self) -> bool:
        return self.events or self.due or self.stale


def _due(now: datetime, skip_subscriptions=()):
    due = [EventDelivery.status == QUEUED, EventDelivery.next_attempt_at <= now]
    if skip_subscriptions:
        due.append(EventDelivery.subscription_id.not_in(list(skip_subscriptions)))
    return due


def _stale(now: datetime, older_than: timedelta):
    return [EventDelivery.status == SENDING, EventDelivery.attempt_started_at < now - older_than]


def waiting(db: Database, *, now: datetime, older_than: timedelta = STALE_AFTER) -> Waiting:
    """Is there anything to do? One read of three indexed EXISTS: what a pass
    costs when there is nothing (no subscription, or everything delivered)."""
    with db.reads() as session:
        row = session.execute(select(
            exists().where(Event.status == PENDING),
            exists().where(*_due(now)),
            exists().where(*_stale(now, older_than)))).one()
    return Waiting(*(bool(value) for value in row))


def expand_pending(db: Database, *, now: datetime, limit: int = 500) -> int:
    """Turn up to ``limit`` pending events into deliveries, in one transaction;
    how many events were expanded."""
    with db.transaction() as session:
        events = session.execute(
            select(Event.id, Event.study_id, Event.type, Event.ordering_key, Event.data,
                   Event.unblinded)
            .where(Event.status == PENDING).order_by(Event.id).limit(limit)
            .with_for_update(skip_locked=True)).all()
        if not events:
            return 0
        studies = {event.study_id for event in events}
        subscriptions = session.execute(
            select(WebhookSubscription.id, WebhookSubscription.study_id,
                   WebhookSubscription.event_types)
            .where(WebhookSubscription.study_id.in_(studies),
                   WebhookSubscription.removed_at.is_(None))).all()
        rows = [{"study_id": event.study_id, "event_id": event.id,
                 "subscription_id": subscription.id, "ordering_key": event.ordering_key,
                 "status": QUEUED, "attempts": 0, "next_attempt_at": now, "created_at": now,
                 "updated_at": now}
                for event in events for subscription in subscriptions
                if subscription.study_id == event.study_id
                and event.type in (subscription.event_types or ())]
        if rows:
            session.execute(_insert_new(session), rows)
        _mark_expanded(session, events)
        return len(events)


def _insert_new(session: Session):
    """An INSERT of deliveries that skips those made already (the unique pair)."""
    table = EventDelivery.__table__
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing(index_elements=["event_id", "subscription_id"])


def _kit_numbers(event) -> list[str]:
    """The kit numbers a kit event names (a shipment's ``kits`` is a count)."""
    if event.type == KIT_DISPENSED:
        return [str(number) for number in event.data.get("kits") or ()]
    if event.type == KIT_CONFIRMED and event.data.get("kit"):
        return [str(event.data["kit"])]
    return []


def _mark_expanded(session: Session, events) -> None:
    """``expanded``, with the kits' types and lots added to the unblinded part."""
    wanted = {(event.study_id, number) for event in events for number in _kit_numbers(event)}
    facts: dict[tuple[int, str], tuple[str, str]] = {}
    if wanted:
        studies = {study_id for study_id, _ in wanted}
        numbers = {number for _, number in wanted}
        facts = {(study_id, number): (kit_type, lot) for study_id, number, kit_type, lot in
                 session.execute(
                     select(Kit.study_id, Kit.kit_number, KitType.code, Lot.code)
                     .join(KitType, KitType.id == Kit.kit_type_id)
                     .join(Lot, Lot.id == Kit.lot_id)
                     .where(Kit.study_id.in_(studies), Kit.kit_number.in_(numbers)))}
    plain, enriched = [], []
    for event in events:
        kits = [n for n in _kit_numbers(event) if (event.study_id, n) in facts]
        if not kits:
            plain.append(event.id)
            continue
        enriched.append({"event": event.id, "facts": {
            **(event.unblinded or {}),
            "kit_types": {n: facts[event.study_id, n][0] for n in kits},
            "lots": {n: facts[event.study_id, n][1] for n in kits}}})
    table = Event.__table__
    if plain:
        session.execute(update(table).where(table.c.id.in_(plain)).values(status=EXPANDED))
    if enriched:
        session.execute(update(table).where(table.c.id == bindparam("event"))
                        .values(status=EXPANDED, unblinded=bindparam("facts")), enriched)


# --- claiming ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimedEvent:
    """A delivery one sender holds: its attempt number names the attempt."""

    id: int
    study_id: int
    event_id: int
    subscription_id: int
    url: str
    secret: str = field(repr=False)
    attempt: int = 1
    attempt_started_at: datetime | None = None
    created_at: datetime | None = None
    body: dict[str, Any] = field(default_factory=dict, repr=False)  # the JSON message

    @property
    def webhook_id(self) -> str:
        return webhook_id(self.event_id)


def _unblocked():
    """No earlier event of the delivery's ordering key still waits for its
    subscription: neither a delivery queued or being sent, nor an event not
    yet expanded."""
    earlier = aliased(EventDelivery)
    unexpanded = aliased(Event)
    return ~exists().where(
        earlier.subscription_id == EventDelivery.subscription_id,
        earlier.ordering_key == EventDelivery.ordering_key,
        earlier.event_id < EventDelivery.event_id,
        earlier.status.in_(WAITING)) & ~exists().where(
        unexpanded.status == PENDING,
        unexpanded.study_id == EventDelivery.study_id,
        unexpanded.ordering_key == EventDelivery.ordering_key,
        unexpanded.id < EventDelivery.event_id)


def claim_next(db: Database, *, now: datetime,
               skip_subscriptions: frozenset[int] | set[int] = frozenset()
               ) -> ClaimedEvent | None:
    """Claim the next due delivery (``queued`` -> ``sending``) and commit; None
    when nothing is due. Deliveries of ``skip_subscriptions`` are left (a sender
    does not try a receiver again in a pass in which it has just failed)."""
    due = _due(now, skip_subscriptions)
    with db.reads() as session:  # the common case, nothing due, without a write lock
        if session.scalar(select(EventDelivery.id).where(*due).limit(1)) is None:
            return None
    with db.transaction() as session:
        row = session.execute(
            select(EventDelivery.id, EventDelivery.study_id, EventDelivery.event_id,
                   EventDelivery.subscription_id, EventDelivery.attempts,
                   EventDelivery.created_at, Event.type, Event.occurred_at, Event.data,
                   Event.unblinded, WebhookSubscription.url, WebhookSubscription.secret,
                   WebhookSubscription.role, Study.code.label("study"))
            .join(Event, Event.id == EventDelivery.event_id)
            .join(WebhookSubscription, WebhookSubscription.id == EventDelivery.subscription_id)
            .join(Study, Study.id == EventDelivery.study_id)
            .where(*due, WebhookSubscription.removed_at.is_(None), _unblocked())
            .order_by(EventDelivery.next_attempt_at, EventDelivery.event_id).limit(1)
            .with_for_update(of=EventDelivery, skip_locked=True)).first()
        if row is None:
            return None
        # Conditional, so that even a row someone else moved is never claimed twice.
        claimed = session.execute(
            update(EventDelivery)
            .where(EventDelivery.id == row.id, EventDelivery.status == QUEUED)
            .values(status=SENDING, attempts=EventDelivery.attempts + 1,
                    attempt_started_at=now, updated_at=now)
            .execution_options(synchronize_session=False)).rowcount
        if claimed != 1:  # cannot happen under the row lock; never loop on it
            log.error("event delivery %s could not be claimed although locked", row.id)
            return None
        body = message(event_id=row.event_id, kind=row.type, occurred_at=row.occurred_at,
                       study=row.study, data=row.data or {}, unblinded=row.unblinded,
                       blinded=row.role not in UNBLINDED_ROLES)
        return ClaimedEvent(row.id, row.study_id, row.event_id, row.subscription_id, row.url,
                            row.secret, row.attempts + 1, now, as_utc(row.created_at), body)


# --- outcomes ----------------------------------------------------------------------------


def record_delivered(db: Database, claimed: ClaimedEvent, status: int, *,
                     now: datetime) -> bool:
    """The receiver answered 2xx. Also applied to a row put back in the queue
    since (it need not go again); False when it had been recorded already."""
    with db.transaction() as session:
        done = session.execute(
            update(EventDelivery)
            .where(EventDelivery.id == claimed.id, EventDelivery.status.in_(WAITING))
            .values(status=DELIVERED, last_status=status, error=None, delivered_at=now,
                    updated_at=now)
            .execution_options(synchronize_session=False)).rowcount
        return done == 1


def record_retry(db: Database, claimed: ClaimedEvent, *, now: datetime,
                 last_status: int | None = None, error: str | None = None) -> str | None:
    """The attempt failed (``last_status``: the receiver's HTTP status; ``error``:
    what went wrong, ``timeout``, ``connection_error``, ``http_500``): back to the
    queue after the wait, or ``failed`` 24 hours after the delivery's creation.
    The new status; None when the attempt was no longer the delivery's."""
    with db.transaction() as session:
        delivery = session.scalars(select(EventDelivery).where(
            EventDelivery.id == claimed.id).with_for_update()).one()
        if delivery.status != SENDING or delivery.attempts != claimed.attempt:
            log.warning("event delivery %s: outcome of attempt %d ignored, the delivery is %s "
                        "(attempt %d)", delivery.id, claimed.attempt, delivery.status,
                        delivery.attempts)
            return None
        return _retry(session, delivery, now, last_status, error)


def _retry(session: Session, delivery: EventDelivery, now: datetime, last_status: int | None,
           error: str | None) -> str:
    delivery.last_status, delivery.error, delivery.updated_at = last_status, error, now
    age = now - as_utc(delivery.created_at)
    if age < GIVE_UP_AFTER:
        delivery.status = QUEUED
        delivery.next_attempt_at = now + retry_wait(age)
        return QUEUED
    delivery.status = FAILED
    log.error("event delivery %s (%s to subscription %s): given up after %d attempts in %s "
              "(%s)", delivery.id, webhook_id(delivery.event_id), delivery.subscription_id,
              delivery.attempts, age, error or last_status)
    audit = AuditLog(delivery.study_id, SENDER_ACTOR)
    audit.record("webhook_failed", "event_delivery", delivery.id, reason=GIVEN_UP,
                 old={"status": SENDING},
                 new={"status": FAILED, "event": webhook_id(delivery.event_id),
                      "subscription": delivery.subscription_id, "attempts": delivery.attempts,
                      "last_status": last_status, "error": error})
    audit.seal(session)
    return FAILED


def requeue_stale(db: Database, *, now: datetime, older_than: timedelta = STALE_AFTER,
                  limit: int = 100) -> dict[str, int]:
    """Deliveries left ``sending`` since before ``now - older_than`` (their sender
    died): a failed attempt each, back in the queue or given up. Counts by new
    status."""
    stale = _stale(now, older_than)
    counts: dict[str, int] = {}
    with db.transaction() as session:
        for delivery in session.scalars(select(EventDelivery).where(*stale)
                                        .order_by(EventDelivery.id).limit(limit)
                                        .with_for_update(skip_locked=True)):
            log.warning("event delivery %s: attempt %d has had no outcome since %s; its sender "
                        "is gone", delivery.id, delivery.attempts,
                        as_utc(delivery.attempt_started_at).isoformat(timespec="seconds"))
            status = _retry(session, delivery, now, delivery.last_status, SENDER_LOST)
            counts[status] = counts.get(status, 0) + 1
    return counts

