"""Emergency unblinding (SPEC §6.8): an investigator learns a subject's treatment.

Every unblinding is signed (user ID and PIN again, ``core.signatures``), gives
a reason, and is an ``Unblinding`` row numbered 800001, 800002 ... In the
study's ``unblinding.mode``:

- ``investigator``: the arm is revealed at once to the investigator who signed;
- ``approval``: a request is opened at the approvals gate (``core.approvals``)
  and the approvers (``unblinding.approvers``, project managers by default) are
  told; once approved, the requester is told to call again, and the arm is
  revealed on that call (signed again), to the requester only.

Blinding: the arm is only ever returned to the investigator it is revealed to,
and kept out of everything stored on the way (results kept for retries,
notifications). Its audit row carries it under the unblinded ``arm`` key, which
blinded views of the trail redact. Everybody else is told that an unblinding
happened: subject, site, number, never the arm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import approvals
from core.actors import SITE_ROLES, Actor
from core.clock import utcnow
from core.db import Database
from core.errors import NotFound, Refused
from core.models import (
    Approval,
    Arm,
    Randomization,
    RandomizationEvent,
    Site,
    Study,
    Subject,
    Unblinding,
)
from core.previews import subject_in_study
from core.service import ServiceCall, service_call
from core.signatures import Signature, require_signature
from core.subjects import SubjectRow, lock_subject_row
from core.supply.outbox import notify

UNBLINDING_ROLES = frozenset({"investigator"})
REASONS = ("medical_emergency", "other")  # by keypad digit
NUMBER_BASE = 800000
DEFAULT_APPROVERS = ("project_manager",)
DEFAULT_EXPIRE_HOURS = 24
PENDING, APPROVED, REJECTED, EXPIRED, UNBLINDED = (
    "pending", "approved", "rejected", "expired", "unblinded")
# Who is told, besides the requester, that a subject was unblinded (not the arm).
INFORMED = "role:project_manager"


@dataclass(frozen=True)
class RevealedArm:
    event: str  # the randomization event (R1; R2 for a second period ...)
    arm: str  # the arm's name, as the study file gives it


@dataclass(frozen=True)
class UnblindingCheck:
    """What the dialog needs before the signature: the mode, and whether this
    investigator already has a request for the subject."""

    subject_number: str
    mode: str
    approved: str | None = None  # an approved request of this user: revealed once signed
    pending: str | None = None  # a request awaiting its decision


@dataclass(frozen=True)
class UnblindingResult:
    number: str
    subject_number: str
    status: str  # unblinded | pending
    arms: list[RevealedArm] = field(default_factory=list)  # only when unblinded
    confirmation: str | None = None


def check_unblinding(db: Database, *, subject_number: str, actor: Actor,
                     study: str | None = None) -> UnblindingCheck:
    """May this investigator unblind this subject, and what would happen."""
    _require_investigator(actor)
    with db.reads() as session:
        ref, subject = subject_in_study(session, study, subject_number, actor)
        _require_randomized(session, subject)
        mode = session.scalar(select(Study.unblinding_mode).where(Study.id == ref.id))
        if mode != "approval":
            return UnblindingCheck(subject.subject_number, mode)
        approved = _request(session, ref.id, subject.id, APPROVED, actor)
        pending = _request(session, ref.id, subject.id, PENDING, None)
        return UnblindingCheck(subject.subject_number, mode,
                               approved.number if approved else None,
                               pending.number if pending else None)


def unblind(db: Database, *, subject_number: str, reason: str, signature: Signature | None,
            actor: Actor, study: str | None = None,
            idempotency_key: str | None = None) -> UnblindingResult:
    """Reveal the subject's arm to ``actor`` (mode investigator, or an approved
    request of theirs), or open a request (mode approval)."""
    _require_investigator(actor)
    with service_call(db, study, f"unblind {subject_number}", idempotency_key, actor) as call:
        session = call.session
        subject = lock_subject_row(session, call.study.id, str(subject_number).strip())
        if (replay := call.replayed()) is not None:
            return _with_arms(session, UnblindingResult(**replay), subject)
        actor.require_site(subject.site_code)
        _require_randomized(session, subject)
        signature = require_signature(signature, actor)
        study_row = session.get(Study, call.study.id)
        approved = None
        if study_row.unblinding_mode == "approval":
            approved = _request(session, call.study.id, subject.id, APPROVED, actor, lock=True)
        if approved is not None:
            _reveal(call, approved, subject, signature)
            unblinding = approved
        else:
            if reason not in REASONS:
                raise Refused(f"reason must be one of {', '.join(REASONS)}",
                              code="bad_reason")
            unblinding = _new_unblinding(call, study_row, subject, reason, signature)
        result = {"number": unblinding.number, "subject_number": subject.subject_number,
                  "status": unblinding.status}
        # The arm is never stored with the result: a retry reads it again.
        return _with_arms(session, UnblindingResult(**call.finish(result)), subject)


def _new_unblinding(call: ServiceCall, study: Study, subject: SubjectRow, reason: str,
                    signature: Signature) -> Unblinding:
    session = call.session
    mode = study.unblinding_mode
    if mode == "approval":
        pending = _request(session, call.study.id, subject.id, PENDING, None)
        if pending is not None:
            raise Refused(f"request {pending.number} for subject {subject.subject_number} "
                          "awaits its decision", code="unblinding_pending",
                          number=pending.number)
    unblinding = Unblinding(study_id=call.study.id, number="pending", subject_id=subject.id,
                            mode=mode, reason=reason, status=PENDING,
                            requested_by=call.actor.label, requested_at=utcnow(),
                            signed_by=signature.signer, signed_at=signature.signed_at)
    session.add(unblinding)
    session.flush()
    unblinding.number = str(NUMBER_BASE + unblinding.id)
    call.audit.record("unblinding_requested", "subject", subject.subject_number,
                      reason=reason, new={"unblinding": unblinding.number, "mode": mode,
                                          "signature": signature.record()})
    if mode == "approval":
        settings = _settings(study)
        site = _site(session, call.study.id, subject.site_code)
        approvals.open_approval(call, kind="unblinding", number=unblinding.number,
                                site_id=site.id, hours=settings["expire_hours"])
        for audience in _approver_audiences(settings["approvers"], subject.site_code):
            notify(session, call.audit, call.study.id,
                   key=f"unblinding_requested:{unblinding.number}:{audience}",
                   kind="unblinding_requested", audience=audience,
                   message_id="notify.unblinding_requested",
                   params={"number": unblinding.number, "subject": subject.subject_number,
                           "site": subject.site_code, "user": call.actor.user_code or ""})
    else:
        _reveal(call, unblinding, subject, signature)
    return unblinding


def _reveal(call: ServiceCall, unblinding: Unblinding, subject: SubjectRow,
            signature: Signature) -> None:
    """The arm goes to the actor: recorded, the subject flagged, others told."""
    session, now = call.session, utcnow()
    old_status = unblinding.status
    unblinding.status, unblinding.revealed_at = UNBLINDED, now
    unblinding.revealed_to = call.actor.label
    subject_row = session.get(Subject, subject.id)
    first = subject_row.unblinded_at is None
    if first:
        subject_row.unblinded_at = now
    arms = {reveal.event: reveal.arm for reveal in revealed_arms(session, subject.id)}
    call.audit.record("subject_unblinded", "subject", subject.subject_number,
                      reason=unblinding.reason,
                      old={"unblinding_status": old_status},
                      new={"unblinding": unblinding.number, "unblinding_status": UNBLINDED,
                           "revealed_to": call.actor.label, "signature": signature.record(),
                           # unblinded key: redacted in every blinded view of the trail
                           "arm": arms})
    notify(session, call.audit, call.study.id, key=f"subject_unblinded:{unblinding.number}",
           kind="subject_unblinded", audience=INFORMED, message_id="notify.subject_unblinded",
           params={"number": unblinding.number, "subject": subject.subject_number,
                   "site": subject.site_code, "user": call.actor.user_code or ""})


def revealed_arms(session: Session, subject_id: int) -> list[RevealedArm]:
    """The subject's arm in each randomization event, in event order."""
    rows = session.execute(
        select(RandomizationEvent.code, Arm.name)
        .join(Randomization, Randomization.event_id == RandomizationEvent.id)
        .join(Arm, Arm.id == Randomization.arm_id)
        .where(Randomization.subject_id == subject_id)
        .order_by(RandomizationEvent.position)).all()
    return [RevealedArm(event, arm) for event, arm in rows]


