"""Subject services: screen (assigns the number), screen failure, discontinuation."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session, joinedload

from core.actors import Actor
from core.clock import utcnow
from core.db import Database
from core.errors import NotFound, Refused
from core.models import Site, Study, Subject, SubjectStatusChange
from core.service import ServiceCall, service_call

SCREENED, SCREEN_FAILED, RANDOMIZED, DISCONTINUED = (
    "screened", "screen_failed", "randomized", "discontinued")
ENROLLING_ROLES = frozenset({"site_coordinator", "investigator"})


@dataclass(frozen=True)
class SubjectResult:
    subject_number: str
    site: str
    status: str
    confirmation: str | None


def screen_subject(db: Database, *, site_code: str, actor: Actor, study: str | None = None,
                   idempotency_key: str | None = None) -> SubjectResult:
    """Register a subject at a site; the number is the site code + a 4-digit sequence."""
    actor.require(ENROLLING_ROLES, "screen subjects")
    with service_call(db, study, "screen", idempotency_key, actor) as call:
        # The site row is the lock for its subject numbers: a retry waits here,
        # then finds the original's result.
        site = _site(call.session, call.study, site_code, lock=True)
        if (replay := call.replayed()) is not None:
            return SubjectResult(**replay)
        actor.require_site(site.code)
        seq = site.last_subject_seq = site.last_subject_seq + 1
        if seq > 9999:
            raise Refused(f"site {site.code} has used all 9999 subject numbers",
                          code="site_full")
        subject = Subject(study_id=call.study.id, site_id=site.id,
                          subject_number=f"{site.code}{seq:04d}", status=SCREENED,
                          screened_by=actor.label)
        call.session.add(subject)
        call.session.flush()
        _history(call, subject, None, SCREENED, None)
        call.audit.record("subject_screened", "subject", subject.subject_number,
                          new={"site": site.code, "status": SCREENED})
        return SubjectResult(**call.finish(
            {"subject_number": subject.subject_number, "site": site.code, "status": SCREENED}))


def record_screen_failure(db: Database, *, subject_number: str, reason: str, actor: Actor,
                          study: str | None = None,
                          idempotency_key: str | None = None) -> SubjectResult:
    return _change_status(db, subject_number, {SCREENED}, SCREEN_FAILED, reason, actor, study,
                          idempotency_key, "screen_failure")


def discontinue(db: Database, *, subject_number: str, reason: str, actor: Actor,
                study: str | None = None, idempotency_key: str | None = None) -> SubjectResult:
    return _change_status(db, subject_number, {RANDOMIZED}, DISCONTINUED, reason, actor, study,
                          idempotency_key, "discontinue")


def _change_status(db, subject_number, allowed_from, to_status, reason, actor, study, key,
                   operation) -> SubjectResult:
    actor.require(ENROLLING_ROLES, "change a subject's status")
    if not (reason or "").strip():
        raise Refused("a reason is required", code="reason_required")
    with service_call(db, study, f"{operation} {subject_number}", key, actor) as call:
        subject = lock_subject(call.session, call.study, subject_number)
        if (replay := call.replayed()) is not None:
            return SubjectResult(**replay)
        actor.require_site(subject.site.code)
        if subject.status not in allowed_from:
            raise Refused(f"subject {subject_number} is {subject.status}",
                          code=f"subject_{subject.status}")
        old = subject.status
        subject.status = to_status
        _history(call, subject, old, to_status, reason)
        call.audit.record(f"subject_{to_status}", "subject", subject_number,
                          old={"status": old}, new={"status": to_status}, reason=reason)
        return SubjectResult(**call.finish({"subject_number": subject_number,
                                            "site": subject.site.code, "status": to_status}))


def lock_subject(session: Session, study: Study, subject_number: str) -> Subject:
    subject = session.execute(
        select(Subject).where(Subject.study_id == study.id,
                              Subject.subject_number == subject_number)
        .options(joinedload(Subject.site))
        .with_for_update(of=Subject)
    ).scalar_one_or_none()
    if subject is None:
        raise NotFound(f"no subject {subject_number}", code="unknown_subject")
    return subject


def _site(session: Session, study: Study, site_code: str, lock: bool = False) -> Site:
    query = select(Site).where(Site.study_id == study.id, Site.code == site_code)
    site = session.execute(query.with_for_update() if lock else query).scalar_one_or_none()
    if site is None or not site.active:
        raise NotFound(f"no active site {site_code}", code="unknown_site")
    return site


def _history(call: ServiceCall, subject: Subject, old: str | None, new: str,
             reason: str | None) -> None:
    call.session.add(SubjectStatusChange(study_id=call.study.id, subject_id=subject.id,
                                         from_status=old, to_status=new,
                                         by=call.actor.label, reason=reason))


_subjects, _sites = Subject.__table__, Site.__table__
_LOCK_SUBJECT_ROW = (
    select(_subjects.c.id, _subjects.c.subject_number, _subjects.c.status,
           _sites.c.code.label("site_code"))
    .join(_sites, _sites.c.id == _subjects.c.site_id)
    .where(_subjects.c.study_id == bindparam("study"),
           _subjects.c.subject_number == bindparam("number"))
    .with_for_update(of=_subjects)
)
_SET_STATUS = (update(_subjects).where(_subjects.c.id == bindparam("subject"))
               .values(status=bindparam("new_status")))
_ADD_HISTORY = insert(SubjectStatusChange.__table__)


@dataclass
class SubjectRow:
    """A locked subject as the hot path needs it (no ORM object)."""

    id: int
    subject_number: str
    status: str
    site_code: str


def lock_subject_row(session: Session, study_id: int, subject_number: str) -> SubjectRow:
    row = session.execute(_LOCK_SUBJECT_ROW, {"study": study_id,
                                              "number": subject_number}).first()
    if row is None:
        raise NotFound(f"no subject {subject_number}", code="unknown_subject")
    return SubjectRow(*row)


# A randomization's history row names its event in the reason; the reason is text
# (a screen failure's may be typed through the API), so the rule that writes it
# also reads it back apart, for the doors that word it in their reader's language.
_RANDOMIZED_REASON = re.compile(r"randomized \((?P<event>[^()]*)\)")


def randomized_reason(event_code: str) -> str:
    return f"randomized ({event_code})"


def reason_parts(reason: str | None) -> tuple[str | None, dict[str, str]]:
    """A history row's reason as a code and its parameters: ``("randomized",
    {"event": "R1"})`` for a randomization's, else the reason itself (a code a
    user chose, ``adverse_event``, or text typed through the API), no parameters."""
    found = _RANDOMIZED_REASON.fullmatch(reason or "")
    if found is not None:
        return "randomized", {"event": found["event"]}
    return reason, {}


def record_status(session: Session, call: ServiceCall, subject: SubjectRow, new: str,
                  reason: str) -> None:
    """Move a locked subject to a new status, with its history row."""
    session.execute(_SET_STATUS, {"subject": subject.id, "new_status": new})
    session.execute(_ADD_HISTORY, {
        "study_id": call.study.id, "subject_id": subject.id, "from_status": subject.status,
        "to_status": new, "by": call.actor.label, "reason": reason, "at": utcnow()})
    subject.status = new
