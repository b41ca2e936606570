"""``ivrs kits import``: kits per location, lots with one expiry, all-or-nothing, blinded audit."""

from __future__ import annotations

import csv
import hashlib
import time

import pytest
from sqlalchemy import func, select
from studyfiles import DATA, STUDY_YAML, snapshot

from core.audit import blinded, verify
from core.errors import FileErrors
from core.models import AuditEvent, Depot, Site, Study
from core.study_loader import load_study
from core.supply.kit_import import import_kits
from core.models import Kit, KitType, Lot

KITS_CSV = DATA / "kits.csv"
HEADER = "kit_number,kit_type,lot,expiry_date,location\n"


@pytest.fixture(autouse=True)
def fixed_today(monkeypatch):
    monkeypatch.setenv("IVRS_TODAY", "2026-01-15")


@pytest.fixture
def study(db):
    load_study(db, STUDY_YAML)
    return db


def write_csv(tmp_path, text: str, name: str = "kits.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def rejected(db, path) -> FileErrors:
    before = snapshot(db)
    with pytest.raises(FileErrors) as caught:
        import_kits(db, path)
    assert snapshot(db) == before
    return caught.value


def test_import_places_kits_at_depots_and_sites(study):
    result = import_kits(study, KITS_CSV)
    with open(KITS_CSV, newline="", encoding="utf-8") as handle:
        expected = list(csv.DictReader(handle))
    assert result.rows == len(expected) == 44 and result.lots == 4
    with study.sessions() as session:
        kits = {kit.kit_number: kit for kit in session.scalars(select(Kit))}
        types = {t.id: t.code for t in session.scalars(select(KitType))}
        depots = {d.id: d.code for d in session.scalars(select(Depot))}
        sites = {s.id: s.code for s in session.scalars(select(Site))}
        lots = {lot.id: (lot.code, lot.expiry_date.isoformat())
                for lot in session.scalars(select(Lot))}
    for row in expected:
        kit = kits[row["kit_number"]]
        assert types[kit.kit_type_id] == row["kit_type"]
        assert lots[kit.lot_id] == (row["lot"], row["expiry_date"])
        assert kit.expiry_date.isoformat() == row["expiry_date"]
        if row["location"] == "90":
            assert (kit.status, depots[kit.depot_id], kit.site_id) == ("at_depot", "90", None)
        else:
            assert (kit.status, sites[kit.site_id], kit.depot_id) == ("available", "101", None)


def test_audit_names_file_and_digest_but_kit_types_only_under_the_unblinded_key(study):
    import_kits(study, KITS_CSV)
    with study.sessions() as session:
        event = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "kits_imported")).one()
        study_id = session.scalars(select(Study.id)).one()
        assert verify(session, study_id) is None
    new = event.new
    assert new["file"] == "kits.csv" and new["rows"] == 44 and new["lots"] == 4
    assert new["sha256"] == hashlib.sha256(KITS_CSV.read_bytes()).hexdigest()
    assert new["locations"] == {"101": 4, "90": 40}
    assert new["kit_type"] == {"KA": 22, "KP": 22}
    shown = repr(blinded(new))
    for secret in ("KA", "KP", "LA1", "LP1", "LA2", "LP2"):
        assert secret not in shown


def test_lots_are_shared_with_a_later_file_with_the_same_expiry(study, tmp_path):
    import_kits(study, KITS_CSV)
    more = write_csv(tmp_path, HEADER + "700001,KA,LA1,2030-06-30,90\n"
                                        "700002,KA,LA9,2032-01-31,90\n")
    assert import_kits(study, more).lots == 1
    with study.sessions() as session:
        assert session.execute(select(func.count()).select_from(Lot)).scalar_one() == 5


