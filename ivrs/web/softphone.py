"""The softphone (SPEC §11, ``IVRS_ENV=uat`` only): a keypad in the browser that
plays the real voice dialog and shows what it says.

The browser posts keys here (a form, CSRF-checked like every other); the server
posts them on to the Twilio door's ``/voice`` inside this process exactly as
Twilio would (``ivrs.render.phone``): From the signed-in user's phone, To the
study's number, a CallSid made for each softphone call, the Digits, following
the ``<Gather action>`` (with its step token) of the last answer, and signed
with ``X-Twilio-Signature`` when the server has a ``TWILIO_AUTH_TOKEN``, so that
the door's signature check stays on. Nothing here knows the dialog: the door
answers TwiML and the page shows its ``<Say>`` texts.

The call (its CallSid, the action to follow) and the transcript are kept in
the server's session store beside the web session, never in the cookie. With
JavaScript (``static/softphone.js``) the keys go by ``fetch`` and the answer is
JSON; without it every button is a plain form post and the page comes back.
"""

from __future__ import annotations

import re

from flask import current_app, jsonify, request, session

from core.user_directory import calling_numbers
from ivrs.render.phone import AppTransport, Heard, Phone, asks_for_pin
from ivrs.web.base import blueprint, db, page, runtime, store, user, words
from ivrs.web.sessions import IDLE_TIMEOUT

_KEY = "web-phone:"
_KEYS = re.compile(r"^[0-9*#]{1,40}$")
# A long call's transcript keeps its last lines only (the session store holds it).
MAX_LINES = 300


def _kept() -> dict:
    return store().load(_KEY + session["sid"]) or {"call": None, "lines": []}


def _keep(state: dict) -> None:
    state["lines"] = state["lines"][-MAX_LINES:]
    store().save(_KEY + session["sid"], state, int(IDLE_TIMEOUT.total_seconds()) + 60)


def _phone() -> Phone:
    settings = runtime().settings
    numbers = calling_numbers(db(), user_code=user().user_code, study=user().study)
    # A user with no phone calls from a withheld number, as Twilio says it.
    return Phone(AppTransport(current_app._get_current_object()),
                 caller=numbers.caller or "anonymous", dialed=numbers.dialed or "",
                 auth_token=settings.twilio_auth_token,
                 public_base_url=settings.public_base_url)


def _heard_lines(heard: Heard) -> list[dict]:
    if heard.status != 200:
        # The door refused the request (no TWILIO_AUTH_TOKEN on a server without --dev).
        return [{"who": "note", "text": words("web.softphone.refused", status=heard.status)}]
    lines = [{"who": "ivrs", "lang": language, "text": text.strip()}
             for language, text in heard.says if text.strip()]
    if heard.ended:
        lines.append({"who": "note", "text": words("web.softphone.ended")})
    return lines


def _answer(state: dict, new_lines: list[dict], status: int = 200, *, reset: bool = False):
    """The page, or for the script the lines to add (``reset``: in place of the
    transcript shown) and what the call waits for."""
    call = state.get("call")
    waits = None
    if call and call.get("action"):
        waits = "one" if call.get("one_key") else "digits"
    if request.accept_mimetypes.best == "application/json":
        return jsonify(lines=new_lines, reset=reset, in_call=bool(call), waits=waits,
                       secret=bool(call and call.get("secret"))), status
    return page("softphone.html", status, lines=state["lines"], in_call=bool(call),
                waits=waits, secret=bool(call and call.get("secret")))


def _went_on(state: dict, phone: Phone, heard: Heard) -> list[dict]:
    """After an answer: keep where the call is, or end it as Twilio would."""
    lines = _heard_lines(heard)
    if heard.status != 200 or heard.ended:
        if heard.status == 200:
            phone.hang_up("completed")  # Twilio's status callback at the end of a call
        state["call"] = None
    else:
        state["call"] = {**phone.line_state(), "one_key": heard.gather.get("numDigits") == "1",
                         "secret": asks_for_pin(heard)}
    state["lines"].extend(lines)
    _keep(state)
    return lines


@blueprint.get("/softphone")
def softphone():
    state = _kept()
    return _answer(state, [])


@blueprint.post("/softphone/dial")
def softphone_dial():
    state = _kept()
    phone = _phone()
    if state.get("call"):  # a call still open: it ends before the next starts
        phone.resume(state["call"]).hang_up("completed")
    state = {"call": None, "lines": [{"who": "note", "text": words("web.softphone.dialing")}]}
    heard = phone.dial()
    _went_on(state, phone, heard)
    return _answer(state, state["lines"], reset=True)


@blueprint.post("/softphone/press")
def softphone_press():
    state = _kept()
    # A keypad button (``key``) without the script; the typed entry (``keys``) otherwise.
    keys = (request.form.get("key") or request.form.get("keys", "")).strip()
    silence = request.form.get("silence") is not None
    if not state.get("call"):
        return _answer(state, [], 409)
    if not silence and not _KEYS.match(keys):
        note = {"who": "note", "text": words("web.softphone.bad_keys")}
        return _answer({**state, "lines": [*state["lines"], note]}, [note], 422)
    phone = _phone().resume(state["call"])
    # A PIN is not written down, here as on the terminal's phone.
    shown = re.sub(r"[0-9*]", "•", keys) if state["call"].get("secret") else keys
    pressed = {"who": "you", "text": words("web.softphone.silence") if silence else shown}
    state["lines"].append(pressed)
    heard = phone.press(None if silence else keys)
    return _answer(state, [pressed, *_went_on(state, phone, heard)])


@blueprint.post("/softphone/hang-up")
def softphone_hang_up():
    state = _kept()
    lines: list[dict] = []
    if state.get("call"):
        _phone().resume(state["call"]).hang_up("completed")
        lines = [{"who": "note", "text": words("web.softphone.hung_up")}]
        state["call"] = None
        state["lines"].extend(lines)
        _keep(state)
    return _answer(state, lines)
