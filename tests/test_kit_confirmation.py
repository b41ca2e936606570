"""Kit-number confirmation (SPEC §7 ``KIT``, §8 ``unconfirmed-kits``), in the core.

Every kit assignment (randomization, dispensing, replacement) asks the
assigning user by SMS (an outbox row) to confirm the kit number handed out;
``confirm_kit`` confirms the right number and refuses any other, changing
nothing; ``run_confirmation_reminders`` reminds once after the delay; the
report lists what is still unconfirmed. The example study and its helpers are
those of test_dispensing (V1: 1 kit on day 0, V2: 2 kits on day 28).
"""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta

import pytest
from babel.messages.pofile import read_po
from helpers import table_counts
from sqlalchemy import select
from test_dispensing import (  # noqa: F401  (study: the example study, fixture)
    COORDINATOR,
    M_LT65,
    YES,
    kit,
    set_day,
    stocked,
    study,
)

from core.actors import ADMIN, Actor
from core.errors import Refused
from core.models import AuditEvent, Study
from core.randomize import randomize
from core.subjects import screen_subject
from core.supply.confirmation import (
    confirm_kit,
    pending_kits,
    run_confirmation_reminders,
)
from core.supply.dispensing import dispense, replace_kit
from core.supply.dispensing_report import dispensing
from core.models import Notification
from core.supply.reports import unconfirmed_kits
from ivrs.render.speech import LOCALES_DIR

INVESTIGATOR = Actor(role="investigator", user_code="5002", site_codes=frozenset({"101"}))
INVESTIGATOR_102 = Actor(role="investigator", user_code="5005",
                        site_codes=frozenset({"102", "103"}))
BLINDED_WORDS = ("KA", "KP", "Drug", "Placebo", "arm")


def enroll(db, actor=COORDINATOR, site="101"):
    subject = screen_subject(db, site_code=site, actor=actor)
    return randomize(db, subject_number=subject.subject_number, actor=actor, eligibility=YES,
                     factors=M_LT65)


def notes(db, kind: str) -> list[Notification]:
    with db.sessions() as s:
        return list(s.scalars(select(Notification).where(Notification.kind == kind)
                              .order_by(Notification.id)))


def report(db, **options) -> tuple[list[str], list[tuple]]:
    with db.sessions() as s:
        columns, rows = unconfirmed_kits(s, s.scalars(select(Study)).one(), **options)
        return columns, list(rows)


def assigned_at_utc(db, number: str) -> datetime:
    moment = kit(db, number).assigned_at  # SQLite hands it back without a zone: UTC
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def assert_blinded(values) -> None:
    text = repr(values)
    assert not any(word in text for word in BLINDED_WORDS), text


# --- every assignment asks for a confirmation ----------------------------------------------


def test_randomization_asks_the_assigning_user_to_confirm(study):
    stocked(study, n=2)
    result = enroll(study)
    (note,) = notes(study, "kit_confirmation")
    assert (note.key, note.audience, note.message_id, note.status) == (
        f"kit_confirm:{result.kits[0]}", "user:5001", "sms.kit_confirm_request", "pending")
    assert note.params == {"subject": result.subject_number, "visit": "V1",
                           "kits": list(result.kits)}
    assert_blinded(note.params)
    # the CLI operator has no phone: an administrator's randomization asks nobody
    enroll(study, actor=ADMIN)
    assert len(notes(study, "kit_confirmation")) == 1


def test_dispensing_asks_once_for_all_the_visit_kits(study, monkeypatch):
    stocked(study, n=4)
    subject = enroll(study)
    set_day(monkeypatch, 28)
    result = dispense(study, subject_number=subject.subject_number, actor=COORDINATOR)
    assert len(result.kits) == 2
    v2 = notes(study, "kit_confirmation")[-1]
    assert v2.key == f"kit_confirm:{min(result.kits)}" and v2.audience == "user:5001"
    assert v2.params == {"subject": subject.subject_number, "visit": "V2",
                         "kits": list(result.kits)}
    assert_blinded(v2.params)


