"""Supply tables: kit types, lots, kits, shipments, site supply settings, subject
visits, returns, the notification outbox and its deliveries. Every row belongs
to a study.

A kit is in exactly one status and one place at a time: ``depot_id`` while at
(or back at) a depot, ``shipment_id`` while reserved for or travelling in a
shipment, ``site_id`` once received, ``subject_id`` once assigned. The status
moves only through ``core.supply.lifecycle``.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Boolean, Date, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.models.base import Base, Timestamp, _now

if TYPE_CHECKING:
    from core.models.trial import Study


class KitType(Base):
    __tablename__ = "kit_types"
    __table_args__ = (UniqueConstraint("study_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    code: Mapped[str] = mapped_column(String(20))
    # Unblinded: which arm the kit type treats. Never shown to a blinded role.
    arm_id: Mapped[int] = mapped_column(ForeignKey("arms.id"))


class Lot(Base):
    __tablename__ = "lots"
    __table_args__ = (UniqueConstraint("study_id", "kit_type_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    kit_type_id: Mapped[int] = mapped_column(ForeignKey("kit_types.id"))
    code: Mapped[str] = mapped_column(String(40))
    expiry_date: Mapped[date] = mapped_column(Date)


class Kit(Base):
    __tablename__ = "kits"
    __table_args__ = (
        UniqueConstraint("study_id", "kit_number"),
        # picking: a place's kits of a type in a status, earliest expiry first
        # (kit number breaks ties, so the index serves the whole ORDER BY)
        Index(None, "site_id", "status", "kit_type_id", "expiry_date", "kit_number"),
        Index(None, "depot_id", "status", "kit_type_id", "expiry_date", "kit_number"),
        # a user's kits awaiting a kit-number confirmation (every SMS KIT asks)
        Index("ix_kits_study_id_assigned_by_status", "study_id", "assigned_by", "status"),
        # the dashboard's expiring kits: a study's unused kits by expiry (a few
        # statuses, a date range; not the dispensed kits, most of the table)
        Index("ix_kits_study_id_status_expiry_date", "study_id", "status", "expiry_date"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    kit_number: Mapped[str] = mapped_column(String(20))
    kit_type_id: Mapped[int] = mapped_column(ForeignKey("kit_types.id"))
    lot_id: Mapped[int] = mapped_column(ForeignKey("lots.id"), index=True)
    expiry_date: Mapped[date] = mapped_column(Date)  # the lot's, kept here for ordering
    status: Mapped[str] = mapped_column(String(24))
    depot_id: Mapped[int | None] = mapped_column(ForeignKey("depots.id"))
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"))
    shipment_id: Mapped[int | None] = mapped_column(ForeignKey("shipments.id"), index=True)
    subject_id: Mapped[int | None] = mapped_column(ForeignKey("subjects.id"), index=True)
    visit_code: Mapped[str | None] = mapped_column(String(20))
    assigned_at: Mapped[datetime | None] = mapped_column(Timestamp)
    assigned_by: Mapped[str | None] = mapped_column(String(40))
    confirmed_at: Mapped[datetime | None] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)


class Shipment(Base):
    __tablename__ = "shipments"
    __table_args__ = (UniqueConstraint("study_id", "shipment_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    shipment_number: Mapped[str] = mapped_column(String(20))
    depot_id: Mapped[int] = mapped_column(ForeignKey("depots.id"))
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    # requested -> dispatched -> received; or cancelled before dispatch
    status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(String(20))  # initial | resupply | urgent | indent
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    created_by: Mapped[str | None] = mapped_column(String(40))
    carrier: Mapped[str | None] = mapped_column(String(100))
    tracking_number: Mapped[str | None] = mapped_column(String(100))
    dispatched_on: Mapped[date | None] = mapped_column(Date)
    received_at: Mapped[datetime | None] = mapped_column(Timestamp)
    received_by: Mapped[str | None] = mapped_column(String(40))
    temperature_excursion: Mapped[bool] = mapped_column(Boolean, default=False)
    logger_data: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ShipmentKit(Base):
    """Which kits a shipment carried and what became of each on receipt."""

    __tablename__ = "shipment_kits"

    shipment_id: Mapped[int] = mapped_column(ForeignKey("shipments.id"), primary_key=True)
    kit_id: Mapped[int] = mapped_column(ForeignKey("kits.id"), primary_key=True)
    outcome: Mapped[str | None] = mapped_column(String(20))  # received | damaged | missing | quarantined


class SiteSupply(Base):
    """Per site and kit type resupply levels, overriding the study's defaults."""

    __tablename__ = "site_supply"
    __table_args__ = (UniqueConstraint("site_id", "kit_type_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    kit_type_id: Mapped[int] = mapped_column(ForeignKey("kit_types.id"))
    trigger: Mapped[int]
    target: Mapped[int]


class SubjectVisit(Base):
    """A visit that happened (kits dispensed) or was missed (window passed)."""

    __tablename__ = "subject_visits"
    __table_args__ = (UniqueConstraint("subject_id", "visit_code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id"))
    visit_code: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))  # done | missed
    due_on: Mapped[date] = mapped_column(Date)
    window_start: Mapped[date] = mapped_column(Date)
    window_end: Mapped[date] = mapped_column(Date)
    occurred_on: Mapped[date | None] = mapped_column(Date)
    out_of_window: Mapped[bool] = mapped_column(Boolean, default=False)
    schedule_version: Mapped[int] = mapped_column(default=1)
    recorded_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    recorded_by: Mapped[str | None] = mapped_column(String(40))


