"""Dispensing kits to subjects at their visits, and replacing lost or damaged kits.

Which kits: the kit type mapped to the subject's treatment arm (the arm of the
first randomization), from the subject's site's ``available`` stock, earliest
expiry first (then kit number), never one inside the do-not-dispense window
(``visits.last_unusable_expiry``). Kits are picked with ``FOR UPDATE SKIP
LOCKED``: two dispensations at one site never wait for each other and never
pick the same kit; when fewer kits are free than the visit needs, the call is
refused and nothing is written (the transaction rolls back).

Lock order: subject row -> kits (skip locked, so never a wait) -> the audit
chain head. The subject's row lock makes two calls for one subject run one
after the other, so a visit is never dispensed twice.

Blinding: results and refusals name kit numbers and visits, never a kit type
or an arm; audit records carry the kit type only under the unblinded
``kit_type`` key.

The same helpers dispense the first visit at randomization (``core.randomize``).
"""

from __future__ import annotations

import importlib.util
import threading
import weakref
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session, object_session

from core.actors import Actor
from core.audit import AuditLog
from core.clock import today as clock_today
from core.clock import utcnow
from core.db import Database
from core.errors import NotFound, Refused
from core.models import Site, Study, Subject
from core.service import ServiceCall, service_call
from core.studies import StudyRef
from core.subjects import DISCONTINUED, RANDOMIZED
from core.supply.confirmation import request_confirmation
from core.supply.kits import apply_move, lock_kits, not_in_open_return
from core.supply.lifecycle import ASSIGNED, AVAILABLE, DISPENSED
from core.models import Kit, KitType
from core.supply.visits import (
    DONE,
    MISSED,
    Schedule,
    Visit,
    due_visit,
    first_randomization,
    last_unusable_expiry,
    record_visit,
    recorded_visits,
    schedule_for,
)

DISPENSING_ROLES = frozenset({"site_coordinator", "investigator", "pharmacist"})
REPLACEMENT_REASONS = {"lost": "lose", "damaged": "damage"}


# --- the study's supply configuration, cached per configuration version -------------------


@dataclass(frozen=True)
class SupplyConfig:
    """What dispensing needs of the study: read once per process and config version."""

    study_id: int
    version: int
    config: dict[str, Any]
    kit_types: dict[int, tuple[int, str]]  # arm id -> (kit type id, code)
    do_not_dispense_days: int = 0

    @property
    def dispenses(self) -> bool:
        return bool(self.kit_types) and bool(self.config.get("visits")
                                             or self.config.get("visits_by_cohort"))

    def schedule(self, cohort: str | None) -> Schedule:
        return schedule_for(self.config, cohort)


# Keyed by the Database's ConfigCache (one per Database), like core.study_config.
_CACHES: weakref.WeakKeyDictionary[object, dict[int, SupplyConfig]] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def supply_config(session: Session, study: StudyRef) -> SupplyConfig:
    owner = session.info.get("config_cache")
    cache = _CACHES.get(owner) if owner is not None else None
    cached = cache.get(study.id) if cache is not None else None
    if cached is not None and cached.version == study.config_version:
        return cached
    config = dict(session.execute(select(Study.config).where(Study.id == study.id)).scalar()
                  or {})
    kit_types: dict[int, tuple[int, str]] = {}
    # One kit type per arm; should a file map two to an arm, the first by code is used.
    for type_id, code, arm_id in session.execute(
            select(KitType.id, KitType.code, KitType.arm_id)
            .where(KitType.study_id == study.id).order_by(KitType.code)):
        kit_types.setdefault(arm_id, (type_id, code))
    supply = config.get("supply") or {}
    loaded = SupplyConfig(study.id, study.config_version, config, kit_types,
                          int(supply.get("do_not_dispense_days") or 0))
    if owner is not None:
        with _CACHE_LOCK:
            _CACHES.setdefault(owner, {})[study.id] = loaded
    return loaded


# --- picking and assigning kits -------------------------------------------------------------


