"""The dashboard remembered (core.dashboard.current): a new answer as soon as the
study changes, and never one read for another reader (role, blinding, sites);
the audit chain's state read anew every time. The study's day is
tests/test_dashboard.py's."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import event
from test_dashboard import (
    AT_101,
    AT_102,
    ELIGIBLE,
    MANAGER,
    STATISTICIAN,
    TODAY,
    WOMAN,
    _secrets,
    _strings,
    _tamper,
    by_code,
    load_day,
)

from core.actors import ADMIN, Actor
from core.audit_checkpoints import record_verification
from core.dashboard import current
from core.randomize import randomize
from core.subjects import screen_subject


@pytest.fixture
def day(db, tmp_path, monkeypatch):
    monkeypatch.setenv("IVRS_TODAY", TODAY.isoformat())
    return load_day(db, tmp_path)


def test_the_same_version_is_answered_from_memory(db, day):
    first, again = current(db, actor=MANAGER), current(db, actor=MANAGER)
    assert again.version == first.version
    assert again.data.stock_by_site is first.data.stock_by_site  # not read again
    other_user = Actor(role="project_manager", user_code="6051", channel="api")
    assert current(db, actor=other_user).data.stock_by_site is first.data.stock_by_site


def test_a_change_is_on_the_next_dashboard(db, day):
    before = current(db, actor=MANAGER)
    subject = screen_subject(db, site_code="101", actor=AT_101).subject_number
    randomize(db, subject_number=subject, actor=AT_101, eligibility=ELIGIBLE, factors=WOMAN)
    after = current(db, actor=MANAGER)
    assert after.generation > before.generation
    was, now = by_code(before.data.enrollment_by_site)["101"], \
        by_code(after.data.enrollment_by_site)["101"]
    assert (now.screened, now.randomized) == (was.screened + 1, was.randomized + 1)
    assert by_code(after.data.stock_by_site)["101"].dispensable == \
        by_code(before.data.stock_by_site)["101"].dispensable - 1


def test_a_blinded_role_never_gets_what_an_unblinded_one_was_answered(db, day):
    unblinded = current(db, actor=STATISTICIAN)
    assert not unblinded.data.blinded
    assert {g.lot for g in unblinded.data.expiring} == {"LA9", "LP9", "LA8"}
    codes, words = _secrets(db)
    for actor in (MANAGER, AT_101):
        board = current(db, actor=actor)
        assert board.version[:5] == unblinded.version[:5]  # the same study version and day
        assert board.data.blinded
        strings = _strings(board.data)
        assert not codes & set(strings)
        for word in words:
            assert not [s for s in strings if re.search(rf"\b{re.escape(word)}\b", s)], word


def test_two_site_roles_of_different_sites_never_see_each_others(db, day):
    at_101, at_102 = current(db, actor=AT_101), current(db, actor=AT_102)
    assert [s.site for s in at_101.data.stock_by_site] == ["101"]
    assert [s.site for s in at_102.data.stock_by_site] == ["102"]
    assert [s.site for s in current(db, actor=AT_101).data.enrollment_by_site] == ["101"]
    # The same role at another site: another answer.
    elsewhere = Actor(role="investigator", user_code="5009", site_codes=frozenset({"101"}))
    assert [s.site for s in current(db, actor=elsewhere).data.stock_by_site] == ["101"]
    assert current(db, actor=AT_102).data.pending_approvals.count == 1
    assert current(db, actor=elsewhere).data.pending_approvals.count == 0


def test_the_audit_state_is_read_anew_though_the_rest_is_remembered(db, day):
    record_verification(db, actor=ADMIN)
    screen_subject(db, site_code="101", actor=AT_101)  # a row after the checkpoint
    first = current(db, actor=MANAGER)
    assert first.data.audit.status == "intact"
    _tamper(db, first.data.audit.rows)  # in place: no new row, the same version
    again = current(db, actor=MANAGER)
    assert again.version == first.version
    assert again.data.stock_by_site is first.data.stock_by_site
    assert again.data.audit.status == "broken"


def test_another_day_is_another_answer(db, day):
    later = current(db, actor=MANAGER, today=TODAY + timedelta(days=20))
    assert by_code(later.data.stock_by_site)["103"].dispensable == 0
    assert by_code(current(db, actor=MANAGER).data.stock_by_site)["103"].dispensable == 1



def _selects(db, call) -> int:
    """SELECT statements sent during ``call()``."""
    sent = []

    def count(conn, cursor, statement, *rest):
        if statement.lstrip().upper().startswith("SELECT"):
            sent.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        call()
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    return len(sent)


def test_a_reader_without_audit_state_is_answered_from_memory_after_two_lookups(db, day):
    assert _selects(db, lambda: current(db, actor=AT_101)) > 2  # read
    assert _selects(db, lambda: current(db, actor=AT_101)) == 2  # the study and its head
