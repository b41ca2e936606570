"""Kits and lots: the kits the reader may see (a page at a time, by status and
place) and the kit counts per lot and place. Blinded readers see neither a kit
type nor a lot code (``core.supply.records``): their lot view is by expiry date."""

from __future__ import annotations

from flask import request

from core.errors import IvrsError
from core.supply import records as supply_records
from core.supply.lifecycle import STATUSES
from ivrs.web.base import actor, blueprint, db, page, user
from ivrs.web.supply_forms import refusal_status, supply_refusal

PAGE_SIZE = 50
TRANSIT = "transit"  # the location filter's value for kits on their way


def _filters() -> tuple[str | None, str | None, list[str]]:
    """(status, location for the core, the choosable locations), unknown values dropped."""
    locations = supply_records.kit_locations(db(), actor=actor(), study=user().study)
    status = request.args.get("status") or None
    if status not in STATUSES:
        status = None
    location = request.args.get("location") or None
    if location == TRANSIT:
        return status, supply_records.IN_TRANSIT, locations
    if location not in locations:
        location = None
    return status, location, locations


def _context(status, location, locations) -> dict:
    shown = TRANSIT if location == supply_records.IN_TRANSIT else location
    return {"chosen_status": status, "location": shown, "locations": locations,
            "statuses": STATUSES, "transit": TRANSIT,
            # kits on their way are not at any of a site role's sites
            "transit_offered": not actor().site_codes}


@blueprint.get("/kits")
def kits():
    status, location, locations = _filters()
    try:
        found = supply_records.kits_page(db(), actor=actor(), study=user().study,
                                         status=status, location=location,
                                         after=request.args.get("after") or None,
                                         limit=PAGE_SIZE)
    except IvrsError as refused:
        return page("kits.html", refusal_status(refused), error=supply_refusal(refused),
                    lines=[], next_after=None, **_context(status, location, locations))
    return page("kits.html", lines=found.items, next_after=found.next_after,
                **_context(status, location, locations))


@blueprint.get("/kits/lots")
def lots():
    _status, location, locations = _filters()
    try:
        found = supply_records.lots_page(db(), actor=actor(), study=user().study,
                                         location=location,
                                         after=request.args.get("after") or None,
                                         limit=PAGE_SIZE)
    except IvrsError as refused:
        return page("lots.html", refusal_status(refused), error=supply_refusal(refused),
                    lines=[], next_after=None, shown=[], **_context(None, location, locations))
    # a column for each kit status met on this page, in the lifecycle's order
    shown = [st for st in STATUSES if any(st in line.counts for line in found.items)]
    return page("lots.html", lines=found.items, next_after=found.next_after, shown=shown,
                **_context(None, location, locations))
