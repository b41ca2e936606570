"""Deliveries: the outbox's notifications as one durable queue row per recipient
and channel.

A notification (``core.supply.outbox``) names an audience; a sender turns it
into ``Delivery`` rows, one per user who should get it and channel they are
reached on, and then works from those rows alone. This module is the database
side of that work, free of Twilio and SMTP: who the recipients are, the
expansion, the claim of one due delivery, and every outcome a sender or a
status callback records. ``ivrs.outbound.notify`` does the talking to Twilio,
``ivrs.outbound.email`` to the mail server.

Channels: ``sms`` for a user with a phone, ``email`` for a user with an
e-mail address; a user with both gets both. Whichever sender runs first
expands a notification for every channel; a delivery of a channel whose
sender is not configured simply waits ``queued`` (it is that channel's
outbox, and ``ivrs outbox`` lists it), and each sender claims only its own
channel's rows.

Why a row per recipient and channel: each message has its own attempts,
backoff, provider id and delivery status, and the unique (notification, user,
channel) triple makes the expansion idempotent, so a notification reaches a
user at most once per channel whatever runs twice.

Never twice: a delivery is *claimed* (``queued`` -> ``sending``, attempts + 1)
in a transaction of its own that commits before the request to Twilio leaves.
Only a row still ``queued`` can be claimed, and on PostgreSQL the candidate
row is locked with ``FOR UPDATE SKIP LOCKED``, so parallel senders (several
servers, a by-hand ``ivrs outbox send``) never claim one row twice; SQLite
serializes writers with ``BEGIN IMMEDIATE``. Every outcome names the attempt
it is about (the attempts count at claim time) and changes nothing when the
row has moved on since, so a late outcome cannot undo a newer one.

A kit-confirmation request or reminder whose kits were all confirmed while it
waited (Twilio down or not yet configured) is expanded to nobody: it would ask
for what is done (``core.supply.confirmation.awaits_confirmation``). The same
is checked again when a delivery of one is claimed: one that waited in the
queue meanwhile (its sender down or not configured, a retry's backoff) is
``withdrawn``, never sent.

Opt-out: a user who opted out (SMS ``STOP``, or Twilio's error 21610) gets an
SMS delivery in status ``opted_out`` that is never sent; the check is made at
expansion and again at claim time, so a STOP that arrives in between wins.
It is an opt-out of our SMS number: e-mail still goes to the user's address.

Blinding and privacy: audit rows name the delivery, its channel, the
notification key, the recipient's user code, the provider id and error codes;
never the text, the address, a kit type or an arm.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from core.audit import AuditLog
from core.clock import as_utc
from core.db import Database
from core.models import Delivery, Notification, Site, User, UserSite
from core.supply.confirmation import awaits_confirmation
from core.supply.outbox import EXPANDED, PENDING

log = logging.getLogger("core.deliveries")

QUEUED = "queued"
SENDING = "sending"
SENT = "sent"
DELIVERED = "delivered"
UNDELIVERED = "undelivered"
FAILED = "failed"
OPTED_OUT = "opted_out"
WITHDRAWN = "withdrawn"  # no longer needed when its turn came (see the module docstring)
# A status moves to a higher rank only: a late "sent" callback after
# "delivered" changes nothing, and no final status is ever left.
RANK = {QUEUED: 0, SENDING: 1, SENT: 2, DELIVERED: 3, UNDELIVERED: 3, FAILED: 3, OPTED_OUT: 3,
        WITHDRAWN: 3}
WAITING = (QUEUED, SENDING)

SMS = "sms"
EMAIL = "email"
CHANNELS = (SMS, EMAIL)

SENDER_ACTOR = "system:sender"
MESSAGING_ACTOR = "system:messaging"
NO_TEXT = "no_text"
RETRIES_EXHAUSTED = "retries_exhausted"
OPTED_OUT_CODE = "21610"  # Twilio: "Attempt to send to unsubscribed recipient"

# Backoff after a failed attempt that certainly sent nothing: 30 s, 1 min,
# 2 min ... at most an hour; the 8th failed attempt is final.
BACKOFF_FIRST = timedelta(seconds=30)
BACKOFF_MAX = timedelta(hours=1)
MAX_ATTEMPTS = 8


def backoff(attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failed attempt (1-based)."""
    return min(BACKOFF_FIRST * 2 ** max(attempts - 1, 0), BACKOFF_MAX)


# --- who gets a notification -------------------------------------------------------------


