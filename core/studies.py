"""Finding the study a command or a call is about."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.orm import Session

from core.errors import NotFound
from core.models import Study, StudyPhoneNumber

_studies = Study.__table__
_REF_COLUMNS = (_studies.c.id, _studies.c.code, _studies.c.config_version,
                _studies.c.eligibility, _studies.c.languages)
_REF_BY_CODE = select(*_REF_COLUMNS).where(_studies.c.code == bindparam("code"))
_REF_ANY = select(*_REF_COLUMNS).limit(2)
_BUMP_VERSION = (update(_studies).where(_studies.c.id == bindparam("study_id"))
                 .values(config_version=_studies.c.config_version + 1))


@dataclass(frozen=True)
class StudyRef:
    """What a service needs of its study, read with one light query per call."""

    id: int
    code: str
    config_version: int
    eligibility: tuple[str, ...]
    languages: tuple[str, ...]


def study_ref(session: Session | Connection, code: str | None = None) -> StudyRef:
    """Like ``get_study`` but without loading an ORM object (the services' hot path;
    a Core connection does as well as a session)."""
    if code is not None:
        rows = session.execute(_REF_BY_CODE, {"code": code}).all()
        if not rows:
            raise NotFound(f"no study {code!r} is loaded", code="unknown_study")
    else:
        rows = session.execute(_REF_ANY).all()
        _check_only_one(len(rows))
    study_id, study_code, version, eligibility, languages = rows[0]
    return StudyRef(study_id, study_code, version, tuple(eligibility or ()),
                    tuple(languages or ()))


def bump_config_version(session: Session, study_id: int) -> None:
    """Every configuration change calls this in its transaction (core.study_config)."""
    session.execute(_BUMP_VERSION, {"study_id": study_id})


def _check_only_one(count: int) -> None:
    if not count:
        raise NotFound("no study is loaded: run `ivrs study load FILE.yaml`", code="no_study")
    if count > 1:
        raise NotFound("several studies are loaded: say which with --study CODE",
                       code="ambiguous_study")


def get_study(session: Session, code: str | None = None) -> Study:
    """The study with this code; without a code, the only study loaded."""
    if code is not None:
        study = session.execute(select(Study).where(Study.code == code)).scalar_one_or_none()
        if study is None:
            raise NotFound(f"no study {code!r} is loaded", code="unknown_study")
        return study
    studies = session.execute(select(Study).limit(2)).scalars().all()
    _check_only_one(len(studies))
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


@dataclass(frozen=True)
class StudyName:
    code: str
    name: str


def list_studies(db) -> list[StudyName]:
    """Every study this deployment hosts (a sign-in page asks which one when there
    are several), in code order."""
    with db.reads() as session:
        return [StudyName(code, name) for code, name in session.execute(
            select(_studies.c.code, _studies.c.name).order_by(_studies.c.code))]
