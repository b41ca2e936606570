"""Every SMS command end to end (SPEC §7): signed requests to /sms, the TwiML reply
parsed, the database checked afterwards."""

from __future__ import annotations

import os
from datetime import date, timedelta

import pytest
from helpers import table_counts
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError
from voice import BARCELONA, PARIS, TOKEN, UNKNOWN

from core.actors import ADMIN, Actor
from core.models import AuditEvent, Site, Subject, User
from core.randomize import randomize
from core.subjects import screen_subject
from core.models import Kit, Notification, Shipment
from core.supply.resupply import run_resupply
from core.supply.shipments import dispatch_shipment
from core.users import add_user, reset_pin, set_locked
from ivrs.app import create_app
from ivrs.config import Settings
from ivrs.demo.phone import AppTransport
from ivrs.conversations.sessions import MemorySessionStore, SessionStoreError
from ivrs.render.sms_text import segments
from ivrs.demo.texter import Texter

STUDY = "DEMO-301"
MARIE = Actor(role="site_coordinator", user_code="5001", site_codes=frozenset({"101"}),
              channel="voice")
ARM_WORDS = ("Drug X", "Placebo", "10 mg", "KA", "KP")


def randomized_subject(db, actor: Actor = MARIE, site: str = "101") -> tuple[str, list[str]]:
    """A subject randomized by phone at ``site``: its number and its V1 kits (pending)."""
    subject = screen_subject(db, site_code=site, actor=actor, study=STUDY).subject_number
    randomize(db, subject_number=subject, actor=actor, study=STUDY,
              eligibility={"INC1": True, "INC2": True, "EXC1": True},
              factors={"SEX": "F", "AGE": "LT65"})
    with db.sessions() as session:
        kits = sorted(session.scalars(select(Kit.kit_number).join(
            Subject, Subject.id == Kit.subject_id).where(Subject.subject_number == subject)))
    return subject, kits


def kit_status(db, number: str) -> tuple[str, object]:
    with db.sessions() as session:
        return session.execute(select(Kit.status, Kit.confirmed_at).where(
            Kit.kit_number == number)).one()


def signed_in(voice, sender: str = PARIS, pin: str = "2468"):
    texter = voice.texter(sender)
    assert "PIN" in texter.send("HELP").text
    reply = texter.send(pin)
    assert "KIT" in reply.text and "DISP" in reply.text, reply.text  # HELP ran after the PIN
    return texter


def assert_blind(text: str) -> None:
    assert not any(word in text for word in ARM_WORDS), text


# --- kit confirmation ---------------------------------------------------------------------------


def test_kit_command_asks_the_pin_then_confirms(voice):
    subject, (kit,) = randomized_subject(voice.db)
    texter = voice.texter()
    reply = texter.send(f"kit {kit}")
    assert reply.text == "Please reply with your PIN."
    assert kit_status(voice.db, kit)[0] == "assigned"  # nothing before the PIN
    reply = texter.send("2468")
    assert f"Kit {kit} confirmed for subject {subject} visit V1" in reply.text, reply.text
    status, confirmed_at = kit_status(voice.db, kit)
    assert status == "dispensed" and confirmed_at is not None
    assert segments(reply.text).count == 1
    assert_blind(reply.text)


def test_a_bare_kit_number_confirms_the_pending_kit(voice):
    subject, (kit,) = randomized_subject(voice.db)
    texter = voice.texter()
    texter.send(kit)  # opens the session: the number is kept while the PIN is asked
    reply = texter.send("2468")
    assert f"Kit {kit} confirmed" in reply.text, reply.text
    assert kit_status(voice.db, kit)[0] == "dispensed"


def test_a_wrong_kit_names_the_expected_one_and_changes_nothing(voice):
    subject, (kit,) = randomized_subject(voice.db)
    texter = signed_in(voice)
    before = table_counts(voice.db)
    reply = texter.send("KIT 999999")
    assert f"Expected: {kit} (subject {subject} visit V1). Nothing confirmed." in reply.text
    assert table_counts(voice.db) == before
    assert kit_status(voice.db, kit) == ("assigned", None)


