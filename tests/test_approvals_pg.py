"""The approvals gate under real concurrency on PostgreSQL: approvers deciding one
request at the same moment decide it once; an investigator's simultaneous
requests for one subject open one request."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files

import pytest
from sqlalchemy import select, update
from voice import demo_study_in_english

from core.actors import ADMIN, Actor
from core.gates import decide
from core.errors import Refused
from core.models import Approval, AuditEvent, Unblinding, User
from core.randomize import randomize
from core.signatures import sign
from core.study_loader import load_study
from core.subjects import screen_subject
from core.models import Notification
from core.unblinding import unblind
from core.users import add_user

STUDY = "DEMO-301"
RAMON = Actor(role="investigator", user_code="5002", site_codes=frozenset({"102"}),
              channel="test")
CLIENTS = 8


@pytest.fixture
def approval_study(pg_db, tmp_path, monkeypatch):
    monkeypatch.setenv("IVRS_TODAY", "2026-11-23")
    demo_study_in_english(pg_db, tmp_path)
    text = files("ivrs.demo").joinpath("data", "study.yaml").read_text("utf-8")
    path = tmp_path / "approval.yaml"
    path.write_text(text.replace("unblinding: {mode: investigator}",
                                 "unblinding: {mode: approval}"), encoding="utf-8")
    load_study(pg_db, path)
    subject = screen_subject(pg_db, site_code="102", actor=RAMON, study=STUDY).subject_number
    randomize(pg_db, subject_number=subject, actor=RAMON, study=STUDY,
              eligibility={"INC1": True, "INC2": True, "EXC1": True},
              factors={"SEX": "M", "AGE": "GE65"})
    return pg_db, subject


def signature(db, actor: Actor, pin: str):
    return sign(db, user_code=actor.user_code, pin=pin, actor=actor, meaning="test",
                study=STUDY)


def run_at_once(work) -> list:
    barrier = threading.Barrier(CLIENTS)

    def client(index):
        barrier.wait()
        try:
            return work(index)
        except Refused as refusal:
            return refusal

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(client, range(CLIENTS)))


def test_simultaneous_decisions_decide_a_request_once(approval_study):
    db, subject = approval_study
    number = unblind(db, subject_number=subject, reason="medical_emergency",
                     signature=signature(db, RAMON, "1357"), actor=RAMON,
                     study=STUDY).number
    managers = []
    for index in range(CLIENTS):
        code = f"61{index:02d}"
        add_user(db, user_code=code, name=f"Manager {index}", role="project_manager",
                 sites=[], phone=f"+4477009{index:05d}", language="en", pin="2580",
                 actor=ADMIN, study=STUDY)
        managers.append(Actor(role="project_manager", user_code=code, channel="test"))
    with db.transaction() as session:
        session.execute(update(User).where(User.role == "project_manager")
                        .values(pin_temporary=False))
    signatures = [signature(db, manager, "2580") for manager in managers]

    outcomes = run_at_once(lambda i: decide(
        db, number=number, approve=i % 2 == 0, reason=None if i % 2 == 0 else "no",
        actor=managers[i], signature=signatures[i], study=STUDY))

    decided = [o for o in outcomes if not isinstance(o, Refused)]
    refused = [o for o in outcomes if isinstance(o, Refused)]
    assert len(decided) == 1 and len(refused) == CLIENTS - 1, outcomes
    assert {r.code for r in refused} == {f"approval_{decided[0].status}"}
    with db.sessions() as session:
        approval = session.scalars(select(Approval)).one()
        unblinding = session.scalars(select(Unblinding)).one()
        assert approval.status == unblinding.status == decided[0].status
        decisions = session.scalars(select(AuditEvent).where(
            AuditEvent.action.in_(["approval_approved", "approval_rejected"]))).all()
        assert len(decisions) == 1
        told = session.scalars(select(Notification.kind).where(Notification.kind.in_(
            ["unblinding_approved", "unblinding_rejected"]))).all()
        assert told == [f"unblinding_{decided[0].status}"]


def test_simultaneous_requests_for_one_subject_open_one(approval_study):
    db, subject = approval_study
    signed = signature(db, RAMON, "1357")
    outcomes = run_at_once(lambda i: unblind(
        db, subject_number=subject, reason="other", signature=signed, actor=RAMON,
        study=STUDY, idempotency_key=f"request-{i}"))
    opened = [o for o in outcomes if not isinstance(o, Refused)]
    assert len(opened) == 1 and opened[0].status == "pending" and opened[0].arms == []
    assert {o.code for o in outcomes if isinstance(o, Refused)} == {"unblinding_pending"}
    with db.sessions() as session:
        assert len(session.scalars(select(Unblinding)).all()) == 1
        assert len(session.scalars(select(Approval)).all()) == 1
