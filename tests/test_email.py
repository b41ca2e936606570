"""Outbound e-mail (SPEC §2 SMTP_URL): the second channel of the outbox, end to end.

The mail server is a real one (aiosmtpd, on a free local port) whose handler
keeps what it accepted and can be told to answer a code instead, or to drop the
connection once the content has arrived. The sender's clock is moved with
``now=`` (no sleeping); the SMS side is tests/test_notify.py's, whose helpers
(and local fake of Twilio) are reused here.
"""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from click.testing import CliRunner
from fake_twilio import FakeTwilio
from helpers import table_counts
from sqlalchemy import select, update
from studyfiles import snapshot, write_study
from test_blinding_scan import leaks
from test_notify import (
    audit_rows,
    chain_intact,
    closed_port_url,
    deliveries,
    queue,
    twilio_env,
)
from test_resupply import TODAY, add_kits

from core.actors import ADMIN
from core.deliveries import MAX_ATTEMPTS, backoff, claim_next
from core.errors import FileErrors, IvrsError
from core.models import Arm, Delivery, KitType, Notification, User
from core.study_loader import load_study
from core.supply.expiry import run_expiry
from core.users import add_user
from dialogs.output import Say
from ivrs.config import ConfigError, Settings, parse_smtp_url
from ivrs.main import main
from ivrs.outbound import email as email_sender
from ivrs.outbound.email import REQUEUE_AFTER, send_pending_email
from ivrs.outbound.notify import _typed, expand
from ivrs.outbound.scheduler import start_sender
from ivrs.render import speech

MARIE = "marie.curie@hopital-x.example.org"  # user 5001 (French), site 101
FROM = "ivrs@trial.example.org"
EXPIRY_SOON = TODAY + timedelta(days=30)


# --- a real mail server ---------------------------------------------------------------------


class Mailbox:
    """aiosmtpd's handler: keeps what it accepted; told to, it answers a code at
    MAIL, RCPT or after the content (``DATA``), or drops the connection once the
    content has arrived (the message is then kept: the server took it, the
    client never heard)."""

    def __init__(self):
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.replies: dict[str, list[str]] = {"MAIL": [], "RCPT": [], "DATA": []}
        self.drop_after_content = 0
        self.contents = 0  # message contents received, accepted or not
        self._lock = threading.Lock()

    def answer(self, step: str, *replies: str) -> None:
        self.replies[step].extend(replies)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.replies["MAIL"]:
            return self.replies["MAIL"].pop(0)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.replies["RCPT"]:
            return self.replies["RCPT"].pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self._lock:
            self.contents += 1
        if self.replies["DATA"]:
            return self.replies["DATA"].pop(0)
        with self._lock:
            self.messages.append(message_from_bytes(envelope.original_content,
                                                    policy=policy.default))
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        if self.drop_after_content:
            self.drop_after_content -= 1
            server.transport.abort()  # taken, but the client never hears it
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MailServer:
    def __init__(self, **server_options):
        self.mailbox = Mailbox()
        self.port = free_port()
        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port,
                                     **server_options)

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()

    def url(self, scheme: str = "smtp", credentials: str = "", query: str = "") -> str:
        return f"{scheme}://{credentials}127.0.0.1:{self.port}{query}"


@pytest.fixture
def server():
    with MailServer() as running:
        yield running


@pytest.fixture
def mailbox(server) -> Mailbox:
    return server.mailbox


def smtp_settings(server: MailServer, **options) -> Settings:
    return Settings(database_url="unused", smtp=parse_smtp_url(server.url(**options), FROM))


@pytest.fixture
def mailer(server) -> Settings:
    return smtp_settings(server)


@pytest.fixture
def study(db, tmp_path):
    """The example study with an e-mail address for user 5001 (French), given in
    the study file; 5002, also at site 101, has none."""
    load_study(db, write_study(tmp_path, ('phone: "+33655500101", language: fr',
                                          (f'phone: "+33655500101", email: "{MARIE}", '
                                           'language: fr'))))
    return db


def email_deliveries(db) -> list[Delivery]:
    return [d for d in deliveries(db) if d.channel == "email"]


def only_email(db) -> Delivery:
    (delivery,) = email_deliveries(db)
    return delivery


