"""Faults under load (SPEC §9), through a real ``ivrs serve`` on a PostgreSQL
cluster and a Redis of the test's own (tests/own_servers.py), so that they
may be killed: a gunicorn worker killed mid-request, Redis killed and
restarted, PostgreSQL crashed and down for ten seconds, and a SIGTERM to the
server while calls are under way.

In each, 12 callers screen and randomize a subject while the fault happens,
as Twilio and site staff would (tests/faults.py): a request without an answer
is retried, some are sent twice on purpose, and a caller who hears an apology
calls again and carries on. Afterwards the database must hold exactly what the
callers heard, nothing twice, with the audit chain intact (``ivrs audit
verify`` exits 0); every answer was a 200; the SMS the randomizations queued
were each sent once; and the time the service took to recover is printed.

PostgreSQL + Redis runs only (IVRS_TEST_DATABASE_URL set): the embedded suite
has no servers to kill.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable

import pytest
from e2e import (
    DAY_1,
    PIN,
    TOKEN,
    Call,
    Server,
    all_together,
    free_port,
    kill_server,
    signed_up_users,
    start_server,
    stock_sites,
    wait_for_health,
    wait_until_healthy,
)
from fake_twilio import ACCOUNT_SID, FROM_NUMBER, FakeTwilio
from faults import Tally, assert_exactly_once, subjects_through_faults
from own_servers import OwnPostgres, OwnRedis, skip_unless_servers_can_run
from sqlalchemy import func, select, text
from voice import demo_study_in_english

from core.db import Database
from core.migrate import upgrade
from core.models import Delivery, Notification
from core.supply.outbox import PENDING

pytestmark = [pytest.mark.postgres, pytest.mark.faults]

CALLERS = 12
LOAD_SECONDS_BEFORE_FAULT = 1.5
POSTGRES_DOWN_SECONDS = 10
CALLS_DEADLINE_SECONDS = 120
# The list has 30 entries a stratum, and each caller's subjects fall in one of
# the four strata (three callers each): at most 10 subjects a caller.
SUBJECTS_PER_CALLER = 6


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """One PostgreSQL cluster and one Redis for the module, each test with a
    database of its own copied from a migrated template."""
    if not os.environ.get("IVRS_TEST_DATABASE_URL"):
        pytest.skip("PostgreSQL + Redis runs only: set IVRS_TEST_DATABASE_URL")
    skip_unless_servers_can_run()
    postgres = OwnPostgres(free_port())
    redis = OwnRedis(free_port(), tmp_path_factory.mktemp("redis"))
    postgres.start()
    redis.start()
    template = postgres.create_database("ivrs_template")
    migrated = Database(template, pool_size=1)
    upgrade(migrated.engine)
    migrated.dispose()
    yield postgres, redis
    redis.kill()
    postgres.remove()


class Trial:
    """A test's study on the own servers, with its callers and a fake Twilio."""

    def __init__(self, postgres: OwnPostgres, redis: OwnRedis, tmp_path, twilio: FakeTwilio):
        self.postgres, self.redis, self.tmp_path, self.twilio = postgres, redis, tmp_path, twilio
        self.database_url = postgres.create_database(f"ivrs_{uuid.uuid4().hex[:8]}",
                                                     template="ivrs_template")
        self.db = Database(self.database_url, pool_size=4)
        demo_study_in_english(self.db, tmp_path)
        self.users = signed_up_users(self.db, CALLERS, first=8001)
        stock_sites(self.db, tmp_path / "site-kits.csv")
        self.tally = Tally()

    def serve(self, **options) -> Server:
        return start_server(self.database_url, DAY_1, self.tmp_path, REDIS_URL=self.redis.url,
                            TWILIO_ACCOUNT_SID=ACCOUNT_SID, TWILIO_FROM_NUMBER=FROM_NUMBER,
                            TWILIO_API_BASE_URL=self.twilio.base_url, **options)

    def calls_with(self, url: str, fault: Callable[[], None]) -> list:
        """Every caller at once, randomizing subjects one after another while the
        fault is injected from another thread; returns each subject's last call."""
        deadline = time.monotonic() + CALLS_DEADLINE_SECONDS
        over = threading.Event()
        calls: list[list] = [[] for _ in range(CALLERS)]
        fault_errors: list[BaseException] = []

        def inject() -> None:
            try:
                time.sleep(LOAD_SECONDS_BEFORE_FAULT)
                fault()
            except BaseException as error:  # noqa: BLE001 — re-raised in the test's thread
                fault_errors.append(error)
            finally:
                over.set()

        def call(user, index: int) -> None:
            calls[index] = subjects_through_faults(url, user, index, self.tally,
                                                   deadline=deadline, until=over,
                                                   most=SUBJECTS_PER_CALLER)

        injector = threading.Thread(target=inject)
        injector.start()
        all_together(self.users, call, timeout=CALLS_DEADLINE_SECONDS + 30)
        injector.join(timeout=120)
        assert not fault_errors, fault_errors
        return [subject for subjects in calls for subject in subjects]

    def check(self, calls: list) -> None:
        """What the database holds is exactly what the callers heard, nothing twice."""
        assert_exactly_once(self.db, self.database_url, calls, self.tally)

    def wait_for_sms(self, timeout: float = 60) -> None:
        """Every SMS the randomizations queued is sent, each exactly once."""
        deadline = time.monotonic() + timeout
        while True:
            with self.db.sessions() as session:
                unexpanded = session.scalar(select(func.count()).select_from(Notification)
                                            .where(Notification.status == PENDING))
                statuses = dict(session.execute(select(Delivery.status, func.count())
                                                .group_by(Delivery.status)).all())
                sent = list(session.scalars(select(Delivery.provider_sid)
                                            .where(Delivery.provider_sid.is_not(None))))
            waiting = unexpanded + statuses.get("queued", 0) + statuses.get("sending", 0)
            if statuses and not waiting:
                break
            assert time.monotonic() < deadline, f"SMS still waiting after {timeout} s: {statuses}"
            time.sleep(0.5)
        assert set(statuses) == {"sent"}, statuses
        bodies = [(message.to, message.body) for message in self.twilio.messages]
        assert len(bodies) == len(set(bodies)) == len(sent), "an SMS was sent twice"
        assert {message.sid for message in self.twilio.messages} == set(sent)

    def report(self, what: str, **numbers) -> None:
        details = ", ".join(f"{name} {value}" for name, value in numbers.items())
        print(f"\n{what}: {details}; {self.tally.summary()}")

    def close(self) -> None:
        self.db.dispose()


