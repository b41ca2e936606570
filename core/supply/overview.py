"""The ``supply-overview`` report: each site's stock by status now, its days of
cover, and (for the PDF) its stock over time.

**Stock** is counted as the site inventory counts it: kits whose place is the
site (a subject's kits count at the subject's site), by status, plus
``in_transit``: kits of dispatched shipments on their way to the site.
``dispensable`` is what the site can still give out today: available, not
declared for a return, and expiring after the do-not-dispense window.

**Days of cover** = dispensable kits / kits used per day, where the use is the
number of kits the site gave to subjects (their ``assigned_at``) over the last
``COVER_DAYS`` days, divided by ``COVER_DAYS``; rounded down. It is how long
the stock on the shelf lasts if the site goes on as it has gone lately. No
dispensable kit is 0 days, whatever the use; dispensable kits and no use over
the window is "∞" (nothing says when the stock will be needed). A site that
has just started has a short past: its rate says little until it has a few
weeks of dispensing.

**Blinding**: blinded, all kit types are counted together (a site's stock per
kit type would tell its subjects' arms); unblinded, there is one row per site
and kit type, with the kit type appended as the last column. The cover of the
whole site can hide that one kit type runs out first: that shows per kit type,
unblinded only.

**The chart** has a panel per site with a line per status that matters to a
site's supply (available, in transit, awaiting confirmation, quarantined,
expired or damaged), one point a day from the first kit event to today. It is
rebuilt from the audit trail: the kit list imports (kits that start at a site
are available there from the day of their import) and every kit move
(``core.supply.kits.apply_move`` records the status and the place fields that
changed). The moves are streamed kit by kit, newest first, walking each kit
back from its current row, so that each move's place before and after is
known exactly; only the day-by-day differences are kept in memory. The chart
counts all kit types together in both views (the unblinded panel note adds
the cover per kit type).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select, union_all
from sqlalchemy.orm import Session

from core.clock import as_utc, today, utcnow
from core.models import AuditEvent, Site, Study, Subject
from core.report_charts import Chart, Panel, Series
from core.reports import BATCH, Report
from core.supply.kits import not_in_open_return, supply_settings
from core.supply.lifecycle import (
    ASSIGNED,
    AVAILABLE,
    DAMAGED,
    DISPENSED,
    EXPIRED,
    IN_TRANSIT,
    MISSING,
    QUARANTINED,
    RETURNED_BY_SUBJECT,
)
from core.models import Kit, KitType, Shipment
from core.supply.visits import utc_date

COVER_DAYS = 28
# site_stock for up to this many sites reads their kits through the indexes of the
# sites' kits and subjects; for more, one scan of the study's kits is quicker.
FEW_SITES = 10
INFINITE = "∞"
# Statuses a kit can have while its place is a site, in the report's column order.
SITE_STATUSES = [AVAILABLE, ASSIGNED, DISPENSED, RETURNED_BY_SUBJECT, QUARANTINED, EXPIRED,
                 DAMAGED, MISSING]
# The chart's lines: what a supply manager watches at a site (dispensed kits
# only ever add up, and would flatten every other line).
SERIES_OF_STATUS = {AVAILABLE: "available", IN_TRANSIT: "in transit",
                    ASSIGNED: "awaiting confirmation", QUARANTINED: "quarantined",
                    EXPIRED: "expired or damaged", DAMAGED: "expired or damaged"}
SERIES = list(dict.fromkeys(SERIES_OF_STATUS.values()))
# What a kit move may change of a kit's whereabouts (see apply_move's records).
TRACKED = ("status", "site_id", "shipment_id", "subject_id")


def days_of_cover(dispensable: int, used: int, days: int = COVER_DAYS) -> int | str:
    """Whole days ``dispensable`` kits last at ``used`` kits per ``days`` days."""
    if dispensable <= 0:
        return 0
    if used <= 0:
        return INFINITE
    return dispensable * days // used


@dataclass(frozen=True)
class SiteStock:
    """One site's (or one site and kit type's) numbers, as the report's row has them."""

    statuses: dict[str, int]
    in_transit: int
    dispensable: int
    used: int

    @property
    def cover(self) -> int | str:
        return days_of_cover(self.dispensable, self.used)


