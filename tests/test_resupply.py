"""The resupply job (core.supply.resupply): triggers, targets, blinding, shortages."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest
from sqlalchemy import func, select
from studyfiles import STUDY_YAML, line_of, snapshot, study_text, write_study

from core.audit import AuditLog, blinded
from core.errors import FileErrors
from core.models import Arm, AuditEvent, Randomization, RandomizationEvent, Site, Study, Subject
from core.study_loader import load_study
from core.models import (
    Kit,
    KitType,
    Lot,
    Notification,
    Shipment,
    ShipmentKit,
    SiteSupply,
    SubjectVisit,
)
from core.supply.resupply import Levels, plan_quantities, run_resupply, urgent_resupply

TODAY = date(2026, 3, 2)
FAR = TODAY + timedelta(days=400)


# --- helpers ----------------------------------------------------------------------------


def add_kits(db, type_code: str, count: int, *, expiry: date = FAR, site: str | None = None,
             status: str | None = None) -> list[str]:
    """Kits at depot 90 (``at_depot``) or available at ``site``; returns their numbers."""
    with db.transaction() as s:
        study = s.scalars(select(Study)).one()
        kit_type = s.scalars(select(KitType).where(KitType.study_id == study.id,
                                                   KitType.code == type_code)).one()
        lot_code = f"L{type_code}{expiry:%Y%m%d}"
        lot = s.scalars(select(Lot).where(Lot.study_id == study.id, Lot.code == lot_code,
                                          Lot.kit_type_id == kit_type.id)).one_or_none()
        if lot is None:
            lot = Lot(study_id=study.id, kit_type_id=kit_type.id, code=lot_code,
                      expiry_date=expiry)
            s.add(lot)
            s.flush()
        first = s.scalar(select(func.count()).select_from(Kit)) + 1
        place = {}
        if site is None:
            place["depot_id"] = s.scalar(select(_depot_id()))
        else:
            place["site_id"] = s.scalar(select(Site.id).where(Site.code == site))
        numbers = [str(700000 + first + i) for i in range(count)]
        for number in numbers:
            s.add(Kit(study_id=study.id, kit_number=number, kit_type_id=kit_type.id,
                      lot_id=lot.id, expiry_date=expiry,
                      status=status or ("at_depot" if site is None else "available"), **place))
    return numbers


def _depot_id():
    from core.models import Depot
    return Depot.id


def shipped(db, number: str) -> dict[str, int]:
    """Kits per kit type code in a shipment (what only an unblinded view may see)."""
    with db.sessions() as s:
        rows = s.execute(
            select(KitType.code, func.count()).join(Kit, Kit.kit_type_id == KitType.id)
            .join(ShipmentKit, ShipmentKit.kit_id == Kit.id)
            .join(Shipment, Shipment.id == ShipmentKit.shipment_id)
            .where(Shipment.shipment_number == number).group_by(KitType.code)).all()
    return dict(rows)


def by_site(summaries) -> dict[str, object]:
    return {summary.site: summary for summary in summaries}


def notifications(db, kind: str) -> list[Notification]:
    with db.sessions() as s:
        return list(s.scalars(select(Notification).where(Notification.kind == kind)
                              .order_by(Notification.id)))


@pytest.fixture
def study(db):
    load_study(db, STUDY_YAML)
    return db


@pytest.fixture
def stocked(study):
    """Depot 90 with plenty of both kit types; sites 102 and 103 already supplied."""
    add_kits(study, "KA", 40)
    add_kits(study, "KP", 40)
    for site in ("102", "103"):
        add_kits(study, "KA", 6, site=site)
        add_kits(study, "KP", 6, site=site)
    return study


# --- trigger and target --------------------------------------------------------------------


def test_stock_equal_to_trigger_ships_one_above_does_not(stocked):
    add_kits(stocked, "KA", 3, site="101")
    add_kits(stocked, "KP", 3, site="101")
    assert run_resupply(stocked, today=TODAY) == []  # 3 = trigger + 1: nothing

    with stocked.transaction() as s:  # one KA kit leaves the site's usable stock
        kit = s.scalars(select(Kit).join(KitType).join(Site, Site.id == Kit.site_id)
                        .where(KitType.code == "KA", Site.code == "101")
                        .order_by(Kit.kit_number).limit(1)).one()
        kit.status = "damaged"  # test setup, not a service
    site_101 = by_site(run_resupply(stocked, today=TODAY))["101"]
    assert site_101.reason == "resupply"
    assert shipped(stocked, site_101.shipment_number) == {"KA": 4, "KP": 3}
    assert site_101.kits == 7


def test_kits_a_new_subject_could_not_take_are_not_usable_stock(stocked):
    """A kit given at V1 must last until V2 (day 28) plus the 30 do-not-dispense days:
    kits expiring before that cannot be given to a new subject, so they spare no shipment
    (counting them once left sites unable to randomize near a lot's expiry)."""
    last_day_too_short = TODAY + timedelta(days=28 + 30)
    add_kits(stocked, "KA", 3, site="101", expiry=last_day_too_short)
    add_kits(stocked, "KP", 3, site="101", expiry=last_day_too_short)
    site_101 = by_site(run_resupply(stocked, today=TODAY))["101"]
    assert shipped(stocked, site_101.shipment_number) == {"KA": 6, "KP": 6}


def test_kits_lasting_past_the_first_visit_s_horizon_are_usable_stock(stocked):
    long_enough = TODAY + timedelta(days=28 + 30 + 1)
    add_kits(stocked, "KA", 3, site="101", expiry=long_enough)
    add_kits(stocked, "KP", 3, site="101", expiry=long_enough)
    assert "101" not in by_site(run_resupply(stocked, today=TODAY))


def test_every_kit_type_is_topped_up_and_a_blinded_observer_cannot_tell_which(stocked):
    """Arm A's kits are used up at 101, arm P's at 102 (mirror image): the two
    shipments look the same to a blinded reader; only the unblinded split differs."""
    add_kits(stocked, "KP", 3, site="101")  # 101: KA 0, KP 3
    with stocked.transaction() as s:
        site_102 = s.scalar(select(Site.id).where(Site.code == "102"))
        for kit in s.scalars(select(Kit).join(KitType).where(Kit.site_id == site_102,
                                                             KitType.code == "KP")):
            kit.status = "dispensed"  # 102: KA 6, KP 0
        for kit in s.scalars(select(Kit).join(KitType).where(Kit.site_id == site_102,
                                                             KitType.code == "KA").limit(3)):
            kit.status = "dispensed"  # 102: KA 3, KP 0
    sites = by_site(run_resupply(stocked, today=TODAY))
    one, two = sites["101"], sites["102"]
    assert shipped(stocked, one.shipment_number) == {"KA": 6, "KP": 3}  # both kit types
    assert shipped(stocked, two.shipment_number) == {"KA": 3, "KP": 6}
    assert (one.kits, one.reason) == (two.kits, two.reason) == (9, "resupply")

    def blinded_view(number):
        with stocked.sessions() as s:
            row = s.scalars(select(AuditEvent).where(AuditEvent.action == "shipment_created",
                                                     AuditEvent.entity_id == number)).one()
            note = s.scalars(select(Notification).where(
                Notification.key == f"shipment_requested:{number}")).one()
        view = {**blinded(row.new), **note.params}
        view.pop("site"), view.pop("shipment")
        return view

    assert blinded_view(one.shipment_number) == blinded_view(two.shipment_number)
    assert blinded_view(one.shipment_number)["kit_type"] == "(blinded)"


def test_plan_rounding_is_the_same_for_every_kit_type():
    levels = {1: Levels(2, 6), 2: Levels(2, 6)}
    assert plan_quantities(levels, {1: 3, 2: 3}) == {}
    assert plan_quantities(levels, {1: 2, 2: 5}) == {1: 4, 2: 1}
    # predictive margin 3: added to every type, whichever needs it
    assert plan_quantities(levels, {1: 5, 2: 5}, extra=3) == {1: 4, 2: 4}


def test_site_override_levels(db, tmp_path):
    path = write_study(tmp_path, ('depot: "90"}\n  - {code: "102"', ('depot: "90", '
                                  'resupply: {KA: {trigger: 4, target: 10}}}\n  - {code: "102"')))
    load_study(db, path)
    with db.sessions() as s:
        rows = s.scalars(select(SiteSupply)).all()
        assert [(r.trigger, r.target) for r in rows] == [(4, 10)]
        audit = s.scalars(select(AuditEvent).where(AuditEvent.action == "site_supply_set")).one()
        assert audit.new == {"kit_type": {"code": "KA", "trigger": 4, "target": 10}}
    add_kits(db, "KA", 40)
    add_kits(db, "KP", 40)
    for site in ("102", "103"):
        add_kits(db, "KA", 6, site=site)
        add_kits(db, "KP", 6, site=site)
    add_kits(db, "KA", 4, site="101")
    add_kits(db, "KP", 5, site="101")
    site_101 = by_site(run_resupply(db, today=TODAY))["101"]
    assert shipped(db, site_101.shipment_number) == {"KA": 6, "KP": 1}

    # a reload without the override removes it (audited); reloading again changes nothing
    result = load_study(db, STUDY_YAML)
    assert any(change.startswith("site_supply_removed 101") for change in result.changes)
    with db.sessions() as s:
        assert s.scalars(select(SiteSupply)).all() == []
    assert load_study(db, STUDY_YAML).changes == []


@pytest.mark.parametrize("replacement, field, message", [
    ('resupply: {KX: {trigger: 1, target: 3}}', "sites[0].resupply.KX", "unknown kit type 'KX'"),
    ('resupply: {KA: {trigger: 3, target: 3}}', "sites[0].resupply.KA.trigger",
     "must be below target"),
    ('shipping_days: -1', "sites[0].shipping_days", "greater than or equal to 0"),
])
def test_bad_site_supply_settings_name_line_and_field(db, tmp_path, replacement, field, message):
    load_study(db, STUDY_YAML)
    before = snapshot(db)
    path = write_study(tmp_path, ('depot: "90"}\n  - {code: "102"',
                                  f'depot: "90", {replacement}}}\n  - {{code: "102"'))
    with pytest.raises(FileErrors) as raised:
        load_study(db, path)
    error = raised.value.errors[0]
    assert error.field == field and message in error.message
    assert error.line == line_of(study_text(), '{code: "101"')
    assert snapshot(db) == before


def test_shipping_days_and_supply_keys_are_loaded(db, tmp_path):
    path = write_study(
        tmp_path, ('timezone: Europe/Paris, depot: "90"', ('timezone: Europe/Paris, depot: "90", '
                   'shipping_days: 7')),
        ("default_resupply: {trigger: 2, target: 6}",
         ("default_resupply: {trigger: 2, target: 6}\n  expiry_warning_days: 14\n"
         "  predictive: true\n  initial: {trigger: 0, target: 4}")))
    load_study(db, path)
    with db.sessions() as s:
        assert s.scalar(select(Site.shipping_days).where(Site.code == "101")) == 7
        assert s.scalar(select(Site.shipping_days).where(Site.code == "102")) == 3
        supply = s.scalars(select(Study)).one().config["supply"]
    assert supply["expiry_warning_days"] == 14 and supply["predictive"] is True
    assert supply["initial"] == {"trigger": 0, "target": 4}
    result = load_study(db, STUDY_YAML)  # back to the defaults: audited changes
    assert any(change.startswith("site_updated 101: shipping_days 7 → 3")
               for change in result.changes)


# --- idempotence, initial shipments, the do-not-ship window ---------------------------------


def test_stock_on_its_way_counts_so_a_second_run_ships_nothing(stocked):
    add_kits(stocked, "KA", 1, site="101")
    first = run_resupply(stocked, today=TODAY)
    assert [(s.site, s.kits) for s in first] == [("101", 11)]  # KA 5 + KP 6
    with stocked.sessions() as s:
        shipments_before = s.scalar(select(func.count()).select_from(Shipment))
    assert run_resupply(stocked, today=TODAY) == []
    assert run_resupply(stocked, today=TODAY + timedelta(days=1)) == []
    with stocked.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Shipment)) == shipments_before