def test_a_kit_of_another_subject_says_whose_it_is(voice):
    first, (first_kit,) = randomized_subject(voice.db)
    texter = signed_in(voice)
    texter.send(f"KIT {first_kit}")
    second, (second_kit,) = randomized_subject(voice.db)
    reply = texter.send(f"KIT {first_kit}")
    assert f"Kit {first_kit} of subject {first} was already confirmed" in reply.text
    # A kit of subject 1 given again while subject 2's kit is pending:
    with voice.db.transaction() as session:
        session.execute(Kit.__table__.update().where(Kit.kit_number == first_kit)
                        .values(assigned_by="user:5002"))
    reply = texter.send(f"KIT {first_kit}")
    assert f"Kit {first_kit} belongs to subject {first}" in reply.text, reply.text
    assert kit_status(voice.db, second_kit)[0] == "assigned"


def test_a_retried_message_acts_once_and_gets_the_same_reply(voice):
    _, (kit,) = randomized_subject(voice.db)
    texter = signed_in(voice)
    first = texter.send(f"KIT {kit}")
    again = texter.send(f"KIT {kit}", message_sid=first.message_sid)
    assert again.xml == first.xml
    with voice.db.sessions() as session:
        confirms = session.scalar(select(func.count()).where(
            AuditEvent.action == "kit_confirm", AuditEvent.entity_id == kit))
    assert confirms == 1


# --- dispensing, receipt, stock, status -------------------------------------------------------


def test_disp_dispenses_the_visit_due_and_the_reply_asks_for_the_kits(voice, monkeypatch):
    subject, (v1_kit,) = randomized_subject(voice.db)
    monkeypatch.setenv("IVRS_TODAY", str(date(2026, 11, 23) + timedelta(days=28)))
    texter = signed_in(voice)
    reply = texter.send(f"DISP {subject}")
    with voice.db.sessions() as session:
        v2 = sorted(session.scalars(select(Kit.kit_number).where(Kit.visit_code == "V2")))
        asked = session.scalars(select(Notification.key).where(
            Notification.kind == "kit_confirmation")).all()
    assert len(v2) == 2
    assert f"Subject {subject} visit V2: hand out kit no. {v2[0]}, {v2[1]}." in reply.text
    assert "Reply KIT" in reply.text and segments(reply.text).count == 1
    # The reply asked: no second message for the same kits.
    assert f"kit_confirm:{v2[0]}" not in asked and len(asked) == 1
    reply = texter.send(f"KIT {v2[0]} {v2[1]}")
    assert f"Confirmed: kits {v2[0]}, {v2[1]}, subject {subject} visit V2" in reply.text
    assert {kit_status(voice.db, k)[0] for k in v2} == {"dispensed"}
    assert kit_status(voice.db, v1_kit)[0] == "assigned"  # its own assignment, still pending


def test_disp_refusals_name_no_arm(voice):
    texter = signed_in(voice)
    assert "no such subject" in texter.send("DISP 9999999").text
    assert "Send DISP and the subject number" in texter.send("DISP").text
    subject = screen_subject(voice.db, site_code="101", actor=MARIE, study=STUDY)
    reply = texter.send(f"DISP {subject.subject_number}")
    assert "not randomized" in reply.text, reply.text
    assert_blind(reply.text)


def test_recv_with_damaged_kits(voice):
    shipments = run_resupply(voice.db, study=STUDY)
    to_103 = next(s for s in shipments if s.site == "103")
    dispatch_shipment(voice.db, shipment_number=to_103.shipment_number, carrier="DHL",
                      tracking_number="T1", actor=ADMIN, study=STUDY)
    with voice.db.sessions() as session:
        shipment_id = session.scalar(select(Shipment.id).where(
            Shipment.shipment_number == to_103.shipment_number))
        kits = sorted(session.scalars(select(Kit.kit_number).where(
            Kit.shipment_id == shipment_id)))
    texter = signed_in(voice, "+4915112345678", "8642")
    assert "Send RECV" in texter.send(f"RECV {to_103.shipment_number} DAMAGED").text
    reply = texter.send(f"RECV {to_103.shipment_number} damaged {kits[0]}")
    assert (f"Shipment {to_103.shipment_number} received: {len(kits) - 1} available, "
            "1 damaged, 0 missing") in reply.text, reply.text
    with voice.db.sessions() as session:
        assert session.scalar(select(Kit.status).where(Kit.kit_number == kits[0])) == "damaged"
        assert session.scalar(select(Shipment.status).where(
            Shipment.id == shipment_id)) == "received"
    assert "already received" in texter.send(f"RECV {to_103.shipment_number}").text


