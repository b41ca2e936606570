"""The audit trail's read model for the web (core.audit_trail) and the list of
reports a role may read: who may read them, blinded exactly as the audit
report is, keyset pages newest first, filters, and the chain's verification."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text
from web_support import USERS, make_web

from core import append_only
from core.actors import ADMIN, ROLES, Actor
from core.audit_reports import audit
from core.audit_trail import AUDIT_READERS, audit_page, verify_chain
from core.clock import utcnow
from core.errors import Refused
from core.randomize import randomize
from core.report_registry import SPECS, readable_reports, report_access
from core.studies import get_study
from core.subjects import screen_subject

MANAGER = Actor(role="project_manager", user_code="5006", channel="web")
STATISTICIAN = Actor(role="unblinded_statistician", user_code="5004", channel="web")


@pytest.fixture
def trail(db, tmp_path):
    web = make_web(db, tmp_path)
    coordinator = web.web_user(USERS["site_coordinator"]).actor
    number = screen_subject(db, site_code="101", actor=coordinator).subject_number
    randomize(db, subject_number=number, actor=coordinator,
              factors={"SEX": "M", "AGE": "GE65"},
              eligibility={"INC1": True, "INC2": True, "EXC1": True})
    return db, number


def _report_rows(db, blinded: bool) -> list[tuple]:
    with db.sessions() as session:
        _columns, rows = audit(session, get_study(session, None), blinded)
        return list(rows)


@pytest.mark.parametrize("role", sorted(ROLES))
def test_the_readers_are_those_who_may_read_the_audit_report(role):
    actor = Actor(role=role, site_codes=frozenset({"101"}) if role in {
        "site_coordinator", "investigator", "pharmacist"} else None)
    try:
        report_access(actor, "audit", None)
        may = True
    except Refused:
        may = False
    assert may == (role in AUDIT_READERS)


@pytest.mark.parametrize("blinded", [True, False])
def test_each_row_reads_as_the_audit_report_shows_it(trail, blinded):
    db, _number = trail
    reader = MANAGER if blinded else STATISTICIAN
    lines = audit_page(db, actor=reader, limit=200).items
    report = _report_rows(db, blinded)
    assert [line.seq for line in lines] == sorted((row[0] for row in report), reverse=True)
    by_seq = {row[0]: row for row in report}
    for line in lines:
        _seq, _at, actor, action, entity_type, entity_id, reason, old, new, confirmation = \
            by_seq[line.seq][:10]
        assert (line.actor, line.action, line.entity_type, line.entity_id, line.reason,
                line.old, line.new, line.confirmation) == (
            actor, action, entity_type, entity_id, reason, old, new, confirmation)


def test_pages_run_newest_first_without_gaps(trail):
    db, _number = trail
    seen, before = [], None
    while True:
        found = audit_page(db, actor=MANAGER, before=before, limit=7)
        assert len(found.items) <= 7
        seen += [line.seq for line in found.items]
        if found.next_before is None:
            break
        before = found.next_before
    assert seen == list(range(len(seen), 0, -1))


def test_filters_by_entity_actor_and_date(trail):
    db, number = trail
    subject_rows = audit_page(db, actor=MANAGER, entity_type="subject", entity_id=number).items
    assert subject_rows and {line.entity_id for line in subject_rows} == {number}
    by = audit_page(db, actor=MANAGER, by=f"user:{USERS['site_coordinator']}").items
    assert by and {line.actor for line in by} == {"user:5001"}
    today = utcnow().date()
    assert audit_page(db, actor=MANAGER, start=today, end=today).items
    assert audit_page(db, actor=MANAGER, end=today - timedelta(days=1)).items == []


def test_a_blinded_reader_cannot_find_an_arm_or_kit_type_by_its_code(trail):
    db, _number = trail
    for code in ("A", "P", "KA", "KP"):
        assert audit_page(db, actor=MANAGER, entity_id=code).items == []
    assert audit_page(db, actor=STATISTICIAN, entity_type="kit_type", entity_id="KA").items


def test_roles_that_may_not_read_the_trail_are_refused(trail):
    db, _number = trail
    for actor in (Actor(role="depot_manager", user_code="7001"),
                  Actor(role="site_coordinator", user_code="5001",
                        site_codes=frozenset({"101"}))):
        with pytest.raises(Refused):
            audit_page(db, actor=actor)
        with pytest.raises(Refused):
            verify_chain(db, actor=actor)


def test_the_chain_is_verified_and_a_break_named(trail):
    db, _number = trail
    assert verify_chain(db, actor=MANAGER) is None
    with db.engine.begin() as connection:
        for statement in append_only.drop_statements(db.engine.dialect.name):
            connection.execute(text(statement))
        connection.execute(text("UPDATE audit_events SET reason = 'edited' WHERE seq = 3"))
    broken = verify_chain(db, actor=ADMIN)
    assert broken is not None and broken.seq == 3


def test_readable_reports_are_those_report_access_grants():
    for role in sorted(ROLES):
        sites = frozenset({"101", "102"}) if role in {"site_coordinator", "investigator",
                                                      "pharmacist"} else None
        actor = Actor(role=role, site_codes=sites)
        names = readable_reports(actor)
        for name in SPECS:
            site = "101" if sites and "site" in SPECS[name].filters else None
            try:
                report_access(actor, name, site)
                granted = True
            except Refused:
                granted = False
            assert (name in names) == granted, (role, name)
