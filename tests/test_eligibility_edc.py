"""Eligibility recorded by the EDC (``randomization: {eligibility_source: edc}``):
the service that records it, randomization deciding on it, the phone skipping
the questions and speaking the refusals, and the study file's setting."""

from __future__ import annotations

import pytest
from factories import make_study
from helpers import YES
from sqlalchemy import event as sa_event
from sqlalchemy import select, update
from studyfiles import STUDY_YAML, line_of, snapshot, study_text, write_study
from voice import says

from core.actors import ADMIN, Actor
from core.audit import verify
from core.eligibility import EligibilityResult, record_eligibility, subject_eligibility
from core.errors import FileErrors, IvrsError, NotFound, Refused
from core.models import AuditEvent, EligibilityAnswer, Randomization, Study, Subject, User
from core.previews import randomization_questions
from core.randomize import randomize
from core.study_loader import load_study
from core.subjects import record_screen_failure, screen_subject

EDC_CLIENT = Actor(role="investigator", site_codes=frozenset({"101"}), channel="api",
                   client="edc")
COORDINATOR = Actor(role="site_coordinator", user_code="5001", site_codes=frozenset({"101"}),
                    channel="test")
M_LT65 = {"SEX": "M", "AGE": "LT65"}
EDC_CONFIG = {"eligibility_source": "edc"}


@pytest.fixture
def study(db):
    return make_study(db, code="E", method="list", list_per_stratum=10, config=EDC_CONFIG)


def screened(db, site: str = "101") -> str:
    return screen_subject(db, site_code=site, actor=ADMIN).subject_number


def answer_rows(db) -> dict[str, tuple[bool, str]]:
    with db.sessions() as session:
        return {q: (met, by) for q, met, by in session.execute(
            select(EligibilityAnswer.question, EligibilityAnswer.met,
                   EligibilityAnswer.recorded_by))}


def audit(db, action: str) -> list[AuditEvent]:
    with db.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                    .order_by(AuditEvent.seq)))


def status_of(db, subject: str) -> str:
    with db.sessions() as session:
        return session.scalar(select(Subject.status).where(Subject.subject_number == subject))


# --- recording ---------------------------------------------------------------------------------


def test_partial_answers_are_recorded_and_audited(db, study):
    subject = screened(db)
    result = record_eligibility(db, subject_number=subject, answers={"INC1": True},
                                actor=EDC_CLIENT)
    assert result == EligibilityResult(subject, {"INC1": True}, ("EXC1",), False, (),
                                       result.confirmation)
    assert result.confirmation
    assert answer_rows(db) == {"INC1": (True, "api:edc")}
    [row] = audit(db, "eligibility_recorded")
    assert (row.entity_id, row.actor, row.old, row.new) == (
        subject, "api:edc", {"INC1": None}, {"INC1": True})

    done = record_eligibility(db, subject_number=subject, answers={"EXC1": True},
                              actor=EDC_CLIENT)
    assert (done.answers, done.missing, done.all_met, done.failed) == (
        {"INC1": True, "EXC1": True}, (), True, ())


def test_a_later_answer_replaces_the_earlier_one_with_old_and_new(db, study):
    subject = screened(db)
    record_eligibility(db, subject_number=subject, answers={"INC1": True, "EXC1": False},
                       actor=EDC_CLIENT)
    first = record_eligibility(db, subject_number=subject, answers={"EXC1": False},
                               actor=EDC_CLIENT)
    assert (first.all_met, first.failed) == (False, ("EXC1",))
    assert len(audit(db, "eligibility_recorded")) == 1  # the same answer again: no change
    corrected = record_eligibility(db, subject_number=subject, answers={"EXC1": True},
                                   actor=COORDINATOR)
    assert corrected.all_met and corrected.answers == {"INC1": True, "EXC1": True}
    assert answer_rows(db) == {"INC1": (True, "api:edc"), "EXC1": (True, "user:5001")}
    last = audit(db, "eligibility_recorded")[-1]
    assert (last.actor, last.old, last.new) == ("user:5001", {"EXC1": False}, {"EXC1": True})
    with db.sessions() as session:
        assert verify(session, study.id) is None


