"""Every voice flow end to end: signed requests to /voice, TwiML parsed, the
database checked afterwards."""

from __future__ import annotations

import re
from datetime import date, timedelta

from sqlalchemy import func, select

from core.actors import ADMIN
from core.models import AuditEvent, Randomization, Subject, User
from core.models import Kit, Shipment
from core.supply.resupply import run_resupply
from core.supply.shipments import dispatch_shipment
from core.users import add_user, reset_pin
from voice import BARCELONA, DEPOT, PARIS, says

ARM_WORDS = ("Drug X", "Placebo", "10 mg", " arm", "KA", "KP")


def digits(text: str) -> str:
    return text.replace(" ", "")


def spoken_numbers(heard) -> list[str]:
    """Numbers read digit by digit ("1 0 1 0 0 0 1") in what was said."""
    return [digits(m) for m in re.findall(r"\d(?: \d)+", heard.text)]


def screen(phone) -> str:
    phone.press("1")  # screen a subject (one site: straight to the confirmation)
    heard = phone.press("1")
    assert says(heard, "new subject number is"), heard.text
    return spoken_numbers(heard)[0]


def randomize_by_phone(phone, subject: str, sex: str = "2", age: str = "1"):
    phone.press("2")
    phone.press(subject + "#")
    heard = phone.press("1")  # the number read back is right
    assert says(heard, "18 or older"), heard.text
    phone.press("1")
    phone.press("1")
    heard = phone.press("1")  # the last eligibility question
    assert says(heard, "Sex", "For female, press 2"), heard.text
    phone.press(sex)
    heard = phone.press(age)
    assert says(heard, "To randomize, press 1"), heard.text
    return phone.press("1")


def test_first_answer_is_a_gather_with_the_prompt_inside(voice):
    heard = voice.phone().dial()
    assert heard.status == 200
    assert heard.gather["input"] == "dtmf"
    assert heard.gather["finishOnKey"] == "#"
    assert heard.gather["actionOnEmptyResult"] == "true"
    assert heard.action.startswith("voice?step=")
    assert "<Gather" in heard.xml and heard.xml.index("<Say") > heard.xml.index("<Gather")
    assert says(heard, "Enter your user ID")


def test_unregistered_number_hears_the_language_menu(voice):
    heard = voice.phone("+15550001111").dial()
    assert heard.gather["numDigits"] == "1"
    # The study's five languages, in its order, each option said in its own
    # language with its own voice; the digit is the position.
    languages = [language for language, _ in heard.says]
    assert languages[-5:] == ["en-US", "fr-FR", "es-ES", "de-DE", "ja-JP"]
    for digit, (_, words) in enumerate(heard.says[-5:], start=1):
        assert str(digit) in words, words


def test_menu_offers_only_the_role_s_options(voice):
    coordinator = voice.signed_in()
    assert [d for d in "123456789" if f"press {d}" in coordinator.last.text
            or f", {d}." in coordinator.last.text] == list("12345689")
    depot = voice.signed_in(DEPOT, "7001", "1122")
    menu = depot.last.text
    assert "8." in menu and "9." in menu and "randomize" not in menu
    heard = depot.press("2")
    assert says(heard, "not available")


def test_screen_a_subject(voice):
    phone = voice.signed_in()
    subject = screen(phone)
    assert subject == "1010001"
    with voice.db.sessions() as session:
        row = session.execute(select(Subject).where(Subject.subject_number == subject)).scalar_one()
        assert row.status == "screened" and row.screened_by == "user:5001"


def test_randomize_speaks_number_and_kit_never_the_arm(voice):
    phone = voice.signed_in()
    subject = screen(phone)
    heard = randomize_by_phone(phone, subject)
    assert says(heard, f"Subject {' '.join(subject)} is randomized", "give kit",
                "Confirmation number"), heard.text
    assert not any(word in heard.text for word in ARM_WORDS)
    with voice.db.sessions() as session:
        randomization = session.execute(select(Randomization)).scalar_one()
        kit = session.execute(select(Kit).where(Kit.subject_id == randomization.subject_id)
                              ).scalar_one()
    numbers = spoken_numbers(heard)
    assert randomization.randomization_number in numbers
    assert kit.kit_number in numbers and kit.status == "assigned"
    assert randomization.factors == {"SEX": "F", "AGE": "LT65"}


def test_a_no_to_eligibility_stops_and_is_recorded(voice):
    phone = voice.signed_in()
    subject = screen(phone)
    phone.press("2")
    phone.press(subject + "#")
    phone.press("1")
    phone.press("1")
    heard = phone.press("2")  # INC2: no
    assert says(heard, "not eligible", "recorded"), heard.text
    with voice.db.sessions() as session:
        assert session.execute(select(func.count()).select_from(Randomization)).scalar() == 0
        refused = session.execute(select(AuditEvent).where(
            AuditEvent.action == "randomization_refused")).scalar_one()
        assert refused.new["eligibility"] == {"INC1": True, "INC2": False}


