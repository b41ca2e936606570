"""The expiry job, its warnings in the outbox, and ``ivrs supply run`` / ``ivrs outbox``."""

from __future__ import annotations

from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text
from studyfiles import STUDY_YAML, snapshot, write_study
from test_resupply import TODAY, add_kits, notifications

from core import append_only
from core.audit import blinded
from core.models import AuditEvent
from core.study_loader import load_study
from core.supply.expiry import run_expiry
from core.models import Kit, Notification
from ivrs.main import main


def statuses(db, numbers) -> dict[str, str]:
    with db.sessions() as s:
        return dict(s.execute(select(Kit.kit_number, Kit.status)
                              .where(Kit.kit_number.in_(numbers))).all())


@pytest.fixture
def study(db):
    load_study(db, STUDY_YAML)
    return db


def test_a_kit_expiring_today_is_usable_today_and_expired_tomorrow(study):
    yesterday = add_kits(study, "KA", 2, expiry=TODAY - timedelta(days=1))
    today = add_kits(study, "KA", 1, expiry=TODAY)
    at_site = add_kits(study, "KP", 1, expiry=TODAY - timedelta(days=1), site="101")
    assigned = add_kits(study, "KP", 1, expiry=TODAY - timedelta(days=1), site="101",
                        status="assigned")
    result = run_expiry(study, today=TODAY)
    assert result.expired == 3
    assert statuses(study, yesterday + at_site) == dict.fromkeys(yesterday + at_site, "expired")
    assert statuses(study, today) == {today[0]: "at_depot"}
    assert statuses(study, assigned) == {assigned[0]: "assigned"}  # a subject's kit: untouched
    with study.sessions() as s:
        rows = s.scalars(select(AuditEvent).where(AuditEvent.action == "kit_expire")).all()
    assert len(rows) == 3 and {r.actor for r in rows} == {"system:expiry"}

    assert run_expiry(study, today=TODAY).expired == 0
    assert run_expiry(study, today=TODAY + timedelta(days=1)).expired == 1
    assert statuses(study, today) == {today[0]: "expired"}


def test_warnings_once_per_location_and_date_without_kit_types(study):
    soon = TODAY + timedelta(days=30)  # the window's last day (expiry_warning_days 30)
    add_kits(study, "KA", 3, expiry=soon)
    add_kits(study, "KP", 2, expiry=soon)
    add_kits(study, "KA", 1, expiry=soon, site="101")
    add_kits(study, "KP", 1, expiry=soon, site="101")
    add_kits(study, "KA", 4, expiry=soon + timedelta(days=1))  # outside the window
    add_kits(study, "KP", 1, expiry=soon, site="101", status="dispensed")  # a subject's
    result = run_expiry(study, today=TODAY)
    assert result.warnings == 2
    warnings = notifications(study, "expiry_warning")
    assert [(n.audience, n.key, n.params) for n in warnings] == [
        ("role:depot_manager", f"expiry_warning:90:{soon}",
         {"location": "90", "count": 5, "expiry_date": soon.isoformat()}),
        ("site:101", f"expiry_warning:101:{soon}",
         {"location": "101", "count": 2, "expiry_date": soon.isoformat()}),
    ]
    assert run_expiry(study, today=TODAY).warnings == 0
    assert run_expiry(study, today=TODAY + timedelta(days=1)).warnings == 1  # the new date only
    assert len(notifications(study, "expiry_warning")) == 3


def test_warning_days_from_the_study_file(db, tmp_path):
    load_study(db, write_study(tmp_path, ("do_not_ship_days: 45",
                                          "do_not_ship_days: 45\n  expiry_warning_days: 5")))
    add_kits(db, "KA", 1, expiry=TODAY + timedelta(days=5))
    add_kits(db, "KA", 1, expiry=TODAY + timedelta(days=6))
    assert run_expiry(db, today=TODAY).warnings == 1


# --- the CLI ----------------------------------------------------------------------------


@pytest.fixture
def run(database_env, db):
    load_study(db, STUDY_YAML)
    runner = CliRunner()

    def invoke(*args, env=None):
        return runner.invoke(main, list(args), env=env, catch_exceptions=False)

    return invoke


def test_supply_run_and_outbox(run, db):
    add_kits(db, "KA", 40)
    add_kits(db, "KP", 40)
    add_kits(db, "KA", 2, expiry=TODAY - timedelta(days=1))
    result = run("supply", "run", "--today", TODAY.isoformat())
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{TODAY}: 2 kit(s) expired, 0 expiry warning(s)"
    assert lines[1:-3] == [f"shipment {number} to site {site} (initial): 12 kits"
                           for number, site in (("500001", "101"), ("500002", "102"),
                                                ("500003", "103"))]
    assert lines[-3:-1] == ["0 kit confirmation reminder(s)", "0 approval request(s) expired"]
    # the daily full verification of the audit chain, recorded as serve's scheduler does
    with db.sessions() as s:
        head = s.scalar(select(func.max(AuditEvent.seq)))
        checkpoints = s.scalars(select(AuditEvent).where(
            AuditEvent.action == "audit_verified")).all()
    assert lines[-1] == f"audit chain: {head - 1} rows, intact"
    assert [row.new["intact"] for row in checkpoints] == [True]
    assert "KA" not in result.output and "KP" not in result.output

    again = run("supply", "run", "--today", TODAY.isoformat())
    assert again.exit_code == 0 and again.output.splitlines()[1:-1] == [
        "no shipment needed", "0 kit confirmation reminder(s)", "0 approval request(s) expired"]

    outbox = run("outbox")
    assert outbox.exit_code == 0
    lines = outbox.output.splitlines()
    assert len(lines) == 3 and all(line.startswith("shipment_requested\trole:depot_manager\t")
                                   for line in lines)
    assert '"count": 12' in lines[0] and '"site": "101"' in lines[0]
    with db.transaction() as s:
        for note in s.scalars(select(Notification)):
            note.status = "sent"
    assert run("outbox").output.strip() == "outbox empty"
    assert len(run("outbox", "--all").output.splitlines()) == 3


def test_supply_run_exits_1_on_a_broken_audit_chain(run, db):
    """A cron deployment learns of a tampered trail from the job's exit status."""
    with db.engine.begin() as conn:
        for statement in append_only.drop_statements(db.engine.dialect.name):
            conn.execute(text(statement))
        conn.execute(text("UPDATE audit_events SET reason = 'nothing to see' WHERE seq = 2"))
    result = run("supply", "run", "--today", TODAY.isoformat())
    assert result.exit_code == 1
    assert "audit chain BROKEN" in result.output and "seq 2" in result.output


def test_supply_run_refuses_a_bad_date_and_changes_nothing(run, db):
    add_kits(db, "KA", 40)
    before = snapshot(db)
    result = run("supply", "run", "--today", "2026-13-01")
    assert result.exit_code == 1 and "not a YYYY-MM-DD date" in result.output
    production = run("supply", "run", "--today", "2026-01-01", env={"IVRS_ENV": "production"})
    assert production.exit_code == 1 and "UAT only" in production.output
    assert snapshot(db) == before


def test_supply_run_audit_is_blinded_for_shipments(run, db):
    add_kits(db, "KA", 40)
    add_kits(db, "KP", 40)
    assert run("supply", "run", "--today", TODAY.isoformat()).exit_code == 0
    with db.sessions() as s:
        created = s.scalars(select(AuditEvent).where(
            AuditEvent.action == "shipment_created")).all()
        assert s.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.actor == "system:resupply")) > 0
    assert {blinded(row.new)["kit_type"] for row in created} == {"(blinded)"}
    assert run("audit", "verify").exit_code == 0