def test_recording_is_idempotent_by_key(db, study):
    subject = screened(db)
    first = record_eligibility(db, subject_number=subject, answers={"INC1": True},
                               actor=EDC_CLIENT, idempotency_key="edc-1")
    before = snapshot(db)
    again = record_eligibility(db, subject_number=subject, answers={"INC1": True},
                               actor=EDC_CLIENT, idempotency_key="edc-1")
    assert again == first
    assert snapshot(db) == before


BAD_ANSWERS = {
    "unknown question": ({"INC1": True, "INC9": True}, IvrsError, "eligibility_unknown"),
    "a number for a yes": ({"INC1": 1}, IvrsError, "bad_answer"),
    "a word for a yes": ({"INC1": "yes"}, IvrsError, "bad_answer"),
    "null": ({"INC1": None}, IvrsError, "bad_answer"),
    "no answer at all": ({}, IvrsError, "bad_answer"),
    "not a mapping": ([("INC1", True)], IvrsError, "bad_answer"),
}


@pytest.mark.parametrize("case", list(BAD_ANSWERS))
def test_bad_answers_are_refused_and_change_nothing(db, study, case):
    answers, error, code = BAD_ANSWERS[case]
    subject = screened(db)
    before = snapshot(db)
    with pytest.raises(error) as refused:
        record_eligibility(db, subject_number=subject, answers=answers, actor=EDC_CLIENT)
    assert refused.value.code == code
    assert snapshot(db) == before


def test_who_and_which_subject_may_record(db, study):
    other_site = screened(db, "102")
    failed = screened(db)
    record_screen_failure(db, subject_number=failed, reason="not_eligible", actor=ADMIN)
    randomized = screened(db)
    randomize(db, subject_number=randomized, actor=ADMIN, eligibility=YES, factors=M_LT65)
    pharmacist = Actor(role="pharmacist", user_code="7", site_codes=frozenset({"101"}))
    before = snapshot(db)
    cases = [(other_site, EDC_CLIENT, "wrong_site"), (failed, EDC_CLIENT, "subject_screen_failed"),
             (randomized, EDC_CLIENT, "subject_randomized"),
             ("1019999", EDC_CLIENT, "unknown_subject")]
    for subject, actor, code in cases:
        with pytest.raises(IvrsError) as refused:
            record_eligibility(db, subject_number=subject, answers={"INC1": True}, actor=actor)
        assert refused.value.code == code, subject
    with pytest.raises(Refused) as refused:
        record_eligibility(db, subject_number=other_site, answers={"INC1": True},
                           actor=pharmacist)
    assert refused.value.code == "not_allowed"
    assert snapshot(db) == before


def test_a_study_that_asks_by_phone_refuses_the_edc(db):
    make_study(db, code="P", method="list", list_per_stratum=5)
    subject = screened(db)
    before = snapshot(db)
    with pytest.raises(Refused) as refused:
        record_eligibility(db, subject_number=subject, answers={"INC1": True}, actor=EDC_CLIENT)
    assert refused.value.code == "eligibility_not_from_edc"
    assert snapshot(db) == before
    # ... and randomizes as it always did, on the answers given.
    questions = randomization_questions(db, subject_number=subject, actor=ADMIN)
    assert (questions.eligibility, questions.eligibility_source) == (("INC1", "EXC1"), "ivrs")
    with pytest.raises(IvrsError) as missing:
        randomize(db, subject_number=subject, actor=ADMIN, eligibility={"INC1": True},
                  factors=M_LT65)
    assert missing.value.code == "eligibility_missing"
    result = randomize(db, subject_number=subject, actor=ADMIN, eligibility=YES, factors=M_LT65)
    assert result.randomization_number
    assert answer_rows(db) == {}


# --- randomizing on what the EDC recorded ------------------------------------------------------


def test_randomize_refuses_while_answers_are_missing_and_writes_nothing(db, study):
    subject = screened(db)
    record_eligibility(db, subject_number=subject, answers={"INC1": True}, actor=EDC_CLIENT)
    before = snapshot(db)
    with pytest.raises(Refused) as refused:
        randomize(db, subject_number=subject, actor=COORDINATOR, eligibility={},
                  factors=M_LT65)
    assert refused.value.code == "eligibility_incomplete"
    assert refused.value.params == {"missing": ["EXC1"]}
    assert snapshot(db) == before
    with pytest.raises(Refused) as preview:
        randomization_questions(db, subject_number=subject, actor=COORDINATOR)
    assert preview.value.code == "eligibility_incomplete"