class KitReturn(Base):
    """Kits a site sends back: declared -> approved (or rejected) -> received -> destroyed."""

    __tablename__ = "kit_returns"
    __table_args__ = (UniqueConstraint("study_id", "return_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    return_number: Mapped[str] = mapped_column(String(20))
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    depot_id: Mapped[int] = mapped_column(ForeignKey("depots.id"))
    status: Mapped[str] = mapped_column(String(20))
    declared_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    declared_by: Mapped[str | None] = mapped_column(String(40))
    decided_at: Mapped[datetime | None] = mapped_column(Timestamp)
    decided_by: Mapped[str | None] = mapped_column(String(40))
    reason: Mapped[str | None] = mapped_column(Text)


class ReturnKit(Base):
    __tablename__ = "return_kits"

    return_id: Mapped[int] = mapped_column(ForeignKey("kit_returns.id"), primary_key=True)
    kit_id: Mapped[int] = mapped_column(ForeignKey("kits.id"), primary_key=True)
    status_before: Mapped[str] = mapped_column(String(24))


class Notification(Base):
    """The outbox: messages for people, written in the transaction that caused them.

    With Twilio or SMTP_URL configured a sender expands them into ``Delivery``
    rows, one per recipient and channel (``pending`` -> ``expanded``), and sends
    those of its channel; with neither they stay here (``ivrs outbox``). ``key``
    makes each notification happen once.
    """

    __tablename__ = "notifications"
    __table_args__ = (UniqueConstraint("study_id", "key"),
                      # the sender's "oldest pending" without reading what was sent
                      Index("ix_notifications_status_id", "status", "id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    key: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(40))  # expiry_warning | shipment_dispatched | ...
    audience: Mapped[str] = mapped_column(String(60))  # "role:depot_manager", "user:5001", "site:101"
    message_id: Mapped[str] = mapped_column(String(60))  # prompt id in locales/
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    sent_at: Mapped[datetime | None] = mapped_column(Timestamp)

    # for the senders' texts (an e-mail's subject names the study)
    study: Mapped[Study] = relationship()


class Delivery(Base):
    """One outbound message to one user on one channel: the durable queue row the
    senders work from.

    A sender (``ivrs.outbound.notify`` for SMS, ``ivrs.outbound.email`` for
    e-mail) expands a notification into one delivery per recipient and channel
    (``sms`` to ``to_phone``, ``email`` to ``to_email`` with a ``subject``),
    with the text rendered in the recipient's language and stored, so that what
    was sent is on record. ``status`` moves forward only: ``queued`` ->
    ``sending`` (claimed by one sender, the request may be under way) -> ``sent``
    (Twilio or the mail server accepted it; ``provider_sid``: Twilio's message
    sid, or the e-mail's Message-ID without its domain) -> ``delivered`` |
    ``undelivered`` | ``failed`` (SMS status callbacks); ``failed`` also when
    the provider refused it or the retries ran out, ``opted_out`` when the
    recipient opted out of SMS (never sent). See ``core.deliveries``.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("notification_id", "user_id", "channel"),
        # Twilio's message sid; NULL until sent (NULLs never collide).
        UniqueConstraint("provider_sid"),
        # the sender's question: what is queued and due now
        Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    notification_id: Mapped[int] = mapped_column(ForeignKey("notifications.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    channel: Mapped[str] = mapped_column(String(10), default="sms", server_default="sms")
    to_phone: Mapped[str | None] = mapped_column(String(32))  # channel sms
    to_email: Mapped[str | None] = mapped_column(String(254))  # channel email
    language: Mapped[str] = mapped_column(String(10))
    subject: Mapped[str | None] = mapped_column(Text)  # channel email
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # when the current (or last) attempt was claimed: a delivery left ``sending``
    # long after this is reconciled against Twilio's message list (SMS) or queued
    # again (e-mail)
    attempt_started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    provider_sid: Mapped[str | None] = mapped_column(String(64))
    error_code: Mapped[str | None] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    sent_at: Mapped[datetime | None] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)

