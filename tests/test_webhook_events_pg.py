"""The webhook sender under concurrency, on PostgreSQL: several senders (as
several servers run them) expanding and claiming at once, while the services
keep writing events. Each event reaches the receiver, each subject's in order,
with exactly one delivery row per event; no row is claimed twice."""

from __future__ import annotations

import threading
import time
from datetime import date, timedelta

import pytest
from helpers import parallel_senders
from sqlalchemy import select
from studyfiles import STUDY_YAML
from webhook_receiver import Receiver

from core import event_deliveries
from core.actors import ADMIN
from core.events import EVENT_TYPES
from core.models import Event, EventDelivery
from core.study_loader import load_study
from core.subjects import record_screen_failure, screen_subject
from core.webhook_subscriptions import add_subscription
from ivrs.outbound.webhooks import send_pending_webhooks

pytestmark = pytest.mark.postgres

SENDERS = 4
SUBJECTS = 24


@pytest.fixture(autouse=True)
def day0(monkeypatch):
    monkeypatch.setenv("IVRS_TODAY", date(2026, 1, 15).isoformat())


def test_parallel_senders_deliver_each_event_once_in_order(pg_db, monkeypatch):
    db = pg_db
    # retried at once rather than after 30 s, so that the failures fit in the test
    monkeypatch.setattr(event_deliveries, "retry_wait", lambda age: timedelta(milliseconds=20))
    load_study(db, STUDY_YAML)
    receiver = Receiver(script=["ok", "fail", "ok", "ok", "busy"] * 4)
    try:
        made = add_subscription(db, url=receiver.url(), event_types=",".join(EVENT_TYPES),
                                actor=ADMIN)
        url = db.engine.url.render_as_string(hide_password=False)
        writing = threading.Event()
        writing.set()

        def services() -> None:
            try:
                for n in range(SUBJECTS):
                    subject = screen_subject(db, site_code=("101", "102", "103")[n % 3],
                                             actor=ADMIN).subject_number
                    record_screen_failure(db, subject_number=subject, reason="test",
                                          actor=ADMIN)
            finally:
                writing.clear()

        def sender(own_db) -> int:
            passes = 0
            while True:
                was_writing = writing.is_set()
                send_pending_webhooks(own_db, timeout=5)
                passes += 1
                with own_db.sessions() as session:
                    waiting = session.scalar(select(EventDelivery.id).where(
                        EventDelivery.status.in_(("queued", "sending"))).limit(1))
                    pending = session.scalar(select(Event.id).where(
                        Event.status == "pending").limit(1))
                if not was_writing and waiting is None and pending is None:
                    return passes
                time.sleep(0.01)

        writer = threading.Thread(target=services)
        writer.start()
        reports, errors = parallel_senders(url, SENDERS, sender)
        writer.join(120)
        assert errors == [] and len(reports) == SENDERS

        written = {f"evt_{e.id}": e for e in _events(db)}
        assert len(written) == 2 * SUBJECTS
        rows = _deliveries(db)
        assert sorted(f"evt_{d.event_id}" for d in rows) == sorted(written)
        assert {d.status for d in rows} == {"delivered"}
        kept = receiver.first_arrivals()
        assert sorted(r.webhook_id for r in kept) == sorted(written)
        # one request per attempt (no delivery was claimed by two senders), and
        # the eight failures of the receiver's script retried
        assert len(receiver.received) == sum(d.attempts for d in rows) == 2 * SUBJECTS + 8
        by_key: dict[str, list[str]] = {}
        for request in kept:
            request.verified(made.secret)
            event = written[request.webhook_id]
            by_key.setdefault(event.ordering_key, []).append(event.type)
        assert len(by_key) == SUBJECTS
        assert set(map(tuple, by_key.values())) == {("subject.screened",
                                                     "subject.status_changed")}
    finally:
        receiver.close()


def _events(db) -> list[Event]:
    with db.sessions() as session:
        return list(session.scalars(select(Event).order_by(Event.id)))


def _deliveries(db) -> list[EventDelivery]:
    with db.sessions() as session:
        return list(session.scalars(select(EventDelivery).order_by(EventDelivery.id)))