def pick_kits(session: Session, study_id: int, site_id: int, kit_type_id: int, count: int,
              latest_unusable: date) -> list[Kit]:
    """Up to ``count`` dispensable kits, earliest expiry first, locked (SKIP LOCKED).

    The rule is ``take_first_expiring``'s, written in SQL so that only the
    kits taken are read and locked.
    """
    if count <= 0:
        return []
    return list(session.scalars(
        select(Kit).where(Kit.study_id == study_id, Kit.site_id == site_id,
                          Kit.status == AVAILABLE, Kit.kit_type_id == kit_type_id,
                          Kit.expiry_date > latest_unusable, not_in_open_return())
        .order_by(Kit.expiry_date, Kit.kit_number).limit(count)
        .with_for_update(skip_locked=True)))


def take_first_expiring(expiries: list[date], count: int, latest_unusable: date
                        ) -> list[date] | None:
    """First-expiry-first-out on in-memory stock (the supply simulator's ``pick_kits``).

    ``expiries`` is one place's stock of one kit type, sorted ascending; the
    ``count`` earliest kits expiring strictly after ``latest_unusable`` are
    removed from it and returned, or None (nothing removed) when fewer are
    there. Kits of equal expiry are interchangeable here, so the kit number
    that breaks ties in SQL does not matter.
    """
    start = bisect_right(expiries, latest_unusable)
    if len(expiries) - start < count:
        return None
    taken = expiries[start:start + count]
    del expiries[start:start + count]
    return taken


def dispensable_count(expiries: list[date], latest_unusable: date) -> int:
    """How many kits of sorted ``expiries`` ``take_first_expiring`` could take."""
    return len(expiries) - bisect_right(expiries, latest_unusable)


def assign_kits(audit: AuditLog, kits: list[Kit], *, subject_id: int, subject_number: str,
                visit_code: str, actor_label: str, kit_type_code: str,
                ask_by_notification: bool = True) -> list[str]:
    """Give ``kits`` to the subject for the visit: assigned, not yet confirmed.

    The kits share one ``assigned_at`` and ``assigned_by``: together they are one
    assignment, which the assigning user confirms by SMS (one request per call,
    ``core.supply.confirmation``). An assignment made by SMS asks in its own
    reply: ``ask_by_notification=False`` then spares the user a second message.
    """
    now = utcnow()
    for kit in kits:
        apply_move(audit, kit, "assign", subject_id=subject_id, visit_code=visit_code,
                   assigned_at=now, assigned_by=actor_label,
                   details={"subject": subject_number, "kit_type": kit_type_code})
    numbers = [kit.kit_number for kit in kits]
    if kits and ask_by_notification:
        request_confirmation(object_session(kits[0]), audit, kits[0].study_id,
                             assigned_by=actor_label, subject_number=subject_number,
                             visit_code=visit_code, kit_numbers=numbers)
    return numbers


def _no_stock(site_code: str) -> Refused:
    # Neither the kit type nor the arm: the caller may be blinded.
    return Refused(f"site {site_code} has not enough dispensable kits for this visit; "
                   "ask the depot for a shipment", code="no_stock", site=site_code)


# --- dispense at a visit ----------------------------------------------------------------------


@dataclass(frozen=True)
class DispenseResult:
    subject_number: str
    visit: str
    kits: list[str]
    out_of_window: bool
    missed: list[str] = field(default_factory=list)
    confirmation: str | None = None


_subjects, _sites = Subject.__table__, Site.__table__
_LOCK_SUBJECT = (
    select(_subjects.c.id, _subjects.c.subject_number, _subjects.c.status,
           _sites.c.id.label("site_id"), _sites.c.code.label("site_code"))
    .join(_sites, _sites.c.id == _subjects.c.site_id)
    .where(_subjects.c.study_id == bindparam("study"),
           _subjects.c.subject_number == bindparam("number"))
    .with_for_update(of=_subjects)
)


@dataclass(frozen=True)
class _Subject:
    id: int
    subject_number: str
    status: str
    site_id: int
    site_code: str


def _lock_subject(session: Session, study_id: int, subject_number: str) -> _Subject:
    row = session.execute(_LOCK_SUBJECT, {"study": study_id, "number": subject_number}).first()
    if row is None:
        raise NotFound(f"no subject {subject_number}", code="unknown_subject")
    return _Subject(*row)


