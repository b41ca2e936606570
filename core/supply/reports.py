"""Supply reports (SPEC §8): ``kits``, ``site-inventory``, ``depot-inventory``, ``shipments``,
``unconfirmed-kits``.

Same shape as ``core.reports``: ``(session, study, blinded, **filters) -> (columns,
rows)`` (filters keyword-only, None for everything) with rows streamed in
batches, and the unblinded columns appended at the end so the blinded report is
a prefix of the unblinded one. Registered in ``core.report_registry``.

Blinding: a kit type maps to an arm, so kit types and anything tied to one
kit type stay out of blinded output. That includes the lot code: a lot belongs
to one kit type, so a lot code shown next to a kit tells the type to anyone
who has seen another kit of that lot. SPEC §8 lists ``lot`` among the kits
report's columns; it is shown only unblinded. Inventory counts at a site are
summed over kit types when blinded (per-type counts at a site reveal its
subjects' arms).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import date, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from core.clock import as_utc, utcnow
from core.models import Depot, Site, Study, Subject
from core.reports import (  # one UTC format and one date filter for every report
    BATCH,
    Report,
    _utc,
    within_days,
)
from core.supply.lifecycle import ASSIGNED
from core.models import Kit, KitType, Lot, Shipment, ShipmentKit


def _day(value: date | None) -> str:
    return value.isoformat() if value else ""


def _stream(session: Session, query) -> Iterator:
    return iter(session.execute(query.execution_options(yield_per=BATCH)))


def kits(session: Session, study: Study, blinded: bool = True, *,
         site: str | None = None) -> Report:
    """One row per kit. ``location`` is the kit's depot or site code (for a kit
    given to a subject, the subject's site); empty while in transit or missing
    on the way (``shipment_number`` says which shipment). ``site`` keeps the kits
    whose location is that site."""
    columns = ["kit_number", "location", "status", "expiry_date", "subject_number",
               "shipment_number"]
    if not blinded:
        columns += ["lot", "kit_type"]
    # Residual risk, accepted: expiry dates are per lot, so two kits with the same
    # unusual expiry date are likely of one lot; sites need the date to use stock
    # first-expiry-first-out, and kits of every type share expiry dates in
    # practice (lots are packed together).
    kit_site, subject_site = aliased(Site), aliased(Site)
    query = (
        select(Kit.kit_number, kit_site.code, subject_site.code, Depot.code, Kit.status,
               Kit.expiry_date, Subject.subject_number, Shipment.shipment_number, Lot.code,
               KitType.code)
        .join(Lot, Lot.id == Kit.lot_id)
        .join(KitType, KitType.id == Kit.kit_type_id)
        .outerjoin(kit_site, kit_site.id == Kit.site_id)
        .outerjoin(Depot, Depot.id == Kit.depot_id)
        .outerjoin(Subject, Subject.id == Kit.subject_id)
        .outerjoin(subject_site, subject_site.id == Subject.site_id)
        .outerjoin(Shipment, Shipment.id == Kit.shipment_id)
        .where(Kit.study_id == study.id)
        .order_by(Kit.kit_number)
    )
    if site is not None:
        query = query.where(func.coalesce(kit_site.code, subject_site.code) == site)

    def rows() -> Iterator[tuple]:
        for (number, site_code, subject_site_code, depot, status, expiry, subject, shipment, lot,
             kit_type) in _stream(session, query):
            row = (number, site_code or subject_site_code or depot or "", status, _day(expiry),
                   subject or "", shipment or "")
            yield row if blinded else row + (lot, kit_type)

    return columns, rows()


def site_inventory(session: Session, study: Study, blinded: bool = True, *,
                   site: str | None = None) -> Report:
    """Kits at each site by status (a subject's kits count at the subject's site)."""
    columns = ["site", "status", "count"] + ([] if blinded else ["kit_type"])
    place = func.coalesce(Kit.site_id, Subject.site_id)
    keys = [Site.code, Kit.status] + ([] if blinded else [KitType.code])
    query = (
        select(*keys, func.count(Kit.id))
        .outerjoin(Subject, Subject.id == Kit.subject_id)
        .join(Site, Site.id == place)
        .join(KitType, KitType.id == Kit.kit_type_id)
        .where(Kit.study_id == study.id)
        .group_by(*keys).order_by(*keys)
    )
    if site is not None:
        query = query.where(Site.code == site)
    return columns, _counts(session, query, blinded)


def depot_inventory(session: Session, study: Study, blinded: bool = True) -> Report:
    """Kits at each depot by status (reserved kits are still at the depot). A depot
    holds every arm, but per-type counts are still allocation data: unblinded only."""
    columns = ["depot", "status", "count"] + ([] if blinded else ["kit_type"])
    keys = [Depot.code, Kit.status] + ([] if blinded else [KitType.code])
    query = (
        select(*keys, func.count(Kit.id))
        .join(Depot, Depot.id == Kit.depot_id)
        .join(KitType, KitType.id == Kit.kit_type_id)
        .where(Kit.study_id == study.id)
        .group_by(*keys).order_by(*keys)
    )
    return columns, _counts(session, query, blinded)


def _counts(session: Session, query, blinded: bool) -> Iterator[tuple]:
    """(place, status, [kit type,] count) rows as (place, status, count[, kit type])."""
    for row in _stream(session, query):
        if blinded:
            place, status, count = row
            yield place, status, count
        else:
            place, status, kit_type, count = row
            yield place, status, count, kit_type


def shipments(session: Session, study: Study, blinded: bool = True, *,
              site: str | None = None, status: str | None = None, start: date | None = None,
              end: date | None = None) -> Report:
    """One row per shipment, newest first; ``kits`` is the number of kits it carries
    (the content per kit type, unblinded only, as ``KA:3 KP:3``). Dates filter on
    ``created_at``."""
    columns = ["shipment_number", "origin", "destination", "status", "kits", "dispatched_at",
               "received_at", "reason", "carrier", "tracking_number", "created_at",
               "temperature_excursion"]
    if not blinded:
        columns.append("kit_type")
    counts = (select(ShipmentKit.shipment_id, func.count().label("kits"))
              .group_by(ShipmentKit.shipment_id).subquery())
    query = (
        select(Shipment.id, Shipment.shipment_number, Depot.code, Site.code, Shipment.status,
               func.coalesce(counts.c.kits, 0), Shipment.dispatched_on, Shipment.received_at,
               Shipment.reason, Shipment.carrier, Shipment.tracking_number,
               Shipment.created_at, Shipment.temperature_excursion)
        .join(Depot, Depot.id == Shipment.depot_id)
        .join(Site, Site.id == Shipment.site_id)
        .outerjoin(counts, counts.c.shipment_id == Shipment.id)
        .where(Shipment.study_id == study.id, *within_days(Shipment.created_at, start, end))
        .order_by(Shipment.id.desc())
    )
    if site is not None:
        query = query.where(Site.code == site)
    if status is not None:
        query = query.where(Shipment.status == status)
    content = {} if blinded else _content_by_type(session, study)

    def rows() -> Iterator[tuple]:
        for (shipment_id, number, origin, destination, state, count, dispatched, received,
             reason, carrier, tracking, created, excursion) in _stream(session, query):
            row = (number, origin, destination, state, count, _day(dispatched),
                   _utc(received), reason, carrier or "", tracking or "", _utc(created),
                   "yes" if excursion else "no")
            if blinded:
                yield row
            else:
                by_type = content.get(shipment_id, Counter())
                yield row + (" ".join(f"{code}:{n}" for code, n in sorted(by_type.items())),)

    return columns, rows()


def _content_by_type(session: Session, study: Study) -> dict[int, Counter]:
    content: dict[int, Counter] = defaultdict(Counter)
    query = (select(ShipmentKit.shipment_id, KitType.code, func.count())
             .join(Kit, Kit.id == ShipmentKit.kit_id)
             .join(KitType, KitType.id == Kit.kit_type_id)
             .where(Kit.study_id == study.id)
             .group_by(ShipmentKit.shipment_id, KitType.code))
    for shipment_id, code, count in session.execute(query):
        content[shipment_id][code] = count
    return content


def unconfirmed_kits(session: Session, study: Study, blinded: bool = True, *,
                     site: str | None = None, now: datetime | None = None) -> Report:
    """Kits assigned to a subject whose number the assigning user has not confirmed
    by SMS yet (status ``assigned``), oldest first. ``hours_unconfirmed`` counts
    whole hours from the assignment to ``now`` (default: the time of the report)."""
    columns = ["subject_number", "site", "visit", "kit_number", "assigned_at", "assigned_by",
               "hours_unconfirmed"]
    if not blinded:
        columns.append("kit_type")
    now = as_utc(now or utcnow())
    query = (
        select(Subject.subject_number, Site.code, Kit.visit_code, Kit.kit_number,
               Kit.assigned_at, Kit.assigned_by, KitType.code)
        .join(Subject, Subject.id == Kit.subject_id)
        .join(Site, Site.id == Subject.site_id)
        .join(KitType, KitType.id == Kit.kit_type_id)
        .where(Kit.study_id == study.id, Kit.status == ASSIGNED)
        .order_by(Kit.assigned_at, Subject.subject_number, Kit.kit_number)
    )
    if site is not None:
        query = query.where(Site.code == site)

    def rows() -> Iterator[tuple]:
        for (subject, site_code, visit, number, assigned_at, assigned_by,
             kit_type) in _stream(session, query):
            hours = (int((now - as_utc(assigned_at)).total_seconds() // 3600)
                     if assigned_at else "")
            row = (subject, site_code, visit or "", number, _utc(assigned_at),
                   assigned_by or "", hours)
            yield row if blinded else row + (kit_type,)

    return columns, rows()


SUPPLY_REPORTS: dict[str, Callable[[Session, Study, bool], Report]] = {
    "kits": kits,
    "site-inventory": site_inventory,
    "depot-inventory": depot_inventory,
    "shipments": shipments,
    "unconfirmed-kits": unconfirmed_kits,
}