def _grouped(session: Session, keys: list, query) -> Counter:
    """GROUP BY ``keys``: the key tuple -> the count (the query's last column)."""
    counts: Counter = Counter()
    for *key, count in session.execute(query.group_by(*keys)):
        counts[tuple(key)] += count
    return counts


def site_stock(session: Session, study: Study, *, by_kit_type: bool,
               now: datetime | None = None, site_ids: list[int] | None = None
               ) -> dict[tuple[int, int | None], SiteStock]:
    """Per (site id, kit type id) or (site id, None): the stock numbers. A handful
    of GROUP BY queries, sized sites x kit types x statuses. ``site_ids``: only
    these sites' numbers (the same as theirs in the whole answer), read through
    the indexes of the kits and subjects at those sites."""
    now = as_utc(now or utcnow())
    day = utc_date(now)
    kind = [Kit.kit_type_id] if by_kit_type else []
    since = now - timedelta(days=COVER_DAYS)
    do_not_dispense = timedelta(days=int(supply_settings(study)["do_not_dispense_days"]))
    if site_ids is None:
        place = func.coalesce(Kit.site_id, Subject.site_id)
        at_sites = _grouped(session, [place, *kind, Kit.status], (
            select(place, *kind, Kit.status, func.count()).select_from(Kit)
            .outerjoin(Subject, Subject.id == Kit.subject_id)
            .where(Kit.study_id == study.id, place.is_not(None))))
        used = _grouped(session, [place, *kind], (
            select(place, *kind, func.count()).select_from(Kit)
            .outerjoin(Subject, Subject.id == Kit.subject_id)
            .where(Kit.study_id == study.id, place.is_not(None), Kit.assigned_at >= since)))
    else:
        at_sites, used = _at_sites(session, study, site_ids, by_kit_type, since)
    coming = _grouped(session, [Shipment.site_id, *kind], (
        select(Shipment.site_id, *kind, func.count()).select_from(Kit)
        .join(Shipment, Shipment.id == Kit.shipment_id)
        .where(Kit.study_id == study.id, Kit.status == IN_TRANSIT,
               *([] if site_ids is None else [Shipment.site_id.in_(site_ids)]))))
    dispensable = _grouped(session, [Kit.site_id, *kind], (
        select(Kit.site_id, *kind, func.count())
        .where(Kit.study_id == study.id, Kit.site_id.is_not(None), Kit.status == AVAILABLE,
               not_in_open_return(), Kit.expiry_date > day + do_not_dispense,
               *([] if site_ids is None else [Kit.site_id.in_(site_ids)]))))
    statuses: dict[tuple, dict[str, int]] = defaultdict(dict)
    for (site_id, *rest), count in at_sites.items():
        key = (site_id, rest[0] if by_kit_type else None)
        statuses[key][rest[-1]] = count
    keys = set(statuses) | {_key(k, by_kit_type) for k in [*coming, *dispensable, *used]}
    return {key: SiteStock(statuses.get(key, {}), coming[_raw(key, by_kit_type)],
                           dispensable[_raw(key, by_kit_type)], used[_raw(key, by_kit_type)])
            for key in keys}


def _at_sites(session: Session, study: Study, site_ids: list[int], by_kit_type: bool,
              since: datetime) -> tuple[Counter, Counter]:
    """The kits whose place is one of these sites, by (site, [kit type,] status),
    and those given out since ``since`` by (site, [kit type]), in one GROUP BY.
    A kit's place is its site or else its subject's (``coalesce``): the two
    halves of the UNION ALL are exactly those, disjoint (site or no site)."""
    kind = [Kit.kit_type_id] if by_kit_type else []
    if len(site_ids) > FEW_SITES:  # most of the study's kits: one scan of them all
        place = func.coalesce(Kit.site_id, Subject.site_id)
        rows = session.execute(
            select(place, *kind, Kit.status, func.count(),
                   func.count().filter(Kit.assigned_at >= since)).select_from(Kit)
            .outerjoin(Subject, Subject.id == Kit.subject_id)
            .where(Kit.study_id == study.id, place.in_(site_ids))
            .group_by(place, *kind, Kit.status))
        return _split(rows)
    own = (select(Kit.site_id.label("place"), *kind, Kit.status, Kit.assigned_at)
           .where(Kit.study_id == study.id, Kit.site_id.in_(site_ids)))
    subjects = (select(Subject.site_id.label("place"), *kind, Kit.status, Kit.assigned_at)
                .select_from(Kit).join(Subject, Subject.id == Kit.subject_id)
                .where(Kit.study_id == study.id, Kit.site_id.is_(None),
                       Subject.site_id.in_(site_ids)))
    kits = union_all(own, subjects).subquery()
    keys = [kits.c.place, *([kits.c.kit_type_id] if by_kit_type else []), kits.c.status]
    return _split(session.execute(
        select(*keys, func.count(), func.count().filter(kits.c.assigned_at >= since))
        .group_by(*keys)))


