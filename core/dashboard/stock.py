"""Supply for the dashboard: stock and days of cover per site, expiring kits,
kits awaiting confirmation.

Stock and cover are ``core.supply.overview.site_stock``'s, the supply-overview
report's own numbers (dispensable = available, not in an open return, expiring
after the do-not-dispense window; cover = dispensable ÷ kits given out per day
over the last ``COVER_DAYS``), so the page and the report never disagree. Its
"∞" (stock, but nothing given out lately) is None here; no dispensable kit is
0 days. Cover under ``LOW_COVER_DAYS`` is flagged: two weeks is about a
resupply's lead time (order, pick, ship) with a margin.

**Blinding**: blinded, all kit types together; per kit type (and lot codes, a
lot belongs to one kit type) only for an unblinded role, as core.records does.

Expiring kits: unused kits (at a depot, picked, on their way, at a site,
quarantined; not those in an open return) expiring within the study's
do-not-dispense window plus ``EXPIRY_WARNING_DAYS``: the window's kits can no
longer be dispensed, the 30 days after it are the ones to use first or move,
about one resupply cycle ahead. Kits on their way count at their destination.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from core.actors import SITE_ROLES, Actor
from core.clock import as_utc
from core.models import Depot, Kit, KitType, Lot, Shipment, Site, Study, Subject
from core.supply.kits import not_in_open_return, supply_settings
from core.supply.lifecycle import (
    ASSIGNED,
    AT_DEPOT,
    AVAILABLE,
    IN_TRANSIT,
    QUARANTINED,
    RESERVED,
)
from core.supply.overview import INFINITE, SiteStock, site_stock

LOW_COVER_DAYS = 14
EXPIRY_WARNING_DAYS = 30
UNUSED = (AT_DEPOT, RESERVED, IN_TRANSIT, AVAILABLE, QUARANTINED)


@dataclass(frozen=True)
class KitTypeStock:  # unblinded only
    kit_type: str
    dispensable: int
    used_recently: int
    days_of_cover: int | None
    low_cover: bool


@dataclass(frozen=True)
class SiteStockLine:
    site: str
    name: str
    dispensable: int  # all kit types together
    quarantined: int
    in_transit: int
    used_recently: int  # kits given to subjects over the last COVER_DAYS days
    days_of_cover: int | None  # None: stock, but none given out lately
    low_cover: bool  # days_of_cover < LOW_COVER_DAYS (0 stock included)
    by_kit_type: tuple[KitTypeStock, ...] | None  # unblinded roles only


@dataclass(frozen=True)
class ExpiringKits:
    expiry_date: date
    location: str  # a site's or a depot's code
    location_kind: str  # site | depot
    kits: int
    dispensable: bool  # False: inside the do-not-dispense window already
    lot: str | None  # unblinded roles only


@dataclass(frozen=True)
class UnconfirmedKits:
    site: str
    kits: int
    oldest_assigned_at: datetime | None


def _cover(numbers: SiteStock) -> int | None:
    cover = numbers.cover
    return None if cover == INFINITE else int(cover)


def _low(cover: int | None) -> bool:
    return cover is not None and cover < LOW_COVER_DAYS


def stock(session: Session, study: Study, sites: dict[int, tuple[str, str]], now: datetime,
          blinded: bool) -> tuple[SiteStockLine, ...]:
    empty = SiteStock({}, 0, 0, 0)
    visible = list(sites)
    whole = site_stock(session, study, by_kit_type=False, now=now, site_ids=visible)
    per_type, kinds = {}, []
    if not blinded:
        per_type = site_stock(session, study, by_kit_type=True, now=now, site_ids=visible)
        kinds = session.execute(select(KitType.id, KitType.code)
                                .where(KitType.study_id == study.id)
                                .order_by(KitType.code)).all()
    lines = []
    for site_id, (code, name) in sites.items():
        numbers = whole.get((site_id, None), empty)
        cover = _cover(numbers)
        types = None
        if not blinded:
            types = tuple(KitTypeStock(kind, typed.dispensable, typed.used, _cover(typed),
                                       _low(_cover(typed)))
                          for kind_id, kind in kinds
                          for typed in [per_type.get((site_id, kind_id), empty)])
        lines.append(SiteStockLine(code, name, numbers.dispensable,
                                   numbers.statuses.get(QUARANTINED, 0), numbers.in_transit,
                                   numbers.used, cover, _low(cover), types))
    return tuple(lines)


def expiring(session: Session, study: Study, actor: Actor, today: date
             ) -> tuple[ExpiringKits, ...]:
    do_not_dispense = int(supply_settings(study)["do_not_dispense_days"])
    horizon = today + timedelta(days=do_not_dispense + EXPIRY_WARNING_DAYS)
    last_undispensable = today + timedelta(days=do_not_dispense)
    lot = [] if actor.blinded else [Lot.code]
    site_id = func.coalesce(Kit.site_id, Shipment.site_id)
    query = (
        select(Kit.expiry_date, Site.code, Depot.code, *lot, func.count()).select_from(Kit)
        .outerjoin(Shipment, and_(Shipment.id == Kit.shipment_id, Kit.status == IN_TRANSIT))
        .outerjoin(Site, Site.id == site_id)
        .outerjoin(Depot, and_(Depot.id == Kit.depot_id, site_id.is_(None)))
        .where(Kit.study_id == study.id, Kit.status.in_(UNUSED), Kit.expiry_date <= horizon,
               not_in_open_return())
        .group_by(Kit.expiry_date, Site.code, Depot.code, *lot)
        .order_by(Kit.expiry_date, Site.code, Depot.code, *lot))
    if not actor.blinded:
        query = query.join(Lot, Lot.id == Kit.lot_id)
    if actor.role in SITE_ROLES and actor.site_codes is not None:
        query = query.where(Site.code.in_(sorted(actor.site_codes)))
    groups = []
    for expiry, site, depot, *rest in session.execute(query):
        if site is None and depot is None:
            continue  # nowhere (cannot happen for an unused kit): nothing to show
        groups.append(ExpiringKits(
            expiry, site or depot, "site" if site is not None else "depot", rest[-1],
            expiry > last_undispensable, None if actor.blinded else rest[0]))
    return tuple(groups)


def unconfirmed(session: Session, sites: dict[int, tuple[str, str]]
                ) -> tuple[UnconfirmedKits, ...]:
    """Per site, kits given to a subject whose number nobody confirmed yet (the
    ``unconfirmed-kits`` report's kits, counted)."""
    rows = session.execute(
        select(Subject.site_id, func.count(), func.min(Kit.assigned_at))
        .join(Subject, Subject.id == Kit.subject_id)
        .where(Subject.site_id.in_(list(sites)), Kit.status == ASSIGNED)
        .group_by(Subject.site_id))
    found = {site: (count, oldest) for site, count, oldest in rows}
    return tuple(UnconfirmedKits(code, found[site_id][0],
                                 _maybe_utc(found[site_id][1]))
                 for site_id, (code, _) in sites.items() if site_id in found)


def _maybe_utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else as_utc(moment)
