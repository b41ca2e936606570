"""End-to-end pieces shared by the tests that drive a real ``ivrs serve`` over HTTP
(tests/test_serve_pg.py, tests/test_faults_pg.py, tests/test_scale_out_pg.py):
site users and their kits, the server in its own process group, callers that
dial and press keys as Twilio would, and the checks that what every caller
heard is exactly what the database holds."""

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
import traceback
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from core.actors import ADMIN, Actor
from core.audit import verify
from core.login import change_pin
from core.models import AuditEvent, Kit, ListEntry, Randomization, Site, Subject
from core.studies import get_study
from core.supply.kit_import import import_kits
from core.users import add_user
from ivrs.demo.phone import Heard, HttpTransport, Phone, parse_twiml
from ivrs.demo.scenario import STUDY_CODE

TOKEN = "e2e-twilio-auth-token"
DAY_1 = date(2026, 11, 23)
DAY_29 = DAY_1 + timedelta(days=28)  # visit 2 is due on day 28 after randomization
PIN = "2580"
WORKERS = 4


# --- the study, its users and its kits ----------------------------------------------------


@dataclass(frozen=True)
class SiteUser:
    code: str
    site: str
    phone: str


def signed_up_users(db, count: int, first: int, study: str = STUDY_CODE) -> list[SiteUser]:
    """Site coordinators with a PIN they chose (not temporary), spread over 101 and 102."""
    users = [SiteUser(str(first + i), "101" if i % 2 == 0 else "102", f"+3361{first + i:07d}")
             for i in range(count)]

    def sign_up(user: SiteUser) -> None:
        add_user(db, user_code=user.code, name=f"Coordinator {user.code}",
                 role="site_coordinator", sites=[user.site], phone=user.phone, language="en",
                 pin="1111", actor=ADMIN, study=study)
        change_pin(db, user_code=user.code, new_pin=PIN, study=study,
                   actor=Actor(role="site_coordinator", user_code=user.code,
                               site_codes=frozenset({user.site}), channel="test"))

    with ThreadPoolExecutor(4) as pool:  # argon2 releases the GIL
        list(pool.map(sign_up, users))
    return users


def stock_sites(db, path: Path, per_type_and_site: int = 60, study: str = STUDY_CODE) -> None:
    """Kits for 20 subjects a site x 3 kits, whatever arm the list gives each."""
    with db.sessions() as session:
        taken = set(session.scalars(select(Kit.kit_number)))
    rng = random.Random(4040)
    numbers = iter(n for n in rng.sample(range(100000, 999999), 4 * per_type_and_site + 2000)
                   if str(n) not in taken)
    expiry = DAY_1 + timedelta(days=730)  # the demo lots' expiry date
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["kit_number", "kit_type", "lot", "expiry_date", "location"])
        for site in ("101", "102"):
            for kit_type, lot in (("KA", "LA1"), ("KP", "LP1")):
                for _ in range(per_type_and_site):
                    writer.writerow([next(numbers), kit_type, lot, expiry.isoformat(), site])
    import_kits(db, path, study_code=study)


# --- the server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    """A running ``ivrs serve``: its gunicorn master and what it logged."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def workers(self) -> list[int]:
        """The master's worker processes: its children forked from it (same
        command line), not the background jobs' process it also started."""
        return [pid for pid in self.children() if _command_line(pid) == _command_line(
            self.process.pid)]

    def children(self) -> list[int]:
        pid = self.process.pid
        try:
            return [int(child) for child in
                    Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    def threads(self) -> int:
        """The master's threads (1: its forks copy no lock another thread holds)."""
        return len(list(Path(f"/proc/{self.process.pid}/task").iterdir()))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _command_line(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def serve_command(port: int, workers: int, host: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-c", "from ivrs.main import main; main()", "serve",
            "--host", host, "--port", str(port), "--workers", str(workers)]


def server_env(database_url: str, today: date, **overrides: str) -> dict[str, str]:
    """The environment of a test server: signed webhooks, no supply run (it would
    change stock during a test), and whatever the test adds."""
    return {**os.environ, "DATABASE_URL": database_url, "TWILIO_AUTH_TOKEN": TOKEN,
            "IVRS_TODAY": today.isoformat(), "IVRS_SUPPLY_AT": "off", **overrides}


def start_server(database_url: str, today: date, log_dir: Path, *, port: int | None = None,
                 workers: int = WORKERS, netns: str | None = None, address: str = "127.0.0.1",
                 **env: str) -> Server:
    """``ivrs serve`` in its own process group (see ``ivrs_serve``), healthy.

    On 127.0.0.1, or in the network namespace ``netns`` on all of its addresses
    (``ip netns exec`` becomes the server, so the group is still the server's),
    reached from here at ``address``."""
    port = port or free_port()
    command = serve_command(port, workers)
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *serve_command(port, workers, "0.0.0.0")]
    log_path = log_dir / f"serve-{netns + '-' if netns else ''}{port}-{time.monotonic_ns()}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=server_env(database_url, today, **env),
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(process, f"http://{address}:{port}", log_path)
    try:
        wait_until_healthy(server)
    except BaseException:
        kill_server(server)
        raise
    return server


def kill_server(server: Server) -> None:
    """The whole group at once, master and workers."""
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=15)