def audience_users(session: Session, study_id: int, audience: str) -> list[User]:
    """The active users with a phone or an e-mail address that ``audience``
    names, by user code (``channels`` says on which channels each is reached).

    ``user:<code>`` one user, ``role:<role>`` every user of that role,
    ``site:<code>`` every user linked to that site (``site:<code>:<role>``
    those of one role). Opted-out users are
    included (the caller decides what they get); an audience of another
    shape names nobody and is logged.
    """
    kind, _, name = audience.partition(":")
    reachable = or_(and_(User.phone.is_not(None), User.phone != ""),
                    and_(User.email.is_not(None), User.email != ""))
    query = select(User).where(User.study_id == study_id, User.active.is_(True), reachable)
    if kind == "user":
        query = query.where(User.user_code == name)
    elif kind == "role":
        query = query.where(User.role == name)
    elif kind == "site":
        # site:<code> everyone at the site; site:<code>:<role> that role only
        name, _, role = name.partition(":")
        query = (query.join(UserSite, UserSite.user_id == User.id)
                 .join(Site, Site.id == UserSite.site_id)
                 .where(Site.study_id == study_id, Site.code == name))
        if role:
            query = query.where(User.role == role)
    else:
        log.warning("notification audience %r names nobody: expected user:, role: or site:",
                    audience)
        return []
    return list(session.scalars(query.order_by(User.user_code)))


def channels(user: User) -> list[str]:
    """The channels ``user`` is reached on: SMS with a phone (opted out or not:
    the caller decides), e-mail with an address."""
    return [channel for channel, address in ((SMS, user.phone), (EMAIL, user.email))
            if address]


def address(user: User, channel: str) -> str | None:
    return user.phone if channel == SMS else user.email


# --- expansion ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    """What one recipient gets on one channel ("" when the message has no text)."""

    body: str
    subject: str | None = None  # e-mail only


# (notification, recipient, channel) -> the text; ``notification.study`` is loaded.
Render = Callable[[Notification, User, str], Rendered]


@dataclass(frozen=True)
class Expansion:
    notifications: int = 0  # notifications expanded
    # deliveries made, by (channel, status): queued (waiting to be sent), opted_out
    # (never sent: the user opted out of SMS), failed (no text to send)
    made: Mapping[tuple[str, str], int] = field(default_factory=dict)

    def count(self, status: str, channel: str | None = None) -> int:
        return sum(n for (c, s), n in self.made.items()
                   if s == status and channel in (None, c))

    @property
    def queued(self) -> int:
        return self.count(QUEUED)

    @property
    def opted_out(self) -> int:
        return self.count(OPTED_OUT)

    @property
    def failed(self) -> int:
        return self.count(FAILED)


def expand_pending(db: Database, render: Render, *, now: datetime,
                   limit: int = 100) -> Expansion:
    """Turn up to ``limit`` pending notifications into deliveries, one per
    recipient and channel (``pending`` -> ``expanded``), each notification in a
    transaction of its own. ``render`` gives the text a user gets on a channel;
    an empty text makes a ``failed`` delivery (``no_text``), never an empty
    message."""
    made: dict[tuple[str, str], int] = defaultdict(int)
    notifications = 0
    for _ in range(limit):
        with db.transaction() as session:
            notification = session.scalars(
                select(Notification).where(Notification.status == PENDING)
                .order_by(Notification.id).limit(1).with_for_update(skip_locked=True)).first()
            if notification is None:
                break
            for key, count in _expand(session, notification, render, now).items():
                made[key] += count
            notifications += 1
    return Expansion(notifications, dict(made))