def test_replacement_asks_the_replacing_user(study):
    stocked(study, n=3)
    subject = enroll(study)
    result = replace_kit(study, subject_number=subject.subject_number,
                         kit_number=subject.kits[0], reason="damaged", actor=INVESTIGATOR)
    note = notes(study, "kit_confirmation")[-1]
    assert (note.key, note.audience) == (f"kit_confirm:{result.kit}", "user:5002")
    assert note.params == {"subject": subject.subject_number, "visit": "V1",
                           "kits": [result.kit]}
    assert kit(study, result.kit).status == "assigned"


# --- confirming -------------------------------------------------------------------------------


def test_the_right_kit_number_confirms_it(study):
    stocked(study, n=2)
    subject = enroll(study)
    (number,) = subject.kits
    assert [p.kits for p in pending_kits(study, actor=COORDINATOR)] == [(number,)]
    done = confirm_kit(study, kit_number=number, actor=COORDINATOR)
    assert (done.kit, done.subject_number, done.visit, done.remaining) == (
        number, subject.subject_number, "V1", [])
    assert done.confirmation is not None
    confirmed = kit(study, number)
    assert confirmed.status == "dispensed" and confirmed.confirmed_at is not None
    assert pending_kits(study, actor=COORDINATOR) == []
    with study.sessions() as s:
        columns, rows = dispensing(s, s.scalars(select(Study)).one())
        (row,) = list(rows)
        assert row[columns.index("confirmed_at")] != ""
        assert row[columns.index("status")] == "dispensed"
        audit = s.scalars(select(AuditEvent).where(AuditEvent.action == "kit_confirm")).one()
        assert (audit.actor, audit.entity_id) == ("user:5001", number)
        assert (audit.old["status"], audit.new["status"]) == ("assigned", "dispensed")
        assert audit.new["subject"] == subject.subject_number


def test_a_wrong_number_changes_nothing_and_names_the_expected_kit(study, monkeypatch):
    stocked(study, n=4)
    subject = enroll(study)
    set_day(monkeypatch, 28)
    v2 = dispense(study, subject_number=subject.subject_number, actor=COORDINATOR)
    before = table_counts(study)
    for wrong in ("999999", subject.kits[0][:-1]):  # unknown, and a near miss
        with pytest.raises(Refused) as refused:
            confirm_kit(study, kit_number=wrong, actor=COORDINATOR)
        assert refused.value.code == "wrong_kit"
        # the most recent pending assignment is the one expected
        assert refused.value.params["expected"] == sorted(v2.kits)
        assert refused.value.params["visit"] == "V2"
        assert_blinded(refused.value.params)
    assert table_counts(study) == before
    assert {kit(study, k).status for k in (*subject.kits, *v2.kits)} == {"assigned"}
    # two pending assignments: either may be confirmed, in any order
    assert [p.visit for p in pending_kits(study, actor=COORDINATOR)] == ["V2", "V1"]
    first = confirm_kit(study, kit_number=subject.kits[0], actor=COORDINATOR)
    assert first.visit == "V1"
    second = confirm_kit(study, kit_number=v2.kits[1], actor=COORDINATOR)
    assert second.remaining == [v2.kits[0]]


def test_another_subjects_kit_is_named_only_at_the_users_sites(study):
    stocked(study, n=3)
    stocked(study, site="102", n=3)
    mine = enroll(study)
    theirs = enroll(study, actor=INVESTIGATOR)
    at_102 = enroll(study, actor=INVESTIGATOR_102, site="102")
    before = table_counts(study)
    with pytest.raises(Refused) as refused:
        confirm_kit(study, kit_number=theirs.kits[0], actor=COORDINATOR)
    assert refused.value.code == "kit_of_another_subject"
    assert refused.value.params["subject"] == theirs.subject_number
    # a user of another site hears what an unknown number gets: nothing about site 101
    with pytest.raises(Refused) as refused:
        confirm_kit(study, kit_number=mine.kits[0], actor=INVESTIGATOR_102)
    assert refused.value.code == "wrong_kit"
    assert refused.value.params["expected"] == list(at_102.kits)
    assert mine.subject_number not in str(refused.value) + repr(refused.value.params)
    # a colleague at the same site cannot confirm the kit another user assigned
    with pytest.raises(Refused) as refused:
        confirm_kit(study, kit_number=mine.kits[0], actor=INVESTIGATOR)
    assert refused.value.code == "kit_of_another_subject"
    assert refused.value.params["subject"] == mine.subject_number
    assert kit(study, mine.kits[0]).status == "assigned"
    assert table_counts(study) == before


