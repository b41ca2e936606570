"""CDISC exports: ODM 1.3.2 (validated against the official schema in
tests/data/odm) and the SDTM-shaped EX and DS tables, from the demo study with
subjects screened, randomized, dispensed at V2, a kit replaced, a screen
failure, a discontinuation and an emergency unblinding, all through the core
services; then the ``ivrs export`` commands.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from lxml import etree
from sqlalchemy import select
from studyfiles import edited, signed
from voice import TODAY, demo_study_in_english

from core.actors import Actor
from core.clock import as_utc
from core.exports import visit_catalogue
from core.exports.odm import write_odm
from core.exports.sdtm import DS_COLUMNS, EX_COLUMNS, write_ds, write_ex
from core.models import Arm, Randomization, Site, Subject
from core.randomize import randomize
from core.studies import get_study
from core.study_loader import load_study
from core.subjects import discontinue, record_screen_failure, screen_subject
from core.supply.confirmation import confirm_kit
from core.supply.dispensing import dispense, replace_kit
from core.models import Kit, KitType, Lot
from core.unblinding import unblind
from ivrs.main import main

ODM_SCHEMA = Path(__file__).parent / "data" / "odm" / "ODM1-3-2.xsd"
NS = {"odm": "http://www.cdisc.org/ns/odm/v1.3"}
STUDY = "DEMO-301"
YES = {"INC1": True, "INC2": True, "EXC1": True}
PARIS = Actor(role="site_coordinator", user_code="5001", site_codes=frozenset({"101"}))
BARCELONA = Actor(role="investigator", user_code="5002", site_codes=frozenset({"102"}))
STATISTICIAN, STATISTICIAN_PIN = "5004", "9753"  # unblinded_statistician (demo study)
GENERATED_AT = datetime(2026, 12, 24, 8, 30, 0, tzinfo=ZoneInfo("UTC"))


@dataclass(frozen=True)
class Trial:
    """What the populated study holds, for the assertions."""

    db: object
    treated: str  # randomized at 101, V1 and V2 dispensed, one V2 kit confirmed
    discontinued: str  # randomized at 101, discontinued (adverse event)
    screen_failed: str  # screened at 101, screen failure (not eligible)
    screened: str  # screened at 102, nothing else
    unblinded: str  # randomized at 102, a V1 kit lost and replaced, unblinded
    confirmed_kit: str
    lost_kit: str
    replacement_kit: str


def _populate(db, tmp_path, monkeypatch) -> Trial:
    monkeypatch.setenv("IVRS_TODAY", TODAY)
    demo_study_in_english(db, tmp_path)
    treated = _randomized(db, PARIS, "101", {"SEX": "M", "AGE": "LT65"})
    dropped = _randomized(db, PARIS, "101", {"SEX": "F", "AGE": "GE65"})
    failed = screen_subject(db, site_code="101", actor=PARIS).subject_number
    record_screen_failure(db, subject_number=failed, reason="not_eligible", actor=PARIS)
    screened = screen_subject(db, site_code="102", actor=BARCELONA).subject_number
    unblinded = _randomized(db, BARCELONA, "102", {"SEX": "M", "AGE": "GE65"})
    (lost,) = _kits_of(db, unblinded)
    replacement = replace_kit(db, subject_number=unblinded, kit_number=lost, reason="lost",
                              actor=BARCELONA).kit
    unblind(db, subject_number=unblinded, reason="medical_emergency",
            signature=signed(db, "5002", "unblind"), actor=BARCELONA)
    discontinue(db, subject_number=dropped, reason="adverse_event", actor=PARIS)
    monkeypatch.setenv("IVRS_TODAY", (date.fromisoformat(TODAY) + timedelta(28)).isoformat())
    v2 = dispense(db, subject_number=treated, actor=PARIS)
    assert v2.visit == "V2" and len(v2.kits) == 2
    confirm_kit(db, kit_number=v2.kits[0], actor=PARIS)
    return Trial(db, treated, dropped, failed, screened, unblinded, v2.kits[0], lost,
                 replacement)


def _randomized(db, actor: Actor, site: str, factors: dict[str, str]) -> str:
    number = screen_subject(db, site_code=site, actor=actor).subject_number
    result = randomize(db, subject_number=number, actor=actor, eligibility=YES,
                       factors=factors)
    assert result.visit == "V1" and len(result.kits) == 1
    return number


@pytest.fixture
def trial(db, tmp_path, monkeypatch) -> Trial:
    return _populate(db, tmp_path, monkeypatch)


def _kits_of(db, subject_number: str) -> list[str]:
    with db.sessions() as session:
        return list(session.scalars(
            select(Kit.kit_number).join(Subject, Subject.id == Kit.subject_id)
            .where(Subject.subject_number == subject_number)
            .order_by(Kit.assigned_at, Kit.kit_number)))


def _arms(db) -> dict[str, tuple[str, str]]:
    """Subject number -> (arm code, arm name)."""
    with db.sessions() as session:
        rows = session.execute(
            select(Subject.subject_number, Arm.code, Arm.name)
            .join(Randomization, Randomization.subject_id == Subject.id)
            .join(Arm, Arm.id == Randomization.arm_id))
        return {number: (code, name) for number, code, name in rows}


def _randomization_numbers(db) -> dict[str, str]:
    with db.sessions() as session:
        return dict(session.execute(select(Subject.subject_number,
                                           Randomization.randomization_number)
                                    .join(Randomization)).all())


def _odm(db, blinded: bool = True) -> bytes:
    buffer = io.BytesIO()
    with db.sessions() as session:
        count = write_odm(session, get_study(session, STUDY), buffer, blinded=blinded,
                          generated_at=GENERATED_AT)
        subjects = len(session.scalars(select(Subject.id)).all())
    assert count == subjects
    return buffer.getvalue()


def _validated(document: bytes) -> etree._Element:
    schema = etree.XMLSchema(etree.parse(str(ODM_SCHEMA)))
    root = etree.fromstring(document)
    assert schema.validate(root), schema.error_log
    return root


def _items(root, subject: str) -> dict[str, list[str]]:
    """ItemOID -> the values of one subject's items, in file order."""
    values: dict[str, list[str]] = {}
    for item in root.iterfind(f".//odm:SubjectData[@SubjectKey='{subject}']//odm:ItemData",
                              NS):
        values.setdefault(item.get("ItemOID"), []).append(item.get("Value"))
    return values