def test_randomize_refuses_a_criterion_not_met_and_records_the_refusal(db, study):
    subject = screened(db)
    record_eligibility(db, subject_number=subject, answers={"INC1": True, "EXC1": False},
                       actor=EDC_CLIENT)
    with pytest.raises(Refused) as refused:
        randomize(db, subject_number=subject, actor=COORDINATOR, eligibility={},
                  factors=M_LT65, idempotency_key="call-1")
    assert refused.value.code == "not_eligible"
    assert refused.value.params == {"failed": ["EXC1"]}
    [row] = audit(db, "randomization_refused")
    assert row.new == {"event": "R1", "eligibility": {"INC1": True, "EXC1": False},
                       "eligibility_source": "edc"}
    assert status_of(db, subject) == "screened"
    before = snapshot(db)
    with pytest.raises(Refused) as again:  # a retry gets the same answer, writes nothing
        randomize(db, subject_number=subject, actor=COORDINATOR, eligibility={},
                  factors=M_LT65, idempotency_key="call-1")
    assert again.value.code == "not_eligible"
    assert snapshot(db) == before


def test_randomize_on_the_recorded_answers_when_all_are_met(db, study):
    subject = screened(db)
    record_eligibility(db, subject_number=subject, answers={"INC1": True, "EXC1": True},
                       actor=EDC_CLIENT)
    questions = randomization_questions(db, subject_number=subject, actor=COORDINATOR)
    assert (questions.eligibility, questions.eligibility_source) == ((), "edc")
    assert [f.code for f in questions.factors] == ["SEX", "AGE"]
    result = randomize(db, subject_number=subject, actor=COORDINATOR, eligibility={},
                       factors=M_LT65)
    with db.sessions() as session:
        row = session.scalars(select(Randomization)).one()
    assert row.randomization_number == result.randomization_number
    assert row.eligibility == {"INC1": True, "EXC1": True}
    before = snapshot(db)
    with pytest.raises(Refused) as closed:  # randomized: the answers are closed
        record_eligibility(db, subject_number=subject, answers={"EXC1": False},
                           actor=EDC_CLIENT)
    assert closed.value.code == "subject_randomized"
    assert snapshot(db) == before


def test_answers_sent_with_randomize_are_recorded_in_its_transaction(db, study):
    subject = screened(db)
    record_eligibility(db, subject_number=subject, answers={"INC1": False}, actor=EDC_CLIENT)
    result = randomize(db, subject_number=subject, actor=EDC_CLIENT,
                       eligibility={"INC1": True, "EXC1": True}, factors=M_LT65)
    assert answer_rows(db) == {"INC1": (True, "api:edc"), "EXC1": (True, "api:edc")}
    recorded = audit(db, "eligibility_recorded")[-1]
    randomized = audit(db, "subject_randomized")[-1]
    assert (recorded.old, recorded.new) == ({"INC1": False, "EXC1": None},
                                            {"INC1": True, "EXC1": True})
    assert recorded.transaction_id == randomized.transaction_id == int(result.confirmation)
    assert randomized.new["eligibility"] == {"INC1": True, "EXC1": True}


def test_answers_sent_with_randomize_stay_recorded_when_one_is_not_met(db, study):
    subject = screened(db)
    with pytest.raises(Refused) as refused:
        randomize(db, subject_number=subject, actor=EDC_CLIENT,
                  eligibility={"INC1": True, "EXC1": False}, factors=M_LT65)
    assert refused.value.code == "not_eligible"
    assert answer_rows(db) == {"INC1": (True, "api:edc"), "EXC1": (False, "api:edc")}
    assert len(audit(db, "randomization_refused")) == 1


def test_answers_sent_with_an_incomplete_randomize_are_not_kept(db, study):
    subject = screened(db)
    before = snapshot(db)
    with pytest.raises(Refused) as refused:
        randomize(db, subject_number=subject, actor=EDC_CLIENT, eligibility={"INC1": True},
                  factors=M_LT65)
    assert refused.value.code == "eligibility_incomplete"
    assert snapshot(db) == before
    for answers, code in (({"INC1": 1, "EXC1": True}, "bad_answer"),
                          ({"INC1": True, "EXC2": True}, "eligibility_unknown")):
        with pytest.raises(IvrsError) as bad:
            randomize(db, subject_number=subject, actor=EDC_CLIENT, eligibility=answers,
                      factors=M_LT65)
        assert bad.value.code == code
    assert snapshot(db) == before