def treated_subject(session: Session, subject, actor: Actor):
    """The subject's first randomization, checked: caller's site, randomized, not
    discontinued (``subject``: any row with id, subject_number, status, site_code)."""
    subject_number = subject.subject_number
    actor.require_site(subject.site_code)
    if subject.status == DISCONTINUED:
        raise Refused(f"subject {subject_number} is discontinued", code="subject_discontinued")
    first = first_randomization(session, subject.id)
    if subject.status != RANDOMIZED or first is None:
        raise Refused(f"subject {subject_number} is not randomized",
                      code="subject_not_randomized")
    return first


def dispense(db: Database, *, subject_number: str, actor: Actor, study: str | None = None,
             idempotency_key: str | None = None,
             ask_by_notification: bool = True, visit: str | None = None) -> DispenseResult:
    """Dispense the visit due now: record missed visits, assign the visit's kits.

    Refused when no visit is due (past the last one), when the caller names the
    ``visit`` it expects and another one is due (``visit_not_due``: an EDC's
    eCRF page is for one visit), or when the site lacks dispensable kits
    (``no_stock``); a refusal writes nothing.
    """
    actor.require(DISPENSING_ROLES, "dispense kits")
    with service_call(db, study, f"dispense {subject_number}", idempotency_key, actor) as call:
        session = call.session
        subject = _lock_subject(session, call.study.id, subject_number)
        if (replay := call.replayed()) is not None:
            return DispenseResult(**replay)
        first = treated_subject(session, subject, actor)
        supply = supply_config(session, call.study)
        schedule = supply.schedule(first.cohort)
        today = clock_today()
        done = recorded_visits(session, subject.id)
        due = due_visit(schedule, first.randomized_on, done, today)
        if due.visit is None:
            raise Refused(f"subject {subject_number} has no visit due", code="no_visit_due")
        if visit is not None and visit != due.visit.code:
            raise Refused(f"visit {visit} is not due for subject {subject_number}: "
                          f"{due.visit.code} is", code="visit_not_due", due=due.visit.code)
        visit = due.visit
        kit_numbers: list[str] = []
        kit_type_code = None
        if visit.dispense:
            if first.arm_id not in supply.kit_types:
                raise Refused(f"no kit type is defined for subject {subject_number}'s "
                              "treatment", code="no_kit_type")
            kit_type_id, kit_type_code = supply.kit_types[first.arm_id]
            floor = last_unusable_expiry(due.next_visit, first.randomized_on, today,
                                         supply.do_not_dispense_days)
            kits = pick_kits(session, call.study.id, subject.site_id, kit_type_id,
                             visit.dispense, floor)
            if len(kits) < visit.dispense:
                raise _no_stock(subject.site_code)
            kit_numbers = assign_kits(call.audit, kits, subject_id=subject.id,
                                      subject_number=subject_number, visit_code=visit.code,
                                      actor_label=actor.label, kit_type_code=kit_type_code,
                                      ask_by_notification=ask_by_notification)
        _record_missed(call, subject, first.randomized_on, due.missed)
        record_visit(session, study_id=call.study.id, subject_id=subject.id, visit=visit,
                     randomized_on=first.randomized_on, status=DONE, today=today,
                     out_of_window=due.out_of_window,
                     schedule_version=call.study.config_version, actor_label=actor.label)
        call.audit.record("visit_dispensed", "subject", subject_number, new={
            "visit": visit.code, "kits": kit_numbers, "out_of_window": due.out_of_window,
            "missed": [v.code for v in due.missed], "site": subject.site_code,
            **({"kit_type": kit_type_code} if kit_type_code else {})},
            reason="out of window" if due.out_of_window else None)
        return DispenseResult(**call.finish({
            "subject_number": subject_number, "visit": visit.code, "kits": kit_numbers,
            "out_of_window": due.out_of_window, "missed": [v.code for v in due.missed]}))


def _record_missed(call: ServiceCall, subject: _Subject, randomized_on: date,
                   missed: tuple[Visit, ...]) -> None:
    for visit in missed:
        record_visit(call.session, study_id=call.study.id, subject_id=subject.id, visit=visit,
                     randomized_on=randomized_on, status=MISSED, today=None,
                     out_of_window=False, schedule_version=call.study.config_version,
                     actor_label=call.actor.label)
        start, end = visit.window(randomized_on)
        call.audit.record("visit_missed", "subject", subject.subject_number, new={
            "visit": visit.code, "window_start": start, "window_end": end})