def _secrets(db) -> set[str]:
    """Every arm code and name, kit type and lot code of the study."""
    with db.sessions() as session:
        return ({code for row in session.execute(select(Arm.code, Arm.name)) for code in row}
                | set(session.scalars(select(KitType.code)))
                | set(session.scalars(select(Lot.code))))


def _words(root) -> set[str]:
    """Every attribute value and text of the document."""
    found = set()
    for element in root.iter():
        found.update(element.attrib.values())
        if element.text and element.text.strip():
            found.add(element.text.strip())
    return found


# --- ODM ------------------------------------------------------------------------------------


def test_the_blinded_odm_file_is_valid_odm_1_3_2_with_every_subject(trial):
    root = _validated(_odm(trial.db))
    assert (root.get("ODMVersion"), root.get("FileType"), root.get("SourceSystem")) == (
        "1.3.2", "Snapshot", "ivrs")
    assert root.get("CreationDateTime") == "2026-12-24T08:30:00Z"
    keys = [s.get("SubjectKey") for s in root.iterfind(".//odm:SubjectData", NS)]
    assert keys == sorted([trial.treated, trial.discontinued, trial.screen_failed,
                           trial.screened, trial.unblinded])
    numbers = _randomization_numbers(trial.db)
    with trial.db.sessions() as session:
        sites = dict(session.execute(select(Subject.subject_number, Site.code)
                                     .join(Site)).all())
    assert len(numbers) == 3
    for subject, number in numbers.items():
        assert _items(root, subject)["IT.RANDNO"] == [number]
    for subject, site in sites.items():
        ref = root.find(f".//odm:SubjectData[@SubjectKey='{subject}']/odm:SiteRef", NS)
        assert ref.get("LocationOID") == f"LOC.{site}"


