"""The outbox: notifications for people, written in the transaction that caused them.

A notification is a row (``Notification``) with a kind, an audience
(``role:depot_manager``, ``site:101``, ``user:5001``), a prompt id and its
parameters. It is written in the same transaction as the change it reports, so
a rolled-back change never notifies anyone and a committed one always does.
With Twilio or SMTP_URL configured a sender (``ivrs.outbound.notify``,
``ivrs.outbound.email``) expands each pending row into one delivery per
recipient and channel (``core.deliveries``; the row becomes ``expanded``) and
sends those of its channel; with neither the rows stay ``pending`` here and
``ivrs outbox`` lists them with the text each recipient would get.

Each notification has a ``key``: writing the same key twice is a no-op, which
is how jobs that run every day (expiry warnings, depot shortages) notify once.
Parameters must never carry an arm or a kit type outside the unblinded
``kit_type`` key: audiences are blinded people.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.audit import AuditLog
from core.models import Notification

PENDING = "pending"
EXPANDED = "expanded"  # turned into deliveries (core.deliveries): the sender has it


def notify(session: Session, audit: AuditLog | None, study_id: int, *, key: str, kind: str,
           audience: str, params: dict[str, Any], message_id: str | None = None
           ) -> Notification | None:
    """Queue one notification unless its key was already used; returns it (or None)."""
    existing = session.scalar(select(Notification.id).where(
        Notification.study_id == study_id, Notification.key == key))
    if existing is not None:
        return None
    notification = Notification(study_id=study_id, key=key, kind=kind, audience=audience,
                                message_id=message_id or kind, params=params, status=PENDING)
    session.add(notification)
    session.flush()
    if audit is not None:
        audit.record("notification_queued", "notification", key,
                     new={"kind": kind, "audience": audience, "params": params})
    return notification


def list_notifications(session: Session, study_id: int, *, include_sent: bool = False,
                       kind: str | None = None) -> list[Notification]:
    """The study's notifications, oldest first (only pending ones, not yet handed to
    the sender, by default)."""
    query = select(Notification).where(Notification.study_id == study_id)
    if not include_sent:
        query = query.where(Notification.status == PENDING)
    if kind is not None:
        query = query.where(Notification.kind == kind)
    return list(session.scalars(query.order_by(Notification.id)))


def pending_notifications(session: Session, study_id: int) -> list[Notification]:
    """What the sender still has to send."""
    return list_notifications(session, study_id)
