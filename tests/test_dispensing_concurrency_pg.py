"""Parallel dispensations at one site on PostgreSQL: no kit given twice.

16 randomized subjects come back for V2 (2 kits each) at the same moment, and
the site has kits for only some of them. Kits are picked with ``FOR UPDATE
SKIP LOCKED``: nobody waits on another's kits, no kit goes to two subjects,
and whoever finds too few free kits is refused with ``no_stock`` having
written nothing (no kit, no visit, no audit row).

Skipped unless IVRS_TEST_DATABASE_URL points at PostgreSQL (fixture ``pg_db``).
"""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import select
from studyfiles import write_study
from test_concurrency_pg import run_parallel
from test_dispensing import COORDINATOR, M_LT65, YES, add_kits, set_day

from core.actors import ADMIN
from core.audit import verify
from core.errors import Refused
from core.models import AuditEvent, Subject
from core.randomize import randomize
from core.study_loader import load_study
from core.subjects import screen_subject
from core.supply.dispensing import dispense
from core.models import Kit, SubjectVisit

pytestmark = pytest.mark.postgres
SUBJECTS = 16


def test_parallel_dispensations_never_share_a_kit(pg_db, tmp_path, monkeypatch):
    db = pg_db
    set_day(monkeypatch, 0)
    block = "method: block\n  block: {sizes: [4], seed: 11}"
    load_study(db, write_study(tmp_path, ("method: list", block),
                               ("{A: 2, P: 1}", "{A: 1, P: 1}")))
    add_kits(db, "101", "KA", SUBJECTS)
    add_kits(db, "101", "KP", SUBJECTS)
    subjects = {}
    for _ in range(SUBJECTS):
        subject = screen_subject(db, site_code="101", actor=ADMIN)
        result = randomize(db, subject_number=subject.subject_number, actor=ADMIN,
                           eligibility=YES, factors=M_LT65)
        subjects[result.subject_number] = result.arm
    arms = Counter(subjects.values())
    # what is left (16 - per-arm V1 kits, + 1 odd kit) covers about half of the
    # 16 x 2 kits that V2 asks for
    add_kits(db, "101", "KA", 1)
    with db.transaction() as s:
        free = s.scalars(select(Kit.kit_number).where(Kit.status == "available")).all()
    assert len(free) == SUBJECTS + 1

    set_day(monkeypatch, 28)
    outcomes = run_parallel(SUBJECTS, list(subjects), lambda number: dispense(
        db, subject_number=number, actor=COORDINATOR))

    done = {number: result for number, result, error in outcomes if error is None}
    refused = {number: error for number, _, error in outcomes if error is not None}
    assert all(isinstance(error, Refused) and error.code == "no_stock"
               for error in refused.values()), refused
    assert done and refused
    left_a, left_p = SUBJECTS - arms["A"] + 1, SUBJECTS - arms["P"]
    assert len(done) <= left_a // 2 + left_p // 2
    handed = [number for result in done.values() for number in result.kits]
    assert len(handed) == len(set(handed)) == 2 * len(done)

    with db.transaction() as s:
        kits = s.execute(select(Kit.kit_number, Kit.status, Kit.visit_code, Subject.subject_number)
                         .join(Subject, Subject.id == Kit.subject_id)
                         .where(Kit.visit_code == "V2")).all()
        assert sorted(k.kit_number for k in kits) == sorted(handed)
        assert {k.subject_number for k in kits} == set(done)
        assert all(k.status == "assigned" for k in kits)
        v2 = set(s.scalars(select(Subject.subject_number)
                           .join(SubjectVisit, SubjectVisit.subject_id == Subject.id)
                           .where(SubjectVisit.visit_code == "V2")))
        assert v2 == set(done)  # refused subjects: nothing partially written
        audited = set(s.scalars(select(AuditEvent.entity_id).where(
            AuditEvent.action == "visit_dispensed", AuditEvent.new["visit"].as_string() == "V2")))
        assert audited == set(done)
        # each subject got its own arm's kit type (kit type ids follow the V1 kits)
        for number in done:
            types = set(s.scalars(select(Kit.kit_type_id).join(Subject, Subject.id == Kit.subject_id)
                                  .where(Subject.subject_number == number)))
            assert len(types) == 1
        assert verify(s, s.scalars(select(Subject.study_id)).first()) is None
