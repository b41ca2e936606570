"""``ivrs study load``: validation with lines and fields, storage, audited reloads."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select
from studyfiles import MRL_CSV, STUDY_YAML, line_of, snapshot, study_text, write_study

from core.audit import verify
from core.errors import FileErrors
from core.models import (
    Arm,
    AuditEvent,
    CapCounter,
    Depot,
    Factor,
    FactorLevel,
    Randomization,
    RandomizationEvent,
    Site,
    Study,
    StudyPhoneNumber,
    Subject,
    User,
)
from core.mrl import import_mrl
from core.pins import check_pin, hash_pin
from core.study_loader import load_study, parse_study_file

FILE_PINS = ["2468", "1357", "8642", "9753", "97531", "246810", "1122", "5566"]


@pytest.fixture
def loaded(db):
    """The example study, loaded."""
    result = load_study(db, STUDY_YAML)
    assert result.created
    return db


def count(session, model, *where) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where))


def audit_rows(db) -> list[AuditEvent]:
    with db.transaction() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def rejected(db, path) -> FileErrors:
    """Loading ``path`` fails and leaves every table exactly as it was."""
    before = snapshot(db)
    with pytest.raises(FileErrors) as caught:
        load_study(db, path)
    assert snapshot(db) == before
    return caught.value


def error_on(errors: FileErrors, field: str):
    matching = [error for error in errors.errors if error.field == field]
    assert matching, f"no error on {field}; got:\n{errors}"
    return matching[0]


# --- a good file ----------------------------------------------------------------------------


def test_good_file_creates_the_whole_study(loaded):
    with loaded.transaction() as session:
        study = session.scalars(select(Study)).one()
        assert (study.code, study.languages) == ("ABC-301", ["en", "fr", "es", "de", "ja"])
        assert study.eligibility == ["INC1", "INC2", "EXC1"]
        assert study.unblinding_mode == "investigator"
        assert [k["code"] for k in study.config["kit_types"]] == ["KA", "KP"]
        assert study.config["visits"][1] == {"code": "V2", "day": 28, "window": [-3, 3],
                                             "dispense": 2}
        assert study.config["supply"]["default_resupply"] == {"trigger": 2, "target": 6}
        assert session.scalars(select(StudyPhoneNumber.number)).all() == ["+15005550006"]
        arms = session.scalars(select(Arm).order_by(Arm.position)).all()
        assert [(a.code, a.position) for a in arms] == [("A", 0), ("P", 1)]

        event = session.scalars(select(RandomizationEvent)).one()
        assert (event.code, event.method, event.ratio) == ("R1", "list", {"A": 2, "P": 1})
        assert event.caps == {"SEX=F": 120}
        assert [(f.code, f.position, [(lv.code, lv.position) for lv in f.levels])
                for f in event.factors] == [("SEX", 0, [("M", 0), ("F", 1)]),
                                            ("AGE", 1, [("LT65", 0), ("GE65", 1)])]
        cap = session.scalars(select(CapCounter)).one()
        assert (cap.cap_key, cap.cap, cap.count) == ("SEX=F", 120, 0)

        depot = session.scalars(select(Depot)).one()
        sites = session.scalars(select(Site).order_by(Site.code)).all()
        assert [(s.code, s.country, s.language, s.timezone, s.depot_id) for s in sites] == [
            ("101", "FR", "fr", "Europe/Paris", depot.id),
            ("102", "ES", "es", "Europe/Madrid", depot.id),
            ("103", "DE", "de", "Europe/Berlin", depot.id)]

        users = {u.user_code: u for u in session.scalars(select(User))}
        assert len(users) == 8
        assert [s.code for s in users["5005"].sites] == ["102", "103"]
        assert users["5004"].role == "unblinded_statistician" and users["5004"].sites == []
        assert check_pin(users["5001"].pin_hash, "2468")
        assert not check_pin(users["5001"].pin_hash, "1357")
        assert not users["5001"].pin_temporary
        for model in (Arm, RandomizationEvent, Factor, FactorLevel, CapCounter, Depot, Site, User,
                      StudyPhoneNumber):
            assert count(session, model, model.study_id != study.id) == 0
        assert verify(session, study.id) is None


def test_audit_trail_of_a_load_names_everything_but_never_a_pin(loaded):
    rows = audit_rows(loaded)
    actions = [row.action for row in rows]
    assert actions[0] == "study_created"
    assert actions.count("user_created") == 8 and actions.count("site_created") == 3
    assert {"arm_created", "event_created", "depot_created", "phone_number_added"} <= set(actions)
    with loaded.transaction() as session:
        hashes = session.scalars(select(User.pin_hash)).all()
    for row in rows:
        text = json.dumps([row.old, row.new, row.reason])
        assert "argon2" not in text
        assert not any(pin_hash in text for pin_hash in hashes)
        assert not any(f'"{pin}"' in text for pin in FILE_PINS)
    created = next(row for row in rows if row.action == "user_created" and row.entity_id == "5001")
    assert created.new["pin"] == "set" and created.new["sites"] == ["101"]


def test_the_definition_is_usable_without_a_database():
    definition = parse_study_file(STUDY_YAML)
    assert [event.event for event in definition.events] == ["R1"]
    assert definition.events[0].params()["block"] is None
    assert definition.sites[0].language == "fr"


# --- reloading ------------------------------------------------------------------------------


def test_reloading_the_same_file_changes_nothing(loaded):
    before = snapshot(loaded)
    result = load_study(loaded, STUDY_YAML)
    assert (result.created, result.changes) == (False, [])
    assert snapshot(loaded) == before  # no audit row either, not even updated_at


def test_reload_audits_only_what_changed_with_old_and_new(loaded, tmp_path):
    changed = write_study(tmp_path, ("ratio: {A: 2, P: 1}", "ratio: {A: 1, P: 1}"),
                          ('"Hospital Clínic"', '"Hospital Clínic de Barcelona"'))
    before = len(audit_rows(loaded))
    result = load_study(loaded, changed)
    assert not result.created
    assert len(result.changes) == 2
    new_rows = audit_rows(loaded)[before:]
    assert [(r.action, r.entity_id, r.old, r.new) for r in new_rows] == [
        ("ratio_changed", "R1", {"ratio": {"A": 2, "P": 1}}, {"ratio": {"A": 1, "P": 1}}),
        ("site_updated", "102", {"name": "Hospital Clínic"},
         {"name": "Hospital Clínic de Barcelona"}),
    ]
    with loaded.transaction() as session:
        assert session.scalars(select(RandomizationEvent.ratio)).one() == {"A": 1, "P": 1}
        assert verify(session, session.scalars(select(Study.id)).one()) is None
        # Workers cache the configuration per version: a change must move it on.
        version = session.scalars(select(Study.config_version)).one()
        assert version == 2
    assert load_study(loaded, changed).changes == []
    with loaded.transaction() as session:
        assert session.scalars(select(Study.config_version)).one() == version


def test_reload_never_overwrites_a_pin_the_user_changed(loaded, tmp_path):
    with loaded.transaction() as session:
        user = session.scalars(select(User).where(User.user_code == "5001")).one()
        user.pin_hash = hash_pin("9999")  # changed by phone
    assert load_study(loaded, STUDY_YAML).changes == []
    with loaded.transaction() as session:
        user = session.scalars(select(User).where(User.user_code == "5001")).one()
        assert check_pin(user.pin_hash, "9999")


def test_a_pin_added_to_the_file_is_set_once_and_not_audited_in_clear(db, tmp_path):
    without_pin = write_study(tmp_path, (', language: en, pin: "5566"}', ", language: en}"),
                              name="a.yaml")
    load_study(db, without_pin)
    result = load_study(db, STUDY_YAML)
    assert result.changes == ['user_updated 9001: pin null → "set"']
    row = audit_rows(db)[-1]
    assert (row.action, row.old, row.new) == ("user_updated", {"pin": None}, {"pin": "set"})
    with db.transaction() as session:
        admin = session.scalars(select(User).where(User.user_code == "9001")).one()
        assert check_pin(admin.pin_hash, "5566") and not admin.pin_temporary


def test_removed_site_and_user_are_deactivated_not_deleted(loaded, tmp_path):
    text = study_text()
    site_103 = next(line for line in text.splitlines() if '"103", name' in line) + "\n"
    user_7001 = next(line for line in text.splitlines() if '"7001"' in line) + "\n"
    smaller = write_study(tmp_path, (site_103, ""), (user_7001, ""),
                          ('sites: ["102", "103"]', 'sites: ["102"]'))
    result = load_study(loaded, smaller)
    assert sorted(result.changes) == sorted([
        "site_deactivated 103: active true → false",
        'user_updated 5005: sites ["102", "103"] → ["102"]',
        "user_deactivated 7001: active true → false",
    ])
    with loaded.transaction() as session:
        assert session.scalars(select(Site.active).where(Site.code == "103")).one() is False
        assert session.scalars(select(User.active).where(User.user_code == "7001")).one() is False
    # Put back: reactivated, audited as an update.
    result = load_study(loaded, STUDY_YAML)
    assert "site_updated 103: active false → true" in result.changes


def test_a_site_with_subjects_cannot_be_removed(loaded, tmp_path):
    with loaded.transaction() as session:
        site = session.scalars(select(Site).where(Site.code == "103")).one()
        session.add(Subject(study_id=site.study_id, site_id=site.id, subject_number="1030001",
                            status="screened"))
    site_103 = next(line for line in study_text().splitlines() if '"103", name' in line)
    errors = rejected(loaded, write_study(tmp_path, (site_103 + "\n", ""),
                                          ('sites: ["102", "103"]', 'sites: ["102"]')))
    error = error_on(errors, "sites")
    assert "site 103" in error.message and "1 subjects" in error.message
    assert error.line == line_of(study_text(), "sites:")


def test_an_arm_in_use_cannot_be_removed(loaded, tmp_path):
    import_mrl(loaded, MRL_CSV)
    errors = rejected(loaded, write_study(
        tmp_path, ('  - {code: P, name: "Placebo"}\n', ""),
        ("ratio: {A: 2, P: 1}", "ratio: {A: 1}"),
        ("  - {code: KP, arm: P}\n", "")))
    assert "arm 'P'" in error_on(errors, "arms").message
    assert "16 list entries" in error_on(errors, "arms").message


def test_factors_are_frozen_once_a_list_is_imported(loaded, tmp_path):
    import_mrl(loaded, MRL_CSV)
    errors = rejected(loaded, write_study(tmp_path, ("levels: [LT65, GE65]",
                                                     "levels: [LT50, GE50]")))
    error = error_on(errors, "randomization.factors")
    assert "48 list entries" in error.message and "AGE [LT65, GE65]" in error.message
    assert error.line == line_of(study_text(), "factors:")


def test_factors_may_change_before_any_data(loaded, tmp_path):
    result = load_study(loaded, write_study(tmp_path, ("levels: [LT65, GE65]",
                                                       "levels: [LT50, GE50, GE80]")))
    assert len(result.changes) == 1 and result.changes[0].startswith("factors_changed R1")
    with loaded.transaction() as session:
        age = session.scalars(select(Factor).where(Factor.code == "AGE")).one()
        assert [(lv.code, lv.position) for lv in age.levels] == [
            ("LT50", 0), ("GE50", 1), ("GE80", 2)]
        assert count(session, FactorLevel) == 5


def test_a_cap_added_mid_study_counts_the_subjects_it_covers(loaded, tmp_path):
    with loaded.transaction() as session:
        site = session.scalars(select(Site).where(Site.code == "101")).one()
        event = session.scalars(select(RandomizationEvent)).one()
        arm = session.scalars(select(Arm).where(Arm.code == "A")).one()
        for number, sex in (("1010001", "F"), ("1010002", "M")):
            subject = Subject(study_id=site.study_id, site_id=site.id, subject_number=number,
                              status="randomized")
            session.add(subject)
            session.flush()
            session.add(Randomization(
                study_id=site.study_id, event_id=event.id, subject_id=subject.id,
                randomization_number=number, arm_id=arm.id, method="list",
                stratum_key=f"SEX={sex}|AGE=LT65", factors={"SEX": sex, "AGE": "LT65"}))
        cap = session.scalars(select(CapCounter)).one()
        cap.count = 1
    load_study(loaded, write_study(tmp_path, ("caps: {SEX=F: 120}",
                                              "caps: {SEX=F: 100, site=101: 50, total: 300}")))
    with loaded.transaction() as session:
        counts = {c.cap_key: (c.cap, c.count) for c in session.scalars(select(CapCounter))}
    assert counts == {"SEX=F": (100, 1), "site=101": (50, 2), "total": (300, 2)}


def test_one_phone_number_routes_to_one_study(loaded, tmp_path):
    other = write_study(tmp_path, ('code: "ABC-301"', 'code: "XYZ-100"'))
    errors = rejected(loaded, other)
    error = error_on(errors, "study.phone_numbers[0]")
    assert "ABC-301" in error.message
    assert error.line == line_of(study_text(), "phone_numbers")


def test_two_studies_live_side_by_side(loaded, tmp_path):
    other = write_study(tmp_path, ('code: "ABC-301"', 'code: "ABC-301-UAT"'),
                        ('"+15005550006"', '"+15005550007"'))
    assert load_study(loaded, other).created
    with loaded.transaction() as session:
        assert count(session, User, User.user_code == "5001") == 2
        for study_id in session.scalars(select(Study.id)):
            assert verify(session, study_id) is None


# --- randomization variants -------------------------------------------------------------------

EVENTS = """randomization:
  - event: P1
    method: block
    ratio: {A: 1, P: 1}
    stratify_by_site: true
    factors: [{code: SEX, levels: [M, F]}]
    block: {sizes: [2, 4], seed: 123}
    cohorts: [C1, C2]
    current_cohort: C1
    caps: {"cohort=C2": 10, "site=101,SEX=F": 5}
  - event: P2
    method: minimization
    ratio: {A: 1, P: 1}
    stratify_by_site: true
    factors: [{code: SEX, levels: [M, F]}, {code: AGE, levels: [LT65, GE65]}]
    minimization: {p: 0.9, imbalance: variance, weights: {SEX: 2, site: 0.5}}
    seed: 7
  - {event: P3, method: simple, ratio: {A: 3, P: 1}}
