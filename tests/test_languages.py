"""A call and an SMS exchange in French and in Japanese, end to end: the `<Say
language>` of the caller's language, the catalog's translation, dates, numbers
and digits the language's way, SMS in the right encoding; keywords in the
sender's language."""

from __future__ import annotations

from datetime import date

import pytest
from babel.dates import format_date
from sqlalchemy import select, update
from test_sms_flows import randomized_subject

from core.models import User
from dialogs.output import Digits, Say
from ivrs.render.sms_text import segments
from ivrs.render.speech import available_languages, say_language, text
from voice import PARIS


def speak(db, user_code: str, language: str) -> None:
    with db.transaction() as session:
        session.execute(update(User).where(User.user_code == user_code)
                        .values(language=language))


@pytest.mark.parametrize("language, say_code", [("fr", "fr-FR"), ("ja", "ja-JP")])
def test_a_call_in_the_caller_s_language(voice, language, say_code):
    speak(voice.db, "5001", language)
    phone = voice.phone(PARIS)
    heard = phone.dial()  # a registered number: no language menu, the user's language
    assert {spoken for spoken, _ in heard.says} == {say_code}
    assert heard.text == " ".join([text(Say("welcome"), language),
                                   text(Say("login.user_id"), language)])
    assert heard.text != " ".join([text(Say("welcome"), "en"), text(Say("login.user_id"), "en")])
    phone.press("5001#")
    heard = phone.press("2468#")
    assert {spoken for spoken, _ in heard.says} == {say_code}
    phone.press("1")  # screen a subject
    heard = phone.press("1")
    # The new number, read one digit at a time inside the translated sentence.
    assert "1 0 1 0 0 0 1" in heard.text
    assert text(Say("screen.done", {"subject": Digits("1010001"),
                                    "confirmation": Digits("000001")}), language)[:8] \
        in heard.text


@pytest.mark.parametrize("language, encoding", [("fr", "GSM-7"), ("ja", "UCS-2")])
def test_an_sms_exchange_in_the_sender_s_language(voice, language, encoding):
    subject, (kit,) = randomized_subject(voice.db)
    speak(voice.db, "5001", language)
    texter = voice.texter(PARIS)
    asked = texter.send(f"STATUS {subject}")
    assert asked.text == text(Say("sms.ask_pin"), language) != text(Say("sms.ask_pin"), "en")
    reply = texter.send("2468")
    # The next visit's window in the language's own long date form.
    start = format_date(date(2026, 12, 18), format="long", locale=language)
    assert start in reply.text, reply.text
    assert segments(reply.text).encoding == encoding
    assert segments(reply.text).count <= 3
    confirmed = texter.send(f"KIT {kit}")
    english = text(Say("sms.kit_confirmed", {"kit": kit, "subject": subject, "visit": "V1",
                                             "confirmation": "000000"}), "en")
    assert kit in confirmed.text and subject in confirmed.text
    assert english.split(kit)[1][:12] not in confirmed.text  # not the English sentence


def test_lang_by_sms_switches_the_replies_and_the_next_call(voice):
    texter = voice.texter(PARIS)
    texter.send("HELP")
    texter.send("2468")
    reply = texter.send("LANG ja")
    assert "日本語" in reply.text and segments(reply.text).encoding == "UCS-2"
    heard = voice.phone(PARIS).dial()
    assert {spoken for spoken, _ in heard.says} == {"ja-JP"}
    with voice.db.sessions() as session:
        assert session.scalar(select(User.language).where(User.user_code == "5001")) == "ja"


def test_a_japanese_keyword_and_full_width_digits(voice):
    subject, _ = randomized_subject(voice.db)
    speak(voice.db, "5001", "ja")
    texter = voice.texter(PARIS)
    texter.send("在庫")
    reply = texter.send("２４６８")  # the PIN as a Japanese keyboard types it
    assert reply.text.startswith(text(Say("sms.stock", {
        "site": "101", "available": 0, "quarantined": 0, "incoming": 0}), "ja")[:4]), \
        reply.text
    full_width = subject.translate(str.maketrans("0123456789", "０１２３４５６７８９"))
    assert "2026年12月18日" in texter.send(f"状態 {full_width}").text


def test_every_shipped_language_has_its_own_twilio_language_and_voice():
    from ivrs.render.speech import say_voice

    languages = available_languages()
    assert len({say_language(lang) for lang in languages}) == len(languages)
    assert len({say_voice(lang) for lang in languages}) == len(languages)
    assert say_language("zh_CN") == "cmn-CN"


def test_the_terminal_phone_hides_a_pin_asked_in_japanese(voice):
    from ivrs.demo.terminal import asks_for_pin

    speak(voice.db, "5001", "ja")
    phone = voice.phone(PARIS)
    assert not asks_for_pin(phone.dial())  # the user ID is shown as typed
    assert asks_for_pin(phone.press("5001#"))  # 暗証番号を入力し…


def test_every_say_names_the_language_s_voice(voice):
    import xml.etree.ElementTree as ET

    from ivrs.render.speech import SAY_VOICES

    speak(voice.db, "5001", "ja")
    heard = voice.phone(PARIS).dial()
    says = list(ET.fromstring(heard.xml).iter("Say"))
    assert says and all(s.get("voice") == SAY_VOICES["ja"] == "Polly.Mizuki" for s in says)
    menu = ET.fromstring(voice.phone("+15550001111").dial().xml).iter("Say")
    assert {(s.get("language"), s.get("voice")) for s in menu} >= {
        ("fr-FR", "Polly.Lea"), ("ja-JP", "Polly.Mizuki"), ("en-US", "Polly.Joanna")}


def test_a_new_user_speaks_their_site_s_language_unless_told(voice):
    from core.actors import ADMIN
    from core.users import add_user

    add_user(voice.db, user_code="5101", name="Ana Pérez", role="site_coordinator",
             sites=["102"], phone="+34600000101", language=None, pin="4321", actor=ADMIN,
             study="DEMO-301")  # site 102 speaks Spanish (the study file)
    add_user(voice.db, user_code="5102", name="Hans Meier", role="site_coordinator",
             sites=["102"], phone="+34600000102", language="de", pin="4321", actor=ADMIN,
             study="DEMO-301")
    add_user(voice.db, user_code="7101", name="Depot Two", role="depot_manager", sites=[],
             phone="+4930555002", language=None, pin="4321", actor=ADMIN, study="DEMO-301")
    with voice.db.sessions() as session:
        languages = dict(session.execute(select(User.user_code, User.language).where(
            User.user_code.in_(["5101", "5102", "7101"]))).all())
    assert languages == {"5101": "es", "5102": "de", "7101": "en"}  # en: the study's first


def test_the_language_menu_digit_is_the_position_in_the_study_languages(voice):
    # DEMO-301 offers en, fr, es, de, ja in that order.
    for digit, say_code in (("2", "fr-FR"), ("5", "ja-JP")):
        phone = voice.phone("+15550001111")
        phone.dial()
        heard = phone.press(digit)
        assert {spoken for spoken, _ in heard.says} == {say_code}
        language = {"2": "fr", "5": "ja"}[digit]
        assert heard.text.endswith(text(Say("login.user_id"), language))
