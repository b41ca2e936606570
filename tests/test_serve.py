"""``ivrs serve``: configuration refusals, gunicorn's set-up, the dev server, and the
daily supply job (next-run arithmetic, a real run against the test database, a
failing run that does not kill the thread, the PostgreSQL advisory lock)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time as clock
from datetime import UTC, datetime, time, timedelta, timezone
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import select, text
from voice import demo_study_in_english

from core.models import Shipment, Site
from ivrs.main import main
from ivrs.outbound import scheduler
from ivrs.outbound.scheduler import (
    SUPPLY_LOCK_CLASS,
    ScheduleError,
    SupplyScheduler,
    next_run,
    parse_supply_at,
    run_supply,
)
from ivrs.server import jobs, serve

TWO_AM = time(2, 0, tzinfo=UTC)


# --- the schedule's arithmetic ----------------------------------------------------------------


@pytest.mark.parametrize("now, expected", [
    (datetime(2026, 11, 23, 1, 59, 59, tzinfo=UTC), datetime(2026, 11, 23, 2, 0, tzinfo=UTC)),
    (datetime(2026, 11, 23, 2, 0, tzinfo=UTC), datetime(2026, 11, 24, 2, 0, tzinfo=UTC)),
    (datetime(2026, 11, 23, 2, 0, 1, tzinfo=UTC), datetime(2026, 11, 24, 2, 0, tzinfo=UTC)),
    (datetime(2026, 12, 31, 23, 0, tzinfo=UTC), datetime(2027, 1, 1, 2, 0, tzinfo=UTC)),
    # 02:30 in Paris (UTC+1 in winter) is 01:30 UTC: today's run is still ahead.
    (datetime(2026, 11, 23, 2, 30, tzinfo=timezone(timedelta(hours=1))),
     datetime(2026, 11, 23, 2, 0, tzinfo=UTC)),
])
def test_next_run_is_the_next_occurrence_in_utc(now, expected):
    assert next_run(now, TWO_AM) == expected


def test_next_run_refuses_a_naive_time():
    with pytest.raises(ValueError):
        next_run(datetime(2026, 11, 23, 1, 0), TWO_AM)


@pytest.mark.parametrize("value, expected", [
    (None, time(2, 0, tzinfo=UTC)), ("", time(2, 0, tzinfo=UTC)),
    ("06:30", time(6, 30, tzinfo=UTC)), (" 23:59 ", time(23, 59, tzinfo=UTC)),
    ("7:05", time(7, 5, tzinfo=UTC)), ("off", None), ("OFF", None),
])
def test_supply_at_values(value, expected):
    assert parse_supply_at(value) == expected


@pytest.mark.parametrize("value", ["24:00", "12:60", "noon", "1200", "12:00:00", "-1:00",
                                   "12:5", "on"])
def test_bad_supply_at_is_refused_clearly(value):
    with pytest.raises(ScheduleError, match="IVRS_SUPPLY_AT.*HH:MM"):
        parse_supply_at(value)


# --- the command's refusals ---------------------------------------------------------------------


@pytest.fixture
def no_server(monkeypatch):
    """Nothing may start in the refusal tests: a refusal that failed would hang them."""
    def must_not_start(*args, **kwargs):
        raise AssertionError("the server was started")

    monkeypatch.setattr(serve, "run_gunicorn", must_not_start)
    monkeypatch.setattr(serve, "run_dev_server", must_not_start)
    for name in ("TWILIO_AUTH_TOKEN", "REDIS_URL", "IVRS_SUPPLY_AT", "IVRS_ENV"):
        monkeypatch.delenv(name, raising=False)


def test_serve_without_auth_token_exits_2(no_server, database_env):
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 2, result.output
    assert "TWILIO_AUTH_TOKEN is not set" in result.stderr
    assert "--dev" in result.stderr


def test_several_workers_without_redis_are_refused(no_server, database_env, monkeypatch):
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "token")
    result = CliRunner().invoke(main, ["serve", "--workers", "3"])
    assert result.exit_code == 2, result.output
    assert "--workers 3 needs REDIS_URL" in result.stderr


def test_bad_supply_at_stops_serve(no_server, database_env, monkeypatch):
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "token")
    monkeypatch.setenv("IVRS_SUPPLY_AT", "2am")
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 2 and "IVRS_SUPPLY_AT='2am'" in result.stderr


def test_an_unknown_environment_is_refused(no_server, database_env, monkeypatch):
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "token")
    monkeypatch.setenv("IVRS_ENV", "prod")
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 2 and "IVRS_ENV='prod'" in result.stderr, result.output


def test_production_without_pin_pepper_is_refused(no_server, database_env, monkeypatch):
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "token")
    monkeypatch.setenv("IVRS_ENV", "production")
    monkeypatch.delenv("IVRS_PIN_PEPPER", raising=False)
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 2 and "IVRS_PIN_PEPPER" in result.stderr


def test_production_without_a_web_secret_is_refused(no_server, database_env, monkeypatch):
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "token")
    monkeypatch.setenv("IVRS_ENV", "production")
    monkeypatch.setenv("IVRS_PIN_PEPPER", "pepper")
    monkeypatch.delenv("IVRS_WEB_SECRET_KEY", raising=False)
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 2 and "IVRS_WEB_SECRET_KEY" in result.stderr


# --- what reaches gunicorn ------------------------------------------------------------------


@pytest.fixture
def started(monkeypatch, database_env):
    """Record the arguments ``serve`` hands to gunicorn instead of starting it."""
    calls = []
    monkeypatch.setattr(serve, "run_gunicorn", lambda *args: calls.append(args))
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "token")
    monkeypatch.delenv("IVRS_SUPPLY_AT", raising=False)
    return calls


def test_one_worker_by_default_without_redis(started, monkeypatch, database_env):
    monkeypatch.delenv("REDIS_URL", raising=False)
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 0, result.output
    assert started == [("127.0.0.1", 8080, 1, TWO_AM, database_env)]


def test_several_workers_with_redis(started, monkeypatch, database_env):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/15")
    monkeypatch.setenv("IVRS_SUPPLY_AT", "off")
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--port", "9000",
                                       "--workers", "3"])
    assert result.exit_code == 0, result.output
    assert started == [("0.0.0.0", 9000, 3, None, database_env)]


def test_default_worker_count():
    assert serve.default_workers(None, cpu_count=16) == 1
    assert serve.default_workers("redis://x", cpu_count=2) == 5
    assert serve.default_workers("redis://x", cpu_count=16) == 8
    assert serve.check_workers(None, "redis://x") == serve.default_workers("redis://x")
    assert serve.check_workers(1, None) == 1


def test_gunicorn_application_is_configured_and_loads_the_app_in_the_worker(database_env):
    options = serve.gunicorn_options("::1", 9001, 4, TWO_AM, database_env)
    application = serve.IvrsGunicorn(options)
    cfg = application.cfg
    assert cfg.bind == ["[::1]:9001"] and cfg.workers == 4
    assert cfg.worker_class_str == "gthread" and cfg.threads == serve.THREADS_PER_WORKER
    assert cfg.preload_app is False  # load() runs after the fork, in each worker
    assert cfg.errorlog == "-"
    app = application.load()
    assert isinstance(app, Flask)
    runtime = app.extensions["ivrs"]
    assert runtime.settings.skip_signatures is False
    assert runtime.db.engine.url.render_as_string(hide_password=False) == database_env
    runtime.db.dispose()


def test_when_ready_starts_the_jobs_in_a_process_of_their_own(database_env):
    options = serve.gunicorn_options("127.0.0.1", 9002, 2, TWO_AM, database_env)
    master = SimpleNamespace()
    threads = threading.active_count()
    options["when_ready"](master)
    try:
        assert not master.jobs.exited() and master.jobs.process.pid != os.getpid()
        # No thread in the master: its forks of workers copy no held lock.
        assert threading.active_count() == threads
    finally:
        master.jobs.stop()
    assert master.jobs.exited()


def test_a_jobs_process_that_died_is_started_again(database_env, monkeypatch):
    monkeypatch.setattr(jobs, "RESTART_AFTER_SECONDS", 0.0)
    process = jobs.JobsProcess(database_env, None).start()
    try:
        first = process.process.pid
        process.keep_alive()
        assert process.process.pid == first  # alive: left alone
        os.kill(first, signal.SIGKILL)
        deadline = clock.monotonic() + 10
        while not process.exited() and clock.monotonic() < deadline:
            clock.sleep(0.05)
        process.keep_alive()
        assert process.process.pid != first and not process.exited()
    finally:
        process.stop()


def test_the_jobs_process_ends_when_its_server_is_gone(database_env, caplog, monkeypatch):
    # Run in this process, with a parent pid that is not ours: it returns at once
    # (and leaves this process's SIGTERM alone).
    monkeypatch.setattr(jobs.signal, "signal", lambda *args: None)
    # The senders' threads would outlive this test (and its database), logging errors
    # into later tests: record the start instead.
    started = []
    monkeypatch.setattr(scheduler, "start_supply_schedule", lambda *args: started.append(args))
    jobs.run_jobs(database_env, None, parent_pid=os.getppid() + 100_000)
    assert started == [(database_env, None)]
    assert "the server (pid" in caplog.text and "is gone" in caplog.text


def test_dev_server_checks_no_signatures_and_says_so(database_env, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(Flask, "run", lambda self, **kwargs: ran.append((self, kwargs)))
    started = []  # not the senders' threads: they would outlive this test's database
    monkeypatch.setattr(serve, "start_supply_schedule", lambda *args: started.append(args))
    serve.run_dev_server("127.0.0.1", 8081, None)
    assert started == [(database_env, None)]
    (app, kwargs), = ran
    assert app.extensions["ivrs"].settings.skip_signatures is True
    assert kwargs["use_reloader"] is False and kwargs["port"] == 8081
    err = capsys.readouterr().err
    assert "DEVELOPMENT SERVER" in err and "NOT checked" in err
    app.extensions["ivrs"].db.dispose()


# --- the scheduled job ------------------------------------------------------------------------


class FakeClock:
    """UTC time that starts at ``start`` and runs ``speed`` times faster than real time."""

    def __init__(self, start: datetime, speed: float = 1.0):
        self.start, self.speed, self.began = start, speed, clock.monotonic()

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=(clock.monotonic() - self.began) * self.speed)


def shipments_to(db, site_code: str) -> list[Shipment]:
    with db.sessions() as session:
        return list(session.scalars(select(Shipment).join(Site, Site.id == Shipment.site_id)
                                    .where(Site.code == site_code)))


def test_a_scheduled_run_executes_the_supply_job(db, database_env, tmp_path, monkeypatch):
    monkeypatch.setenv("IVRS_TODAY", "2026-11-23")
    demo_study_in_english(db, tmp_path)
    assert shipments_to(db, "103") == []  # site 103 starts with no stock
    just_before = FakeClock(datetime(2026, 11, 23, 1, 59, 59, 700_000, tzinfo=UTC))
    scheduler = SupplyScheduler(TWO_AM, lambda: run_supply(database_env), now=just_before,
                                poll_seconds=0.05).start()
    try:
        assert scheduler.wait_for_runs(1, timeout=30)
    finally:
        scheduler.stop(timeout=5)
    assert scheduler.failures == 0
    to_103 = shipments_to(db, "103")
    assert len(to_103) == 1 and to_103[0].status == "requested"


def test_a_failing_run_is_logged_and_the_next_occurrence_runs(caplog):
    calls = []

    def job():
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            raise RuntimeError("database unreachable")

    # A day passes in half a second of real time.
    fast = FakeClock(datetime(2026, 11, 23, 1, 59, 59, 900_000, tzinfo=UTC), speed=172_800)
    scheduler = SupplyScheduler(TWO_AM, job, now=fast, poll_seconds=0.01)
    with caplog.at_level(logging.INFO, logger="ivrs.scheduler"):
        scheduler.start()
        try:
            assert scheduler.wait_for_runs(2, timeout=30)
            assert scheduler._thread.is_alive()
        finally:
            scheduler.stop(timeout=5)
    assert scheduler.failures == 1 and len(calls) >= 2
    failed = [r for r in caplog.records if "scheduled supply run failed" in r.getMessage()]
    assert failed and failed[0].exc_info[0] is RuntimeError


def test_a_run_is_skipped_while_another_server_holds_it(pg_db, tmp_path, monkeypatch):
    monkeypatch.setenv("IVRS_TODAY", "2026-11-23")
    demo_study_in_english(pg_db, tmp_path)
    url = pg_db.engine.url.render_as_string(hide_password=False)
    lock = f"({SUPPLY_LOCK_CLASS}, hashtext(current_schema()))"
    with pg_db.engine.connect() as other_server:
        assert other_server.execute(text(f"SELECT pg_try_advisory_lock{lock}")).scalar()
        assert run_supply(url) is None
        assert shipments_to(pg_db, "103") == []
        other_server.execute(text(f"SELECT pg_advisory_unlock{lock}"))
        runs = run_supply(url)
    assert [run.study for run in runs] == ["DEMO-301"]
    assert len(shipments_to(pg_db, "103")) == 1
