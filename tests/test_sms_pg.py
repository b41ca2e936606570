"""SMS under real concurrency on PostgreSQL: Twilio's duplicate deliveries arriving
at the same moment act once; senders confirming at once each confirm theirs."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta

import pytest
from sqlalchemy import func, select, update
from test_sms_flows import STUDY, randomized_subject
from voice import PARIS, TOKEN, demo_study_in_english, session_store

from core.actors import ADMIN, Actor
from core.models import User
from core.models import Kit, SubjectVisit
from core.users import add_user
from ivrs.app import create_app
from ivrs.config import Settings
from ivrs.demo.phone import AppTransport
from ivrs.demo.texter import Texter


@pytest.fixture
def sms_app(pg_db, tmp_path, monkeypatch):
    monkeypatch.setenv("IVRS_TODAY", "2026-11-23")
    demo_study_in_english(pg_db, tmp_path)
    return create_app(Settings(database_url="unused", twilio_auth_token=TOKEN), db=pg_db,
                      store=session_store())


def texter(app, sender: str) -> Texter:
    return Texter(AppTransport(app), sender=sender, auth_token=TOKEN)


def test_a_duplicate_disp_delivered_eight_times_at_once_dispenses_once(sms_app, pg_db,
                                                                       monkeypatch):
    subject, _ = randomized_subject(pg_db)
    monkeypatch.setenv("IVRS_TODAY", str(date(2026, 11, 23) + timedelta(days=28)))
    phone = texter(sms_app, PARIS)
    phone.send("HELP")
    phone.send("2468")
    sid = "SM" + "d" * 32
    barrier = threading.Barrier(8)

    def deliver(_):
        barrier.wait()
        return texter(sms_app, PARIS).send(f"DISP {subject}", message_sid=sid)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(deliver, range(8)))
    assert all(r.status == 200 for r in replies)
    answered = {r.text for r in replies if r.text}
    assert len(answered) == 1 and "hand out kit no." in answered.pop()
    with pg_db.sessions() as session:
        assert session.scalar(select(func.count()).where(Kit.visit_code == "V2")) == 2
        assert session.scalar(select(func.count()).where(
            SubjectVisit.visit_code == "V2")) == 1


def test_eight_senders_confirm_their_kits_at_the_same_time(sms_app, pg_db):
    senders = []
    for n in range(8):
        code, phone, site = f"60{n:02d}", f"+3361000{n:04d}", ("101", "102")[n % 2]
        add_user(pg_db, user_code=code, name=f"Coordinator {n}", role="site_coordinator",
                 sites=[site], phone=phone, language="en", pin="1234", actor=ADMIN,
                 study=STUDY)
        with pg_db.transaction() as session:  # as if the PIN had been changed by phone
            session.execute(update(User).where(User.user_code == code)
                            .values(pin_temporary=False))
        actor = Actor(role="site_coordinator", user_code=code, site_codes=frozenset({site}),
                      channel="voice")
        _, kits = randomized_subject(pg_db, actor, site)
        senders.append((phone, kits[0]))
    barrier = threading.Barrier(len(senders))

    def confirm(sender):
        phone, kit = sender
        barrier.wait()
        device = texter(sms_app, phone)
        device.send(f"KIT {kit}")
        return device.send("1234").text

    with ThreadPoolExecutor(len(senders)) as pool:
        replies = list(pool.map(confirm, senders))
    for (_, kit), text in zip(senders, replies, strict=True):
        assert f"Kit {kit} confirmed" in text, text
    with pg_db.sessions() as session:
        assert session.scalar(select(func.count()).where(Kit.status == "dispensed")) == 8
