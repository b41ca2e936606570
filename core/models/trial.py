"""The trial's tables (SQLAlchemy 2.x, typed): studies and their design, sites,
users, subjects, randomization, approvals, unblinding, idempotency, the audit trail.

Every record belongs to one study: one deployment hosts many studies (and a
study's UAT copy beside production), and webhooks are routed by dialed number.
Rows that other rows point at by number (users, sites, subjects, list entries)
are unique *within* their study, never globally.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.models.base import Base, Timestamp, _now


# --- study and its configuration -------------------------------------------------


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    languages: Mapped[list[Any]] = mapped_column(default=list)
    eligibility: Mapped[list[Any]] = mapped_column(default=list)
    unblinding_mode: Mapped[str] = mapped_column(String(20), default="investigator")
    # Incremented by every configuration change (see core.study_config).
    config_version: Mapped[int] = mapped_column(default=1, server_default="1")
    # Sections later issues own (kit_types, visits, supply) as loaded, validated.
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)

    arms: Mapped[list[Arm]] = relationship(back_populates="study", order_by="Arm.position")
    events: Mapped[list[RandomizationEvent]] = relationship(
        back_populates="study", order_by="RandomizationEvent.position"
    )


class StudyPhoneNumber(Base):
    """A number sites dial or text; routes a webhook to its study (unique across studies)."""

    __tablename__ = "study_phone_numbers"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)


class Arm(Base):
    __tablename__ = "arms"
    __table_args__ = (UniqueConstraint("study_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    code: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(default=0)

    study: Mapped[Study] = relationship(back_populates="arms")


class RandomizationEvent(Base):
    """One randomization a subject goes through (R1; R2 for a crossover period ...).

    Holds the method and its parameters; ``ratio`` is changeable mid-study.
    """

    __tablename__ = "randomization_events"
    __table_args__ = (UniqueConstraint("study_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    code: Mapped[str] = mapped_column(String(20))
    position: Mapped[int] = mapped_column(default=0)
    method: Mapped[str] = mapped_column(String(20))
    ratio: Mapped[dict[str, Any]] = mapped_column(default=dict)
    stratify_by_site: Mapped[bool] = mapped_column(Boolean, default=False)
    # method parameters: block sizes and seed, minimization p/imbalance/weights
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    caps: Mapped[dict[str, Any]] = mapped_column(default=dict)

    study: Mapped[Study] = relationship(back_populates="events")
    factors: Mapped[list[Factor]] = relationship(
        back_populates="event", order_by="Factor.position", cascade="all, delete-orphan"
    )


class Factor(Base):
    __tablename__ = "factors"
    __table_args__ = (UniqueConstraint("event_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("randomization_events.id"))
    code: Mapped[str] = mapped_column(String(40))
    position: Mapped[int] = mapped_column(default=0)
    weight: Mapped[float] = mapped_column(default=1.0)

    event: Mapped[RandomizationEvent] = relationship(back_populates="factors")
    levels: Mapped[list[FactorLevel]] = relationship(
        back_populates="factor", order_by="FactorLevel.position", cascade="all, delete-orphan"
    )


class FactorLevel(Base):
    __tablename__ = "factor_levels"
    __table_args__ = (UniqueConstraint("factor_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    factor_id: Mapped[int] = mapped_column(ForeignKey("factors.id"))
    code: Mapped[str] = mapped_column(String(40))
    position: Mapped[int] = mapped_column(default=0)

    factor: Mapped[Factor] = relationship(back_populates="levels")


class Depot(Base):
    __tablename__ = "depots"
    __table_args__ = (UniqueConstraint("study_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    code: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(200))
    country: Mapped[str] = mapped_column(String(2))


class Site(Base):
    __tablename__ = "sites"
    __table_args__ = (UniqueConstraint("study_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    code: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(200))
    country: Mapped[str] = mapped_column(String(2))
    language: Mapped[str] = mapped_column(String(10))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    depot_id: Mapped[int | None] = mapped_column(ForeignKey("depots.id"))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Days a shipment takes from the site's depot (resupply plans with it).
    shipping_days: Mapped[int] = mapped_column(default=3, server_default="3")
    # Counter row for subject numbers (site code + 4-digit sequence); updated
    # with UPDATE ... RETURNING so that concurrent screenings never collide.
    last_subject_seq: Mapped[int] = mapped_column(default=0)


class UserSite(Base):
    __tablename__ = "user_sites"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), primary_key=True)


class User(Base):
    __tablename__ = "users"
    # Every text message and call looks its sender up by phone.
    __table_args__ = (UniqueConstraint("study_id", "user_code"),
                      Index("ix_users_study_id_phone", "study_id", "phone"))

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    user_code: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(40))
    phone: Mapped[str | None] = mapped_column(String(32))
    # Notifications by e-mail too (core.fields.email_problem says what is accepted);
    # an SMS opt-out does not stop them.
    email: Mapped[str | None] = mapped_column(String(254))
    language: Mapped[str] = mapped_column(String(10), default="en")
    pin_hash: Mapped[str | None] = mapped_column(String(200))
    pin_temporary: Mapped[bool] = mapped_column(Boolean, default=False)
    failed_attempts: Mapped[int] = mapped_column(default=0)
    locked: Mapped[bool] = mapped_column(Boolean, default=False)
    opted_out: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # The web console's sign-in (core.web_login): a password hashed like a PIN,
    # a TOTP secret once enrolled, and the last TOTP time step accepted, so that
    # a code seen over someone's shoulder cannot be used a second time.
    password_hash: Mapped[str | None] = mapped_column(String(200))
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)

    sites: Mapped[list[Site]] = relationship(secondary="user_sites", order_by="Site.code")


class UserInvite(Base):
    """A one-time link to set a password (``ivrs users invite``): the token is
    shown once and kept as its SHA-256 digest (256 random bits: a fast digest
    is enough). A new invite ends the user's older unused ones (their
    ``expires_at`` becomes the moment it was made); ``used_at`` is set when
    the link is redeemed."""

    __tablename__ = "user_invites"
    __table_args__ = (UniqueConstraint("token_digest"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_digest: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    used_at: Mapped[datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)


# --- subjects ----------------------------------------------------------------------


class Subject(Base):
    __tablename__ = "subjects"
    __table_args__ = (UniqueConstraint("study_id", "subject_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    subject_number: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    screened_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    screened_by: Mapped[str | None] = mapped_column(String(40))
    # When the subject's treatment was first revealed (emergency unblinding).
    unblinded_at: Mapped[datetime | None] = mapped_column(Timestamp)

    site: Mapped[Site] = relationship()


class SubjectStatusChange(Base):
    __tablename__ = "subject_status_history"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    by: Mapped[str | None] = mapped_column(String(40))
    reason: Mapped[str | None] = mapped_column(Text)


# --- randomization -----------------------------------------------------------------


class RandomizationList(Base):
    """An uploaded master randomization list, or the entries a generated method made."""

    __tablename__ = "randomization_lists"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("randomization_events.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # uploaded | generated
    source: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str | None] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)


class ListEntry(Base):
    """One row of a list: the ``position``-th assignment of its stratum."""

    __tablename__ = "list_entries"
    __table_args__ = (
        UniqueConstraint("event_id", "stratum_key", "position"),
        UniqueConstraint("event_id", "randomization_number"),
        UniqueConstraint("event_id", "subject_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("randomization_events.id"))
    list_id: Mapped[int] = mapped_column(ForeignKey("randomization_lists.id"), index=True)
    stratum_key: Mapped[str] = mapped_column(String(400))
    position: Mapped[int]
    randomization_number: Mapped[str] = mapped_column(String(20))
    arm_id: Mapped[int] = mapped_column(ForeignKey("arms.id"))
    block: Mapped[str | None] = mapped_column(String(40))
    cohort: Mapped[str | None] = mapped_column(String(40))
    subject_id: Mapped[int | None] = mapped_column(ForeignKey("subjects.id"))
    used_at: Mapped[datetime | None] = mapped_column(Timestamp)


class StratumCounter(Base):
    """How many assignments a stratum (or, for minimization, the event) has made.

    Randomization takes this row's lock with ``UPDATE ... RETURNING``: the k-th
    subject to commit in a stratum gets list position k, whatever the concurrency.
    """

    __tablename__ = "stratum_counters"
    __table_args__ = (UniqueConstraint("event_id", "stratum_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("randomization_events.id"))
    stratum_key: Mapped[str] = mapped_column(String(400))
    used: Mapped[int] = mapped_column(default=0)
    generated: Mapped[int] = mapped_column(default=0)  # entries a generated method made
    blocks: Mapped[int] = mapped_column(default=0)  # blocks generated so far


class Randomization(Base):
    __tablename__ = "randomizations"
    __table_args__ = (
        UniqueConstraint("event_id", "subject_id"),
        UniqueConstraint("event_id", "randomization_number"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("randomization_events.id"))
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id"), index=True)
    randomization_number: Mapped[str] = mapped_column(String(20))
    arm_id: Mapped[int] = mapped_column(ForeignKey("arms.id"))
    stratum_key: Mapped[str] = mapped_column(String(400))
    factors: Mapped[dict[str, Any]] = mapped_column(default=dict)
    eligibility: Mapped[dict[str, Any]] = mapped_column(default=dict)
    method: Mapped[str] = mapped_column(String(20))
    # the draw (minimization: imbalance per arm, candidates, random number) so
    # that an inspector can replay the decision
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    randomized_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    randomized_by: Mapped[str | None] = mapped_column(String(40))

    subject: Mapped[Subject] = relationship()
    arm: Mapped[Arm] = relationship()
    event: Mapped[RandomizationEvent] = relationship()


class MinimizationCount(Base):
    """Running marginal totals, so a minimization step costs the same at subject 10,000."""

    __tablename__ = "minimization_counts"
    __table_args__ = (UniqueConstraint("event_id", "factor_code", "level_code", "arm_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("randomization_events.id"))
    factor_code: Mapped[str] = mapped_column(String(40))
    level_code: Mapped[str] = mapped_column(String(40))
    arm_id: Mapped[int] = mapped_column(ForeignKey("arms.id"))
    count: Mapped[int] = mapped_column(default=0)


class CapCounter(Base):
    """An enrollment cap: ``UPDATE ... SET count = count + 1 WHERE count < cap``."""

    __tablename__ = "cap_counters"
    __table_args__ = (UniqueConstraint("event_id", "cap_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("randomization_events.id"))
    cap_key: Mapped[str] = mapped_column(String(400))
    cap: Mapped[int]
    count: Mapped[int] = mapped_column(default=0)


# --- gated actions and emergency unblinding -------------------------------------------


class Approval(Base):
    """A request that a user of an approving role must sign off (core.approvals).

    ``number`` is what people type and hear: the gated thing's own number (a
    return's 7000xx, an unblinding request's 8000xx), unique within the study.
    """

    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("study_id", "number"),
                      Index("ix_approvals_study_id_status", "study_id", "status"))

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    number: Mapped[str] = mapped_column(String(20))
    kind: Mapped[str] = mapped_column(String(20))  # unblinding | return
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"))
    status: Mapped[str] = mapped_column(String(12))  # pending approved rejected expired
    requested_by: Mapped[str] = mapped_column(String(60))
    requested_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    decided_by: Mapped[str | None] = mapped_column(String(60))
    decided_at: Mapped[datetime | None] = mapped_column(Timestamp)
    decision_reason: Mapped[str | None] = mapped_column(Text)


class Unblinding(Base):
    """One emergency unblinding event: a request, signed, and what became of it.

    The arm is never stored here: it is read from the randomization when it is
    revealed, and the audit row of the reveal carries it under its unblinded key.
    """

    __tablename__ = "unblindings"
    __table_args__ = (UniqueConstraint("study_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    number: Mapped[str] = mapped_column(String(20))
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id"), index=True)
    mode: Mapped[str] = mapped_column(String(20))  # investigator | approval
    reason: Mapped[str] = mapped_column(String(40))  # medical_emergency | other
    # pending approved rejected expired (approval mode) -> unblinded
    status: Mapped[str] = mapped_column(String(12))
    requested_by: Mapped[str] = mapped_column(String(60))
    requested_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    signed_by: Mapped[str] = mapped_column(String(200))  # "user:5002 Santiago Ramón"
    signed_at: Mapped[datetime] = mapped_column(Timestamp)
    revealed_at: Mapped[datetime | None] = mapped_column(Timestamp)
    revealed_to: Mapped[str | None] = mapped_column(String(60))


# --- idempotency and audit -------------------------------------------------------------


class IdempotencyRecord(Base):
    """One committed service call: its key, its result (a retry gets it back
    unchanged) and, as its id, the confirmation number people hear."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("study_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    key: Mapped[str] = mapped_column(String(200))
    operation: Mapped[str] = mapped_column(String(80))
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)


class AuditEvent(Base):
    """Append-only, hash-chained (one chain per study; see core.audit)."""

    __tablename__ = "audit_events"
    # By action, newest first: the newest checkpoint (core.audit_checkpoints) of a
    # study is the first entry of a range, not a walk back through every row.
    __table_args__ = (UniqueConstraint("study_id", "seq"),
                      Index("ix_audit_events_study_id_action_seq", "study_id", "action", "seq"))

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    seq: Mapped[int]
    # The transaction that wrote the row: its confirmation number (idempotency record id).
    transaction_id: Mapped[int | None] = mapped_column(index=True)
    at: Mapped[datetime] = mapped_column(Timestamp)
    actor: Mapped[str] = mapped_column(String(60))
    action: Mapped[str] = mapped_column(String(60))
    entity_type: Mapped[str] = mapped_column(String(40))
    entity_id: Mapped[str | None] = mapped_column(String(100))
    reason: Mapped[str | None] = mapped_column(Text)
    old: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    new: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The tip of a study's chain; its row lock is what serializes that chain."""

    __tablename__ = "audit_heads"

    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(default=0)
    hash: Mapped[str] = mapped_column(String(64))
