"""Visit schedules and the visit due now (SPEC §6.6).

A schedule is the study file's ``visits`` (or ``visits_by_cohort[cohort]`` for a
subject randomized in a cohort that has its own): visits with a ``day``
relative to randomization, a ``window`` of [days before, days after] and the
number of kits to ``dispense``. Day 0 is the UTC date of the subject's first
randomization.

The schedule is read from the study's current configuration every time, so a
reloaded study file changes what is due from now on; what already happened is
in ``subject_visits`` (with the schedule version it happened under) and is
never recomputed. A visit placed by a new schedule before one the subject has
already had is in the past for that subject: it is neither due nor missed.

``due_visit`` is a pure function (the tests exercise it without a database);
the small queries below it read what it needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from core.errors import Refused
from core.models import Randomization, RandomizationEvent, SubjectVisit
from core.randomization.strata import parse_key

DONE, MISSED = "done", "missed"


@dataclass(frozen=True)
class Visit:
    code: str
    day: int
    before: int  # <= 0: the window opens this many days before ``day``
    after: int  # >= 0: and closes this many days after it
    dispense: int  # kits per visit

    def due_on(self, randomized_on: date) -> date:
        return randomized_on + timedelta(days=self.day)

    def window(self, randomized_on: date) -> tuple[date, date]:
        """First and last day of the window, both inclusive."""
        return (randomized_on + timedelta(days=self.day + self.before),
                randomized_on + timedelta(days=self.day + self.after))


Schedule = tuple[Visit, ...]


def parse_schedule(raw: Iterable[dict[str, Any]] | None) -> Schedule:
    """The validated ``visits`` section as visits ordered by day (file order on ties)."""
    visits = [Visit(code=str(v["code"]), day=int(v["day"]), before=int(v["window"][0]),
                    after=int(v["window"][1]), dispense=int(v.get("dispense") or 0))
              for v in raw or ()]
    return tuple(sorted(visits, key=lambda visit: visit.day))


def schedule_for(config: dict[str, Any] | None, cohort: str | None) -> Schedule:
    """The cohort's own schedule when the study defines one, else the study's."""
    config = config or {}
    by_cohort = config.get("visits_by_cohort") or {}
    if cohort and cohort in by_cohort:
        return parse_schedule(by_cohort[cohort])
    return parse_schedule(config.get("visits"))


@dataclass(frozen=True)
class DueVisit:
    """What ``due_visit`` found: the visit due now (None: no visit left), the
    visits missed on the way there and the visit after it."""

    visit: Visit | None
    missed: tuple[Visit, ...]
    out_of_window: bool  # due but today is before its window opens
    next_visit: Visit | None


def due_visit(schedule: Schedule, randomized_on: date, done_codes: Iterable[str],
              today: date) -> DueVisit:
    """The visit due on ``today`` for a subject randomized on ``randomized_on``.

    ``done_codes`` are the visits already recorded (done or missed): skipped.
    Walking the schedule in day order, every visit not yet recorded whose
    window closed before today (``day + after`` < today) is missed; the first
    one whose window has not closed is due, early (``out_of_window``) when
    today is before its window opens. Dispensing early is allowed, with the
    flag recorded. Past the last visit nothing is due.
    """
    done = set(done_codes)
    # A visit scheduled before the last one that happened is not in the
    # subject's future (a schedule changed mid-study applies to future visits).
    last_done = max((i for i, visit in enumerate(schedule) if visit.code in done), default=-1)
    missed: list[Visit] = []
    for index in range(last_done + 1, len(schedule)):
        visit = schedule[index]
        start, end = visit.window(randomized_on)
        if end < today:
            missed.append(visit)
            continue
        following = schedule[index + 1] if index + 1 < len(schedule) else None
        return DueVisit(visit, tuple(missed), today < start, following)
    return DueVisit(None, tuple(missed), False, None)


def last_unusable_expiry(next_visit: Visit | None, randomized_on: date, today: date,
                         do_not_dispense_days: int) -> date:
    """Kits expiring on or before this date are never dispensed.

    A kit handed out now must last until the next visit plus the study's
    do-not-dispense margin: the limit is (the next visit's nominal date, or
    today when there is no next visit or its date has passed) +
    ``do_not_dispense_days``, and a kit is dispensable only when
    ``expiry_date`` is strictly after it. With V2 on day 28 and 30 days, a kit
    dispensed at V1 on day 0 must expire on day 59 or later.
    """
    anchor = today
    if next_visit is not None:
        anchor = max(today, next_visit.due_on(randomized_on))
    return anchor + timedelta(days=do_not_dispense_days)


# --- what the database knows about a subject ---------------------------------------------


@dataclass(frozen=True)
class FirstRandomization:
    arm_id: int
    randomized_on: date  # UTC date: the schedule's day 0
    cohort: str | None


# Asked on every dispensing and every SMS STATUS: built once, bound per call.
_FIRST_RANDOMIZATION = (
    select(Randomization.arm_id, Randomization.randomized_at, Randomization.stratum_key)
    .join(RandomizationEvent, RandomizationEvent.id == Randomization.event_id)
    .where(Randomization.subject_id == bindparam("subject"))
    .order_by(RandomizationEvent.position, Randomization.randomized_at).limit(1))


def first_randomization(session: Session, subject_id: int) -> FirstRandomization | None:
    """The subject's first randomization (treatment arm, day 0, cohort)."""
    row = session.execute(_FIRST_RANDOMIZATION, {"subject": subject_id}).first()
    if row is None:
        return None
    arm_id, randomized_at, key = row
    return FirstRandomization(arm_id, utc_date(randomized_at), parse_key(key).get("cohort"))


def utc_date(moment: datetime) -> date:
    if moment.tzinfo is None:  # SQLite gives naive UTC back
        return moment.date()
    return moment.astimezone(UTC).date()


def recorded_visits(session: Session, subject_id: int) -> dict[str, str]:
    """Visit code -> status (done | missed) of what the subject has had."""
    return dict(session.execute(
        select(SubjectVisit.visit_code, SubjectVisit.status)
        .where(SubjectVisit.subject_id == subject_id)).all())


def record_visit(session: Session, *, study_id: int, subject_id: int, visit: Visit,
                 randomized_on: date, status: str, today: date | None, out_of_window: bool,
                 schedule_version: int, actor_label: str) -> SubjectVisit:
    start, end = visit.window(randomized_on)
    row = SubjectVisit(study_id=study_id, subject_id=subject_id, visit_code=visit.code,
                       status=status, due_on=visit.due_on(randomized_on), window_start=start,
                       window_end=end, occurred_on=today if status == DONE else None,
                       out_of_window=out_of_window, schedule_version=schedule_version,
                       recorded_by=actor_label)
    session.add(row)
    return row


def require_schedule(schedule: Schedule) -> None:
    if not schedule:
        raise Refused("this study has no visit schedule", code="no_schedule")
