"""Eligibility recorded by the EDC (SPEC §10: ``randomization: {eligibility_source: edc}``).

In a study whose source is ``edc`` the investigator answers the eligibility
criteria in the EDC's eCRF, and the EDC sends them here as they are filled
in: partial answers are welcome, and a later answer to a question replaces
the earlier one (the eCRF was corrected) until the subject is randomized.
Each change is audited (``eligibility_recorded``, old and new per question).

Randomization then decides on what is recorded, whatever the channel: the
phone asks no eligibility question, and ``core.randomize`` refuses a subject
with a criterion not yet recorded (``eligibility_incomplete``) or not met
(``not_eligible``). The answers are the subject's entry into the study, so
they are recorded while the subject is screened and checked at the first
randomization; a re-randomization (a later event) does not ask them again.

Eligibility reveals nothing about an arm: none of this is blinded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from core.actors import Actor
from core.clock import utcnow
from core.db import Database
from core.errors import IvrsError, NotFound, Refused
from core.models import EligibilityAnswer, Randomization, Site, Subject
from core.service import ServiceCall, service_call
from core.studies import StudyRef, study_ref
from core.study_config import share_config, study_config
from core.subjects import ENROLLING_ROLES, SCREENED, SubjectRow, lock_subject_row

IVRS, EDC = "ivrs", "edc"


@dataclass(frozen=True)
class EligibilityResult:
    """What the EDC gets back: the subject's whole eligibility as recorded now."""

    subject_number: str
    answers: dict[str, bool]  # every answer recorded so far, in the study's question order
    missing: tuple[str, ...]  # questions not answered yet
    all_met: bool  # every question answered, and met: the subject may be randomized
    failed: tuple[str, ...]  # questions answered "not met"
    confirmation: str | None


@dataclass(frozen=True)
class RecordedAnswer:
    question: str
    met: bool
    recorded_by: str  # the actor's label (api:NAME for an EDC)
    recorded_at: datetime


@dataclass(frozen=True)
class SubjectEligibility:
    """A subject's eligibility for a subject's detail (the API's ``GET /subjects/N``).

    With source ``edc``: the answers the EDC recorded. With source ``ivrs``: the
    answers given on the phone at the subject's first randomization (a refused
    attempt's answers are in the audit trail only)."""

    subject_number: str
    source: str  # ivrs | edc
    questions: tuple[str, ...]
    answers: tuple[RecordedAnswer, ...]
    missing: tuple[str, ...]
    failed: tuple[str, ...]
    all_met: bool


def record_eligibility(db: Database, *, subject_number: str, answers: dict[str, bool],
                       actor: Actor, study: str | None = None,
                       idempotency_key: str | None = None) -> EligibilityResult:
    """Record (or replace) some or all of a screened subject's eligibility answers.

    Refused when the study's source is not the EDC (``eligibility_not_from_edc``),
    for a subject that is not screened (``subject_randomized``,
    ``subject_screen_failed`` ...), a question the study does not have
    (``eligibility_unknown``) or an answer that is not true or false (``bad_answer``);
    a refusal changes nothing.
    """
    actor.require(ENROLLING_ROLES, "record eligibility")
    check_answer_values(answers, allow_empty=False)
    with service_call(db, study, f"eligibility {subject_number}", idempotency_key,
                      actor) as call:
        # The lock order of a randomization (core.randomize): configuration
        # (shared), then the subject, whose row guards its answers.
        share_config(call.session, call.study.id)
        subject = lock_subject_row(call.session, call.study.id, subject_number)
        if (replay := call.replayed()) is not None:
            return _result(replay)
        actor.require_site(subject.site_code)
        config = study_config(call.session, call.study.id, call.study.config_version)
        if config.eligibility_source != EDC:
            raise Refused(f"study {call.study.code} asks eligibility by phone "
                          "(randomization.eligibility_source is ivrs): the EDC does not "
                          "record it", code="eligibility_not_from_edc")
        recorded = record_answers(call, subject, answers)
        missing, failed = assess(call.study.eligibility, recorded)
        return _result(call.finish({
            "subject_number": subject.subject_number, "answers": recorded,
            "missing": missing, "failed": failed, "all_met": not (missing or failed)}))


def subject_eligibility(db: Database, *, subject_number: str, actor: Actor,
                        study: str | None = None) -> SubjectEligibility:
    """A subject's recorded eligibility (read-only), for a subject of the actor's sites.

    No role check beyond the sites: eligibility names no arm, and whoever may
    see a subject may see what made it eligible."""
    with db.reads() as session:
        ref = study_ref(session, study)
        row = session.execute(
            select(Subject.id, Subject.status, Site.code)
            .join(Site, Site.id == Subject.site_id)
            .where(Subject.study_id == ref.id, Subject.subject_number == subject_number)
        ).first()
        if row is None:
            raise NotFound(f"no subject {subject_number}", code="unknown_subject")
        subject_id, _, site_code = row
        actor.require_site(site_code)
        source = study_config(session, ref.id, ref.config_version).eligibility_source
        if source == EDC:
            rows = session.execute(
                select(EligibilityAnswer.question, EligibilityAnswer.met,
                       EligibilityAnswer.recorded_by, EligibilityAnswer.recorded_at)
                .where(EligibilityAnswer.subject_id == subject_id)).all()
            found = {question: RecordedAnswer(question, met, by, at)
                     for question, met, by, at in rows}
        else:
            first = session.execute(
                select(Randomization.eligibility, Randomization.randomized_by,
                       Randomization.randomized_at)
                .where(Randomization.subject_id == subject_id)
                .order_by(Randomization.randomized_at, Randomization.id).limit(1)).first()
            found = {} if first is None else {
                question: RecordedAnswer(question, bool(met), first[1], first[2])
                for question, met in (first[0] or {}).items()}
        answers = tuple(found[q] for q in ref.eligibility if q in found)
        missing, failed = assess(ref.eligibility, {a.question: a.met for a in answers})
        return SubjectEligibility(subject_number, source, ref.eligibility, answers,
                                  tuple(missing), tuple(failed), not (missing or failed))