@pytest.mark.parametrize("body, line, column, words", [
    ("1001,KX,L1,2030-01-01,90\n", 2, "kit_type", "unknown kit type 'KX'"),
    ("1001,KA,L1,2030-01-01,90\n1001,KP,L2,2030-01-01,90\n", 3, "kit_number",
     "duplicate kit number 1001 (first at line 2)"),
    ("10a1,KA,L1,2030-01-01,90\n", 2, "kit_number", "not a kit number"),
    ("1001,KA,L1,30/01/2030,90\n", 2, "expiry_date", "not a date"),
    ("1001,KA,L1,2030-02-30,90\n", 2, "expiry_date", "not a date"),
    ("1001,KA,L1,2025-12-31,90\n", 2, "expiry_date", "in the past"),
    ("1001,KA,L1,2030-01-01,999\n", 2, "location", "unknown location '999'"),
    ("1001,KA,,2030-01-01,90\n", 2, "lot", "empty"),
    ("1001,KA,L1,2030-01-01,90\n1002,KA,L1,2030-02-01,90\n", 3, "expiry_date",
     "lot L1 expires on 2030-01-01 at line 2"),
    ("1001,KA,L1,2030-01-01\n", 2, None, "4 fields"),
])
def test_bad_rows_are_rejected_with_line_and_column(study, tmp_path, body, line, column,
                                                    words):
    errors = rejected(study, write_csv(tmp_path, HEADER + body)).errors
    assert len(errors) == 1, errors
    assert (errors[0].line, errors[0].field) == (line, column)
    assert words in errors[0].message
    assert str(errors[0]).startswith(f"{tmp_path / 'kits.csv'}:{line}:")


def test_every_bad_row_is_reported(study, tmp_path):
    body = ("1001,KX,L1,2030-01-01,90\n"
            "1002,KA,L1,2030-01-01,90\n"
            "1003,KA,L1,bad,77\n")
    errors = rejected(study, write_csv(tmp_path, HEADER + body)).errors
    assert [(e.line, e.field) for e in errors] == [(2, "kit_type"), (4, "expiry_date"),
                                                   (4, "location")]


def test_missing_and_unknown_columns(study, tmp_path):
    errors = rejected(study, write_csv(tmp_path, "kit_number,kit_type,lot,expiry,location\n"
                                                 "1001,KA,L1,2030-01-01,90\n")).errors
    assert {(e.line, e.field) for e in errors} == {(1, "expiry_date"), (1, "expiry")}
    assert "missing column 'expiry_date'" in str(FileErrors(errors))


def test_kit_numbers_already_in_the_study_and_lot_expiry_conflicts(study, tmp_path):
    import_kits(study, KITS_CSV)
    taken = KITS_CSV.read_text(encoding="utf-8").splitlines()[1].split(",")[0]
    body = (f"{taken},KA,LA5,2030-01-01,90\n"
            "800001,KA,LA1,2030-07-31,90\n")
    errors = rejected(study, write_csv(tmp_path, HEADER + body)).errors
    assert [(e.line, e.field) for e in errors] == [(2, "kit_number"), (3, "expiry_date")]
    assert "already in the study" in errors[0].message
    assert "lot LA1 already expires on 2030-06-30" in errors[1].message


def test_empty_file_and_header_only(study, tmp_path):
    assert "empty" in str(rejected(study, write_csv(tmp_path, "")))
    assert "no rows" in str(rejected(study, write_csv(tmp_path, HEADER)))


def test_a_hundred_thousand_kits(study, tmp_path):
    lines = [HEADER]
    for i in range(100_000):
        kit_type = "KA" if i % 3 else "KP"
        lines.append(f"{1_000_000 + i},{kit_type},{kit_type}-{i // 5000},2030-06-30,90\n")
    path = write_csv(tmp_path, "".join(lines), name="big.csv")
    started = time.perf_counter()
    result = import_kits(study, path)
    elapsed = time.perf_counter() - started
    assert result.rows == 100_000
    with study.sessions() as session:
        assert session.execute(select(func.count()).select_from(Kit)).scalar_one() == 100_000
    assert elapsed < 60, elapsed