def test_a_later_event_does_not_ask_the_edc_again(db):
    make_study(db, code="X", method="simple", factors={}, config=EDC_CONFIG,
               extra_events=[("R2", "simple", {"A": 1, "P": 1}, {"seed": 2}, {}, {})],
               params={"seed": 1})
    subject = screened(db)
    record_eligibility(db, subject_number=subject, answers={"INC1": True, "EXC1": True},
                       actor=EDC_CLIENT)
    randomize(db, subject_number=subject, actor=ADMIN, eligibility={}, factors={})
    assert randomization_questions(db, subject_number=subject, actor=ADMIN).eligibility == ()
    with pytest.raises(Refused) as closed:
        randomize(db, subject_number=subject, actor=ADMIN, eligibility={"INC1": True},
                  factors={})
    assert closed.value.code == "subject_randomized"
    second = randomize(db, subject_number=subject, actor=ADMIN, eligibility={}, factors={})
    assert second.event == "R2"


def test_the_edc_costs_randomize_one_statement(db, study):
    """The hot path (issue 19's benchmark): one SELECT of the subject's answers."""
    make_study(db, code="P", method="list", list_per_stratum=10)

    def statements(code: str, eligibility: dict) -> int:
        subject = screen_subject(db, site_code="101", actor=ADMIN, study=code).subject_number
        if code == "E":
            record_eligibility(db, subject_number=subject, answers=YES, actor=ADMIN, study="E")
        seen = []

        def count(*_):
            seen.append(1)

        sa_event.listen(db.engine, "before_cursor_execute", count)
        try:
            randomize(db, subject_number=subject, actor=ADMIN, eligibility=eligibility,
                      factors=M_LT65, study=code)
        finally:
            sa_event.remove(db.engine, "before_cursor_execute", count)
        return len(seen)

    for code, eligibility in (("E", {}), ("P", YES)):  # warm the configuration caches
        statements(code, eligibility)
    assert statements("E", {}) == statements("P", YES) + 1


# --- reading -----------------------------------------------------------------------------------


def test_a_subject_s_eligibility_as_recorded(db, study):
    subject = screened(db)
    record_eligibility(db, subject_number=subject, answers={"EXC1": False}, actor=EDC_CLIENT)
    seen = subject_eligibility(db, subject_number=subject, actor=COORDINATOR)
    assert (seen.source, seen.questions, seen.missing, seen.failed, seen.all_met) == (
        "edc", ("INC1", "EXC1"), ("INC1",), ("EXC1",), False)
    [answer] = seen.answers
    assert (answer.question, answer.met, answer.recorded_by) == ("EXC1", False, "api:edc")
    assert answer.recorded_at is not None
    with pytest.raises(Refused) as refused:
        subject_eligibility(db, subject_number=subject,
                            actor=Actor(role="investigator", site_codes=frozenset({"102"})))
    assert refused.value.code == "wrong_site"
    with pytest.raises(NotFound):
        subject_eligibility(db, subject_number="1019999", actor=ADMIN)


def test_a_phone_study_s_eligibility_is_what_the_phone_was_told(db):
    make_study(db, code="P", method="list", list_per_stratum=5)
    subject = screened(db)
    assert subject_eligibility(db, subject_number=subject, actor=ADMIN).missing == (
        "INC1", "EXC1")
    randomize(db, subject_number=subject, actor=COORDINATOR, eligibility=YES, factors=M_LT65)
    seen = subject_eligibility(db, subject_number=subject, actor=ADMIN)
    assert (seen.source, seen.all_met) == ("ivrs", True)
    assert [(a.question, a.met, a.recorded_by) for a in seen.answers] == [
        ("INC1", True, "user:5001"), ("EXC1", True, "user:5001")]


# --- the phone ---------------------------------------------------------------------------------


def edc_demo_study(voice, tmp_path) -> None:
    """The demo study the voice harness loaded, reloaded with its eligibility from the EDC."""
    path = tmp_path / "study.yaml"
    text = path.read_text(encoding="utf-8")
    assert "  method: list\n" in text
    path.write_text(text.replace("  method: list\n",
                                 "  method: list\n  eligibility_source: edc\n", 1),
                    encoding="utf-8")
    changes = load_study(voice.db, path).changes
    assert any("eligibility_source" in change for change in changes), changes
    with voice.db.transaction() as session:  # the harness's callers speak English
        session.execute(update(User).values(language="en"))