def test_stock_is_blinded_and_counts_the_site(voice):
    texter = signed_in(voice)
    with voice.db.sessions() as session:
        available = session.scalar(select(func.count()).select_from(Kit).join(
            Site, Site.id == Kit.site_id).where(Kit.status == "available", Site.code == "101"))
    reply = texter.send("STOCK")
    assert reply.text == f"Site 101: {available} kits available, 0 in quarantine, 0 on the way."
    assert_blind(reply.text)


def test_status_gives_last_and_next_visit(voice):
    subject, _ = randomized_subject(voice.db)
    texter = signed_in(voice)
    reply = texter.send(f"status {subject}")
    assert reply.text.startswith(f"Subject {subject}: randomized. Last visit V1 on "), reply.text
    assert "Next visit V2, window December 18, 2026 to December 24, 2026." in reply.text
    other = randomized_subject(voice.db, Actor(role="investigator", user_code="5002",
                                               site_codes=frozenset({"102"})), "102")[0]
    assert "not one of your sites" in texter.send(f"STATUS {other}").text


# --- language, help, opting out ----------------------------------------------------------------


def test_lang_changes_the_users_language_and_refuses_others(voice):
    texter = signed_in(voice)
    reply = texter.send("LANG es")
    assert reply.text == "Su idioma es ahora: español."  # said in the new language
    with voice.db.sessions() as session:
        assert session.scalar(select(User.language).where(User.user_code == "5001")) == "es"
    before = table_counts(voice.db)
    reply = texter.send("LANG xx")
    assert "xx" in reply.text and "en fr es de ja" in reply.text
    assert table_counts(voice.db) == before


def test_unknown_command_points_to_help(voice):
    texter = signed_in(voice)
    assert "Reply HELP" in texter.send("HELLO THERE").text
    help_text = texter.send("help").text
    assert all(word in help_text for word in ("KIT", "DISP", "RECV", "STOCK", "STATUS",
                                              "LANG", "STOP", "START"))
    assert segments(help_text).count == 1


def test_stop_then_start_without_a_pin(voice):
    texter = voice.texter()
    reply = texter.send("STOP")
    assert "no more messages" in reply.text
    with voice.db.sessions() as session:
        assert session.scalar(select(User.opted_out).where(User.user_code == "5001"))
    reply = texter.send("start")
    assert "on again" in reply.text
    with voice.db.sessions() as session:
        assert not session.scalar(select(User.opted_out).where(User.user_code == "5001"))


# --- who may text ----------------------------------------------------------------------------


def test_an_unknown_sender_gets_one_generic_reply(voice):
    texter = voice.texter(UNKNOWN)
    before = table_counts(voice.db)
    first = texter.send("KIT 100001")
    assert first.text == "This number is not registered for this service."
    assert texter.send("HELP").text == ""  # nothing more the same day
    assert texter.send("STOP").text == ""
    assert table_counts(voice.db) == before


def test_three_wrong_pins_lock_the_user_for_voice_too(voice):
    texter = voice.texter()
    texter.send("STOCK")
    assert "PIN not valid" in texter.send("1111").text
    assert "PIN not valid" in texter.send("2222").text
    reply = texter.send("3333")
    assert "locked" in reply.text
    with voice.db.sessions() as session:
        user = session.execute(select(User).where(User.user_code == "5001")).scalar_one()
        assert user.locked and user.failed_attempts == 3
    phone = voice.phone(PARIS)
    heard = phone.dial()
    phone.press("5001#")
    heard = phone.press("2468#")
    assert "locked" in heard.text
    # The session ended: the next message asks for the PIN again, which cannot work.
    assert "PIN" in texter.send("STOCK").text
    assert "locked" in texter.send("2468").text


def test_wrong_pins_by_voice_and_sms_add_up(voice):
    phone = voice.phone(PARIS)
    phone.dial()
    phone.press("5001#")
    phone.press("1111#")
    phone.press("5001#")
    phone.press("1112#")
    texter = voice.texter()
    texter.send("STOCK")
    assert "locked" in texter.send("1113").text


