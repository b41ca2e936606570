"""Shipments from a depot to a site: picking and reserving kits.

``create_shipment`` is shared by the resupply job and by a site's manual
request ("stock indent"): it picks kits first-expiry-first-out at the depot,
never one inside the do-not-ship window, locks them with ``FOR UPDATE SKIP
LOCKED`` (two shipments built at once never pick the same kit and never wait
for each other), reserves them and records the shipment. Dispatch and receipt
are separate services.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.audit import AuditLog
from core.errors import Refused
from core.models import Depot, Site, Study
from core.supply.kits import apply_move, last_shippable_expiry
from core.supply.lifecycle import AT_DEPOT
from core.supply.models import Kit, KitType, Shipment, ShipmentKit

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