def _split(rows) -> tuple[Counter, Counter]:
    """(place, [kit type,] status, kits, kits given out lately) rows: the kits by
    the whole key, those given out by (place, [kit type])."""
    at_sites, used = Counter(), Counter()
    for *key, count, recent in rows:
        at_sites[tuple(key)] += count
        if recent:
            used[tuple(key[:-1])] += recent
    return at_sites, used


def _key(raw: tuple, by_kit_type: bool) -> tuple[int, int | None]:
    return (raw[0], raw[1]) if by_kit_type else (raw[0], None)


def _raw(key: tuple[int, int | None], by_kit_type: bool) -> tuple:
    return key if by_kit_type else key[:1]


def _sites(session: Session, study: Study, site: str | None) -> list[tuple[int, str, str]]:
    query = select(Site.id, Site.code, Site.name).where(Site.study_id == study.id)
    if site is not None:
        query = query.where(Site.code == site)
    return [tuple(row) for row in session.execute(query.order_by(Site.code))]


def _kit_types(session: Session, study: Study) -> list[tuple[int, str]]:
    return [tuple(row) for row in session.execute(
        select(KitType.id, KitType.code).where(KitType.study_id == study.id)
        .order_by(KitType.code))]


def supply_overview(session: Session, study: Study, blinded: bool = True, *,
                    site: str | None = None, now: datetime | None = None) -> Report:
    """One row per site (unblinded: per site and kit type), every site of the study
    even with no stock at all (that is the row to look at)."""
    columns = (["site", *SITE_STATUSES, "in_transit", "dispensable",
                f"used_last_{COVER_DAYS}_days", "days_of_cover"]
               + ([] if blinded else ["kit_type"]))
    stock = site_stock(session, study, by_kit_type=not blinded, now=now)
    sites = _sites(session, study, site)
    kinds = [(None, None)] if blinded else _kit_types(session, study)
    empty = SiteStock({}, 0, 0, 0)

    def rows() -> Iterator[tuple]:
        for site_id, code, _ in sites:
            for kit_type_id, kit_type in kinds:
                numbers = stock.get((site_id, kit_type_id), empty)
                row = (code, *(numbers.statuses.get(status, 0) for status in SITE_STATUSES),
                       numbers.in_transit, numbers.dispensable, numbers.used, numbers.cover)
                yield row if blinded else row + (kit_type,)

    return columns, rows()


# --- the chart: stock over time -----------------------------------------------------------


class _Places:
    """Where a kit state is, as a site id: its site, its subject's site, or (in
    transit) its shipment's destination. Looked up once per subject or shipment."""

    def __init__(self, session: Session):
        self.session = session
        self.subject_sites: dict[int, int | None] = {}
        self.shipment_sites: dict[int, int | None] = {}

    def site_of(self, state: dict[str, Any]) -> int | None:
        if state.get("site_id") is not None:
            return state["site_id"]
        if state.get("subject_id") is not None:
            return self._lookup(self.subject_sites, Subject, state["subject_id"])
        if state.get("status") == IN_TRANSIT and state.get("shipment_id") is not None:
            return self._lookup(self.shipment_sites, Shipment, state["shipment_id"])
        return None

    def _lookup(self, cache: dict[int, int | None], model, row_id: int) -> int | None:
        if row_id not in cache:
            cache[row_id] = self.session.execute(
                select(model.site_id).where(model.id == row_id)).scalar()
        return cache[row_id]


def _line(places: _Places, state: dict[str, Any]) -> tuple[int, str] | None:
    series = SERIES_OF_STATUS.get(state.get("status"))
    site_id = places.site_of(state) if series is not None else None
    return (site_id, series) if site_id is not None else None


