"""Shipments from a depot to a site: picking and reserving kits.

``create_shipment`` is shared by the resupply job and by a site's manual
request ("stock indent", ``request_shipment``): it picks kits
first-expiry-first-out at the depot, never one inside the do-not-ship window,
locks them with ``FOR UPDATE SKIP LOCKED`` (two shipments built at once never
pick the same kit and never wait for each other), reserves them and records
the shipment. ``dispatch_shipment`` and ``cancel_shipment`` are the depot's
side; receipt at the site is in ``core.supply.receipt``.

Each service is one transaction, role-checked, audited and idempotent by key;
results and refusals give kit counts, never kit types (a site's shipment
content by type would reveal its subjects' arms).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.actors import SITE_ROLES, Actor
from core.audit import AuditLog
from core.clock import today
from core.db import Database
from core.errors import NotFound, Refused
from core.fields import is_digits
from core.models import Depot, Kit, KitType, Shipment, ShipmentKit, Site, SiteSupply, Study
from core.service import service_call
from core.supply.kits import apply_move, last_shippable_expiry
from core.supply.lifecycle import AT_DEPOT, RESERVED
from core.supply.outbox import notify

REQUESTED, DISPATCHED, RECEIVED, CANCELLED = "requested", "dispatched", "received", "cancelled"
NUMBER_BASE = 500000  # shipment numbers are digits (typed on a keypad): 500001, 500002 ...


@dataclass(frozen=True)
class ShipmentPlan:
    """How many kits of each type a shipment should carry (kit type id -> count)."""

    depot: Depot
    site: Site
    quantities: dict[int, int]
    reason: str  # initial | resupply | urgent | indent


def create_shipment(session: Session, audit: AuditLog, study: Study, plan: ShipmentPlan,
                    today: date, actor_label: str) -> Shipment:
    """Reserve the kits and record the shipment; refuses when the depot lacks stock.

    All or nothing: if any kit type is short, nothing is reserved (the caller's
    transaction rolls back) and the refusal says which depot is short.
    """
    if not any(count > 0 for count in plan.quantities.values()):
        raise Refused("a shipment needs at least one kit", code="empty_shipment")
    shipment = Shipment(study_id=study.id, shipment_number="pending", depot_id=plan.depot.id,
                        site_id=plan.site.id, status=REQUESTED, reason=plan.reason,
                        created_by=actor_label)
    session.add(shipment)
    session.flush()
    shipment.shipment_number = str(NUMBER_BASE + shipment.id)
    latest_expiry = last_shippable_expiry(study, today)
    picked: list[Kit] = []
    for kit_type_id, count in sorted(plan.quantities.items()):
        if count <= 0:
            continue
        kits = session.scalars(
            select(Kit).where(Kit.study_id == study.id, Kit.depot_id == plan.depot.id,
                              Kit.status == AT_DEPOT, Kit.kit_type_id == kit_type_id,
                              Kit.expiry_date > latest_expiry)
            .order_by(Kit.expiry_date, Kit.kit_number).limit(count)
            .with_for_update(skip_locked=True)
        ).all()
        if len(kits) < count:
            # The kit type is not named: the refusal may reach blinded people.
            raise Refused(f"depot {plan.depot.code} lacks shippable stock for this shipment",
                          code="depot_short", depot=plan.depot.code)
        picked.extend(kits)
    for kit in picked:
        apply_move(audit, kit, "reserve", shipment_id=shipment.id,
                   details={"shipment": shipment.shipment_number})
        session.add(ShipmentKit(shipment_id=shipment.id, kit_id=kit.id))
    audit.record("shipment_created", "shipment", shipment.shipment_number, new={
        "depot": plan.depot.code, "site": plan.site.code, "reason": plan.reason,
        "kits": len(picked),
        # per-type counts reveal arms at a site: unblinded key, redacted when blinded
        "kit_type": {_type_code(session, t): n for t, n in plan.quantities.items() if n},
    })
    return shipment


def _type_code(session: Session, kit_type_id: int) -> str:
    return session.get(KitType, kit_type_id).code


# Who may do what with shipments (admin may do everything: ``Actor.require``).
DEPOT_ROLES = frozenset({"depot_manager"})
SUPPLY_MANAGER_ROLES = frozenset({"project_manager", "depot_manager"})
MAX_KITS_PER_TYPE = 500  # a stock indent larger than this is a typing mistake
MAX_TEXT = 100  # carrier, tracking number (the columns' size)


@dataclass(frozen=True)
class ShipmentResult:
    """What a shipment service tells its caller: counts only, never kit types."""

    shipment_number: str
    site: str
    depot: str
    status: str
    kits: int
    confirmation: str | None = None


def request_shipment(db: Database, *, site_code: str, actor: Actor,
                     kits_per_type: int | None = None, study: str | None = None,
                     idempotency_key: str | None = None) -> ShipmentResult:
    """A site's manual stock indent, shipped from the site's depot.

    To keep the blind a site cannot ask for a kit type (that would tell which
    arm it is short of): it asks for ``kits_per_type`` kits of *every* kit
    type, or, without a number, the resupply target of every kit type.
    """
    actor.require(SITE_ROLES, "request a shipment")
    if kits_per_type is not None and not 1 <= kits_per_type <= MAX_KITS_PER_TYPE:
        raise Refused(f"kits per kit type must be between 1 and {MAX_KITS_PER_TYPE}",
                      code="bad_quantity")
    with service_call(db, study, f"indent {site_code}", idempotency_key, actor) as call:
        session = call.session
        # The site row serializes a site's indents: a retry waits, then replays.
        site = session.execute(
            select(Site).where(Site.study_id == call.study.id, Site.code == site_code)
            .with_for_update()).scalar_one_or_none()
        if site is None or not site.active:
            raise NotFound(f"no active site {site_code}", code="unknown_site")
        if (replay := call.replayed()) is not None:
            return ShipmentResult(**replay)
        actor.require_site(site.code)
        if site.depot_id is None:
            raise Refused(f"site {site.code} has no depot to ship from", code="no_depot")
        study_row = session.get(Study, call.study.id)
        kit_type_ids = session.scalars(
            select(KitType.id).where(KitType.study_id == study_row.id)).all()
        if not kit_type_ids:
            raise Refused(f"study {study_row.code} has no kit types: nothing to ship",
                          code="no_kit_types")
        per_type = kits_per_type or _indent_target(session, study_row, site)
        if per_type <= 0:
            raise Refused("the study sets no resupply target: say how many kits per kit "
                          "type", code="bad_quantity")
        depot = session.get(Depot, site.depot_id)
        shipment = create_shipment(
            session, call.audit, study_row,
            ShipmentPlan(depot, site, {kit_type_id: per_type for kit_type_id in kit_type_ids},
                         "indent"),
            today(), actor.label)
        kits = per_type * len(kit_type_ids)
        # The same number for every type: it reveals nothing, so no unblinded key.
        call.audit.record("shipment_requested", "shipment", shipment.shipment_number,
                          new={"site": site.code, "kits_per_type": per_type, "kits": kits})
        return ShipmentResult(**call.finish({
            "shipment_number": shipment.shipment_number, "site": site.code,
            "depot": depot.code, "status": shipment.status, "kits": kits}))


def _indent_target(session: Session, study: Study, site: Site) -> int:
    """Kits per type for an indent without a number: the highest target for the site
    (its own overrides, else the study's default), the same for every type."""
    override = session.execute(
        select(func.max(SiteSupply.target)).where(SiteSupply.site_id == site.id)).scalar()
    if override:
        return int(override)
    default = (study.config or {}).get("supply", {}) or {}
    return int((default.get("default_resupply") or {}).get("target") or 0)


def dispatch_shipment(db: Database, *, shipment_number: str, carrier: str,
                      tracking_number: str, actor: Actor, dispatched_on: date | None = None,
                      study: str | None = None,
                      idempotency_key: str | None = None) -> ShipmentResult:
    """The depot hands the shipment to the carrier: kits reserved -> in transit.

    The site is told through the outbox (``shipment_dispatched``), with the
    number of kits, the carrier and the tracking number.
    """
    actor.require(DEPOT_ROLES, "dispatch shipments")
    carrier = required_text(carrier, "carrier")
    tracking_number = required_text(tracking_number, "tracking number")
    with service_call(db, study, f"dispatch {shipment_number}", idempotency_key,
                      actor) as call:
        session = call.session
        shipment = lock_shipment(session, call.study.id, shipment_number)
        if (replay := call.replayed()) is not None:
            return ShipmentResult(**replay)
        require_status(shipment, REQUESTED, "dispatched")
        on = dispatched_on or today()
        if on > today():
            raise Refused(f"the dispatch date {on.isoformat()} is in the future",
                          code="bad_date")
        if on < shipment.created_at.date():
            raise Refused(f"the dispatch date {on.isoformat()} is before the shipment was "
                          f"created ({shipment.created_at.date().isoformat()})",
                          code="bad_date")
        kits = shipment_kits(session, shipment)
        for kit in kits:
            # In transit the shipment is the kit's place: it has left the depot.
            apply_move(call.audit, kit, "dispatch", depot_id=None,
                       details={"shipment": shipment.shipment_number})
        shipment.status = DISPATCHED
        shipment.carrier, shipment.tracking_number = carrier, tracking_number
        shipment.dispatched_on = on
        site, depot = session.get(Site, shipment.site_id), session.get(Depot, shipment.depot_id)
        notify(session, call.audit, call.study.id,
               key=f"shipment_dispatched:{shipment.shipment_number}",
               kind="shipment_dispatched", audience=f"site:{site.code}",
               message_id="notify.shipment_dispatched",
               params={"shipment": shipment.shipment_number, "count": len(kits),
                       "carrier": carrier, "tracking": tracking_number})
        call.audit.record("shipment_dispatched", "shipment", shipment.shipment_number,
                          old={"status": REQUESTED},
                          new={"status": DISPATCHED, "carrier": carrier,
                               "tracking_number": tracking_number, "dispatched_on": on,
                               "kits": len(kits)})
        return ShipmentResult(**call.finish({
            "shipment_number": shipment.shipment_number, "site": site.code,
            "depot": depot.code, "status": DISPATCHED, "kits": len(kits)}))


def cancel_shipment(db: Database, *, shipment_number: str, reason: str, actor: Actor,
                    study: str | None = None,
                    idempotency_key: str | None = None) -> ShipmentResult:
    """Cancel a shipment not yet dispatched: its kits go back to the depot's stock."""
    actor.require(SUPPLY_MANAGER_ROLES, "cancel shipments")
    reason = required_text(reason, "reason", limit=1000)
    with service_call(db, study, f"cancel {shipment_number}", idempotency_key, actor) as call:
        session = call.session
        shipment = lock_shipment(session, call.study.id, shipment_number)
        if (replay := call.replayed()) is not None:
            return ShipmentResult(**replay)
        require_status(shipment, REQUESTED, "cancelled")
        # A kit that expired while reserved (the expiry job may do that) stays
        # expired at the depot: cancelling must not be blocked by it.
        carried = shipment_kits(session, shipment)
        kits = [kit for kit in carried if kit.status == RESERVED]
        for kit in kits:
            apply_move(call.audit, kit, "unreserve", reason=reason, shipment_id=None,
                       details={"shipment": shipment.shipment_number})
        shipment.status = CANCELLED
        call.audit.record("shipment_cancelled", "shipment", shipment.shipment_number,
                          old={"status": REQUESTED},
                          new={"status": CANCELLED, "kits": len(kits),
                               "kits_not_reserved": len(carried) - len(kits)}, reason=reason)
        site, depot = session.get(Site, shipment.site_id), session.get(Depot, shipment.depot_id)
        return ShipmentResult(**call.finish({
            "shipment_number": shipment.shipment_number, "site": site.code,
            "depot": depot.code, "status": CANCELLED, "kits": len(kits)}))


def lock_shipment(session: Session, study_id: int, shipment_number: str) -> Shipment:
    """The shipment row, locked: every service on one shipment goes through it."""
    number = (shipment_number or "").strip()
    shipment = session.execute(
        select(Shipment).where(Shipment.study_id == study_id,
                               Shipment.shipment_number == number)
        .with_for_update()).scalar_one_or_none() if is_digits(number) else None
    if shipment is None:
        raise NotFound(f"no shipment {number or '(empty)'}", code="unknown_shipment")
    return shipment


def shipment_kits(session: Session, shipment: Shipment) -> list[Kit]:
    """The kits the shipment carries (or carried), locked in kit-number order."""
    return list(session.scalars(
        select(Kit).join(ShipmentKit, ShipmentKit.kit_id == Kit.id)
        .where(ShipmentKit.shipment_id == shipment.id)
        .order_by(Kit.kit_number).with_for_update(of=Kit)))


def require_status(shipment: Shipment, status: str, action: str) -> None:
    if shipment.status != status:
        raise Refused(f"shipment {shipment.shipment_number} is {shipment.status}: it cannot "
                      f"be {action}", code=f"shipment_{shipment.status}",
                      shipment=shipment.shipment_number)


def required_text(value: Any, what: str, limit: int = MAX_TEXT) -> str:
    text = str(value or "").strip()
    if not text:
        raise Refused(f"a {what} is required", code="missing_field", field=what)
    if len(text) > limit:
        raise Refused(f"the {what} is longer than {limit} characters", code="too_long",
                      field=what)
    return text
