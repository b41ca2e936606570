"""What the doors that show records read (the HTTP API, the web console): the
study's design, its sites, subjects page by page, one subject's whole record
and the shipments — each for one actor, blinded by the actor's role.

The rules live here, once: who may read what (``READERS``), the actor's sites
only for site roles, and the unblinded fields (an arm, a kit type, a lot) only
for an unblinded role. Lists are read a page at a time by key (never a whole
table), in the order of their key, so that a client can walk them with
``after``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.actors import ROLES, SITE_ROLES, Actor
from core.clock import today
from core.db import Database
from core.models import (
    Arm,
    Depot,
    Factor,
    FactorLevel,
    Kit,
    KitType,
    Lot,
    Randomization,
    RandomizationEvent,
    Shipment,
    ShipmentKit,
    Site,
    Study,
    Subject,
    SubjectStatusChange,
    SubjectVisit,
)
from core.previews import subject_in_study
from core.studies import StudyRef, study_ref
from core.subjects import reason_parts
from core.supply.dispensing import supply_config
from core.supply.visits import due_visit, first_randomization

MAX_PAGE = 500
# Who reads subjects and shipments: the depot sees shipments only.
SUBJECT_READERS = frozenset(ROLES - {"depot_manager"})
SHIPMENT_READERS = frozenset(ROLES)


def _sites_filter(actor: Actor, column):
    """Site roles read their own sites' records; everyone else every site's."""
    if actor.role in SITE_ROLES and actor.site_codes is not None:
        return [column.in_(sorted(actor.site_codes))]
    return []


def _page_size(limit: int | None) -> int:
    return max(1, min(int(limit or 100), MAX_PAGE))


# --- the study and its sites ---------------------------------------------------------------


@dataclass(frozen=True)
class FactorInfo:
    code: str
    levels: tuple[str, ...]


@dataclass(frozen=True)
class VisitInfo:
    code: str
    day: int
    window: tuple[int, int]
    kits: int


@dataclass(frozen=True)
class StudySummary:
    code: str
    name: str
    languages: tuple[str, ...]
    eligibility: tuple[str, ...]
    eligibility_source: str  # ivrs (the phone asks) | edc (the API records)
    factors: tuple[FactorInfo, ...]
    visits: tuple[VisitInfo, ...]
    unblinding_mode: str
    arms: tuple[str, ...] | None  # unblinded roles only: the design's arm codes


def study_summary(db: Database, *, actor: Actor, study: str | None = None) -> StudySummary:
    with db.reads() as session:
        ref = study_ref(session, study)
        row = session.get(Study, ref.id)
        first_event = session.scalar(
            select(RandomizationEvent.id).where(RandomizationEvent.study_id == ref.id)
            .order_by(RandomizationEvent.position).limit(1))
        factors = []
        if first_event is not None:
            for factor in session.scalars(select(Factor).where(Factor.event_id == first_event)
                                          .order_by(Factor.position)):
                levels = session.scalars(select(FactorLevel.code)
                                         .where(FactorLevel.factor_id == factor.id)
                                         .order_by(FactorLevel.position))
                factors.append(FactorInfo(factor.code, tuple(levels)))
        visits = tuple(VisitInfo(v.code, v.day, (v.before, v.after), v.dispense)
                       for v in supply_config(session, ref).schedule(None))
        arms = None
        if not actor.blinded:
            arms = tuple(session.scalars(select(Arm.code).where(Arm.study_id == ref.id)
                                         .order_by(Arm.position)))
        return StudySummary(row.code, row.name, tuple(row.languages or ()),
                            tuple(row.eligibility or ()),
                            (row.config or {}).get("eligibility_source", "ivrs"),
                            tuple(factors), visits,
                            row.unblinding_mode, arms)


@dataclass(frozen=True)
class SiteInfo:
    code: str
    name: str
    country: str
    language: str
    timezone: str
    depot: str | None
    active: bool


def list_sites(db: Database, *, actor: Actor, study: str | None = None) -> list[SiteInfo]:
    with db.reads() as session:
        ref = study_ref(session, study)
        query = (select(Site, Depot.code).outerjoin(Depot, Depot.id == Site.depot_id)
                 .where(Site.study_id == ref.id, *_sites_filter(actor, Site.code))
                 .order_by(Site.code))
        return [SiteInfo(site.code, site.name, site.country, site.language, site.timezone,
                         depot, site.active) for site, depot in session.execute(query)]


# --- subjects ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SubjectLine:
    subject_number: str
    site: str
    status: str
    screened_at: datetime
    randomization_number: str | None
    randomized_at: datetime | None
    arm: str | None  # unblinded roles only


@dataclass(frozen=True)
class Page:
    items: list
    next_after: str | None  # pass as ``after`` for the next page; None: the last page


def subjects_page(db: Database, *, actor: Actor, study: str | None = None,
                  site: str | None = None, status: str | None = None, after: str | None = None,
                  limit: int | None = None) -> Page:
    """Subjects by number, ``limit`` at a time after subject ``after``."""
    actor.require(SUBJECT_READERS, "read subjects")
    size = _page_size(limit)
    with db.reads() as session:
        ref = study_ref(session, study)
        if site is not None:
            actor.require_site(site)
        first_event = session.scalar(
            select(RandomizationEvent.id).where(RandomizationEvent.study_id == ref.id)
            .order_by(RandomizationEvent.position).limit(1))
        query = (select(Subject.subject_number, Site.code, Subject.status, Subject.screened_at,
                        Randomization.randomization_number, Randomization.randomized_at,
                        Arm.code)
                 .join(Site, Site.id == Subject.site_id)
                 .outerjoin(Randomization, (Randomization.subject_id == Subject.id)
                            & (Randomization.event_id == first_event))
                 .outerjoin(Arm, Arm.id == Randomization.arm_id)
                 .where(Subject.study_id == ref.id, *_sites_filter(actor, Site.code))
                 .order_by(Subject.subject_number).limit(size + 1))
        if site is not None:
            query = query.where(Site.code == site)
        if status is not None:
            query = query.where(Subject.status == status)
        if after is not None:
            query = query.where(Subject.subject_number > after)
        rows = session.execute(query).all()
    lines = [SubjectLine(number, site_code, state, screened, rand_no, rand_at,
                         None if actor.blinded else arm)
             for number, site_code, state, screened, rand_no, rand_at, arm in rows[:size]]
    return Page(lines, lines[-1].subject_number if len(rows) > size else None)


@dataclass(frozen=True)
class StatusEntry:
    from_status: str | None
    to_status: str
    at: datetime
    by: str | None
    reason: str | None

    @property
    def reason_parts(self) -> tuple[str | None, dict[str, str]]:
        """The reason as a code and parameters (``core.subjects.reason_parts``)."""
        return reason_parts(self.reason)


@dataclass(frozen=True)
class RandomizationEntry:
    event: str
    randomization_number: str
    randomized_at: datetime
    arm: str | None  # unblinded roles only


@dataclass(frozen=True)
class ScheduledVisit:
    code: str
    due_on: date
    window_start: date
    window_end: date
    status: str  # done | missed | due | upcoming
    occurred_on: date | None


@dataclass(frozen=True)
class KitEntry:
    kit_number: str
    visit: str | None
    status: str
    assigned_at: datetime | None
    confirmed_at: datetime | None
    kit_type: str | None = None  # unblinded roles only
    lot: str | None = None  # unblinded roles only


@dataclass(frozen=True)
class SubjectRecord:
    subject_number: str
    site: str
    status: str
    history: list[StatusEntry] = field(default_factory=list)
    randomizations: list[RandomizationEntry] = field(default_factory=list)
    visits: list[ScheduledVisit] = field(default_factory=list)
    kits: list[KitEntry] = field(default_factory=list)


def subject_record(db: Database, *, subject_number: str, actor: Actor,
                   study: str | None = None) -> SubjectRecord:
    """One subject's status history, randomizations, visit schedule with its
    windows, and kits."""
    actor.require(SUBJECT_READERS, "read subjects")
    with db.reads() as session:
        ref, subject = subject_in_study(session, study, subject_number, actor)
        history = [StatusEntry(*row) for row in session.execute(
            select(SubjectStatusChange.from_status, SubjectStatusChange.to_status,
                   SubjectStatusChange.at, SubjectStatusChange.by, SubjectStatusChange.reason)
            .where(SubjectStatusChange.subject_id == subject.id)
            .order_by(SubjectStatusChange.at, SubjectStatusChange.id))]
        randomizations = [
            RandomizationEntry(event, number, at, None if actor.blinded else arm)
            for event, number, at, arm in session.execute(
                select(RandomizationEvent.code, Randomization.randomization_number,
                       Randomization.randomized_at, Arm.code)
                .join(RandomizationEvent, RandomizationEvent.id == Randomization.event_id)
                .join(Arm, Arm.id == Randomization.arm_id)
                .where(Randomization.subject_id == subject.id)
                .order_by(RandomizationEvent.position))]
        return SubjectRecord(subject.subject_number, subject.site_code, subject.status,
                             history, randomizations, _schedule(session, ref, subject.id),
                             _kits(session, subject.id, actor))


def _schedule(session: Session, ref: StudyRef, subject_id: int) -> list[ScheduledVisit]:
    first = first_randomization(session, subject_id)
    if first is None:
        return []
    recorded = {code: (status, occurred) for code, status, occurred in session.execute(
        select(SubjectVisit.visit_code, SubjectVisit.status, SubjectVisit.occurred_on)
        .where(SubjectVisit.subject_id == subject_id))}
    schedule = supply_config(session, ref).schedule(first.cohort)
    due = due_visit(schedule, first.randomized_on, recorded, today())
    visits = []
    for visit in schedule:
        start, end = visit.window(first.randomized_on)
        status, occurred = recorded.get(visit.code, (None, None))
        if status is None:
            status = "due" if due.visit is not None and due.visit.code == visit.code else (
                "missed" if visit in due.missed else "upcoming")
        visits.append(ScheduledVisit(visit.code, visit.due_on(first.randomized_on), start, end,
                                     status, occurred))
    return visits


def _kits(session: Session, subject_id: int, actor: Actor) -> list[KitEntry]:
    rows = session.execute(
        select(Kit.kit_number, Kit.visit_code, Kit.status, Kit.assigned_at, Kit.confirmed_at,
               KitType.code, Lot.code)
        .join(KitType, KitType.id == Kit.kit_type_id).join(Lot, Lot.id == Kit.lot_id)
        .where(Kit.subject_id == subject_id).order_by(Kit.assigned_at, Kit.kit_number))
    return [KitEntry(number, visit, status, assigned, confirmed,
                     *((None, None) if actor.blinded else (kit_type, lot)))
            for number, visit, status, assigned, confirmed, kit_type, lot in rows]


# --- shipments --------------------------------------------------------------------------


@dataclass(frozen=True)
class ShipmentLine:
    shipment_number: str
    origin: str
    destination: str
    status: str
    kits: int
    reason: str
    carrier: str | None
    tracking_number: str | None
    created_at: datetime
    dispatched_on: date | None
    received_at: datetime | None


def shipments_page(db: Database, *, actor: Actor, study: str | None = None,
                   site: str | None = None, status: str | None = None,
                   after: str | None = None, limit: int | None = None) -> Page:
    """Shipments by number (newest last), blinded: a count of kits, never their types."""
    actor.require(SHIPMENT_READERS, "read shipments")
    size = _page_size(limit)
    with db.reads() as session:
        ref = study_ref(session, study)
        if site is not None:
            actor.require_site(site)
        count = (select(func.count()).where(ShipmentKit.shipment_id == Shipment.id)
                 .correlate(Shipment).scalar_subquery())
        query = (select(Shipment.shipment_number, Depot.code, Site.code, Shipment.status, count,
                        Shipment.reason, Shipment.carrier, Shipment.tracking_number,
                        Shipment.created_at, Shipment.dispatched_on, Shipment.received_at)
                 .join(Depot, Depot.id == Shipment.depot_id)
                 .join(Site, Site.id == Shipment.site_id)
                 .where(Shipment.study_id == ref.id, *_sites_filter(actor, Site.code))
                 .order_by(Shipment.id).limit(size + 1))
        if site is not None:
            query = query.where(Site.code == site)
        if status is not None:
            query = query.where(Shipment.status == status)
        if after is not None:
            after_id = session.scalar(select(Shipment.id).where(
                Shipment.study_id == ref.id, Shipment.shipment_number == after))
            query = query.where(Shipment.id > (after_id or 0))
        rows = session.execute(query).all()
    lines = [ShipmentLine(*row) for row in rows[:size]]
    return Page(lines, lines[-1].shipment_number if len(rows) > size else None)