# --- shared with core.randomize and core.previews ---------------------------------------------


def check_answer_values(answers: Any, *, allow_empty: bool) -> None:
    """The answers' shape, before anything is read: a mapping of question to a
    JSON true or false (1, "yes" or null are not answers)."""
    if not isinstance(answers, dict):
        raise IvrsError("eligibility answers are a mapping of question to true or false",
                        code="bad_answer")
    if not answers and not allow_empty:
        raise IvrsError("no eligibility answer given", code="bad_answer")
    for question, met in answers.items():
        if not isinstance(met, bool):
            raise IvrsError(f"the answer to {question} must be true or false, not {met!r}",
                            code="bad_answer", question=str(question))


def check_questions(study: StudyRef, answers: dict[str, bool]) -> None:
    unknown = sorted(str(q) for q in answers if q not in study.eligibility)
    if unknown:
        raise IvrsError(f"no eligibility question {', '.join(unknown)} (questions: "
                        f"{', '.join(study.eligibility) or 'none'})",
                        code="eligibility_unknown", unknown=unknown)


_answers = EligibilityAnswer.__table__
# The one read of a randomization in a study whose source is the EDC.
_SUBJECT_ANSWERS = (select(_answers.c.id, _answers.c.question, _answers.c.met)
                    .where(_answers.c.subject_id == bindparam("subject")))
_ADD_ANSWER = insert(_answers)
_REPLACE_ANSWER = (update(_answers).where(_answers.c.id == bindparam("answer"))
                   .values(met=bindparam("met"), recorded_by=bindparam("by"),
                           recorded_at=bindparam("at")))


def recorded_answers(session: Session, study: StudyRef, subject_id: int) -> dict[str, bool]:
    """A subject's answers to the study's current questions, in their order."""
    stored = {question: met for _, question, met in
              session.execute(_SUBJECT_ANSWERS, {"subject": subject_id})}
    return {q: stored[q] for q in study.eligibility if q in stored}


def record_answers(call: ServiceCall, subject: SubjectRow,
                   answers: dict[str, bool]) -> dict[str, bool]:
    """Write the answers given for a locked, screened subject; returns all its answers.

    One read of the subject's answers; a write (and one audit record naming
    every question that changed) only for an answer that is new or different:
    an EDC that sends the same answer again changes nothing."""
    if subject.status != SCREENED:
        raise Refused(f"subject {subject.subject_number} is {subject.status}: eligibility "
                      "is recorded before the first randomization",
                      code=f"subject_{subject.status}")
    check_questions(call.study, answers)
    session = call.session
    stored = {question: (answer_id, met) for answer_id, question, met in
              session.execute(_SUBJECT_ANSWERS, {"subject": subject.id})}
    old: dict[str, bool | None] = {}
    new: dict[str, bool] = {}
    additions, replacements = [], []
    now, by = utcnow(), call.actor.label
    for question in call.study.eligibility:  # the study's order, for the audit trail
        if question not in answers:
            continue
        met = answers[question]
        answer_id, before = stored.get(question, (None, None))
        if before == met:
            continue
        old[question], new[question] = before, met
        if answer_id is None:
            additions.append({"study_id": call.study.id, "subject_id": subject.id,
                              "question": question, "met": met, "recorded_by": by,
                              "recorded_at": now})
        else:
            replacements.append({"answer": answer_id, "met": met, "by": by, "at": now})
    if additions:
        session.execute(_ADD_ANSWER, additions)
    if replacements:
        session.execute(_REPLACE_ANSWER, replacements)
    if new:
        call.audit.record("eligibility_recorded", "subject", subject.subject_number,
                          old=old, new=new)
    merged = {question: met for question, (_, met) in stored.items()} | new
    return {q: merged[q] for q in call.study.eligibility if q in merged}


def assess(questions: tuple[str, ...], answers: dict[str, bool]) -> tuple[list[str], list[str]]:
    """(questions not answered, questions not met), in the study's order."""
    return ([q for q in questions if q not in answers],
            [q for q in questions if answers.get(q) is False])


def incomplete(subject_number: str, missing: list[str]) -> Refused:
    return Refused(f"the eligibility of subject {subject_number} is not all recorded in the "
                   f"EDC: {', '.join(missing)} missing", code="eligibility_incomplete",
                   missing=list(missing))


def _result(stored: dict[str, Any]) -> EligibilityResult:
    """The result as committed (a retry gets the first answer, in its order)."""
    return EligibilityResult(
        subject_number=stored["subject_number"], answers=dict(stored["answers"]),
        missing=tuple(stored["missing"]), all_met=stored["all_met"],
        failed=tuple(stored["failed"]), confirmation=stored.get("confirmation"))
