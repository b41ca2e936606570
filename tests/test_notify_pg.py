"""Parallel SMS senders on PostgreSQL: every message reaches Twilio exactly once.

Four senders (as four servers would run them) start together on the same
queue: they expand the same notifications and claim from the same deliveries
at the same moment, each with its own engine and its own Twilio client,
against the local fake of Twilio's REST API.
"""

from __future__ import annotations

from collections import Counter

from fake_twilio import FakeTwilio
from helpers import parallel_senders
from sqlalchemy import select
from studyfiles import STUDY_YAML
from test_notify import PARAMS, queue, settings_for

from core.audit import verify
from core.models import AuditEvent, Delivery
from core.studies import get_study
from core.study_loader import load_study
from ivrs.outbound.notify import gateway, send_pending

SENDERS = 4
MESSAGES = 200
USERS = ("5001", "5002", "5003", "5005")


def test_parallel_senders_send_each_message_exactly_once(pg_db):
    load_study(pg_db, STUDY_YAML)
    for number in range(MESSAGES // len(USERS)):
        for code in USERS:
            queue(pg_db, f"parallel:{code}:{number}", f"user:{code}",
                  params={**PARAMS, "subject": f"{code}{number:04d}"})
    url = pg_db.engine.url.render_as_string(hide_password=False)
    with FakeTwilio() as fake:  # each sender with a Twilio client of its own
        reports, errors = parallel_senders(
            url, SENDERS, lambda db: send_pending(db, gateway(settings_for(fake))))

    assert not errors
    assert sum(r.expanded for r in reports) == MESSAGES
    assert sum(r.sent for r in reports) == MESSAGES
    assert sum(r.sent > 0 for r in reports) > 1  # the senders really shared the work
    assert fake.posts == MESSAGES
    posted = Counter((m.to, m.body) for m in fake.messages)
    assert len(posted) == MESSAGES and set(posted.values()) == {1}
    with pg_db.sessions() as session:
        rows = session.execute(select(Delivery.status, Delivery.attempts,
                                      Delivery.provider_sid)).all()
        assert len(rows) == MESSAGES
        assert {(status, attempts) for status, attempts, _ in rows} == {("sent", 1)}
        assert {sid for *_, sid in rows} == {m.sid for m in fake.messages}
        study_id = get_study(session).id
        assert verify(session, study_id) is None
        sent_audits = session.scalars(select(AuditEvent.entity_id)
                                      .where(AuditEvent.action == "message_sent")).all()
        assert sorted(sent_audits) == sorted(str(row) for row in session.scalars(
            select(Delivery.id)))