def french(message_id: str, params: dict) -> str:
    return speech.text(Say(message_id, {k: _typed(k, v) for k, v in params.items()}), "fr")


def our_logs(caplog) -> str:
    """What ivrs and core logged (the test server's own log names addresses)."""
    return "\n".join(record.getMessage() for record in caplog.records
                     if record.name.startswith(("ivrs", "core")))


def now_plus(**delta) -> datetime:
    return datetime.now(UTC) + timedelta(**delta)


# --- a notification reaches the mailbox ---------------------------------------------------------


def test_an_expiry_warning_reaches_the_recipients_mailbox_in_their_language(
        study, server, mailbox, mailer):
    add_kits(study, "KA", 2, expiry=EXPIRY_SOON, site="101")
    assert run_expiry(study, today=TODAY).warnings == 1  # to site:101: 5001 and 5002
    start = datetime.now(UTC)

    report = send_pending_email(study, mailer, now=start)

    assert (report.expanded, report.queued, report.sent) == (1, 1, 1), report.summary()
    (message,) = mailbox.messages
    assert mailbox.envelopes == [(FROM, [MARIE])]
    assert (message["To"], message["From"]) == (MARIE, FROM)
    assert message["Subject"] == "ABC-301 : kits proches de la péremption"
    body = message.get_content()
    params = {"location": "101", "count": 2, "expiry_date": EXPIRY_SOON.isoformat()}
    assert body.strip() == french("notify.expiry_warning.site", params)
    assert body.startswith("Alerte péremption : 2 kits au centre 101 expirent le 1 avril 2026")
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert message["Auto-Submitted"] == "auto-generated"
    assert abs(parsedate_to_datetime(message["Date"]) - start) < timedelta(seconds=1)
    delivery = only_email(study)
    assert message["Message-ID"] == f"<{delivery.provider_sid}@trial.example.org>"
    assert (delivery.status, delivery.attempts, delivery.to_email, delivery.to_phone) == (
        "sent", 1, MARIE, None)
    (sent,) = [row for row in audit_rows(study, "message_sent")
               if row.new.get("channel") == "email"]
    assert sent.new["user"] == "5001" and MARIE not in repr(sent.new)
    assert body.strip() not in repr(sent.new)
    # the SMS of both users were made too, and wait for Twilio (not configured here)
    assert sorted((d.channel, d.to_phone, d.status) for d in deliveries(study)
                  if d.channel == "sms") == [("sms", "+33655500101", "queued"),
                                             ("sms", "+33655500102", "queued")]
    assert send_pending_email(study, mailer, now=start + timedelta(days=1)).sent == 0
    assert len(mailbox.messages) == 1 and chain_intact(study)


def test_a_shipment_dispatched_is_emailed_to_the_depot_and_the_site(study, server, mailbox,
                                                                      mailer):
    from core.supply.resupply import run_resupply
    from core.supply.shipments import dispatch_shipment

    with study.transaction() as session:
        session.execute(update(User).where(User.user_code == "7001")
                        .values(email="lager@depot.example.org", language="de"))
    add_kits(study, "KA", 40)
    add_kits(study, "KP", 40)
    (first, *_) = run_resupply(study, today=TODAY)  # shipment requested: to the depot manager
    dispatch_shipment(study, shipment_number=first.shipment_number, carrier="DHL",
                      tracking_number="JD014600003", actor=ADMIN)

    report = send_pending_email(study, mailer)

    assert report.failed == 0 and report.sent == len(mailbox.messages) >= 2
    to_depot = mailbox.to("lager@depot.example.org")
    assert {m["Subject"] for m in to_depot} == {"ABC-301: Studienversorgung und Lieferungen"}
    assert any(first.shipment_number in m.get_content() for m in to_depot)
    assert first.site == "101"
    (dispatched,) = mailbox.to(MARIE)  # the site's: shipment on its way
    assert dispatched["Subject"] == "ABC-301 : approvisionnement et envois"
    assert "DHL JD014600003" in dispatched.get_content()


def test_a_user_without_an_address_gets_no_email_and_an_sms_opt_out_does_not_stop_it(
        study, mailbox, mailer):
    with study.transaction() as session:
        session.execute(update(User).where(User.user_code == "5001").values(opted_out=True))
    queue(study, "to-the-site", "site:101")  # 5001 (address, SMS opted out), 5002 (none)

    assert send_pending_email(study, mailer).sent == 1

    assert [m["To"] for m in mailbox.messages] == [MARIE]
    assert {(d.channel, d.user_id, d.status) for d in deliveries(study)} == {
        ("email", _id(study, "5001"), "sent"), ("sms", _id(study, "5001"), "opted_out"),
        ("sms", _id(study, "5002"), "queued")}


