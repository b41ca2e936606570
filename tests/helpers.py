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


def parallel_senders(url: str, count: int, send) -> tuple[list, list[BaseException]]:
    """``count`` senders, as ``count`` servers would run them: each in a thread,
    with a database of its own, released at the same moment; ``send(db)`` is one
    sender's pass. Returns their reports and the errors raised."""
    import threading

    from core.db import Database

    reports, errors = [], []
    start = threading.Barrier(count)

    def sender() -> None:
        db = Database(url, pool_size=2)
        try:
            start.wait()
            reports.append(send(db))
        except Exception as error:  # noqa: BLE001 — returned to the test
            errors.append(error)
        finally:
            db.dispose()

    threads = [threading.Thread(target=sender) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return reports, errors
