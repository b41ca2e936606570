"""One SMS webhook request: de-duplicate, identify the sender, run the dialog, reply.

- Twilio may deliver a message twice: the reply is kept under its
  ``MessageSid`` for a day, and a repeat gets the same reply and does nothing
  (the transactions a message starts are keyed by it too, so even a repeat
  after a crash, before the reply was kept, acts once). While a message is
  being answered, its ``MessageSid`` is claimed for a minute only: a repeat
  meanwhile waits a few seconds for the reply, then gets an apology (the
  message is not lost in silence); a claim left by a worker killed mid-message
  lapses, and the message can be answered again.
- An unknown number gets one generic reply a day and nothing else: no study,
  no hint of what the service is for.
- A reply longer than three segments is cut at the last part that fits, with
  a note saying so (SPEC §7: never more than three); Latin letters GSM-7 lacks
  are written without their accent when that keeps the reply GSM-7
  (``ivrs.render.sms_text.for_sms``).
- The message body is never logged: it may be a PIN.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from core import fields
from core.db import Database
from core.login import PhoneUsers, users_for_phone
from core.security_events import security_event
from dialogs.output import Say
from dialogs.sms import SESSION_IDLE_SECONDS, TextContext, new_session, run
from ivrs.conversations.sessions import SessionStore
from ivrs.render.sms_text import MAX_SEGMENTS, for_sms, segments
from ivrs.render.speech import text
from ivrs.render.twiml import sms_response

log = logging.getLogger("ivrs.texts")

MAX_BODY = 1600  # Twilio's longest message (ten segments); anything longer is not one
REPLY_KEPT_SECONDS = 24 * 60 * 60
CLAIM_SECONDS = 60  # longer than any request takes; a dead worker's claim lapses
REPEAT_WAITS_SECONDS = 5.0  # how long a repeat waits for the first delivery's reply
UNKNOWN_SENDER_SECONDS = 24 * 60 * 60  # one generic reply per number per day


@dataclass(frozen=True)
class TextRequest:
    message_sid: str
    sender: str
    to: str | None
    body: str


def parse_request(form: dict[str, str]) -> TextRequest:
    """Twilio's fields, checked (``core.fields``); ``BadField`` names the first that
    cannot be Twilio's (a JSON body has none of them). The body is free text: the
    dialog reads it, and what goes back passes the SMS medium's filter."""
    sid = fields.sid(form.get("MessageSid") or form.get("SmsSid"))
    if sid is None:
        raise fields.BadField("MessageSid")
    sender = fields.phone(form.get("From"))
    if sender is None:
        raise fields.BadField("From")
    body = form.get("Body") or ""
    if len(body) > MAX_BODY:
        raise fields.BadField("Body")
    return TextRequest(sid, sender, fields.phone(form.get("To")), body)


def answer(db: Database, store: SessionStore, request: TextRequest) -> str:
    """The TwiML reply to one message (exceptions are the webhook's to turn into
    an apology)."""
    # Who is texting first, then the claim and the sender's session in one round
    # trip to the store (the session's key names the study). A repeat delivery
    # pays this one read too, and does nothing else.
    users = users_for_phone(db, phone=request.sender, dialed=request.to)
    key = f"sms:{users.study}:{request.sender}" if users.user_codes else None
    kept_key = f"sms:reply:{request.message_sid}"
    claimed, session = store.claim_and_load(kept_key, CLAIM_SECONDS, key)
    if not claimed:
        kept = _reply_of_first_delivery(store, kept_key)
        if kept is None:
            log.warning("sms %s delivered again while its first delivery is unanswered: "
                        "apology", request.message_sid)
            return apology()
        log.info("sms %s delivered again: same reply, nothing done", request.message_sid)
        return kept
    try:
        twiml, session_writes = _answer(db, store, request, users, session)
    except Exception:
        store.delete(kept_key)  # not answered: a retry must run again
        raise
    # The sender's session and the kept reply in one round trip. A message whose
    # reply failed to render saves no session either: its retry starts from the
    # same state, and what it did is keyed by its MessageSid (acts once).
    store.save_all([*session_writes, (kept_key, {"twiml": twiml}, REPLY_KEPT_SECONDS)])
    return twiml


def _reply_of_first_delivery(store: SessionStore, kept_key: str) -> str | None:
    """The reply kept for a message already claimed, waiting a few seconds for
    it when the first delivery is still being answered; None if none comes."""
    deadline = time.monotonic() + REPEAT_WAITS_SECONDS
    while True:
        twiml = (store.load(kept_key) or {}).get("twiml")
        if twiml is not None or time.monotonic() >= deadline:
            return twiml
        time.sleep(0.1)


SessionWrite = tuple[str, dict, int]  # key, session, seconds it is kept


def _answer(db: Database, store: SessionStore, request: TextRequest, users: PhoneUsers,
            session: dict | None) -> tuple[str, list[SessionWrite]]:
    """The reply, and the session to save with it (none for an unknown sender or
    a session that just ended). ``session``: the sender's, as stored (None: none)."""
    study = users.study
    if not users.user_codes:
        return _unknown_sender(store, study, request), []
    key = f"sms:{study}:{request.sender}"
    signed_in = (session or {}).get("user", {}).get("user_code")
    if session is None or (signed_in and signed_in not in users.user_codes):
        # New, or its user was deactivated since: the phone starts over.
        session = new_session(users.language)
    elif signed_in in users.locked:
        # Locked since (wrong PINs on a call, an administrator): the session ends now.
        store.delete(key)
        return reply([Say("error.locked")], session["language"]), []
    ctx = TextContext(db, study, request.message_sid, request.sender, users.user_codes)
    before = session["state"]
    says = run(session, ctx, request.body)
    log.info("sms %s: %s -> %s", request.message_sid, before, session["state"])
    return reply(says, session["language"]), [(key, session, SESSION_IDLE_SECONDS)]


def _unknown_sender(store: SessionStore, study: str, request: TextRequest) -> str:
    security_event("unknown_caller", channel="sms", request=request.message_sid)
    if store.claim(f"sms:unknown:{study}:{request.sender}", UNKNOWN_SENDER_SECONDS):
        log.info("sms %s from an unregistered number: generic reply", request.message_sid)
        return reply([Say("sms.unknown_sender")], "en")
    log.info("sms %s from an unregistered number: no reply (one a day)", request.message_sid)
    return empty_reply()


def reply(says: list[Say], language: str) -> str:
    """One ``<Message>``: the parts in order, as many as fit in three segments."""
    parts: list[str] = []
    for say in says:
        words = for_sms(text(say, language))
        if not words:
            continue
        if _segments(parts, words) > MAX_SEGMENTS:
            parts.append(for_sms(text(Say("sms.reply_cut"), language)))
            while len(parts) > 1 and _segments(parts) > MAX_SEGMENTS:
                del parts[-2]
            break
        parts.append(words)
    return sms_response(for_sms(" ".join(parts)) if parts else None)


def _segments(parts: list[str], *more: str) -> int:
    return segments(for_sms(" ".join([*parts, *more]))).count


def empty_reply() -> str:
    return sms_response(None)


def apology() -> str:
    """What a texter reads when something failed on our side: never a 500."""
    return sms_response(text(Say("sms.apology"), "en"))


def not_understood() -> str:
    """What a request reads whose fields cannot be Twilio's (no MessageSid, no
    sender, a JSON body): not an apology for a fault of ours."""
    return sms_response(text(Say("sms.not_understood"), "en"))
