"""Callers that carry on through faults, as site staff and Twilio do (shared by
tests/test_faults_pg.py and tests/test_scale_out_pg.py).

Twilio retries a webhook request whose connection failed or timed out: the
same URL, the same fields, the same signature. ``TwilioLikeTransport`` does
that, and also sends some requests twice on purpose. A caller who hears an
apology, or a call that restarts because its session was lost, hangs up and
calls again, carrying on from what they heard (``caller_through_faults``).
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from click.testing import CliRunner
from e2e import (
    Call,
    RecordingTransport,
    SiteUser,
    assert_given_once,
    assert_heard_is_stored,
    read_outcome,
    screen_and_randomize,
)

from ivrs.demo.phone import parse_twiml
from ivrs.main import main

RETRY_FOR_SECONDS = 30.0  # longer than any fault a test injects
CALL_AGAIN_AFTER = 0.3


class Interrupted(Exception):
    """The call was cut short on our side: an apology, a restart, or a request
    that never got an answer. The caller calls again."""


def interrupted(body: str) -> bool:
    """An answer that says the system failed or the call was restarted."""
    heard = parse_twiml(200, body)
    return "sorry" in heard.text.lower()


@dataclass
class Tally:
    """What all callers' transports saw, for the checks and the printout."""

    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  # connection errors, by kind
    apologies: int = 0
    duplicates: int = 0
    first_apology: float | None = None
    last_apology: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def status(self, status: int) -> None:
        with self._lock:
            self.statuses[status] += 1

    def error(self, error: BaseException) -> None:
        # urllib wraps what the socket said (refused, reset) in a URLError
        reason = getattr(error, "reason", None)
        kind = type(reason if isinstance(reason, BaseException) else error).__name__
        with self._lock:
            self.errors[kind] += 1

    def apology(self) -> None:
        now = time.monotonic()
        with self._lock:
            self.apologies += 1
            self.first_apology = self.first_apology or now
            self.last_apology = now

    def duplicate(self) -> None:
        with self._lock:
            self.duplicates += 1

    def summary(self) -> str:
        return (f"answers {dict(self.statuses)}, connection errors {dict(self.errors)}, "
                f"apologies {self.apologies}, duplicates sent {self.duplicates}")


class TwilioLikeTransport(RecordingTransport):
    """Retries a request that got no answer, for up to ``RETRY_FOR_SECONDS``;
    sends a share of the requests a second time (``duplicate_rate``); raises
    ``Interrupted`` on an apology or a restart."""

    def __init__(self, base_url: str, tally: Tally, rng: random.Random,
                 duplicate_rate: float = 0.1) -> None:
        super().__init__(base_url)
        self.timeout = 15  # Twilio's own webhook timeout
        self.tally, self.rng, self.duplicate_rate = tally, rng, duplicate_rate

    def post(self, path, form, headers):
        status, body = self._with_retries(path, form, headers)
        if status == 200 and self.rng.random() < self.duplicate_rate:
            self.tally.duplicate()
            status, body = self._with_retries(path, form, headers)
        if status == 200 and path.startswith("/voice") and "/status" not in path \
                and interrupted(body):
            self.tally.apology()
            raise Interrupted(parse_twiml(status, body).text)
        return status, body

    def _with_retries(self, path, form, headers):
        deadline = time.monotonic() + RETRY_FOR_SECONDS
        delay = 0.1
        while True:
            try:
                status, body = super().post(path, form, headers)
            except (OSError, http.client.HTTPException) as error:
                self.tally.error(error)
                if time.monotonic() > deadline:
                    raise Interrupted(f"no answer: {error!r}") from error
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            self.tally.status(status)
            return status, body


def subjects_through_faults(url: str, user: SiteUser, index: int, tally: Tally, *,
                            deadline: float, until: threading.Event, most: int) -> list[Call]:
    """One site user randomizing subjects one after another, at least one and at
    most ``most``, until ``until`` is set (the fault is over): the load lasts as
    long as the fault. Returns each subject's last call."""
    transport = TwilioLikeTransport(url, tally, random.Random(index))
    calls = []
    while len(calls) < most and not (calls and until.is_set()):
        calls.append(caller_through_faults(transport, user, index, deadline=deadline))
    return calls


def caller_through_faults(transport: TwilioLikeTransport, user: SiteUser, index: int, *,
                          deadline: float) -> Call:
    """Calls until the caller has screened a subject and heard it randomized (or
    heard that it already is): every call after the first carries on from what
    the caller heard. Returns the last call, with everything heard."""
    url = transport.base_url
    heard: dict = {}
    while True:
        call = Call.to(url, user, transport)
        call.heard = heard
        try:
            screen_and_randomize(call, index)
            call.phone.hang_up()  # the status callback, as at the end of every real call
            return call
        except Interrupted:
            if time.monotonic() > deadline:
                raise AssertionError(f"caller {user.code} never got through; heard {heard}")
            time.sleep(CALL_AGAIN_AFTER)


def assert_exactly_once(db, database_url: str, calls: list[Call], tally: Tally) -> None:
    """What the database holds is exactly what the callers heard, nothing twice;
    every caller's subject is randomized; every answer was a 200 (a 204 for the
    status callbacks); ``ivrs audit verify`` exits 0."""
    outcome = read_outcome(db)
    assert_given_once(outcome)
    assert_heard_is_stored(outcome, calls)
    for call in calls:  # "already randomized": randomized in a call whose answer was lost
        subject = outcome.subjects[call.heard["subject"]]
        assert subject.id in outcome.randomizations
    assert set(tally.statuses) <= {200, 204}, tally.statuses
    result = CliRunner().invoke(main, ["audit", "verify"], env={"DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output
