"""Subjects as FHIR R5 ``ResearchSubject`` resources, for systems that speak FHIR.

``progress`` is the subject's status history in FHIR's research-subject-state
terms (with the randomization as a milestone); ``assignedComparisonGroup``, the
arm, only for unblinded clients. The tests validate what is served with the
``fhir.resources`` models.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from core import records
from ivrs.api import models as m
from ivrs.api.registry import Context, operation

FHIR_JSON = "application/fhir+json"
STATE_SYSTEM = "http://terminology.hl7.org/CodeSystem/research-subject-state"
STATE_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/research-subject-state-type"
MILESTONE_SYSTEM = "http://hl7.org/fhir/research-subject-milestone"
SUBJECT_SYSTEM = "urn:ivrs:subject"
STUDY_SYSTEM = "urn:ivrs:study"
# Our statuses in FHIR's research subject states.
STATES = {"screened": "screening", "screen_failed": "ineligible", "randomized": "on-study",
          "discontinued": "off-study"}


class Coding(m.Answer):
    system: str
    code: str


class Concept(m.Answer):
    coding: list[Coding]


class Identifier(m.Answer):
    system: str
    value: str


class Reference(m.Answer):
    identifier: Identifier
    display: str | None = None


class Progress(m.Answer):
    type: Concept
    subjectState: Concept | None = None
    milestone: Concept | None = None
    reason: Concept | None = None
    startDate: m.Moment
    endDate: m.Moment | None = None


class Period(m.Answer):
    start: m.Moment
    end: m.Moment | None = None


class ResearchSubjectOut(m.Answer):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    resourceType: str = Field("ResearchSubject", pattern="^ResearchSubject$")
    id: str
    identifier: list[Identifier]
    status: str = Field(description="the record's publication status: active")
    progress: list[Progress]
    period: Period | None = None
    study: Reference
    subject: Reference
    assignedComparisonGroup: str | None = Field(None, description="unblinded clients only")


def _concept(system: str, code: str) -> Concept:
    return Concept(coding=[Coding(system=system, code=code)])


@operation("GET", "/fhir/ResearchSubject/{number}", tag="fhir", answer=ResearchSubjectOut,
           summary="A subject as a FHIR R5 ResearchSubject", problems=(401, 403, 404, 422),
           media=FHIR_JSON)
def get_research_subject(ctx: Context, *, number: str) -> ResearchSubjectOut:
    record = records.subject_record(ctx.db, subject_number=number, actor=ctx.actor,
                                    study=ctx.study)
    progress = []
    history = record.history
    for index, entry in enumerate(history):
        ends = history[index + 1].at if index + 1 < len(history) else None
        progress.append(Progress(
            type=_concept(STATE_TYPE_SYSTEM, "Enrollment"),
            subjectState=_concept(STATE_SYSTEM, STATES.get(entry.to_status, "candidate")),
            startDate=entry.at, endDate=ends))
    for randomization in record.randomizations:
        progress.append(Progress(type=_concept(STATE_TYPE_SYSTEM, "Milestone"),
                                 milestone=_concept(MILESTONE_SYSTEM, "Randomized"),
                                 startDate=randomization.randomized_at))
    first = record.randomizations[0] if record.randomizations else None
    identifier = Identifier(system=SUBJECT_SYSTEM, value=record.subject_number)
    return ResearchSubjectOut(
        id=record.subject_number, identifier=[identifier], status="active", progress=progress,
        period=Period(start=history[0].at,
                      end=history[-1].at if record.status in ("screen_failed", "discontinued")
                      else None) if history else None,
        study=Reference(identifier=Identifier(system=STUDY_SYSTEM, value=ctx.study)),
        subject=Reference(identifier=identifier, display=f"Subject {record.subject_number}"),
        assignedComparisonGroup=first.arm if first is not None and first.arm else None)
