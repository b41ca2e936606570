"""What the phone dialogs check and read before they act (read-only).

A caller who typed a subject number wants to hear at once that the subject is
not theirs or is already randomized, not after answering six questions. These
reads apply the same rules the services apply (the services check again, under
their locks, when they act: a preview is advice, the service is the decision).
Nothing here writes, and nothing here names an arm or a kit type.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from core.actors import SITE_ROLES, Actor
from core.clock import today
from core.db import Database
from core.eligibility import EDC, IVRS, assess, incomplete, recorded_answers
from core.errors import NotFound, Refused
from core.models import Kit, Shipment, ShipmentKit, Site, Study, Subject
from core.randomize import next_event
from core.studies import StudyRef, study_ref
from core.study_config import FactorConfig, study_config
from core.subjects import ENROLLING_ROLES, RANDOMIZED, SCREENED, SubjectRow
from core.supply.dispensing import DISPENSING_ROLES, supply_config, treated_subject
from core.supply.shipments import DISPATCHED
from core.supply.visits import due_visit, recorded_visits


@dataclass(frozen=True)
class RandomizationQuestions:
    subject_number: str
    event: str
    eligibility: tuple[str, ...]  # none when the EDC records them
    factors: tuple[FactorConfig, ...]
    eligibility_source: str = IVRS


@dataclass(frozen=True)
class VisitDue:
    subject_number: str
    visit: str
    kits: int
    out_of_window: bool
    missed: tuple[str, ...]


@dataclass(frozen=True)
class ShipmentDue:
    shipment_number: str
    kits: int


@dataclass(frozen=True)
class StatusChange:
    subject_number: str
    kind: str  # screen_failure (a screened subject) | discontinuation (a randomized one)


def randomization_questions(db: Database, *, subject_number: str, actor: Actor,
                            study: str | None = None) -> RandomizationQuestions:
    actor.require(ENROLLING_ROLES, "randomize")
    with db.reads() as session:
        ref, subject = subject_in_study(session, study, subject_number, actor)
        config = study_config(session, ref.id, ref.config_version)
        event = next_event(session, config, subject)
        if config.eligibility_source != EDC:
            return RandomizationQuestions(
                subject_number, event.code, ref.eligibility, event.factors)
        if subject.status == SCREENED:
            # What the EDC recorded decides: say so now, not after the factors.
            missing, failed = assess(ref.eligibility,
                                     recorded_answers(session, ref, subject.id))
            if failed:
                raise Refused(f"subject {subject_number} is not eligible: "
                              f"{', '.join(failed)} recorded as not met",
                              code="not_eligible", failed=failed)
            if missing:
                raise incomplete(subject_number, missing)
        return RandomizationQuestions(subject_number, event.code, (), event.factors, EDC)


def visit_due(db: Database, *, subject_number: str, actor: Actor,
              study: str | None = None) -> VisitDue:
    actor.require(DISPENSING_ROLES, "dispense kits")
    with db.reads() as session:
        ref, subject = subject_in_study(session, study, subject_number, actor)
        first = treated_subject(session, subject, actor)
        supply = supply_config(session, ref)
        due = due_visit(supply.schedule(first.cohort), first.randomized_on,
                        recorded_visits(session, subject.id), today())
        if due.visit is None:
            raise Refused(f"subject {subject_number} has no visit due", code="no_visit_due")
        return VisitDue(subject_number, due.visit.code, due.visit.dispense, due.out_of_window,
                        tuple(visit.code for visit in due.missed))


def shipment_due(db: Database, *, shipment_number: str, actor: Actor,
                 study: str | None = None) -> ShipmentDue:
    actor.require(SITE_ROLES, "confirm a shipment's receipt")
    with db.reads() as session:
        ref = study_ref(session, study)
        row = session.execute(
            select(Shipment.id, Shipment.status, Site.code)
            .join(Site, Site.id == Shipment.site_id)
            .where(Shipment.study_id == ref.id, Shipment.shipment_number == shipment_number)
        ).first()
        if row is None:
            raise NotFound(f"no shipment {shipment_number}", code="unknown_shipment")
        shipment_id, status, site_code = row
        actor.require_site(site_code)
        if status != DISPATCHED:
            raise Refused(f"shipment {shipment_number} is {status}", code="shipment_not_due",
                          status=status)
        kits = session.execute(select(func.count()).where(
            ShipmentKit.shipment_id == shipment_id)).scalar_one()
        return ShipmentDue(shipment_number, kits)


def kit_in_shipment(db: Database, *, shipment_number: str, kit_number: str,
                    study: str | None = None) -> bool:
    with db.reads() as session:
        ref = study_ref(session, study)
        return session.execute(
            select(Kit.id).join(ShipmentKit, ShipmentKit.kit_id == Kit.id)
            .join(Shipment, Shipment.id == ShipmentKit.shipment_id)
            .where(Shipment.study_id == ref.id, Shipment.shipment_number == shipment_number,
                   Kit.kit_number == kit_number)).first() is not None


def status_change(db: Database, *, subject_number: str, actor: Actor,
                  study: str | None = None) -> StatusChange:
    """Which change a subject can take: screen failure or discontinuation."""
    actor.require(ENROLLING_ROLES, "record a screen failure or discontinuation")
    with db.reads() as session:
        _, subject = subject_in_study(session, study, subject_number, actor)
        kinds = {SCREENED: "screen_failure", RANDOMIZED: "discontinuation"}
        if subject.status not in kinds:
            raise Refused(f"subject {subject_number} is {subject.status}",
                          code=f"subject_{subject.status}")
        return StatusChange(subject_number, kinds[subject.status])


_subjects, _sites, _studies = Subject.__table__, Site.__table__, Study.__table__
# The subject and its study in one statement: the dialogs' hot path.
_SUBJECT_IN_STUDY = (
    select(_studies.c.id, _studies.c.code, _studies.c.config_version, _studies.c.eligibility,
           _studies.c.languages, _subjects.c.id, _subjects.c.subject_number,
           _subjects.c.status, _sites.c.code)
    .join(_subjects, _subjects.c.study_id == _studies.c.id)
    .join(_sites, _sites.c.id == _subjects.c.site_id)
    .where(_studies.c.code == bindparam("study"),
           _subjects.c.subject_number == bindparam("number")))


def subject_in_study(session: Session, study: str | None, subject_number: str,
             actor: Actor) -> tuple[StudyRef, SubjectRow]:
    code = study if study is not None else study_ref(session).code
    row = session.execute(_SUBJECT_IN_STUDY, {"study": code, "number": subject_number}).first()
    if row is None:
        study_ref(session, code)  # an unknown study says so
        raise NotFound(f"no subject {subject_number}", code="unknown_subject")
    study_id, study_code, version, eligibility, languages, *subject = row
    ref = StudyRef(study_id, study_code, version, tuple(eligibility or ()),
                   tuple(languages or ()))
    subject = SubjectRow(*subject)
    actor.require_site(subject.site_code)
    return ref, subject
