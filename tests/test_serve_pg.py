"""A real ``ivrs serve`` (gunicorn, 4 workers, Redis sessions, PostgreSQL) under
simultaneous calls over HTTP: what every caller heard must be exactly what the
database holds, nothing may be given twice, and the shared PIN lockout holds
when three wrong PINs arrive together. PostgreSQL + Redis only."""

from __future__ import annotations

import csv
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from voice import demo_study_in_english

from core.actors import ADMIN, Actor
from core.audit import verify
from core.login import change_pin
from core.models import AuditEvent, ListEntry, Randomization, Site, Subject, User
from core.studies import get_study
from core.supply.kit_import import import_kits
from core.models import Kit
from core.users import add_user
from ivrs.demo.scenario import STUDY_CODE
from ivrs.demo.phone import HttpTransport, Phone, parse_twiml

pytestmark = pytest.mark.postgres

TOKEN = "e2e-twilio-auth-token"
DAY_1 = date(2026, 11, 23)
DAY_29 = DAY_1 + timedelta(days=28)  # visit 2 is due on day 28 after randomization
PIN = "2580"
CALLERS = 40
WORKERS = 4


# --- the study, its users and its kits ----------------------------------------------------


@dataclass(frozen=True)
class SiteUser:
    code: str
    site: str
    phone: str


def signed_up_users(db, count: int, first: int) -> list[SiteUser]:
    """Site coordinators with a PIN they chose (not temporary), spread over 101 and 102."""
    users = [SiteUser(str(first + i), "101" if i % 2 == 0 else "102", f"+3361{first + i:07d}")
             for i in range(count)]

    def sign_up(user: SiteUser) -> None:
        add_user(db, user_code=user.code, name=f"Coordinator {user.code}",
                 role="site_coordinator", sites=[user.site], phone=user.phone, language="en",
                 pin="1111", actor=ADMIN, study=STUDY_CODE)
        change_pin(db, user_code=user.code, new_pin=PIN, study=STUDY_CODE,
                   actor=Actor(role="site_coordinator", user_code=user.code,
                               site_codes=frozenset({user.site}), channel="test"))

    with ThreadPoolExecutor(4) as pool:  # argon2 releases the GIL
        list(pool.map(sign_up, users))
    return users


def stock_sites(db, path: Path, per_type_and_site: int = 60) -> None:
    """Kits for 20 subjects a site x 3 kits, whatever arm the list gives each."""
    with db.sessions() as session:
        taken = set(session.scalars(select(Kit.kit_number)))
    rng = random.Random(4040)
    numbers = iter(n for n in rng.sample(range(100000, 999999), 2000) if str(n) not in taken)
    expiry = DAY_1 + timedelta(days=730)  # the demo lots' expiry date
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["kit_number", "kit_type", "lot", "expiry_date", "location"])
        for site in ("101", "102"):
            for kit_type, lot in (("KA", "LA1"), ("KP", "LP1")):
                for _ in range(per_type_and_site):
                    writer.writerow([next(numbers), kit_type, lot, expiry.isoformat(), site])
    import_kits(db, path, study_code=STUDY_CODE)


@pytest.fixture
def study(pg_db, tmp_path, monkeypatch):
    if not os.environ.get("REDIS_URL"):
        pytest.skip("needs Redis: set REDIS_URL")
    monkeypatch.setenv("IVRS_TODAY", DAY_1.isoformat())
    demo_study_in_english(pg_db, tmp_path)
    return pg_db