def _id(db, code: str) -> int:
    with db.sessions() as session:
        return session.scalars(select(User.id).where(User.user_code == code)).one()


# --- the server down or refusing ------------------------------------------------------------------


def test_smtp_down_is_retried_with_backoff_and_delivered_exactly_once(study, server, mailbox,
                                                                       mailer):
    queue(study, "while-down")
    queue(study, "also-while-down")
    down = Settings(database_url="unused",
                    smtp=parse_smtp_url(closed_port_url().replace("http", "smtp"), FROM))
    start = datetime.now(UTC)

    report = send_pending_email(study, down, now=start)

    assert report.retrying == 1 and report.sent == 0
    first, second = email_deliveries(study)
    assert (first.status, first.attempts, first.error_code) == ("queued", 1, "connect_error")
    assert (second.status, second.attempts) == ("queued", 0)  # the pass stopped: server down
    assert send_pending_email(study, down, now=start + timedelta(seconds=1)).retrying == 1
    assert send_pending_email(study, mailer, now=start + timedelta(seconds=29)).sent == 0
    both_due = start + timedelta(seconds=1) + backoff(1)
    assert send_pending_email(study, mailer, now=both_due).sent == 2
    assert send_pending_email(study, mailer, now=start + timedelta(hours=3)).sent == 0

    assert sorted(m["Subject"] for m in mailbox.messages) == ["ABC-301 : notification de l'essai"] * 2
    assert len({m["Message-ID"] for m in mailbox.messages}) == 2
    assert {(d.status, d.attempts) for d in email_deliveries(study)} == {("sent", 2)}


def test_a_server_that_never_answers_times_out_and_is_retried(study, mailer, monkeypatch):
    monkeypatch.setattr(email_sender, "SMTP_TIMEOUT_SECONDS", 0.5)
    queue(study, "silent-server")
    with socket.socket() as silent:  # accepts connections (the backlog) and says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        port = silent.getsockname()[1]
        settings = Settings(database_url="unused",
                            smtp=parse_smtp_url(f"smtp://127.0.0.1:{port}", FROM))
        report = send_pending_email(study, settings)
    assert report.retrying == 1
    assert (only_email(study).status, only_email(study).error_code) == ("queued", "timeout")


@pytest.mark.parametrize("step, reply", [
    ("RCPT", "550 5.1.1 No such user here"),
    ("DATA", "554 5.6.0 Message refused"),
    ("MAIL", "553 5.1.8 Sender domain refused"),
])
def test_a_5xx_fails_the_delivery_with_its_code_and_is_never_retried(
        study, mailbox, mailer, step, reply, caplog):
    queue(study, "refused-for-good")
    mailbox.answer(step, reply)
    code = reply.split()[0]

    with caplog.at_level(logging.INFO):
        report = send_pending_email(study, mailer)

    assert report.failed == 1 and report.sent == 0 and not mailbox.messages
    delivery = only_email(study)
    assert (delivery.status, delivery.error_code, delivery.attempts) == (
        "failed", f"smtp_{code}", 1)
    assert send_pending_email(study, mailer, now=now_plus(days=2)).sent == 0
    assert not mailbox.messages and delivery.attempts == only_email(study).attempts
    (failed,) = [r for r in audit_rows(study, "message_failed") if r.new.get("channel") == "email"]
    assert failed.new["error_code"] == f"smtp_{code}"
    assert MARIE not in our_logs(caplog) and "No such user" not in our_logs(caplog)


