"""Outbound SMS (SPEC §2 outbox, §3 ``/sms/status``): the sender, end to end.

Twilio is replaced at the HTTP boundary only: a local fake of its REST API
(tests/fake_twilio.py) that the unchanged twilio library talks to, so what is
counted is what reached "Twilio". The sender's clock is moved with ``now=``
(no sleeping); "a crash" is a process that stops between two steps, and "a
restart" a new database engine and a new Twilio client working from what the
database holds.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from fake_twilio import FROM_NUMBER, FakeTwilio
from helpers import table_counts
from sqlalchemy import select, update
from studyfiles import STUDY_YAML
from twilio.request_validator import RequestValidator

from core.audit import AuditLog, verify
from core.db import Database
from core.deliveries import MAX_ATTEMPTS, backoff, claim_next, set_opted_out
from core.models import AuditEvent, Delivery, Notification, User
from core.studies import get_study
from core.study_loader import load_study
from core.supply.outbox import notify
from dialogs.output import Say
from ivrs.app import create_app
from ivrs.config import Settings
from ivrs.conversations.sessions import MemorySessionStore
from ivrs.main import main
from ivrs.outbound.notify import gateway, send_pending
from ivrs.outbound.scheduler import start_sender
from ivrs.render import speech
from ivrs.render.sms_text import for_sms

COORDINATOR = "+33655500101"  # user 5001, site 101
INVESTIGATOR = "+33655500102"  # user 5002, site 101
MESSAGE = "sms.kit_confirm_request"
PARAMS = {"subject": "1010001", "visit": "V1", "kits": ["100001"]}
TEXT = ("Subject 1010001 visit V1: kit no. 100001 assigned. Reply KIT and each kit number you "
        "hand out, e.g. KIT 123.")
TOKEN = "test-twilio-auth-token"
PUBLIC = "https://ivrs.example.org"


@pytest.fixture
def study(db):
    """The example study, its users reading English (the language of a message is
    tested on its own: test_each_recipient_reads_their_own_language)."""
    load_study(db, STUDY_YAML)
    with db.transaction() as session:
        session.execute(update(User).values(language="en"))
    return db


@pytest.fixture
def fake():
    with FakeTwilio() as server:
        yield server


def settings_for(fake: FakeTwilio, **overrides) -> Settings:
    values = {"database_url": "unused", "twilio_auth_token": fake.auth_token,
              "twilio_account_sid": fake.account_sid, "twilio_from_number": FROM_NUMBER,
              "twilio_api_base_url": fake.base_url, "public_base_url": PUBLIC}
    return Settings(**{**values, **overrides})


def closed_port_url() -> str:
    """A local address where nothing listens: connections to it are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def sender(fake):
    return gateway(settings_for(fake))


def queue(db: Database, key: str, audience: str = "user:5001", *, params=None,
          message_id: str = MESSAGE, kind: str = "test") -> None:
    """What a core service does: a notification in its own committed transaction."""
    with db.transaction() as session:
        study_id = get_study(session).id
        audit = AuditLog(study_id, "test")
        notify(session, audit, study_id, key=key, kind=kind, audience=audience,
               message_id=message_id, params=PARAMS if params is None else params)
        audit.seal(session)


def deliveries(db: Database) -> list[Delivery]:
    with db.sessions() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def only_delivery(db: Database) -> Delivery:
    (delivery,) = deliveries(db)
    return delivery


def user(db: Database, code: str) -> User:
    with db.sessions() as session:
        return session.scalars(select(User).where(User.user_code == code)).one()


def audit_rows(db: Database, action: str) -> list[AuditEvent]:
    with db.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                    .order_by(AuditEvent.seq)))


def chain_intact(db: Database) -> bool:
    with db.sessions() as session:
        return verify(session, get_study(session).id) is None


def now_plus(**delta) -> datetime:
    return datetime.now(UTC) + timedelta(**delta)


# --- never without a commit, exactly once after one ------------------------------------------


def test_a_message_queued_by_a_rolled_back_transaction_is_never_sent(study, fake, sender):
    with pytest.raises(RuntimeError), study.transaction() as session:
        study_id = get_study(session).id
        notify(session, None, study_id, key="rolled-back", kind="test", audience="user:5001",
               message_id=MESSAGE, params=PARAMS)
        raise RuntimeError("the service failed after queuing its message")
    queue(study, "committed", "user:5002")

    report = send_pending(study, sender)

    assert report.sent == 1 and fake.posts == 1
    assert [(m.to, m.body) for m in fake.messages] == [(INVESTIGATOR, TEXT)]
    with study.sessions() as session:
        assert session.scalars(select(Notification.key)).all() == ["committed"]


