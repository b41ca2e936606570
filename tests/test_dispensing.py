"""Dispensing end to end on the example study (tests/data/study.yaml).

Kits are put at sites directly in the database (status available), with the
expiry dates each test needs. The example study: KA -> arm A, KP -> arm P;
V1 day 0 (1 kit), V2 day 28 +-3 (2 kits), V3 day 56 +-3 (2 kits);
do_not_dispense_days 30. Subjects are randomized on 2026-01-01 (day 0).
"""

from __future__ import annotations

import importlib.util
from datetime import date, timedelta
from itertools import count

import pytest
from sqlalchemy import select
from studyfiles import MRL_CSV, STUDY_YAML, snapshot, write_study

from core.actors import ADMIN, Actor
from core.audit import AuditLog, blinded
from core.errors import Refused
from core.models import AuditEvent, Randomization, Site, Study, Subject
from core.mrl import import_mrl
from core.randomize import randomize
from core.study_loader import load_study
from core.subjects import discontinue, screen_subject
from core.supply.dispensing import dispense, replace_kit
from core.supply.dispensing_report import dispensing
from core.supply.kits import apply_move
from core.models import Kit, KitType, Lot, Shipment, SubjectVisit

DAY0 = date(2026, 1, 1)
YES = {"INC1": True, "INC2": True, "EXC1": True}
# tests/data/mrl.csv: the first M/LT65 subject gets arm A, the second arm P
M_LT65 = {"SEX": "M", "AGE": "LT65"}
COORDINATOR = Actor(role="site_coordinator", user_code="5001", site_codes=frozenset({"101"}))
FAR_EXPIRY = date(2031, 1, 1)
BLINDED_WORDS = ("KA", "KP", "arm", "Drug", "Placebo")
_numbers = count(100001)


def on(day: int) -> date:
    return DAY0 + timedelta(days=day)


def set_day(monkeypatch, day: int) -> None:
    monkeypatch.setenv("IVRS_TODAY", on(day).isoformat())


def add_kits(db, site: str, kit_type: str, n: int = 1, expiry: date = FAR_EXPIRY,
             status: str = "available") -> list[str]:
    """Kits at a site, created directly (the kit import is another test's subject)."""
    numbers = []
    with db.transaction() as s:
        study = s.scalars(select(Study)).one()
        type_row = s.scalars(select(KitType).where(KitType.study_id == study.id,
                                                   KitType.code == kit_type)).one()
        site_id = s.scalars(select(Site.id).where(Site.study_id == study.id,
                                                  Site.code == site)).one()
        lot_code = f"L{kit_type}{expiry:%Y%m%d}"
        lot = s.scalars(select(Lot).where(Lot.study_id == study.id, Lot.code == lot_code,
                                          Lot.kit_type_id == type_row.id)).one_or_none()
        if lot is None:
            lot = Lot(study_id=study.id, kit_type_id=type_row.id, code=lot_code,
                      expiry_date=expiry)
            s.add(lot)
            s.flush()
        for _ in range(n):
            number = str(next(_numbers))
            s.add(Kit(study_id=study.id, kit_number=number, kit_type_id=type_row.id,
                      lot_id=lot.id, expiry_date=expiry, status=status, site_id=site_id))
            numbers.append(number)
    return numbers


def kit(db, number: str) -> Kit:
    with db.transaction() as s:
        return s.scalars(select(Kit).where(Kit.kit_number == number)).one()


def visits(db, subject_number: str) -> dict[str, SubjectVisit]:
    with db.transaction() as s:
        rows = s.scalars(select(SubjectVisit).join(Subject, Subject.id == SubjectVisit.subject_id)
                         .where(Subject.subject_number == subject_number)).all()
        return {row.visit_code: row for row in rows}


@pytest.fixture
def study(db, monkeypatch):
    set_day(monkeypatch, 0)
    load_study(db, STUDY_YAML)
    import_mrl(db, MRL_CSV)
    return db