@pytest.mark.parametrize("step, reply", [
    ("RCPT", "451 4.3.0 Try again later"),
    ("DATA", "452 4.3.1 Insufficient system storage"),
    ("MAIL", "421 4.7.0 Too many connections"),
    ("MAIL", "530 5.7.0 Authentication required"),  # our configuration, not the message
])
def test_a_4xx_is_retried_with_backoff_and_sent_once(study, mailbox, mailer, step, reply):
    queue(study, "try-again")
    mailbox.answer(step, reply)
    start = datetime.now(UTC)

    assert send_pending_email(study, mailer, now=start).retrying == 1
    delivery = only_email(study)
    assert (delivery.status, delivery.attempts, delivery.error_code) == (
        "queued", 1, f"smtp_{reply.split()[0]}")
    assert send_pending_email(study, mailer, now=start + timedelta(seconds=29)).sent == 0
    assert send_pending_email(study, mailer, now=start + backoff(1)).sent == 1

    assert len(mailbox.messages) == 1 and only_email(study).status == "sent"


def test_retries_end_after_the_last_attempt(study, mailbox, mailer):
    queue(study, "always-451")
    mailbox.answer("RCPT", *["451 4.3.0 Try again later"] * (MAX_ATTEMPTS + 2))
    moment = datetime.now(UTC)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        send_pending_email(study, mailer, now=moment)
        moment += backoff(attempt)
    assert send_pending_email(study, mailer, now=moment + timedelta(days=1)).sent == 0

    delivery = only_email(study)
    assert (delivery.status, delivery.attempts, delivery.error_code) == (
        "failed", MAX_ATTEMPTS, "retries_exhausted")
    assert not mailbox.messages


def test_a_connection_lost_after_the_content_is_sent_again_with_the_same_message_id(
        study, mailbox, mailer):
    """At least once: the server took the message but the sender never heard it."""
    queue(study, "answer-lost")
    mailbox.drop_after_content = 1
    start = datetime.now(UTC)

    first = send_pending_email(study, mailer, now=start)

    assert first.uncertain == 1 and first.sent == 0 and len(mailbox.messages) == 1
    assert only_email(study).status == "sending"
    assert send_pending_email(study, mailer, now=start + timedelta(minutes=1)).sent == 0
    settled = send_pending_email(study, mailer, now=start + REQUEUE_AFTER + timedelta(seconds=1))
    assert settled.requeued == 1 and only_email(study).status == "queued"
    again = send_pending_email(study, mailer, now=start + REQUEUE_AFTER + timedelta(minutes=1))

    assert again.sent == 1 and len(mailbox.messages) == 2
    one, two = mailbox.messages
    assert one["Message-ID"] == two["Message-ID"]  # the duplicate is recognisable
    assert one.get_content() == two.get_content()
    delivery = only_email(study)
    assert (delivery.status, delivery.attempts) == ("sent", 2)
    assert one["Message-ID"] == f"<{delivery.provider_sid}@trial.example.org>"
    assert send_pending_email(study, mailer, now=start + timedelta(hours=3)).sent == 0


def test_a_sender_that_dies_after_its_claim_sends_again_after_the_wait(study, mailbox, mailer):
    queue(study, "claimed-then-died")
    start = datetime.now(UTC)
    assert not send_pending_email(study, Settings(database_url="unused"), now=start).configured
    assert deliveries(study) == []  # not configured: nothing expanded, nothing changed
    expand(study, now=start)
    assert claim_next(study, now=start, channel="sms")[0].to_phone == "+33655500101"
    claimed, _ = claim_next(study, now=start, channel="email")  # then the process died
    assert claimed is not None and claimed.to_email == MARIE and claimed.channel == "email"
    assert claim_next(study, now=start, channel="email") == (None, 0)

    assert send_pending_email(study, mailer, now=start + timedelta(minutes=1)).sent == 0
    late = start + REQUEUE_AFTER + timedelta(seconds=1)
    assert send_pending_email(study, mailer, now=late).requeued == 1
    assert send_pending_email(study, mailer, now=late + backoff(1)).sent == 1
    assert len(mailbox.messages) == 1


# --- blinding and privacy ---------------------------------------------------------------------------