def _expand(session: Session, notification: Notification, render: Render,
            now: datetime) -> dict[tuple[str, str], int]:
    audit = AuditLog(notification.study_id, SENDER_ACTOR)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    if not awaits_confirmation(session, notification.study_id, notification.kind,
                               notification.params or {}):
        notification.status = EXPANDED
        audit.record("notification_expanded", "notification", notification.key,
                     new={"recipients": []}, reason="the kits it asks about are confirmed")
        audit.seal(session)
        return {}
    recipients = audience_users(session, notification.study_id, notification.audience)
    by_email = []
    for user in recipients:
        for channel in channels(user):
            # kept also when unsent: what they would have got
            text = render(notification, user, channel)
            if channel == SMS and user.opted_out:
                status, error = OPTED_OUT, None
            elif not text.body.strip():
                status, error = FAILED, NO_TEXT
                log.error("notification %s: message %s has no text for user %s (%s, %s): "
                          "not sent", notification.key, notification.message_id,
                          user.user_code, user.language, channel)
            else:
                status, error = QUEUED, None
            delivery = Delivery(study_id=notification.study_id, notification_id=notification.id,
                                user_id=user.id, channel=channel,
                                to_phone=user.phone if channel == SMS else None,
                                to_email=user.email if channel == EMAIL else None,
                                language=user.language, subject=text.subject, body=text.body,
                                status=status, attempts=0, next_attempt_at=now,
                                error_code=error, created_at=now, updated_at=now)
            session.add(delivery)
            session.flush()
            counts[channel, status] += 1
            if channel == EMAIL:
                by_email.append(user.user_code)
            if status == OPTED_OUT:
                audit.record("message_opted_out", "delivery", delivery.id,
                             new={"notification": notification.key, "user": user.user_code,
                                  "channel": channel})
            elif status == FAILED:
                audit.record("message_failed", "delivery", delivery.id,
                             new={"notification": notification.key, "user": user.user_code,
                                  "channel": channel, "error_code": error})
    notification.status = EXPANDED
    expanded = {"recipients": [user.user_code for user in recipients]}
    if by_email:
        expanded["by_email"] = by_email
    audit.record("notification_expanded", "notification", notification.key, new=expanded)
    audit.seal(session)
    return counts


# --- claiming ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """A delivery one sender holds: its attempt number names the attempt."""

    id: int
    study_id: int
    to_phone: str | None
    body: str
    attempt: int
    attempt_started_at: datetime
    channel: str = SMS
    to_email: str | None = None
    subject: str | None = None
    created_at: datetime | None = None


def _claimed(delivery: Delivery, attempt: int, started: datetime) -> Claimed:
    return Claimed(delivery.id, delivery.study_id, delivery.to_phone, delivery.body, attempt,
                   started, delivery.channel, delivery.to_email, delivery.subject,
                   as_utc(delivery.created_at))


def claim_next(db: Database, *, now: datetime, channel: str = SMS
               ) -> tuple[Claimed | None, int]:
    """Claim the next due delivery of ``channel`` (``queued`` -> ``sending``) and
    commit; a sender claims only the channel it serves.

    Returns it (None when nothing is due) and how many due SMS deliveries were
    found on the way whose user has opted out since: those become
    ``opted_out`` and are never sent.
    """
    opted_out = 0
    with db.transaction() as session:
        while True:
            row = session.execute(
                select(Delivery, User.opted_out, User.user_code, Notification.kind,
                       Notification.params)
                .join(User, User.id == Delivery.user_id)
                .join(Notification, Notification.id == Delivery.notification_id)
                .where(Delivery.status == QUEUED, Delivery.channel == channel,
                       Delivery.next_attempt_at <= now)
                .order_by(Delivery.next_attempt_at, Delivery.id).limit(1)
                .with_for_update(of=Delivery, skip_locked=True)).first()
            if row is None:
                return None, opted_out
            delivery, user_opted_out, user_code, kind, params = row
            if user_opted_out and channel == SMS:
                _finish(session, delivery, OPTED_OUT, now, user_code=user_code)
                opted_out += 1
                continue
            if not awaits_confirmation(session, delivery.study_id, kind, params or {}):
                log.info("delivery %s: the kits it asks about are confirmed; withdrawn",
                         delivery.id)
                _finish(session, delivery, WITHDRAWN, now, user_code=user_code)
                continue
            # Conditional, so that even a row someone else moved is never claimed twice.
            claimed = session.execute(
                update(Delivery).where(Delivery.id == delivery.id, Delivery.status == QUEUED)
                .values(status=SENDING, attempts=Delivery.attempts + 1,
                        attempt_started_at=now, updated_at=now)
                .execution_options(synchronize_session=False)).rowcount
            if claimed != 1:  # cannot happen under the row lock; never loop on it
                log.error("delivery %s could not be claimed although locked", delivery.id)
                return None, opted_out
            return _claimed(delivery, delivery.attempts + 1, now), opted_out


def stale_sending(db: Database, *, now: datetime, older_than: timedelta,
                  limit: int = 50, channel: str = SMS) -> list[Claimed]:
    """Deliveries of ``channel`` left ``sending`` since before ``now - older_than``:
    their sender died, or did not learn whether the provider took the message."""
    with db.sessions() as session:
        rows = session.scalars(
            select(Delivery).where(Delivery.status == SENDING, Delivery.channel == channel,
                                   Delivery.attempt_started_at < now - older_than)
            .order_by(Delivery.attempt_started_at, Delivery.id).limit(limit))
        return [_claimed(d, d.attempts, as_utc(d.attempt_started_at)) for d in rows]


