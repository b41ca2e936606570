"""The resupply job: keep every site stocked between its trigger and target levels.

Levels are per site and kit type: a ``SiteSupply`` row (the study file's
``sites[i].resupply``) else the study's ``supply.default_resupply``. A kit type
with neither is not resupplied.

**Usable stock** of a site and kit type is what a new subject could still be
given: available kits at the site that last until the first visit's next
visit plus the do-not-dispense window (``expiry_date > today + H +
do_not_dispense_days``, H = days from the first visit to the next: the rule
a randomization's kits must meet), plus kits already on their way in a
requested or dispatched shipment that will still be usable when they arrive
(``expiry_date > today + shipping_days + H + do_not_dispense_days``).
Counting what is on its way is what makes the job idempotent: run twice the
same day, the second run finds the first run's shipments and ships nothing.

**Trigger**: when the usable stock of any kit type is at or below its trigger
(``stock <= trigger``: a stock equal to the trigger ships, one above does
not), a shipment is requested.

**Blind-preserving quantities.** A shipment's content must not tell anyone
which arm a site's subjects are on. The rule:

- When *any* kit type crosses its trigger, the shipment tops up *every* kit
  type of the site to its target (``target - stock``, never negative). The
  number of kits shipped is then ``sum(targets) - total usable stock``: it
  depends only on the site's total stock, which blinded people already see
  (the blinded site inventory), never on how that stock splits between kit
  types. Shipping only the kit type that crossed would make the shipment's
  size reveal that type's stock, and so the arm of the subjects just dosed.
- In predictive mode the kits needed for visits before the next shipment can
  arrive are computed per kit type inside the core (unblinded), and only
  their maximum ``M`` leaves it: ``M`` is added to every kit type's target
  (and subtracted from every type's stock when testing the trigger), so the
  rounding is the same for all kit types and never singles one out.

Residual risk (documented, accepted): the *moment* a shipment happens
depends on the kit type with the lowest stock, so someone who counts
dispensations closely could sometimes guess that the last subject dosed took
the type that reached its trigger; with targets higher than the trigger by
more than one visit's kits and equal levels per kit type this says little.
A kit type already above its target gets 0 (not negative), so a site whose
stock is very unbalanced (one type above target) gets a total that depends
slightly on the split; identical levels for all kit types keep this rare.
Per-type counts appear only under the unblinded ``kit_type`` audit key
(written by ``create_shipment``); summaries, notifications and CLI output
carry the total only.

**Initial shipment**: an active site with a depot that has never had a kit
nor a (non-cancelled) shipment gets ``supply.initial.target`` of every kit
type (else its resupply target) at the next run.

Each site is served in its own transaction, with the site row locked (two
runs, or a run and an urgent resupply, never ship twice to the same site). A
depot that cannot fill a shipment rolls that site's transaction back, writes
a ``depot_short`` notification for the depot managers and an audit record,
and the job goes on with the other sites. The cost is a handful of GROUP BY
queries per site: linear in sites x kit types, never per kit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import clock
from core.audit import AuditLog
from core.db import Database
from core.errors import Refused
from core.models import Depot, Randomization, Site, Study, Subject
from core.studies import get_study
from core.supply.kits import not_in_open_return, supply_settings
from core.supply.lifecycle import AVAILABLE, IN_TRANSIT, RESERVED
from core.models import Kit, KitType, Shipment, SiteSupply, SubjectVisit
from core.supply.outbox import notify
from core.supply.shipments import CANCELLED, DISPATCHED, REQUESTED, ShipmentPlan, create_shipment
from core.supply.visits import Schedule, schedule_for, utc_date

SYSTEM_ACTOR = "system:resupply"
# The job runs once a day: a shipment requested now must cover the visits up
# to the arrival of the one the *next* run could request.
REVIEW_DAYS = 1
RANDOMIZED = "randomized"  # core.subjects.RANDOMIZED (not discontinued)
DEPOT_MANAGERS = "role:depot_manager"


@dataclass(frozen=True)
class ShipmentSummary:
    """What the job did for one site; the total only, never per kit type."""

    shipment_number: str
    site: str
    reason: str  # initial | resupply
    kits: int


@dataclass(frozen=True)
class Levels:
    trigger: int
    target: int


class DepotShort(Exception):
    """A site's shipment could not be filled (raised to roll its transaction back)."""

    def __init__(self, site_id: int, reason: str, kits: int):
        super().__init__(f"depot short for site {site_id}")
        self.site_id, self.reason, self.kits = site_id, reason, kits


# --- the levels and the stock of one site --------------------------------------------------