def _with_arms(session: Session, result: UnblindingResult,
               subject: SubjectRow) -> UnblindingResult:
    if result.status != UNBLINDED:
        return result
    return UnblindingResult(result.number, result.subject_number, result.status,
                            revealed_arms(session, subject.id), result.confirmation)


# --- the approvals gate -------------------------------------------------------------------


def _unblinding_for(session: Session, approval: Approval) -> Unblinding:
    return session.execute(select(Unblinding).where(
        Unblinding.study_id == approval.study_id, Unblinding.number == approval.number)
        .with_for_update()).scalar_one()


def _approver_roles(session: Session, study_id: int) -> frozenset[str]:
    return frozenset(_settings(session.get(Study, study_id))["approvers"])


def _decided(call: ServiceCall, approval: Approval, status: str,
             reason: str | None) -> dict:
    unblinding = _unblinding_for(call.session, approval)
    subject = call.session.get(Subject, unblinding.subject_id)
    unblinding.status = status
    call.audit.record(f"unblinding_{status}", "subject", subject.subject_number,
                      reason=reason, old={"unblinding_status": PENDING},
                      new={"unblinding": unblinding.number, "unblinding_status": status})
    requester = unblinding.requested_by.removeprefix("user:")
    params = {"number": unblinding.number, "subject": subject.subject_number}
    if reason:
        params["reason"] = reason if len(reason) <= 60 else reason[:57] + "..."
    notify(call.session, call.audit, call.study.id,
           key=f"unblinding_{status}:{unblinding.number}", kind=f"unblinding_{status}",
           audience=f"user:{requester}",
           message_id=("notify.unblinding_approved" if status == APPROVED
                       else "notify.unblinding_rejected"),
           params=params)
    return {"subject": subject.subject_number}


