"""Dispensing at the visit due and replacing a lost or damaged kit, for the
site roles (SPEC §11): the phone's menu options 3 and 4 as forms.

The visit due is the core's preview (``core.previews.visit_due``, what the
phone names before "press 1 to dispense"); the form sends that visit back so
that a page drawn before another visit fell due is refused (``visit_not_due``)
rather than dispensing a visit the reader did not see. Kits are named by their
numbers only: never a kit type, lot or arm. Each assignment queues the SMS
asking the user to confirm the kits handed out, in the core, as on the phone.
"""

from __future__ import annotations

from flask import request

from core import records
from core.errors import IvrsError
from core.previews import visit_due
from core.supply.dispensing import dispense, replace_kit
from dialogs.voice.supply import REPLACEMENT_REASONS
from ivrs.web.actions import REPLACEABLE, bad_form, form_key, new_key, refusal_status
from ivrs.web.base import actor, blueprint, db, page, refusal_text, user, words

# --- dispense ----------------------------------------------------------------------------------


@blueprint.route("/subjects/<number>/dispense", methods=["GET", "POST"], endpoint="dispense")
def dispense_form(number: str):
    if request.method == "POST":
        return _dispense(number)
    return _dispense_page(number)


def _dispense_page(number: str, status: int = 200, error: str | None = None,
                   key: str | None = None):
    try:
        due = visit_due(db(), subject_number=number, actor=actor(), study=user().study)
    except IvrsError as refused:
        return page("dispense.html", status if error else refusal_status(refused),
                    number=number, due=None, error=error or refusal_text(refused))
    return page("dispense.html", status, number=number, due=due, key=key or new_key(),
                error=error)


def _dispense(number: str):
    key = form_key()
    if key is None:
        return bad_form()
    try:
        result = dispense(db(), subject_number=number, actor=actor(), study=user().study,
                          idempotency_key=key, visit=request.form.get("visit") or None)
    except IvrsError as refused:
        return _dispense_page(number, refusal_status(refused), refusal_text(refused), key)
    return page("dispensed.html", number=number, result=result)


# --- replace a kit -----------------------------------------------------------------------------


@blueprint.route("/subjects/<number>/replace", methods=["GET", "POST"], endpoint="replace")
def replace_form(number: str):
    if request.method == "POST":
        return _replace(number)
    return _replace_page(number)


def _replace_page(number: str, status: int = 200, error: str | None = None,
                  key: str | None = None):
    try:
        record = records.subject_record(db(), subject_number=number, actor=actor(),
                                        study=user().study)
    except IvrsError as refused:
        return page("replace.html", status if error else refusal_status(refused),
                    number=number, kits=None, error=error or refusal_text(refused))
    kits = [kit for kit in record.kits if kit.status in REPLACEABLE]
    return page("replace.html", status, number=number, kits=kits,
                reasons=REPLACEMENT_REASONS, key=key or new_key(),
                chosen=request.form.get("kit"), error=error)


def _replace(number: str):
    key = form_key()
    if key is None:
        return bad_form()
    kit, reason = request.form.get("kit", ""), request.form.get("reason", "")
    if not kit or reason not in REPLACEMENT_REASONS:
        return _replace_page(number, 422, words("web.replace.choose"), key)
    try:
        result = replace_kit(db(), subject_number=number, kit_number=kit, reason=reason,
                             actor=actor(), study=user().study, idempotency_key=key)
    except IvrsError as refused:
        return _replace_page(number, refusal_status(refused), refusal_text(refused), key)
    return page("replaced.html", number=number, result=result, reason=reason)