# --- replace a lost or damaged kit --------------------------------------------------------------


@dataclass(frozen=True)
class ReplacementResult:
    subject_number: str
    visit: str
    replaced_kit: str
    kit: str
    confirmation: str | None = None


def replace_kit(db: Database, *, subject_number: str, kit_number: str, reason: str,
                actor: Actor, study: str | None = None,
                idempotency_key: str | None = None) -> ReplacementResult:
    """A subject's kit was lost or damaged: it becomes missing/damaged and a new
    kit of the same type is assigned for the same visit (same expiry rule)."""
    actor.require(DISPENSING_ROLES, "replace kits")
    if reason not in REPLACEMENT_REASONS:
        raise Refused("the reason is lost or damaged", code="bad_reason")
    operation = f"replace_kit {subject_number} {kit_number}"
    with service_call(db, study, operation, idempotency_key, actor) as call:
        session = call.session
        subject = _lock_subject(session, call.study.id, subject_number)
        if (replay := call.replayed()) is not None:
            return ReplacementResult(**replay)
        first = treated_subject(session, subject, actor)
        old = lock_kits(session, call.study.id, [kit_number]).get(kit_number)
        if old is None or old.subject_id != subject.id or old.status not in (ASSIGNED,
                                                                              DISPENSED):
            raise Refused(f"kit {kit_number} is not a kit of subject {subject_number}",
                          code="kit_not_assigned")
        supply = supply_config(session, call.study)
        schedule = supply.schedule(first.cohort)
        today = clock_today()
        codes = [visit.code for visit in schedule]
        position = codes.index(old.visit_code) if old.visit_code in codes else None
        following = (schedule[position + 1]
                     if position is not None and position + 1 < len(schedule) else None)
        floor = last_unusable_expiry(following, first.randomized_on, today,
                                     supply.do_not_dispense_days)
        kits = pick_kits(session, call.study.id, subject.site_id, old.kit_type_id, 1, floor)
        if not kits:
            raise _no_stock(subject.site_code)
        kit_type_code = session.get(KitType, old.kit_type_id).code
        visit_code = old.visit_code
        apply_move(call.audit, old, REPLACEMENT_REASONS[reason], reason=reason,
                   details={"subject": subject_number})
        (new_number,) = assign_kits(call.audit, kits, subject_id=subject.id,
                                    subject_number=subject_number, visit_code=visit_code,
                                    actor_label=actor.label, kit_type_code=kit_type_code)
        call.audit.record("kit_replaced", "subject", subject_number, reason=reason, new={
            "visit": visit_code, "replaced_kit": kit_number, "kit": new_number,
            "kit_type": kit_type_code})
        return ReplacementResult(**call.finish({
            "subject_number": subject_number, "visit": visit_code,
            "replaced_kit": kit_number, "kit": new_number}))


# --- the first visit, at randomization (core.randomize) -------------------------------------------


@dataclass(frozen=True)
class FirstVisit:
    """The visit a randomization dispenses, and the expiry limit for its kits."""

    visit: Visit
    out_of_window: bool
    randomized_on: date
    latest_unusable: date
    schedule_version: int


def first_visit(supply: SupplyConfig, cohort: str | None, today: date) -> FirstVisit | None:
    """None for a study that dispenses nothing (no kit types or no schedule)."""
    if not supply.dispenses:
        return None
    schedule = supply.schedule(cohort)
    due = due_visit(schedule, today, (), today)
    if due.visit is None:
        return None
    return FirstVisit(due.visit, due.out_of_window, today,
                      last_unusable_expiry(due.next_visit, today, today,
                                           supply.do_not_dispense_days), supply.version)


def site_short_for_any_arm(session: Session, supply: SupplyConfig, site_code: str,
                           plan: FirstVisit) -> list[str]:
    """Kit type codes the site lacks for the first visit, checked for *every* arm's
    kit type, so that a refusal says nothing about the arm the subject would get."""
    needed = plan.visit.dispense
    if needed <= 0:
        return []
    type_ids = {type_id: code for type_id, code in supply.kit_types.values()}
    counts: dict[int, int] = dict(session.execute(
        select(Kit.kit_type_id, func.count())
        .join(Site, Site.id == Kit.site_id)
        .where(Kit.study_id == supply.study_id, Site.study_id == supply.study_id,
               Site.code == site_code, Kit.status == AVAILABLE,
               Kit.kit_type_id.in_(list(type_ids)), Kit.expiry_date > plan.latest_unusable,
               not_in_open_return())
        .group_by(Kit.kit_type_id)).all())
    return short_kit_types(type_ids, counts, needed)


