"""Shipments end to end: indent, dispatch, receipt (good, damaged/missing, excursion),
quarantine release/reject, cancel, role checks, do-not-ship boundary."""

from __future__ import annotations

from dataclasses import asdict
from datetime import date

import pytest
from sqlalchemy import select
from studyfiles import DATA, STUDY_YAML, snapshot

from core.actors import ADMIN, actor_for_user
from core.audit import AuditLog, verify
from core.errors import NotFound, Refused
from core.models import Depot, Site, Study
from core.study_loader import load_study
from core.supply.kit_import import import_kits
from core.supply.kits import apply_move
from core.models import Kit, KitType, Notification, Shipment, ShipmentKit
from core.supply.receipt import receive_shipment, reject_quarantine, release_quarantine
from core.supply.shipments import (
    ShipmentPlan,
    cancel_shipment,
    create_shipment,
    dispatch_shipment,
    request_shipment,
)

TODAY = date(2026, 1, 15)
HEADER = "kit_number,kit_type,lot,expiry_date,location\n"


@pytest.fixture(autouse=True)
def fixed_today(monkeypatch):
    monkeypatch.setenv("IVRS_TODAY", TODAY.isoformat())


@pytest.fixture
def stocked(db):
    load_study(db, STUDY_YAML)
    import_kits(db, DATA / "kits.csv")
    return db


def user(db, code: str):
    with db.sessions() as session:
        study_id = session.scalars(select(Study.id)).one()
        return actor_for_user(session, study_id, code, "test")


def kits_of(db, number: str) -> dict[str, Kit]:
    with db.sessions() as session:
        shipment = session.scalars(select(Shipment).where(
            Shipment.shipment_number == number)).one()
        return {kit.kit_number: kit for kit in session.scalars(
            select(Kit).join(ShipmentKit, ShipmentKit.kit_id == Kit.id)
            .where(ShipmentKit.shipment_id == shipment.id))}


def shipment_row(db, number: str) -> Shipment:
    with db.sessions() as session:
        return session.scalars(select(Shipment).where(Shipment.shipment_number == number)).one()


def outcomes(db, number: str) -> dict[str, str]:
    with db.sessions() as session:
        return dict(session.execute(
            select(Kit.kit_number, ShipmentKit.outcome)
            .join(ShipmentKit, ShipmentKit.kit_id == Kit.id)
            .join(Shipment, Shipment.id == ShipmentKit.shipment_id)
            .where(Shipment.shipment_number == number)).all())


def site_id(db, code: str) -> int:
    with db.sessions() as session:
        return session.scalars(select(Site.id).where(Site.code == code)).one()


def dispatched(db, per_type: int = 2, site: str = "101") -> str:
    coordinator = "5001" if site == "101" else "5005"
    number = request_shipment(db, site_code=site, kits_per_type=per_type,
                              actor=user(db, coordinator)).shipment_number
    dispatch_shipment(db, shipment_number=number, carrier="DHL", tracking_number="JD0001",
                      actor=user(db, "7001"))
    return number


def assert_blind(result) -> None:
    text = repr(asdict(result))
    for secret in ("KA", "KP", "LA1", "LP1", "LA2", "LP2", "Drug", "Placebo"):
        assert secret not in text


def test_indent_ships_the_resupply_target_of_every_kit_type(stocked):
    result = request_shipment(stocked, site_code="101", actor=user(stocked, "5001"))
    assert_blind(result)
    assert (result.site, result.depot, result.status, result.kits) == ("101", "90",
                                                                       "requested", 12)
    assert result.shipment_number.isdigit() and result.confirmation
    kits = kits_of(stocked, result.shipment_number).values()
    assert {kit.status for kit in kits} == {"reserved"}
    with stocked.sessions() as session:
        types = {t.id: t.code for t in session.scalars(select(KitType))}
    by_type = [types[kit.kit_type_id] for kit in kits]
    assert by_type.count("KA") == by_type.count("KP") == 6
    assert shipment_row(stocked, result.shipment_number).reason == "indent"