def screen_by_phone(phone) -> str:
    phone.press("1")
    heard = phone.press("1")
    assert says(heard, "new subject number is"), heard.text
    with_spaces = heard.text.split("new subject number is")[1]
    return "".join(ch for ch in with_spaces.split(".")[0] if ch.isdigit())


def start_randomizing(phone, subject: str):
    phone.press("2")
    phone.press(subject + "#")
    return phone.press("1")  # the number read back is right


def test_the_phone_skips_the_questions_the_edc_answered(voice, tmp_path):
    edc_demo_study(voice, tmp_path)
    phone = voice.signed_in()
    subject = screen_by_phone(phone)
    record_eligibility(voice.db, subject_number=subject, actor=EDC_CLIENT,
                       answers={"INC1": True, "INC2": True, "EXC1": True})
    heard = start_randomizing(phone, subject)
    assert says(heard, "Sex", "For female, press 2"), heard.text  # no eligibility question
    assert "18 or older" not in heard.text
    phone.press("2")
    heard = phone.press("1")
    assert says(heard, "To randomize, press 1"), heard.text
    heard = phone.press("1")
    assert says(heard, "is randomized", "Confirmation number"), heard.text
    with voice.db.sessions() as session:
        row = session.scalars(select(Randomization)).one()
    assert row.eligibility == {"INC1": True, "INC2": True, "EXC1": True}
    assert row.factors == {"SEX": "F", "AGE": "LT65"}


def test_the_phone_says_the_edc_has_not_recorded_everything(voice, tmp_path):
    edc_demo_study(voice, tmp_path)
    phone = voice.signed_in()
    subject = screen_by_phone(phone)
    record_eligibility(voice.db, subject_number=subject, answers={"INC1": True},
                       actor=EDC_CLIENT)
    before = snapshot(voice.db)
    heard = start_randomizing(phone, subject)
    assert says(heard, "have not all been recorded in the EDC", "Enter the subject number"), \
        heard.text
    assert snapshot(voice.db) == before


def test_the_phone_says_the_edc_recorded_a_criterion_not_met(voice, tmp_path):
    edc_demo_study(voice, tmp_path)
    phone = voice.signed_in()
    subject = screen_by_phone(phone)
    record_eligibility(voice.db, subject_number=subject, actor=EDC_CLIENT,
                       answers={"INC1": True, "INC2": False, "EXC1": True})
    heard = start_randomizing(phone, subject)
    assert says(heard, "According to the eligibility recorded in the EDC",
                " ".join(subject), "not eligible"), heard.text
    assert status_of(voice.db, subject) == "screened"


def test_an_answer_changed_during_the_call_is_the_one_that_counts(voice, tmp_path):
    edc_demo_study(voice, tmp_path)
    phone = voice.signed_in()
    subject = screen_by_phone(phone)
    record_eligibility(voice.db, subject_number=subject, actor=EDC_CLIENT,
                       answers={"INC1": True, "INC2": True, "EXC1": True})
    start_randomizing(phone, subject)
    phone.press("1")
    phone.press("1")  # at the summary
    record_eligibility(voice.db, subject_number=subject, answers={"EXC1": False},
                       actor=EDC_CLIENT)
    heard = phone.press("1")
    assert says(heard, "According to the eligibility recorded in the EDC"), heard.text
    assert status_of(voice.db, subject) == "screened"
    [refused] = audit(voice.db, "randomization_refused")
    assert refused.actor == "user:5001" and refused.new["eligibility"]["EXC1"] is False


def test_the_refusals_are_spoken_in_the_caller_s_language(voice, tmp_path):
    edc_demo_study(voice, tmp_path)
    with voice.db.transaction() as session:
        session.execute(update(User).where(User.user_code == "5001").values(language="fr"))
    phone = voice.signed_in()
    subject = screened(voice.db)
    heard = start_randomizing(phone, subject)
    assert says(heard, "n'ont pas tous été saisis dans l'EDC"), heard.text
    assert ("fr-FR" in {language for language, _ in heard.says})
    record_eligibility(voice.db, subject_number=subject, actor=EDC_CLIENT,
                       answers={"INC1": False})
    phone.press(subject + "#")
    heard = phone.press("1")
    assert says(heard, "D'après l'éligibilité saisie dans l'EDC"), heard.text