"""


def test_a_list_of_events_for_rerandomization(db, tmp_path):
    text = study_text()
    start = text.index("randomization:")
    end = text.index("eligibility:")
    path = tmp_path / "crossover.yaml"
    path.write_text(text[:start] + EVENTS + text[end:], encoding="utf-8")
    load_study(db, path)
    with db.transaction() as session:
        events = session.scalars(select(RandomizationEvent)
                                 .order_by(RandomizationEvent.position)).all()
        assert [(e.code, e.position, e.method) for e in events] == [
            ("P1", 0, "block"), ("P2", 1, "minimization"), ("P3", 2, "simple")]
        p1, p2, p3 = events
        assert p1.params == {"block": {"sizes": [2, 4], "seed": 123}, "minimization": None,
                             "seed": None, "cohorts": ["C1", "C2"], "current_cohort": "C1"}
        assert p1.stratify_by_site and p1.caps == {"cohort=C2": 10, "site=101,SEX=F": 5}
        assert p2.params["minimization"] == {"p": 0.9, "imbalance": "variance",
                                             "weights": {"SEX": 2.0, "AGE": 1.0},
                                             "site_weight": 0.5}
        assert p2.params["seed"] == 7
        assert [(f.code, f.weight) for f in p2.factors] == [("SEX", 2.0), ("AGE", 1.0)]
        assert p3.ratio == {"A": 3, "P": 1} and p3.factors == []
        assert count(session, CapCounter) == 2
    assert load_study(db, path).changes == []


def test_method_none_needs_exactly_one_arm(db, tmp_path):
    errors = rejected(db, write_study(tmp_path, ("  method: list\n", "  method: none\n"),
                                      (("  factors:\n    - {code: SEX, levels: [M, F]}\n"
                                        "    - {code: AGE, levels: [LT65, GE65]}\n"
                                        "  caps: {SEX=F: 120}\n"), "")))
    assert "exactly one arm" in error_on(errors, "randomization.method").message


def test_yaml_implicit_types_do_not_mangle_codes(db, tmp_path):
    # Unquoted, YAML 1.1 reads 0104 as octal 68 and NO as false.
    path = write_study(tmp_path, (
        '  - {code: "103", name: "Charité", country: DE',
        ('  - {code: 0104, name: "Oslo", country: NO, language: en, timezone: Europe/Oslo}\n'
         '  - {code: "103", name: "Charité", country: DE')))
    load_study(db, path)
    with db.transaction() as session:
        site = session.scalars(select(Site).where(Site.code == "0104")).one()
        assert site.country == "NO" and site.depot_id is None


# --- bad files: a clear error naming line and field, nothing written ----------------------

BAD_FILES = {
    "unknown arm in ratio": (
        [("ratio: {A: 2, P: 1}", "ratio: {A: 2, X: 1}")],
        "randomization.ratio.X", "ratio:", "unknown arm 'X' (arms: A, P)"),
    "duplicate site code": (
        [('{code: "102", name: "Hospital Clínic"', '{code: "101", name: "Hospital Clínic"')],
        "sites[1].code", "Hospital Clínic", "duplicate site code '101'"),
    "bad level in caps": (
        [("caps: {SEX=F: 120}", "caps: {SEX=W: 120}")],
        "randomization.caps.SEX=W", "caps:", "unknown level 'W' of SEX"),
    "unknown factor in caps": (
        [("caps: {SEX=F: 120}", "caps: {RACE=X: 120}")],
        "randomization.caps.RACE=X", "caps:", "unknown factor 'RACE'"),
    "string where an integer is expected": (
        [("day: 28", "day: soon")], "visits[1].day", "code: V2",
        "valid integer"),
    "missing required field": (
        [('{code: P, name: "Placebo"}', "{code: P}")], "arms[1].name", "{code: P}",
        "required"),
    "unknown key": (
        [("timezone: Europe/Berlin,", "timezone: Europe/Berlin, colour: red,")],
        "sites[2].colour", "colour", "unknown key 'colour' (allowed: code, name, country"),
    "duplicate key": (
        [("unblinding: {mode: investigator}\n",
          "unblinding: {mode: investigator}\neligibility: [INC1]\n")],
        "eligibility", "eligibility: [INC1]\n", "duplicate key 'eligibility' (first at line"),
    "user language not in the study languages": (
        [('language: fr, pin: "2468"', 'language: it, pin: "2468"')],
        "users[0].language", "Marie Curie", None),
    "unknown depot": (
        [('timezone: Europe/Madrid, depot: "90"', 'timezone: Europe/Madrid, depot: "91"')],
        "sites[1].depot", "Hospital Clínic", "unknown depot '91' (depots: 90)"),
    "unknown site of a user": (
        [('sites: ["101"], phone: "+33655500101"', 'sites: ["109"], phone: "+33655500101"')],
        "users[0].sites[0]", "Marie Curie", "unknown site '109' (sites: 101, 102, 103)"),
    "unknown role": (
        [("role: pharmacist", "role: nurse")], "users[2].role", "Ana García", "'nurse'"),
    "user id not digits": (
        [('{id: "5003"', '{id: "A5003"')], "users[2].id", "Ana García", "digits"),
    "phone not E.164": (
        [('"+34655500103"', '"0612345678"')], "users[2].phone", "Ana García", "E.164"),
    "bad time zone": (
        [("Europe/Madrid", "Europe/Barcelona")], "sites[1].timezone", "Hospital Clínic",
        "unknown time zone 'Europe/Barcelona'"),
    "block sizes not multiples of the ratio": (
        [("method: list", "method: block\n  block: {sizes: [3, 4], seed: 1}")],
        "randomization.block.sizes[1]", "block:", "block size 4 is not a multiple of 3"),
    "bad visit window": (
        [("window: [-3, 3], dispense: 2}\n  - {code: V3",
          "window: [2, 3], dispense: 2}\n  - {code: V3")],
        "visits[1].window", "day: 28", "days before <= 0 <= days after"),
    "trigger not below target": (
        [("{trigger: 2, target: 6}", "{trigger: 6, target: 6}")],
        "supply.default_resupply.trigger", "default_resupply", "below target"),
    "web option not a boolean": (
        [("unblinding: {mode: investigator}\n",
          "unblinding: {mode: investigator}\nweb: {totp_for_site_roles: sometimes}\n")],
        "web.totp_for_site_roles", "web:", "valid boolean"),
    "unknown web option": (
        [("unblinding: {mode: investigator}\n",
          "unblinding: {mode: investigator}\nweb: {totp: true}\n")],
        "web.totp", "web:", "unknown key 'totp'"),
    "unknown locale format": (
        [("languages: [en, fr, es, de, ja]", "languages: [en, french, es, de, ja]")],
        "study.languages[1]", "languages:", "'french' is not a locale code"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_names_line_and_field_and_writes_nothing(loaded, tmp_path, case):
    replacements, field, line_needle, message = BAD_FILES[case]
    path = write_study(tmp_path, *replacements)
    errors = rejected(loaded, path)
    error = error_on(errors, field)
    assert error.file == str(path)
    assert error.line == line_of(path.read_text(encoding="utf-8"), line_needle)
    if message:
        assert message in error.message
    assert f":{error.line}: {field}:" in str(errors)


def test_user_language_error_lists_the_study_languages(db, tmp_path):
    errors = rejected(db, write_study(tmp_path, ('language: fr, pin: "2468"',
                                                 'language: it, pin: "2468"')))
    assert error_on(errors, "users[0].language").message == (
        "language 'it' is not one of the study languages (en, fr, es, de, ja)")


def test_a_bad_first_load_creates_nothing(db, tmp_path):
    rejected(db, write_study(tmp_path, ("ratio: {A: 2, P: 1}", "ratio: {A: 2, X: 1}")))
    with db.transaction() as session:
        assert count(session, Study) == 0


def test_yaml_syntax_error_names_the_line(loaded, tmp_path):
    path = write_study(tmp_path, ('  - {code: P, name: "Placebo"}',
                                  '  - {code: P, name: "Placebo"'))
    errors = rejected(loaded, path)
    (error,) = errors.errors
    assert "YAML syntax error" in error.message
    assert error.line == line_of(path.read_text(), "randomization:")


def test_every_error_is_reported_at_once(loaded, tmp_path):
    errors = rejected(loaded, write_study(
        tmp_path, ("ratio: {A: 2, P: 1}", "ratio: {A: 2, X: 1}"),
        ('timezone: Europe/Madrid, depot: "90"', 'timezone: Europe/Madrid, depot: "91"'),
        ("role: pharmacist, sites: [\"102\"]", "role: pharmacist, sites: [\"109\"]")))
    assert {e.field for e in errors.errors} == {
        "randomization.ratio.X", "sites[1].depot", "users[2].sites[0]"}


def test_a_bad_pin_is_never_echoed(loaded, tmp_path):
    errors = rejected(loaded, write_study(tmp_path, ('pin: "8642"', 'pin: "86x2"')))
    assert error_on(errors, "users[2].pin").message == "must be 4 to 8 digits"
    assert "86x2" not in str(errors)


@pytest.mark.parametrize("content, message", [
    ("", "the file is empty"),
    ("- just\n- a list\n", "must be a mapping of sections"),
])
def test_files_that_are_not_a_study(db, tmp_path, content, message):
    path = tmp_path / "x.yaml"
    path.write_text(content)
    assert message in str(rejected(db, path))


def test_a_missing_file(db, tmp_path):
    errors = rejected(db, tmp_path / "nowhere.yaml")
    assert "cannot read the file" in str(errors)


# --- more reload rules ---------------------------------------------------------------------


def test_study_sections_and_phone_numbers_are_updated_and_audited(loaded, tmp_path):
    result = load_study(loaded, write_study(
        tmp_path, ("eligibility: [INC1, INC2, EXC1]", "eligibility: [INC1, EXC1]"),
        ("{code: V3, day: 56,", "{code: V3, day: 84,"),
        ('phone_numbers: ["+15005550006"]', 'phone_numbers: ["+15005550009"]')))
    rows = audit_rows(loaded)[-3:]
    assert [(r.action, r.entity_id) for r in rows] == [
        ("study_updated", "ABC-301"), ("phone_number_added", "+15005550009"),
        ("phone_number_removed", "+15005550006")]
    assert rows[0].old["eligibility"] == ["INC1", "INC2", "EXC1"]
    assert rows[0].new["eligibility"] == ["INC1", "EXC1"]
    assert rows[0].new["visits"][2]["day"] == 84 and rows[0].old["visits"][2]["day"] == 56
    assert set(rows[0].new) == {"eligibility", "visits"}
    assert len(result.changes) == 3
    with loaded.transaction() as session:
        study = session.scalars(select(Study)).one()
        assert study.config["visits"][2]["day"] == 84
        assert session.scalars(select(StudyPhoneNumber.number)).all() == ["+15005550009"]


def test_a_depot_no_site_uses_any_more_is_removed(loaded, tmp_path):
    text = study_text().replace('depot: "90"}', 'depot: "91"}')
    result = load_study(loaded, write_study(
        tmp_path, ('{code: "90", name: "EU depot", country: DE}',
                   '{code: "91", name: "EU depot 2", country: NL}'), text=text))
    assert result.changes[0] == "depot_created 91"
    assert result.changes[-1] == "depot_removed 90"
    assert [c.split(":")[0] for c in result.changes[1:4]] == [
        "site_updated 101", "site_updated 102", "site_updated 103"]
    with loaded.transaction() as session:
        assert session.scalars(select(Depot.code)).all() == ["91"]


R1_LIST = """randomization:
  - event: R1
    method: list
    factors:
      - {code: SEX, levels: [M, F]}
      - {code: AGE, levels: [LT65, GE65]}