def site_levels(session: Session, study: Study, site: Site) -> dict[int, Levels]:
    """Trigger and target per kit type id: the site's override, else the study default."""
    default = supply_settings(study).get("default_resupply")
    overrides = {row.kit_type_id: Levels(row.trigger, row.target) for row in session.scalars(
        select(SiteSupply).where(SiteSupply.site_id == site.id))}
    levels = {}
    for kit_type_id in _kit_type_ids(session, study.id):
        if kit_type_id in overrides:
            levels[kit_type_id] = overrides[kit_type_id]
        elif default:
            levels[kit_type_id] = Levels(int(default["trigger"]), int(default["target"]))
    return levels


def _kit_type_ids(session: Session, study_id: int) -> list[int]:
    return list(session.scalars(
        select(KitType.id).where(KitType.study_id == study_id).order_by(KitType.id)))


@dataclass(frozen=True)
class UsableAfter:
    """Kits count as usable stock when they expire strictly after these dates."""

    at_site: date  # available at the site
    on_the_way: date  # in a requested or dispatched shipment (usable on arrival)


def first_visit_horizon(schedule: Schedule) -> int:
    """Days a kit given at the first visit must last, before the do-not-dispense
    margin: until the next visit (0 with a single visit). A randomization is
    refused when no kit of an arm lasts that long (``core.supply.dispensing``),
    so usable stock is counted with the same horizon: a kit that a new subject
    could no longer take is not stock that spares a shipment."""
    return schedule[1].day - schedule[0].day if len(schedule) > 1 else 0


def usable_after(today: date, shipping_days: int, do_not_dispense_days: int,
                 horizon_days: int = 0) -> UsableAfter:
    """The usable-stock rule (module docstring), pure: shared with the supply simulator.
    ``horizon_days``: see ``first_visit_horizon``."""
    margin = timedelta(days=horizon_days + do_not_dispense_days)
    arrival = today + timedelta(days=shipping_days)
    return UsableAfter(at_site=today + margin, on_the_way=arrival + margin)


def usable_stock(session: Session, study: Study, site: Site, today: date) -> dict[int, int]:
    """Kits per kit type id the site can still dispense, counting those on their way."""
    after = usable_after(today, site.shipping_days or 0,
                         int(supply_settings(study)["do_not_dispense_days"]),
                         first_visit_horizon(schedule_for(study.config, None)))
    stock: dict[int, int] = defaultdict(int)
    at_site = session.execute(
        select(Kit.kit_type_id, func.count()).where(
            Kit.study_id == study.id, Kit.site_id == site.id, Kit.status == AVAILABLE,
            not_in_open_return(),
            Kit.expiry_date > after.at_site).group_by(Kit.kit_type_id))
    on_the_way = session.execute(
        select(Kit.kit_type_id, func.count()).join(Shipment, Shipment.id == Kit.shipment_id)
        .where(Shipment.site_id == site.id, Shipment.status.in_([REQUESTED, DISPATCHED]),
               Kit.status.in_([RESERVED, IN_TRANSIT]), Kit.expiry_date > after.on_the_way)
        .group_by(Kit.kit_type_id))
    for kit_type_id, count in [*at_site, *on_the_way]:
        stock[kit_type_id] += count
    return dict(stock)


def never_supplied(session: Session, site: Site) -> bool:
    """No kit has ever been at the site and no shipment (not cancelled) was ever made."""
    kit = session.scalar(select(Kit.id).where(Kit.site_id == site.id).limit(1))
    shipment = session.scalar(select(Shipment.id).where(
        Shipment.site_id == site.id, Shipment.status != CANCELLED).limit(1))
    return kit is None and shipment is None


@dataclass(frozen=True)
class TreatedSubject:
    """What the predictive rule needs of one randomized subject."""

    kit_type_id: int
    day0: date  # UTC date of the first randomization
    recorded: frozenset[str] | set[str]  # visit codes already done or missed


