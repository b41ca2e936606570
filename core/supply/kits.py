"""Moving kits: the one place that changes a kit's status, place or subject.

Every service that touches kits calls ``apply_move``: it asks the lifecycle
for the new status (refusing moves it does not allow), sets the place, stamps
the time and writes the audit record in the caller's transaction. The audit
record never names the kit type outside the unblinded ``kit_type`` key.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from sqlalchemy import ColumnElement, bindparam, exists, select
from sqlalchemy.orm import Session

from core.audit import AuditLog
from core.clock import utcnow
from core.models import Kit, KitReturn, ReturnKit, Study
from core.supply.lifecycle import move

# A return is open from its declaration until the depot receives it (or it is rejected).
OPEN_RETURN_STATUSES = ("declared", "approved")

PLACE_FIELDS = ("depot_id", "site_id", "shipment_id", "subject_id", "visit_code")


def apply_move(audit: AuditLog, kit: Kit, trigger: str, *, reason: str | None = None,
               details: dict[str, Any] | None = None, **changes: Any) -> str:
    """Move one (locked) kit by ``trigger``; ``changes`` set its place fields."""
    old_status = kit.status
    new_status = move(kit.kit_number, old_status, trigger)
    old = {"status": old_status}
    new = {"status": new_status}
    for name, value in changes.items():
        if getattr(kit, name) != value:
            old[name] = getattr(kit, name)
            new[name] = value
            setattr(kit, name, value)
    kit.status = new_status
    kit.updated_at = utcnow()
    audit.record(f"kit_{trigger}", "kit", kit.kit_number, old=old,
                 new={**new, **(details or {})}, reason=reason)
    return new_status


def not_in_open_return() -> ColumnElement[bool]:
    """A filter for kits a site still holds but has declared for return: they are
    neither dispensable nor stock to count on."""
    return ~exists().where(ReturnKit.kit_id == Kit.id, KitReturn.id == ReturnKit.return_id,
                           KitReturn.status.in_(OPEN_RETURN_STATUSES))


_LOCK_KITS = (select(Kit).where(Kit.study_id == bindparam("study_id"),
                                Kit.kit_number.in_(bindparam("numbers", expanding=True)))
              .order_by(Kit.kit_number).with_for_update())


def lock_kits(session: Session, study_id: int, kit_numbers: list[str]) -> dict[str, Kit]:
    """The kits by number, row-locked in a fixed order (kit number) so that two
    services locking overlapping sets can never deadlock."""
    kits = session.scalars(_LOCK_KITS, {"study_id": study_id, "numbers": kit_numbers}).all()
    return {kit.kit_number: kit for kit in kits}


def supply_settings(study: Study) -> dict[str, Any]:
    """The study file's ``supply`` section with its defaults."""
    supply = dict((study.config or {}).get("supply") or {})
    supply.setdefault("do_not_dispense_days", 0)
    supply.setdefault("do_not_ship_days", 0)
    return supply


def last_shippable_expiry(study: Study, today: date) -> date:
    """Kits expiring on or before this date are never shipped (do-not-ship window)."""
    return today + timedelta(days=int(supply_settings(study)["do_not_ship_days"]))
