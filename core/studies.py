"""Finding the study a command or a call is about."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import NotFound
from core.models import Study, StudyPhoneNumber


def get_study(session: Session, code: str | None = None) -> Study:
    """The study with this code; without a code, the only study loaded."""
    if code is not None:
        study = session.execute(select(Study).where(Study.code == code)).scalar_one_or_none()
        if study is None:
            raise NotFound(f"no study {code!r} is loaded", code="unknown_study")
        return study
    studies = session.execute(select(Study).limit(2)).scalars().all()
    if not studies:
        raise NotFound("no study is loaded: run `ivrs study load FILE.yaml`", code="no_study")
    if len(studies) > 1:
        raise NotFound("several studies are loaded: say which with --study CODE",
                       code="ambiguous_study")
    return studies[0]


def study_for_number(session: Session, dialed: str | None) -> Study:
    """SPEC §4: a webhook is routed by the dialed number; one study takes every number."""
    if dialed:
        study = session.execute(
            select(Study).join(StudyPhoneNumber, StudyPhoneNumber.study_id == Study.id)
            .where(StudyPhoneNumber.number == dialed)
        ).scalar_one_or_none()
        if study is not None:
            return study
    return get_study(session)