def enroll(db, site="101", actor=ADMIN):
    subject = screen_subject(db, site_code=site, actor=actor)
    return randomize(db, subject_number=subject.subject_number, actor=actor, eligibility=YES,
                     factors=M_LT65)


def stocked(db, site="101", n=10, expiry=FAR_EXPIRY):
    return {"KA": add_kits(db, site, "KA", n, expiry), "KP": add_kits(db, site, "KP", n, expiry)}


# --- randomization dispenses the first visit ---------------------------------------------


def test_randomization_returns_the_first_visit_kit_of_the_arm(study):
    stock = stocked(study, n=3)
    first, second = enroll(study), enroll(study)
    assert (first.arm, second.arm) == ("A", "P")
    assert first.visit == "V1" and first.kits == (stock["KA"][0],)
    assert second.kits == (stock["KP"][0],)
    assigned = kit(study, first.kits[0])
    assert (assigned.status, assigned.visit_code, assigned.assigned_by) == (
        "assigned", "V1", "cli:admin")
    v1 = visits(study, first.subject_number)["V1"]
    assert (v1.status, v1.occurred_on, v1.out_of_window) == ("done", DAY0, False)


def test_a_retried_randomization_returns_the_same_kits(study):
    stocked(study, n=3)
    subject = screen_subject(study, site_code="101", actor=ADMIN)
    calls = [randomize(study, subject_number=subject.subject_number, actor=ADMIN,
                       eligibility=YES, factors=M_LT65, idempotency_key="call-7")
             for _ in range(2)]
    assert calls[0] == calls[1] and len(calls[1].kits) == 1
    with study.transaction() as s:
        assert len(s.scalars(select(Kit).where(Kit.status == "assigned")).all()) == 1


def test_randomization_only_studies_dispense_nothing(db, tmp_path, monkeypatch):
    set_day(monkeypatch, 0)
    visit_lines = ("  - {code: V1, day: 0, window: [0, 0], dispense: 1}\n"
                   "  - {code: V2, day: 28, window: [-3, 3], dispense: 2}\n"
                   "  - {code: V3, day: 56, window: [-3, 3], dispense: 2}\n")
    no_visits = write_study(tmp_path, (visit_lines, ""), ("visits:\n", ""))
    load_study(db, no_visits)
    import_mrl(db, MRL_CSV)
    result = enroll(db)
    assert result.kits == () and result.visit is None


@pytest.mark.parametrize("short", ["KA", "KP"])
def test_randomization_refused_when_any_arm_kit_type_is_short(study, short):
    add_kits(study, "101", "KP" if short == "KA" else "KA", 5)
    subject = screen_subject(study, site_code="101", actor=ADMIN)
    with pytest.raises(Refused) as refused:
        randomize(study, subject_number=subject.subject_number, actor=ADMIN, eligibility=YES,
                  factors=M_LT65)
    assert refused.value.code == "no_stock_at_site"
    # the same words whichever arm's kits are short (and whichever arm was next)
    assert str(refused.value) == (
        "site 101 lacks dispensable kits for a new subject: nobody can be randomized there "
        "until a shipment arrives (an urgent one is requested)")
    with study.transaction() as s:
        assert s.scalars(select(Randomization)).all() == []
        assert s.scalars(select(Subject.status)).one() == "screened"
        refusal = s.scalars(select(AuditEvent).where(
            AuditEvent.action == "randomization_refused")).one()
        assert refusal.new["kit_type"] == [short]  # unblinded key: redacted when blinded
        if importlib.util.find_spec("core.supply.resupply") is not None:
            # the depot has no kits in this test: the shortage is on record instead
            assert refusal.new["urgent_shipment"] is None


