"""Shipments: the list (a page at a time, by status) and one shipment with its
kits, and what each role does with it, through the services the phone, SMS, CLI
and API call: a site's stock indent (``request_shipment``), the depot's dispatch
(carrier, tracking number, date) and cancellation, the destination site's
receipt (good, damaged or missing kits, a temperature excursion with its logger
file), and the supply manager's release or rejection of quarantined kits.

Which form a page offers follows the services' own role sets (an ``Actor``
check, as the service makes it); the service still decides, and its refusal is
shown on the form again, with nothing changed. Kits are counted and numbered,
never typed, except for an unblinded reader.
"""

from __future__ import annotations

import json
from datetime import date

from flask import Response, g, request, session, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from core import records
from core.actors import SITE_ROLES, Actor
from core.clock import today
from core.errors import IvrsError, Refused
from core.supply import records as supply_records
from core.supply.receipt import receive_shipment, reject_quarantine, release_quarantine
from core.supply.shipments import (
    DEPOT_ROLES,
    DISPATCHED,
    REQUESTED,
    SUPPLY_MANAGER_ROLES,
    cancel_shipment,
    dispatch_shipment,
    request_shipment,
)
from ivrs.web import sessions
from ivrs.web.base import actor, blueprint, db, page, store, user, words
from ivrs.web.supply_forms import (
    BadFile,
    kit_numbers,
    logger_text,
    new_form_key,
    refusal_status,
    service_key,
    supply_refusal,
)

STATUS_WORDS = {"requested": "web.shipments.status.requested",
                "dispatched": "web.shipments.status.dispatched",
                "received": "web.shipments.status.received",
                "cancelled": "web.shipments.status.cancelled"}
REASON_WORDS = {"initial": "web.shipments.reason.initial",
                "resupply": "web.shipments.reason.resupply",
                "urgent": "web.shipments.reason.urgent",
                "indent": "web.shipments.reason.indent"}
OUTCOME_WORDS = {"received": "web.shipments.outcome.received",
                 "damaged": "web.shipments.outcome.damaged",
                 "missing": "web.shipments.outcome.missing",
                 "quarantined": "web.shipments.outcome.quarantined"}
PAGE_SIZE = 50


def may(who: Actor, roles: frozenset[str]) -> bool:
    """Would the service let this actor's role act? (``Actor.require``'s answer.)"""
    try:
        who.require(roles, "act")
    except Refused:
        return False
    return True


def _zones() -> dict[str, str]:
    return {s.code: s.timezone for s in records.list_sites(db(), actor=actor(),
                                                            study=user().study)}


def _words_context() -> dict:
    return {"status_words": STATUS_WORDS, "reason_words": REASON_WORDS,
            "outcome_words": OUTCOME_WORDS}


# --- the list, and a site's stock indent -----------------------------------------------------


def _request_sites() -> list:
    """The sites this reader may ask stock for (``request_shipment``'s roles, at
    their own sites), else none: the form is not drawn."""
    if not may(actor(), SITE_ROLES):
        return []
    return [s for s in records.list_sites(db(), actor=actor(), study=user().study) if s.active]


def _list_page(status_code: int = 200, **extra):
    status = request.args.get("status") or None
    if status not in STATUS_WORDS:
        status = None
    found = records.shipments_page(db(), actor=actor(), study=user().study, status=status,
                                   after=request.args.get("after") or None, limit=PAGE_SIZE)
    return page("shipments.html", status_code, lines=found.items, next_after=found.next_after,
                chosen_status=status, statuses=list(STATUS_WORDS), zones=_zones(),
                request_sites=_request_sites(), form_key=new_form_key(),
                quarantine_link=may(actor(), SUPPLY_MANAGER_ROLES), **_words_context(), **extra)


@blueprint.get("/shipments")
def shipments():
    return _list_page()


@blueprint.post("/shipments/request")
def shipment_request():
    site = request.form.get("site", "").strip()
    per_type_text = request.form.get("kits_per_type", "").strip()
    if per_type_text and not per_type_text.isdigit():
        return _list_page(422, error=words("web.supply.error.bad_quantity"))
    try:
        result = request_shipment(db(), site_code=site, actor=actor(),
                                  kits_per_type=int(per_type_text) if per_type_text else None,
                                  study=user().study, idempotency_key=service_key())
    except IvrsError as refused:
        return _list_page(refusal_status(refused), error=supply_refusal(refused))
    return page("shipment_done.html", result=result, shipment_number=result.shipment_number,
                message=words("web.shipments.done.requested", shipment=result.shipment_number,
                              count=result.kits, site=result.site, depot=result.depot))


# --- one shipment, and what may be done with it ----------------------------------------------


def _detail_page(number: str, status_code: int = 200, **extra):
    try:
        detail = supply_records.shipment_detail(db(), shipment_number=number, actor=actor(),
                                                study=user().study)
    except IvrsError as refused:
        return page("error.html", refusal_status(refused), message=supply_refusal(refused))
    who = actor()
    forms = {
        "dispatch": detail.status == REQUESTED and may(who, DEPOT_ROLES),
        "cancel": detail.status == REQUESTED and may(who, SUPPLY_MANAGER_ROLES),
        "receive": detail.status == DISPATCHED and may(who, SITE_ROLES)
        and who.may_act_at(detail.destination),
        "quarantine": detail.quarantined > 0 and may(who, SUPPLY_MANAGER_ROLES),
    }
    return page("shipment.html", status_code, detail=detail, forms=forms,
                zone=_zones().get(detail.destination), form_key=new_form_key(),
                today=today().isoformat(), **_words_context(), **extra)


@blueprint.get("/shipments/<number>")
def shipment(number: str):
    return _detail_page(number)


