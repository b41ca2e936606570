"""Gated actions: requests that a user of an approving role must sign off.

Emergency unblinding in ``approval`` mode and kit returns pass through the same
gate. This module is the mechanism and knows no gated action: each gated module
declares its ``Gate``, and ``core.gates`` hands them all to the functions here
(the doors and the daily job call ``core.gates``). A request:

- is opened in the transaction of the action it gates (``open_approval``),
  numbered with that action's own number, and expires after a time the kind
  sets;
- is approved or rejected (with a reason) by ``decide``: signed by the
  approver's user ID and PIN (``core.signatures``), by a user of a role the
  kind names, at their own sites when that role has sites, and never by the
  user who asked (four eyes). The gate's ``decided`` then carries the decision
  out in the same transaction, so a decision it cannot carry out changes
  nothing;
- left undecided past its time is expired by ``expire_stale`` (the daily job)
  and the gate told.

Every step is audited; the decision's audit row carries the signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.actors import Actor
from core.clock import as_utc, utcnow
from core.db import Database
from core.errors import NotFound, Refused
from core.fields import is_digits
from core.models import Approval, Site
from core.service import ServiceCall, service_call
from core.signatures import Signature, require_signature
from core.studies import study_ref

PENDING, APPROVED, REJECTED, EXPIRED = "pending", "approved", "rejected", "expired"
STATUSES = (PENDING, APPROVED, REJECTED, EXPIRED)
MAX_REASON = 1000
JOB = Actor(role="admin", channel="job")  # who expires requests: the scheduled job


@dataclass(frozen=True)
class About:
    """What a request is about, as a code and its parameters: each door says it
    in its reader's words (the console: ``web.approvals.about.<code>``). Like a
    refusal's message, ``english`` is the wording of the CLI, the API and the
    logs, which are in English. Blinded: no parameter names an arm or a kit type."""

    code: str
    params: Mapping[str, Any]
    english: str

    def __str__(self) -> str:
        return self.english


@dataclass(frozen=True)
class Gate:
    """What one kind of gated action does. Each function runs inside the
    transaction of the step, with the approval row locked."""

    kind: str
    approver_roles: Callable[[Session, int], frozenset[str]]  # (session, study id)
    # (call, approval, status, reason) -> details for the decision's result
    decided: Callable[[ServiceCall, Approval, str, str | None], dict[str, Any]]
    expired: Callable[[ServiceCall, Approval], None]
    # (session, approval) -> what the request is about, blinded (never an arm)
    describe: Callable[[Session, Approval], About]


Gates = Mapping[str, Gate]  # by kind


def _gate(gates: Gates, kind: str) -> Gate:
    try:
        return gates[kind]
    except KeyError:
        raise LookupError(f"no gate for {kind} requests among {sorted(gates)}") from None


@dataclass(frozen=True)
class Decision:
    number: str
    kind: str
    status: str
    details: dict[str, Any] = field(default_factory=dict)
    confirmation: str | None = None


def open_approval(call: ServiceCall, *, kind: str, number: str, site_id: int | None,
                  hours: int) -> Approval:
    """A new pending request, in the transaction of the action it gates."""
    now = utcnow()
    approval = Approval(study_id=call.study.id, number=number, kind=kind, site_id=site_id,
                        status=PENDING, requested_by=call.actor.label, requested_at=now,
                        expires_at=now + timedelta(hours=hours))
    call.session.add(approval)
    call.session.flush()
    call.audit.record("approval_requested", "approval", number, new={
        "kind": kind, "status": PENDING, "expires_at": approval.expires_at.isoformat()})
    return approval


def decide(db: Database, *, gates: Gates, number: str, approve: bool, actor: Actor,
           signature: Signature | None, reason: str | None = None, kind: str | None = None,
           study: str | None = None, idempotency_key: str | None = None) -> Decision:
    """Approve or reject request ``number`` (of ``kind``, when the caller expects one)."""
    verb = "approve" if approve else "reject"
    reason = (reason or "").strip() or None
    if not approve and reason is None:
        raise Refused("a rejection needs a reason", code="reason_required")
    if reason is not None and len(reason) > MAX_REASON:
        raise Refused(f"the reason is longer than {MAX_REASON} characters", code="bad_reason")
    with service_call(db, study, f"{verb} {number}", idempotency_key, actor) as call:
        approval = lock_approval(call.session, call.study.id, number, kind)
        if (replay := call.replayed()) is not None:
            return Decision(**replay)
        gate = _gate(gates, approval.kind)
        _check(call.session, approval, actor,
               gate.approver_roles(call.session, call.study.id), verb)
        signature = require_signature(signature, actor)
        status = APPROVED if approve else REJECTED
        approval.status, approval.decided_by = status, actor.label
        approval.decided_at, approval.decision_reason = utcnow(), reason
        call.audit.record(f"approval_{status}", "approval", approval.number, reason=reason,
                          old={"status": PENDING},
                          new={"kind": approval.kind, "status": status,
                               "signature": signature.record()})
        details = gate.decided(call, approval, status, reason)
        return Decision(**call.finish({"number": approval.number, "kind": approval.kind,
                                       "status": status, "details": details}))


def check_decider(db: Database, *, gates: Gates, number: str, actor: Actor,
                  study: str | None = None, approve: bool = True) -> str:
    """Before asking for a signature: may ``actor`` decide request ``number`` now?
    Returns its kind; refuses as ``decide`` would (nothing is written)."""
    verb = "approve" if approve else "reject"
    with db.reads() as session:
        ref = study_ref(session, study)
        number = str(number or "").strip()
        approval = session.scalar(select(Approval).where(
            Approval.study_id == ref.id, Approval.number == number)) \
            if is_digits(number) else None
        if approval is None:
            raise NotFound(f"no request {number or '(empty)'}", code="unknown_request",
                           number=number)
        roles = _gate(gates, approval.kind).approver_roles(session, ref.id)
        _check(session, approval, actor, roles, verb)
        return approval.kind


def _check(session: Session, approval: Approval, actor: Actor, roles: frozenset[str],
           verb: str) -> None:
    """Everything but the signature that a decision must pass."""
    if actor.role not in roles:
        raise Refused(f"role {actor.role} may not {verb} {approval.kind} requests",
                      code="not_allowed")
    if approval.site_id is not None and actor.site_codes is not None:
        actor.require_site(session.get(Site, approval.site_id).code)
    if approval.status != PENDING:
        raise Refused(f"{approval.kind} request {approval.number} is {approval.status}: "
                      f"it cannot be {verb.rstrip('e')}ed now",
                      code=f"approval_{approval.status}", number=approval.number)
    if as_utc(approval.expires_at) <= utcnow():
        raise Refused(f"request {approval.number} has expired", code="approval_expired",
                      number=approval.number)
    if approval.requested_by == actor.label:
        raise Refused(f"request {approval.number} is your own: another person must "
                      f"{verb} it", code="own_request", number=approval.number)


def expire_stale(db: Database, *, gates: Gates, study: str | None = None,
                 now: datetime | None = None) -> list[str]:
    """Expire every pending request past its time (at ``now``, default the
    clock's); the numbers expired."""
    now = now or utcnow()
    with service_call(db, study, "expire_approvals", None, JOB) as call:
        stale = list(call.session.scalars(
            select(Approval).where(Approval.study_id == call.study.id,
                                   Approval.status == PENDING,
                                   Approval.expires_at <= now)
            .order_by(Approval.id).with_for_update(skip_locked=True)))
        for approval in stale:
            approval.status, approval.decided_at = EXPIRED, now
            call.audit.record("approval_expired", "approval", approval.number,
                              old={"status": PENDING},
                              new={"kind": approval.kind, "status": EXPIRED})
            _gate(gates, approval.kind).expired(call, approval)
        numbers = [approval.number for approval in stale]
        if numbers:
            call.finish({"expired": numbers})
        return numbers


def lock_approval(session: Session, study_id: int, number: str,
                  kind: str | None = None) -> Approval:
    number = str(number or "").strip()
    query = select(Approval).where(Approval.study_id == study_id, Approval.number == number)
    if kind is not None:
        query = query.where(Approval.kind == kind)
    approval = session.execute(query.with_for_update()).scalar_one_or_none() \
        if is_digits(number) else None
    if approval is None:
        raise NotFound(f"no request {number or '(empty)'}", code="unknown_request",
                       number=number)
    return approval


# --- listing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApprovalRow:
    number: str
    kind: str
    site: str | None
    status: str
    about: About
    requested_by: str
    requested_at: datetime
    expires_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    reason: str | None


def list_approvals(session: Session, study_id: int, *, gates: Gates,
                   status: str | None = PENDING, actor: Actor | None = None,
                   limit: int = 200) -> list[ApprovalRow]:
    """Requests, newest first (pending ones by default); an actor with sites sees
    their sites' only. Blinded: what a request is about never names an arm."""
    query = _visible(select(Approval, Site.code), study_id, status, actor)
    rows = []
    for approval, site in session.execute(query.order_by(Approval.id.desc()).limit(limit)):
        rows.append(ApprovalRow(
            approval.number, approval.kind, site, approval.status,
            _gate(gates, approval.kind).describe(session, approval), approval.requested_by,
            approval.requested_at, approval.expires_at, approval.decided_by,
            approval.decided_at, approval.decision_reason))
    return rows


def count_approvals(session: Session, study_id: int, *, status: str | None = PENDING,
                    actor: Actor | None = None) -> int:
    """How many requests ``list_approvals`` would list, without a limit."""
    return session.scalar(_visible(select(func.count(Approval.id)), study_id, status, actor))


def _visible(query, study_id: int, status: str | None, actor: Actor | None):
    """``query`` limited to the study's requests in ``status`` that ``actor`` may see."""
    query = (query.select_from(Approval).outerjoin(Site, Site.id == Approval.site_id)
             .where(Approval.study_id == study_id))
    if status is not None:
        query = query.where(Approval.status == status)
    if actor is not None and actor.site_codes is not None:
        query = query.where(Site.code.in_(actor.site_codes))
    return query