def test_a_message_committed_before_a_crash_is_sent_once_on_restart(study, fake):
    url = study.engine.url.render_as_string(hide_password=False)
    queue(study, "before-the-crash")
    study.dispose()  # the process that queued it dies before any sender ran

    restarted = Database(url)
    try:
        report = send_pending(restarted, gateway(settings_for(fake)))
        again = send_pending(restarted, gateway(settings_for(fake)), now=now_plus(hours=2))
    finally:
        restarted.dispose()

    assert report.sent == 1 and again.sent == 0
    assert fake.posts == 1 and [(m.to, m.from_, m.body) for m in fake.messages] == [
        (COORDINATOR, FROM_NUMBER, TEXT)]
    delivery = only_delivery(study)
    assert (delivery.status, delivery.provider_sid, delivery.attempts) == (
        "sent", fake.messages[0].sid, 1)
    assert fake.messages[0].status_callback == PUBLIC + "/sms/status"
    (sent,) = audit_rows(study, "message_sent")
    assert sent.new["provider_sid"] == fake.messages[0].sid and sent.new["user"] == "5001"
    assert TEXT not in repr(sent.new)  # the text stays on the delivery row
    assert chain_intact(study)


def test_a_sender_that_dies_after_its_claim_is_reconciled_and_sent_once(study, fake, sender):
    queue(study, "claimed-then-died")
    fake.fail_next(1, 500)
    start = datetime.now(UTC)
    send_pending(study, sender, now=start)  # expanded, one failed attempt: queued again
    due = start + backoff(1)

    claimed, _ = claim_next(study, now=due)  # claimed for its second attempt, then the
    assert claimed is not None and only_delivery(study).status == "sending"  # process died

    early = send_pending(study, sender, now=due + timedelta(seconds=30))
    assert early.sent == 0 and only_delivery(study).status == "sending"  # maybe in flight
    late = send_pending(study, sender, now=due + timedelta(minutes=2))
    assert late.retrying == 1 and only_delivery(study).status == "queued"  # Twilio has none
    assert send_pending(study, sender, now=due + timedelta(minutes=3)).sent == 1
    assert send_pending(study, sender, now=due + timedelta(hours=3)).sent == 0

    assert len(fake.messages) == 1 and fake.posts == 2  # the 500, then the one message
    assert only_delivery(study).provider_sid == fake.messages[0].sid


def test_an_answer_lost_after_twilio_took_the_message_is_reconciled_without_a_second_post(
        study, fake, sender):
    queue(study, "lost-answer")
    fake.drop_next()

    first = send_pending(study, sender)
    assert first.uncertain == 1 and first.sent == 0
    assert fake.posts == 1 and len(fake.messages) == 1  # Twilio has it; we do not know
    assert only_delivery(study).status == "sending"

    assert send_pending(study, sender, now=now_plus(seconds=30)).sent == 0
    settled = send_pending(study, sender, now=now_plus(minutes=2))

    assert settled.reconciled == 1 and fake.posts == 1
    delivery = only_delivery(study)
    assert (delivery.status, delivery.provider_sid) == ("sent", fake.messages[0].sid)
    assert send_pending(study, sender, now=now_plus(hours=5)).sent == 0 and fake.posts == 1
    (sent,) = audit_rows(study, "message_sent")
    assert sent.new["reconciled"] is True


def test_a_refused_connection_is_retried_after_the_backoff(study, fake):
    queue(study, "unreachable")
    unreachable = gateway(settings_for(fake, twilio_api_base_url=closed_port_url()))
    report = send_pending(study, unreachable)
    assert report.retrying == 1
    delivery = only_delivery(study)
    assert (delivery.status, delivery.attempts, delivery.error_code) == (
        "queued", 1, "connect_error")

    assert send_pending(study, gateway(settings_for(fake)), now=now_plus(minutes=1)).sent == 1
    assert fake.posts == 1


def test_refused_credentials_fail_no_message_they_are_retried(study, fake):
    queue(study, "wrong-token")
    report = send_pending(study, gateway(settings_for(fake, twilio_auth_token="wrong")))
    assert report.retrying == 1 and not fake.messages
    assert (only_delivery(study).status, only_delivery(study).error_code) == ("queued", "20003")

    assert send_pending(study, gateway(settings_for(fake)), now=now_plus(minutes=1)).sent == 1