def test_no_arm_in_any_email_and_no_address_or_text_in_the_logs(study, mailbox, mailer, caplog):
    with study.sessions() as session:
        arms = session.execute(select(Arm.code, Arm.name)).all()
        kit_types = list(session.scalars(select(KitType.code)))
    words, codes = [name for _, name in arms] + kit_types, [code for code, _ in arms]
    # A notification that (wrongly) carries unblinded parameters: never offered to the text.
    queue(study, "carries-unblinded-keys", "user:5001",
          params={"subject": "1010001", "visit": "V1", "kits": ["100001"], "kit_type": "KA",
                  "arm": "A", "allocation": "Drug 10 mg"})
    queue(study, "unblinded-subject", "user:5001", message_id="notify.subject_unblinded",
          kind="subject_unblinded",
          params={"subject": "1010001", "site": "101", "user": "5002", "number": "700001",
                  "arm": "Placebo"})
    add_kits(study, "KA", 2, expiry=EXPIRY_SOON, site="101")
    run_expiry(study, today=TODAY)

    with caplog.at_level(logging.DEBUG):
        assert send_pending_email(study, mailer).sent == 3

    everything = "\n".join([f"{name}: {value}" for m in mailbox.messages
                            for name, value in m.items()]
                           + [m.get_content() for m in mailbox.messages])
    assert "1010001" in everything  # the messages are there ...
    assert leaks(everything, words, codes) == []  # ... and no arm, no kit type
    subjects = [m["Subject"] for m in mailbox.messages]
    assert "ABC-301 : levée d'aveugle en urgence" in subjects
    logged = our_logs(caplog)
    assert MARIE not in logged
    assert not any(m.get_content().strip() in logged for m in mailbox.messages)


# --- without SMTP_URL: the outbox ---------------------------------------------------------------


@pytest.fixture
def run(study, database_env, monkeypatch):
    for name in ("TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID", "TWILIO_FROM_NUMBER",
                 "TWILIO_API_BASE_URL", "PUBLIC_BASE_URL", "SMTP_URL", "SMTP_FROM"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(args), catch_exceptions=False)


def smtp_env(monkeypatch, server: MailServer) -> None:
    monkeypatch.setenv("SMTP_URL", server.url())
    monkeypatch.setenv("SMTP_FROM", FROM)


def email_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if f"<{MARIE}>" in line]


def test_without_smtp_url_the_email_waits_in_the_outbox(study, run, server, mailbox,
                                                        monkeypatch):
    queue(study, "waits", "user:5001")
    subject = "ABC-301 : notification de l'essai"

    listed = run("outbox")  # pending: not expanded by anyone

    (line,) = email_lines(listed.output)
    assert f"\tto 5001 <{MARIE}> (fr)\t{subject} | " in line
    assert "\tto 5001 +33655500101 (fr)\t" in listed.output  # and the SMS beside it

    # Twilio configured, SMTP not: the SMS goes, the e-mail is made and waits, listed.
    with FakeTwilio() as fake:
        twilio_env(monkeypatch, fake)
        sent = run("outbox", "send")
        assert sent.exit_code == 0, sent.output
        assert sent.output.splitlines() == [
            sent.output.splitlines()[0], "e-mail: outbound e-mail not configured: nothing sent"]
        assert "sent 1" in sent.output.splitlines()[0] and fake.posts == 1
    assert only_email(study).status == "queued" and not mailbox.messages
    (waiting,) = email_lines(run("outbox").output)
    assert f"\tto 5001 <{MARIE}> (fr)\t{subject} | " in waiting
    assert "+33655500101" not in run("outbox").output  # the SMS is no longer waiting

    for name in ("TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID", "TWILIO_FROM_NUMBER"):
        monkeypatch.delenv(name)
    smtp_env(monkeypatch, server)
    both = run("outbox", "send")
    assert both.output.splitlines() == ["SMS: outbound SMS not configured: nothing sent",
                                        both.output.splitlines()[1]]
    assert both.output.splitlines()[1].startswith("e-mail: ") and "sent 1" in both.output
    assert [m["To"] for m in mailbox.messages] == [MARIE]
    assert run("outbox").output.strip() == "outbox empty"
    assert run("outbox", "--all").output.count(f"<{MARIE}>") == 1


def test_supply_run_ends_with_a_pass_of_the_email_sender(study, run, server, mailbox,
                                                         monkeypatch):
    add_kits(study, "KA", 2, expiry=EXPIRY_SOON, site="101")
    quiet = run("supply", "run", "--today", TODAY.isoformat())
    assert "e-mail" not in quiet.output and not mailbox.messages  # not configured

    smtp_env(monkeypatch, server)
    result = run("supply", "run", "--today", TODAY.isoformat())

    assert result.exit_code == 0
    assert result.output.splitlines()[-1].startswith("e-mail: "), result.output
    assert [m["Subject"] for m in mailbox.to(MARIE)] == ["ABC-301 : kits proches de la péremption"]