def _done(number: str, message: str, result):
    return page("shipment_done.html", result=result, shipment_number=number, message=message)


def _refused(number: str, refused: IvrsError, form: str):
    return _detail_page(number, refusal_status(refused), error=supply_refusal(refused),
                        failed_form=form, given=request.form)


@blueprint.post("/shipments/<number>/dispatch")
def shipment_dispatch(number: str):
    day_text = request.form.get("dispatched_on", "").strip()
    try:
        day = date.fromisoformat(day_text) if day_text else None
    except ValueError:
        return _detail_page(number, 422, error=words("web.supply.error.bad_date"),
                            failed_form="dispatch", given=request.form)
    try:
        result = dispatch_shipment(db(), shipment_number=number,
                                   carrier=request.form.get("carrier", ""),
                                   tracking_number=request.form.get("tracking_number", ""),
                                   dispatched_on=day, actor=actor(), study=user().study,
                                   idempotency_key=service_key())
    except IvrsError as refused:
        return _refused(number, refused, "dispatch")
    return _done(number, words("web.shipments.done.dispatched", shipment=result.shipment_number,
                               count=result.kits, site=result.site), result)


@blueprint.post("/shipments/<number>/cancel")
def shipment_cancel(number: str):
    try:
        result = cancel_shipment(db(), shipment_number=number,
                                 reason=request.form.get("reason", ""), actor=actor(),
                                 study=user().study, idempotency_key=service_key())
    except IvrsError as refused:
        return _refused(number, refused, "cancel")
    return _done(number, words("web.shipments.done.cancelled", shipment=result.shipment_number,
                               count=result.kits, depot=result.depot), result)


@blueprint.post("/shipments/<number>/receive")
def shipment_receive(number: str):
    condition = request.form.get("condition", "")
    damaged, missing = kit_numbers("damaged"), kit_numbers("missing")
    excursion = request.form.get("temperature_excursion") == "1"
    try:
        logger = logger_text(request.files.get("logger_file"))
    except BadFile as bad:
        return _detail_page(number, 422, error=words(bad.message_id), failed_form="receive",
                            given=request.form)
    reported = bool(damaged or missing or excursion or logger is not None)
    # The two choices of the phone's receipt question: the form must not say both.
    if condition not in ("good", "problems") or (condition == "good") == reported:
        message = ("web.shipments.receive.choose" if condition not in ("good", "problems")
                   else "web.shipments.receive.contradiction" if condition == "good"
                   else "web.shipments.receive.nothing_reported")
        return _detail_page(number, 422, error=words(message), failed_form="receive",
                            given=request.form)
    try:
        result = receive_shipment(db(), shipment_number=number, actor=actor(), damaged=damaged,
                                  missing=missing, temperature_excursion=excursion,
                                  logger_data=logger, study=user().study,
                                  idempotency_key=service_key())
    except IvrsError as refused:
        return _refused(number, refused, "receive")
    return _done(number, words("web.shipments.done.received", shipment=result.shipment_number,
                               received=result.received, damaged=result.damaged,
                               missing=result.missing, quarantined=result.quarantined), result)


@blueprint.errorhandler(RequestEntityTooLarge)
def _too_large(error):
    # Raised by the CSRF check's reading of the form, before the page's sign-in
    # check has run: nothing of the shipment is shown, only the refusal, in the
    # session's language, and the way back to the form.
    signed_in = sessions.current_session(store(), session.get("sid"))
    g.language = signed_in.language if signed_in else g.get("language", "en")
    number = str((request.view_args or {}).get("number", ""))
    return page("upload_refused.html", 413, message=words("web.supply.error.file_too_large"),
                back=url_for("web.shipment", number=number) if number.isdigit() else None)


@blueprint.post("/shipments/<number>/quarantine")
def shipment_quarantine(number: str):
    decision = request.form.get("decision", "")
    decide = {"release": release_quarantine, "reject": reject_quarantine}.get(decision)
    if decide is None:
        return _detail_page(number, 422, error=words("web.shipments.quarantine.choose"),
                            failed_form="quarantine", given=request.form)
    try:
        result = decide(db(), actor=actor(), shipment_number=number,
                        reason=request.form.get("reason", "").strip() or None,
                        study=user().study, idempotency_key=service_key())
    except IvrsError as refused:
        return _refused(number, refused, "quarantine")
    message = ("web.shipments.done.released" if decision == "release"
               else "web.shipments.done.rejected")
    return _done(number, words(message, shipment=number, count=result.kits), result)


@blueprint.get("/shipments/<number>/logger")
def shipment_logger(number: str):
    """The logger data kept with a receipt, as a file (JSON as given, else its text)."""
    try:
        data = supply_records.shipment_logger_data(db(), shipment_number=number,
                                                   actor=actor(), study=user().study)
    except IvrsError as refused:
        return page("error.html", refusal_status(refused), message=supply_refusal(refused))
    if data is None:
        return page("error.html", 404, message=words("web.shipments.logger.none"))
    if set(data) == {"text"}:
        body, kind, suffix = data["text"], "text/plain", "txt"
    else:
        body, kind, suffix = json.dumps(data, ensure_ascii=False, indent=2), \
            "application/json", "json"
    digits = "".join(ch for ch in number if ch.isdigit())
    return Response(body, mimetype=kind, headers={
        "Content-Disposition": f'attachment; filename="shipment-{digits}-logger.{suffix}"'})


# --- quarantine ------------------------------------------------------------------------------


@blueprint.get("/quarantine")
def quarantine():
    found = supply_records.quarantine_page(db(), actor=actor(), study=user().study,
                                           after=request.args.get("after") or None,
                                           limit=PAGE_SIZE)
    return page("quarantine.html", lines=found.items, next_after=found.next_after,
                zones=_zones())
