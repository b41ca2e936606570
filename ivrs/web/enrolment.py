"""Screening, randomization and status changes of subjects, for the site roles
(SPEC §11): the phone's menu options 1, 2 and 6 as forms.

Each form calls the service the phone calls (``core.subjects``,
``core.randomize``) with the idempotency key the form was drawn with, so a
double submit or a reload acts once and shows the first answer. What may be
asked, of whom and when is the core's: the forms are drawn from the core's
previews (``core.previews``, the phone's too) and every refusal is the core's,
shown in the phone's words.

Randomization is two steps like the call: the questions (eligibility, then one
choice per factor), then a summary to confirm (the phone's "press 1 to
randomize"). A "no" stops there and is recorded by the core, as on the phone.
The result names the randomization number and the kits, never an arm: only
site roles reach these pages, and they are blinded.
"""

from __future__ import annotations

from flask import request

from core.eligibility import EDC
from core.errors import IvrsError
from core.previews import randomization_questions, status_change
from core.randomize import randomize
from core.subjects import discontinue, record_screen_failure, screen_subject
from dialogs.voice.enrolment import REASONS
from ivrs.web.actions import bad_form, form_key, new_key, refusal_status
from ivrs.web.base import actor, blueprint, db, page, refusal_text, user, words
from ivrs.web.subjects import subjects_list

YES, NO = "yes", "no"
# Form field names: one per eligibility question and one per factor.
QUESTION, FACTOR = "eligibility.", "factor."
STATUS_SERVICES = {"screen_failure": record_screen_failure, "discontinuation": discontinue}


# --- screen ----------------------------------------------------------------------------------


@blueprint.post("/subjects")
def screen():
    key = form_key()
    if key is None:
        return bad_form()
    try:
        result = screen_subject(db(), site_code=request.form.get("site", ""), actor=actor(),
                                study=user().study, idempotency_key=key)
    except IvrsError as refused:
        return subjects_list(refusal_status(refused), refusal_text(refused))
    return page("screened.html", result=result)


# --- randomize -------------------------------------------------------------------------------


@blueprint.route("/subjects/<number>/randomize", methods=["GET", "POST"], endpoint="randomize")
def randomize_subject(number: str):
    if request.method == "POST" and request.form.get("step") == "confirm":
        return _confirm_randomization(number)
    # The questions (and the first refusals: not screened, not ours, EDC not met)
    # are the core's preview, which the phone asks before its first question.
    try:
        plan = randomization_questions(db(), subject_number=number, actor=actor(),
                                       study=user().study)
    except IvrsError as refused:
        return _randomize_refused(number, refused, from_edc=True)
    if request.method == "GET":
        return page("randomize.html", step="questions", number=number, plan=plan,
                    key=new_key())
    key = form_key()
    if key is None:
        return bad_form()
    answers = {code: request.form.get(QUESTION + code) for code in plan.eligibility}
    levels = {f.code: request.form.get(FACTOR + f.code) for f in plan.factors}
    if NO in answers.values():
        return _not_eligible(number, plan, answers, key)
    if any(answer != YES for answer in answers.values()) or any(
            levels[f.code] not in f.levels for f in plan.factors):
        return page("randomize.html", 422, step="questions", number=number, plan=plan, key=key,
                    answers=answers, levels=levels, error=words("web.randomize.answer_all"))
    return page("randomize.html", step="summary", number=number, plan=plan, key=key,
                answers=answers, levels=levels)


def _not_eligible(number, plan, answers, key):
    """Recorded as the phone records it: the answers up to the first "no" (the
    phone asks no further), no factor; the core commits the refusal."""
    given: dict[str, bool] = {}
    for code in plan.eligibility:
        given[code] = answers[code] == YES
        if not given[code]:
            break
    try:
        randomize(db(), subject_number=number, actor=actor(), eligibility=given, factors={},
                  study=user().study, idempotency_key=key)
    except IvrsError as refused:
        return _randomize_refused(number, refused, from_edc=False)
    # Not reached: a "no" always refuses. Should the core ever accept, say so plainly.
    return page("error.html", 409, message=words("web.error.refused", code="not_eligible"))


def _confirm_randomization(number: str):
    """The summary's button: the answers and levels the summary showed, sent back."""
    key = form_key()
    if key is None:
        return bad_form()
    answers = {name[len(QUESTION):]: value == YES for name, value in request.form.items()
               if name.startswith(QUESTION)}
    levels = {name[len(FACTOR):]: value for name, value in request.form.items()
              if name.startswith(FACTOR)}
    try:
        result = randomize(db(), subject_number=number, actor=actor(), eligibility=answers,
                           factors=levels, study=user().study, idempotency_key=key)
    except IvrsError as refused:
        return _randomize_refused(number, refused,
                                  from_edc=request.form.get("source") == EDC)
    return page("randomize.html", step="done", number=number, result=result)


def _randomize_refused(number: str, refused: IvrsError, *, from_edc: bool):
    if refused.code == "not_eligible":
        # The phone's words: a "no" is recorded; the EDC's record decides in EDC studies.
        message = words("rand.not_eligible_edc" if from_edc else "rand.not_eligible",
                        subject=number)
    else:
        message = refusal_text(refused)
    return page("randomize.html", refusal_status(refused), step="refused", number=number,
                error=message)


# --- screen failure or discontinuation ---------------------------------------------------------


@blueprint.route("/subjects/<number>/status", methods=["GET", "POST"],
                 endpoint="status_change")
def status_change_form(number: str):
    if request.method == "POST":
        return _change_status(number)
    return _status_form(number)


def _status_form(number: str, status: int = 200, error: str | None = None,
                 key: str | None = None):
    try:
        change = status_change(db(), subject_number=number, actor=actor(), study=user().study)
    except IvrsError as refused:
        # The form cannot be drawn: the refusal of the change (or of the form) is the page.
        return page("status_change.html", status if error else refusal_status(refused),
                    number=number, change=None, error=error or refusal_text(refused))
    return page("status_change.html", status, number=number, change=change,
                reasons=REASONS[change.kind], key=key or new_key(), error=error)


def _change_status(number: str):
    key, kind = form_key(), request.form.get("kind", "")
    if key is None or kind not in STATUS_SERVICES:
        return bad_form()
    reason = request.form.get("reason", "")
    if reason not in REASONS[kind]:
        return _status_form(number, 422, words("web.status.choose_reason"), key)
    try:
        result = STATUS_SERVICES[kind](db(), subject_number=number, reason=reason,
                                       actor=actor(), study=user().study, idempotency_key=key)
    except IvrsError as refused:
        return _status_form(number, refusal_status(refused), refusal_text(refused), key)
    return page("status_changed.html", result=result, kind=kind, reason=reason)