@contextmanager
def ivrs_serve(db, today: date, log_dir: Path, **options) -> Iterator[str]:
    """``ivrs serve`` on ``db``, killed whole at the end whatever happens (the checks
    need nothing from a graceful stop, and gunicorn's master takes seconds to
    finish one). Yields its URL."""
    server = start_server(db.engine.url.render_as_string(hide_password=False), today, log_dir,
                          **options)
    try:
        yield server.url
    finally:
        kill_server(server)


def health(url: str) -> int | None:
    """``/healthz``'s status, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def wait_until_healthy(server: Server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"ivrs serve exited with {server.process.returncode}:\n{server.log()}")
        if health(server.url) == 200:
            return
        time.sleep(0.1)
    pytest.fail(f"ivrs serve did not answer /healthz:\n{server.log()}")


def wait_for_health(url: str, wanted: int | None, timeout: float) -> float:
    """Seconds until ``/healthz`` answers ``wanted``; fails the test after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if health(url) == wanted:
            return time.monotonic() - started
        time.sleep(0.05)
    pytest.fail(f"/healthz did not answer {wanted} within {timeout} s")


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


def expect(heard: Heard, fragment: str) -> Heard:
    assert fragment in heard.text, f"expected {fragment!r}, heard {heard.text!r}"
    return heard


@dataclass
class Call:
    user: SiteUser
    transport: RecordingTransport
    phone: Phone
    heard: dict[str, str | list[str]] = field(default_factory=dict)

    @classmethod
    def to(cls, url: str, user: SiteUser, transport: RecordingTransport | None = None) -> Call:
        transport = transport or RecordingTransport(url)
        return cls(user, transport, Phone(transport, caller=user.phone, auth_token=TOKEN,
                                          public_base_url=url))

    def sign_in(self, pin: str = PIN) -> Heard:
        expect(self.phone.dial(), "Enter your user ID")
        self.phone.press(self.user.code + "#")
        return self.phone.press(pin + "#")


def screen_and_randomize(call: Call, index: int) -> None:
    """Screen a new subject and randomize it, recording what was heard in
    ``call.heard``. A caller who already heard their subject's number (in an
    earlier call) goes straight to randomizing it."""
    phone = call.phone
    expect(call.sign_in(), "press 1")
    if "subject" not in call.heard:
        expect(phone.press("1"), "Screen a new subject")
        heard = expect(phone.press("1"), "new subject number is")
        subject, = spoken(r"subject number is {n}\.", heard.text)
        call.heard["subject"] = subject
        call.heard["screen_confirmation"], = spoken(r"Confirmation number {n}\.", heard.text)
    expect(phone.press("2"), "subject number")
    subject = call.heard["subject"]
    phone.press(subject + "#")  # read back
    heard = phone.press("1")  # correct
    if "already randomized" in heard.text:
        # Randomized in an earlier call whose answer the caller never heard.
        call.heard["randomization"] = None
        return
    expect(heard, "18 or older")
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


def all_together(calls: list, action, timeout: float = 120) -> None:
    """Every call in its own thread, released at the same moment; failures re-raised."""
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def run(index: int, call) -> None:
        try:
            barrier.wait(timeout=30)
            action(call, index)
        except BaseException as error:  # noqa: BLE001 — reported below, with the caller
            who = getattr(call, "user", call)  # a Call, or the SiteUser it is for
            errors.append(AssertionError(f"caller {who.code}: {error!r}\n"
                                         f"{traceback.format_exc()}"))

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not any(thread.is_alive() for thread in threads), "a call never finished"
    assert not errors, errors[:3]


