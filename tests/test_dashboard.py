"""The dashboard's numbers (core.dashboard) for a study whose day is known by heart,
for each role: what they see, and that a blinded role sees no arm, kit type or lot.

The day (the demo study, its caps made ``SEX=F: 120, site=101: 5, total: 50``;
IVRS_TODAY 2026-11-23): the demo kits (3 KA + 3 KP at 101 and 102, 24 + 24 at
depot 90, expiring in two years), plus near-expiry kits: 2 KA of lot LA9 at 103
expiring in 20 days (inside the 30-day do-not-dispense window), 1 KP of lot
LP9 at 103 in 45 days, 3 KA of lot LA8 at the depot in 50 days. Site 101
randomizes three women (the first kit confirmed, the third subject then
discontinued); 102 randomizes one and screens another; 103 screens one who
fails screening; 102 declares one of its kits for return (a pending approval).
"""

from __future__ import annotations

import csv
import dataclasses
import re
from datetime import date, timedelta
from importlib.resources import files

import pytest
from sqlalchemy import select, text

from core import append_only
from core.actors import ADMIN, Actor
from core.audit_checkpoints import record_verification
from core.dashboard import dashboard
from core.models import Arm, Kit, KitType, Lot, Site
from core.mrl import import_mrl
from core.randomize import randomize
from core.study_loader import load_study
from core.subjects import discontinue, record_screen_failure, screen_subject
from core.supply.confirmation import confirm_kit
from core.supply.kit_import import import_kits
from core.supply.returns import declare_return
from ivrs.demo.scenario import write_demo_kits, write_demo_mrl

TODAY = date(2026, 11, 23)
AT_101 = Actor(role="site_coordinator", user_code="5001", site_codes=frozenset({"101"}),
               channel="web")
AT_102 = Actor(role="investigator", user_code="5002", site_codes=frozenset({"102"}),
               channel="web")
AT_103 = Actor(role="site_coordinator", user_code="5003", site_codes=frozenset({"103"}),
               channel="web")
DEPOT = Actor(role="depot_manager", user_code="7001", channel="web")
STATISTICIAN = Actor(role="unblinded_statistician", user_code="5004", channel="web")
MANAGER = Actor(role="project_manager", user_code="6050", channel="web")
ELIGIBLE = {"INC1": True, "INC2": True, "EXC1": True}
WOMAN = {"SEX": "F", "AGE": "LT65"}
NEAR_EXPIRY = [  # kit number, kit type, lot, days to expiry, location
    ("9000001", "KA", "LA9", 20, "103"), ("9000002", "KA", "LA9", 20, "103"),
    ("9000003", "KP", "LP9", 45, "103"),
    ("9000004", "KA", "LA8", 50, "90"), ("9000005", "KA", "LA8", 50, "90"),
    ("9000006", "KA", "LA8", 50, "90")]