# --- the server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def ivrs_serve(db, today: date, log_dir: Path):
    """``ivrs serve`` in its own process group, killed whole at the end whatever happens."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": db.engine.url.render_as_string(hide_password=False),
           "TWILIO_AUTH_TOKEN": TOKEN, "IVRS_TODAY": today.isoformat(),
           "IVRS_SUPPLY_AT": "off"}  # no supply run may change stock during the test
    log_path = log_dir / f"serve-{port}.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-c", "from ivrs.main import main; main()", "serve",
             "--port", str(port), "--workers", str(WORKERS)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server, log_path)
        yield url
    finally:
        # The whole group at once, master and workers: the checks need nothing
        # from a graceful stop, and gunicorn's master takes seconds to finish one.
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=15)


def wait_until_healthy(url: str, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"ivrs serve exited with {server.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"ivrs serve did not answer /healthz:\n{log_path.read_text()}")


# --- callers --------------------------------------------------------------------------------


class RecordingTransport(HttpTransport):
    """HTTP to the server, keeping every answer for the checks afterwards."""

    def __init__(self, base_url: str):
        super().__init__(base_url)
        self.answers: list[tuple[int, str]] = []

    def post(self, path, form, headers):
        status, body = super().post(path, form, headers)
        self.answers.append((status, body))
        return status, body


SPOKEN = r"(\d(?: \d)*)"


def spoken(pattern: str, text: str) -> list[str]:
    return [match.replace(" ", "") for match in re.findall(pattern.format(n=SPOKEN), text)]


def expect(heard, fragment: str):
    assert fragment in heard.text, f"expected {fragment!r}, heard {heard.text!r}"
    return heard


@dataclass
class Call:
    user: SiteUser
    transport: RecordingTransport
    phone: Phone
    heard: dict[str, str | list[str]] = field(default_factory=dict)

    @classmethod
    def to(cls, url: str, user: SiteUser) -> Call:
        transport = RecordingTransport(url)
        return cls(user, transport, Phone(transport, caller=user.phone, auth_token=TOKEN))

    def sign_in(self, pin: str = PIN):
        expect(self.phone.dial(), "Enter your user ID")
        self.phone.press(self.user.code + "#")
        return self.phone.press(pin + "#")


def screen_and_randomize(call: Call, index: int) -> None:
    phone = call.phone
    expect(call.sign_in(), "press 1")
    phone.press("1")
    heard = expect(phone.press("1"), "new subject number is")
    subject, = spoken(r"subject number is {n}\.", heard.text)
    call.heard["subject"] = subject
    call.heard["screen_confirmation"], = spoken(r"Confirmation number {n}\.", heard.text)
    phone.press("2")
    phone.press(subject + "#")
    expect(phone.press("1"), "18 or older")
    phone.press("1")
    phone.press("1")
    expect(phone.press("1"), "Sex")
    phone.press("12"[(index // 2) % 2])
    expect(phone.press("12"[(index // 4) % 2]), "To randomize, press 1")
    heard = expect(phone.press("1"), "is randomized")
    assert spoken(r"Subject {n} is randomized", heard.text) == [subject], heard.text
    call.heard["randomization"], = spoken(r"Randomization number {n}\.", heard.text)
    call.heard["v1_kits"] = spoken(r"give kit {n}\.", heard.text)
    call.heard["rand_confirmation"], = spoken(r"Confirmation number {n}\.", heard.text)


def dispense_visit_2(call: Call) -> None:
    phone = call.phone
    expect(call.sign_in(), "press 1")
    phone.press("3")
    phone.press(call.heard["subject"] + "#")
    expect(phone.press("1"), "Due now: visit 2, 2 kits")
    heard = expect(phone.press("1"), "For visit 2, give kit")
    call.heard["v2_kits"] = spoken(r"give kit {n}\.", heard.text)
    call.heard["v2_confirmation"], = spoken(r"Confirmation number {n}\.", heard.text)


def all_together(calls: list[Call], action) -> None:
    """Every call in its own thread, released at the same moment; failures re-raised."""
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def run(index: int, call: Call) -> None:
        try:
            barrier.wait(timeout=30)
            action(call, index)
        except BaseException as error:  # noqa: BLE001 — reported below, with the caller
            errors.append(AssertionError(f"caller {call.user.code}: {error!r}"))

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a call never finished"
    assert not errors, errors[:3]


def assert_every_answer_was_valid_twiml(calls: list[Call]) -> None:
    for call in calls:
        assert call.transport.answers
        for status, body in call.transport.answers:
            assert status == 200, (status, body)
            heard = parse_twiml(status, body)  # raises on anything but a TwiML <Response>
            assert "sorry" not in heard.text.lower(), heard.text  # no apology: nothing failed


# --- the tests ------------------------------------------------------------------------------


def test_forty_simultaneous_calls_hear_exactly_what_the_database_holds(study, tmp_path):
    users = signed_up_users(study, CALLERS, first=6001)
    stock_sites(study, tmp_path / "site-kits.csv")
    calls = []
    with ivrs_serve(study, DAY_1, tmp_path) as url:
        calls = [Call.to(url, user) for user in users]
        all_together(calls, lambda call, index: screen_and_randomize(call, index))
    # The server restarted 28 days later: visit 2 is due for every subject.
    with ivrs_serve(study, DAY_29, tmp_path) as url:
        visit_2 = [Call.to(url, call.user) for call in calls]
        for first, second in zip(calls, visit_2, strict=True):
            second.heard = first.heard  # one record per caller, both calls
        all_together(visit_2, lambda call, index: dispense_visit_2(call))
    assert_every_answer_was_valid_twiml(calls + visit_2)

    heard_randomizations = [call.heard["randomization"] for call in calls]
    heard_kits = [kit for call in calls for kit in call.heard["v1_kits"] + call.heard["v2_kits"]]
    heard_subjects = [call.heard["subject"] for call in calls]
    # Nothing was told to two callers.
    assert len(set(heard_subjects)) == CALLERS
    assert len(set(heard_randomizations)) == CALLERS
    assert len(heard_kits) == 3 * CALLERS and len(set(heard_kits)) == 3 * CALLERS

    with study.sessions() as session:
        study_row = get_study(session, STUDY_CODE)
        subjects = {s.subject_number: s for s in session.scalars(select(Subject))}
        site_ids = dict(session.execute(select(Site.code, Site.id).where(
            Site.study_id == study_row.id)).all())
        randomizations = {r.subject_id: r for r in session.scalars(select(Randomization))}
        entries = list(session.scalars(select(ListEntry).where(
            ListEntry.subject_id.is_not(None))))
        kits = list(session.scalars(select(Kit).where(Kit.subject_id.is_not(None))))
        events = list(session.scalars(select(AuditEvent).where(AuditEvent.action.in_(
            ["subject_screened", "subject_randomized", "visit_dispensed"]))))
        assert verify(session, study_row.id) is None

    assert len(randomizations) == CALLERS
    assert len({r.randomization_number for r in randomizations.values()}) == CALLERS
    # Each list entry went to one subject, and it is that subject's randomization.
    assert len(entries) == CALLERS and len({e.subject_id for e in entries}) == CALLERS
    assert {(e.subject_id, e.randomization_number) for e in entries} == {
        (r.subject_id, r.randomization_number) for r in randomizations.values()}
    transactions: dict[tuple[str, str], set[int]] = {}
    for event in events:
        transactions.setdefault((event.action, event.entity_id), set()).add(event.transaction_id)

    for call in calls:
        subject = subjects[call.heard["subject"]]
        assert subject.screened_by == f"user:{call.user.code}"
        assert subject.site_id == site_ids[call.user.site]
        assert randomizations[subject.id].randomization_number == call.heard["randomization"]
        held = {(k.visit_code, k.kit_number) for k in kits if k.subject_id == subject.id}
        assert held == {("V1", kit) for kit in call.heard["v1_kits"]} | {
            ("V2", kit) for kit in call.heard["v2_kits"]}
        number = subject.subject_number
        assert transactions[("subject_screened", number)] == {
            int(call.heard["screen_confirmation"])}
        assert transactions[("subject_randomized", number)] == {
            int(call.heard["rand_confirmation"])}
        assert int(call.heard["v2_confirmation"]) in transactions[("visit_dispensed", number)]


def test_three_simultaneous_wrong_pins_lock_the_user(study, tmp_path):
    user, = signed_up_users(study, 1, first=6201)
    with ivrs_serve(study, DAY_1, tmp_path) as url:
        calls = [Call.to(url, user) for _ in range(3)]
        for call in calls:
            expect(call.phone.dial(), "Enter your user ID")
            expect(call.phone.press(user.code + "#"), "PIN")
        barrier = threading.Barrier(3)
        answers: list[str] = []

        def wrong_pin(call: Call) -> None:
            barrier.wait(timeout=30)
            answers.append(call.phone.press("9999#").text)

        threads = [threading.Thread(target=wrong_pin, args=(call,)) for call in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(answers) == 3, answers
        with study.sessions() as session:
            row = session.execute(select(User).where(User.user_code == user.code)).scalar_one()
            assert row.locked is True and row.failed_attempts == 3
        assert sum("not valid" in text for text in answers) == 2, answers
        assert sum("locked" in text for text in answers) == 1, answers

        fourth = Call.to(url, user)
        heard = fourth.sign_in(PIN)
        assert "locked" in heard.text and heard.ended, heard.text
    assert_every_answer_was_valid_twiml(calls + [fourth])