def test_the_odm_file_carries_kits_visits_factors_and_statuses(trial):
    root = _validated(_odm(trial.db))
    treated = _items(root, trial.treated)
    assert treated["IT.KITNO"] == _kits_of(trial.db, trial.treated)
    assert len(treated["IT.KITNO"]) == 3  # V1 + two at V2
    assert len(treated["IT.CONFDT"]) == 1  # one kit confirmed so far
    assert treated["IT.VISSTAT"] == ["done", "done"]
    assert (treated["IT.R1.SEX"], treated["IT.R1.AGE"]) == (["M"], ["LT65"])
    v2 = root.find(f".//odm:SubjectData[@SubjectKey='{trial.treated}']"
                   "/odm:StudyEventData[@StudyEventOID='SE.VISIT.V2']", NS)
    assert [k.get("ItemGroupRepeatKey") for k in v2.iterfind(".//odm:ItemGroupData", NS)] == [
        None, "1", "2"]
    # a lost kit stays on record, with its status, beside its replacement
    replaced = _items(root, trial.unblinded)
    assert replaced["IT.KITNO"] == [trial.lost_kit, trial.replacement_kit]
    assert replaced["IT.KITSTAT"] == ["missing", "assigned"]
    assert len(replaced["IT.UNBLDT"]) == 1
    assert _items(root, trial.discontinued)["IT.STTO"] == ["screened", "randomized",
                                                          "discontinued"]
    assert _items(root, trial.discontinued)["IT.STRSN"] == ["randomized (R1)",
                                                               "adverse_event"]
    failed = _items(root, trial.screen_failed)
    assert failed["IT.STATUS"] == ["screen_failed"] and "IT.RANDNO" not in failed
    assert set(_items(root, trial.screened)) == {"IT.SCRDT", "IT.STATUS", "IT.STCHGDT",
                                                  "IT.STTO"}


def test_every_reference_in_the_odm_file_resolves_to_its_definition(trial):
    """What the schema cannot check: each OID used is defined, and each piece of
    clinical data sits where the metadata puts it."""
    for blinded in (True, False):
        root = _validated(_odm(trial.db, blinded))
        mdv = root.find(".//odm:MetaDataVersion", NS)
        clinical = root.find("odm:ClinicalData", NS)
        assert clinical.get("MetaDataVersionOID") == mdv.get("OID")
        assert clinical.get("StudyOID") == root.find("odm:Study", NS).get("OID")
        children = _definitions(mdv)
        protocol = {ref.get("StudyEventOID") for ref in mdv.iterfind(
            "odm:Protocol/odm:StudyEventRef", NS)}
        assert protocol == set(children["StudyEventDef"])
        locations = {loc.get("OID") for loc in root.iterfind(".//odm:Location", NS)}
        for subject in clinical.iterfind("odm:SubjectData", NS):
            assert subject.find("odm:SiteRef", NS).get("LocationOID") in locations
            for event in subject.iterfind("odm:StudyEventData", NS):
                for form in event.iterfind("odm:FormData", NS):
                    assert form.get("FormOID") in children["StudyEventDef"][
                        event.get("StudyEventOID")]
                    for group in form.iterfind("odm:ItemGroupData", NS):
                        assert group.get("ItemGroupOID") in children["FormDef"][
                            form.get("FormOID")]
                        for item in group.iterfind("odm:ItemData", NS):
                            assert item.get("ItemOID") in children["ItemGroupDef"][
                                group.get("ItemGroupOID")]
        codelists = {c.get("OID") for c in mdv.iterfind("odm:CodeList", NS)}
        assert {ref.get("CodeListOID") for ref in mdv.iterfind(".//odm:CodeListRef", NS)} \
            <= codelists
        items = {item.get("OID") for item in mdv.iterfind("odm:ItemDef", NS)}
        assert set().union(*children["ItemGroupDef"].values()) == items