def test_a_newly_active_site_gets_its_initial_shipment(study):
    add_kits(study, "KA", 40)
    add_kits(study, "KP", 40)
    summaries = run_resupply(study, today=TODAY)
    assert [(s.site, s.reason, s.kits) for s in summaries] == [
        ("101", "initial", 12), ("102", "initial", 12), ("103", "initial", 12)]
    assert shipped(study, summaries[0].shipment_number) == {"KA": 6, "KP": 6}
    assert run_resupply(study, today=TODAY) == []
    requested = notifications(study, "shipment_requested")
    assert [n.audience for n in requested] == ["role:depot_manager"] * 3
    assert requested[0].params == {"shipment": summaries[0].shipment_number, "site": "101",
                                   "reason": "initial", "count": 12}


def test_initial_levels_from_the_study_file(db, tmp_path):
    load_study(db, write_study(tmp_path, ("default_resupply: {trigger: 2, target: 6}",
                                          ("default_resupply: {trigger: 2, target: 6}\n"
                                          "  initial: {trigger: 0, target: 4}"))))
    add_kits(db, "KA", 40)
    add_kits(db, "KP", 40)
    summaries = run_resupply(db, today=TODAY)
    assert {s.kits for s in summaries} == {8}
    assert shipped(db, summaries[0].shipment_number) == {"KA": 4, "KP": 4}


