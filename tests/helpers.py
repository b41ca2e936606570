"""Small helpers shared by service tests."""

from __future__ import annotations

from core.actors import ADMIN
from core.randomize import randomize
from core.subjects import screen_subject

YES = {"INC1": True, "EXC1": True}


def enroll(db, study: str, factors: dict[str, str], site: str = "101", **kwargs):
    """Screen then randomize one subject; returns the RandomizationResult."""
    subject = screen_subject(db, site_code=site, actor=ADMIN, study=study)
    return randomize(db, subject_number=subject.subject_number, actor=ADMIN, study=study,
                     eligibility=YES, factors=factors, **kwargs)


def table_counts(db) -> dict[str, int]:
    """Rows per table: 'the database exactly as before' compares these."""
    from sqlalchemy import func, select

    from core.models import Base

    with db.sessions() as session:
        return {name: session.execute(select(func.count()).select_from(table)).scalar_one()
                for name, table in Base.metadata.tables.items()}
