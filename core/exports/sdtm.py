"""SDTM-shaped CSV tables of what the IVRS knows: exposure (EX) and disposition
(DS), with the SDTMIG variable names (``ivrs export sdtm``).

"Shaped" on purpose: these are the IVRS's part of the sponsor's SDTM datasets,
to be merged with the EDC's, not submission-ready datasets. Only variables the
IVRS can fill truthfully are present:

EX, one row per kit given to a subject (a kit reported lost or damaged was
replaced by another for the same visit, and the subject never took it: left
out; the dispensing report keeps both):
``STUDYID, DOMAIN, USUBJID, EXSEQ, EXREFID, EXTRT, VISITNUM, VISIT, EXSTDTC``.
EXREFID is the kit number; EXTRT is ``BLINDED`` in the blinded export, the
name of the kit's arm (the study file's arm name) unblinded; EXSTDTC is the day
the kit was dispensed. No dose, dose form, route or end date: the IVRS knows a
kit, not what is in it or when it was taken.

DS, one row per milestone or disposition event, in time order per subject:
randomization (``PROTOCOL MILESTONE``, ``RANDOMIZED``, DSREFID = randomization
number), screen failure and discontinuation (``DISPOSITION EVENT``, DSDECOD
from CDISC NCOMPLT), emergency unblinding (``OTHER EVENT``, ``TREATMENT
UNBLINDED``):
``STUDYID, DOMAIN, USUBJID, DSSEQ, DSREFID, DSTERM, DSDECOD, DSCAT, DSSTDTC``.

USUBJID is ``<STUDYID>-<subject number>``. Dates are ISO 8601 days on the
site's calendar (its time zone from the study file), as a site would write them
on a CRF; the ODM export has the exact UTC times. Rows are streamed in batches
like the reports; nothing in DS can reveal an arm.
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache
from typing import IO, Iterable
from zoneinfo import ZoneInfo

from sqlalchemy import literal, null, select, union_all
from sqlalchemy.orm import Session

from core.clock import as_utc
from core.exports import visit_catalogue
from core.models import (
    Arm,
    Randomization,
    RandomizationEvent,
    Site,
    Study,
    Subject,
    SubjectStatusChange,
)
from core.reports import _stream, write_table
from core.subjects import DISCONTINUED, SCREEN_FAILED
from core.supply.lifecycle import DAMAGED, MISSING
from core.models import Kit, KitType

EX_COLUMNS = ["STUDYID", "DOMAIN", "USUBJID", "EXSEQ", "EXREFID", "EXTRT", "VISITNUM", "VISIT",
              "EXSTDTC"]
DS_COLUMNS = ["STUDYID", "DOMAIN", "USUBJID", "DSSEQ", "DSREFID", "DSTERM", "DSDECOD", "DSCAT",
              "DSSTDTC"]
BLINDED_TREATMENT = "BLINDED"
# Kits a subject never took: replaced by another kit for the same visit.
REPLACED = (MISSING, DAMAGED)

MILESTONE, DISPOSITION, OTHER_EVENT = "PROTOCOL MILESTONE", "DISPOSITION EVENT", "OTHER EVENT"
RANDOMIZED_TERM, SCREEN_FAILURE, UNBLINDED_TERM = (
    "RANDOMIZED", "SCREEN FAILURE", "TREATMENT UNBLINDED")
# Discontinuation reasons as the dialogs record them -> CDISC NCOMPLT terms;
# any other reason is OTHER (its words stay in DSTERM).
DISCONTINUATION_TERMS = {"adverse_event": "ADVERSE EVENT",
                         "consent_withdrawn": "WITHDRAWAL BY SUBJECT",
                         "lost_to_follow_up": "LOST TO FOLLOW-UP"}
OTHER = "OTHER"
_REASON_CODE = re.compile(r"[a-z][a-z0-9_]*")


def write_ex(session: Session, study: Study, stream: IO[str], *, blinded: bool = True) -> int:
    """EX as CSV to a text stream; returns the number of rows."""
    visits = {visit.code: visit.number for visit in visit_catalogue(session, study)}
    query = (select(Subject.subject_number, Site.timezone, Kit.kit_number, Kit.visit_code,
                    Kit.assigned_at)
             .join(Subject, Subject.id == Kit.subject_id)
             .join(Site, Site.id == Subject.site_id)
             .where(Kit.study_id == study.id, Kit.visit_code.is_not(None),
                    Kit.status.not_in(REPLACED))
             .order_by(Subject.subject_number, Kit.assigned_at, Kit.kit_number))
    if not blinded:  # the arm is not even read for a blinded export
        query = (query.add_columns(Arm.name).join(KitType, KitType.id == Kit.kit_type_id)
                 .join(Arm, Arm.id == KitType.arm_id))

    def rows() -> Iterable[list]:
        sequence = _Sequence()
        for subject, timezone, kit, visit, assigned_at, *arm in _stream(session, query):
            yield [study.code, "EX", _usubjid(study, subject), sequence.next(subject), kit,
                   arm[0] if arm else BLINDED_TREATMENT, visits[visit], visit,
                   _site_day(assigned_at, timezone)]

    return write_table(stream, EX_COLUMNS, rows())


def write_ds(session: Session, study: Study, stream: IO[str]) -> int:
    """DS as CSV to a text stream; returns the number of rows. The same blinded
    or not: a disposition never tells an arm."""
    first_event = study.events[0].code if study.events else None
    randomized = (
        select(Subject.subject_number.label("subject"), Site.timezone.label("timezone"),
               Randomization.randomized_at.label("at"), literal("randomized").label("kind"),
               RandomizationEvent.code.label("detail"),
               Randomization.randomization_number.label("reference"))
        .join(Subject, Subject.id == Randomization.subject_id)
        .join(Site, Site.id == Subject.site_id)
        .join(RandomizationEvent, RandomizationEvent.id == Randomization.event_id)
        .where(Randomization.study_id == study.id))
    status_changes = (
        select(Subject.subject_number, Site.timezone, SubjectStatusChange.at,
               SubjectStatusChange.to_status, SubjectStatusChange.reason, null())
        .join(Subject, Subject.id == SubjectStatusChange.subject_id)
        .join(Site, Site.id == Subject.site_id)
        .where(SubjectStatusChange.study_id == study.id,
               SubjectStatusChange.to_status.in_([SCREEN_FAILED, DISCONTINUED])))
    unblinded = (
        select(Subject.subject_number, Site.timezone, Subject.unblinded_at,
               literal("unblinded"), null(), null())
        .join(Site, Site.id == Subject.site_id)
        .where(Subject.study_id == study.id, Subject.unblinded_at.is_not(None)))
    events = union_all(randomized, status_changes, unblinded).subquery()
    query = select(events).order_by(events.c.subject, events.c.at, events.c.kind)

    def rows() -> Iterable[list]:
        sequence = _Sequence()
        for subject, timezone, at, kind, detail, reference in _stream(session, query):
            term, decode, category = _disposition(kind, detail, first_event)
            yield [study.code, "DS", _usubjid(study, subject), sequence.next(subject),
                   reference or "", term, decode, category, _site_day(at, timezone)]

    return write_table(stream, DS_COLUMNS, rows())


def _disposition(kind: str, detail: str | None, first_event: str | None) -> tuple[str, str, str]:
    """(DSTERM, DSDECOD, DSCAT) of one event."""
    if kind == "randomized":
        term = RANDOMIZED_TERM if detail == first_event else f"{RANDOMIZED_TERM} AT {detail}"
        return term, RANDOMIZED_TERM, MILESTONE
    if kind == "unblinded":
        return "EMERGENCY UNBLINDING", UNBLINDED_TERM, OTHER_EVENT
    if kind == SCREEN_FAILED:
        return _reason_term(detail) or SCREEN_FAILURE, SCREEN_FAILURE, DISPOSITION
    decode = DISCONTINUATION_TERMS.get((detail or "").strip(), OTHER)
    return _reason_term(detail) or decode, decode, DISPOSITION


def _reason_term(reason: str | None) -> str:
    """DSTERM from a recorded reason: a reason code of the dialogs
    (``lost_to_follow_up``) in words, anything else as it was typed."""
    reason = (reason or "").strip()
    if _REASON_CODE.fullmatch(reason):
        return reason.replace("_", " ").upper()
    return reason


class _Sequence:
    """--SEQ: 1, 2, ... within each subject of rows sorted by subject."""

    def __init__(self) -> None:
        self._subject: str | None = None
        self._count = 0

    def next(self, subject: str) -> int:
        if subject != self._subject:
            self._subject, self._count = subject, 0
        self._count += 1
        return self._count


def _usubjid(study: Study, subject_number: str) -> str:
    return f"{study.code}-{subject_number}"


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _site_day(moment: datetime | None, timezone: str) -> str:
    """An instant as the day on the site's calendar (ISO 8601)."""
    if moment is None:
        return ""
    return as_utc(moment).astimezone(_zone(timezone or "UTC")).date().isoformat()