"""
R2_SIMPLE = "  - {event: R2, method: simple, ratio: {A: 1, P: 1}, seed: 5}\n"


def with_randomization(tmp_path, section: str, name: str):
    """The example study with its randomization section replaced by ``section``."""
    text = study_text()
    path = tmp_path / name
    path.write_text(text[:text.index("randomization:")] + section
                    + text[text.index("eligibility:"):], encoding="utf-8")
    return path


def test_an_unused_event_is_removed_and_a_used_one_is_kept(db, tmp_path):
    load_study(db, with_randomization(tmp_path, R1_LIST + R2_SIMPLE, "both.yaml"))
    import_mrl(db, MRL_CSV, event_code="R1")
    assert load_study(db, with_randomization(tmp_path, R1_LIST, "r1.yaml")).changes == [
        "event_removed R2"]
    errors = rejected(db, with_randomization(tmp_path, R1_LIST.replace("R1", "R9"), "r9.yaml"))
    message = error_on(errors, "randomization").message
    assert "event R1" in message and "48 list entries" in message


def test_the_method_of_an_event_in_use_is_frozen(loaded, tmp_path):
    import_mrl(loaded, MRL_CSV)
    errors = rejected(loaded, write_study(tmp_path, ("method: list", "method: simple")))
    error = error_on(errors, "randomization.method")
    assert error.message == ('event R1 already has 48 list entries: its method cannot change '
                             '(it is "list")')
    # The ratio is still changeable, and audited.
    result = load_study(loaded, write_study(tmp_path, ("{A: 2, P: 1}", "{A: 3, P: 1}")))
    assert result.changes == ['ratio_changed R1: ratio {"A": 2, "P": 1} → {"A": 3, "P": 1}']


def test_the_web_option_is_stored_and_a_change_audited(loaded, tmp_path):
    from core.web_login import study_options, totp_required

    assert study_options(loaded)["web"] == {"totp_for_site_roles": False}
    assert not totp_required("investigator", study_options(loaded))
    result = load_study(loaded, write_study(tmp_path, (
        "unblinding: {mode: investigator}\n",
        "unblinding: {mode: investigator}\nweb: {totp_for_site_roles: true}\n")))
    row = audit_rows(loaded)[-1]
    assert (row.action, row.old, row.new) == ("study_updated",
                                              {"web": {"totp_for_site_roles": False}},
                                              {"web": {"totp_for_site_roles": True}})
    assert len(result.changes) == 1
    assert totp_required("investigator", study_options(loaded))


def test_a_study_loaded_before_the_web_option_reloads_without_changes(loaded):
    with loaded.transaction() as session:  # as a study loaded by an older release has it
        study = session.scalars(select(Study)).one()
        study.config = {name: value for name, value in study.config.items() if name != "web"}
    assert load_study(loaded, STUDY_YAML).changes == []
