"""One SMS webhook request: de-duplicate, identify the sender, run the dialog, reply.

- Twilio may deliver a message twice: the reply is kept under its
  ``MessageSid`` for a day, and a repeat gets the same reply and does nothing
  (the transactions a message starts are keyed by it too, so even a repeat
  after a crash, before the reply was kept, acts once).
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
import re
from dataclasses import dataclass

from twilio.twiml.messaging_response import MessagingResponse

from core.db import Database
from core.login import users_for_phone
from dialogs.output import Say
from dialogs.sms import SESSION_IDLE_SECONDS, TextContext, new_session, run
from ivrs.conversations.sessions import SessionStore
from ivrs.render.sms_text import MAX_SEGMENTS, for_sms, segments
from ivrs.render.speech import text

log = logging.getLogger("ivrs.texts")

_MESSAGE_SID = re.compile(r"^[A-Za-z0-9]{10,64}$")
_PHONE = re.compile(r"^\+?[0-9]{3,20}$")
REPLY_KEPT_SECONDS = 24 * 60 * 60
UNKNOWN_SENDER_SECONDS = 24 * 60 * 60  # one generic reply per number per day


@dataclass(frozen=True)
class TextRequest:
    message_sid: str
    sender: str
    to: str | None
    body: str


def parse_request(form: dict[str, str]) -> TextRequest | None:
    """Twilio's fields, checked; None when they cannot be a message of ours."""
    sid = (form.get("MessageSid") or form.get("SmsSid") or "").strip()
    sender = (form.get("From") or "").strip()
    if not _MESSAGE_SID.match(sid) or not _PHONE.match(sender):
        return None
    return TextRequest(sid, sender, form.get("To") or None, form.get("Body") or "")


def answer(db: Database, store: SessionStore, request: TextRequest) -> str:
    """The TwiML reply to one message (exceptions are the webhook's to turn into
    an apology)."""
    kept_key = f"sms:reply:{request.message_sid}"
    if not store.claim(kept_key, REPLY_KEPT_SECONDS):
        kept = store.load(kept_key) or {}
        log.info("sms %s delivered again: same reply, nothing done", request.message_sid)
        return kept.get("twiml") or empty_reply()
    try:
        twiml = _answer(db, store, request)
    except Exception:
        store.delete(kept_key)  # not answered: a retry must run again
        raise
    store.save(kept_key, {"twiml": twiml}, REPLY_KEPT_SECONDS)
    return twiml


def _answer(db: Database, store: SessionStore, request: TextRequest) -> str:
    users = users_for_phone(db, phone=request.sender, dialed=request.to)
    study = users.study
    if not users.user_codes:
        return _unknown_sender(store, study, request)
    key = f"sms:{study}:{request.sender}"
    session = store.load(key)
    signed_in = (session or {}).get("user", {}).get("user_code")
    if session is None or (signed_in and signed_in not in users.user_codes):
        # New, or its user was deactivated since: the phone starts over.
        session = new_session(users.language)
    elif signed_in in users.locked:
        # Locked since (wrong PINs on a call, an administrator): the session ends now.
        store.delete(key)
        return reply([Say("error.locked")], session["language"])
    ctx = TextContext(db, study, request.message_sid, request.sender, users.user_codes)
    before = session["state"]
    says = run(session, ctx, request.body)
    log.info("sms %s: %s -> %s", request.message_sid, before, session["state"])
    store.save(key, session, SESSION_IDLE_SECONDS)
    return reply(says, session["language"])


def _unknown_sender(store: SessionStore, study: str, request: TextRequest) -> str:
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
    response = MessagingResponse()
    if parts:
        response.message(for_sms(" ".join(parts)))
    return str(response)


def _segments(parts: list[str], *more: str) -> int:
    return segments(for_sms(" ".join([*parts, *more]))).count


def empty_reply() -> str:
    return str(MessagingResponse())


def apology() -> str:
    """What a texter reads when something failed on our side: never a 500."""
    response = MessagingResponse()
    response.message(text(Say("sms.apology"), "en"))
    return str(response)