def _definitions(mdv) -> dict[str, dict[str, set[str]]]:
    """Definition kind -> OID -> the OIDs it references."""
    refs = {"StudyEventDef": ("FormRef", "FormOID"), "FormDef": ("ItemGroupRef", "ItemGroupOID"),
            "ItemGroupDef": ("ItemRef", "ItemOID")}
    return {kind: {d.get("OID"): {r.get(attr) for r in d.iterfind(f"odm:{ref}", NS)}
                   for d in mdv.iterfind(f"odm:{kind}", NS)}
            for kind, (ref, attr) in refs.items()}


def test_the_blinded_odm_file_names_no_arm_kit_type_or_lot(trial):
    root = _validated(_odm(trial.db))
    assert not _words(root) & _secrets(trial.db)
    assert root.find(".//odm:ItemDef[@OID='IT.ARM']", NS) is None
    assert root.find(".//odm:CodeList[@OID='CL.ARM']", NS) is None


def test_the_unblinded_odm_file_adds_the_arm_of_each_randomization(trial):
    root = _validated(_odm(trial.db, blinded=False))
    arms = _arms(trial.db)
    for subject, (code, _name) in arms.items():
        assert _items(root, subject)["IT.ARM"] == [code]
    assert "IT.ARM" not in _items(root, trial.screened)
    decodes = {item.get("CodedValue") for item in root.iterfind(
        ".//odm:CodeList[@OID='CL.ARM']/odm:CodeListItem", NS)}
    assert decodes == {"A", "P"}
    # still no kit type or lot: the unblinded export adds the treatment only
    with trial.db.sessions() as session:
        kit_secrets = set(session.scalars(select(KitType.code))) | set(
            session.scalars(select(Lot.code)))
    assert not _words(root) & kit_secrets


def test_the_visit_catalogue_numbers_the_schedule_then_what_is_only_on_record(trial,
                                                                             tmp_path):
    with trial.db.sessions() as session:
        study = get_study(session, STUDY)
        assert [(v.code, v.number, v.day) for v in visit_catalogue(session, study)] == [
            ("V1", 1, 0), ("V2", 2, 28), ("V3", 3, 56)]
    # the study file reloaded without V2, which subject 1010001 has had
    study_file = tmp_path / "study.yaml"  # where the demo set-up wrote it
    study_file.write_text(edited(study_file.read_text(encoding="utf-8"), (
        "  - {code: V2, day: 28, window: [-3, 3], dispense: 2}\n", "")), encoding="utf-8")
    assert load_study(trial.db, study_file).changes
    with trial.db.sessions() as session:
        study = get_study(session, STUDY)
        assert [(v.code, v.number, v.day) for v in visit_catalogue(session, study)] == [
            ("V1", 1, 0), ("V3", 2, 56), ("V2", 3, None)]
    root = _validated(_odm(trial.db))  # V2's kits are still exported, under a defined event
    assert root.find(".//odm:MetaDataVersion", NS).get("OID") == f"MDV.{STUDY}.v2"
    v2 = root.find(f".//odm:SubjectData[@SubjectKey='{trial.treated}']"
                   "/odm:StudyEventData[@StudyEventOID='SE.VISIT.V2']", NS)
    assert len(v2.findall(".//odm:ItemGroupData[@ItemGroupOID='IG.KIT']", NS)) == 2


# --- SDTM -----------------------------------------------------------------------------------


def _csv(writer, db, **kwargs) -> list[dict[str, str]]:
    buffer = io.StringIO()
    with db.sessions() as session:
        count = writer(session, get_study(session, STUDY), buffer, **kwargs)
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert count == len(rows)
    return rows


