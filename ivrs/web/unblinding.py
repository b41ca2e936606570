"""Emergency unblinding (SPEC §6.8, §11): the investigator of the subject's site
gives a reason, signs with the password and confirms; ``core.unblinding.unblind``
then reveals the arm (mode investigator, or a request of theirs approved) or
opens a request for the approvers (mode approval). This is the one page where a
site role reads an arm, in the phone's words (``unblind.arm``), to the
investigator who signed, and it is not kept anywhere on the way.

What the signature means depends on what the step will do (reveal, or ask):
the form names it, and carries which one it showed, so that a form drawn
before the situation changed (a request approved meanwhile) is drawn again
rather than signed with a meaning the signer did not read.
"""

from __future__ import annotations

from flask import request

from core.errors import IvrsError, NotFound
from core.unblinding import REASONS, UNBLINDING_ROLES, UnblindingCheck, check_unblinding, unblind
from ivrs.web.base import actor, blueprint, db, page, refusal_text, user, words
from ivrs.web.signed import (
    answered,
    form_key,
    new_form_key,
    sign_and_take,
    signed_refusal,
    status_for,
)

# what the step will do -> the meaning of its signature
MEANINGS = {"reveal": "web.unblind.meaning.reveal",
            "reveal_approved": "web.unblind.meaning.reveal_approved",
            "request": "web.unblind.meaning.request"}


@blueprint.app_context_processor
def _unblinding_link() -> dict:
    # The subject page links here for the roles the core lets unblind.
    return {"unblinding_roles": UNBLINDING_ROLES}


@blueprint.get("/subjects/<number>/unblind")
def unblind_form(number: str):
    try:
        check = check_unblinding(db(), subject_number=number, actor=actor(),
                                 study=user().study)
    except IvrsError as refused:
        return _refused_page(refused)
    return _form(check)


@blueprint.post("/subjects/<number>/unblind")
def unblind_subject(number: str):
    try:
        check = check_unblinding(db(), subject_number=number, actor=actor(),
                                 study=user().study)
    except IvrsError as refused:
        return _refused_page(refused)
    key, reason = form_key(), request.form.get("reason", "")

    def take(signature):
        return unblind(db(), subject_number=check.subject_number, reason=reason,
                       signature=signature, actor=actor(), study=user().study,
                       idempotency_key=key)

    try:
        result = answered(take)  # this form sent again: its first answer
        if result is None:
            step = _step(check)
            if step is None or request.form.get("step") != step:
                # Not what the form said the signature would mean: show it as it is now.
                return _form(check, 409, error=words("web.unblind.changed"), key=key)
            if step != "reveal_approved" and reason not in REASONS:
                return _form(check, 422, error=words("web.unblind.choose_reason"), key=key)
            if request.form.get("confirm") != "yes":
                return _form(check, 422, error=words("web.unblind.confirm_needed"), key=key,
                             reason=reason)
            result = sign_and_take(take, meaning=_meaning(check, step),
                                   password=request.form.get("password", ""))
    except IvrsError as refused:
        return _form(check, status_for(refused), error=signed_refusal(refused), key=key,
                     reason=reason)
    return page("unblind_done.html", result=result)


def _step(check: UnblindingCheck) -> str | None:
    """What signing now would do; None while a request awaits its decision."""
    if check.mode != "approval":
        return "reveal"
    if check.approved:
        return "reveal_approved"
    return None if check.pending else "request"


def _meaning(check: UnblindingCheck, step: str) -> str:
    return words(MEANINGS[step], subject=check.subject_number, number=check.approved or "")


def _form(check: UnblindingCheck, status: int = 200, *, error: str | None = None,
          key: str | None = None, reason: str = ""):
    step = _step(check)
    pending = words("error.unblinding_pending", number=check.pending) if step is None else None
    return page("unblind.html", status, check=check, step=step, pending=pending,
                meaning=_meaning(check, step) if step else None, reasons=REASONS,
                reason=reason, key=key or new_form_key(), error=error)


def _refused_page(refused: IvrsError):
    status = 404 if isinstance(refused, NotFound) else status_for(refused)
    return page("error.html", status, message=refusal_text(refused))
