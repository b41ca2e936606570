"""One voice webhook request: session in, dialog step, TwiML out, session saved.

The step token: every ``<Gather action>`` carries ``step=N``, the number of the
answer it will bring. A request whose step was already answered (Twilio
retries a webhook on a timeout) gets the TwiML it got the first time and does
nothing again; the transactions a step starts are keyed by call and step, so
even a retry that arrives after a crash, before the session was saved, cannot
randomize or dispense twice.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from core.db import Database
from core.login import language_for_phone
from core.studies import study_for_number
from dialogs.output import Say, Turn
from dialogs.voice import CallContext, first_state, run
from ivrs.conversations.sessions import CALL_TTL, SessionStore
from ivrs.render.twiml import voice_response

log = logging.getLogger("ivrs.calls")

_CALL_SID = re.compile(r"^[A-Za-z0-9]{10,64}$")


@dataclass(frozen=True)
class VoiceRequest:
    call_sid: str
    caller: str | None
    dialed: str | None
    digits: str | None
    step: int  # 0: the call's first request


def parse_request(form: dict[str, str], step: str | None) -> VoiceRequest | None:
    """Twilio's fields, checked; None when they cannot be a call of ours."""
    call_sid = (form.get("CallSid") or "").strip()
    if not _CALL_SID.match(call_sid):
        return None
    try:
        step_number = int(step) if step not in (None, "") else 0
    except ValueError:
        return None
    if not 0 <= step_number < 100_000:
        return None
    digits = form.get("Digits")
    if digits is not None and len(digits) > 64:
        digits = digits[:64]  # the dialog refuses it as too long
    return VoiceRequest(call_sid, form.get("From") or None, form.get("To") or None, digits,
                        step_number)


def session_key(call_sid: str) -> str:
    return "voice:" + call_sid


def answer(db: Database, store: SessionStore, request: VoiceRequest) -> str:
    """The TwiML for one request (exceptions are the webhook's to turn into an apology)."""
    key = session_key(request.call_sid)
    session = store.load(key)
    if session is not None and request.step < session["step"]:
        log.info("call %s: step %d answered already, same answer again", request.call_sid,
                 request.step)
        return session["last_twiml"]
    restarted = session is None and request.step > 0
    starting = session is None or request.step > session["step"]
    if starting:
        # A new call, or one whose session expired or was lost: start over, politely.
        session = _new_session(db, request)
        session["step"] = request.step
    ctx = CallContext(db, session["study"], request.call_sid, request.step, request.caller)
    if starting:
        turn = run(session, ctx, None, starting=True)
        if restarted:
            turn = Turn((Say("session.restart"), *turn.says), turn.gather, turn.hangup)
    else:
        before = session["state"]
        turn = run(session, ctx, request.digits)
        log.info("call %s step %d: %s -> %s (%d keys)", request.call_sid, request.step, before,
                 session["state"], len(request.digits or ""))
    session["step"] += 1
    twiml = voice_response(turn, session["language"], f"voice?step={session['step']}")
    session["last_twiml"] = twiml
    if turn.hangup:
        log.info("call %s ends at step %d", request.call_sid, request.step)
    store.save(key, session, CALL_TTL)
    return twiml


def _new_session(db: Database, request: VoiceRequest) -> dict[str, Any]:
    with db.reads() as read:
        study = study_for_number(read, request.dialed)
        code, languages = study.code, list(study.languages or ["en"])
    caller_language = language_for_phone(db, phone=request.caller, study=code)
    language = caller_language if caller_language in languages else None
    log.info("call %s starts (study %s)", request.call_sid, code)
    return {"state": first_state(languages, language), "step": 0, "study": code,
            "languages": languages, "language": language or languages[0], "slots": {}}


def end(store: SessionStore, call_sid: str) -> None:
    """The call is over (status callback): its session can go."""
    store.delete(session_key(call_sid))