def test_randomize_refuses_another_site_s_subject(voice):
    barcelona = voice.signed_in(BARCELONA, "5002", "1357")
    other = screen(barcelona)
    phone = voice.signed_in()
    phone.press("2")
    phone.press(other + "#")
    heard = phone.press("1")
    assert says(heard, "not one of your sites", "Enter the subject number")


def test_dispense_at_the_visit_due(voice, monkeypatch):
    phone = voice.signed_in()
    subject = screen(phone)
    randomize_by_phone(phone, subject)
    monkeypatch.setenv("IVRS_TODAY", str(date(2026, 11, 23) + timedelta(days=28)))
    phone = voice.signed_in()
    phone.press("3")
    phone.press(subject + "#")
    heard = phone.press("1")
    assert says(heard, "Due now: visit 2, 2 kits"), heard.text
    heard = phone.press("1")
    kits = [n for n in spoken_numbers(heard) if len(n) == 6][:2]
    assert says(heard, "For visit 2, give kit") and len(kits) == 2
    with voice.db.sessions() as session:
        assigned = set(session.execute(select(Kit.kit_number).where(
            Kit.visit_code == "V2")).scalars())
    assert assigned == set(kits)


def test_replace_a_damaged_kit(voice):
    phone = voice.signed_in()
    subject = screen(phone)
    first = randomize_by_phone(phone, subject)
    kit = [n for n in spoken_numbers(first) if len(n) == 6][0]
    phone.press("4")
    phone.press(subject + "#")
    phone.press("1")
    phone.press(kit + "#")
    heard = phone.press("1")
    assert says(heard, "a lost kit, press 1", "a damaged kit, press 2")
    heard = phone.press("2")
    assert says(heard, f"Replace kit {' '.join(kit)}", "a damaged kit? Press 1 to confirm")
    heard = phone.press("1")
    assert says(heard, f"Kit {' '.join(kit)} is replaced", "give kit"), heard.text
    with voice.db.sessions() as session:
        assert session.execute(select(Kit.status).where(Kit.kit_number == kit)).scalar() \
            == "damaged"
        assert session.execute(select(func.count()).where(
            Kit.visit_code == "V1", Kit.status == "assigned")).scalar() == 1


def test_shipment_receipt_with_a_damaged_kit(voice):
    shipments = run_resupply(voice.db, study="DEMO-301")
    to_103 = next(s for s in shipments if s.site == "103")
    dispatch_shipment(voice.db, shipment_number=to_103.shipment_number, carrier="DHL",
                      tracking_number="T1", actor=ADMIN, study="DEMO-301")
    with voice.db.sessions() as session:
        shipment = session.execute(select(Shipment).where(
            Shipment.shipment_number == to_103.shipment_number)).scalar_one()
        kit = sorted(k.kit_number for k in session.execute(
            select(Kit).where(Kit.shipment_id == shipment.id)).scalars())[0]
    phone = voice.signed_in("+4915112345678", "5003", "8642")
    phone.press("5")
    phone.press(to_103.shipment_number + "#")
    heard = phone.press("1")
    assert says(heard, f"{to_103.kits} kits", "good condition, press 1"), heard.text
    phone.press("2")
    heard = phone.press(kit + "#")
    assert says(heard, "If damaged, press 1")
    phone.press("1")
    heard = phone.press("#")  # hash alone: the list is complete
    assert says(heard, f"{to_103.kits} kits, 1 damaged, 0 missing"), heard.text
    heard = phone.press("1")
    assert says(heard, "is received", f"{to_103.kits - 1} kits available"), heard.text
    with voice.db.sessions() as session:
        assert session.execute(select(Shipment.status).where(
            Shipment.shipment_number == to_103.shipment_number)).scalar() == "received"
        assert session.execute(select(Kit.status).where(Kit.kit_number == kit)).scalar() \
            == "damaged"


def test_a_kit_not_in_the_shipment_is_refused_at_once(voice):
    shipments = run_resupply(voice.db, study="DEMO-301")
    to_103 = next(s for s in shipments if s.site == "103")
    dispatch_shipment(voice.db, shipment_number=to_103.shipment_number, carrier="DHL",
                      tracking_number="T1", actor=ADMIN, study="DEMO-301")
    phone = voice.signed_in("+4915112345678", "5003", "8642")
    phone.press("5")
    phone.press(to_103.shipment_number + "#")
    phone.press("1")
    phone.press("2")
    heard = phone.press("999999#")
    assert says(heard, "not in shipment"), heard.text