def test_a_command_instead_of_the_pin_replaces_the_kept_one(voice):
    texter = voice.texter()
    texter.send("STATUS 1010001")
    assert texter.send("STOCK").text == "Please reply with your PIN."
    assert texter.send("2468").text.startswith("Site 101:")


def test_a_temporary_pin_must_be_changed_by_phone_first(voice):
    reset_pin(voice.db, user_code="5001", pin="4444", actor=ADMIN, study=STUDY)
    texter = voice.texter()
    texter.send("STOCK")
    assert "temporary" in texter.send("4444").text
    assert "PIN" in texter.send("STOCK").text  # not signed in


def test_a_shared_phone_asks_for_user_id_and_pin(voice):
    add_user(voice.db, user_code="5011", name="Pierre Curie", role="site_coordinator",
             sites=["101"], phone=PARIS, language="fr", pin="1357", actor=ADMIN, study=STUDY)
    texter = voice.texter()
    assert "user ID and PIN" in texter.send("STOCK").text
    assert "User ID or PIN not valid" in texter.send("5002 1357").text  # not on this phone
    assert texter.send("5001 2468").text.startswith("Site 101:")


def test_the_session_ends_after_15_idle_minutes(voice, monkeypatch):
    texter = signed_in(voice)
    key = f"ivrs:session:sms:{STUDY}:{PARIS}"
    if os.environ.get("REDIS_URL"):
        assert 0 < voice.store._redis.ttl(key) <= 15 * 60
        voice.store.delete(f"sms:{STUDY}:{PARIS}")  # what the TTL does after 15 minutes
    else:
        import ivrs.conversations.sessions

        later = ivrs.conversations.sessions.time.monotonic() + 15 * 60 + 1
        monkeypatch.setattr(ivrs.conversations.sessions.time, "monotonic", lambda: later)
    assert texter.send("STOCK").text == "Please reply with your PIN."


def test_a_depot_manager_has_no_site_commands(voice):
    texter = signed_in(voice, "+4930555001", "1122")
    assert "Your role may not do this" in texter.send("STOCK").text
    assert "Your role may not do this" in texter.send("DISP 1010001").text


# --- the door -------------------------------------------------------------------------------


def test_an_unsigned_message_is_refused_and_changes_nothing(voice):
    _, (kit,) = randomized_subject(voice.db)
    texter = voice.texter()
    texter.auth_token = "wrong-token"
    assert texter.send(f"KIT {kit}").status == 403
    texter.auth_token = None
    assert texter.send("2468").status == 403
    assert kit_status(voice.db, kit)[0] == "assigned"


def test_a_malformed_request_is_not_understood_not_a_500(voice):
    from twilio.request_validator import RequestValidator
    from voice import TOKEN

    client = voice.app.test_client()
    for form in ({"From": PARIS, "Body": "HELP"}, {"MessageSid": "SM" + "1" * 32, "Body": "x"},
                 {"MessageSid": "bad sid!", "From": PARIS}):
        signature = RequestValidator(TOKEN).compute_signature("http://localhost/sms", form)
        response = client.post("/sms", data=form, headers={"X-Twilio-Signature": signature})
        assert response.status_code == 200
        assert "<Message>Sorry, your message could not be read" in response.get_data(as_text=True)


@pytest.mark.parametrize("sender", [PARIS, BARCELONA])
def test_replies_never_log_the_pin(voice, caplog, sender):
    pin = {"+33612345678": "2468", "+34612345678": "1357"}[sender]
    caplog.set_level("DEBUG")
    texter = voice.texter(sender)
    texter.send("STOCK")
    texter.send(pin)
    assert pin not in caplog.text


def test_a_wrong_kit_with_several_assignments_pending_lists_them_all(voice):
    _, (first,) = randomized_subject(voice.db)
    _, (second,) = randomized_subject(voice.db)
    texter = signed_in(voice)
    reply = texter.send("KIT 999999")
    assert reply.text == (f"Kit 999999 is not yours. Pending: "
                          f"{second}, {first}. Nothing confirmed."), reply.text
    assert kit_status(voice.db, first)[0] == kit_status(voice.db, second)[0] == "assigned"


class _DownStore(MemorySessionStore):
    def claim(self, key, ttl):
        raise SessionStoreError("connection refused")