def short_kit_types(kit_types: dict[int, str], counts: dict[int, int], needed: int) -> list[str]:
    """Codes of the kit types (id -> code) with fewer than ``needed`` dispensable kits
    (``counts`` per id): randomization is refused when this is not empty."""
    return sorted(code for type_id, code in kit_types.items() if counts.get(type_id, 0) < needed)


STOCK_REFUSAL = ("site {site} lacks dispensable kits for a new subject: nobody can be "
                 "randomized there until a shipment arrives (an urgent one is requested)")


def refuse_for_stock(call: ServiceCall, site_code: str, subject_number: str,
                     short: list[str], today: date) -> None:
    """Request an urgent shipment and record the refusal, in the caller's transaction
    (which commits: the caller finishes with a refusal result and raises after)."""
    session = call.session
    study = session.get(Study, call.study.id)
    site = session.execute(select(Site).where(Site.study_id == study.id,
                                              Site.code == site_code)).scalar_one()
    shipment = _urgent_resupply(call, study, site, today)
    call.audit.record("randomization_refused", "subject", subject_number, new={
        "site": site_code, "kit_type": short,
        "urgent_shipment": shipment.shipment_number if shipment is not None else None,
    }, reason="no dispensable kits at the site")


def _urgent_resupply(call: ServiceCall, study: Study, site: Site, today: date):
    """The urgent shipment (or None: one is already on its way or the depot is short).

    A depot that cannot fill it must not undo the refusal's record: the
    attempt runs in a savepoint and its audit records are dropped with it.
    """
    if importlib.util.find_spec("core.supply.resupply") is None:
        return None  # the resupply module is not installed in this build
    from core.supply.resupply import urgent_resupply

    pending = len(call.audit.pending)
    savepoint = call.session.begin_nested()
    try:
        shipment = urgent_resupply(call.session, call.audit, study, site, today,
                                   call.actor.label)
    except Refused as refusal:
        savepoint.rollback()
        del call.audit.pending[pending:]
        call.audit.record("urgent_resupply_failed", "site", site.code, reason=str(refusal))
        return None
    savepoint.commit()
    return shipment


def dispense_first_visit(call: ServiceCall, supply: SupplyConfig, plan: FirstVisit, *,
                         subject_id: int, subject_number: str, site_code: str,
                         arm_id: int) -> list[str]:
    """Assign the first visit's kits of the arm's kit type and record the visit done.

    The stock was checked before the arm was drawn; should a parallel call have
    taken the last kits since, the randomization is refused as a whole.
    """
    session = call.session
    kit_numbers: list[str] = []
    kit_type = supply.kit_types.get(arm_id)
    if plan.visit.dispense and kit_type is not None:
        site_id = session.execute(select(Site.id).where(
            Site.study_id == supply.study_id, Site.code == site_code)).scalar_one()
        kits = pick_kits(session, supply.study_id, site_id, kit_type[0], plan.visit.dispense,
                         plan.latest_unusable)
        if len(kits) < plan.visit.dispense:
            raise Refused(STOCK_REFUSAL.format(site=site_code), code="no_stock_at_site",
                          site=site_code)
        kit_numbers = assign_kits(call.audit, kits, subject_id=subject_id,
                                  subject_number=subject_number, visit_code=plan.visit.code,
                                  actor_label=call.actor.label, kit_type_code=kit_type[1])
    record_visit(session, study_id=supply.study_id, subject_id=subject_id, visit=plan.visit,
                 randomized_on=plan.randomized_on, status=DONE, today=plan.randomized_on,
                 out_of_window=plan.out_of_window, schedule_version=plan.schedule_version,
                 actor_label=call.actor.label)
    call.audit.record("visit_dispensed", "subject", subject_number, new={
        "visit": plan.visit.code, "kits": kit_numbers, "out_of_window": plan.out_of_window,
        "missed": [], "site": site_code,
        **({"kit_type": kit_type[1]} if kit_type else {})})
    return kit_numbers
