"""The tables of the doors for other systems (SPEC §10): API clients and their
requests, eligibility answers an EDC records, and the event stream with its
subscriptions and deliveries.

Tokens and idempotency keys are stored as SHA-256 digests or as given, never
a token itself. A webhook's signing secret must be kept as is (every delivery
is signed with it), so it is as sensitive as the database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, Timestamp, _now


class ApiClient(Base):
    """A system that calls ``/api/v1`` (an EDC, a CTMS): a role and its sites,
    like a user's, and one bearer token, shown once and stored as its digest."""

    __tablename__ = "api_clients"
    __table_args__ = (UniqueConstraint("study_id", "name"), UniqueConstraint("token_digest"))

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    name: Mapped[str] = mapped_column(String(60))
    role: Mapped[str] = mapped_column(String(40))
    # Site codes the client acts at (site roles only; empty: every site).
    sites: Mapped[list[Any]] = mapped_column(default=list)
    token_digest: Mapped[str] = mapped_column(String(64))
    # The token's first characters, so that an operator can tell tokens apart.
    token_hint: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    created_by: Mapped[str] = mapped_column(String(60))
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)


class ApiRequest(Base):
    """A POST taken under an ``Idempotency-Key``: its body's digest and the
    answer it got, so that a retry gets that answer and another body a 409."""

    __tablename__ = "api_requests"
    __table_args__ = (UniqueConstraint("client_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("api_clients.id"))
    key: Mapped[str] = mapped_column(String(200))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(300))
    body_digest: Mapped[str] = mapped_column(String(64))
    status: Mapped[int]
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)


class EligibilityAnswer(Base):
    """One eligibility criterion of one subject, as the EDC recorded it
    (``randomization.eligibility_source: edc``). A later answer replaces it
    until the subject is randomized; every change is audited."""

    __tablename__ = "eligibility_answers"
    __table_args__ = (UniqueConstraint("subject_id", "question"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id"))
    question: Mapped[str] = mapped_column(String(40))
    met: Mapped[bool] = mapped_column(Boolean)
    recorded_by: Mapped[str] = mapped_column(String(60))
    recorded_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)


class Event(Base):
    """Something that happened, for outside systems (``subject.randomized`` ...),
    written in the transaction that did it: a rolled-back change has no event.

    ``data`` is what any subscriber may read; ``unblinded`` (arm, kit types,
    lots) is added only for a subscription of an unblinded role. ``ordering_key``
    (``subject:1010001``, ``shipment:12``) is what deliveries keep in order.
    """

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_status_id", "status", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    type: Mapped[str] = mapped_column(String(40))
    ordering_key: Mapped[str] = mapped_column(String(60))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    unblinded: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    occurred_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    # pending: not yet turned into deliveries; expanded: it has been
    status: Mapped[str] = mapped_column(String(20), default="pending")


class WebhookSubscription(Base):
    """An URL that receives some event types, signed with its own secret
    (Standard Webhooks); blinded unless made for an unblinded role."""

    __tablename__ = "webhook_subscriptions"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[Any]] = mapped_column(default=list)
    role: Mapped[str] = mapped_column(String(40))
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    created_by: Mapped[str] = mapped_column(String(60))
    removed_at: Mapped[datetime | None] = mapped_column(Timestamp)


class EventDelivery(Base):
    """One event to one subscription: the durable queue row the webhook sender
    works from, with the same states as an SMS delivery (``queued`` ->
    ``sending`` -> ``sent`` | ``failed``)."""

    __tablename__ = "event_deliveries"
    __table_args__ = (UniqueConstraint("event_id", "subscription_id"),
                      Index("ix_event_deliveries_status_next_attempt_at",
                            "status", "next_attempt_at"),
                      Index("ix_event_deliveries_subscription_id_ordering_key",
                            "subscription_id", "ordering_key"))

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id"))
    subscription_id: Mapped[int] = mapped_column(ForeignKey("webhook_subscriptions.id"))
    ordering_key: Mapped[str] = mapped_column(String(60))
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(Timestamp)
    attempt_started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # the receiver's last HTTP status, or what went wrong without one ("timeout")
    last_status: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    delivered_at: Mapped[datetime | None] = mapped_column(Timestamp)