# --- errors Twilio answers ----------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_server_error_is_retried_with_backoff_and_sent_once(study, fake, sender, status):
    queue(study, f"error-{status}")
    fake.fail_next(1, status)
    start = datetime.now(UTC)

    assert send_pending(study, sender, now=start).retrying == 1
    delivery = only_delivery(study)
    assert delivery.status == "queued" and delivery.attempts == 1
    assert send_pending(study, sender, now=start + timedelta(seconds=29)).sent == 0
    assert fake.posts == 1  # not due yet
    assert send_pending(study, sender, now=start + backoff(1)).sent == 1

    assert fake.posts == 2 and len(fake.messages) == 1
    assert only_delivery(study).status == "sent"


def test_retries_end_after_the_last_attempt(study, fake, sender):
    queue(study, "always-500")
    fake.fail_next(MAX_ATTEMPTS + 5, 500)
    moment = datetime.now(UTC)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        send_pending(study, sender, now=moment)
        moment += backoff(attempt)
    assert send_pending(study, sender, now=moment + timedelta(days=1)).sent == 0

    delivery = only_delivery(study)
    assert (delivery.status, delivery.attempts, delivery.error_code) == (
        "failed", MAX_ATTEMPTS, "retries_exhausted")
    assert fake.posts == MAX_ATTEMPTS and not fake.messages
    (failed,) = audit_rows(study, "message_failed")
    assert failed.new["last_error"] == "20500"


def test_twilio_21610_opts_the_user_out_and_is_never_retried(study, fake, sender):
    queue(study, "unsubscribed")
    fake.reject_next(21610)

    report = send_pending(study, sender)

    assert report.opted_out == 1 and fake.posts == 1 and not fake.messages
    delivery = only_delivery(study)
    assert (delivery.status, delivery.error_code) == ("opted_out", "21610")
    assert user(study, "5001").opted_out
    (opted,) = audit_rows(study, "user_opted_out")
    assert opted.entity_id == "5001" and opted.new == {"opted_out": True,
                                                       "source": "twilio 21610"}
    assert send_pending(study, sender, now=now_plus(hours=2)).sent == 0

    queue(study, "later", "site:101")  # 5001 and 5002
    later = send_pending(study, sender)
    assert later.sent == 1 and later.opted_out == 1
    assert [m.to for m in fake.messages] == [INVESTIGATOR] and fake.posts == 2
    assert chain_intact(study)


def test_any_other_refusal_fails_the_delivery_for_good(study, fake, sender):
    queue(study, "bad-number")
    fake.reject_next(21211)

    assert send_pending(study, sender).failed == 1
    delivery = only_delivery(study)
    assert (delivery.status, delivery.error_code) == ("failed", "21211")
    assert send_pending(study, sender, now=now_plus(days=1)).sent == 0 and fake.posts == 1
    assert not user(study, "5001").opted_out


# --- opting out -----------------------------------------------------------------------------


def test_an_opted_out_user_gets_nothing_until_opted_back_in(study, fake, sender):
    assert set_opted_out(study, phone=COORDINATOR, opted_out=True, source="sms STOP") == 1
    assert set_opted_out(study, phone=COORDINATOR, opted_out=True, source="sms STOP") == 0
    queue(study, "while-out")

    report = send_pending(study, sender)

    assert report.opted_out == 1 and report.sent == 0 and fake.posts == 0
    assert only_delivery(study).status == "opted_out"
    assert set_opted_out(study, phone=COORDINATOR, opted_out=False, source="sms START") == 1
    assert send_pending(study, sender).sent == 0  # that message stays unsent
    queue(study, "back-in")
    assert send_pending(study, sender).sent == 1 and fake.posts == 1
    assert [row.action for row in audit_rows(study, "user_opted_out")
            + audit_rows(study, "user_opted_in")] == ["user_opted_out", "user_opted_in"]


def test_an_opt_out_between_queuing_and_sending_wins(study, fake, sender):
    queue(study, "stopped-in-between")
    fake.fail_next(1, 500)
    send_pending(study, sender)  # expanded and tried once: back in the queue
    set_opted_out(study, phone=COORDINATOR, opted_out=True, source="sms STOP")

    report = send_pending(study, sender, now=now_plus(minutes=5))

    assert report.opted_out == 1 and report.sent == 0
    assert fake.posts == 1 and not fake.messages
    assert only_delivery(study).status == "opted_out"


# --- audiences and texts -----------------------------------------------------------------


