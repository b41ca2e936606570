"""Emergency unblinding and the approvals gate end to end (SPEC §6.8): menu 7 by
voice, signed with the PIN again (the caller signed in with user ID and PIN in this
call); mode investigator (the arm at once)
and mode approval (a request, decided by SMS or at the console, signed); the
database, the audit trail, the notifications and the reports checked after."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, timedelta

from click.testing import CliRunner
from sqlalchemy import select, update
from voice import BARCELONA, PARIS, TODAY, says

from core.actors import Actor
from core.gates import expire_stale
from core.audit import blinded
from core.models import Approval, AuditEvent, Randomization, Subject, Unblinding, User
from core.randomize import randomize
from core.study_loader import load_study
from core.subjects import screen_subject
from core.models import Notification
from core.users import add_user
from ivrs.conversations import calls

STUDY = "DEMO-301"
MANAGER = "+447700900456"  # user 6050, project manager, PIN 3579
RAMON = Actor(role="investigator", user_code="5002", site_codes=frozenset({"102"}),
              channel="voice")
ARM_WORDS = ("Drug X", "Placebo", "KA", "KP")


def randomized(db, actor: Actor = RAMON, site: str = "102") -> str:
    subject = screen_subject(db, site_code=site, actor=actor, study=STUDY).subject_number
    randomize(db, subject_number=subject, actor=actor, study=STUDY,
              eligibility={"INC1": True, "INC2": True, "EXC1": True},
              factors={"SEX": "F", "AGE": "LT65"})
    return subject


def arm_name_of(db, subject: str) -> str:
    from core.models import Arm

    with db.sessions() as session:
        return session.scalar(select(Arm.name).join(Randomization, Randomization.arm_id == Arm.id)
                              .join(Subject, Subject.id == Randomization.subject_id)
                              .where(Subject.subject_number == subject))


def spaced(number: str) -> str:
    """How a number is read out: digit by digit."""
    return " ".join(number)


def menu_7(voice, subject: str, caller: str = BARCELONA, user: str = "5002",
           pin: str = "1357"):
    """Menu 7 up to the signature: the phone, and what it heard after the subject."""
    phone = voice.signed_in(caller, user, pin)
    assert says(phone.press("7"), "subject number")
    phone.press(f"{subject}#")
    return phone, phone.press("1")


def unblinding_rows(db) -> list[Unblinding]:
    with db.sessions() as session:
        return list(session.scalars(select(Unblinding).order_by(Unblinding.id)))


def audit(db, action: str) -> list[AuditEvent]:
    with db.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                    .order_by(AuditEvent.seq)))


def notifications(db, kind: str) -> list[Notification]:
    with db.sessions() as session:
        return list(session.scalars(select(Notification).where(Notification.kind == kind)
                                    .order_by(Notification.id)))


def failed_attempts(db, user_code: str) -> tuple[int, bool]:
    with db.sessions() as session:
        return session.execute(select(User.failed_attempts, User.locked).where(
            User.user_code == user_code)).one()


def switch_mode(voice, tmp_path, mode: str, approvers: str = "[project_manager]") -> None:
    """Reload the demo study with another unblinding mode (audited like any change)."""
    from importlib.resources import files

    text = files("ivrs.demo").joinpath("data", "study.yaml").read_text("utf-8")
    text = text.replace("unblinding: {mode: investigator}",
                        f"unblinding: {{mode: {mode}, approvers: {approvers}}}")
    path = tmp_path / "approval.yaml"
    path.write_text(text, encoding="utf-8")
    load_study(voice.db, path)
    with voice.db.transaction() as session:  # the tests read English
        session.execute(update(User).values(language="en"))


# --- mode investigator ------------------------------------------------------------------------


def test_investigator_unblinds_by_phone_and_hears_the_arm(voice):
    subject = randomized(voice.db)
    arm = arm_name_of(voice.db, subject)
    phone, heard = menu_7(voice, subject)
    assert says(heard, "To sign electronically, enter your PIN again"), heard.text
    assert "user ID" not in heard.text  # identified at sign-in: the PIN alone signs
    heard = phone.press("1357#")
    assert says(heard, "For a medical emergency, press 1.", "For another reason, press 2."), \
        heard.text
    heard = phone.press("1")
    assert says(heard, f"To unblind subject {spaced(subject)} now, press 1."), heard.text
    heard = phone.press("1")
    assert says(heard, f"Subject {spaced(subject)} receives: {arm}."), heard.text
    assert "This unblinding is recorded as number 8 0 0 0 0 1" in heard.text
    # The session store keeps no arm, not even in the answer kept for Twilio's retry:
    # the retry hears the rest of it.
    assert arm not in json.dumps(voice.store.load(calls.session_key(phone.call_sid)))
    replay = phone.repeat_last_request()
    assert arm not in replay.text and "recorded as number 8 0 0 0 0 1" in replay.text

    (row,) = unblinding_rows(voice.db)
    assert (row.number, row.mode, row.reason, row.status, row.requested_by, row.revealed_to) == (
        "800001", "investigator", "medical_emergency", "unblinded", "user:5002", "user:5002")
    assert row.signed_by == "user:5002 Santiago Ramón"
    with voice.db.sessions() as session:
        assert session.scalar(select(Subject.unblinded_at).where(
            Subject.subject_number == subject)) is not None
    (revealed,) = audit(voice.db, "subject_unblinded")
    assert revealed.new["signature"]["meaning"] == f"emergency unblinding of subject {subject}"
    assert arm in str(revealed.new["arm"])  # for the inspector, under the unblinded key
    assert arm not in str(blinded(revealed.new))
    (signed,) = audit(voice.db, "signed")
    assert signed.new["components"] == "pin"  # within the call's continuous session
    # the project manager is told that it happened, not what was revealed
    (told,) = notifications(voice.db, "subject_unblinded")
    assert told.audience == "role:project_manager"
    assert told.params == {"number": "800001", "subject": subject, "site": "102",
                           "user": "5002"}
    # option 9 does not repeat the arm: it was said, never kept in the session
    heard = phone.press("9")
    assert arm not in heard.text


def test_a_wrong_signature_refuses_and_counts_toward_the_lockout(voice):
    subject = randomized(voice.db)
    phone, _ = menu_7(voice, subject)
    heard = phone.press("9999#")
    assert says(heard, "User ID or PIN not valid.", "enter your PIN again"), heard.text
    assert failed_attempts(voice.db, "5002") == (1, False)
    heard = phone.press("2468#")  # another user's PIN (5001's): also refused, counted to 5002
    assert says(heard, "User ID or PIN not valid."), heard.text
    assert failed_attempts(voice.db, "5002") == (2, False)
    assert failed_attempts(voice.db, "5001") == (0, False)  # nothing counted against 5001
    heard = phone.press("0000#")
    assert says(heard, "Your access is locked.") and heard.hangup, heard.text
    assert failed_attempts(voice.db, "5002") == (3, True)
    assert unblinding_rows(voice.db) == []
    assert len(audit(voice.db, "signature_failed")) == 3


def test_a_coordinator_has_no_menu_7_and_cannot_unblind(voice):
    randomized(voice.db)
    phone = voice.signed_in(PARIS, "5001", "2468")
    heard = phone.press("9")  # the menu again, after "nothing to repeat"
    assert "7." not in heard.text and "unblinding" not in heard.text, heard.text
    heard = phone.press("7")
    assert says(heard, "That option is not available."), heard.text
    assert unblinding_rows(voice.db) == []


def test_an_investigator_unblinds_only_at_their_own_sites(voice):
    subject = randomized(voice.db, Actor(role="site_coordinator", user_code="5001",
                                         site_codes=frozenset({"101"})), site="101")
    _, heard = menu_7(voice, subject)
    assert says(heard, "That is not one of your sites."), heard.text
    assert says(heard, "subject number"), heard.text  # asked again
    assert unblinding_rows(voice.db) == []


def test_the_reports_list_every_event_blinded_unless_an_unblinded_role_asks(
        voice, database_env, monkeypatch):
    subject = randomized(voice.db)
    arm = arm_name_of(voice.db, subject)
    phone, _ = menu_7(voice, subject)
    for keys in ("1357#", "2", "1"):
        heard = phone.press(keys)
    assert arm in heard.text
    from ivrs.main import main

    runner = CliRunner()
    result = runner.invoke(main, ["report", "unblinding"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (row,) = csv.DictReader(io.StringIO(result.output))
    assert (row["unblinding_number"], row["subject_number"], row["site"], row["reason"],
            row["status"], row["signed_by"], row["revealed_to"]) == (
        "800001", subject, "102", "other", "unblinded", "user:5002 Santiago Ramón",
        "user:5002")
    assert row["signed_at"] and row["revealed_at"]
    assert "arm" not in row and not any(word in result.output for word in ARM_WORDS)
    views_before = len(audit(voice.db, "unblinded_view"))
    monkeypatch.setenv("IVRS_PIN", "9753")
    result = runner.invoke(main, ["report", "unblinding", "--unblinded", "--user", "5004"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (row,) = csv.DictReader(io.StringIO(result.output))
    with voice.db.sessions() as session:
        code = session.scalar(select(Randomization.arm_id))
    assert row["arm"] in ("A", "P") and code is not None
    assert len(audit(voice.db, "unblinded_view")) == views_before + 1
    # an investigator is not an unblinded role for reports
    monkeypatch.setenv("IVRS_PIN", "1357")
    result = runner.invoke(main, ["report", "unblinding", "--unblinded", "--user", "5002"])
    assert result.exit_code == 1 and "blinded" in result.output


# --- mode approval -----------------------------------------------------------------------------


def request_by_phone(voice, subject: str) -> str:
    """Menu 7 in mode approval: the request number said."""
    phone, _ = menu_7(voice, subject)
    for keys in ("1357#", "1"):
        phone.press(keys)
    heard = phone.press("1")
    assert says(heard, "Unblinding request 8 0 0 0 0", "was sent for approval"), heard.text
    assert not any(word in heard.text for word in ARM_WORDS)
    row = unblinding_rows(voice.db)[-1]
    assert (row.status, row.mode) == ("pending", "approval")
    return row.number


def test_approval_mode_request_by_phone_approval_by_sms_then_the_arm_by_phone(voice, tmp_path):
    switch_mode(voice, tmp_path, "approval")
    subject = randomized(voice.db)
    arm = arm_name_of(voice.db, subject)
    number = request_by_phone(voice, subject)
    with voice.db.sessions() as session:
        assert session.scalar(select(Subject.unblinded_at).where(
            Subject.subject_number == subject)) is None
        approval = session.scalar(select(Approval))
        assert (approval.number, approval.kind, approval.status) == (number, "unblinding",
                                                                     "pending")
    (asked,) = notifications(voice.db, "unblinding_requested")
    assert asked.audience == "role:project_manager"
    assert asked.params == {"number": number, "subject": subject, "site": "102", "user": "5002"}

    # while it waits, menu 7 says so
    _, heard = menu_7(voice, subject)
    assert says(heard, f"request {spaced(number)} for this subject is awaiting a decision"), \
        heard.text

    # the project manager approves by SMS: PIN, then the signature
    texter = voice.texter(MANAGER)
    assert texter.send(f"APPROVE {number}").text == "Please reply with your PIN."
    reply = texter.send("3579")
    assert f"To sign the approval of request {number}, reply with your user ID and PIN" \
        in reply.text, reply.text
    reply = texter.send("6050 3579")
    assert f"Request {number} approved and signed." in reply.text, reply.text
    (decided,) = audit(voice.db, "approval_approved")
    assert decided.actor == "user:6050"
    assert decided.new["signature"]["signer"] == "user:6050 Florence Nightingale"
    assert decided.new["signature"]["meaning"] == f"approve request {number}"
    (told,) = notifications(voice.db, "unblinding_approved")
    assert told.audience == "user:5002" and told.params == {"number": number,
                                                           "subject": subject}
    assert [r.status for r in unblinding_rows(voice.db)] == ["approved"]

    # the requester calls again: subject, signature, and the arm at once
    phone, heard = menu_7(voice, subject)
    heard = phone.press("1357#")
    assert says(heard, f"Subject {spaced(subject)} receives: {arm}."), heard.text
    (row,) = unblinding_rows(voice.db)
    assert (row.status, row.revealed_to, row.mode) == ("unblinded", "user:5002", "approval")
    (informed,) = notifications(voice.db, "subject_unblinded")
    assert arm not in str(informed.params)


def test_a_rejection_by_sms_needs_a_reason_and_tells_the_requester(voice, tmp_path):
    switch_mode(voice, tmp_path, "approval")
    subject = randomized(voice.db)
    number = request_by_phone(voice, subject)
    texter = voice.texter(MANAGER)
    texter.send("HELP")
    texter.send("3579")
    reply = texter.send(f"REJECT {number}")
    assert "Send REJECT, the request number and a reason" in reply.text, reply.text
    reply = texter.send(f"REJECT {number} not an emergency")
    assert "To sign the rejection" in reply.text, reply.text
    reply = texter.send("6050 1111")  # a wrong PIN: nothing decided, counted
    assert reply.text == "User ID or PIN not valid: nothing was decided."
    assert failed_attempts(voice.db, "6050") == (1, False)
    assert [r.status for r in unblinding_rows(voice.db)] == ["pending"]
    texter.send(f"REJECT {number} not an emergency")
    reply = texter.send("HELP")  # anything but a signature cancels
    assert "Not signed: nothing was decided." in reply.text and "Commands" in reply.text
    texter.send(f"REJECT {number} not an emergency")
    reply = texter.send("6050 3579")
    assert f"Request {number} rejected and signed." in reply.text, reply.text
    assert [r.status for r in unblinding_rows(voice.db)] == ["rejected"]
    (told,) = notifications(voice.db, "unblinding_rejected")
    assert told.params["reason"] == "not an emergency" and told.audience == "user:5002"
    # decided once: a second decision is refused before any signature
    reply = texter.send(f"APPROVE {number}")
    assert reply.text == f"Request {number} was already rejected.", reply.text
    # a new request may follow a rejection
    assert request_by_phone(voice, subject) != number


def test_nobody_but_an_approver_decides_and_never_their_own_request(voice, tmp_path):
    switch_mode(voice, tmp_path, "approval", approvers="[investigator]")
    add_user(voice.db, user_code="5008", name="Severo Ochoa", role="investigator",
             sites=["102"], phone="+34600000008", language="en", pin="4826",
             actor=Actor(role="admin"), study=STUDY)
    add_user(voice.db, user_code="5009", name="Emil Kraepelin", role="investigator",
             sites=["103"], phone="+49600000009", language="en", pin="4826",
             actor=Actor(role="admin"), study=STUDY)
    with voice.db.transaction() as session:  # their first PIN, already changed
        session.execute(update(User).where(User.user_code.in_(["5008", "5009"]))
                        .values(pin_temporary=False))
    subject = randomized(voice.db)
    number = request_by_phone(voice, subject)
    (asked,) = notifications(voice.db, "unblinding_requested")
    assert asked.audience == "site:102:investigator"  # investigators of that site only

    def decide_by_sms(phone_number: str, user: str, pin: str) -> str:
        texter = voice.texter(phone_number)
        texter.send(f"APPROVE {number}")
        return texter.send(pin).text

    # the requester: their own request (asked before any signature)
    assert "is your own: another person must decide it" in decide_by_sms(BARCELONA, "5002",
                                                                        "1357")
    # an investigator of another site
    assert decide_by_sms("+49600000009", "5009", "4826") == "That is not one of your sites."
    # a coordinator: not an approving role
    assert decide_by_sms(PARIS, "5001", "2468") == "Your role may not do this."
    assert [r.status for r in unblinding_rows(voice.db)] == ["pending"]
    texter = voice.texter("+34600000008")
    texter.send(f"APPROVE {number}")
    assert "To sign the approval" in texter.send("4826").text
    assert f"Request {number} approved" in texter.send("5008 4826").text
    assert [r.status for r in unblinding_rows(voice.db)] == ["approved"]


def test_cli_approvals_list_approve_and_expiry(voice, tmp_path, database_env, monkeypatch):
    switch_mode(voice, tmp_path, "approval")
    first = randomized(voice.db)
    second = randomized(voice.db)
    number = request_by_phone(voice, first)
    other = request_by_phone(voice, second)
    from ivrs.main import main

    runner = CliRunner()
    listed = runner.invoke(main, ["approvals", "list"], catch_exceptions=False)
    rows = list(csv.DictReader(io.StringIO(listed.output)))
    assert [(r["number"], r["kind"], r["site"], r["status"]) for r in rows] == [
        (other, "unblinding", "102", "pending"), (number, "unblinding", "102", "pending")]
    assert rows[1]["about"] == f"emergency unblinding of subject {first} (medical emergency)"
    assert not any(word in listed.output for word in ARM_WORDS)
    result = runner.invoke(main, ["approvals", "approve", number, "--user", "6050"],
                           env={"IVRS_PIN": "3579"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"unblinding request {number} approved, signed by user:6050" in result.output
    result = runner.invoke(main, ["approvals", "approve", number, "--user", "6050"],
                           env={"IVRS_PIN": "3579"})
    assert result.exit_code == 1
    assert f"request {number} is approved: it cannot be approved now" in result.output
    # a day and more later, the other request expires and its requester is told
    monkeypatch.setenv("IVRS_TODAY", (date.fromisoformat(TODAY) + timedelta(days=2)).isoformat())
    assert expire_stale(voice.db, study=STUDY) == [other]
    assert [r.status for r in unblinding_rows(voice.db)] == ["approved", "expired"]
    (told,) = notifications(voice.db, "unblinding_expired")
    assert told.audience == "user:5002" and told.params["number"] == other
    assert expire_stale(voice.db, study=STUDY) == []
    result = runner.invoke(main, ["approvals", "approve", other, "--user", "6050"],
                           env={"IVRS_PIN": "3579"})
    assert result.exit_code == 1 and "expired" in result.output