def test_a_session_store_failure_is_an_apology_not_a_500(voice):
    app = create_app(Settings(database_url="unused", twilio_auth_token=TOKEN), db=voice.db,
                     store=_DownStore())
    reply = Texter(AppTransport(app), sender=PARIS, auth_token=TOKEN).send("STOCK")
    assert reply.status == 200 and reply.text.startswith("Sorry, something went wrong")


def test_a_database_failure_is_an_apology_and_twilio_s_retry_then_acts_once(voice,
                                                                           monkeypatch):
    subject, _ = randomized_subject(voice.db)
    monkeypatch.setenv("IVRS_TODAY", str(date(2026, 11, 23) + timedelta(days=28)))
    texter = signed_in(voice)
    import dialogs.sms.commands as commands

    real_dispense = commands.dispense

    def down(*args, **kwargs):
        raise OperationalError("INSERT ...", {}, Exception("server closed the connection"))

    monkeypatch.setattr(commands, "dispense", down)
    failed = texter.send(f"DISP {subject}")
    assert failed.status == 200 and failed.text.startswith("Sorry")
    monkeypatch.setattr(commands, "dispense", real_dispense)
    retried = texter.send(f"DISP {subject}", message_sid=failed.message_sid)
    assert "hand out kit no." in retried.text, retried.text
    assert texter.send(f"DISP {subject}", message_sid=failed.message_sid).xml == retried.xml
    with voice.db.sessions() as session:
        assert session.scalar(select(func.count()).where(Kit.visit_code == "V2")) == 2


def test_a_user_locked_or_deactivated_during_a_session_can_do_nothing_more(voice):
    texter = signed_in(voice)
    set_locked(voice.db, user_code="5001", locked=True, actor=ADMIN, reason="left the site",
               study=STUDY)
    assert texter.send("STOCK").text == "Your access is locked."
    assert texter.send("STOCK").text == "Please reply with your PIN."  # a new session
    set_locked(voice.db, user_code="5001", locked=False, actor=ADMIN, reason="back",
               study=STUDY)
    texter.send("2468")
    with voice.db.transaction() as session:
        session.execute(update(User).where(User.user_code == "5001").values(active=False))
    assert texter.send("STOCK").text == "This number is not registered for this service."


def test_a_pin_texted_before_it_was_asked_is_not_run_as_a_kit_number(voice):
    texter = voice.texter()
    assert texter.send("2468").text == "Please reply with your PIN."
    reply = texter.send("2468")
    assert reply.text == "PIN accepted. Reply HELP for the commands."
    assert "2468" not in reply.text


def test_a_request_for_kits_confirmed_meanwhile_is_not_sent(voice):
    from fake_twilio import FakeTwilio
    from test_notify import settings_for

    from ivrs.outbound.notify import gateway, send_pending

    _, (confirmed,) = randomized_subject(voice.db)
    _, (pending,) = randomized_subject(voice.db)
    texter = signed_in(voice)
    texter.send(f"KIT {confirmed}")  # before any sender ran (Twilio not yet configured)
    with FakeTwilio() as fake:
        report = send_pending(voice.db, gateway(settings_for(fake)))
        bodies = [m.body for m in fake.messages]
    assert report.sent == 1 and len(bodies) == 1
    assert pending in bodies[0] and confirmed not in bodies[0]


def test_a_message_whose_first_delivery_died_unanswered_is_not_lost_in_silence(voice,
                                                                              monkeypatch):
    from ivrs.conversations import texts

    monkeypatch.setattr(texts, "REPEAT_WAITS_SECONDS", 0.2)
    sid = "SM" + "d" * 32
    key = f"sms:reply:{sid}"
    # A worker claimed the message, then was killed before it answered.
    assert voice.store.claim(key, texts.CLAIM_SECONDS)
    texter = voice.texter()
    repeat = texter.send("STOCK", message_sid=sid)
    assert repeat.status == 200 and repeat.text.startswith("Sorry"), repeat.text
    # The claim lapses (a minute): the message is answered then, once.
    voice.store.delete(key)
    answered = texter.send("STOCK", message_sid=sid)
    assert "PIN" in answered.text, answered.text
    assert texter.send("STOCK", message_sid=sid).xml == answered.xml
