"""Twilio's door: routes, signature check, session in and out, TwiML back.

No logic lives here: ``ivrs.conversations.calls`` runs a request through the dialog. Every
answer to Twilio is TwiML with status 200, also when something failed on our
side (then an apology and a hang-up); only an unsigned request gets a 403.
"""

from __future__ import annotations

import hmac
import logging

from flask import Blueprint, Response, current_app, request
from sqlalchemy import text
from twilio.request_validator import RequestValidator, get_signature_algorithm

from core.fields import BadField, sid
from core.security_events import security_event
from ivrs.conversations import calls, texts
from ivrs.render.twiml import not_understood

log = logging.getLogger("ivrs.webhooks")
blueprint = Blueprint("webhooks", __name__)

TWIML = "application/xml"
CALL_ENDED = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})


def _runtime():
    return current_app.extensions["ivrs"]


def _request_sid() -> str | None:
    """The request's CallSid or MessageSid, when it has one of the right shape
    (a security event names the request, never echoes whatever was sent)."""
    return sid(request.form.get("CallSid")) or sid(request.form.get("MessageSid"))


def signature_valid() -> bool:
    settings = _runtime().settings
    if settings.skip_signatures:
        return True
    if not settings.twilio_auth_token:
        return False
    signature = request.headers.get("X-Twilio-Signature", "")
    environ = request.environ
    # The URL as Twilio requested it, from the raw request line (werkzeug's
    # request.url re-encodes it, at a cost paid on every keypress). Behind a
    # proxy the URL Twilio signed is the public one, not ours.
    query = environ.get("QUERY_STRING")
    path = environ.get("PATH_INFO", "") + ("?" + query if query else "")
    if settings.public_base_url:
        url = settings.public_base_url + path
    else:
        host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
        url = f"{environ['wsgi.url_scheme']}://{host}{environ.get('SCRIPT_NAME', '')}{path}"
    # Twilio names the algorithm in this header when it signs with HMAC-SHA256;
    # without it the signature is the classic HMAC-SHA1.
    algorithm = get_signature_algorithm(
        request.headers.get("X-Twilio-Webhooks-Signature-Settings"))
    validator, form = RequestValidator(settings.twilio_auth_token), request.form.to_dict(flat=True)
    # The URL exactly as requested matches in the usual case: one HMAC. Only
    # otherwise let the library try its port variants (two more).
    try:
        expected = validator.compute_signature(url, form, algorithm)
    except ValueError:  # an algorithm the library does not know: validate() says so
        return validator.validate(url, form, signature, algorithm)
    if hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        return True
    return validator.validate(url, form, signature, algorithm)


@blueprint.before_request
def _check_signature():
    if request.endpoint in ("webhooks.healthz", "webhooks.static_twiml"):
        return None
    if not signature_valid():
        security_event("signature_refused", path=request.path, request=_request_sid())
        return Response("Forbidden", status=403, mimetype="text/plain")
    return None


@blueprint.post("/voice")
def voice():
    runtime = _runtime()
    try:
        call = calls.parse_request(request.form.to_dict(flat=True), request.args.get("step"))
    except BadField as bad:
        # Twilio sends none of these: a forged or broken request, not our fault.
        security_event("step_refused" if bad.field == "step" else "bad_input", channel="voice",
                       field=bad.field, request=_request_sid())
        return Response(not_understood(), mimetype=TWIML)
    try:
        twiml = calls.answer(runtime.db, runtime.store, call)
    except Exception:  # noqa: BLE001 — the caller hears an apology, we get the trace
        log.exception("call %s step %d failed", call.call_sid, call.step)
        return Response(calls.apology_for(runtime.store, call.call_sid), mimetype=TWIML)
    return Response(twiml, mimetype=TWIML)


@blueprint.post("/voice/status")
def voice_status():
    call_sid = sid(request.form.get("CallSid"))
    status = request.form.get("CallStatus", "")
    ended = status in CALL_ENDED
    log.info("call %s status %s", call_sid or "-", status if ended else "(not an end)")
    if call_sid and ended:
        try:
            calls.end(_runtime().store, call_sid)
        except Exception:  # noqa: BLE001 — Twilio gets its 204; the session expires in time
            log.exception("call %s: could not mark the call ended", call_sid)
    return Response(status=204)


@blueprint.post("/sms")
def sms():
    runtime = _runtime()
    try:
        message = texts.parse_request(request.form.to_dict(flat=True))
    except BadField as bad:
        security_event("bad_input", channel="sms", field=bad.field, request=_request_sid())
        return Response(texts.not_understood(), mimetype=TWIML)
    try:
        twiml = texts.answer(runtime.db, runtime.store, message)
    except Exception:  # noqa: BLE001 — the texter gets an apology, we get the trace
        log.exception("sms %s failed", message.message_sid)
        return Response(texts.apology(), mimetype=TWIML)
    return Response(twiml, mimetype=TWIML)


@blueprint.get("/healthz")
def healthz():
    runtime = _runtime()
    checks = {"database": _database_answers(runtime.db), "sessions": runtime.store.ping()}
    status = 200 if all(checks.values()) else 503
    body = {name: "ok" if ok else "down" for name, ok in checks.items()}
    return body, status


@blueprint.route("/static-twiml", methods=["GET", "POST"])
def static_twiml():
    """A fixed answer with no database or session work: the benchmarks' ceiling."""
    return Response('<?xml version="1.0" encoding="UTF-8"?><Response><Gather input="dtmf" '
                    'numDigits="1"><Say>Static.</Say></Gather></Response>', mimetype=TWIML)


def _database_answers(db) -> bool:
    try:
        with db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception as error:  # noqa: BLE001
        # One line, not a traceback: a load balancer asks every second or so.
        log.warning("health check: the database does not answer (%s)", type(error).__name__)
        return False


@blueprint.post("/sms/status")
def sms_status():
    """An outbound message's status callback: the delivery moves forward
    (ivrs.outbound.notify.record_status). Always 204, whatever we make of it."""
    from ivrs.outbound.notify import record_status

    try:
        record_status(_runtime().db, request.form.to_dict(flat=True))
    except Exception:  # Twilio gets its 204, we get the trace
        log.exception("message %s: status callback not recorded",
                      request.form.get("MessageSid", "-"))
    return Response(status=204)
