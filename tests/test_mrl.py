"""``ivrs mrl import``: list entries per stratum in file order, all-or-nothing, blinded audit."""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections import defaultdict

import pytest
from sqlalchemy import select
from studyfiles import MRL_CSV, STUDY_YAML, snapshot, write_study

from core.audit import verify
from core.errors import FileErrors, NotFound, Refused
from core.models import Arm, AuditEvent, ListEntry, RandomizationList, Study
from core.mrl import import_mrl
from core.study_loader import load_study

HEADER = "randomization_number,arm,SEX,AGE,block\n"


@pytest.fixture
def study(db):
    load_study(db, STUDY_YAML)
    return db


def write_csv(tmp_path, text: str, name: str = "list.csv", encoding: str = "utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def entries_by_stratum(db) -> dict[str, list[tuple[int, str, str]]]:
    """stratum key -> [(position, number, arm code)] in position order."""
    with db.transaction() as session:
        rows = session.execute(
            select(ListEntry.stratum_key, ListEntry.position, ListEntry.randomization_number,
                   Arm.code).join(Arm, Arm.id == ListEntry.arm_id)
            .order_by(ListEntry.stratum_key, ListEntry.position)).all()
    strata = defaultdict(list)
    for key, position, number, arm in rows:
        strata[key].append((position, number, arm))
    return dict(strata)


def file_order_by_stratum(path) -> dict[str, list[tuple[str, str]]]:
    """What the file says: stratum key -> [(number, arm)] in file order."""
    strata = defaultdict(list)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        for row in csv.DictReader(handle):
            strata[f"SEX={row['SEX']}|AGE={row['AGE']}"].append(
                (row["randomization_number"], row["arm"]))
    return dict(strata)


def rejected(db, path, **options) -> FileErrors:
    before = snapshot(db)
    with pytest.raises(FileErrors) as caught:
        import_mrl(db, path, **options)
    assert snapshot(db) == before
    return caught.value


# --- a good list ------------------------------------------------------------------------------


def test_import_stores_each_stratum_in_file_order(study):
    result = import_mrl(study, MRL_CSV)
    assert (result.rows, result.strata) == (48, 4)
    stored = entries_by_stratum(study)
    expected = file_order_by_stratum(MRL_CSV)
    assert set(stored) == {"SEX=M|AGE=LT65", "SEX=M|AGE=GE65", "SEX=F|AGE=LT65",
                           "SEX=F|AGE=GE65"}
    for key, rows in stored.items():
        assert [position for position, _, _ in rows] == list(range(1, 13))
        assert [(number, arm) for _, number, arm in rows] == expected[key]
    with study.transaction() as session:
        listing = session.get(RandomizationList, result.list_id)
        assert (listing.kind, listing.source, listing.rows) == ("uploaded", "mrl.csv", 48)
        assert listing.sha256 == hashlib.sha256(MRL_CSV.read_bytes()).hexdigest()
        blocks = session.scalars(select(ListEntry.block).where(
            ListEntry.randomization_number == "1001")).one()
        assert blocks == "MLT65-B1"


def test_rows_of_strata_interleaved_keep_their_order_within_each_stratum(study, tmp_path):
    path = write_csv(tmp_path, HEADER + "".join(
        f"{n},{arm},{sex},LT65,\n" for n, arm, sex in [
            (9, "P", "F"), (3, "A", "M"), (7, "A", "F"), (1, "P", "M"), (5, "A", "M")]))
    import_mrl(study, path)
    assert entries_by_stratum(study) == {
        "SEX=F|AGE=LT65": [(1, "9", "P"), (2, "7", "A")],
        "SEX=M|AGE=LT65": [(1, "3", "A"), (2, "1", "P"), (3, "5", "A")],
    }


def test_a_second_list_extends_the_first(study, tmp_path):
    import_mrl(study, MRL_CSV)
    second = write_csv(tmp_path, HEADER + "2001,P,F,GE65,X1\n2002,A,F,GE65,X1\n2003,A,M,LT65,X2\n")
    result = import_mrl(study, second)
    assert (result.rows, result.strata) == (2 + 1, 2)
    stored = entries_by_stratum(study)
    assert stored["SEX=F|AGE=GE65"][-2:] == [(13, "2001", "P"), (14, "2002", "A")]
    assert stored["SEX=M|AGE=LT65"][-1] == (13, "2003", "A")
    assert len(stored["SEX=M|AGE=GE65"]) == 12


def test_the_audit_record_names_the_file_but_no_arm(study):
    result = import_mrl(study, MRL_CSV)
    with study.transaction() as session:
        row = session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())).first()
        assert (row.action, row.entity_type, row.entity_id) == (
            "mrl_imported", "randomization_list", str(result.list_id))
        assert row.new == {"event": "R1", "file": "mrl.csv", "rows": 48, "strata": 4,
                           "sha256": hashlib.sha256(MRL_CSV.read_bytes()).hexdigest()}
        text = json.dumps([row.old, row.new, row.reason])
        assert '"A"' not in text and '"P"' not in text and "arm" not in text
        assert verify(session, row.study_id) is None