def test_do_not_ship_window_holds_at_its_boundary(study):
    # do_not_ship_days 45: a kit expiring on today + 45 is never shipped, + 46 is.
    inside = add_kits(study, "KA", 10, expiry=TODAY + timedelta(days=45))
    outside = add_kits(study, "KA", 6, expiry=TODAY + timedelta(days=46))
    add_kits(study, "KP", 40)
    summaries = run_resupply(study, today=TODAY)
    assert [s.site for s in summaries] == ["101"]  # 102 and 103: only window kits left
    with study.sessions() as s:
        numbers = set(s.scalars(select(Kit.kit_number).join(ShipmentKit)
                                .join(KitType).where(KitType.code == "KA")))
    assert numbers == set(outside) and not numbers & set(inside)
    assert [n.params["site"] for n in notifications(study, "depot_short")] == ["102", "103"]


# --- shortages and urgent shipments ------------------------------------------------------


def test_depot_shortage_notifies_and_the_other_sites_are_still_served(db, tmp_path):
    load_study(db, write_study(tmp_path, ('depot: "90"}\n  - {code: "102"', ('depot: "90", '
                                          'resupply: {KA: {trigger: 4, target: 30}}}\n'
                                          '  - {code: "102"'))))
    add_kits(db, "KA", 20)
    add_kits(db, "KP", 20)
    summaries = run_resupply(db, today=TODAY)
    assert [(s.site, s.kits) for s in summaries] == [("102", 12), ("103", 12)]
    short = notifications(db, "depot_short")
    assert [(n.audience, n.params) for n in short] == [
        ("role:depot_manager", {"site": "101", "depot": "90", "reason": "initial", "count": 36})]
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Shipment).join(Site).where(
            Site.code == "101")) == 0
        assert s.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "depot_short", AuditEvent.entity_id == "101")) == 1
    run_resupply(db, today=TODAY)  # the same day: no second notification
    assert len(notifications(db, "depot_short")) == 1


