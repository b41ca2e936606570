"""Parallel e-mail senders on PostgreSQL: every e-mail reaches the mail server once.

Four senders (as four servers would run them) start together on the same
queue, each with its own engine, against one real local SMTP server (aiosmtpd):
they expand the same notifications and claim from the same deliveries at the
same moment.
"""

from __future__ import annotations

from collections import Counter

import pytest
from helpers import parallel_senders
from sqlalchemy import select, update
from studyfiles import STUDY_YAML
from test_email import FROM, MailServer
from test_notify import PARAMS, queue

from core.audit import verify
from core.models import AuditEvent, Delivery, User
from core.studies import get_study
from core.study_loader import load_study
from ivrs.config import parse_smtp_url
from ivrs.outbound.email import send_pending_email

pytestmark = pytest.mark.postgres

SENDERS = 4
MESSAGES = 200
USERS = ("5001", "5002", "5003", "5005")


def test_parallel_email_senders_send_each_email_exactly_once(pg_db):
    load_study(pg_db, STUDY_YAML)
    with pg_db.transaction() as session:
        for code in USERS:
            session.execute(update(User).where(User.user_code == code)
                            .values(email=f"user{code}@site.example.org"))
    for number in range(MESSAGES // len(USERS)):
        for code in USERS:
            queue(pg_db, f"parallel:{code}:{number}", f"user:{code}",
                  params={**PARAMS, "subject": f"{code}{number:04d}"})
    url = pg_db.engine.url.render_as_string(hide_password=False)
    with MailServer() as server:
        smtp = parse_smtp_url(server.url(), FROM)
        reports, errors = parallel_senders(url, SENDERS,
                                           lambda db: send_pending_email(db, smtp))
        messages = list(server.mailbox.messages)

    assert not errors
    assert sum(r.expanded for r in reports) == MESSAGES
    assert sum(r.sent for r in reports) == MESSAGES, [r.summary() for r in reports]
    assert sum(r.sent > 0 for r in reports) > 1  # the senders really shared the work
    assert server.mailbox.contents == MESSAGES  # nothing handed over twice, nothing refused
    ids = Counter(m["Message-ID"] for m in messages)
    assert len(ids) == MESSAGES and set(ids.values()) == {1}
    bodies = Counter((m["To"], m.get_content()) for m in messages)
    assert len(bodies) == MESSAGES and set(bodies.values()) == {1}
    with pg_db.sessions() as session:
        rows = session.execute(select(Delivery.channel, Delivery.status, Delivery.attempts,
                                      Delivery.provider_sid)).all()
        emails = [row for row in rows if row.channel == "email"]
        assert len(emails) == MESSAGES
        assert {(status, attempts) for _, status, attempts, _ in emails} == {("sent", 1)}
        assert {f"<{sid}@trial.example.org>" for *_, sid in emails} == set(ids)
        # the SMS of the same notifications were made once each and wait for Twilio
        assert Counter((row.channel, row.status) for row in rows)[("sms", "queued")] == MESSAGES
        assert verify(session, get_study(session).id) is None
        sent = session.scalars(select(AuditEvent.entity_id)
                               .where(AuditEvent.action == "message_sent")).all()
        assert sorted(sent) == sorted(str(row) for row in session.scalars(
            select(Delivery.id).where(Delivery.channel == "email")))