def test_indent_roles_and_sites(stocked):
    before = snapshot(stocked)
    with pytest.raises(Refused, match="not one of your sites"):
        request_shipment(stocked, site_code="101", actor=user(stocked, "5003"))
    with pytest.raises(Refused, match="role depot_manager may not"):
        request_shipment(stocked, site_code="101", actor=user(stocked, "7001"))
    with pytest.raises(Refused, match="between 1 and"):
        request_shipment(stocked, site_code="101", kits_per_type=0, actor=user(stocked, "5001"))
    with pytest.raises(Refused, match="depot 90 lacks shippable stock") as caught:
        request_shipment(stocked, site_code="101", kits_per_type=50,
                         actor=user(stocked, "5001"))
    assert "KA" not in str(caught.value) and "KP" not in str(caught.value)
    with pytest.raises(NotFound):
        request_shipment(stocked, site_code="999", actor=ADMIN)
    assert snapshot(stocked) == before


def test_indent_is_idempotent_by_key(stocked):
    first = request_shipment(stocked, site_code="101", kits_per_type=1, actor=ADMIN,
                             idempotency_key="k1")
    again = request_shipment(stocked, site_code="101", kits_per_type=1, actor=ADMIN,
                             idempotency_key="k1")
    assert again == first
    with stocked.sessions() as session:
        assert len(session.scalars(select(Shipment)).all()) == 1


def test_dispatch_moves_kits_in_transit_and_notifies_the_site(stocked):
    number = request_shipment(stocked, site_code="101", kits_per_type=2,
                              actor=user(stocked, "5001")).shipment_number
    with pytest.raises(Refused, match="role site_coordinator may not"):
        dispatch_shipment(stocked, shipment_number=number, carrier="DHL",
                          tracking_number="T1", actor=user(stocked, "5001"))
    with pytest.raises(Refused, match="in the future"):
        dispatch_shipment(stocked, shipment_number=number, carrier="DHL",
                          tracking_number="T1", dispatched_on=date(2026, 1, 16),
                          actor=ADMIN)
    with pytest.raises(Refused, match="carrier is required"):
        dispatch_shipment(stocked, shipment_number=number, carrier=" ",
                          tracking_number="T1", actor=ADMIN)
    result = dispatch_shipment(stocked, shipment_number=number, carrier="DHL",
                               tracking_number="JD0001", actor=user(stocked, "7001"),
                               idempotency_key="d1")
    assert_blind(result)
    assert (result.status, result.kits) == ("dispatched", 4)
    assert dispatch_shipment(stocked, shipment_number=number, carrier="DHL",
                             tracking_number="JD0001", actor=user(stocked, "7001"),
                             idempotency_key="d1") == result
    kits = kits_of(stocked, number).values()
    assert {(k.status, k.depot_id, k.site_id) for k in kits} == {("in_transit", None, None)}
    row = shipment_row(stocked, number)
    assert (row.status, row.carrier, row.tracking_number, row.dispatched_on) == (
        "dispatched", "DHL", "JD0001", TODAY)
    with stocked.sessions() as session:
        note = session.scalars(select(Notification)).one()
    assert (note.key, note.kind, note.audience, note.message_id) == (
        f"shipment_dispatched:{number}", "shipment_dispatched", "site:101",
        "notify.shipment_dispatched")
    assert note.params == {"shipment": number, "count": 4, "carrier": "DHL",
                           "tracking": "JD0001"}
    with pytest.raises(Refused, match="is dispatched: it cannot be dispatched"):
        dispatch_shipment(stocked, shipment_number=number, carrier="DHL",
                          tracking_number="JD0001", actor=ADMIN)
    with pytest.raises(NotFound, match="no shipment 42"):
        dispatch_shipment(stocked, shipment_number="42", carrier="DHL",
                          tracking_number="JD0001", actor=ADMIN)


def test_receive_all_good(stocked):
    number = dispatched(stocked)
    with pytest.raises(Refused, match="not one of your sites"):
        receive_shipment(stocked, shipment_number=number, actor=user(stocked, "5003"))
    result = receive_shipment(stocked, shipment_number=number, actor=user(stocked, "5002"))
    assert_blind(result)
    assert (result.received, result.damaged, result.missing, result.quarantined) == (4, 0, 0, 0)
    site = site_id(stocked, "101")
    assert {(k.status, k.site_id, k.depot_id, k.shipment_id)
            for k in kits_of(stocked, number).values()} == {("available", site, None, None)}
    assert set(outcomes(stocked, number).values()) == {"received"}
    row = shipment_row(stocked, number)
    assert (row.status, row.received_by, row.temperature_excursion) == (
        "received", "user:5002", False)
    with pytest.raises(Refused, match="is received: it cannot be received"):
        receive_shipment(stocked, shipment_number=number, actor=user(stocked, "5002"))