@pytest.fixture
def trial(servers, tmp_path, monkeypatch):
    monkeypatch.setenv("IVRS_TODAY", DAY_1.isoformat())  # the demo lots' dates follow it
    postgres, redis = servers
    if not postgres.accepts():  # a failed test may have left it down
        postgres.start()
    if not redis.answers():
        redis.start()
    # The server's one auth token signs the webhooks and authenticates its REST calls.
    with FakeTwilio(auth_token=TOKEN) as twilio:
        trial = Trial(postgres, redis, tmp_path, twilio)
        yield trial
        trial.close()


# --- the faults ---------------------------------------------------------------------------


def test_a_worker_killed_mid_request_loses_and_doubles_nothing(trial):
    server = trial.serve()
    killed: list[int] = []

    def kill_workers() -> None:
        rng = random.Random(16)
        for _ in range(6):
            workers = server.workers()
            assert workers, "gunicorn has no workers"
            victim = rng.choice(workers)
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            time.sleep(0.7)

    try:
        calls = trial.calls_with(server.url, kill_workers)
        replaced = len(set(server.workers()) - set(killed))
        assert replaced == 4, server.workers()  # gunicorn replaced every worker killed
        assert server.threads() == 1  # the master forks safely: no thread of ours in it
        trial.wait_for_sms()
    finally:
        kill_server(server)
    trial.check(calls)
    trial.report("6 workers killed", workers_alive=replaced)


