"""Sign-in state at every step (issue 16): a lock or a deactivation takes effect
at the caller's next keypress or message, and a call that ended, because its
dialog hung up or Twilio said so, cannot be continued by a later request."""

from __future__ import annotations

import urllib.parse

from sqlalchemy import update
from voice import PARIS, says

from core.actors import ADMIN
from core.models import User
from core.users import set_locked
from ivrs.conversations import calls


def test_a_user_locked_mid_call_is_stopped_at_the_next_key(voice):
    phone = voice.signed_in()
    phone.press("1")  # screen a subject: the confirmation is asked
    set_locked(voice.db, user_code="5001", locked=True, actor=ADMIN, reason="left the site")
    heard = phone.press("1")
    assert heard.hangup and says(heard, "Your access is locked"), heard.text
    assert not says(heard, "new subject number")
    # Nothing of the call continues: the same step again is its own answer, a later one nothing.
    assert phone.repeat_last_request().text == heard.text
    status, body = phone._send(f"/voice?step={_next_step(phone)}", {"Digits": "1"})
    assert status == 200 and "could not be understood" in body


def test_a_user_deactivated_mid_call_is_stopped_at_the_next_key(voice):
    phone = voice.signed_in()
    with voice.db.transaction() as session:
        session.execute(update(User).where(User.user_code == "5001").values(active=False))
    heard = phone.press("9")
    assert heard.hangup and says(heard, "Your access is locked"), heard.text


def test_a_call_whose_dialog_hung_up_cannot_be_continued(voice):
    phone = voice.phone(PARIS)
    heard = phone.dial()
    while not heard.hangup:
        heard = phone.press(None)  # silence, again and again: the dialog ends the call
    session = voice.store.load(calls.session_key(phone.call_sid))
    assert session["ended"]
    for step in (_next_step(phone), session["step"] + 5):
        status, body = phone._send(f"/voice?step={step}", {"Digits": "5001"})
        assert status == 200 and "could not be understood" in body, body


def test_a_texter_locked_mid_session_is_stopped_at_the_next_message(voice):
    texter = voice.texter()
    texter.send("STOCK")
    texter.send("2468")  # signed in by the PIN
    set_locked(voice.db, user_code="5001", locked=True, actor=ADMIN, reason="left the site")
    reply = texter.send("STOCK")
    assert reply.text == "Your access is locked.", reply.text


def _next_step(phone) -> int:
    """The step after the last request's (a token the call never issued)."""
    path = phone._last_request[0]
    query = urllib.parse.urlsplit(path).query
    return int(urllib.parse.parse_qs(query).get("step", ["0"])[0]) + 1


def test_a_texter_deactivated_mid_session_is_stopped_at_the_next_message(voice):
    texter = voice.texter()
    texter.send("STOCK")
    texter.send("2468")  # signed in by the PIN
    with voice.db.transaction() as session:
        session.execute(update(User).where(User.user_code == "5001").values(active=False))
    reply = texter.send("STOCK")
    # The phone belongs to no active user any more: the one generic reply, no stock.
    assert "registered" in reply.text.lower() and "stock" not in reply.text.lower(), reply.text