def test_receive_with_damaged_and_missing_kits(stocked):
    number = dispatched(stocked)
    first, second, *rest = sorted(kits_of(stocked, number))
    result = receive_shipment(stocked, shipment_number=number, actor=user(stocked, "5001"),
                              damaged=[first], missing=[second])
    assert (result.received, result.damaged, result.missing, result.quarantined) == (2, 1, 1, 0)
    kits = kits_of(stocked, number)
    assert kits[first].status == "damaged" and kits[first].site_id == site_id(stocked, "101")
    assert kits[second].status == "missing" and kits[second].shipment_id is not None
    assert {kits[k].status for k in rest} == {"available"}
    assert outcomes(stocked, number) == {first: "damaged", second: "missing",
                                         **{k: "received" for k in rest}}
    with stocked.sessions() as session:
        note = session.scalars(select(Notification).where(
            Notification.kind == "shipment_problem")).one()
    assert note.params == {"shipment": number, "site": "101", "received": 2, "damaged": 1,
                           "missing": 1, "quarantined": 0}


def test_kit_numbers_not_in_the_shipment_are_refused_and_nothing_changes(stocked):
    number = dispatched(stocked)
    inside = min(kits_of(stocked, number))
    before = snapshot(stocked)
    with pytest.raises(Refused, match=f"not in shipment {number}: kit 123"):
        receive_shipment(stocked, shipment_number=number, actor=user(stocked, "5001"),
                         damaged=[inside], missing=["123"])
    with pytest.raises(Refused, match="both damaged and missing"):
        receive_shipment(stocked, shipment_number=number, actor=user(stocked, "5001"),
                         damaged=[inside], missing=[inside])
    with pytest.raises(Refused, match="not a kit number"):
        receive_shipment(stocked, shipment_number=number, actor=user(stocked, "5001"),
                         damaged=["12a"])
    with pytest.raises(Refused, match="may not"):
        receive_shipment(stocked, shipment_number=number, actor=user(stocked, "7001"))
    assert snapshot(stocked) == before


def test_excursion_quarantines_then_release_and_reject(stocked):
    number = dispatched(stocked)
    missing = min(kits_of(stocked, number))
    result = receive_shipment(stocked, shipment_number=number, actor=user(stocked, "5001"),
                              missing=[missing], temperature_excursion=True,
                              logger_data='{"max_c": 14.5, "minutes": 95}')
    assert (result.received, result.missing, result.quarantined) == (0, 1, 3)
    row = shipment_row(stocked, number)
    assert row.temperature_excursion and row.logger_data == {"max_c": 14.5, "minutes": 95}
    quarantined = {k for k, kit in kits_of(stocked, number).items() if kit.status == "quarantined"}
    assert len(quarantined) == 3
    assert {kits_of(stocked, number)[k].site_id for k in quarantined} == {site_id(stocked, "101")}

    before = snapshot(stocked)
    with pytest.raises(Refused, match="role site_coordinator may not release"):
        release_quarantine(stocked, shipment_number=number, actor=user(stocked, "5001"))
    assert snapshot(stocked) == before
    released = release_quarantine(stocked, shipment_number=number,
                                   actor=user(stocked, "5006"), reason="logger within limits")
    assert (released.kits, released.status) == (3, "available")
    assert {kits_of(stocked, number)[k].status for k in quarantined} == {"available"}
    with pytest.raises(Refused, match="no quarantined kits"):
        reject_quarantine(stocked, shipment_number=number, actor=user(stocked, "7001"))

    other = dispatched(stocked)
    receive_shipment(stocked, shipment_number=other, actor=user(stocked, "5001"),
                     temperature_excursion=True, logger_data="14.5C for 95 minutes")
    assert shipment_row(stocked, other).logger_data == {"text": "14.5C for 95 minutes"}
    one, *others = sorted(kits_of(stocked, other))
    rejected = reject_quarantine(stocked, kit_numbers=[one], actor=user(stocked, "7001"))
    assert (rejected.kits, rejected.status) == (1, "damaged")
    assert kits_of(stocked, other)[one].status == "damaged"
    before = snapshot(stocked)
    with pytest.raises(Refused, match=f"kit {one} is damaged: it cannot be released"):
        release_quarantine(stocked, kit_numbers=[one, others[0]], actor=ADMIN)
    with pytest.raises(NotFound, match="no kit 1"):
        release_quarantine(stocked, kit_numbers=["1"], actor=ADMIN)
    assert snapshot(stocked) == before
    with stocked.sessions() as session:
        assert verify(session, session.scalars(select(Study.id)).one()) is None