def _expired(call: ServiceCall, approval: Approval) -> None:
    unblinding = _unblinding_for(call.session, approval)
    unblinding.status = EXPIRED
    subject = call.session.get(Subject, unblinding.subject_id)
    notify(call.session, call.audit, call.study.id,
           key=f"unblinding_expired:{unblinding.number}", kind="unblinding_expired",
           audience=f"user:{unblinding.requested_by.removeprefix('user:')}",
           message_id="notify.unblinding_expired",
           params={"number": unblinding.number, "subject": subject.subject_number})


def _describe(session: Session, approval: Approval) -> approvals.About:
    unblinding = session.execute(select(Unblinding).where(
        Unblinding.study_id == approval.study_id,
        Unblinding.number == approval.number)).scalar_one()
    subject = session.get(Subject, unblinding.subject_id)
    # The reason is one of REASONS (a code a door words with ``reason.<code>``).
    return approvals.About(
        "unblinding", {"subject": subject.subject_number, "reason": unblinding.reason},
        f"emergency unblinding of subject {subject.subject_number} "
        f"({unblinding.reason.replace('_', ' ')})")


GATE = approvals.Gate("unblinding", _approver_roles, _decided, _expired, _describe)


# --- shared pieces -------------------------------------------------------------------------


def _settings(study: Study) -> dict:
    configured = (study.config or {}).get("unblinding") or {}
    return {"approvers": configured.get("approvers") or list(DEFAULT_APPROVERS),
            "expire_hours": configured.get("expire_hours") or DEFAULT_EXPIRE_HOURS}


def _approver_audiences(roles: list[str], site_code: str) -> list[str]:
    """Approvers with sites are told only of their own sites' requests."""
    return [f"site:{site_code}:{role}" if role in SITE_ROLES else f"role:{role}"
            for role in roles]


def _require_investigator(actor: Actor) -> None:
    if actor.role not in UNBLINDING_ROLES:
        raise Refused(f"role {actor.role} may not unblind", code="not_allowed")


def _require_randomized(session: Session, subject: SubjectRow) -> None:
    randomized = session.scalar(select(Randomization.id).where(
        Randomization.subject_id == subject.id).limit(1))
    if randomized is None:
        raise Refused(f"subject {subject.subject_number} is not randomized",
                      code="subject_not_randomized")


def _request(session: Session, study_id: int, subject_id: int, status: str,
             requester: Actor | None, lock: bool = False) -> Unblinding | None:
    query = select(Unblinding).where(Unblinding.study_id == study_id,
                                     Unblinding.subject_id == subject_id,
                                     Unblinding.status == status)
    if requester is not None:
        query = query.where(Unblinding.requested_by == requester.label)
    if lock:
        query = query.with_for_update()
    return session.scalars(query.order_by(Unblinding.id).limit(1)).first()


def _site(session: Session, study_id: int, code: str) -> Site:
    site = session.scalar(select(Site).where(Site.study_id == study_id, Site.code == code))
    if site is None:
        raise NotFound(f"no site {code}", code="unknown_site")
    return site