# --- outcomes ----------------------------------------------------------------------------


def record_sent(db: Database, claimed: Claimed, sid: str, *, now: datetime,
                provider_status: str = SENT, reconciled: bool = False) -> bool:
    """The provider took the message (``sid``: Twilio's message sid, or the
    e-mail's Message-ID without its domain). Also applied to a row put back in
    the queue since (it must not go out again); False if the row had moved on."""
    with db.transaction() as session:
        delivery, user_code = _locked(session, claimed.id)
        if delivery.provider_sid == sid:
            return False  # recorded already (a reconciliation that raced)
        if delivery.status not in WAITING:
            log.error("delivery %s: the provider took message %s, but the delivery is already %s "
                      "(message %s)", delivery.id, sid, delivery.status, delivery.provider_sid)
            return False
        delivery.provider_sid = sid
        delivery.sent_at = now
        status = provider_status if RANK.get(provider_status, 0) > RANK[SENT] else SENT
        _finish(session, delivery, status, now, user_code=user_code, sid=sid,
                reconciled=reconciled)
        return True


def record_retry(db: Database, claimed: Claimed, error_code: str, *, now: datetime) -> str | None:
    """Nothing was sent (Twilio answered 429/5xx, the mail server 4xx, or no
    connection), or an e-mail whose outcome is unknown goes again: back to the
    queue after the backoff, or ``failed`` after the last attempt. Returns the
    new status, None when the attempt was no longer the delivery's."""
    with db.transaction() as session:
        delivery, user_code = _locked(session, claimed.id)
        if not _current(delivery, claimed):
            return None
        if delivery.attempts >= MAX_ATTEMPTS:
            _finish(session, delivery, FAILED, now, user_code=user_code,
                    error_code=RETRIES_EXHAUSTED, last_error=error_code)
            log.error("delivery %s: given up after %d attempts (%s)", delivery.id,
                      delivery.attempts, error_code)
            return FAILED
        delivery.status = QUEUED
        delivery.error_code = error_code
        delivery.next_attempt_at = now + backoff(delivery.attempts)
        delivery.updated_at = now
        return QUEUED


def record_failed(db: Database, claimed: Claimed, error_code: str, *,
                  now: datetime) -> bool:
    """The provider refused the message for good (Twilio: a 4xx other than 429 and
    21610; the mail server: a 5xx)."""
    with db.transaction() as session:
        delivery, user_code = _locked(session, claimed.id)
        if not _current(delivery, claimed):
            return False
        _finish(session, delivery, FAILED, now, user_code=user_code, error_code=error_code)
        return True


def record_recipient_opted_out(db: Database, claimed: Claimed, *, now: datetime) -> bool:
    """Twilio's 21610: the recipient has unsubscribed from our number. The
    delivery is ``opted_out`` and every user with that phone is opted out."""
    with db.transaction() as session:
        delivery, user_code = _locked(session, claimed.id)
        if not _current(delivery, claimed):
            return False
        _finish(session, delivery, OPTED_OUT, now, user_code=user_code,
                error_code=OPTED_OUT_CODE)
        opt_out_phone(session, delivery.to_phone, True, source=f"twilio {OPTED_OUT_CODE}",
                      actor=SENDER_ACTOR)
        return True


# Twilio's MessageStatus -> ours. "queued" .. "sending" there all mean "Twilio has
# it", which is our "sent"; "read" (WhatsApp) is at least delivered.
PROVIDER_STATUSES = {
    "accepted": SENT, "scheduled": SENT, "queued": SENT, "sending": SENT, "sent": SENT,
    "delivered": DELIVERED, "read": DELIVERED, "undelivered": UNDELIVERED,
    "failed": FAILED, "canceled": FAILED,
}