# --- the study file ----------------------------------------------------------------------------


def edc_file(tmp_path, *more):
    source = "  method: list\n  eligibility_source: edc\n"
    return write_study(tmp_path, ("  method: list\n", source), *more)


def test_a_study_file_may_take_its_eligibility_from_the_edc(db, tmp_path):
    path = edc_file(tmp_path)
    load_study(db, path)
    with db.sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.config["eligibility_source"] == "edc"
        created = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "study_created")).one()
        assert created.new["eligibility_source"] == "edc"
    assert load_study(db, path).changes == []


def test_switching_the_source_is_an_audited_configuration_change(db, tmp_path):
    load_study(db, STUDY_YAML)
    with db.sessions() as session:
        version = session.scalar(select(Study.config_version))
    result = load_study(db, edc_file(tmp_path))
    assert result.changes == ['study_updated ABC-301: eligibility_source "ivrs" → "edc"']
    [row] = audit(db, "study_updated")
    assert (row.old, row.new) == ({"eligibility_source": "ivrs"}, {"eligibility_source": "edc"})
    with db.sessions() as session:
        assert session.scalar(select(Study.config_version)) == version + 1


def test_a_study_loaded_before_the_setting_reloads_unchanged(db):
    load_study(db, STUDY_YAML)
    with db.transaction() as session:  # as a study loaded by an earlier version is stored
        study = session.scalars(select(Study)).one()
        study.config = {k: v for k, v in study.config.items() if k != "eligibility_source"}
    before = snapshot(db)
    assert load_study(db, STUDY_YAML).changes == []
    assert snapshot(db) == before


BAD_SOURCES = {
    "unknown source": (("  method: list\n", "  method: list\n  eligibility_source: phone\n"),
                       "randomization.eligibility_source", "eligibility_source: phone",
                       "'phone' is not allowed"),
    "edc without questions": (
        ("  method: list\n", "  method: list\n  eligibility_source: edc\n"),
        "randomization.eligibility_source", "eligibility_source: edc", "has none"),
}


@pytest.mark.parametrize("case", list(BAD_SOURCES))
def test_a_bad_source_names_its_line_and_loads_nothing(db, tmp_path, case):
    replacement, field, needle, message = BAD_SOURCES[case]
    extra = [("eligibility: [INC1, INC2, EXC1]", "eligibility: []")] \
        if case == "edc without questions" else []
    path = write_study(tmp_path, replacement, *extra)
    before = snapshot(db)
    with pytest.raises(FileErrors) as caught:
        load_study(db, path)
    assert snapshot(db) == before
    [error] = [e for e in caught.value.errors if e.field == field]
    assert error.line == line_of(path.read_text(encoding="utf-8"), needle)
    assert message in error.message
    assert f":{error.line}: {field}:" in str(caught.value)


def test_the_source_is_given_once_for_the_whole_study(db, tmp_path):
    text = study_text()
    start, end = text.index("randomization:"), text.index("eligibility:")
    events = ("randomization:\n"
              "  - {event: P1, method: simple, ratio: {A: 1, P: 1}, eligibility_source: edc}\n"
              "  - {event: P2, method: simple, ratio: {A: 1, P: 1}, eligibility_source: ivrs}\n")
    path = tmp_path / "crossover.yaml"
    path.write_text(text[:start] + events + text[end:], encoding="utf-8")
    with pytest.raises(FileErrors) as caught:
        load_study(db, path)
    [error] = caught.value.errors
    assert error.field == "randomization[1].eligibility_source"
    assert error.line == line_of(path.read_text(encoding="utf-8"), "event: P2")
    assert "first event (P1) only" in error.message


def test_edc_eligibility_needs_a_randomization_to_gate(db, tmp_path):
    path = write_study(tmp_path, ("  method: list\n",
                                  "  method: none\n  eligibility_source: edc\n"),
                       (("  factors:\n    - {code: SEX, levels: [M, F]}\n"
                         "    - {code: AGE, levels: [LT65, GE65]}\n"
                         "  caps: {SEX=F: 120}\n"), ""))
    with pytest.raises(FileErrors) as caught:
        load_study(db, path)
    [error] = [e for e in caught.value.errors if e.field == "randomization.eligibility_source"]
    assert "method none does not randomize" in error.message
