"""Enrollment for the dashboard: per site, over time, against the caps.

*Randomized* counts subjects ever randomized (a randomized subject later
discontinued still counts: the enrollment targets count them), from the
status history; *screened* counts every subject screened. Each is one GROUP BY:
the answer is sized sites x statuses, or days, never subjects.

Over time: one point a day while the study's first randomization is less than
``DAILY_FOR_DAYS`` days old (weekly points would be two or three bars of
nothing), then one a week (ISO weeks, from Monday): a 2-year study is ~100
points, a chart still readable and a table still short. Days are UTC days.

Caps (core.randomize ``_take_caps``): a cap on ``site=X`` alone is that site's
target and goes on its row; every other cap (``total``, a level, a stratum, a
cohort, a site with a level) is a study-level target in ``caps``. A site role
sees no cap that names a site not its own. No cap can name an arm.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from core.actors import Actor
from core.models import CapCounter, RandomizationEvent, Subject, SubjectStatusChange
from core.subjects import DISCONTINUED, RANDOMIZED, SCREEN_FAILED

DAILY_FOR_DAYS = 56
DAY, WEEK = "day", "week"


@dataclass(frozen=True)
class SiteEnrollment:
    site: str
    name: str
    screened: int  # every subject screened
    randomized: int  # ever randomized (discontinued ones too)
    screen_failed: int
    discontinued: int
    cap: int | None  # the site's own cap (``site=CODE``), if the study has one
    cap_used: int | None  # what that cap's counter has counted


@dataclass(frozen=True)
class Cap:
    label: str  # the cap as the study file spells it (``total``, ``SEX=F``), event first if several
    used: int
    limit: int


@dataclass(frozen=True)
class TimePoint:
    start: date  # the day, or the Monday of the week
    randomized: int  # in that day or week
    cumulative: int  # up to and including it


@dataclass(frozen=True)
class EnrollmentOverTime:
    granularity: str  # day | week
    points: tuple[TimePoint, ...]
    cap: int | None  # the ``total`` cap of the study, for a cap line


def by_site(session: Session, sites: dict[int, tuple[str, str]],
            site_caps: dict[str, tuple[int, int]]) -> tuple[SiteEnrollment, ...]:
    """``sites``: id -> (code, name), the actor's; ``site_caps``: code -> (limit, used)."""
    ids = list(sites)
    statuses = Counter({(site, status): count for site, status, count in session.execute(
        select(Subject.site_id, Subject.status, func.count())
        .where(Subject.site_id.in_(ids)).group_by(Subject.site_id, Subject.status))})
    # Subjects with a randomization in their history: a semi-join (EXISTS), not a
    # COUNT(DISTINCT) over the joined rows, which PostgreSQL sorts first.
    ever = dict(session.execute(
        select(Subject.site_id, func.count())
        .where(Subject.site_id.in_(ids), exists().where(
            SubjectStatusChange.subject_id == Subject.id,
            SubjectStatusChange.to_status == RANDOMIZED))
        .group_by(Subject.site_id)).all())
    lines = []
    for site_id, (code, name) in sites.items():
        screened = sum(count for (site, _), count in statuses.items() if site == site_id)
        limit, used = site_caps.get(code, (None, None))
        lines.append(SiteEnrollment(code, name, screened, ever.get(site_id, 0),
                                    statuses[(site_id, SCREEN_FAILED)],
                                    statuses[(site_id, DISCONTINUED)], limit, used))
    return tuple(lines)


def caps(session: Session, study_id: int, actor: Actor
         ) -> tuple[tuple[Cap, ...], dict[str, tuple[int, int]], int | None]:
    """(study-level caps, site code -> (limit, used), the ``total`` cap's limit)."""
    rows = session.execute(
        select(RandomizationEvent.code, CapCounter.cap_key, CapCounter.cap, CapCounter.count)
        .join(RandomizationEvent, RandomizationEvent.id == CapCounter.event_id)
        .where(CapCounter.study_id == study_id)
        .order_by(RandomizationEvent.position, CapCounter.cap_key)).all()
    several = len({event for event, *_ in rows}) > 1
    study_caps, site_caps, total = [], {}, None
    for event, key, limit, used in rows:
        conditions = dict(part.partition("=")[::2] for part in key.split(",")) \
            if key != "total" else {}
        if "site" in conditions and not actor.may_act_at(conditions["site"]):
            continue
        if set(conditions) == {"site"}:
            site_caps[conditions["site"]] = (limit, used)
            continue
        if key == "total" and total is None:
            total = limit
        study_caps.append(Cap(f"{event}: {key}" if several else key, used, limit))
    return tuple(study_caps), site_caps, total


def over_time(session: Session, site_ids: list[int], today: date, cap: int | None,
              is_postgres: bool) -> EnrollmentOverTime:
    """Cumulative randomizations of these sites, a point a day or a week."""
    first = (select(func.min(SubjectStatusChange.at).label("at"))
             .join(Subject, Subject.id == SubjectStatusChange.subject_id)
             .where(Subject.site_id.in_(site_ids), SubjectStatusChange.to_status == RANDOMIZED)
             .group_by(SubjectStatusChange.subject_id).subquery())
    # The UTC day of a timestamp: SQLite stores them as UTC text already.
    day = (func.date(func.timezone("UTC", first.c.at)) if is_postgres
           else func.date(first.c.at))
    per_day = {_as_date(on): count for on, count in session.execute(
        select(day, func.count()).group_by(day))}
    if not per_day:
        return EnrollmentOverTime(DAY, (), cap)
    start = min(per_day)
    last = max(today, max(per_day))
    if (last - start).days < DAILY_FOR_DAYS:
        granularity, period = DAY, (lambda on: on)
    else:
        granularity, period = WEEK, (lambda on: on - timedelta(days=on.weekday()))
    counts: Counter = Counter()
    for on, count in per_day.items():
        counts[period(on)] += count
    step = timedelta(days=1 if granularity == DAY else 7)
    points, cumulative, at = [], 0, period(start)
    while at <= period(last):
        cumulative += counts[at]
        points.append(TimePoint(at, counts[at], cumulative))
        at += step
    return EnrollmentOverTime(granularity, tuple(points), cap)


def _as_date(value) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