def test_the_server_thread_sends_emails_without_twilio(study, database_env, server, mailbox,
                                                        monkeypatch):
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_FROM_NUMBER", "SMTP_URL"):
        monkeypatch.delenv(name, raising=False)
    assert start_sender(database_env) is None  # neither channel: nothing runs
    queue(study, "for-the-server")
    smtp_env(monkeypatch, server)

    loop = start_sender(database_env, every=0.01)
    try:
        assert loop.wait_for_runs(2, timeout=60)
    finally:
        loop.stop(timeout=10)

    assert loop.failures == 0 and [m["To"] for m in mailbox.messages] == [MARIE]
    assert only_email(study).status == "sent"


def test_a_bad_smtp_url_stops_a_command_with_one_clear_message(study, run, monkeypatch):
    monkeypatch.setenv("SMTP_URL", "smtp://ivrs:s3cret-pass@mail.example.org:99999")
    monkeypatch.setenv("SMTP_FROM", FROM)
    before = table_counts(study)

    result = CliRunner().invoke(main, ["outbox", "send"])

    assert result.exit_code == 2
    assert "SMTP_URL is not usable: its port is not a number" in result.stderr
    assert "s3cret-pass" not in result.output + result.stderr
    assert table_counts(study) == before


# --- SMTP_URL ---------------------------------------------------------------------------------


@pytest.mark.parametrize("url, expected", [
    ("smtp://mail.example.org", ("mail.example.org", 25, "plain", None, None)),
    ("smtp://mail.example.org:2525", ("mail.example.org", 2525, "plain", None, None)),
    ("smtp://u:p@mail.example.org?starttls=true", ("mail.example.org", 587, "starttls", "u", "p")),
    ("smtp://mail.example.org:25?starttls=false", ("mail.example.org", 25, "plain", None, None)),
    ("smtps://ivrs%40example.org:p%40ss%3Aw%2Fd@smtp.example.org",
     ("smtp.example.org", 465, "tls", "ivrs@example.org", "p@ss:w/d")),
    ("SMTPS://[::1]:4650", ("::1", 4650, "tls", None, None)),
])
def test_smtp_url_forms(url, expected):
    settings = parse_smtp_url(url, FROM)
    assert (settings.host, settings.port, settings.security, settings.username,
            settings.password) == expected
    assert settings.from_address == FROM
    assert "p@ss" not in repr(settings)


@pytest.mark.parametrize("url, problem", [
    ("http://mail.example.org", "the scheme must be smtp or smtps"),
    ("mail.example.org", "the scheme must be smtp or smtps"),
    ("smtp://", "it names no host"),
    ("smtp://mail.example.org:port", "its port is not a number"),
    ("smtp://mail.example.org:0", "its port is not a number"),
    ("smtp://mail.example.org/inbox", "it has a path"),
    ("smtp://mail.example.org?tls=1", "unknown parameter 'tls'"),
    ("smtp://mail.example.org?starttls=maybe", "neither true nor false"),
    ("smtps://mail.example.org?starttls=true", "does not apply"),
    ("smtp://:secret@mail.example.org", "a password without a user name"),
])
def test_a_bad_smtp_url_is_a_clear_configuration_error(url, problem):
    with pytest.raises(ConfigError) as refused:
        parse_smtp_url(url, FROM)
    assert str(refused.value).startswith("SMTP_URL is not usable: ")
    assert problem in str(refused.value) and "secret" not in str(refused.value)


def test_the_from_address(monkeypatch):
    assert parse_smtp_url("smtps://ivrs%40example.org:pw@smtp.example.org").from_address == (
        "ivrs@example.org")  # the user name, when it is an address
    with pytest.raises(ConfigError, match="SMTP_FROM is needed"):
        parse_smtp_url("smtps://ivrs:pw@smtp.example.org")
    with pytest.raises(ConfigError, match="SMTP_FROM 'not an address' is not an e-mail"):
        parse_smtp_url("smtp://mail.example.org", "not an address")
    with pytest.raises(ConfigError, match="unencrypted"):
        parse_smtp_url("smtp://u:pw@mail.example.org", FROM, environment="production")
    assert parse_smtp_url("smtp://u:pw@127.0.0.1", FROM, environment="production").port == 25
    monkeypatch.setenv("SMTP_URL", "smtp://mail.example.org?starttls=true")
    monkeypatch.setenv("SMTP_FROM", FROM)
    assert Settings.from_env().smtp.port == 587
    monkeypatch.setenv("SMTP_URL", "")
    assert Settings.from_env().smtp is None