def test_a_replayed_confirmation_acts_once(study):
    stocked(study, n=2)
    (number,) = enroll(study).kits
    first = confirm_kit(study, kit_number=number, actor=COORDINATOR, idempotency_key="sms-1")
    after = table_counts(study)
    again = confirm_kit(study, kit_number=number, actor=COORDINATOR, idempotency_key="sms-1")
    assert again == first and table_counts(study) == after
    with pytest.raises(Refused) as refused:  # a new message with the same number
        confirm_kit(study, kit_number=number, actor=COORDINATOR, idempotency_key="sms-2")
    assert refused.value.code == "kit_already_confirmed"
    assert table_counts(study) == after
    with pytest.raises(Refused) as refused:
        confirm_kit(study, kit_number="123", actor=COORDINATOR)
    assert refused.value.code == "no_pending_kit"


# --- reminders -----------------------------------------------------------------------------------


def test_one_reminder_per_assignment_after_the_delay(study, monkeypatch):
    stocked(study, n=4)
    subject = enroll(study)
    set_day(monkeypatch, 28)
    v2 = dispense(study, subject_number=subject.subject_number, actor=COORDINATOR)
    confirm_kit(study, kit_number=subject.kits[0], actor=COORDINATOR)  # V1 is done
    assigned_at = assigned_at_utc(study, v2.kits[0])
    assert run_confirmation_reminders(study, now=assigned_at + timedelta(hours=23)) == []
    (reminder,) = run_confirmation_reminders(study, now=assigned_at + timedelta(hours=25))
    assert (reminder.audience, reminder.subject_number, reminder.visit) == (
        "user:5001", subject.subject_number, "V2")
    assert sorted(reminder.kits) == sorted(v2.kits)
    (note,) = notes(study, "kit_confirmation_reminder")
    assert (note.key, note.message_id, note.audience) == (
        f"kit_reminder:{min(v2.kits)}", "sms.kit_confirm_reminder", "user:5001")
    assert_blinded(note.params)
    # never twice, even once part of the assignment is confirmed
    confirm_kit(study, kit_number=min(v2.kits), actor=COORDINATOR)
    assert run_confirmation_reminders(study, now=assigned_at + timedelta(hours=48)) == []
    assert len(notes(study, "kit_confirmation_reminder")) == 1


def test_the_delay_comes_from_the_study_or_the_caller(study):
    stocked(study, n=2)
    number = enroll(study).kits[0]
    moment = assigned_at_utc(study, number)
    with study.transaction() as s:
        row = s.scalars(select(Study)).one()
        row.config = {**row.config, "supply": {**row.config["supply"],
                                               "confirmation_reminder_hours": 2}}
    assert run_confirmation_reminders(study, now=moment + timedelta(hours=1)) == []
    assert run_confirmation_reminders(study, delay_hours=48,
                                      now=moment + timedelta(hours=3)) == []
    assert len(run_confirmation_reminders(study, now=moment + timedelta(hours=3))) == 1


# --- the unconfirmed-kits report ---------------------------------------------------------------


def test_the_report_lists_unconfirmed_kits_blinded(study):
    stocked(study, n=3)
    stocked(study, site="102", n=3)
    confirmed, waiting = enroll(study), enroll(study, actor=INVESTIGATOR)
    elsewhere = enroll(study, actor=INVESTIGATOR_102, site="102")
    confirm_kit(study, kit_number=confirmed.kits[0], actor=COORDINATOR)
    moment = assigned_at_utc(study, waiting.kits[0])
    columns, rows = report(study, now=moment + timedelta(hours=30, minutes=5))
    assert columns == ["subject_number", "site", "visit", "kit_number", "assigned_at",
                       "assigned_by", "hours_unconfirmed"]
    assert [(r[0], r[1], r[2], r[3], r[5]) for r in rows] == [
        (waiting.subject_number, "101", "V1", waiting.kits[0], "user:5002"),
        (elsewhere.subject_number, "102", "V1", elsewhere.kits[0], "user:5005")]
    assert rows[0][6] == 30 and rows[0][4].endswith("Z")
    assert_blinded(rows)
    assert [r[0] for r in report(study, site="102")[1]] == [elsewhere.subject_number]
    columns, rows = report(study, blinded=False)
    assert columns[-1] == "kit_type" and rows[0][-1] in ("KA", "KP")