def test_screen_failure(voice):
    phone = voice.signed_in()
    subject = screen(phone)
    phone.press("6")
    phone.press(subject + "#")
    heard = phone.press("1")
    assert says(heard, "Screen failure of subject", "consent withdrawn, press 2")
    heard = phone.press("2")
    assert says(heard, "Record the screen failure")
    heard = phone.press("1")
    assert says(heard, "recorded", "Confirmation number")
    with voice.db.sessions() as session:
        assert session.execute(select(Subject.status)).scalar() == "screen_failed"


def test_discontinuation_of_a_randomized_subject(voice):
    phone = voice.signed_in()
    subject = screen(phone)
    randomize_by_phone(phone, subject)
    phone.press("6")
    phone.press(subject + "#")
    heard = phone.press("1")
    assert says(heard, "Discontinuation of subject", "an adverse event, press 1")
    phone.press("1")
    phone.press("1")
    with voice.db.sessions() as session:
        assert session.execute(select(Subject.status)).scalar() == "discontinued"


def test_temporary_pin_must_be_changed_before_the_menu(voice):
    add_user(voice.db, user_code="6001", name="Nurse", role="pharmacist", sites=["101"],
             phone="+33600000001", language="en", pin="1111", actor=ADMIN, study="DEMO-301")
    phone = voice.phone("+33600000001")
    phone.dial()
    phone.press("6001#")
    heard = phone.press("1111#")
    assert says(heard, "temporary", "new PIN")
    heard = phone.press("*")  # no way around it
    assert not says(heard, "To dispense")
    phone.press("4321#")
    heard = phone.press("4322#")
    assert says(heard, "differ", "new PIN")
    phone.press("4321#")
    heard = phone.press("4321#")
    assert says(heard, "PIN is changed", "To dispense at a visit, 3")
    assert not says(heard, "screen a subject")  # a pharmacist's menu
    with voice.db.sessions() as session:
        assert session.execute(select(User.pin_temporary).where(
            User.user_code == "6001")).scalar() is False
    again = voice.phone("+33600000001")
    again.dial()
    again.press("6001#")
    assert says(again.press("4321#"), "To dispense")


def test_change_pin_from_the_menu_and_repeat_the_confirmation(voice):
    phone = voice.signed_in()
    assert says(phone.press("9"), "no confirmation to repeat")
    phone.press("8")
    phone.press("8642#")
    heard = phone.press("8642#")
    assert says(heard, "PIN is changed")
    confirmation = spoken_numbers(heard)[0]
    heard = phone.press("9")
    assert confirmation in spoken_numbers(heard)


def test_three_wrong_pins_lock_the_user(voice):
    phone = voice.phone()
    phone.dial()
    for attempt in range(2):
        phone.press("5001#")
        assert says(phone.press("0000#"), "not valid")
    phone.press("5001#")
    heard = phone.press("0000#")
    assert says(heard, "locked") and heard.hangup
    with voice.db.sessions() as session:
        user = session.execute(select(User).where(User.user_code == "5001")).scalar_one()
        assert user.locked and user.failed_attempts == 3
    phone = voice.phone()
    phone.dial()
    phone.press("5001#")
    assert says(phone.press("2468#"), "locked")


def test_wrong_user_id_and_wrong_pin_sound_the_same(voice):
    phone = voice.phone()
    phone.dial()
    phone.press("9999#")
    unknown_user = phone.press("2468#").text
    phone.press("5001#")
    wrong_pin = phone.press("0000#").text
    assert unknown_user == wrong_pin


def test_readback_2_re_enters_and_star_returns_to_the_menu(voice):
    phone = voice.signed_in()
    phone.press("2")
    phone.press("1019999#")
    heard = phone.press("2")
    assert says(heard, "Enter the subject number")
    heard = phone.press("*")
    assert says(heard, "To screen a subject")


def test_silence_repeats_twice_then_ends_politely(voice):
    phone = voice.signed_in()
    menu = phone.last.text
    assert phone.press(None).text == menu
    assert phone.press(None).text == menu
    heard = phone.press(None)
    assert heard.hangup and says(heard, "Goodbye")


def test_invalid_entries_get_a_message_then_end_after_three(voice):
    phone = voice.signed_in()
    heard = phone.press("7")
    assert says(heard, "not available", "To screen a subject")
    phone.press("0")
    heard = phone.press("7")
    assert heard.hangup and says(heard, "Too many invalid entries")


def test_no_stock_refusal_names_no_arm(voice):
    phone = voice.signed_in("+4915112345678", "5003", "8642")  # site 103 has no kits
    subject = screen(phone)
    heard = randomize_by_phone(phone, subject)
    assert says(heard, "not have enough kits", "urgent shipment"), heard.text
    assert not any(word in heard.text for word in ARM_WORDS)