def test_audiences_expand_to_their_active_users_with_a_phone(study, fake, sender):
    with study.transaction() as session:
        session.execute(update(User).where(User.user_code == "5003").values(active=False))
    queue(study, "to-site-101", "site:101")
    queue(study, "to-investigators", "role:investigator")
    queue(study, "to-site-102", "site:102")  # 5003 (inactive) and 5005
    queue(study, "to-admin", "user:9001")  # no phone
    queue(study, "to-nobody", "group:everyone")

    report = send_pending(study, sender)

    with study.sessions() as session:
        got = session.execute(select(Notification.key, User.user_code)
                              .join(Delivery, Delivery.notification_id == Notification.id)
                              .join(User, User.id == Delivery.user_id)
                              .order_by(Notification.key, User.user_code)).all()
        statuses = set(session.scalars(select(Notification.status)))
    assert got == [("to-investigators", "5002"), ("to-investigators", "5005"),
                   ("to-site-101", "5001"), ("to-site-101", "5002"), ("to-site-102", "5005")]
    assert statuses == {"expanded"}
    assert report.expanded == 5 and report.sent == 5 and fake.posts == 5
    assert sorted(m.to for m in fake.messages) == sorted(
        [COORDINATOR, INVESTIGATOR, INVESTIGATOR, "+4915155500105", "+4915155500105"])


def test_a_message_without_text_is_never_sent_empty(study, fake, sender, caplog):
    queue(study, "no-text", message_id="notify.no_such_message")

    report = send_pending(study, sender)

    assert report.failed == 1 and fake.posts == 0
    delivery = only_delivery(study)
    assert (delivery.status, delivery.error_code, delivery.body) == ("failed", "no_text", "")
    assert "has no text" in caplog.text


def test_without_twilio_settings_nothing_is_sent_and_nothing_changes(study, fake):
    queue(study, "waits")
    before = table_counts(study)

    report = send_pending(study, Settings(database_url="unused", twilio_auth_token=TOKEN))

    assert not report.configured and table_counts(study) == before and fake.posts == 0


# --- status callbacks ----------------------------------------------------------------------


@pytest.fixture
def app(study):
    return create_app(Settings(database_url="unused", twilio_auth_token=TOKEN), db=study,
                      store=MemorySessionStore())


def callback(app, form: dict[str, str], *, signed: bool = True):
    url = "http://localhost/sms/status"
    headers = {"X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(url, form)
               } if signed else {}
    return app.test_client().post("/sms/status", data=form, headers=headers)


def sent_delivery(study, sender) -> Delivery:
    queue(study, "with-callbacks")
    send_pending(study, sender)
    return only_delivery(study)


def test_status_callbacks_move_the_delivery_forward_only(study, fake, sender, app):
    sid = sent_delivery(study, sender).provider_sid

    assert callback(app, {"MessageSid": sid, "MessageStatus": "sent"}).status_code == 204
    assert only_delivery(study).status == "sent"
    assert callback(app, {"MessageSid": sid, "MessageStatus": "delivered"}).status_code == 204
    assert only_delivery(study).status == "delivered"
    assert callback(app, {"MessageSid": sid, "MessageStatus": "sent"}).status_code == 204
    assert only_delivery(study).status == "delivered"  # late, ignored


def test_an_undelivered_callback_records_the_error_and_21610_opts_out(study, fake, sender, app):
    sid = sent_delivery(study, sender).provider_sid

    callback(app, {"MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": "21610"})

    delivery = only_delivery(study)
    assert (delivery.status, delivery.error_code) == ("opted_out", "21610")
    assert user(study, "5001").opted_out
    assert audit_rows(study, "message_opted_out")[-1].new["error_code"] == "21610"


def test_an_unsigned_callback_is_refused_and_changes_nothing(study, fake, sender, app):
    sid = sent_delivery(study, sender).provider_sid
    before = table_counts(study)

    response = callback(app, {"MessageSid": sid, "MessageStatus": "failed"}, signed=False)

    assert response.status_code == 403
    assert only_delivery(study).status == "sent" and table_counts(study) == before


@pytest.mark.parametrize("form", [
    {},
    {"MessageSid": "nonsense", "MessageStatus": "delivered"},
    {"MessageSid": "SM" + "f" * 32, "MessageStatus": "delivered"},  # none of ours
    {"MessageSid": "SM" + "f" * 32, "MessageStatus": "exploded"},
])
def test_a_garbage_callback_gets_204_and_changes_nothing(study, fake, sender, app, form):
    sent_delivery(study, sender)
    before = table_counts(study)

    assert callback(app, form).status_code == 204
    assert only_delivery(study).status == "sent" and table_counts(study) == before


def test_a_callback_gets_204_when_the_database_fails(tmp_path):
    broken = Database(f"sqlite:///{tmp_path / 'missing' / 'x.sqlite3'}")
    app = create_app(Settings(database_url="unused", twilio_auth_token=TOKEN), db=broken,
                     store=MemorySessionStore())
    form = {"MessageSid": "SM" + "a" * 32, "MessageStatus": "delivered"}
    assert callback(app, form).status_code == 204