def stock_changes(session: Session, study: Study) -> dict[date, Counter]:
    """Day -> (site id, series) -> change of the count that day."""
    changes: dict[date, Counter] = defaultdict(Counter)
    site_ids = dict(session.execute(select(Site.code, Site.id).where(
        Site.study_id == study.id)).all())
    for at, new in session.execute(select(AuditEvent.at, AuditEvent.new).where(
            AuditEvent.study_id == study.id, AuditEvent.action == "kits_imported")):
        for code, count in ((new or {}).get("locations") or {}).items():
            if code in site_ids:  # else a depot: not a site's stock
                changes[utc_date(at)][(site_ids[code], SERIES_OF_STATUS[AVAILABLE])] += count
    places = _Places(session)
    moves = (
        select(AuditEvent.entity_id, AuditEvent.at, AuditEvent.old, Kit.status, Kit.site_id,
               Kit.shipment_id, Kit.subject_id)
        .join(Kit, and_(Kit.study_id == AuditEvent.study_id,
                        Kit.kit_number == AuditEvent.entity_id))
        .where(AuditEvent.study_id == study.id, AuditEvent.entity_type == "kit")
        .order_by(AuditEvent.entity_id, AuditEvent.seq.desc())
        .execution_options(yield_per=BATCH))
    kit, state = None, {}
    for kit_number, at, old, *current in session.execute(moves):
        if kit_number != kit:  # a new kit: start from where it is now
            kit, state = kit_number, dict(zip(TRACKED, current))
        before = {**state, **{name: value for name, value in (old or {}).items()
                              if name in TRACKED}}
        after_line, before_line = _line(places, state), _line(places, before)
        if after_line != before_line:
            day = utc_date(at)
            if after_line is not None:
                changes[day][after_line] += 1
            if before_line is not None:
                changes[day][before_line] -= 1
        state = before
    return changes


def stock_chart(session: Session, study: Study, blinded: bool = True, *,
                site: str | None = None, start: date | None = None,
                end: date | None = None) -> Chart:
    """Per site, the daily count of kits in each of ``SERIES``, from the first
    kit event (or ``start``) to today (or ``end``); the panel note gives the
    days of cover."""
    changes = stock_changes(session, study)
    last = max([today(), *changes])
    days = _days(min(changes, default=last), last)
    sites = _sites(session, study, site)
    covers = _cover_notes(session, study, blinded, sites)
    running: Counter = Counter()
    points: dict[tuple[int, str], list[tuple[date, float]]] = defaultdict(list)
    wanted = {site_id for site_id, _, _ in sites}
    for day in days:
        running.update(changes.get(day, Counter()))
        if (start is None or day >= start) and (end is None or day <= end):
            for site_id in wanted:
                for series in SERIES:
                    points[(site_id, series)].append((day, float(running[(site_id, series)])))
    panels = [Panel(f"{code} {name}", [Series(series, points[(site_id, series)])
                                       for series in SERIES], covers[site_id])
              for site_id, code, name in sites]
    return Chart("Stock at each site", "kits", panels)


def _days(first: date, last: date) -> Iterator[date]:
    for offset in range((last - first).days + 1):
        yield first + timedelta(days=offset)


def _cover_notes(session: Session, study: Study, blinded: bool,
                 sites: list[tuple[int, str, str]]) -> dict[int, str]:
    """Site id -> the panel's note: the site's cover (unblinded: and per kit type)."""
    empty = SiteStock({}, 0, 0, 0)
    whole = site_stock(session, study, by_kit_type=False)
    per_type = {} if blinded else site_stock(session, study, by_kit_type=True)
    kinds = [] if blinded else _kit_types(session, study)
    notes = {}
    for site_id, _, _ in sites:
        numbers = whole.get((site_id, None), empty)
        note = (f"days of cover: {numbers.cover} ({numbers.dispensable} dispensable, "
                f"{numbers.used} used in the last {COVER_DAYS} days)")
        if kinds:
            note += "; by kit type: " + ", ".join(
                f"{code} {per_type.get((site_id, kit_type_id), empty).cover}"
                for kit_type_id, code in kinds)
        notes[site_id] = note
    return notes
