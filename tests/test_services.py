"""Core services: screening, status changes, randomization rules, idempotency, ratio changes."""

from __future__ import annotations

import pytest
from factories import make_study
from helpers import YES, enroll, table_counts
from sqlalchemy import select

from core.actors import ADMIN, Actor
from core.errors import IvrsError, NotFound, Refused
from core.models import AuditEvent, Randomization, Subject, SubjectStatusChange
from core.randomize import change_ratio, randomize
from core.subjects import discontinue, record_screen_failure, screen_subject

COORDINATOR_101 = Actor(role="site_coordinator", user_code="5001",
                        site_codes=frozenset({"101"}), channel="test")
M_LT65 = {"SEX": "M", "AGE": "LT65"}


@pytest.fixture
def study(db):
    return make_study(db, code="S", method="list", list_per_stratum=20)


def test_screening_numbers_are_site_code_plus_sequence(db, study):
    numbers = [screen_subject(db, site_code=site, actor=ADMIN).subject_number
               for site in ("101", "101", "102", "101")]
    assert numbers == ["1010001", "1010002", "1020001", "1010003"]
    with db.sessions() as s:
        assert s.scalar(select(SubjectStatusChange).limit(1)).to_status == "screened"


def test_screen_at_a_site_that_is_not_yours_is_refused(db, study):
    before = table_counts(db)
    with pytest.raises(Refused) as refused:
        screen_subject(db, site_code="102", actor=COORDINATOR_101)
    assert refused.value.code == "wrong_site"
    assert table_counts(db) == before


def test_pharmacist_may_not_randomize(db, study):
    pharmacist = Actor(role="pharmacist", user_code="7", site_codes=frozenset({"101"}))
    subject = screen_subject(db, site_code="101", actor=COORDINATOR_101)
    with pytest.raises(Refused):
        randomize(db, subject_number=subject.subject_number, actor=pharmacist,
                  eligibility=YES, factors=M_LT65)


def test_idempotent_screen_and_randomize(db, study):
    a = screen_subject(db, site_code="101", actor=ADMIN, idempotency_key="call-1:step-3")
    b = screen_subject(db, site_code="101", actor=ADMIN, idempotency_key="call-1:step-3")
    assert a == b
    r1 = randomize(db, subject_number=a.subject_number, actor=ADMIN, eligibility=YES,
                   factors=M_LT65, idempotency_key="call-1:step-9")
    before = table_counts(db)
    r2 = randomize(db, subject_number=a.subject_number, actor=ADMIN, eligibility=YES,
                   factors=M_LT65, idempotency_key="call-1:step-9")
    assert r1 == r2
    assert table_counts(db) == before


def test_already_randomized_is_refused(db, study):
    result = enroll(db, "S", M_LT65)
    with pytest.raises(Refused) as refused:
        randomize(db, subject_number=result.subject_number, actor=ADMIN, eligibility=YES,
                  factors=M_LT65)
    assert refused.value.code == "already_randomized"


def test_ineligible_is_recorded_and_refused(db, study):
    subject = screen_subject(db, site_code="101", actor=ADMIN)
    with pytest.raises(Refused) as refused:
        randomize(db, subject_number=subject.subject_number, actor=ADMIN,
                  eligibility={"INC1": True, "EXC1": False}, factors=M_LT65)
    assert refused.value.code == "not_eligible"
    with db.sessions() as s:
        last = s.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc())).first()
        assert last.action == "randomization_refused"
        assert last.new["eligibility"] == {"INC1": True, "EXC1": False}
        assert s.scalar(select(Subject)).status == "screened"
        assert s.scalar(select(Randomization)) is None


@pytest.mark.parametrize("factors,eligibility,code", [
    ({"SEX": "X", "AGE": "LT65"}, YES, "bad_level"),
    ({"SEX": "M"}, YES, "bad_level"),
    (M_LT65, {"INC1": True}, "eligibility_missing"),
])
def test_bad_answers_change_nothing(db, study, factors, eligibility, code):
    subject = screen_subject(db, site_code="101", actor=ADMIN)
    before = table_counts(db)
    with pytest.raises(IvrsError) as error:
        randomize(db, subject_number=subject.subject_number, actor=ADMIN,
                  eligibility=eligibility, factors=factors)
    assert error.value.code == code
    assert table_counts(db) == before


def test_unknown_subject(db, study):
    with pytest.raises(NotFound):
        randomize(db, subject_number="1019999", actor=ADMIN, eligibility=YES, factors=M_LT65)


def test_screen_failure_and_discontinuation(db, study):
    screened = screen_subject(db, site_code="101", actor=ADMIN)
    failed = record_screen_failure(db, subject_number=screened.subject_number,
                                   reason="INC2 not met", actor=ADMIN)
    assert failed.status == "screen_failed"
    with pytest.raises(Refused):
        randomize(db, subject_number=screened.subject_number, actor=ADMIN, eligibility=YES,
                  factors=M_LT65)
    with pytest.raises(Refused):  # a screen failure cannot be discontinued
        discontinue(db, subject_number=screened.subject_number, reason="x", actor=ADMIN)
    randomized = enroll(db, "S", M_LT65)
    with pytest.raises(Refused):  # a reason is required
        discontinue(db, subject_number=randomized.subject_number, reason=" ", actor=ADMIN)
    stopped = discontinue(db, subject_number=randomized.subject_number,
                          reason="withdrew consent", actor=ADMIN)
    assert stopped.status == "discontinued"
    with db.sessions() as s:
        history = [(h.from_status, h.to_status) for h in s.scalars(
            select(SubjectStatusChange).order_by(SubjectStatusChange.id))]
    assert history == [(None, "screened"), ("screened", "screen_failed"), (None, "screened"),
                       ("screened", "randomized"), ("randomized", "discontinued")]


