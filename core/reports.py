"""Reports as streams of rows (SPEC §8): nothing loads a whole table.

Each report is a function ``(session, study, blinded, **filters) -> (columns,
rows)`` (the registry by name is ``core.report_registry.SPECS``) where rows is an
iterator of tuples fetched in batches. Blinded (the default) leaves out every
column from which an arm could be derived; the unblinded columns are appended at
the end, so the blinded report is a prefix of the unblinded one. Filters are
keyword-only and default to None (everything): ``site`` (a site code) and
``start``/``end`` (dates, both inclusive, on the report's main date in UTC).
"""

from __future__ import annotations

import csv
from datetime import date, datetime, timedelta, timezone
from typing import Iterable, Iterator

from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.orm import Session

from core.models import (
    Approval,
    Arm,
    Randomization,
    RandomizationEvent,
    Site,
    Study,
    Subject,
    Unblinding,
)
from core.output_text import for_medium

Report = tuple[list[str], Iterator[tuple]]
BATCH = 1000


def _utc(moment: datetime | None) -> str:
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def within_days(column, start: date | None, end: date | None) -> list[ColumnElement[bool]]:
    """Conditions keeping a UTC timestamp column between two dates, both inclusive
    (``end`` takes the whole day: before the next midnight). None: no bound."""
    conditions = []
    if start is not None:
        conditions.append(column >= _midnight(start))
    if end is not None:
        conditions.append(column < _midnight(end + timedelta(days=1)))
    return conditions


def _stream(session: Session, query) -> Iterable:
    return session.execute(query.execution_options(yield_per=BATCH))


def write_table(stream, columns: list[str], rows: Iterable) -> int:
    """A report's rows as CSV (header first), streamed; the number of rows written.
    Text passes ``core.output_text`` on its way out (what a user typed may be in it)."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow([for_medium(value, "table") if isinstance(value, str) else value
                         for value in row])
        count += 1
    return count


def _first_event(session: Session, study: Study) -> int | None:
    """The study's first randomization event: the one a subject's row reports."""
    return session.execute(
        select(RandomizationEvent.id).where(RandomizationEvent.study_id == study.id)
        .order_by(RandomizationEvent.position).limit(1)).scalar()


def subjects(session: Session, study: Study, blinded: bool = True, *, site: str | None = None,
             start: date | None = None, end: date | None = None) -> Report:
    """One row per subject; randomization columns from the first randomization event.
    Dates filter on ``screened_at``."""
    columns = ["subject_number", "site", "status", "randomization_number", "randomized_at",
               "screened_at"]
    if not blinded:
        columns.append("arm")
    first_event = _first_event(session, study)
    query = (
        select(Subject.subject_number, Site.code, Subject.status,
               Randomization.randomization_number, Randomization.randomized_at,
               Subject.screened_at, Arm.code)
        .join(Site, Site.id == Subject.site_id)
        .outerjoin(Randomization, and_(Randomization.subject_id == Subject.id,
                                       Randomization.event_id == first_event))
        .outerjoin(Arm, Arm.id == Randomization.arm_id)
        .where(Subject.study_id == study.id,
               *within_days(Subject.screened_at, start, end))
        .order_by(Subject.subject_number)
    )
    if site is not None:
        query = query.where(Site.code == site)

    def rows() -> Iterator[tuple]:
        for (number, site_code, status, rand_no, rand_at, screened_at,
             arm) in _stream(session, query):
            row = (number, site_code, status, rand_no or "", _utc(rand_at), _utc(screened_at))
            yield row if blinded else row + (arm or "",)

    return columns, rows()


def randomization(session: Session, study: Study, blinded: bool = True, *,
                  site: str | None = None, start: date | None = None,
                  end: date | None = None) -> Report:
    """One row per randomization (several per subject when re-randomized). Dates
    filter on ``randomized_at``."""
    columns = ["randomization_number", "subject_number", "site", "event", "stratum",
               "randomized_at", "randomized_by"]
    if not blinded:
        columns += ["arm", "method"]
    query = (
        select(Randomization.randomization_number, Subject.subject_number, Site.code,
               RandomizationEvent.code, Randomization.stratum_key,
               Randomization.randomized_at, Randomization.randomized_by, Arm.code,
               Randomization.method)
        .join(Subject, Subject.id == Randomization.subject_id)
        .join(Site, Site.id == Subject.site_id)
        .join(RandomizationEvent, RandomizationEvent.id == Randomization.event_id)
        .join(Arm, Arm.id == Randomization.arm_id)
        .where(Randomization.study_id == study.id,
               *within_days(Randomization.randomized_at, start, end))
        .order_by(Randomization.randomized_at, Randomization.id)
    )
    if site is not None:
        query = query.where(Site.code == site)

    def rows() -> Iterator[tuple]:
        for (number, subject, site_code, event, stratum, at, by, arm,
             method) in _stream(session, query):
            row = (number, subject, site_code, event, stratum, _utc(at), by or "")
            yield row if blinded else row + (arm, method)

    return columns, rows()


def unblinding(session: Session, study: Study, blinded: bool = True, *,
               site: str | None = None, start: date | None = None,
               end: date | None = None) -> Report:
    """Every emergency unblinding event: who signed, why, when, who decided and who
    was told the treatment. Blinded: never the arm (an unblinded view adds it).
    Dates filter on ``requested_at``."""
    columns = ["unblinding_number", "subject_number", "site", "mode", "reason", "status",
               "requested_by", "requested_at", "signed_by", "signed_at", "decided_by",
               "decided_at", "decision_reason", "revealed_to", "revealed_at"]
    if not blinded:
        columns.append("arm")
    first_event = _first_event(session, study)
    query = (
        select(Unblinding.number, Subject.subject_number, Site.code, Unblinding.mode,
               Unblinding.reason, Unblinding.status, Unblinding.requested_by,
               Unblinding.requested_at, Unblinding.signed_by, Unblinding.signed_at,
               Approval.decided_by, Approval.decided_at, Approval.decision_reason,
               Unblinding.revealed_to, Unblinding.revealed_at, Arm.code)
        .join(Subject, Subject.id == Unblinding.subject_id)
        .join(Site, Site.id == Subject.site_id)
        .outerjoin(Approval, and_(Approval.study_id == Unblinding.study_id,
                                  Approval.kind == "unblinding",
                                  Approval.number == Unblinding.number))
        .outerjoin(Randomization, and_(Randomization.subject_id == Subject.id,
                                       Randomization.event_id == first_event))
        .outerjoin(Arm, Arm.id == Randomization.arm_id)
        .where(Unblinding.study_id == study.id,
               *within_days(Unblinding.requested_at, start, end))
        .order_by(Unblinding.id))
    if site is not None:
        query = query.where(Site.code == site)

    def rows() -> Iterator[tuple]:
        for (number, subject, site_code, mode, reason, status, requested_by, requested_at,
             signed_by, signed_at, decided_by, decided_at, decision_reason, revealed_to,
             revealed_at, arm) in _stream(session, query):
            row = (number, subject, site_code, mode, reason, status, requested_by,
                   _utc(requested_at), signed_by, _utc(signed_at), decided_by or "",
                   _utc(decided_at), decision_reason or "", revealed_to or "",
                   _utc(revealed_at))
            yield row if blinded else row + (arm or "",)

    return columns, rows()