def _site_day(db, kit_number: str) -> str:
    with db.sessions() as session:
        assigned_at, zone = session.execute(
            select(Kit.assigned_at, Site.timezone).join(Subject, Subject.id == Kit.subject_id)
            .join(Site, Site.id == Subject.site_id).where(Kit.kit_number == kit_number)).one()
    return as_utc(assigned_at).astimezone(ZoneInfo(zone)).date().isoformat()


def test_ex_has_one_row_per_kit_taken_and_is_blinded(trial):
    rows = _csv(write_ex, trial.db)
    assert list(rows[0]) == EX_COLUMNS
    treated = f"{STUDY}-{trial.treated}"
    mine = [row for row in rows if row["USUBJID"] == treated]
    assert [row["EXREFID"] for row in mine] == _kits_of(trial.db, trial.treated)
    assert [(r["EXSEQ"], r["VISIT"], r["VISITNUM"]) for r in mine] == [
        ("1", "V1", "1"), ("2", "V2", "2"), ("3", "V2", "2")]
    assert all(row["EXSTDTC"] == _site_day(trial.db, row["EXREFID"]) for row in rows)
    kits = {row["EXREFID"] for row in rows}
    assert trial.replacement_kit in kits and trial.lost_kit not in kits
    assert len(rows) == 3 + 1 + 1  # treated, discontinued, the replacement
    assert {(row["STUDYID"], row["DOMAIN"], row["EXTRT"]) for row in rows} == {
        (STUDY, "EX", "BLINDED")}
    assert not {value for row in rows for value in row.values()} & _secrets(trial.db)


def test_unblinded_ex_names_the_treatment_of_each_kit(trial):
    rows = _csv(write_ex, trial.db, blinded=False)
    arms = _arms(trial.db)
    for row in rows:
        subject = row["USUBJID"].removeprefix(f"{STUDY}-")
        assert row["EXTRT"] == arms[subject][1]


def test_ds_has_the_milestones_and_dispositions_in_order(trial):
    rows = _csv(write_ds, trial.db)
    assert list(rows[0]) == DS_COLUMNS
    by_subject: dict[str, list[tuple]] = {}
    for row in rows:
        assert (row["STUDYID"], row["DOMAIN"]) == (STUDY, "DS")
        by_subject.setdefault(row["USUBJID"].removeprefix(f"{STUDY}-"), []).append(
            (row["DSSEQ"], row["DSTERM"], row["DSDECOD"], row["DSCAT"]))
    assert by_subject == {
        trial.treated: [("1", "RANDOMIZED", "RANDOMIZED", "PROTOCOL MILESTONE")],
        trial.discontinued: [("1", "RANDOMIZED", "RANDOMIZED", "PROTOCOL MILESTONE"),
                             ("2", "ADVERSE EVENT", "ADVERSE EVENT", "DISPOSITION EVENT")],
        trial.screen_failed: [("1", "NOT ELIGIBLE", "SCREEN FAILURE", "DISPOSITION EVENT")],
        trial.unblinded: [("1", "RANDOMIZED", "RANDOMIZED", "PROTOCOL MILESTONE"),
                          ("2", "EMERGENCY UNBLINDING", "TREATMENT UNBLINDED", "OTHER EVENT")],
    }
    numbers = _randomization_numbers(trial.db)
    for row in rows:
        subject = row["USUBJID"].removeprefix(f"{STUDY}-")
        assert row["DSREFID"] == (numbers[subject] if row["DSDECOD"] == "RANDOMIZED" else "")
        assert date.fromisoformat(row["DSSTDTC"])
    assert not {value for row in rows for value in row.values()} & _secrets(trial.db)


