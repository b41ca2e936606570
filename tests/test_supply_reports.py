"""Supply reports and the supply CLI: read back as CSV; blinded output reveals no arm,
kit type or lot."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from studyfiles import DATA, STUDY_YAML, snapshot

from core.actors import ADMIN
from core.audit import AuditLog
from core.models import Study, Subject
from core.report_registry import REPORTS
from core.study_loader import load_study
from core.subjects import screen_subject
from core.supply.kit_import import import_kits
from core.supply.kits import apply_move, lock_kits
from core.models import Kit, Shipment
from core.supply.receipt import receive_shipment
from core.supply.shipments import dispatch_shipment, request_shipment
from ivrs.main import main

KITS_CSV = DATA / "kits.csv"
SECRETS = ("KA", "KP", "LA1", "LA2", "LP1", "LP2", "Drug 10 mg", "Placebo")
ARM_CODES = ("A", "P")


@pytest.fixture(autouse=True)
def fixed_today(monkeypatch):
    monkeypatch.setenv("IVRS_TODAY", "2026-01-15")


def file_rows(path=KITS_CSV) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["kit_number"]: row for row in csv.DictReader(handle)}


@pytest.fixture
def supplied(db):
    """Kits imported; one shipment received at 101, one requested for 102; one kit
    given to a subject (placed at the subject, not the site)."""
    load_study(db, STUDY_YAML)
    import_kits(db, KITS_CSV)
    received = request_shipment(db, site_code="101", kits_per_type=2, actor=ADMIN)
    dispatch_shipment(db, shipment_number=received.shipment_number, carrier="DHL",
                      tracking_number="JD1", actor=ADMIN)
    receive_shipment(db, shipment_number=received.shipment_number, actor=ADMIN)
    pending = request_shipment(db, site_code="102", kits_per_type=1, actor=ADMIN)
    subject = screen_subject(db, site_code="101", actor=ADMIN).subject_number
    with db.transaction() as session:
        study_id = session.scalars(select(Study.id)).one()
        kit_number = session.scalars(select(Kit.kit_number).where(
            Kit.status == "available").order_by(Kit.kit_number).limit(1)).one()
        subject_id = session.scalars(select(Subject.id).where(
            Subject.subject_number == subject)).one()
        audit = AuditLog(study_id, "test")
        apply_move(audit, lock_kits(session, study_id, [kit_number])[kit_number], "assign",
                   subject_id=subject_id, site_id=None, visit_code="V1")
        audit.seal(session)
    return db, received.shipment_number, pending.shipment_number, kit_number, subject


def report(db, name: str, blinded: bool = True) -> list[dict[str, str]]:
    """The report as the CLI writes it, read back with csv."""
    with db.sessions() as session:
        columns, rows = REPORTS[name](session, session.scalars(select(Study)).one(), blinded)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    return list(csv.DictReader(io.StringIO(out.getvalue())))


def assert_blind(rows: list[dict[str, str]]) -> None:
    assert rows
    header = set(rows[0])
    assert not header & {"arm", "kit_type", "lot"}
    for row in rows:
        for value in row.values():
            assert value not in ARM_CODES
            assert not any(secret in value for secret in SECRETS), row


@pytest.mark.parametrize("name", ["kits", "site-inventory", "depot-inventory", "shipments"])
def test_blinded_reports_reveal_no_arm_kit_type_or_lot(supplied, name):
    db = supplied[0]
    rows = report(db, name)
    assert_blind(rows)
    unblinded = report(db, name, blinded=False)
    assert list(unblinded[0])[:len(rows[0])] == list(rows[0])  # blinded = a prefix


def test_kits_report(supplied):
    db, _received, pending, given, subject = supplied
    expected = file_rows()
    rows = {row["kit_number"]: row for row in report(db, "kits")}
    assert list(next(iter(rows.values()))) == ["kit_number", "location", "status",
                                               "expiry_date", "subject_number",
                                               "shipment_number"]
    assert set(rows) == set(expected)
    for number, row in rows.items():
        assert row["expiry_date"] == expected[number]["expiry_date"]
    statuses = Counter(row["status"] for row in rows.values())
    assert statuses == {"at_depot": 34, "available": 7, "reserved": 2, "assigned": 1}
    assert rows[given]["location"] == "101" and rows[given]["subject_number"] == subject
    reserved = [row for row in rows.values() if row["status"] == "reserved"]
    assert {(row["location"], row["shipment_number"]) for row in reserved} == {("90", pending)}
    unblinded = {row["kit_number"]: row for row in report(db, "kits", blinded=False)}
    for number, row in unblinded.items():
        assert (row["kit_type"], row["lot"]) == (expected[number]["kit_type"],
                                                 expected[number]["lot"])


def test_site_inventory_sums_over_kit_types_unless_unblinded(supplied):
    db = supplied[0]
    rows = report(db, "site-inventory")
    assert list(rows[0]) == ["site", "status", "count"]
    assert [(r["site"], r["status"], r["count"]) for r in rows] == [
        ("101", "assigned", "1"), ("101", "available", "7")]
    unblinded = report(db, "site-inventory", blinded=False)
    per_type = Counter()
    for row in unblinded:
        per_type[(row["site"], row["status"])] += int(row["count"])
        assert row["kit_type"] in ("KA", "KP")
    assert per_type == {("101", "assigned"): 1, ("101", "available"): 7}


def test_depot_inventory(supplied):
    db = supplied[0]
    rows = report(db, "depot-inventory")
    assert [(r["depot"], r["status"], r["count"]) for r in rows] == [
        ("90", "at_depot", "34"), ("90", "reserved", "2")]
    unblinded = report(db, "depot-inventory", blinded=False)
    assert {(r["status"], r["kit_type"]): r["count"] for r in unblinded} == {
        ("at_depot", "KA"): "17", ("at_depot", "KP"): "17",
        ("reserved", "KA"): "1", ("reserved", "KP"): "1"}


def test_shipments_report(supplied):
    db, received, pending = supplied[:3]
    rows = {row["shipment_number"]: row for row in report(db, "shipments")}
    assert set(rows) == {received, pending}
    done = rows[received]
    assert (done["origin"], done["destination"], done["status"], done["kits"],
            done["dispatched_at"], done["carrier"], done["tracking_number"]) == (
        "90", "101", "received", "4", "2026-01-15", "DHL", "JD1")
    assert done["received_at"].startswith("2026-01-15T")
    assert (rows[pending]["status"], rows[pending]["kits"], rows[pending]["dispatched_at"]) \
        == ("requested", "2", "")
    unblinded = {row["shipment_number"]: row for row in report(db, "shipments", blinded=False)}
    assert unblinded[received]["kit_type"] == "KA:2 KP:2"


# --- the CLI ---------------------------------------------------------------------------

@pytest.fixture
def run(database_env):
    runner = CliRunner()

    def invoke(*args, env=None):
        return runner.invoke(main, list(args), env=env, catch_exceptions=False)

    assert invoke("init").exit_code == 0
    assert invoke("study", "load", str(STUDY_YAML)).exit_code == 0
    return invoke


def test_cli_kits_import_and_bad_file(run, db, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("kit_number,kit_type,lot,expiry_date,location\n1,KX,L,2030-01-01,90\n",
                   encoding="utf-8")
    before = snapshot(db)
    result = run("kits", "import", str(bad))
    assert result.exit_code == 1
    assert "bad.csv:2: kit_type: unknown kit type 'KX'" in result.output
    assert "nothing was changed" in result.output
    assert snapshot(db) == before
    result = run("kits", "import", str(KITS_CSV))
    assert result.exit_code == 0, result.output
    assert "imported 44 kits (4 new lots)" in result.output


def test_cli_shipment_lifecycle(run, db, tmp_path):
    assert run("kits", "import", str(KITS_CSV)).exit_code == 0
    requested = run("shipments", "request", "--site", "101", "--per-type", "2")
    assert requested.exit_code == 0, requested.output
    with db.sessions() as session:
        number = session.scalars(select(Shipment.shipment_number)).one()
    assert f"shipment {number} requested: 4 kits" in requested.output

    listed = run("shipments", "list", "--status", "requested")
    rows = list(csv.DictReader(io.StringIO(listed.output)))
    assert [(r["shipment_number"], r["destination"], r["kits"]) for r in rows] == [
        (number, "101", "4")]
    assert_blind(rows)
    assert run("shipments", "list", "--site", "102").output.count("\n") == 1  # header only

    bad_date = run("shipments", "dispatch", number, "--carrier", "DHL", "--tracking", "T",
                   "--date", "15/01/2026")
    assert bad_date.exit_code == 1 and "not a date" in bad_date.output
    sent = run("shipments", "dispatch", number, "--carrier", "DHL", "--tracking", "JD9",
               "--date", "2026-01-15")
    assert sent.exit_code == 0 and "4 kits to site 101" in sent.output
    again = run("shipments", "cancel", number, "--reason", "late")
    assert again.exit_code == 1 and "is dispatched: it cannot be cancelled" in again.output

    with db.sessions() as session:
        kit_numbers = sorted(session.scalars(select(Kit.kit_number).where(
            Kit.status == "in_transit")))
    logger = tmp_path / "logger.json"
    logger.write_text(json.dumps({"max_c": 12}), encoding="utf-8")
    wrong = run("shipments", "receive", number, "--damaged", "1")
    assert wrong.exit_code == 1 and f"not in shipment {number}: kit 1" in wrong.output
    received = run("shipments", "receive", number, "--damaged", kit_numbers[0], "--excursion",
                   "--logger-file", str(logger))
    assert received.exit_code == 0, received.output
    assert "0 available, 3 quarantined, 1 damaged, 0 missing" in received.output
    released = run("shipments", "release", number)
    assert released.exit_code == 0 and "3 kits available" in released.output
    rejected = run("shipments", "reject", number)
    assert rejected.exit_code == 1 and "no quarantined kits" in rejected.output

    other = run("shipments", "request", "--site", "102", "--per-type", "1")
    assert other.exit_code == 0
    with db.sessions() as session:
        second = session.scalars(select(Shipment.shipment_number).where(
            Shipment.status == "requested")).one()
    cancelled = run("shipments", "cancel", second, "--reason", "site on hold")
    assert cancelled.exit_code == 0 and "2 kits back at depot 90" in cancelled.output

    for name in ("kits", "site-inventory", "depot-inventory", "shipments"):
        result = run("report", name)
        assert result.exit_code == 0, result.output
        assert_blind(list(csv.DictReader(io.StringIO(result.output))))
    unblinded = run("report", "kits", "--unblinded", "--user", "5004",
                    env={"IVRS_PIN": "9753"})
    assert unblinded.exit_code == 0, unblinded.output
    assert "kit_type" in unblinded.output.splitlines()[0]
