"""The webhook door: signatures, step tokens and replays, failures answered in TwiML."""

from __future__ import annotations

import secrets

from helpers import table_counts
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError
from twilio.request_validator import RequestValidator
from voice import PARIS, TOKEN, says

from core.models import Randomization, User
from dialogs.output import Say
from ivrs.app import create_app
from ivrs.config import Settings
from ivrs.conversations import calls
from ivrs.conversations.sessions import MemorySessionStore, SessionStoreError
from ivrs.demo.phone import AppTransport, Phone, parse_twiml
from ivrs.render.speech import text


def call_form() -> dict[str, str]:
    """A new call's fields (a fresh CallSid: sessions may outlive a test in Redis)."""
    return {"CallSid": "CA" + secrets.token_hex(16), "From": PARIS, "To": "+15005550006"}


def test_unsigned_and_wrongly_signed_requests_get_403_and_change_nothing(voice):
    FORM = call_form()
    client = voice.app.test_client()
    before = table_counts(voice.db)
    assert client.post("/voice", data=FORM).status_code == 403
    assert client.post("/voice", data=FORM,
                       headers={"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}).status_code == 403
    # Signed for another URL (a replayed signature from another step): refused too.
    signature = RequestValidator(TOKEN).compute_signature("http://localhost/voice?step=9", FORM)
    assert client.post("/voice?step=1", data=FORM,
                       headers={"X-Twilio-Signature": signature}).status_code == 403
    # Signed with another account's token.
    other = RequestValidator("not-our-token").compute_signature("http://localhost/voice", FORM)
    assert client.post("/voice", data=FORM,
                       headers={"X-Twilio-Signature": other}).status_code == 403
    assert client.post("/voice/status", data=FORM).status_code == 403
    assert table_counts(voice.db) == before
    assert voice.store.load(calls.session_key(FORM["CallSid"])) is None


def test_a_tampered_field_breaks_the_signature(voice):
    phone = voice.signed_in()
    phone.press("2")
    path = "/voice?step=" + phone.last.action.split("=")[1]
    form = {"CallSid": phone.call_sid, "From": PARIS, "To": "+15005550006", "Digits": "1010001"}
    signature = RequestValidator(TOKEN).compute_signature("http://localhost" + path, form)
    response = voice.app.test_client().post(
        path, data={**form, "Digits": "1020001"}, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 403


def test_no_auth_token_configured_refuses_everything(db):
    FORM = call_form()
    app = create_app(Settings(database_url="unused"), db=db, store=MemorySessionStore())
    assert app.test_client().post("/voice", data=FORM).status_code == 403


def test_behind_a_proxy_the_public_url_is_what_is_signed(voice):
    app = create_app(Settings(database_url="unused", twilio_auth_token=TOKEN,
                              public_base_url="https://ivrs.example.org/trial"),
                     db=voice.db, store=voice.store)
    phone = Phone(AppTransport(app), caller=PARIS, auth_token=TOKEN,
                  public_base_url="https://ivrs.example.org/trial")
    assert phone.dial().status == 200
    assert phone.press("5001#").status == 200
    # The same request signed for the internal URL is refused.
    internal = Phone(AppTransport(app), caller=PARIS, auth_token=TOKEN)
    assert internal.dial().status == 403


def test_dev_mode_skips_signatures(voice):
    app = create_app(Settings(database_url="unused", skip_signatures=True), db=voice.db,
                     store=MemorySessionStore())
    assert Phone(AppTransport(app), caller=PARIS).dial().status == 200


def test_a_replayed_step_gets_the_same_twiml_and_randomizes_once(voice):
    phone = voice.signed_in()
    phone.press("1")
    subject = "1010001"
    phone.press("1")
    for keys in ("2", subject + "#", "1", "1", "1", "1", "2", "1"):
        phone.press(keys)
    first = phone.press("1")  # randomize
    assert says(first, "is randomized")
    counts = table_counts(voice.db)
    again = phone.repeat_last_request()
    assert again.xml == first.xml
    assert table_counts(voice.db) == counts
    with voice.db.sessions() as session:
        assert session.execute(select(func.count()).select_from(Randomization)).scalar() == 1
    # An older step (a very late retry) gets the latest answer, and does nothing.
    assert phone.repeat_last_request().xml == first.xml


def test_a_retry_after_a_lost_session_cannot_randomize_twice(voice):
    """The crash case: the transaction committed but the session was not saved.
    The retry runs the step again; its idempotency key (call + step) replays."""
    phone = voice.signed_in()
    phone.press("1")
    phone.press("1")
    for keys in ("2", "1010001#", "1", "1", "1", "1", "2", "1"):
        phone.press(keys)
    key = calls.session_key(phone.call_sid)
    saved = voice.store.load(key)
    first = phone.press("1")
    voice.store.save(key, saved, 60)  # as if the first attempt died before saving
    again = phone.repeat_last_request()
    assert again.text == first.text
    with voice.db.sessions() as session:
        assert session.execute(select(func.count()).select_from(Randomization)).scalar() == 1


def test_an_unknown_or_expired_session_starts_over_politely(voice):
    phone = voice.signed_in()
    voice.store.delete(calls.session_key(phone.call_sid))
    heard = phone.press("2")
    assert heard.status == 200
    assert says(heard, "interrupted", "start again", "user ID")


def test_status_callback_ends_the_call_for_good(voice):
    """After Twilio says the call is over, a later signed request with its CallSid
    and the step it was issued continues nothing (and keeps no sign-in)."""
    phone = voice.signed_in()
    form = {"CallSid": phone.call_sid, "CallStatus": "completed"}
    signature = RequestValidator(TOKEN).compute_signature("http://localhost/voice/status", form)
    response = voice.app.test_client().post("/voice/status", data=form,
                                            headers={"X-Twilio-Signature": signature})
    assert response.status_code == 204
    session = voice.store.load(calls.session_key(phone.call_sid))
    assert session["ended"] and "user" not in session
    heard = phone.press("1")
    assert heard.hangup and says(heard, "could not be understood"), heard.text


class _DownStore(MemorySessionStore):
    def load(self, key):
        raise SessionStoreError("connection refused")

    def ping(self):
        return False


def test_a_session_store_failure_is_an_apology_not_a_500(voice):
    app = create_app(Settings(database_url="unused", twilio_auth_token=TOKEN), db=voice.db,
                     store=_DownStore())
    heard = Phone(AppTransport(app), caller=PARIS, auth_token=TOKEN).dial()
    assert heard.status == 200 and heard.hangup and says(heard, "sorry")
    assert app.test_client().get("/healthz").status_code == 503


def screening_fails_with_the_database(voice, monkeypatch):
    """A signed-in phone whose next key (confirming a screening) meets a database
    that dropped the connection; returns what that key heard."""
    phone = voice.signed_in()
    phone.press("1")

    def down(*args, **kwargs):
        raise OperationalError("INSERT ...", {}, Exception("server closed the connection"))

    monkeypatch.setattr("dialogs.voice.enrolment.screen_subject", down)
    return phone.press("1")


def test_a_database_failure_is_an_apology_not_a_500(voice, monkeypatch):
    heard = screening_fails_with_the_database(voice, monkeypatch)
    assert heard.status == 200 and heard.hangup and says(heard, "sorry")


def test_the_apology_is_in_the_callers_language_when_the_session_knows_it(voice, monkeypatch):
    with voice.db.sessions() as session, session.begin():
        session.execute(update(User).where(User.user_code == "5001").values(language="fr"))
    heard = screening_fails_with_the_database(voice, monkeypatch)
    assert heard.status == 200 and heard.hangup
    assert heard.says == [("fr-FR", text(Say("apology"), "fr"))]


def test_missing_call_sid_or_bad_step_is_answered_in_twiml(voice):
    FORM = call_form()
    client = voice.app.test_client()
    for path, form in (("/voice", {"From": PARIS}), ("/voice?step=abc", FORM),
                       ("/voice?step=-1", FORM)):
        signature = RequestValidator(TOKEN).compute_signature("http://localhost" + path, form)
        response = client.post(path, data=form, headers={"X-Twilio-Signature": signature})
        assert response.status_code == 200
        heard = parse_twiml(200, response.get_data(as_text=True))
        assert heard.hangup


def test_healthz_answers_when_database_and_store_answer(voice):
    response = voice.app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"database": "ok", "sessions": "ok"}


def test_logs_name_the_call_and_never_the_pin(voice, caplog):
    caplog.set_level("INFO")
    phone = voice.phone()
    phone.dial()
    phone.press("5001#")
    phone.press("2468#")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert phone.call_sid in logged
    assert "2468" not in logged


def test_signatures_with_a_port_or_with_sha256_are_accepted(voice):
    FORM = call_form()
    client = voice.app.test_client()
    validator = RequestValidator(TOKEN)
    with_port = validator.compute_signature("http://localhost:80/voice", FORM)
    assert client.post("/voice", data=FORM,
                       headers={"X-Twilio-Signature": with_port}).status_code == 200
    form = {**FORM, "CallSid": "CA" + "2" * 32}
    sha256 = validator.compute_signature("http://localhost/voice", form, "HMAC_SHA256")
    headers = {"X-Twilio-Signature": sha256,
               "X-Twilio-Webhooks-Signature-Settings": "key=k1,algorithm=HMAC_SHA256"}
    assert client.post("/voice", data=form, headers=headers).status_code == 200
    # The same SHA-256 signature claimed as the classic SHA-1 one does not pass.
    assert client.post("/voice", data=form,
                       headers={"X-Twilio-Signature": sha256}).status_code == 403
    # An algorithm the library does not know is refused, not an error.
    headers["X-Twilio-Webhooks-Signature-Settings"] = "algorithm=HMAC_MD5"
    assert client.post("/voice", data=form, headers=headers).status_code == 403
    # A signature header that is not ASCII is refused, not an error.
    assert client.post("/voice", data=form,
                       headers={"X-Twilio-Signature": "signé"}).status_code == 403