def predicted_need(session: Session, study: Study, site: Site, today: date) -> int:
    """The largest number of kits of one kit type that the site's randomized subjects
    need for visits due before a shipment requested now (or at the next run) arrives.

    Computed unblinded (each subject's arm gives their kit type); only the
    maximum over kit types is returned, so nothing per kit type leaves here.
    Day 0 is the UTC date of the subject's first randomization; visits already
    recorded (done or missed) are skipped, as are visits whose window has closed.
    """
    visits = (study.config or {}).get("visits") or []
    if not any(v.get("dispense") for v in visits):
        return 0
    kit_type_of_arm: dict[int, int] = {}
    for kit_type_id, arm_id in session.execute(
            select(KitType.id, KitType.arm_id).where(KitType.study_id == study.id)
            .order_by(KitType.id)):
        kit_type_of_arm.setdefault(arm_id, kit_type_id)
    first: dict[int, tuple[datetime, int]] = {}
    for subject_id, arm_id, at in session.execute(
            select(Randomization.subject_id, Randomization.arm_id, Randomization.randomized_at)
            .join(Subject, Subject.id == Randomization.subject_id)
            .where(Subject.site_id == site.id, Subject.status == RANDOMIZED)
            .order_by(Randomization.randomized_at)):
        first.setdefault(subject_id, (at, arm_id))
    if not first:
        return 0
    recorded: dict[int, set[str]] = defaultdict(set)
    for subject_id, code in session.execute(
            select(SubjectVisit.subject_id, SubjectVisit.visit_code)
            .join(Subject, Subject.id == SubjectVisit.subject_id)
            .where(Subject.site_id == site.id)):
        recorded[subject_id].add(code)
    subjects = [TreatedSubject(kit_type_of_arm[arm_id], utc_date(at), recorded[subject_id])
                for subject_id, (at, arm_id) in first.items() if arm_id in kit_type_of_arm]
    return need_before_arrival(visits, subjects, today, site.shipping_days or 0)


def need_before_arrival(visits: list[dict], subjects: Iterable[TreatedSubject], today: date,
                        shipping_days: int) -> int:
    """``predicted_need`` without the database (shared with the supply simulator).

    ``visits`` is the study file's ``visits`` section; a visit counts when it
    dispenses, is not recorded for the subject, its window has not closed
    (``window_end >= today``) and it is due by the arrival of a shipment the
    next run could request (``today + shipping_days + REVIEW_DAYS``).
    """
    horizon = today + timedelta(days=shipping_days + REVIEW_DAYS)
    need: dict[int, int] = defaultdict(int)
    for subject in subjects:
        for visit in visits:
            if not visit.get("dispense") or visit["code"] in subject.recorded:
                continue
            due = subject.day0 + timedelta(days=int(visit["day"]))
            window_end = due + timedelta(days=int((visit.get("window") or [0, 0])[1]))
            if window_end >= today and due <= horizon:
                need[subject.kit_type_id] += int(visit["dispense"])
    return max(need.values(), default=0)


# --- deciding what to ship ---------------------------------------------------------------


def plan_quantities(levels: dict[int, Levels], stock: dict[int, int], *, extra: int = 0,
                    force: bool = False) -> dict[int, int]:
    """Kits per kit type id to ship (blind-preserving; see the module docstring).

    Ships when any kit type's stock minus ``extra`` is at or below its trigger
    (or always, with ``force``), and then tops every kit type up to its target
    plus ``extra``. Empty when nothing is to be shipped.
    """
    crossed = any(stock.get(t, 0) - extra <= lv.trigger for t, lv in levels.items())
    if not (crossed or force):
        return {}
    quantities = {t: max(0, lv.target + extra - stock.get(t, 0)) for t, lv in levels.items()}
    return quantities if any(quantities.values()) else {}


def initial_quantities(session: Session, study: Study, levels: dict[int, Levels]
                       ) -> dict[int, int]:
    return first_shipment(supply_settings(study).get("initial"),
                          _kit_type_ids(session, study.id), levels)


def first_shipment(initial: dict | None, kit_type_ids: Iterable[int],
                   levels: dict[int, Levels]) -> dict[int, int]:
    """The initial shipment rule, pure: ``supply.initial.target`` of every kit type,
    else each kit type's resupply target (shared with the supply simulator)."""
    if initial:
        return {t: int(initial["target"]) for t in kit_type_ids}
    return {t: lv.target for t, lv in levels.items() if lv.target > 0}


def _plan_for_site(session: Session, study: Study, site: Site, today: date, *,
                   force: bool = False) -> tuple[str, dict[int, int]]:
    levels = site_levels(session, study, site)
    if not force and never_supplied(session, site):
        return "initial", initial_quantities(session, study, levels)
    stock = usable_stock(session, study, site, today)
    extra = predicted_need(session, study, site, today) if supply_settings(study).get(
        "predictive") else 0
    return "resupply", plan_quantities(levels, stock, extra=extra, force=force)


def _lock_site(session: Session, site_id: int) -> Site:
    return session.scalars(select(Site).where(Site.id == site_id).with_for_update()).one()


def _record_shortage(session: Session, audit: AuditLog, study_id: int, site: Site,
                     depot_code: str, reason: str, kits: int, today: date) -> None:
    """A depot could not fill a site's shipment: tell the depot managers (once a day)."""
    params = {"site": site.code, "depot": depot_code, "reason": reason, "kits": kits}
    audit.record("depot_short", "site", site.code, new=params)
    notify(session, audit, study_id, key=f"depot_short:{site.code}:{today.isoformat()}",
           kind="depot_short", audience=DEPOT_MANAGERS,
           # A site that cannot randomize waits on this depot: the text says so.
           message_id="notify.depot_short.urgent" if reason == "urgent" else "notify.depot_short",
           params={"site": site.code, "depot": depot_code, "reason": reason, "count": kits})


