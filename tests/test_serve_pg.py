"""A real ``ivrs serve`` (gunicorn, 4 workers, Redis sessions, PostgreSQL) under
simultaneous calls over HTTP: what every caller heard must be exactly what the
database holds, nothing may be given twice, and the shared PIN lockout holds
when three wrong PINs arrive together. PostgreSQL + Redis only."""

from __future__ import annotations

import os
import threading

import pytest
from e2e import (
    DAY_1,
    DAY_29,
    PIN,
    Call,
    all_together,
    assert_every_answer_was_valid_twiml,
    assert_given_once,
    assert_heard_is_stored,
    dispense_visit_2,
    expect,
    ivrs_serve,
    read_outcome,
    screen_and_randomize,
    signed_up_users,
    stock_sites,
)
from sqlalchemy import select
from voice import demo_study_in_english

from core.models import User

pytestmark = pytest.mark.postgres

CALLERS = 40


@pytest.fixture
def study(pg_db, tmp_path, monkeypatch):
    if not os.environ.get("REDIS_URL"):
        pytest.skip("needs Redis: set REDIS_URL")
    monkeypatch.setenv("IVRS_TODAY", DAY_1.isoformat())
    demo_study_in_english(pg_db, tmp_path)
    return pg_db


# --- the tests ------------------------------------------------------------------------------


def test_forty_simultaneous_calls_hear_exactly_what_the_database_holds(study, tmp_path):
    users = signed_up_users(study, CALLERS, first=6001)
    stock_sites(study, tmp_path / "site-kits.csv")
    calls = []
    with ivrs_serve(study, DAY_1, tmp_path) as url:
        calls = [Call.to(url, user) for user in users]
        all_together(calls, lambda call, index: screen_and_randomize(call, index))
    # The server restarted 28 days later: visit 2 is due for every subject.
    with ivrs_serve(study, DAY_29, tmp_path) as url:
        visit_2 = [Call.to(url, call.user) for call in calls]
        for first, second in zip(calls, visit_2, strict=True):
            second.heard = first.heard  # one record per caller, both calls
        all_together(visit_2, lambda call, index: dispense_visit_2(call))
    assert_every_answer_was_valid_twiml(calls + visit_2)

    outcome = read_outcome(study)
    assert_given_once(outcome)
    assert len(outcome.randomizations) == CALLERS and len(outcome.entries) == CALLERS
    assert sum(len(call.heard["v1_kits"] + call.heard["v2_kits"]) for call in calls) == 3 * CALLERS
    assert_heard_is_stored(outcome, calls)


def test_three_simultaneous_wrong_pins_lock_the_user(study, tmp_path):
    user, = signed_up_users(study, 1, first=6201)
    with ivrs_serve(study, DAY_1, tmp_path) as url:
        calls = [Call.to(url, user) for _ in range(3)]
        for call in calls:
            expect(call.phone.dial(), "Enter your user ID")
            expect(call.phone.press(user.code + "#"), "PIN")
        barrier = threading.Barrier(3)
        answers: list[str] = []

        def wrong_pin(call: Call) -> None:
            barrier.wait(timeout=30)
            answers.append(call.phone.press("9999#").text)

        threads = [threading.Thread(target=wrong_pin, args=(call,)) for call in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(answers) == 3, answers
        with study.sessions() as session:
            row = session.execute(select(User).where(User.user_code == user.code)).scalar_one()
            assert row.locked is True and row.failed_attempts == 3
        assert sum("not valid" in text for text in answers) == 2, answers
        assert sum("locked" in text for text in answers) == 1, answers

        fourth = Call.to(url, user)
        heard = fourth.sign_in(PIN)
        assert "locked" in heard.text and heard.ended, heard.text
    assert_every_answer_was_valid_twiml(calls + [fourth])