def _urgent(db):
    with db.transaction() as s:
        study = s.scalars(select(Study)).one()
        site = s.scalars(select(Site).where(Site.code == "101")).one()
        audit = AuditLog(study.id, "user:5001")
        shipment = urgent_resupply(s, audit, study, site, TODAY, "user:5001")
        number = shipment.shipment_number if shipment is not None else None
        audit.seal(s)
    return number


def test_urgent_resupply_once_until_it_is_received(stocked):
    add_kits(stocked, "KP", 4, site="101")  # KA 0, KP 4: above trigger for KP
    number = _urgent(stocked)
    assert number is not None and shipped(stocked, number) == {"KA": 6, "KP": 2}
    assert _urgent(stocked) is None
    [note] = notifications(stocked, "urgent_resupply")
    assert note.audience == "role:depot_manager"
    assert note.params == {"site": "101", "shipment": number, "count": 8}
    assert run_resupply(stocked, today=TODAY) == []  # the urgent shipment's kits count


def test_urgent_resupply_with_a_short_depot_returns_none_and_notifies(study):
    add_kits(study, "KA", 2)
    add_kits(study, "KP", 40)
    assert _urgent(study) is None
    with study.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Shipment)) == 0
        assert s.scalar(select(func.count()).select_from(Kit).where(
            Kit.status == "reserved")) == 0
    [note] = notifications(study, "depot_short")
    assert note.params["reason"] == "urgent" and note.params["site"] == "101"