def _notify_requested(session: Session, audit: AuditLog, study_id: int, shipment: Shipment,
                      site: Site, kits: int) -> None:
    notify(session, audit, study_id, key=f"shipment_requested:{shipment.shipment_number}",
           kind="shipment_requested", audience=DEPOT_MANAGERS,
           message_id="notify.shipment_requested",
           params={"shipment": shipment.shipment_number, "site": site.code,
                   "reason": shipment.reason, "count": kits})


# --- the job --------------------------------------------------------------------------------


def run_resupply(db: Database, *, study: str | None = None, actor: str = SYSTEM_ACTOR,
                 today: date | None = None) -> list[ShipmentSummary]:
    """Request the shipments every site needs today; one transaction per site."""
    today = today or clock.today()
    with db.sessions() as session:
        study_id = get_study(session, study).id
        site_ids = list(session.scalars(
            select(Site.id).where(Site.study_id == study_id, Site.active.is_(True),
                                  Site.depot_id.is_not(None)).order_by(Site.code)))
    summaries = []
    for site_id in site_ids:
        try:
            with db.transaction() as session:
                summary = _resupply_site(session, study_id, site_id, today, actor)
        except DepotShort as short:
            with db.transaction() as session:
                audit = AuditLog(study_id, actor)
                site = _lock_site(session, short.site_id)
                depot = session.get(Depot, site.depot_id)
                _record_shortage(session, audit, study_id, site, depot.code, short.reason,
                                 short.kits, today)
                audit.seal(session)
            continue
        if summary is not None:
            summaries.append(summary)
    return summaries


def _resupply_site(session: Session, study_id: int, site_id: int, today: date,
                   actor: str) -> ShipmentSummary | None:
    study = session.get(Study, study_id)
    site = _lock_site(session, site_id)
    if not site.active or site.depot_id is None:
        return None
    reason, quantities = _plan_for_site(session, study, site, today)
    if not quantities:
        return None
    kits = sum(quantities.values())
    audit = AuditLog(study_id, actor)
    depot = session.get(Depot, site.depot_id)
    try:
        shipment = create_shipment(session, audit, study, ShipmentPlan(depot, site, quantities,
                                                                       reason), today, actor)
    except Refused as refusal:
        if refusal.code != "depot_short":
            raise
        raise DepotShort(site.id, reason, kits) from refusal
    _notify_requested(session, audit, study_id, shipment, site, kits)
    audit.seal(session)
    return ShipmentSummary(shipment.shipment_number, site.code, reason, kits)


def urgent_resupply(session: Session, audit: AuditLog, study: Study, site: Site, today: date,
                    actor_label: str) -> Shipment | None:
    """An urgent shipment for a site that lacks dispensable stock, in the caller's transaction.

    Called by randomization when the site cannot dispense for some arm. Tops
    every kit type up to its target (blind-preserving, as the job does, with
    the predictive margin when enabled), whatever the trigger. Does nothing
    (returns None) when an urgent shipment is already requested or dispatched
    for the site, or when stock on its way already reaches the targets. A
    short depot does not raise: the attempt is undone (savepoint), a
    ``depot_short`` notification and audit record are written, and None is
    returned. Never commits nor rolls back the caller's transaction.
    """
    site = _lock_site(session, site.id)
    if site.depot_id is None:
        return None
    pending = session.scalar(select(Shipment.id).where(
        Shipment.site_id == site.id, Shipment.reason == "urgent",
        Shipment.status.in_([REQUESTED, DISPATCHED])).limit(1))
    if pending is not None:
        return None
    _, quantities = _plan_for_site(session, study, site, today, force=True)
    if not quantities:
        return None
    kits = sum(quantities.values())
    depot = session.get(Depot, site.depot_id)
    marker = len(audit.pending)
    try:
        with session.begin_nested():
            shipment = create_shipment(session, audit, study,
                                       ShipmentPlan(depot, site, quantities, "urgent"), today,
                                       actor_label)
    except Refused as refusal:
        if refusal.code != "depot_short":
            raise
        del audit.pending[marker:]
        _record_shortage(session, audit, study.id, site, depot.code, "urgent", kits, today)
        return None
    notify(session, audit, study.id, key=f"urgent_resupply:{shipment.shipment_number}",
           kind="urgent_resupply", audience=DEPOT_MANAGERS,
           message_id="notify.urgent_resupply",
           params={"site": site.code, "shipment": shipment.shipment_number, "count": kits})
    return shipment