def load_day(db, tmp_path) -> dict:
    study = files("ivrs.demo").joinpath("data", "study.yaml").read_text("utf-8")
    assert 'caps: {"SEX=F": 120}' in study
    study_file = tmp_path / "study.yaml"
    study_file.write_text(study.replace('caps: {"SEX=F": 120}',
                                        'caps: {"SEX=F": 120, "site=101": 5, "total": 50}'),
                          encoding="utf-8")
    load_study(db, study_file)
    write_demo_mrl(tmp_path / "mrl.csv")
    import_mrl(db, tmp_path / "mrl.csv")
    write_demo_kits(tmp_path / "kits.csv", TODAY + timedelta(days=730))
    import_kits(db, tmp_path / "kits.csv")
    with (tmp_path / "near.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["kit_number", "kit_type", "lot", "expiry_date", "location"])
        for number, kit_type, lot, days, location in NEAR_EXPIRY:
            writer.writerow([number, kit_type, lot, (TODAY + timedelta(days=days)).isoformat(),
                             location])
    import_kits(db, tmp_path / "near.csv")

    def randomized(actor: Actor, site: str) -> tuple[str, list[str]]:
        subject = screen_subject(db, site_code=site, actor=actor).subject_number
        result = randomize(db, subject_number=subject, actor=actor, eligibility=ELIGIBLE,
                           factors=WOMAN)
        return subject, list(result.kits)

    (_, (first_kit,)), _, (third, _) = (randomized(AT_101, "101") for _ in range(3))
    confirm_kit(db, kit_number=first_kit, actor=AT_101)
    discontinue(db, subject_number=third, reason="withdrew consent", actor=AT_101)
    randomized(AT_102, "102")
    screen_subject(db, site_code="102", actor=AT_102)
    failed = screen_subject(db, site_code="103", actor=AT_103).subject_number
    record_screen_failure(db, subject_number=failed, reason="INC2 not met", actor=AT_103)
    with db.sessions() as session:
        returned = session.scalar(
            select(Kit.kit_number).join(Site, Site.id == Kit.site_id)
            .where(Site.code == "102", Kit.status == "available").order_by(Kit.kit_number)
            .limit(1))
    declare_return(db, site_code="102", kit_numbers=[returned], reason="damaged box",
                   actor=AT_102)
    return {"returned": returned}


@pytest.fixture
def day(db, tmp_path, monkeypatch):
    monkeypatch.setenv("IVRS_TODAY", TODAY.isoformat())
    return load_day(db, tmp_path)


def by_code(lines) -> dict:
    return {line.site: line for line in lines}


# --- the numbers ----------------------------------------------------------------------------


def test_enrollment_per_site_and_caps(db, day):
    board = dashboard(db, actor=MANAGER)
    sites = by_code(board.enrollment_by_site)
    assert list(sites) == ["101", "102", "103"]
    assert [(s.screened, s.randomized, s.screen_failed, s.discontinued, s.cap, s.cap_used)
            for s in sites.values()] == [(3, 3, 0, 1, 5, 3), (2, 1, 0, 0, None, None),
                                         (1, 0, 1, 0, None, None)]
    assert sites["101"].name == "Hôpital Saint-Louis"
    assert [(c.label, c.used, c.limit) for c in board.caps] == [("SEX=F", 4, 120),
                                                                ("total", 4, 50)]
    timeline = board.enrollment_over_time
    assert timeline.granularity == "day" and timeline.cap == 50
    assert [(p.start, p.randomized, p.cumulative) for p in timeline.points] == [(TODAY, 4, 4)]


def test_enrollment_over_time_steps_by_week_once_the_study_is_older(db, day):
    later = TODAY + timedelta(days=70)
    timeline = dashboard(db, actor=MANAGER, today=later).enrollment_over_time
    assert timeline.granularity == "week"
    monday = TODAY - timedelta(days=TODAY.weekday())
    assert timeline.points[0].start == monday and timeline.points[0].randomized == 4
    assert [p.cumulative for p in timeline.points] == [4] * len(timeline.points)
    assert timeline.points[-1].start == later - timedelta(days=later.weekday())
    assert all(b.start - a.start == timedelta(days=7)
               for a, b in zip(timeline.points, timeline.points[1:]))


def test_stock_and_days_of_cover(db, day):
    stock = by_code(dashboard(db, actor=MANAGER).stock_by_site)
    # 101: 6 kits, 3 given out today; 102: 6, 1 given out, 1 declared for return;
    # 103: the LP9 kit only (LA9 expires inside the do-not-dispense window).
    assert [(s.dispensable, s.used_recently, s.days_of_cover, s.low_cover)
            for s in stock.values()] == [(3, 3, 28, False), (4, 1, 112, False),
                                         (1, 0, None, False)]
    assert all(s.by_kit_type is None and s.quarantined == 0 and s.in_transit == 0
               for s in stock.values())


def test_low_cover_is_flagged(db, day):
    # Two of 101's three kits declared for return: 1 kit left for 3 given out in
    # 28 days is 9 days of cover.
    with db.sessions() as session:
        kits = list(session.scalars(
            select(Kit.kit_number).join(Site, Site.id == Kit.site_id)
            .where(Site.code == "101", Kit.status == "available").order_by(Kit.kit_number)
            .limit(2)))
    declare_return(db, site_code="101", kit_numbers=kits, reason="damaged box", actor=AT_101)
    line = by_code(dashboard(db, actor=MANAGER).stock_by_site)["101"]
    assert (line.dispensable, line.used_recently, line.days_of_cover, line.low_cover) == (
        1, 3, 9, True)
    # 20 days on, 103's LP9 kit (45 days) is inside the do-not-dispense window:
    # nothing dispensable is 0 days, low, whatever the use.
    later = by_code(dashboard(db, actor=MANAGER, today=TODAY + timedelta(days=20))
                    .stock_by_site)["103"]
    assert (later.dispensable, later.days_of_cover, later.low_cover) == (0, 0, True)


def test_expiring_kits_by_date_and_place(db, day):
    expiring = dashboard(db, actor=MANAGER).expiring
    assert [(g.expiry_date, g.location, g.location_kind, g.kits, g.dispensable, g.lot)
            for g in expiring] == [
        (TODAY + timedelta(days=20), "103", "site", 2, False, None),
        (TODAY + timedelta(days=45), "103", "site", 1, True, None),
        (TODAY + timedelta(days=50), "90", "depot", 3, True, None)]
    lots = [(g.expiry_date, g.lot) for g in dashboard(db, actor=STATISTICIAN).expiring]
    assert [lot for _, lot in lots] == ["LA9", "LP9", "LA8"]


def test_unconfirmed_kits_and_pending_approvals(db, day):
    board = dashboard(db, actor=MANAGER)
    assert [(u.site, u.kits) for u in board.unconfirmed_kits] == [("101", 2), ("102", 1)]
    assert all(u.oldest_assigned_at.tzinfo is not None for u in board.unconfirmed_kits)
    assert board.pending_approvals.count == 1
    (request,) = board.pending_approvals.newest
    assert request.kind == "return" and request.site == "102"


# --- who sees what ----------------------------------------------------------------------------


def test_a_site_role_sees_its_own_sites_only(db, day):
    board = dashboard(db, actor=AT_101)
    assert [s.site for s in board.enrollment_by_site] == ["101"]
    assert [s.site for s in board.stock_by_site] == ["101"]
    assert [u.site for u in board.unconfirmed_kits] == ["101"]
    assert board.expiring == ()  # 103's and the depot's are not theirs
    assert board.pending_approvals.count == 0  # 102's request
    assert [p.cumulative for p in board.enrollment_over_time.points] == [3]
    assert board.audit is None
    at_103 = dashboard(db, actor=AT_103)
    assert {g.location for g in at_103.expiring} == {"103"}
    assert dashboard(db, actor=AT_102).pending_approvals.count == 1


def test_a_site_role_sees_no_cap_of_another_site(db, day):
    assert [s.cap for s in dashboard(db, actor=AT_102).enrollment_by_site] == [None]
    assert [c.label for c in dashboard(db, actor=AT_102).caps] == ["SEX=F", "total"]


def test_the_depot_sees_stock_but_no_subjects(db, day):
    board = dashboard(db, actor=DEPOT)
    assert board.enrollment_by_site is board.caps is board.enrollment_over_time is None
    assert board.unconfirmed_kits is None and board.pending_approvals is None
    assert [s.site for s in board.stock_by_site] == ["101", "102", "103"]
    assert {g.location for g in board.expiring} == {"103", "90"}


def _strings(value) -> list[str]:
    """Every string anywhere in a dataclass tree."""
    if isinstance(value, str):
        return [value]
    if dataclasses.is_dataclass(value):
        return [s for f in dataclasses.fields(value) for s in _strings(getattr(value, f.name))]
    if isinstance(value, (tuple, list)):
        return [s for item in value for s in _strings(item)]
    if isinstance(value, dict):
        return [s for pair in value.items() for item in pair for s in _strings(item)]
    return []


def _secrets(db) -> tuple[set[str], list[str]]:
    """(arm codes: whole strings; arm names, kit type and lot codes: words)."""
    with db.sessions() as session:
        arms = session.execute(select(Arm.code, Arm.name)).all()
        words = [name for _, name in arms] + list(session.scalars(select(KitType.code))) \
            + list(session.scalars(select(Lot.code)))
    return {code for code, _ in arms}, words


@pytest.mark.parametrize("actor", [AT_101, AT_102, AT_103, DEPOT, MANAGER, ADMIN],
                         ids=lambda a: a.role)
def test_a_blinded_role_gets_no_arm_kit_type_or_lot_anywhere(db, day, actor):
    codes, words = _secrets(db)
    board = dashboard(db, actor=actor)
    assert board.blinded
    strings = _strings(board)
    assert strings  # the walk found the tree's text
    assert not codes & set(strings)
    for word in words:
        pattern = re.compile(rf"\b{re.escape(word)}\b")
        assert not [s for s in strings if pattern.search(s)], word


def test_the_unblinded_statistician_sees_kit_types_and_lots(db, day):
    board = dashboard(db, actor=STATISTICIAN)
    assert not board.blinded
    line = by_code(board.stock_by_site)["101"]
    per_type = {t.kit_type: t for t in line.by_kit_type}
    assert set(per_type) == {"KA", "KP"}
    assert sum(t.dispensable for t in per_type.values()) == line.dispensable == 3
    assert sum(t.used_recently for t in per_type.values()) == 3
    assert {g.lot for g in board.expiring} == {"LA9", "LP9", "LA8"}


# --- the audit chain ------------------------------------------------------------------------


def _tamper(db, seq: int) -> None:
    with db.engine.begin() as conn:
        for statement in append_only.drop_statements(db.engine.dialect.name):
            conn.execute(text(statement))
        conn.execute(text("UPDATE audit_events SET reason = 'nothing to see' WHERE seq = :s"),
                     {"s": seq})


def test_the_audit_state_without_a_checkpoint_is_a_full_check_now(db, day):
    state = dashboard(db, actor=MANAGER).audit
    assert state.status == "intact" and state.rows > 0
    assert state.fully_checked_through == state.rows and state.fully_checked_at is not None
    _tamper(db, 2)
    broken = dashboard(db, actor=MANAGER).audit
    assert broken.status == "broken" and "seq 2" in broken.problem


def test_the_audit_state_checks_the_rows_after_the_checkpoint(db, day):
    found = record_verification(db, actor=ADMIN)
    assert found.intact
    state = dashboard(db, actor=MANAGER).audit
    assert state.status == "intact"
    assert state.fully_checked_through == found.rows
    assert state.rows == found.rows + 1  # the checkpoint row itself
    assert state.checked_now_through == state.rows
    screen_subject(db, site_code="101", actor=AT_101)
    after = dashboard(db, actor=MANAGER).audit
    assert after.status == "intact" and after.rows == found.rows + 2
    _tamper(db, after.rows)  # a row after the checkpoint: found now
    assert dashboard(db, actor=MANAGER).audit.status == "broken"


def test_a_break_before_the_checkpoint_waits_for_the_next_full_check(db, day):
    record_verification(db, actor=ADMIN)
    _tamper(db, 2)
    # Said honestly: intact as of the last full check, which is dated.
    state = dashboard(db, actor=MANAGER).audit
    assert state.status == "intact" and state.fully_checked_at is not None
    found = record_verification(db, actor=ADMIN)
    assert not found.intact and "seq 2" in found.problem
    state = dashboard(db, actor=MANAGER).audit
    assert state.status == "broken" and "seq 2" in state.problem


def test_a_chain_too_long_to_check_on_a_page_is_unchecked(db, day):
    from core.audit_checkpoints import chain_state
    from core.studies import study_ref

    with db.snapshot() as session:
        study_id = study_ref(session).id
        assert chain_state(session, study_id, max_rows=3).status == "unchecked"
    record_verification(db, actor=ADMIN)
    for _ in range(4):
        screen_subject(db, site_code="101", actor=AT_101)
    with db.snapshot() as session:
        state = chain_state(session, study_id, max_rows=3)
    assert state.status == "unchecked" and state.fully_checked_at is not None


def test_roles_that_do_not_verify_the_chain_get_no_audit_state(db, day):
    assert dashboard(db, actor=AT_102).audit is None
    assert dashboard(db, actor=DEPOT).audit is None
    assert dashboard(db, actor=STATISTICIAN).audit is not None


# --- the audit chain: the rows already checked, remembered by the process ------------------


def _verified_from(monkeypatch) -> list:
    """The ``after`` of every verification chain_state makes from now on."""
    import core.audit_checkpoints as checkpoints

    calls = []
    real = checkpoints.verify

    def spy(session, study_id, *, after=(0, checkpoints.GENESIS)):
        calls.append(after[0])
        return real(session, study_id, after=after)

    monkeypatch.setattr(checkpoints, "verify", spy)
    return calls


def test_rows_checked_on_an_earlier_page_are_not_recomputed(db, day, monkeypatch):
    found = record_verification(db, actor=ADMIN)
    calls = _verified_from(monkeypatch)
    first = dashboard(db, actor=MANAGER).audit
    assert first.status == "intact" and calls == [found.rows]  # from the checkpoint
    again = dashboard(db, actor=MANAGER).audit
    assert again == first
    screen_subject(db, site_code="101", actor=AT_101)
    after = dashboard(db, actor=MANAGER).audit
    assert after.status == "intact" and after.rows > first.rows
    assert after.fully_checked_at == first.fully_checked_at
    assert after.fully_checked_through == found.rows
    if db.is_postgres:  # nothing recomputed the second time; then only the new rows
        assert calls == [found.rows, first.rows]
    else:  # SQLite has no fingerprint of the rows: the tail is recomputed every time
        assert calls == [found.rows] * 3


def test_a_row_changed_after_it_was_checked_on_a_page_is_found_on_the_next(db, day):
    record_verification(db, actor=ADMIN)
    for _ in range(3):
        screen_subject(db, site_code="101", actor=AT_101)
    state = dashboard(db, actor=MANAGER).audit
    assert state.status == "intact"
    middle = (state.fully_checked_through + state.rows) // 2  # not the last row
    assert state.fully_checked_through < middle < state.rows
    _tamper(db, middle)
    broken = dashboard(db, actor=MANAGER).audit
    assert broken.status == "broken" and f"seq {middle}" in broken.problem
    screen_subject(db, site_code="101", actor=AT_101)  # and stays broken as rows come
    assert dashboard(db, actor=MANAGER).audit.status == "broken"


def test_a_row_removed_after_it_was_checked_on_a_page_is_found_on_the_next(db, day):
    record_verification(db, actor=ADMIN)
    for _ in range(2):
        screen_subject(db, site_code="101", actor=AT_101)
    state = dashboard(db, actor=MANAGER).audit
    assert state.status == "intact"
    with db.engine.begin() as conn:
        for statement in append_only.drop_statements(db.engine.dialect.name):
            conn.execute(text(statement))
        conn.execute(text("DELETE FROM audit_events WHERE seq = :s"),
                     {"s": state.fully_checked_through + 2})
    assert dashboard(db, actor=MANAGER).audit.status == "broken"


def test_a_full_check_that_found_a_break_shows_broken_after_intact_pages(db, day):
    record_verification(db, actor=ADMIN)
    assert dashboard(db, actor=MANAGER).audit.status == "intact"
    _tamper(db, 2)  # before the checkpoint: the remembered tail is after it
    assert dashboard(db, actor=MANAGER).audit.status == "intact"
    found = record_verification(db, actor=ADMIN)
    assert not found.intact
    state = dashboard(db, actor=MANAGER).audit
    assert state.status == "broken" and "seq 2" in state.problem
    assert state.fully_checked_through == found.rows


def test_what_is_remembered_is_per_database(db, day, tmp_path):
    """Two databases with the same study id: one's remembered tail is not the other's."""
    from conftest import fresh_database

    record_verification(db, actor=ADMIN)
    assert dashboard(db, actor=MANAGER).audit.status == "intact"
    (tmp_path / "other").mkdir()
    other, cleanup = fresh_database(tmp_path / "other")
    try:
        load_day(other, tmp_path / "other")
        record_verification(other, actor=ADMIN)
        screen_subject(other, site_code="101", actor=AT_101)
        _tamper(other, dashboard(other, actor=MANAGER).audit.rows)
        assert dashboard(other, actor=MANAGER).audit.status == "broken"
        assert dashboard(db, actor=MANAGER).audit.status == "intact"
    finally:
        cleanup()


def test_stock_read_for_some_sites_is_the_whole_studys_for_those(db, day, monkeypatch):
    """site_stock(site_ids=...) (the dashboard's: the reader's sites) reads fewer kits
    with other queries, a UNION for a few sites and one scan for many; the numbers
    are the whole study's for those sites."""
    from core.clock import utcnow
    from core.models import Study
    from core.supply import overview

    with db.snapshot() as session:
        study = session.scalars(select(Study)).one()
        ids = list(session.scalars(select(Site.id).order_by(Site.code)))
        now = utcnow()
        for few in (10, 0):  # the UNION, then the scan
            monkeypatch.setattr(overview, "FEW_SITES", few)
            for by_kit_type in (False, True):
                whole = overview.site_stock(session, study, by_kit_type=by_kit_type, now=now)
                assert whole
                for subset in (ids, ids[:1], ids[1:]):
                    part = overview.site_stock(session, study, by_kit_type=by_kit_type,
                                               now=now, site_ids=subset)
                    assert part == {key: numbers for key, numbers in whole.items()
                                    if key[0] in subset}