# --- TLS and authentication, against the same server ------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (openssl), and a client context that
    trusts it (the sender's is the system's, which would not)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    return server_context, str(cert)


class Credentials:
    """aiosmtpd's authenticator: one user and password (percent-decoded by us)."""

    def __init__(self, user: str, password: str):
        self.user, self.password, self.seen = user, password, []

    def __call__(self, server, session, envelope, mechanism, data):
        if isinstance(data, LoginPassword):
            self.seen.append(data.login.decode())
            return AuthResult(success=data.login.decode() == self.user
                              and data.password.decode() == self.password, handled=False)
        return AuthResult(success=False, handled=False)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("scheme", ["smtps", "starttls"])
def test_tls_with_credentials(study, certificate, scheme, monkeypatch):
    server_context, cafile = certificate
    monkeypatch.setattr(email_sender, "_tls_context",
                        lambda: ssl.create_default_context(cafile=cafile))
    auth = Credentials("ivrs@trial.example.org", "p@ss:word/1")
    options = {"authenticator": auth, "auth_required": True}
    if scheme == "smtps":
        # aiosmtpd does not see the TLS its Controller wraps around it: AUTH offered anyway
        options |= {"ssl_context": server_context, "auth_require_tls": False}
    else:
        options |= {"tls_context": server_context, "require_starttls": True}
    queue(study, f"over-{scheme}")
    with MailServer(**options) as secure:
        url = secure.url("smtps" if scheme == "smtps" else "smtp",
                         "ivrs%40trial.example.org:p%40ss%3Aword%2F1@",
                         "" if scheme == "smtps" else "?starttls=true")
        report = send_pending_email(study, parse_smtp_url(url))
        assert report.sent == 1, report.summary()
        assert [m["To"] for m in secure.mailbox.messages] == [MARIE]
        assert secure.mailbox.messages[0]["From"] == "ivrs@trial.example.org"
    assert auth.seen == ["ivrs@trial.example.org"]


def test_an_untrusted_certificate_is_retried_not_failed(study, certificate, caplog):
    server_context, _ = certificate
    queue(study, "wrong-password")
    queue(study, "after-it")
    with MailServer(authenticator=Credentials("u", "right"), auth_required=True,
                    tls_context=server_context, require_starttls=True) as secure:
        # the system does not trust the test certificate: TLS fails, nothing is sent
        untrusted = send_pending_email(study, parse_smtp_url(
            secure.url(credentials="u:wrong@", query="?starttls=true"), FROM))
    assert untrusted.retrying == 1 and untrusted.sent == 0
    assert [(d.status, d.error_code) for d in email_deliveries(study)] == [
        ("queued", "tls_error"), ("queued", None)]
    assert "TLS with the mail server failed" in caplog.text


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_wrong_credentials_are_retried_not_failed(study, caplog):
    queue(study, "wrong-password")
    with MailServer(authenticator=Credentials("u", "right"), auth_required=True,
                    auth_require_tls=False) as plain:
        report = send_pending_email(study, parse_smtp_url(plain.url(credentials="u:wrong@"),
                                                          FROM))
        assert not plain.mailbox.messages
    assert report.retrying == 1
    assert (only_email(study).status, only_email(study).error_code) == ("queued", "smtp_535")
    assert "refused our credentials" in caplog.text and "wrong" not in caplog.text


# --- users' addresses ----------------------------------------------------------------------------


BAD_ADDRESSES = ["marie curie@example.org", "marie@@example.org", "marie@localhost",
                 "marie.example.org", "marie@example.org\nBcc: x@evil.example",
                 "<marie@example.org>", "a" * 250 + "@example.org"]