def test_supply_run_reminds_and_the_report_command_lists(study, database_env):
    from click.testing import CliRunner

    from ivrs.main import main

    stocked(study, n=2)
    subject = enroll(study)

    def run(*args):
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output.splitlines()

    # day 0 -> day 2: more than the default 24 hours, reminded once
    assert run("supply", "run", "--today", "2026-01-03")[-3] == "1 kit confirmation reminder(s)"
    assert run("supply", "run", "--today", "2026-01-03")[-3] == "0 kit confirmation reminder(s)"
    header, row = run("report", "unconfirmed-kits")
    assert header == ("subject_number,site,visit,kit_number,assigned_at,assigned_by,"
                      "hours_unconfirmed")
    assert row.startswith(f"{subject.subject_number},101,V1,{subject.kits[0]},")
    assert_blinded(row)


# --- the SMS texts --------------------------------------------------------------------------------

GSM7 = set("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOP"
           "QRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
LONGEST = {"kit": "1" * 10, "subject": "1" * 8, "visit": "V" * 6, "confirmation": "1" * 6,
           "kits": ", ".join(["1" * 10] * 4), "expected": ", ".join(["1" * 10] * 4)}
SMS_IDS = ("sms.kit_confirm_request", "sms.kit_confirm_reminder", "sms.kit_confirmed",
           "sms.wrong_kit", "sms.kit_of_another_subject", "sms.kit_already_confirmed",
           "sms.no_pending_kit")


@pytest.mark.parametrize("message_id", SMS_IDS)
def test_sms_texts_fit_one_gsm7_segment(message_id):
    with (LOCALES_DIR / "en" / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        text = read_po(handle)[message_id].string
    fields = {name for _, name, _, _ in string.Formatter().parse(text) if name}
    assert fields <= set(LONGEST)
    longest = text.format(**LONGEST)
    assert set(longest) <= GSM7 and len(longest) <= 160, (len(longest), longest)


def test_a_study_file_sets_the_reminder_delay(tmp_path):
    from pydantic import ValidationError

    from core.study_file import SupplyDef

    assert SupplyDef().confirmation_reminder_hours == 24
    assert SupplyDef(confirmation_reminder_hours=48).confirmation_reminder_hours == 48
    with pytest.raises(ValidationError):
        SupplyDef(confirmation_reminder_hours=0)


def test_the_request_text_lists_the_kits_of_one_assignment():
    from dialogs.output import Say
    from ivrs.render.speech import text
    from ivrs.render.sms_text import segments

    said = text(Say("sms.kit_confirm_request", {
        "subject": "10100001", "visit": "VISIT6", "kits": ["1234567890"] * 4}), "en")
    assert "1234567890, 1234567890, 1234567890, 1234567890" in said
    assert segments(said).count <= 1


def test_a_request_waiting_in_the_queue_is_withdrawn_once_its_kits_are_confirmed(study):
    """Expanded while its kit was pending, then held back (Twilio answered 500):
    confirmed by then, it is never sent."""
    from fake_twilio import FakeTwilio
    from test_notify import settings_for

    from core.deliveries import backoff
    from core.models import AuditEvent, Delivery
    from ivrs.outbound.notify import gateway, send_pending

    stocked(study, n=2)
    result = enroll(study)
    with FakeTwilio() as fake:
        sender = gateway(settings_for(fake))
        fake.fail_next(1, 500)
        start = datetime.now(UTC)
        assert send_pending(study, sender, now=start).retrying == 1
        confirm_kit(study, kit_number=result.kits[0], actor=COORDINATOR)
        assert send_pending(study, sender, now=start + backoff(1)).sent == 0
        assert fake.posts == 1 and fake.messages == []
    with study.sessions() as s:
        (delivery,) = s.scalars(select(Delivery)).all()
        assert delivery.status == "withdrawn"
        (withdrawn,) = s.scalars(select(AuditEvent).where(
            AuditEvent.action == "message_withdrawn")).all()
        assert withdrawn.entity_id == str(delivery.id)