def test_bom_crlf_and_blank_lines_are_accepted(study, tmp_path):
    text = "\ufeff" + HEADER.replace("\n", "\r\n") + "11,A,M,LT65,\r\n\r\n12,P,M,LT65,\r\n"
    result = import_mrl(study, write_csv(tmp_path, text))
    assert (result.rows, result.strata) == (2, 1)


def test_a_list_stratified_by_site_and_cohort(db, tmp_path):
    study_file = write_study(tmp_path, ("stratify_by_site: false",
                                        ("stratify_by_site: true\n"
                                         "  cohorts: [C1, C2]\n  current_cohort: C1")))
    load_study(db, study_file)
    path = write_csv(tmp_path, "randomization_number,arm,site,SEX,AGE,cohort\n"
                               "1,A,101,M,LT65,C1\n2,P,102,F,GE65,\n3,A,101,M,LT65,C1\n")
    import_mrl(db, path)
    assert entries_by_stratum(db) == {
        "site=101|cohort=C1|SEX=M|AGE=LT65": [(1, "1", "A"), (2, "3", "A")],
        "site=102|SEX=F|AGE=GE65": [(1, "2", "P")],
    }
    errors = rejected(db, write_csv(tmp_path, "randomization_number,arm,SEX,AGE\n4,A,M,LT65\n",
                                    name="nosite.csv"))
    assert [(e.line, e.field) for e in errors.errors] == [(1, "site")]
    errors = rejected(db, write_csv(tmp_path, "randomization_number,arm,site,SEX,AGE,cohort\n"
                                              "5,A,999,M,LT65,C7\n", name="bad.csv"))
    assert [(e.line, e.field) for e in errors.errors] == [(2, "site"), (2, "cohort")]


# --- choosing the study and the event ---------------------------------------------------------


def test_an_event_that_is_not_a_list_takes_no_list(db, tmp_path):
    load_study(db, write_study(tmp_path, ("method: list",
                                          ("method: block\n"
                                           "  block: {sizes: [3, 6], seed: 1}"))))
    with pytest.raises(Refused, match="no randomization event of study ABC-301 uses method list"):
        import_mrl(db, MRL_CSV)
    with pytest.raises(Refused, match="event R1 uses method block"):
        import_mrl(db, MRL_CSV, event_code="R1")
    with pytest.raises(NotFound, match="no event 'R9'"):
        import_mrl(db, MRL_CSV, event_code="R9")


def test_which_study(db, tmp_path):
    with pytest.raises(NotFound, match="no study is loaded"):
        import_mrl(db, MRL_CSV)
    load_study(db, STUDY_YAML)
    load_study(db, write_study(tmp_path, ('code: "ABC-301"', 'code: "ABC-301-UAT"'),
                               ('"+15005550006"', '"+15005550007"')))
    with pytest.raises(NotFound, match="several studies"):
        import_mrl(db, MRL_CSV)
    with pytest.raises(NotFound, match="no study 'NOPE'"):
        import_mrl(db, MRL_CSV, study_code="NOPE")
    assert import_mrl(db, MRL_CSV, study_code="ABC-301-UAT").rows == 48
    with db.transaction() as session:
        uat = session.scalars(select(Study.id).where(Study.code == "ABC-301-UAT")).one()
        assert set(session.scalars(select(ListEntry.study_id))) == {uat}


# --- bad lists: every problem with its line and column, nothing written ----------------------