def test_caps_stop_enrollment_of_that_level_only(db):
    make_study(db, code="C", method="block", params={"block": {"sizes": [2], "seed": 1}},
               caps={"SEX=F": 2, "total": 5})
    enroll(db, "C", {"SEX": "F", "AGE": "LT65"})
    enroll(db, "C", {"SEX": "F", "AGE": "GE65"})
    with pytest.raises(Refused) as refused:
        enroll(db, "C", {"SEX": "F", "AGE": "LT65"})
    assert refused.value.code == "cap_reached"
    enroll(db, "C", M_LT65)
    enroll(db, "C", M_LT65)
    enroll(db, "C", M_LT65)
    with pytest.raises(Refused):
        enroll(db, "C", M_LT65)  # total of 5 reached


def test_rerandomization_events_in_order(db):
    make_study(db, code="X", method="block", params={"block": {"sizes": [2], "seed": 3}},
               extra_events=[("R2", "simple", {"A": 1, "P": 1}, {"seed": 4}, {}, {})])
    subject = screen_subject(db, site_code="101", actor=ADMIN)
    with pytest.raises(Refused) as refused:
        randomize(db, subject_number=subject.subject_number, actor=ADMIN, eligibility=YES,
                  factors={}, event="R2")
    assert refused.value.code == "previous_event_missing"
    first = randomize(db, subject_number=subject.subject_number, actor=ADMIN,
                      eligibility=YES, factors=M_LT65)
    second = randomize(db, subject_number=subject.subject_number, actor=ADMIN,
                       eligibility=YES, factors={})
    assert (first.event, second.event) == ("R1", "R2")
    assert first.randomization_number.startswith("1") and second.randomization_number.startswith("2")
    with pytest.raises(Refused):
        randomize(db, subject_number=subject.subject_number, actor=ADMIN, eligibility=YES,
                  factors={})


def test_change_ratio_is_audited_and_applies_from_the_next_block(db):
    make_study(db, code="R", method="block", params={"block": {"sizes": [6], "seed": 2}})
    first_block = [enroll(db, "R", M_LT65).arm for _ in range(3)]
    change = change_ratio(db, ratio={"A": 2, "P": 1}, actor=ADMIN, reason="amendment 2")
    assert (change.old, change.new) == ({"A": 1, "P": 1}, {"A": 2, "P": 1})
    first_block += [enroll(db, "R", M_LT65).arm for _ in range(3)]
    assert sorted(first_block) == ["A"] * 3 + ["P"] * 3  # started block finished 1:1
    second_block = [enroll(db, "R", M_LT65).arm for _ in range(6)]
    assert sorted(second_block) == ["A"] * 4 + ["P"] * 2
    with db.sessions() as s:
        row = s.scalars(select(AuditEvent).where(AuditEvent.action == "ratio_changed")).one()
        assert row.old == {"ratio": {"A": 1, "P": 1}} and row.reason == "amendment 2"


def test_change_ratio_rejects_bad_ratios(db, study):
    with pytest.raises(Refused):  # a list's ratio is the list
        change_ratio(db, ratio={"A": 1, "P": 1}, actor=ADMIN, reason="x")
    make_study(db, code="B", method="block", params={"block": {"sizes": [4], "seed": 2}})
    for ratio in ({"A": 2, "P": 1}, {"Z": 1}, {"A": 0, "P": 0}):
        with pytest.raises(IvrsError):
            change_ratio(db, ratio=ratio, actor=ADMIN, reason="x", study="B")
    with pytest.raises(Refused):
        change_ratio(db, ratio={"A": 1, "P": 1}, actor=COORDINATOR_101, reason="x", study="B")


def test_a_key_racing_for_another_subject_is_refused_cleanly(db, study, monkeypatch):
    """The loser of a race on one idempotency key (the other call not yet committed
    when it looked) gets a clear refusal, not a database error, and writes nothing."""
    import core.service

    first = screen_subject(db, site_code="101", actor=ADMIN)
    second = screen_subject(db, site_code="101", actor=ADMIN)
    randomize(db, subject_number=first.subject_number, actor=ADMIN, eligibility=YES,
              factors=M_LT65, idempotency_key="shared-key")
    before = table_counts(db)
    monkeypatch.setattr(core.service, "stored_result", lambda *args: None)  # lost the race
    with pytest.raises(IvrsError) as error:
        randomize(db, subject_number=second.subject_number, actor=ADMIN, eligibility=YES,
                  factors=M_LT65, idempotency_key="shared-key")
    assert error.value.code == "key_reused"
    assert table_counts(db) == before
