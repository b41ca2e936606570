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
from dataclasses import dataclass
from typing import Any

from core import fields
from core.audit import UNBLINDED_KEYS
from core.db import Database
from core.login import language_for_phone, may_continue
from core.security_events import security_event
from core.studies import study_for_number
from dialogs.output import Say, Turn
from dialogs.voice import CallContext, first_state, run
from ivrs.conversations.sessions import CALL_TTL, SessionStore
from ivrs.render.twiml import apology, not_understood, voice_response

log = logging.getLogger("ivrs.calls")


@dataclass(frozen=True)
class VoiceRequest:
    call_sid: str
    caller: str | None  # None: withheld ("anonymous") or not a phone number
    dialed: str | None
    digits: str | None
    step: int  # 0: the call's first request
    token: str  # the step token exactly as it came: str(step)


def parse_request(form: dict[str, str], step: str | None) -> VoiceRequest:
    """Twilio's fields, checked (``core.fields``); ``BadField`` names the first that
    cannot be Twilio's. A step token is one we could have issued, written as we
    write it: ``+4``, ``04`` or ``٤`` are not step 4."""
    call_sid = fields.sid(form.get("CallSid"))
    if call_sid is None:
        raise fields.BadField("CallSid")
    token = "0" if step is None else fields.step_token(step)
    if token is None:
        raise fields.BadField("step")
    digits = form.get("Digits")
    if digits is not None:
        digits = fields.keypad(digits)  # digits, * and # only; a long entry is cut
        if digits is None:
            raise fields.BadField("Digits")
    return VoiceRequest(call_sid, fields.phone(form.get("From")), fields.phone(form.get("To")),
                        digits, int(token), token)


def session_key(call_sid: str) -> str:
    return "voice:" + call_sid


def answer(db: Database, store: SessionStore, request: VoiceRequest) -> str:
    """The TwiML for one request (exceptions are the webhook's to turn into an apology)."""
    key = session_key(request.call_sid)
    session = store.load(key)
    # The token the session issued last, compared as the string it is: only that
    # request acts; an earlier one is Twilio retrying and hears its answer again.
    current = session is not None and request.token == str(session["step"])
    if session is not None and not current and request.step < session["step"]:
        log.info("call %s: step %d answered already, same answer again", request.call_sid,
                 request.step)
        return session["last_twiml"]
    if session is not None and session.get("ended"):
        # The dialog hung up, or Twilio said the call is over: nothing continues it.
        security_event("step_refused", channel="voice", field="ended", request=request.call_sid)
        return not_understood(session.get("language", "en"))
    if current and "user" in session and not may_continue(
            db, study=session["study"], user_code=session["user"]["user_code"]):
        # Locked or deactivated since the caller signed in: the call ends here.
        log.info("call %s: user no longer active or locked: the call ends", request.call_sid)
        return _hang_up(store, key, session, Turn((Say("error.locked"),), None, True))
    restarted = session is None and request.step > 0
    starting = not current
    if session is not None and starting:
        # A token beyond any issued: the call starts over, without the keys.
        security_event("step_refused", channel="voice", field="step", request=request.call_sid)
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
    if turn.hangup:
        log.info("call %s ends at step %d", request.call_sid, request.step)
        return _hang_up(store, key, session, turn)
    session["step"] += 1
    twiml = voice_response(turn, session["language"], f"voice?step={session['step']}")
    session["last_twiml"] = _replayable(turn, twiml, session)
    store.save(key, session, CALL_TTL)
    return twiml


def _hang_up(store: SessionStore, key: str, session: dict[str, Any], turn: Turn) -> str:
    """The call's last answer: kept for Twilio's retry of this step, and the
    session marked ended, so that no later request continues it."""
    session["step"] += 1
    twiml = voice_response(turn, session["language"], f"voice?step={session['step']}")
    session.update(last_twiml=_replayable(turn, twiml, session), ended=True)
    session.pop("user", None)  # nothing of the sign-in outlives the call
    store.save(key, session, CALL_TTL)
    return twiml


def _replayable(turn: Turn, twiml: str, session: dict[str, Any]) -> str:
    """What the session keeps to answer Twilio's retry of this step: the answer
    itself, unless it says an arm (emergency unblinding). Then the same answer
    without those words: the session store is not unblinded data, and an arm
    kept there would wait for hours after the call. A caller whose answer was
    lost hears the rest again (done, the unblinding's number and confirmation)
    and can call for the unblinding again."""
    kept = tuple(say for say in turn.says if not UNBLINDED_KEYS & set(say.params))
    if len(kept) == len(turn.says):
        return twiml
    return voice_response(Turn(kept, turn.gather, turn.hangup), session["language"],
                          f"voice?step={session['step']}")


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
    """The call is over (status callback): what remains of its session is a mark
    that it ended, so that a later request with its CallSid continues nothing."""
    key = session_key(call_sid)
    session = store.load(key) or {"step": 0, "language": "en", "last_twiml": not_understood()}
    session.pop("user", None)
    session.pop("slots", None)
    session["ended"] = True
    store.save(key, session, CALL_TTL)


def apology_for(store: SessionStore, call_sid: str) -> str:
    """The apology for a step that failed on our side, in the caller's language
    when the call's session can still be read (PostgreSQL down, Redis up), else
    in English (SPEC §9)."""
    try:
        session = store.load(session_key(call_sid)) or {}
    except Exception:  # noqa: BLE001 — the store may be what failed
        session = {}
    language = session.get("language")
    return apology(language) if isinstance(language, str) else apology()