@pytest.mark.parametrize("bad", BAD_ADDRESSES)
def test_a_bad_address_in_the_study_file_is_refused_naming_line_and_field(db, tmp_path, bad):
    load_study(db, write_study(tmp_path))
    before = snapshot(db)
    written = bad.replace("\n", "\\n")
    path = write_study(tmp_path, ('phone: "+33655500101", language: fr',
                                  f'phone: "+33655500101", email: "{written}", language: fr'),
                       name="bad.yaml")

    with pytest.raises(FileErrors) as refused:
        load_study(db, path)

    (error,) = refused.value.errors
    assert error.field == "users[0].email" and error.line == 39
    assert "is not an e-mail address" in str(error)
    assert snapshot(db) == before


def test_an_address_in_the_study_file_is_stored_audited_and_changed_by_a_reload(db, tmp_path):
    load_study(db, write_study(tmp_path, ('phone: "+33655500101", language: fr',
                                          (f'phone: "+33655500101", email: "{MARIE}", '
                                           'language: fr'))))
    with db.sessions() as session:
        assert session.scalars(select(User.email).where(User.user_code == "5001")).one() == MARIE
    created = next(r for r in audit_rows(db, "user_created") if r.entity_id == "5001")
    assert created.new["email"] == MARIE

    result = load_study(db, write_study(tmp_path))  # the address removed from the file

    assert result.changes == [f'user_updated 5001: email "{MARIE}" → null']
    (updated,) = audit_rows(db, "user_updated")
    assert (updated.old, updated.new) == ({"email": MARIE}, {"email": None})


def test_users_add_with_an_email(study, run):
    added = run("users", "add", "6001", "--name", "Rosalind Franklin", "--role", "pharmacist",
                "--site", "101", "--email", " rosalind@kings.example.ac.uk ", "--pin", "1234")
    assert added.exit_code == 0, added.output
    with study.sessions() as session:
        assert session.scalars(select(User.email).where(User.user_code == "6001")).one() == (
            "rosalind@kings.example.ac.uk")
    created = next(r for r in audit_rows(study, "user_created") if r.entity_id == "6001")
    assert created.new["email"] == "rosalind@kings.example.ac.uk" and "phone" in created.new


@pytest.mark.parametrize("bad", BAD_ADDRESSES)
def test_users_add_with_a_bad_email_is_refused_and_changes_nothing(study, run, bad):
    before = table_counts(study)
    refused = CliRunner().invoke(main, ["users", "add", "6002", "--name", "x", "--role",
                                        "pharmacist", "--site", "101", "--email", bad,
                                        "--pin", "1234"])
    assert refused.exit_code == 1
    assert "refused: an e-mail address" in refused.output or \
        "refused: the domain" in refused.output
    assert table_counts(study) == before
    with pytest.raises(IvrsError):
        add_user(study, user_code="6002", name="x", role="pharmacist", sites=["101"],
                 phone=None, language=None, pin="1234", actor=ADMIN, email=bad)
    assert table_counts(study) == before


def test_an_international_address_needs_the_servers_smtputf8(study):
    with study.transaction() as session:
        session.execute(update(User).where(User.user_code == "5001")
                        .values(email="marie@hôpital.example.org"))
    queue(study, "to-an-idn")
    queue(study, "to-an-idn-again")
    with MailServer(enable_SMTPUTF8=False) as plain:  # (aiosmtpd's Controller offers it)
        report = send_pending_email(study, parse_smtp_url(plain.url(), FROM))
    assert report.failed == 2
    assert {d.error_code for d in email_deliveries(study)} == {"smtputf8"}

    queue(study, "to-an-idn-with-smtputf8")
    with MailServer(enable_SMTPUTF8=True) as able:
        report = send_pending_email(study, parse_smtp_url(able.url(), FROM))
        assert report.sent == 1
        assert able.mailbox.envelopes == [(FROM, ["marie@hôpital.example.org"])]


# --- notifications listed before any sender ran --------------------------------------------------


def test_a_pending_notification_lists_one_line_per_channel(study, run):
    with study.transaction() as session:
        session.execute(update(User).where(User.user_code == "5002")
                        .values(email="louis@example.org", opted_out=True))
    queue(study, "two-channels", "site:101")
    lines = run("outbox").output.splitlines()
    assert [line.split("\t")[4] for line in lines] == [
        "to 5001 +33655500101 (fr)", f"to 5001 <{MARIE}> (fr)", "to 5002 <louis@example.org> (fr)"]
    with study.sessions() as session:
        assert session.scalars(select(Notification.status)).all() == ["pending"]
    assert deliveries(study) == []
