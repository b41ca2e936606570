"""CDISC exports (SPEC §2 ``ivrs export odm/sdtm``): ODM 1.3.2 XML for an EDC
(``core.exports.odm``) and SDTM-shaped EX and DS tables (``core.exports.sdtm``).

What both share lives here: the study's visits in one numbered order, so that
an ODM StudyEventDef and an SDTM VISITNUM name the same visit the same way.

Blinding is as in the reports (``core.reports``): blinded by default, never an
arm, a kit type or a lot; the unblinded export adds the treatment and nothing
else.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Study
from core.models import Kit, SubjectVisit
from core.supply.visits import parse_schedule

# Subjects per round of queries (an IN list of subject ids, well under every
# database's limit on bound parameters).
BATCH = 500


@dataclass(frozen=True)
class VisitDef:
    code: str
    number: int  # VISITNUM: 1, 2, ... in schedule order
    day: int | None  # planned day after randomization; None: no longer scheduled


def visit_catalogue(session: Session, study: Study) -> tuple[VisitDef, ...]:
    """Every visit a subject of the study can have had, numbered once.

    The study's schedule in day order first, then the visits that only a
    cohort's own schedule has, then codes that are on record but no longer in
    any schedule (a study file reloaded mid-study; what happened is kept), so
    that the export never holds data about a visit it does not define.
    """
    config = study.config or {}
    planned = list(parse_schedule(config.get("visits")))
    for schedule in (config.get("visits_by_cohort") or {}).values():
        planned += sorted(parse_schedule(schedule), key=lambda visit: visit.day)
    days: dict[str, int | None] = {}
    for visit in planned:
        days.setdefault(visit.code, visit.day)
    recorded = set(session.scalars(select(SubjectVisit.visit_code).distinct()
                                   .where(SubjectVisit.study_id == study.id)))
    # every assignment names its visit (core.supply.dispensing.assign_kits)
    recorded |= set(session.scalars(select(Kit.visit_code).distinct().where(
        Kit.study_id == study.id, Kit.subject_id.is_not(None), Kit.visit_code.is_not(None))))
    for code in sorted(recorded - set(days)):
        days[code] = None
    return tuple(VisitDef(code, number, day)
                 for number, (code, day) in enumerate(days.items(), start=1))