BAD_LISTS = {
    "unknown arm": ("1,A,M,LT65,\n2,X,M,LT65,\n", 3, "arm", "unknown arm 'X' (arms: A, P)"),
    "duplicate number": ("1,A,M,LT65,\n2,P,F,LT65,\n1,A,M,GE65,\n", 4, "randomization_number",
                         "duplicate randomization number 1 (first at line 2)"),
    "bad level": ("1,A,M,LT65,\n2,A,M,OLD,\n", 3, "AGE",
                  "unknown level 'OLD' of AGE (levels: LT65, GE65)"),
    "empty level": ("1,A,,LT65,\n", 2, "SEX", "empty; expected a level of SEX (M, F)"),
    "number not digits": ("1,A,M,LT65,\nR-2,A,M,LT65,\n", 3, "randomization_number",
                          "'R-2' is not a randomization number"),
    "wrong field count": ("1,A,M,LT65,\n2,A,M\n", 3, None, "3 fields, but the header has 5"),
}


@pytest.mark.parametrize("case", list(BAD_LISTS))
def test_a_bad_row_rejects_the_whole_file(study, tmp_path, case):
    rows, line, column, message = BAD_LISTS[case]
    path = write_csv(tmp_path, HEADER + rows)
    errors = rejected(study, path)
    (error,) = errors.errors
    assert (error.file, error.line, error.field) == (str(path), line, column)
    assert message in error.message


@pytest.mark.parametrize("header, column, message", [
    ("randomization_number,arm,SEX,block\n", "AGE", "missing column 'AGE'"),
    ("randomization_number,SEX,AGE\n", "arm", "missing column 'arm'"),
    ("randomization_number,arm,SEX,AGE,colour\n", "colour", "unknown column 'colour'"),
    ("randomization_number,arm,SEX,AGE,SEX\n", "SEX", "column 'SEX' appears twice"),
])
def test_a_bad_header_rejects_the_file(study, tmp_path, header, column, message):
    errors = rejected(study, write_csv(tmp_path, header + "1,A,M,LT65,x\n"))
    error = next(e for e in errors.errors if e.field == column)
    assert error.line == 1 and message in error.message


def test_a_number_already_imported_is_refused(study, tmp_path):
    import_mrl(study, MRL_CSV)
    errors = rejected(study, write_csv(tmp_path, HEADER + "3001,A,M,LT65,\n1048,P,F,GE65,\n"))
    assert [(e.line, e.field, e.message) for e in errors.errors] == [
        (3, "randomization_number", "randomization number 1048 is already in a list of event R1")]


def test_every_bad_row_is_reported(study, tmp_path):
    errors = rejected(study, write_csv(tmp_path, HEADER + "1,X,M,LT65,\n2,A,Q,LT65,\n"
                                                          "3,A,M,LT65,\n4,A,M,LT65,B,extra\n"))
    assert [(e.line, e.field) for e in errors.errors] == [(2, "arm"), (3, "SEX"), (5, None)]


@pytest.mark.parametrize("text, message", [
    ("", "the file is empty"),
    ("\ufeff", "the file is empty"),
    (HEADER, "no rows after the header"),
])
def test_an_empty_list_is_refused(study, tmp_path, text, message):
    assert message in str(rejected(study, write_csv(tmp_path, text)))


def test_not_utf8_is_refused_with_its_line(study, tmp_path):
    errors = rejected(study, write_csv(tmp_path, HEADER + "1,A,M,LT65,\n2,A,M,LT65,é\n",
                                       encoding="latin-1"))
    assert [(e.line, e.message) for e in errors.errors] == [(3, "not UTF-8 text (byte 0xe9)")]


def test_a_hundred_thousand_rows(study, tmp_path):
    levels = [(sex, age) for sex in ("M", "F") for age in ("LT65", "GE65")]
    lines = [HEADER] + [f"{100000 + n},{'AAP'[n % 3]},{levels[n % 4][0]},{levels[n % 4][1]},"
                        f"B{n // 12}\n" for n in range(100_000)]
    path = write_csv(tmp_path, "".join(lines))
    started = time.perf_counter()
    result = import_mrl(study, path)
    elapsed = time.perf_counter() - started
    assert (result.rows, result.strata) == (100_000, 4)
    assert elapsed < 60, f"{elapsed:.1f} s"
    with study.transaction() as session:
        last = session.scalars(select(ListEntry).where(
            ListEntry.randomization_number == "199999")).one()
        assert (last.stratum_key, last.position) == ("SEX=F|AGE=GE65", 25_000)