# --- predictive mode ----------------------------------------------------------------------


def _randomized(db, site: str, arm: str, days_ago: int, *, status="randomized",
                done: tuple[str, ...] = ()) -> None:
    with db.transaction() as s:
        study = s.scalars(select(Study)).one()
        site_row = s.scalars(select(Site).where(Site.code == site)).one()
        site_row.last_subject_seq += 1
        subject = Subject(study_id=study.id, site_id=site_row.id, status=status,
                          subject_number=f"{site}{site_row.last_subject_seq:04d}")
        s.add(subject)
        s.flush()
        event = s.scalars(select(RandomizationEvent)).first()
        arm_id = s.scalar(select(Arm.id).where(Arm.code == arm))
        day0 = TODAY - timedelta(days=days_ago)
        s.add(Randomization(study_id=study.id, event_id=event.id, subject_id=subject.id,
                            randomization_number=f"R{subject.id}", arm_id=arm_id,
                            stratum_key="", method="list",
                            randomized_at=datetime.combine(day0, time(9), UTC)))
        for code in done:
            s.add(SubjectVisit(study_id=study.id, subject_id=subject.id, visit_code=code,
                               status="done", due_on=day0, window_start=day0, window_end=day0))


@pytest.mark.parametrize("predictive, kits", [(False, None), (True, 12)])
def test_predictive_mode_adds_the_kits_for_visits_due_before_arrival(db, tmp_path,
                                                                     predictive, kits):
    load_study(db, write_study(tmp_path, ("do_not_ship_days: 45", ("do_not_ship_days: 45\n"
                                          f"  predictive: {str(predictive).lower()}"))))
    add_kits(db, "KA", 40)
    add_kits(db, "KP", 40)
    for site in ("101", "102", "103"):
        add_kits(db, "KA", 4, site=site)
        add_kits(db, "KP", 4, site=site)
    # 101: two arm-A subjects with V2 (2 kits) due tomorrow, within shipping (3) + review (1)
    _randomized(db, "101", "A", 27, done=("V1",))
    _randomized(db, "101", "A", 26, done=("V1",))
    # not counted: V2 already done; discontinued; V2 due after arrival (day 28 in 6 days)
    _randomized(db, "101", "P", 28, done=("V1", "V2"))
    _randomized(db, "101", "P", 27, status="discontinued", done=("V1",))
    _randomized(db, "102", "P", 22, done=("V1",))
    sites = by_site(run_resupply(db, today=TODAY))
    if not predictive:
        assert sites == {}
        return
    assert list(sites) == ["101"]
    # need KA 4 (KP 0): the margin of 4 goes to both types: (6 + 4 - 4) each
    assert sites["101"].kits == kits
    assert shipped(db, sites["101"].shipment_number) == {"KA": 6, "KP": 6}


def test_a_kit_type_and_its_site_override_removed_together(db, tmp_path):
    override = ('depot: "90"}\n  - {code: "102"',
                'depot: "90", resupply: {KP: {trigger: 1, target: 4}}}\n  - {code: "102"')
    load_study(db, write_study(tmp_path, override))
    result = load_study(db, write_study(tmp_path, ("  - {code: KP, arm: P}\n", ""),
                                        name="without_kp.yaml"))
    assert [c.split(":")[0] for c in result.changes if "site_supply" in c
            or "kit_type_removed" in c] == ["site_supply_removed 101", "kit_type_removed KP"]
    with db.sessions() as s:
        assert s.scalars(select(SiteSupply)).all() == []


def test_concurrent_runs_ship_once_per_site(pg_db):
    """Two jobs at once (a scheduled run and a manual one): the site row lock
    makes the second see the first's shipment, on PostgreSQL's row locks."""
    from concurrent.futures import ThreadPoolExecutor

    load_study(pg_db, STUDY_YAML)
    add_kits(pg_db, "KA", 60)
    add_kits(pg_db, "KP", 60)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run_resupply(pg_db, today=TODAY), range(4)))
    shipped_sites = sorted(s.site for summaries in results for s in summaries)
    assert shipped_sites == ["101", "102", "103"]
    with pg_db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Shipment)) == 3