def test_refusal_requests_an_urgent_shipment_that_is_committed(study):
    if importlib.util.find_spec("core.supply.resupply") is None:
        pytest.skip("core.supply.resupply is not in this build")
    with study.transaction() as s:
        depot_site = s.scalars(select(Site).where(Site.code == "101")).one()
        depot_id = depot_site.depot_id
    for kit_type in ("KA", "KP"):
        numbers = add_kits(study, "101", kit_type, 10)
        with study.transaction() as s:  # move them to the depot: stock to ship from
            for number in numbers:
                row = s.scalars(select(Kit).where(Kit.kit_number == number)).one()
                row.site_id, row.depot_id, row.status = None, depot_id, "at_depot"
    subject = screen_subject(study, site_code="101", actor=ADMIN)
    with pytest.raises(Refused):
        randomize(study, subject_number=subject.subject_number, actor=ADMIN, eligibility=YES,
                  factors=M_LT65)
    with study.transaction() as s:
        shipment = s.scalars(select(Shipment)).one()
        assert (shipment.reason, shipment.status) == ("urgent", "requested")


def test_randomization_skips_kits_that_expire_before_the_next_visit(study):
    # V1 on day 0, V2 on day 28, 30 days margin: kits must expire after day 58
    stocked(study, n=1, expiry=on(58))
    subject = screen_subject(study, site_code="101", actor=ADMIN)
    with pytest.raises(Refused) as refused:
        randomize(study, subject_number=subject.subject_number, actor=ADMIN, eligibility=YES,
                  factors=M_LT65)
    assert refused.value.code == "no_stock_at_site"
    good = stocked(study, n=1, expiry=on(59))
    result = randomize(study, subject_number=subject.subject_number, actor=ADMIN,
                       eligibility=YES, factors=M_LT65)
    assert result.kits == (good["KA"][0],)


# --- dispensing at later visits ---------------------------------------------------------------


def test_dispense_at_v2_fefo_and_the_do_not_dispense_boundary(study, monkeypatch):
    stocked(study, n=1)
    subject = enroll(study)  # arm A
    # at V2 (day 28) the next visit is V3 (day 56): kits must expire after day 86
    too_short = add_kits(study, "101", "KA", 1, on(86))
    late = add_kits(study, "101", "KA", 1, on(200))
    early = add_kits(study, "101", "KA", 1, on(87))
    set_day(monkeypatch, 28)
    result = dispense(study, subject_number=subject.subject_number, actor=COORDINATOR)
    assert result.visit == "V2" and result.kits == [early[0], late[0]]
    assert not result.out_of_window and result.missed == [] and result.confirmation
    assert kit(study, too_short[0]).status == "available"
    assert visits(study, subject.subject_number)["V2"].occurred_on == on(28)


def test_never_another_site_type_or_an_unusable_kit(study, monkeypatch):
    stocked(study, n=1)
    subject = enroll(study)  # arm A at site 101
    others = (add_kits(study, "102", "KA", 3) + add_kits(study, "101", "KP", 3)
              + add_kits(study, "101", "KA", 2, status="quarantined")
              + add_kits(study, "101", "KA", 2, status="expired")
              + add_kits(study, "101", "KA", 2, status="damaged"))
    set_day(monkeypatch, 28)
    with pytest.raises(Refused) as refused:
        dispense(study, subject_number=subject.subject_number, actor=COORDINATOR)
    assert refused.value.code == "no_stock"
    assert all(kit(study, number).subject_id is None for number in others)
    good = add_kits(study, "101", "KA", 2)
    result = dispense(study, subject_number=subject.subject_number, actor=COORDINATOR)
    assert sorted(result.kits) == sorted(good)


def test_no_stock_changes_nothing_and_names_no_kit_type(study, monkeypatch):
    stocked(study, n=1)
    subject = enroll(study)
    add_kits(study, "101", "KA", 1)  # V2 needs 2
    set_day(monkeypatch, 40)  # V2 missed on the way: not recorded either
    before = snapshot(study)
    with pytest.raises(Refused) as refused:
        dispense(study, subject_number=subject.subject_number, actor=COORDINATOR)
    assert refused.value.code == "no_stock"
    assert not any(word in str(refused.value) for word in BLINDED_WORDS)
    assert snapshot(study) == before


