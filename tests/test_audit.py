"""The hash chain detects altered, removed and inserted rows."""

from __future__ import annotations

import pytest
from factories import make_study
from helpers import enroll
from sqlalchemy import select, text

from core import append_only
from core.audit import AuditLog, row_hash, verify
from core.models import AuditEvent


@pytest.fixture
def chain(db):
    study = make_study(db, code="A", method="simple", params={"seed": 1}, factors={})
    for _ in range(4):
        enroll(db, "A", {})
    with db.sessions() as s:
        assert verify(s, study.id) is None
    # the tamperer is a DBA: drop the append-only triggers first
    with db.engine.begin() as conn:
        for statement in append_only.drop_statements(db.engine.dialect.name):
            conn.execute(text(statement))
    return study


def _broken(db, study):
    with db.sessions() as s:
        return verify(s, study.id)


def test_altered_row_is_detected(db, chain):
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'someone else' WHERE seq = 5"))
    problem = _broken(db, chain)
    assert problem.seq == 5 and "altered" in problem.problem


def test_altered_json_value_is_detected(db, chain):
    with db.sessions() as s, s.begin():
        row = s.scalars(select(AuditEvent).where(AuditEvent.action == "subject_randomized")).first()
        row.new = {**row.new, "arm": "P" if row.new["arm"] == "A" else "A"}
        seq = row.seq
    assert _broken(db, chain).seq == seq


def test_removed_row_is_detected(db, chain):
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq = 3"))
    problem = _broken(db, chain)
    assert problem.seq == 4 and "removed" in problem.problem


def test_removed_last_row_is_detected(db, chain):
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)"))
    assert "removed from the end" in _broken(db, chain).problem


def test_inserted_row_is_detected(db, chain):
    """A forger who makes room at seq 3 and even hashes the forged row correctly."""
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET seq = seq + 1000 WHERE seq >= 3"))
        conn.execute(text("UPDATE audit_events SET seq = seq - 999 WHERE seq >= 1000"))
    with db.sessions() as s, s.begin():
        previous = s.scalars(select(AuditEvent).where(AuditEvent.seq == 2)).one()
        forged = dict(study_id=chain.id, seq=3, at=previous.at, actor="user:9999",
                      action="subject_screened", entity_type="subject", entity_id="1019999",
                      reason=None, old=None, new={"site": "101"}, prev_hash=previous.hash)
        s.add(AuditEvent(**forged, hash=row_hash(**forged)))
    problem = _broken(db, chain)
    assert problem.seq == 4 and "does not link" in problem.problem


def test_chains_are_per_study(db):
    one = make_study(db, code="ONE", method="simple", factors={})
    two = make_study(db, code="TWO", method="simple", factors={})
    enroll(db, "ONE", {})
    enroll(db, "TWO", {})
    with db.sessions() as s:
        seqs = {study_id: [r.seq for r in s.scalars(
            select(AuditEvent).where(AuditEvent.study_id == study_id).order_by(AuditEvent.seq))]
            for study_id in (one.id, two.id)}
    assert seqs[one.id] == seqs[two.id] == [1, 2, 3]
    with db.sessions() as s:
        assert verify(s, one.id) is None and verify(s, two.id) is None


def test_nothing_to_seal_writes_nothing(db):
    study = make_study(db, code="N", method="simple", factors={})
    with db.transaction() as s:
        assert AuditLog(study.id, "x").seal(s) is None


def test_blinded_view_redacts_allocation(db):
    from core.audit import blinded

    make_study(db, code="B", method="minimization", params={"seed": 1})
    enroll(db, "B", {"SEX": "M", "AGE": "LT65"})
    with db.sessions() as s:
        row = s.scalars(select(AuditEvent).where(AuditEvent.action == "subject_randomized")).one()
    view = blinded(row.new)
    assert view["arm"] == view["allocation"] == "(blinded)"
    assert view["randomization_number"] == row.new["randomization_number"]
    assert "'A'" not in repr(view) and "'P'" not in repr(view)
