"""The ``dispensing`` report (SPEC §8): one row per kit given to a subject.

``dispensed_at`` is when the kit was assigned to the subject, ``confirmed_at``
when the kit number was confirmed by SMS (empty until then). Kits that went
missing or were damaged after assignment stay listed with their status, so a
replacement shows as two rows for the same visit. Blinded (the default) leaves
the kit type out; unblinded appends it. Streamed in batches like core.reports.
Filters: ``site`` (the subject's site) and ``start``/``end`` on ``dispensed_at``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Site, Study, Subject
from core.reports import Report, _stream, _utc, within_days
from core.models import Kit, KitType


def dispensing(session: Session, study: Study, blinded: bool = True, *,
               site: str | None = None, start: date | None = None,
               end: date | None = None) -> Report:
    columns = ["subject_number", "visit", "kit_number", "dispensed_at", "confirmed_at",
               "site", "status"]
    if not blinded:
        columns.append("kit_type")
    query = (
        select(Subject.subject_number, Kit.visit_code, Kit.kit_number, Kit.assigned_at,
               Kit.confirmed_at, Site.code, Kit.status, KitType.code)
        .join(Subject, Subject.id == Kit.subject_id)
        .join(Site, Site.id == Subject.site_id)
        .join(KitType, KitType.id == Kit.kit_type_id)
        .where(Kit.study_id == study.id, *within_days(Kit.assigned_at, start, end))
        .order_by(Subject.subject_number, Kit.assigned_at, Kit.kit_number)
    )
    if site is not None:
        query = query.where(Site.code == site)

    def rows() -> Iterator[tuple]:
        for (subject, visit, number, assigned_at, confirmed_at, site_code, status,
             kit_type) in _stream(session, query):
            row = (subject, visit or "", number, _utc(assigned_at), _utc(confirmed_at),
                   site_code, status)
            yield row if blinded else row + (kit_type,)

    return columns, rows()