def test_missed_visits_are_recorded_and_out_of_window_flagged(study, monkeypatch):
    stocked(study, n=5)
    subject = enroll(study)
    set_day(monkeypatch, 40)  # V2's window closed on day 31; V3 opens on day 53
    result = dispense(study, subject_number=subject.subject_number, actor=COORDINATOR)
    assert (result.visit, result.missed, result.out_of_window) == ("V3", ["V2"], True)
    recorded = visits(study, subject.subject_number)
    assert (recorded["V2"].status, recorded["V2"].occurred_on) == ("missed", None)
    assert (recorded["V2"].window_start, recorded["V2"].window_end) == (on(25), on(31))
    assert recorded["V3"].status == "done" and recorded["V3"].out_of_window


def test_after_the_last_visit_dispensing_is_refused(study, monkeypatch):
    stocked(study, n=6)
    subject = enroll(study)
    for day in (28, 56):
        set_day(monkeypatch, day)
        dispense(study, subject_number=subject.subject_number, actor=COORDINATOR)
    before = snapshot(study)
    with pytest.raises(Refused) as refused:
        dispense(study, subject_number=subject.subject_number, actor=COORDINATOR)
    assert refused.value.code == "no_visit_due" and snapshot(study) == before


def test_subject_must_be_randomized_and_at_the_callers_site(study, monkeypatch):
    stocked(study, n=3)
    screened = screen_subject(study, site_code="101", actor=ADMIN)
    with pytest.raises(Refused) as refused:
        dispense(study, subject_number=screened.subject_number, actor=COORDINATOR)
    assert refused.value.code == "subject_not_randomized"
    subject = enroll(study)
    set_day(monkeypatch, 28)
    pharmacist = Actor(role="pharmacist", user_code="5003", site_codes=frozenset({"102"}))
    with pytest.raises(Refused) as refused:
        dispense(study, subject_number=subject.subject_number, actor=pharmacist)
    assert refused.value.code == "wrong_site"
    manager = Actor(role="project_manager", user_code="5006")
    with pytest.raises(Refused) as refused:
        dispense(study, subject_number=subject.subject_number, actor=manager)
    assert refused.value.code == "not_allowed"
    discontinue(study, subject_number=subject.subject_number, reason="withdrew", actor=ADMIN)
    with pytest.raises(Refused) as refused:
        dispense(study, subject_number=subject.subject_number, actor=COORDINATOR)
    assert refused.value.code == "subject_discontinued"


def test_a_retried_dispensation_acts_once(study, monkeypatch):
    stocked(study, n=5)
    subject = enroll(study)
    set_day(monkeypatch, 28)
    first = dispense(study, subject_number=subject.subject_number, actor=COORDINATOR,
                     idempotency_key="call-1")
    again = dispense(study, subject_number=subject.subject_number, actor=COORDINATOR,
                     idempotency_key="call-1")
    assert again == first
    with study.transaction() as s:
        assert len(s.scalars(select(Kit).where(Kit.status == "assigned")).all()) == 3


def test_results_and_audit_name_no_kit_type_outside_the_unblinded_key(study, monkeypatch):
    stocked(study, n=5)
    subject = enroll(study)
    set_day(monkeypatch, 28)
    result = dispense(study, subject_number=subject.subject_number, actor=COORDINATOR)
    assert not any(word in repr(result) for word in ("KA", "KP", "'A'", "'P'"))
    with study.transaction() as s:
        rows = s.scalars(select(AuditEvent).where(AuditEvent.action.in_(
            ["kit_assign", "visit_dispensed"]))).all()
    assert rows and all("KA" not in repr(blinded(row.new)) for row in rows)
    assert any(row.new.get("kit_type") == "KA" for row in rows)


# --- replacement -------------------------------------------------------------------------------