def outage_under_load(trial, what: str, stop: Callable[[], None], start: Callable[[], float],
                      down_seconds: float) -> None:
    """A dependency stopped while the callers work, started ``down_seconds``
    later: ``/healthz`` must say 503 meanwhile and 200 again soon after, the
    callers hear apologies (not a hang, not a 500), the SMS still go out."""
    server = trial.serve()
    timings: dict[str, float] = {}

    def outage() -> None:
        stop()
        timings["to_503"] = wait_for_health(server.url, 503, timeout=10)
        time.sleep(down_seconds)
        start()
        timings["recovery"] = wait_for_health(server.url, 200, timeout=30)

    try:
        calls = trial.calls_with(server.url, outage)
        trial.wait_for_sms()  # the outbox sender lived through the outage
    finally:
        kill_server(server)
    trial.check(calls)
    assert trial.tally.apologies > 0  # callers were told, not left hanging
    trial.report(f"{what} down {down_seconds} s", healthz_503_after_s=round(timings["to_503"], 2),
                 recovered_after_s=round(timings["recovery"], 2))


def test_redis_killed_and_restarted(trial):
    outage_under_load(trial, "Redis", trial.redis.kill, trial.redis.start, down_seconds=3)


def test_postgres_crashed_and_down_for_ten_seconds(trial):
    outage_under_load(trial, "PostgreSQL", trial.postgres.crash, trial.postgres.start,
                      down_seconds=POSTGRES_DOWN_SECONDS)


def test_sigterm_under_load_loses_and_doubles_nothing(trial):
    server = trial.serve()
    port = int(server.url.rsplit(":", 1)[1])
    replacement: list[Server] = []
    timings: dict[str, float] = {}

    def stop_and_start_again() -> None:
        os.kill(server.process.pid, signal.SIGTERM)
        started = time.monotonic()
        code = server.process.wait(timeout=60)
        timings["drained"] = time.monotonic() - started
        assert code == 0, f"ivrs serve exited with {code} on SIGTERM:\n{server.log()}"
        replacement.append(trial.serve(port=port))
        timings["back"] = time.monotonic() - started

    try:
        calls = trial.calls_with(server.url, stop_and_start_again)
        wait_until_healthy(replacement[0])
        trial.wait_for_sms()
    finally:
        kill_server(server)
        for other in replacement:
            kill_server(other)
    trial.check(calls)
    # While the server stopped, new connections were refused, and those still
    # queued in the listening socket, never read by a worker, were reset when
    # it closed: Twilio retries both (and a load balancer sends them to the
    # other host); no request a worker had begun was cut (the next test).
    assert set(trial.tally.errors) <= {"ConnectionRefusedError", "ConnectionResetError",
                                       "RemoteDisconnected"}, trial.tally.errors
    trial.report("SIGTERM, then a new server", drained_in_s=round(timings["drained"], 2),
                 serving_again_after_s=round(timings["back"], 2))


def test_sigterm_lets_the_request_in_flight_finish(trial):
    """A sign-in under way when SIGTERM arrives (held up, here, by a row lock the
    test holds on the user) is answered in full; the server then exits 0."""
    server = trial.serve()
    user = trial.users[0]
    call = Call.to(server.url, user)
    call.phone.dial()
    call.phone.press(user.code + "#")
    answers: list = []
    try:
        with trial.db.engine.connect() as connection:
            connection.execute(text("SELECT id FROM users WHERE user_code = :code FOR UPDATE"),
                               {"code": user.code})
            signing_in = threading.Thread(target=lambda: answers.append(
                call.phone.press(PIN + "#")))
            signing_in.start()
            # the request is in a worker, inside its transaction
            wait_for_lock_waiter(trial.db, answers)
            os.kill(server.process.pid, signal.SIGTERM)
            time.sleep(1.0)
            assert server.process.poll() is None, "the server did not wait for its request"
            connection.rollback()  # the request goes on
        signing_in.join(timeout=30)
        code = server.process.wait(timeout=40)
    finally:
        kill_server(server)
    assert code == 0, server.log()
    heard, = answers
    assert heard.status == 200 and "press 1" in heard.text, heard.text  # signed in: the menu


def wait_for_lock_waiter(db, answers: list, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with db.engine.connect() as connection:
        while time.monotonic() < deadline:
            waiting = connection.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")).scalar()
            connection.rollback()  # pg_stat_activity is read once per transaction
            if waiting:
                return
            time.sleep(0.05)
    pytest.fail(f"the sign-in never waited for the row lock; answered {answers}")