def test_a_discontinuation_reason_outside_the_codes_is_kept_in_words_and_decoded_other(
        db, tmp_path, monkeypatch):
    monkeypatch.setenv("IVRS_TODAY", TODAY)
    demo_study_in_english(db, tmp_path)
    subject = _randomized(db, PARIS, "101", {"SEX": "F", "AGE": "LT65"})
    discontinue(db, subject_number=subject, reason="Moved to another country", actor=PARIS)
    (_, row) = _csv(write_ds, db)
    assert (row["DSTERM"], row["DSDECOD"]) == ("Moved to another country", "OTHER")


# --- the commands ---------------------------------------------------------------------------


@pytest.fixture
def cli_trial(db, database_env, tmp_path, monkeypatch) -> Trial:
    return _populate(db, tmp_path, monkeypatch)


def test_export_odm_writes_a_valid_blinded_file(cli_trial, tmp_path):
    out = tmp_path / "study.xml"
    result = CliRunner().invoke(main, ["export", "odm", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "5 subjects" in result.output
    root = _validated(out.read_bytes())
    assert not _words(root) & _secrets(cli_trial.db)
    assert not list(tmp_path.glob("*.part"))


def test_export_odm_to_standard_output(cli_trial):
    result = CliRunner().invoke(main, ["export", "odm", "--study", STUDY])
    assert result.exit_code == 0, result.output
    root = _validated(result.stdout_bytes)
    assert len(root.findall(".//odm:SubjectData", NS)) == 5


def test_export_unblinded_needs_an_unblinded_role(cli_trial, tmp_path, monkeypatch):
    out = tmp_path / "study.xml"
    monkeypatch.setenv("IVRS_PIN", "2468")
    refused = CliRunner().invoke(main, ["export", "odm", "--out", str(out), "--unblinded",
                                        "--user", "5001"])
    assert refused.exit_code == 1 and "blinded" in refused.output
    assert not out.exists()
    without_user = CliRunner().invoke(main, ["export", "sdtm", "--out-dir", str(tmp_path),
                                             "--unblinded"])
    assert without_user.exit_code == 1 and "--user" in without_user.output
    assert not (tmp_path / "ex.csv").exists()
    monkeypatch.setenv("IVRS_PIN", STATISTICIAN_PIN)
    allowed = CliRunner().invoke(main, ["export", "odm", "--out", str(out), "--unblinded",
                                        "--user", STATISTICIAN])
    assert allowed.exit_code == 0, allowed.output
    root = _validated(out.read_bytes())
    assert _items(root, cli_trial.treated)["IT.ARM"] == [_arms(cli_trial.db)[
        cli_trial.treated][0]]


def test_export_sdtm_writes_ex_and_ds(cli_trial, tmp_path, monkeypatch):
    out = tmp_path / "sdtm"
    result = CliRunner().invoke(main, ["export", "sdtm", "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "5 EX rows, 6 DS rows" in result.output
    with open(out / "ex.csv", newline="", encoding="utf-8") as handle:
        ex = list(csv.DictReader(handle))
    with open(out / "ds.csv", newline="", encoding="utf-8") as handle:
        ds = list(csv.DictReader(handle))
    assert (list(ex[0]), list(ds[0])) == (EX_COLUMNS, DS_COLUMNS)
    assert {row["EXTRT"] for row in ex} == {"BLINDED"}
    monkeypatch.setenv("IVRS_PIN", STATISTICIAN_PIN)
    unblinded = CliRunner().invoke(main, ["export", "sdtm", "--out-dir", str(out),
                                          "--unblinded", "--user", STATISTICIAN])
    assert unblinded.exit_code == 0, unblinded.output
    with open(out / "ex.csv", newline="", encoding="utf-8") as handle:
        treatments = {row["EXTRT"] for row in csv.DictReader(handle)}
    assert treatments <= {name for _code, name in _arms(cli_trial.db).values()}
    assert treatments


def test_subjects_read_in_several_batches_give_the_same_file(trial, monkeypatch):
    whole = _odm(trial.db)
    monkeypatch.setattr("core.exports.odm.BATCH", 2)
    assert _odm(trial.db) == whole