def test_replace_a_lost_kit_for_the_same_visit(study, monkeypatch):
    stocked(study, n=1)
    subject = enroll(study)
    spare = add_kits(study, "101", "KA", 1)
    add_kits(study, "101", "KP", 2)
    set_day(monkeypatch, 3)
    result = replace_kit(study, subject_number=subject.subject_number,
                         kit_number=subject.kits[0], reason="lost", actor=COORDINATOR)
    assert (result.visit, result.replaced_kit, result.kit) == ("V1", subject.kits[0], spare[0])
    assert kit(study, subject.kits[0]).status == "missing"
    new = kit(study, spare[0])
    assert (new.status, new.visit_code) == ("assigned", "V1")


def test_replacement_refused_for_a_kit_of_someone_else(study):
    stocked(study, n=2)
    first, second = enroll(study), enroll(study)
    before = snapshot(study)
    with pytest.raises(Refused) as refused:
        replace_kit(study, subject_number=first.subject_number, kit_number=second.kits[0],
                    reason="damaged", actor=COORDINATOR)
    assert refused.value.code == "kit_not_assigned" and snapshot(study) == before
    with pytest.raises(Refused):
        replace_kit(study, subject_number=first.subject_number, kit_number=first.kits[0],
                    reason="stolen", actor=COORDINATOR)


def test_a_damaged_kit_is_replaced_even_when_confirmed(study):
    stocked(study, n=2)
    subject = enroll(study)
    with study.transaction() as s:
        row = s.scalars(select(Kit).where(Kit.kit_number == subject.kits[0])).one()
        apply_move(AuditLog(row.study_id, "test"), row, "confirm")
    result = replace_kit(study, subject_number=subject.subject_number,
                         kit_number=subject.kits[0], reason="damaged", actor=COORDINATOR)
    assert kit(study, subject.kits[0]).status == "damaged" and result.kit


# --- schedule changes ---------------------------------------------------------------------------


def test_a_reloaded_schedule_applies_to_future_visits(study, tmp_path, monkeypatch):
    stocked(study, n=8)
    subject = enroll(study)
    set_day(monkeypatch, 28)
    dispense(study, subject_number=subject.subject_number, actor=COORDINATOR)
    load_study(study, write_study(tmp_path, ("{code: V3, day: 56, window: [-3, 3], dispense: 2}",
                                             "{code: V3, day: 56, window: [-3, 3], dispense: 3}")))
    set_day(monkeypatch, 56)
    result = dispense(study, subject_number=subject.subject_number, actor=COORDINATOR)
    assert len(result.kits) == 3
    recorded = visits(study, subject.subject_number)
    assert recorded["V3"].schedule_version > recorded["V2"].schedule_version


def test_cohort_schedule(db, tmp_path, monkeypatch):
    set_day(monkeypatch, 0)
    cohorts = "stratify_by_site: false\n  cohorts: [C1, C2]\n  current_cohort: C2"
    schedule = ("visits_by_cohort:\n  C2:\n"
                "    - {code: W1, day: 0, window: [0, 0], dispense: 2}\nsupply:")
    path = write_study(tmp_path, ("stratify_by_site: false", cohorts), ("supply:", schedule))
    load_study(db, path)
    mrl = tmp_path / "mrl.csv"
    mrl.write_text("randomization_number,arm,SEX,AGE,cohort\n1,A,M,LT65,C2\n",
                   encoding="utf-8")
    import_mrl(db, mrl)
    stocked(db, n=2)
    result = enroll(db)
    assert result.visit == "W1" and len(result.kits) == 2


# --- the dispensing report --------------------------------------------------------------------


def test_dispensing_report(study, monkeypatch):
    stocked(study, n=3)
    subject = enroll(study)
    with study.transaction() as s:
        study_row = s.scalars(select(Study)).one()
        columns, rows = dispensing(s, study_row, blinded=True)
        rows = list(rows)
        assert columns[:5] == ["subject_number", "visit", "kit_number", "dispensed_at",
                               "confirmed_at"]
        assert "kit_type" not in columns
        assert rows == [(subject.subject_number, "V1", subject.kits[0], rows[0][3], "", "101",
                         "assigned")]
        columns, rows = dispensing(s, study_row, blinded=False)
        assert columns[-1] == "kit_type" and next(iter(rows))[-1] == "KA"