def assert_every_answer_was_valid_twiml(calls: list[Call]) -> None:
    for call in calls:
        assert call.transport.answers
        for status, body in call.transport.answers:
            assert status == 200, (status, body)
            heard = parse_twiml(status, body)  # raises on anything but a TwiML <Response>
            assert "sorry" not in heard.text.lower(), heard.text  # no apology: nothing failed


# --- what the database holds ------------------------------------------------------------


@dataclass
class Outcome:
    """The rows that matter, read once after the calls."""

    subjects: dict[str, Subject]
    site_ids: dict[str, int]
    randomizations: dict[int, Randomization]  # by subject id
    randomization_rows: int  # more than len(randomizations): a subject randomized twice
    entries: list[ListEntry]
    kits: list[Kit]
    transactions: dict[tuple[str, str], set[int]]


def read_outcome(db, study: str = STUDY_CODE) -> Outcome:
    """What the database holds, with the audit chain verified on the way: read in
    one snapshot, since a server still running (its jobs, a retried request) may
    commit meanwhile, and rows read before a commit with a chain head read after
    it look like rows removed from the end."""
    with db.snapshot() as session:
        study_row = get_study(session, study)
        subjects = {s.subject_number: s for s in session.scalars(select(Subject))}
        site_ids = dict(session.execute(select(Site.code, Site.id).where(
            Site.study_id == study_row.id)).all())
        rows = list(session.scalars(select(Randomization)))
        randomizations = {r.subject_id: r for r in rows}
        entries = list(session.scalars(select(ListEntry).where(
            ListEntry.subject_id.is_not(None))))
        kits = list(session.scalars(select(Kit).where(Kit.subject_id.is_not(None))))
        events = list(session.scalars(select(AuditEvent).where(AuditEvent.action.in_(
            ["subject_screened", "subject_randomized", "visit_dispensed"]))))
        assert verify(session, study_row.id) is None
    transactions: dict[tuple[str, str], set[int]] = {}
    for event in events:
        transactions.setdefault((event.action, event.entity_id), set()).add(event.transaction_id)
    return Outcome(subjects, site_ids, randomizations, len(rows), entries, kits, transactions)


def assert_given_once(outcome: Outcome) -> None:
    """No subject randomized twice, no list entry or randomization number given
    twice; each list entry went to one subject, and it is that subject's
    randomization."""
    assert outcome.randomization_rows == len(outcome.randomizations)
    randomizations = outcome.randomizations.values()
    assert len({r.randomization_number for r in randomizations}) == len(randomizations)
    assert len({e.subject_id for e in outcome.entries}) == len(outcome.entries)
    assert {(e.subject_id, e.randomization_number) for e in outcome.entries} == {
        (r.subject_id, r.randomization_number) for r in randomizations}


def assert_heard_is_stored(outcome: Outcome, calls: list[Call]) -> None:
    """Every subject, randomization, kit and confirmation a caller heard is the
    database's, and nothing was told to two callers."""
    heard_subjects = [call.heard["subject"] for call in calls]
    assert len(set(heard_subjects)) == len(heard_subjects)
    heard_randomizations = [call.heard["randomization"] for call in calls
                            if call.heard.get("randomization")]
    assert len(set(heard_randomizations)) == len(heard_randomizations)
    heard_kits = [kit for call in calls
                  for kit in call.heard.get("v1_kits", []) + call.heard.get("v2_kits", [])]
    assert len(set(heard_kits)) == len(heard_kits)
    for call in calls:
        subject = outcome.subjects[call.heard["subject"]]
        number = subject.subject_number
        assert subject.screened_by == f"user:{call.user.code}"
        assert subject.site_id == outcome.site_ids[call.user.site]
        if "screen_confirmation" in call.heard:
            assert outcome.transactions[("subject_screened", number)] == {
                int(call.heard["screen_confirmation"])}
        if not call.heard.get("randomization"):
            continue
        assert outcome.randomizations[subject.id].randomization_number == \
            call.heard["randomization"]
        held = {(k.visit_code, k.kit_number) for k in outcome.kits
                if k.subject_id == subject.id}
        assert {("V1", kit) for kit in call.heard["v1_kits"]} | {
            ("V2", kit) for kit in call.heard.get("v2_kits", [])} == held
        assert outcome.transactions[("subject_randomized", number)] == {
            int(call.heard["rand_confirmation"])}
        if "v2_confirmation" in call.heard:
            assert int(call.heard["v2_confirmation"]) in \
                outcome.transactions[("visit_dispensed", number)]