def test_cancel_returns_kits_to_the_depot(stocked):
    number = request_shipment(stocked, site_code="101", kits_per_type=2,
                              actor=user(stocked, "5001")).shipment_number
    with pytest.raises(Refused, match="reason is required"):
        cancel_shipment(stocked, shipment_number=number, reason="", actor=ADMIN)
    with pytest.raises(Refused, match="role site_coordinator may not cancel"):
        cancel_shipment(stocked, shipment_number=number, reason="x", actor=user(stocked, "5001"))
    result = cancel_shipment(stocked, shipment_number=number, reason="site closed",
                             actor=user(stocked, "5006"))
    assert (result.status, result.kits) == ("cancelled", 4)
    with stocked.sessions() as session:
        depot = session.scalars(select(Depot.id)).one()
    assert {(k.status, k.depot_id, k.shipment_id) for k in kits_of(stocked, number).values()} \
        == {("at_depot", depot, None)}
    assert shipment_row(stocked, number).status == "cancelled"

    sent = dispatched(stocked)
    before = snapshot(stocked)
    with pytest.raises(Refused, match="is dispatched: it cannot be cancelled"):
        cancel_shipment(stocked, shipment_number=sent, reason="too late", actor=ADMIN)
    assert snapshot(stocked) == before


def _ship_one(db, kit_type: str) -> list[str]:
    """create_shipment (the resupply job's entry point) for one kit of a type."""
    with db.transaction() as session:
        study = session.scalars(select(Study)).one()
        audit = AuditLog(study.id, "test")
        kit_type_id = session.scalars(select(KitType.id).where(KitType.code == kit_type)).one()
        depot = session.scalars(select(Depot)).one()
        site = session.scalars(select(Site).where(Site.code == "102")).one()
        shipment = create_shipment(session, audit, study,
                                   ShipmentPlan(depot, site, {kit_type_id: 1}, "resupply"),
                                   TODAY, "test")
        audit.seal(session)
        return [kit.kit_number for kit in session.scalars(
            select(Kit).where(Kit.shipment_id == shipment.id))]


def test_do_not_ship_window_boundary(db, tmp_path):
    load_study(db, STUDY_YAML)  # do_not_ship_days: 45 -> 2026-03-01 is the last excluded day
    kits = tmp_path / "kits.csv"
    kits.write_text(HEADER + "1001,KA,L45,2026-03-01,90\n1002,KA,L46,2026-03-02,90\n",
                    encoding="utf-8")
    import_kits(db, kits)
    assert _ship_one(db, "KA") == ["1002"]
    before = snapshot(db)
    with pytest.raises(Refused, match="lacks shippable stock"):
        _ship_one(db, "KA")  # only the kit expiring on today + 45 is left
    assert snapshot(db) == before


def test_cancel_is_not_blocked_by_a_kit_that_expired_while_reserved(stocked):
    number = request_shipment(stocked, site_code="101", kits_per_type=1,
                              actor=ADMIN).shipment_number
    stale, fresh = sorted(kits_of(stocked, number))
    with stocked.transaction() as session:
        kit = session.scalars(select(Kit).where(Kit.kit_number == stale)).one()
        audit = AuditLog(kit.study_id, "test")
        apply_move(audit, kit, "expire", reason="test")
        audit.seal(session)
    with pytest.raises(Refused, match=f"kit {stale} is expired: it cannot be dispatched"):
        dispatch_shipment(stocked, shipment_number=number, carrier="DHL",
                          tracking_number="T", actor=ADMIN)
    result = cancel_shipment(stocked, shipment_number=number, reason="expired kit",
                             actor=ADMIN)
    assert result.kits == 1
    kits = kits_of(stocked, number)
    assert (kits[stale].status, kits[fresh].status) == ("expired", "at_depot")
    assert kits[stale].depot_id is not None
