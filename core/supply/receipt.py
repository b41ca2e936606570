"""Receiving a shipment at the site, and the quarantine that may follow (SPEC §6.7).

A user of the destination site confirms receipt: all kits in good condition,
or some damaged or missing (named by kit number), or a temperature excursion,
in which case every kit that did arrive is quarantined and the logger data is
kept on the shipment until a supply manager releases (kits become available)
or rejects (kits become damaged) them. Each outcome is kept per kit in
``ShipmentKit.outcome``.

Kit numbers that are not in the shipment are refused before anything moves;
results give counts only, never kit types.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update

from core.actors import SITE_ROLES, Actor
from core.clock import utcnow
from core.db import Database
from core.errors import NotFound, Refused
from core.fields import is_digits
from core.models import ShipmentKit, Site
from core.service import service_call
from core.supply.kits import apply_move, lock_kits
from core.supply.lifecycle import QUARANTINED
from core.supply.outbox import notify
from core.supply.shipments import (
    DISPATCHED,
    RECEIVED,
    SUPPLY_MANAGER_ROLES,
    lock_shipment,
    require_status,
    shipment_kits,
)

MAX_LOGGER_DATA = 1_000_000  # characters of logger data kept on a shipment
RECEIVED_OK, DAMAGED, MISSING, QUARANTINE = "received", "damaged", "missing", "quarantined"


@dataclass(frozen=True)
class ReceiptResult:
    shipment_number: str
    site: str
    received: int  # arrived in good condition, now available
    damaged: int
    missing: int
    quarantined: int
    confirmation: str | None = None


@dataclass(frozen=True)
class QuarantineResult:
    kits: int
    status: str  # the kits' new status: available (released) or damaged (rejected)
    confirmation: str | None = None


def receive_shipment(db: Database, *, shipment_number: str, actor: Actor,
                     damaged: Iterable[str] = (), missing: Iterable[str] = (),
                     temperature_excursion: bool = False,
                     logger_data: dict[str, Any] | str | None = None,
                     study: str | None = None,
                     idempotency_key: str | None = None) -> ReceiptResult:
    """Confirm a dispatched shipment's arrival at the caller's site."""
    actor.require(SITE_ROLES, "confirm a shipment's receipt")
    damaged_set, missing_set = _numbers(damaged), _numbers(missing)
    both = sorted(damaged_set & missing_set)
    if both:
        raise Refused(f"kit {both[0]} cannot be both damaged and missing",
                      code="damaged_and_missing", kit=both[0])
    logger = _logger_data(logger_data)
    if logger is not None and not temperature_excursion:
        raise Refused("logger data goes with a temperature excursion", code="logger_data")
    with service_call(db, study, f"receive {shipment_number}", idempotency_key,
                      actor) as call:
        session = call.session
        shipment = lock_shipment(session, call.study.id, shipment_number)
        if (replay := call.replayed()) is not None:
            return ReceiptResult(**replay)
        site = session.get(Site, shipment.site_id)
        actor.require_site(site.code)
        require_status(shipment, DISPATCHED, "received")
        kits = shipment_kits(session, shipment)
        numbers = {kit.kit_number for kit in kits}
        foreign = sorted((damaged_set | missing_set) - numbers)
        if foreign:
            listed = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            raise Refused(f"not in shipment {shipment.shipment_number}: kit "
                          f"{listed}; nothing was recorded", code="kit_not_in_shipment",
                          kits=foreign)
        outcomes: Counter[str] = Counter()
        details = {"shipment": shipment.shipment_number}
        for kit in kits:
            if kit.kit_number in missing_set:
                # Lost on the way: the shipment stays its last known place.
                outcome = MISSING
                apply_move(call.audit, kit, "lose", details=details)
            elif kit.kit_number in damaged_set:
                outcome = DAMAGED
                apply_move(call.audit, kit, "damage", details=details, site_id=site.id,
                           depot_id=None, shipment_id=None)
            elif temperature_excursion:
                outcome = QUARANTINE
                apply_move(call.audit, kit, "quarantine", details=details, site_id=site.id,
                           depot_id=None, shipment_id=None)
            else:
                outcome = RECEIVED_OK
                apply_move(call.audit, kit, "receive", details=details, site_id=site.id,
                           depot_id=None, shipment_id=None)
            outcomes[outcome] += 1
            session.execute(update(ShipmentKit).where(ShipmentKit.shipment_id == shipment.id,
                                                      ShipmentKit.kit_id == kit.id)
                            .values(outcome=outcome))
        shipment.status = RECEIVED
        shipment.received_at = utcnow()
        shipment.received_by = actor.label
        shipment.temperature_excursion = bool(temperature_excursion)
        shipment.logger_data = logger
        counts = {"received": outcomes[RECEIVED_OK], "damaged": outcomes[DAMAGED],
                  "missing": outcomes[MISSING], "quarantined": outcomes[QUARANTINE]}
        if temperature_excursion or outcomes[DAMAGED] or outcomes[MISSING]:
            # Supply managers must act: release or reject, replace lost stock.
            notify(session, call.audit, call.study.id,
                   key=f"shipment_problem:{shipment.shipment_number}",
                   kind="shipment_problem", audience="role:depot_manager",
                   message_id="notify.shipment_problem",
                   params={"shipment": shipment.shipment_number, "site": site.code, **counts})
        call.audit.record("shipment_received", "shipment", shipment.shipment_number,
                          old={"status": DISPATCHED},
                          new={"status": RECEIVED, "site": site.code,
                               "temperature_excursion": bool(temperature_excursion),
                               "logger_data": logger is not None, **counts})
        return ReceiptResult(**call.finish({"shipment_number": shipment.shipment_number,
                                            "site": site.code, **counts}))


def release_quarantine(db: Database, *, actor: Actor, shipment_number: str | None = None,
                       kit_numbers: Iterable[str] | None = None, reason: str | None = None,
                       study: str | None = None,
                       idempotency_key: str | None = None) -> QuarantineResult:
    """Quarantined kits judged usable: back to available at their site."""
    return _decide(db, "release", actor, shipment_number, kit_numbers, reason, study,
                   idempotency_key)


def reject_quarantine(db: Database, *, actor: Actor, shipment_number: str | None = None,
                      kit_numbers: Iterable[str] | None = None, reason: str | None = None,
                      study: str | None = None,
                      idempotency_key: str | None = None) -> QuarantineResult:
    """Quarantined kits judged unusable: damaged (to be returned and destroyed)."""
    return _decide(db, "reject", actor, shipment_number, kit_numbers, reason, study,
                   idempotency_key)


def _decide(db: Database, trigger: str, actor: Actor, shipment_number: str | None,
            kit_numbers: Iterable[str] | None, reason: str | None, study: str | None,
            key: str | None) -> QuarantineResult:
    actor.require(SUPPLY_MANAGER_ROLES, f"{trigger} quarantined kits")
    numbers = _numbers(kit_numbers or ())
    if (shipment_number is None) == (not numbers):
        raise Refused("name either a shipment or kit numbers", code="bad_request")
    target = f"shipment {shipment_number}" if shipment_number else ",".join(sorted(numbers))
    with service_call(db, study, f"{trigger} quarantine {target}", key, actor) as call:
        session = call.session
        if shipment_number is not None:
            shipment = lock_shipment(session, call.study.id, shipment_number)
            if (replay := call.replayed()) is not None:
                return QuarantineResult(**replay)
            kits = [kit for kit in shipment_kits(session, shipment) if kit.status == QUARANTINED]
            if not kits:
                raise Refused(f"shipment {shipment.shipment_number} has no quarantined kits",
                              code="nothing_quarantined")
        else:
            locked = lock_kits(session, call.study.id, sorted(numbers))
            if (replay := call.replayed()) is not None:
                return QuarantineResult(**replay)
            unknown = sorted(numbers - set(locked))
            if unknown:
                raise NotFound(f"no kit {unknown[0]}", code="unknown_kit", kit=unknown[0])
            kits = list(locked.values())
        status = ""
        for kit in kits:  # a kit that is not quarantined is refused by the lifecycle
            status = apply_move(call.audit, kit, trigger, reason=reason)
        return QuarantineResult(**call.finish({"kits": len(kits), "status": status}))


def _numbers(values: Iterable[str]) -> set[str]:
    numbers = {str(value).strip() for value in values if str(value).strip()}
    bad = sorted(number for number in numbers if not is_digits(number))
    if bad:
        raise Refused(f"{bad[0]!r} is not a kit number (digits only)", code="bad_kit_number")
    return numbers


def _logger_data(data: dict[str, Any] | str | None) -> dict[str, Any] | None:
    """Logger data as stored: a JSON object as given, anything else as text."""
    if data is None:
        return None
    if isinstance(data, str):
        if len(data) > MAX_LOGGER_DATA:
            raise Refused(f"the logger data is longer than {MAX_LOGGER_DATA} characters",
                          code="too_long")
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
        return parsed if isinstance(parsed, dict) else {"text": data}
    if not isinstance(data, dict):
        raise Refused("logger data must be a JSON object or text", code="logger_data")
    if len(json.dumps(data, default=str)) > MAX_LOGGER_DATA:
        raise Refused(f"the logger data is longer than {MAX_LOGGER_DATA} characters",
                      code="too_long")
    return json.loads(json.dumps(data, default=str))


__all__ = [
    "QuarantineResult",
    "ReceiptResult",
    "receive_shipment",
    "reject_quarantine",
    "release_quarantine",
]