# --- ivrs outbox ------------------------------------------------------------------------------


@pytest.fixture
def run(study, database_env, monkeypatch):
    for name in ("TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID", "TWILIO_FROM_NUMBER",
                 "TWILIO_API_BASE_URL", "PUBLIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(args), catch_exceptions=False)


def test_outbox_lists_each_recipient_and_the_text_they_get(study, run):
    queue(study, "confirm", "user:5001")
    queue(study, "untranslated", "user:5002", message_id="notify.no_such_message")
    set_opted_out(study, phone="+4915155500105", opted_out=True, source="sms STOP")
    queue(study, "to-site-103", "site:103")  # only 5005, who opted out
    before = table_counts(study)

    result = run("outbox")

    assert result.exit_code == 0, result.output
    first, second, third = result.output.splitlines()
    assert first.startswith(f"test\tuser:5001\t{MESSAGE}\t")
    assert first.endswith(f"\tto 5001 {COORDINATOR} (en)\t{TEXT}")
    assert second.endswith(f"\tto 5002 {INVESTIGATOR} (en)\t"
                           "(no text for message notify.no_such_message)")
    assert third.startswith("test\tsite:103\t") and third.endswith("\tno recipient\t-")
    assert run("outbox", "--all").output.splitlines()[2].endswith(
        f"\tto 5005 +4915155500105 (en)\t{TEXT}\t[opted_out]")
    assert table_counts(study) == before  # listing changes nothing, expands nothing


def test_outbox_send_needs_twilio_and_then_sends(study, run, fake, monkeypatch):
    queue(study, "by-hand")
    refused = run("outbox", "send")
    assert refused.exit_code == 1 and "TWILIO_ACCOUNT_SID" in refused.output
    assert fake.posts == 0 and run("outbox").output.startswith("test\tuser:5001\t")

    twilio_env(monkeypatch, fake)
    sent = run("outbox", "send")

    assert sent.exit_code == 0 and "sent 1" in sent.output, sent.output
    assert fake.posts == 1 and run("outbox").output.strip() == "outbox empty"
    (line,) = run("outbox", "--all").output.splitlines()
    assert line.endswith(f"\tto 5001 {COORDINATOR} (en)\t{TEXT}\t[sent]")


# --- where the sender runs ------------------------------------------------------------------


def twilio_env(monkeypatch, fake: FakeTwilio) -> None:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", fake.auth_token)
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", fake.account_sid)
    monkeypatch.setenv("TWILIO_FROM_NUMBER", FROM_NUMBER)
    monkeypatch.setenv("TWILIO_API_BASE_URL", fake.base_url)


def test_supply_run_ends_with_a_pass_of_the_sender(study, run, fake, monkeypatch):
    queue(study, "left-by-a-job")
    assert "SMS" not in run("supply", "run").output and fake.posts == 0  # not configured

    twilio_env(monkeypatch, fake)
    result = run("supply", "run")

    # ours, and whatever the jobs queued (with no kits loaded: depot shortages)
    assert result.exit_code == 0 and result.output.splitlines()[-1].startswith("SMS: ")
    assert (TEXT, COORDINATOR) in [(m.body, m.to) for m in fake.messages]
    sent = [d for d in deliveries(study) if d.status == "sent"]
    assert fake.posts == len(sent) == len(fake.messages)
    assert run("outbox").output.strip() == "outbox empty"  # nothing waits


def test_the_server_thread_sends_what_is_queued(study, database_env, fake, monkeypatch):
    assert start_sender(database_env) is None  # no Twilio settings: nothing runs
    queue(study, "for-the-server")
    twilio_env(monkeypatch, fake)

    loop = start_sender(database_env, every=0.01)
    try:
        assert loop.wait_for_runs(2, timeout=60)
    finally:
        loop.stop(timeout=10)

    assert loop.failures == 0 and fake.posts == 1
    assert only_delivery(study).status == "sent"


def test_each_recipient_reads_their_own_language(study, fake):
    with study.transaction() as session:
        session.execute(update(User).where(User.user_code == "5001").values(language="fr"))
    queue(study, "site-message", "site:101")  # 5001 (French) and 5002 (English)
    send_pending(study, gateway(settings_for(fake)))
    french = speech.text(Say(MESSAGE, PARAMS), "fr")
    assert french != TEXT and "100001" in french
    assert sorted((m.to, m.body) for m in fake.messages) == sorted(
        [(COORDINATOR, for_sms(french)), (INVESTIGATOR, TEXT)])
