"""What the doors show of supply besides the shipment list (``core.records``):
one shipment with its kits, kits a page at a time, kit counts per lot (or
expiry date) and place, and the shipments whose kits wait in quarantine.

The rules are ``core.records``' own, applied once here: site roles read their
own sites only, everyone else every place; a kit type or a lot only for an
unblinded role. The lot code is unblinded data like the kit type (a lot belongs
to one kit type: see ``core.supply.reports``), so a blinded reader's lot view
is keyed by expiry date. Every list is read by key a page at a time, counts are
aggregated by the database (GROUP BY), never by loading a table.
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import func, literal_column, select, tuple_
from sqlalchemy.orm import aliased

from core.actors import ROLES, SITE_ROLES, Actor
from core.db import Database
from core.errors import NotFound
from core.fields import is_digits
from core.models import Depot, Kit, KitType, Lot, Shipment, ShipmentKit, Site, Subject
from core.records import SHIPMENT_READERS, Page, _page_size
from core.studies import study_ref
from core.supply.lifecycle import QUARANTINED
from core.supply.shipments import SUPPLY_MANAGER_ROLES

# Every role reads kits, as every role may read the kits report (core.report_registry):
# site roles their own sites' kits, the others every place's.
KIT_READERS = frozenset(ROLES)
IN_TRANSIT = ""  # the location of a kit on its way (or lost on it): no depot, no site


def _site_scoped(actor: Actor) -> bool:
    return actor.role in SITE_ROLES and actor.site_codes is not None


def _require_place(actor: Actor, location: str | None) -> None:
    """A site role names only its own sites (a depot is not one of them)."""
    if location is not None and _site_scoped(actor):
        actor.require_site(location)


# --- one shipment ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ShipmentKitLine:
    kit_number: str
    status: str
    outcome: str | None  # on receipt: received | damaged | missing | quarantined
    kit_type: str | None = None  # unblinded roles only
    lot: str | None = None  # unblinded roles only


@dataclass(frozen=True)
class ShipmentDetail:
    shipment_number: str
    origin: str
    destination: str
    status: str
    reason: str
    carrier: str | None
    tracking_number: str | None
    created_at: datetime
    dispatched_on: date | None
    received_at: datetime | None
    received_by: str | None
    temperature_excursion: bool
    has_logger_data: bool
    kits: list[ShipmentKitLine] = field(default_factory=list)

    @property
    def quarantined(self) -> int:
        return sum(1 for kit in self.kits if kit.status == QUARANTINED)


def shipment_detail(db: Database, *, shipment_number: str, actor: Actor,
                    study: str | None = None) -> ShipmentDetail:
    """A shipment and the kits it carries (or carried), for a reader of its site.
    Refusals: ``unknown_shipment``, ``not_allowed``, ``wrong_site``."""
    actor.require(SHIPMENT_READERS, "read shipments")
    with db.reads() as session:
        ref = study_ref(session, study)
        number = (shipment_number or "").strip()
        row = session.execute(
            select(Shipment, Depot.code, Site.code)
            .join(Depot, Depot.id == Shipment.depot_id).join(Site, Site.id == Shipment.site_id)
            .where(Shipment.study_id == ref.id, Shipment.shipment_number == number)
        ).one_or_none() if is_digits(number) else None
        if row is None:
            raise NotFound(f"no shipment {number or '(empty)'}", code="unknown_shipment")
        shipment, depot, site = row
        if _site_scoped(actor):
            actor.require_site(site)
        kits = [ShipmentKitLine(kit_number, status, outcome,
                                *((None, None) if actor.blinded else (kit_type, lot)))
                for kit_number, status, outcome, kit_type, lot in session.execute(
                    select(Kit.kit_number, Kit.status, ShipmentKit.outcome, KitType.code,
                           Lot.code)
                    .join(ShipmentKit, ShipmentKit.kit_id == Kit.id)
                    .join(KitType, KitType.id == Kit.kit_type_id)
                    .join(Lot, Lot.id == Kit.lot_id)
                    .where(ShipmentKit.shipment_id == shipment.id)
                    .order_by(Kit.kit_number))]
        return ShipmentDetail(
            shipment.shipment_number, depot, site, shipment.status, shipment.reason,
            shipment.carrier, shipment.tracking_number, shipment.created_at,
            shipment.dispatched_on, shipment.received_at, shipment.received_by,
            bool(shipment.temperature_excursion), shipment.logger_data is not None, kits)


def shipment_logger_data(db: Database, *, shipment_number: str, actor: Actor,
                         study: str | None = None) -> dict | None:
    """The temperature logger data kept on a shipment (its site's readers and the
    sponsor's), as stored: a JSON object, or ``{"text": ...}``."""
    detail = shipment_detail(db, shipment_number=shipment_number, actor=actor, study=study)
    with db.reads() as session:
        ref = study_ref(session, study)
        return session.scalar(select(Shipment.logger_data).where(
            Shipment.study_id == ref.id, Shipment.shipment_number == detail.shipment_number))


# --- quarantine ------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuarantineLine:
    shipment_number: str
    site: str
    received_at: datetime | None
    temperature_excursion: bool
    has_logger_data: bool
    quarantined: int


def quarantine_page(db: Database, *, actor: Actor, study: str | None = None,
                    after: str | None = None, limit: int | None = None) -> Page:
    """Shipments with kits in quarantine (a temperature excursion on receipt),
    awaiting a supply manager's release or rejection; oldest first."""
    actor.require(SUPPLY_MANAGER_ROLES, "see quarantined kits")
    size = _page_size(limit)
    with db.reads() as session:
        ref = study_ref(session, study)
        query = (select(Shipment.shipment_number, Site.code, Shipment.received_at,
                        Shipment.temperature_excursion, Shipment.logger_data.is_not(None),
                        func.count(Kit.id))
                 .join(Site, Site.id == Shipment.site_id)
                 .join(ShipmentKit, ShipmentKit.shipment_id == Shipment.id)
                 .join(Kit, Kit.id == ShipmentKit.kit_id)
                 .where(Shipment.study_id == ref.id, Kit.status == QUARANTINED)
                 .group_by(Shipment.id, Shipment.shipment_number, Site.code,
                           Shipment.received_at, Shipment.temperature_excursion,
                           Shipment.logger_data.is_not(None))
                 .order_by(Shipment.id).limit(size + 1))
        if after is not None:
            after_id = session.scalar(select(Shipment.id).where(
                Shipment.study_id == ref.id, Shipment.shipment_number == after))
            query = query.where(Shipment.id > (after_id or 0))
        rows = session.execute(query).all()
    lines = [QuarantineLine(number, site, received, bool(excursion), bool(logger), count)
             for number, site, received, excursion, logger, count in rows[:size]]
    return Page(lines, lines[-1].shipment_number if len(rows) > size else None)


# --- kits ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KitLine:
    kit_number: str
    location: str  # a site or depot code; IN_TRANSIT ("") on the way
    status: str
    expiry_date: date
    shipment_number: str | None
    subject_number: str | None
    kit_type: str | None = None  # unblinded roles only
    lot: str | None = None  # unblinded roles only


def _kit_places():
    """The joins that give a kit its location, as the kits report does: its site,
    else its subject's site, else its depot; empty while travelling."""
    kit_site, subject_site = aliased(Site), aliased(Site)
    site = func.coalesce(kit_site.code, subject_site.code)
    # The empty string inline, not a bound parameter: PostgreSQL matches a GROUP BY
    # expression to the selected one by its text, and two parameters differ.
    location = func.coalesce(kit_site.code, subject_site.code, Depot.code,
                             literal_column("''"))

    def joined(query):
        return (query.outerjoin(kit_site, kit_site.id == Kit.site_id)
                .outerjoin(Subject, Subject.id == Kit.subject_id)
                .outerjoin(subject_site, subject_site.id == Subject.site_id)
                .outerjoin(Depot, Depot.id == Kit.depot_id))

    return joined, site, location


def _place_filters(actor: Actor, site, location, wanted: str | None) -> list:
    filters = []
    if _site_scoped(actor):
        filters.append(site.in_(sorted(actor.site_codes)))
    if wanted is not None:
        filters.append(location == wanted)
    return filters


def kits_page(db: Database, *, actor: Actor, study: str | None = None,
              status: str | None = None, location: str | None = None,
              after: str | None = None, limit: int | None = None) -> Page:
    """Kits by number, ``limit`` at a time after kit ``after``; ``location`` a
    site or depot code (``IN_TRANSIT`` for kits on their way)."""
    actor.require(KIT_READERS, "read kits")
    _require_place(actor, location)
    size = _page_size(limit)
    joined, site, place = _kit_places()
    with db.reads() as session:
        ref = study_ref(session, study)
        query = joined(
            select(Kit.kit_number, place, Kit.status, Kit.expiry_date,
                   Shipment.shipment_number, Subject.subject_number, KitType.code, Lot.code)
            .join(KitType, KitType.id == Kit.kit_type_id).join(Lot, Lot.id == Kit.lot_id)
            .outerjoin(Shipment, Shipment.id == Kit.shipment_id)
        ).where(Kit.study_id == ref.id, *_place_filters(actor, site, place, location))
        if status is not None:
            query = query.where(Kit.status == status)
        if after is not None:
            query = query.where(Kit.kit_number > after)
        rows = session.execute(query.order_by(Kit.kit_number).limit(size + 1)).all()
    lines = [KitLine(number, where, state, expiry, shipment, subject,
                     *((None, None) if actor.blinded else (kit_type, lot)))
             for number, where, state, expiry, shipment, subject, kit_type, lot in rows[:size]]
    return Page(lines, lines[-1].kit_number if len(rows) > size else None)


def kit_locations(db: Database, *, actor: Actor, study: str | None = None) -> list[str]:
    """The places the actor may filter kits by: its sites (site roles), else every
    depot and site of the study."""
    actor.require(KIT_READERS, "read kits")
    with db.reads() as session:
        ref = study_ref(session, study)
        sites = select(Site.code).where(Site.study_id == ref.id)
        if _site_scoped(actor):
            return sorted(session.scalars(sites.where(Site.code.in_(sorted(actor.site_codes)))))
        depots = select(Depot.code).where(Depot.study_id == ref.id)
        return sorted(session.scalars(depots)) + sorted(session.scalars(sites))


# --- lots ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LotLine:
    expiry_date: date
    location: str
    counts: dict[str, int]  # kit status -> kits
    lot: str | None = None  # unblinded roles only
    kit_type: str | None = None  # unblinded roles only

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _cursor(key: tuple) -> str:
    values = [value.isoformat() if isinstance(value, date) else value for value in key]
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def _uncursor(cursor: str, width: int) -> tuple | None:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(values, list) or len(values) != width \
                or not all(isinstance(value, str) for value in values):
            return None
        return (date.fromisoformat(values[0]), *values[1:])
    except ValueError:  # also binascii.Error and json's errors
        return None


def lots_page(db: Database, *, actor: Actor, study: str | None = None,
              location: str | None = None, after: str | None = None,
              limit: int | None = None) -> Page:
    """Kit counts per status for each lot at each place, earliest expiry first.

    Unblinded: one line per lot (its code and kit type) and place. Blinded: one
    line per expiry date and place, every lot of that date together: the lot
    code would tell kit types apart. ``after`` is the opaque ``next_after`` of
    the page before."""
    actor.require(KIT_READERS, "read kits")
    _require_place(actor, location)
    size = _page_size(limit)
    joined, site, place = _kit_places()
    keys = [Kit.expiry_date] + ([] if actor.blinded else [Lot.code, KitType.code]) + [place]
    filters = _place_filters(actor, site, place, location)
    with db.reads() as session:
        ref = study_ref(session, study)

        def grouped(*columns):
            query = joined(select(*columns).join(Lot, Lot.id == Kit.lot_id)
                           .join(KitType, KitType.id == Kit.kit_type_id))
            return query.where(Kit.study_id == ref.id, *filters)

        # First the page's lines (their keys), then their counts by status, between
        # the first and the last key: a page never splits a line.
        key_query = grouped(*keys).group_by(*keys).order_by(*keys).limit(size + 1)
        start = _uncursor(after, len(keys)) if after else None
        if start is not None:
            key_query = key_query.where(tuple_(*keys) > tuple_(*start))
        page_keys = [tuple(row) for row in session.execute(key_query)]
        shown = page_keys[:size]
        counts: dict[tuple, dict[str, int]] = defaultdict(dict)
        if shown:
            count_query = (grouped(*keys, Kit.status, func.count(Kit.id))
                           .where(tuple_(*keys) >= tuple_(*shown[0]),
                                  tuple_(*keys) <= tuple_(*shown[-1]))
                           .group_by(*keys, Kit.status))
            for *key, status, count in session.execute(count_query):
                counts[tuple(key)][status] = count
    lines = []
    for key in shown:
        if actor.blinded:
            expiry, where = key
            lines.append(LotLine(expiry, where, counts[key]))
        else:
            expiry, lot, kit_type, where = key
            lines.append(LotLine(expiry, where, counts[key], lot, kit_type))
    return Page(lines, _cursor(shown[-1]) if len(page_keys) > size else None)


__all__ = ["IN_TRANSIT", "KIT_READERS", "KitLine", "LotLine", "QuarantineLine",
           "ShipmentDetail", "ShipmentKitLine", "kit_locations", "kits_page", "lots_page",
           "quarantine_page", "shipment_detail", "shipment_logger_data"]