def record_provider_status(db: Database, *, sid: str, provider_status: str,
                           error_code: str | None, now: datetime) -> str | None:
    """A status callback: the delivery with ``sid`` moves forward to the status
    Twilio reports (never backwards). Error 21610 opts the recipient out.
    Returns the new status; None when the sid is unknown or nothing changed."""
    status = PROVIDER_STATUSES.get(provider_status)
    if status is None:
        log.warning("message %s: unknown status %r ignored", sid, provider_status)
        return None
    with db.transaction() as session:
        found = session.execute(
            select(Delivery, User.user_code).join(User, User.id == Delivery.user_id)
            .where(Delivery.provider_sid == sid, Delivery.channel == SMS)
            .with_for_update(of=Delivery)).first()
        if found is None:
            log.info("status %s for message %s, which is none of ours: ignored",
                     provider_status, sid)
            return None
        delivery, user_code = found
        if error_code == OPTED_OUT_CODE:
            status = OPTED_OUT
            opt_out_phone(session, delivery.to_phone, True, source=f"twilio {OPTED_OUT_CODE}",
                          actor=SENDER_ACTOR)
        if RANK[status] <= RANK[delivery.status]:
            return None
        _finish(session, delivery, status, now, user_code=user_code, error_code=error_code)
        return status


def _locked(session: Session, delivery_id: int) -> tuple[Delivery, str]:
    delivery, user_code = session.execute(
        select(Delivery, User.user_code).join(User, User.id == Delivery.user_id)
        .where(Delivery.id == delivery_id).with_for_update(of=Delivery)).one()
    return delivery, user_code


def _current(delivery: Delivery, claimed: Claimed) -> bool:
    """Is the row still in the attempt this outcome is about?"""
    if delivery.status == SENDING and delivery.attempts == claimed.attempt:
        return True
    log.warning("delivery %s: outcome of attempt %d ignored, the delivery is %s (attempt %d)",
                delivery.id, claimed.attempt, delivery.status, delivery.attempts)
    return False


AUDIT_ACTIONS = {SENT: "message_sent", DELIVERED: "message_sent", FAILED: "message_failed",
                 UNDELIVERED: "message_failed", OPTED_OUT: "message_opted_out",
                 WITHDRAWN: "message_withdrawn"}


def _finish(session: Session, delivery: Delivery, status: str, now: datetime, *,
            user_code: str, sid: str | None = None, error_code: str | None = None,
            **details) -> None:
    """Move a delivery to ``status`` and audit it (a status callback's
    ``delivered`` is a fact about the carrier, kept on the row only)."""
    old = delivery.status
    delivery.status = status
    if error_code is not None:
        delivery.error_code = error_code
    delivery.updated_at = now
    if old in WAITING or status in (FAILED, UNDELIVERED, OPTED_OUT, WITHDRAWN):
        values = {"notification_id": delivery.notification_id, "user": user_code,
                  "channel": delivery.channel, "provider_sid": sid or delivery.provider_sid,
                  "error_code": delivery.error_code, **details}
        audit = AuditLog(delivery.study_id, SENDER_ACTOR)
        audit.record(AUDIT_ACTIONS[status], "delivery", delivery.id, old={"status": old},
                     new={"status": status, **{k: v for k, v in values.items() if v}})
        audit.seal(session)


# --- opting out and back in --------------------------------------------------------------


def set_opted_out(db: Database, *, phone: str, opted_out: bool, source: str,
                  study: str | None = None, actor: str = MESSAGING_ACTOR) -> int:
    """Opt every user with ``phone`` out of outbound messages (or back in): in
    one study, or by default in all (an opt-out at the carrier is of our number,
    which every study shares). Audited ``user_opted_out`` / ``user_opted_in``
    with ``source`` ("sms STOP", "twilio 21610"). Returns the number of users
    whose setting changed."""
    with db.transaction() as session:
        study_id = None
        if study is not None:
            from core.studies import study_ref

            study_id = study_ref(session, study).id
        return opt_out_phone(session, phone, opted_out, source=source, actor=actor,
                             study_id=study_id)


def opt_out_phone(session: Session, phone: str, opted_out: bool, *, source: str,
                  actor: str, study_id: int | None = None) -> int:
    """``set_opted_out`` inside the caller's transaction."""
    phone = (phone or "").strip()
    if not phone:
        return 0
    query = select(User).where(User.phone == phone, User.opted_out != opted_out)
    if study_id is not None:
        query = query.where(User.study_id == study_id)
    users = list(session.scalars(query.order_by(User.study_id, User.user_code)
                                 .with_for_update()))
    audits: dict[int, AuditLog] = {}
    for user in users:
        user.opted_out = opted_out
        audit = audits.setdefault(user.study_id, AuditLog(user.study_id, actor))
        audit.record("user_opted_out" if opted_out else "user_opted_in", "user",
                     user.user_code, old={"opted_out": not opted_out},
                     new={"opted_out": opted_out, "source": source})
    for audit in audits.values():
        audit.seal(session)
    return len(users)
