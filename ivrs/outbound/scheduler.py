"""The supply job on a schedule inside ``ivrs serve`` (SPEC §2).

``ivrs supply run`` runs the expiry, resupply and kit-reminder jobs once (and
expires the approval requests nobody decided in time); a server
runs the same, plus a recorded full check of each study's audit chain (the
dashboard's checkpoint, core.audit_checkpoints), core jobs every day at ``IVRS_SUPPLY_AT`` (UTC "HH:MM",
default 02:00; ``off`` disables it). One thread per server does it, in the
server's background jobs process (``ivrs.server.jobs``: never once per worker,
never in gunicorn's forking master); the dev server starts it in its own process.

The thread never dies: a failing run is logged and the next occurrence tries
again (the jobs are idempotent, so a day's missed run is made up by the next).
Several servers on one PostgreSQL database take a session advisory lock for the
run and skip it when another server holds it, so the job never runs twice at
the same time. The lock's second key is the hash of the schema in use, so two
deployments in two schemas of one database (production and UAT) do not make
each other skip.

The clock of the schedule is the real UTC clock; the jobs themselves take
today from ``core.clock`` (which honours ``IVRS_TODAY`` in UAT).

The outbox's senders run beside it in a thread of the same process, every few
seconds, when either channel is configured: each pass runs the SMS sender
(``ivrs.outbound.notify.send_pending``, with Twilio configured) and then the
e-mail sender (``ivrs.outbound.email.send_pending_email``, with ``SMTP_URL``).
They need no advisory lock: a sender's claim of a delivery is safe with any
number of senders (row locks and a conditional update; see
``core.deliveries``), so two servers simply share the queue.

The webhook sender (``ivrs.outbound.webhooks``) has a thread of its own, every
second and always on: it needs no settings, a pass with nothing to send is a
few indexed reads, and a receiver that is slow to answer must not hold back
the SMS and e-mail (nor they it). It keeps one small connection pool for the
life of the process (the jobs process is its own interpreter: no fork copies
it), rather than open a database every second.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta

from sqlalchemy import select, text

from core.actors import ADMIN
from core.audit_checkpoints import record_verification
from core.clock import today
from core.db import Database
from core.gates import expire_stale
from core.models import Study
from core.supply.confirmation import run_confirmation_reminders
from core.supply.expiry import run_expiry
from core.supply.resupply import run_resupply
from ivrs.config import Settings
from ivrs.outbound.email import EmailReport, send_pending_email
from ivrs.outbound.notify import SendReport, gateway, send_pending
from ivrs.outbound.webhooks import send_pending_webhooks

log = logging.getLogger("ivrs.scheduler")

DEFAULT_SUPPLY_AT = "02:00"
# First key of the advisory lock (any constant that no other code uses); the
# second is hashtext(current_schema()).
SUPPLY_LOCK_CLASS = 730_102
# How often the thread looks at the clock while waiting: a run starts at most
# this late, and a wall-clock jump (NTP, a resumed VM) is noticed this soon.
POLL_SECONDS = 30.0
# How often the senders look for messages to send: a queued message goes
# out within this many seconds.
SEND_EVERY_SECONDS = 5.0
SENDER_MAX_WAIT_SECONDS = 60.0
# The event stream is for systems that wait for it (an EDC showing the kit
# numbers): a second at most, and nothing to configure.
WEBHOOKS_EVERY_SECONDS = 1.0


class ScheduleError(ValueError):
    """IVRS_SUPPLY_AT is not a time the schedule can use."""


def parse_supply_at(value: str | None) -> time | None:
    """``IVRS_SUPPLY_AT``: "HH:MM" in UTC (unset or empty: 02:00), or "off" (None)."""
    text = (value or "").strip() or DEFAULT_SUPPLY_AT
    if text.lower() == "off":
        return None
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", text)
    if match is None or int(match[1]) > 23 or int(match[2]) > 59:
        raise ScheduleError(f"IVRS_SUPPLY_AT={value!r} is not a UTC time of day HH:MM "
                            "(00:00 to 23:59), nor 'off'")
    return time(int(match[1]), int(match[2]), tzinfo=UTC)


def next_run(now: datetime, at: time) -> datetime:
    """The first moment strictly after ``now`` when the UTC clock shows ``at``.

    Strictly after: a run that starts exactly on time and asks for its
    successor gets tomorrow's, never itself again.
    """
    if now.tzinfo is None:
        raise ValueError("now must carry a time zone")
    now = now.astimezone(UTC)
    candidate = now.replace(hour=at.hour, minute=at.minute, second=0, microsecond=0)
    return candidate if candidate > now else candidate + timedelta(days=1)


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --- the job --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyRun:
    study: str
    expired: int
    warnings: int
    shipments: int


def run_supply(database_url: str) -> list[StudyRun] | None:
    """Run the expiry job, the resupply job and the kit confirmation reminders for
    every study, as ``ivrs supply run`` does.

    Returns None when another server holds the run (PostgreSQL only). A
    study whose jobs fail is logged and the other studies still run; the
    engine is made here and disposed at the end, so the long-lived process
    that runs the schedule (gunicorn's master, which forks workers) holds no
    database connection between runs.
    """
    db = Database(database_url)
    try:
        with _exclusive(db) as acquired:
            if not acquired:
                log.info("supply run skipped: another server is running it")
                return None
            with db.sessions() as session:
                codes = list(session.scalars(select(Study.code).order_by(Study.code)))
            runs = []
            for code in codes:
                try:
                    runs.append(_run_study(db, code))
                except Exception:  # one study's failure must not stop the others
                    log.exception("supply run for study %s failed", code)
            return runs
    finally:
        db.dispose()


def _run_study(db, code: str) -> StudyRun:
    day = today()
    expiry = run_expiry(db, study=code, today=day)
    shipments = run_resupply(db, study=code, today=day)
    reminders = run_confirmation_reminders(db, study=code)
    expired = expire_stale(db, study=code)
    # The daily full check of the audit chain, recorded: the dashboard's checkpoint.
    chain = record_verification(db, actor=ADMIN, study=code)
    # Blinded like ``ivrs supply run``: a shipment's total, never per kit type.
    for shipment in shipments:
        log.info("study %s: shipment %s to site %s (%s): %d kits", code,
                 shipment.shipment_number, shipment.site, shipment.reason, shipment.kits)
    log.info("study %s, %s: %d kit(s) expired, %d expiry warning(s), %d shipment(s) requested,"
             " %d kit confirmation reminder(s), %d request(s) expired", code, day.isoformat(),
             expiry.expired, expiry.warnings, len(shipments), len(reminders), len(expired))
    if not chain.intact:
        log.error("study %s: the audit chain is BROKEN: %s", code, chain.problem)
    return StudyRun(code, expiry.expired, expiry.warnings, len(shipments))


@contextmanager
def _exclusive(db) -> Iterator[bool]:
    """PostgreSQL: hold a session advisory lock for the run, or yield False at once."""
    if not db.is_postgres:
        # SQLite is one file on one host; its write transactions are serialized anyway.
        yield True
        return
    args = {"cls": SUPPLY_LOCK_CLASS}
    with db.engine.connect() as conn:
        acquired = conn.execute(text(
            "SELECT pg_try_advisory_lock(:cls, hashtext(current_schema()))"), args).scalar()
        conn.commit()  # the lock is the session's: no transaction left idle while we run
        try:
            yield bool(acquired)
        finally:
            if acquired:
                conn.execute(text("SELECT pg_advisory_unlock(:cls, hashtext(current_schema()))"),
                             args)
                conn.commit()


# --- the thread -----------------------------------------------------------------------------


class _JobThread:
    """A daemon thread that runs a job over and over and never dies of it: a
    failing run is logged and counted, and the next one tries again."""

    name = "ivrs-job"
    what = "job run"  # for the log: "<what> failed"

    def __init__(self, job: Callable[[], object]):
        self.job = job
        self._stop = threading.Event()
        self._done = threading.Condition()
        self.runs = 0  # finished runs, failed ones included
        self.failures = 0
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def wait_for_runs(self, count: int, timeout: float) -> bool:
        """Block until ``count`` runs have finished (or the timeout passes)."""
        with self._done:
            return self._done.wait_for(lambda: self.runs >= count, timeout)

    def _loop(self) -> None:
        raise NotImplementedError

    def _run_once(self) -> bool:
        """Run the job; False when it failed."""
        failed = False
        try:
            self.job()
        except Exception:  # the thread must outlive any failure
            failed = True
            log.exception("%s failed; it runs again at the next occurrence", self.what)
        with self._done:
            self.runs += 1
            self.failures += failed
            self._done.notify_all()
        return not failed


class SupplyScheduler(_JobThread):
    """A daemon thread that calls ``job`` every day at ``at`` (UTC).

    ``now`` and ``poll_seconds`` are there for tests: a clock that starts just
    before ``at`` makes a run happen in a fraction of a second.
    """

    name = "ivrs-supply-scheduler"
    what = "scheduled supply run"

    def __init__(self, at: time, job: Callable[[], object], *,
                 now: Callable[[], datetime] = _utcnow, poll_seconds: float = POLL_SECONDS):
        self.at, self._now, self.poll_seconds = at, now, poll_seconds
        super().__init__(job)

    def _loop(self) -> None:
        target = next_run(self._now(), self.at)
        log.info("supply job scheduled daily at %s UTC; next run %s",
                 self.at.strftime("%H:%M"), target.isoformat(timespec="minutes"))
        while not self._stop.is_set():
            remaining = (target - self._now()).total_seconds()
            if remaining > 0:
                self._stop.wait(min(remaining, self.poll_seconds))
                continue
            self._run_once()
            target = next_run(max(self._now(), target), self.at)
            log.info("next supply run %s", target.isoformat(timespec="minutes"))


class SenderLoop(_JobThread):
    """A daemon thread that runs the senders (SMS, e-mail) every ``every`` seconds."""

    name = "ivrs-sender"
    what = "sender pass"
    started = "outbound messages: sending every %g s"

    def __init__(self, job: Callable[[], object], *, every: float = SEND_EVERY_SECONDS):
        self.every = every
        super().__init__(job)

    def _loop(self) -> None:
        log.info(self.started, self.every)
        failures_in_a_row = 0
        while not self._stop.is_set():
            failures_in_a_row = 0 if self._run_once() else failures_in_a_row + 1
            # A database or network that is down is not asked (nor logged) every
            # few seconds: the wait doubles with each failure, up to a minute.
            self._stop.wait(min(self.every * 2 ** failures_in_a_row,
                                max(self.every, SENDER_MAX_WAIT_SECONDS)))


def send_once(settings: Settings) -> tuple[SendReport, EmailReport]:
    """One pass of the SMS sender, then of the e-mail sender (each does nothing
    when its channel is not configured), on a database opened for them and closed
    after (like ``run_supply``: the long-lived master holds no connection between
    passes). A failing SMS pass does not keep the e-mails back; the pass fails
    all the same, so that the loop backs off."""
    db = Database(settings.database_url)
    try:
        failure = None
        try:
            sms = send_pending(db, settings)
        except Exception as error:  # noqa: BLE001 — re-raised once the e-mails had their pass
            failure, sms = error, SendReport(configured=False)
        email = send_pending_email(db, settings)
        if failure is not None:
            raise failure
        return sms, email
    finally:
        db.dispose()


def start_sender(database_url: str, *, every: float = SEND_EVERY_SECONDS) -> SenderLoop | None:
    """The server's sender thread, or None when neither Twilio nor SMTP_URL is
    configured (then the messages wait in the outbox)."""
    settings = replace(Settings.from_env(), database_url=database_url)
    sms = gateway(settings) is not None
    if not sms:
        log.info("outbound SMS off: TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and "
                 "TWILIO_FROM_NUMBER are not all set; SMS wait in `ivrs outbox`")
    if settings.smtp is None:
        log.info("outbound e-mail off: SMTP_URL is not set; e-mails wait in `ivrs outbox`")
    if not sms and settings.smtp is None:
        return None
    return SenderLoop(lambda: send_once(settings), every=every).start()


class WebhookLoop(SenderLoop):
    """The webhook sender's thread (``ivrs.outbound.webhooks``)."""

    name = "ivrs-webhooks"
    what = "webhook pass"
    started = "webhooks: sending every %g s"


def start_webhook_sender(database_url: str, *,
                         every: float = WEBHOOKS_EVERY_SECONDS) -> WebhookLoop:
    """The server's webhook sender thread, on a database of its own."""
    small = {} if database_url.startswith("sqlite") else {"pool_size": 1, "max_overflow": 1}
    db = Database(database_url, **small)
    return WebhookLoop(lambda: send_pending_webhooks(db), every=every).start()


def start_supply_schedule(database_url: str, at: time | None) -> SupplyScheduler | None:
    """The server's background jobs: the senders (SMS and e-mail when Twilio or
    SMTP_URL is configured, webhooks always) and the daily supply schedule,
    which this returns (None when ``IVRS_SUPPLY_AT`` is off)."""
    start_sender(database_url)
    start_webhook_sender(database_url)
    if at is None:
        log.info("supply job schedule is off (IVRS_SUPPLY_AT=off)")
        return None
    return SupplyScheduler(at, lambda: run_supply(database_url)).start()
