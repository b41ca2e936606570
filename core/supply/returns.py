"""Returns: kits going back from a site to its depot, and their destruction.

The path, each step its own role-checked, audited, idempotent service:

1. ``record_subject_return``: a subject hands kits back at the site
   (assigned/dispensed -> returned by subject; the subject stays on the kit so
   drug accountability shows who had it).
2. ``declare_return``: the site lists unused or returned kits (available,
   returned by subject, expired, damaged, quarantined) in a return, numbered
   700001, 700002 ... Kits keep their status and place until the depot has
   them in hand; the project manager is notified.
3. ``approve_return`` / ``reject_return``: the project manager decides, signed,
   at the approvals gate (``core.approvals``, shared with emergency unblinding).
   Nobody decides on a return they declared themselves (four eyes); a rejected
   or expired return's kits simply stay at the site and may be declared again.
4. ``receive_return``: the depot takes the kits in (-> returned to depot).
5. ``destroy_kits``: the depot records destruction of a received return, or of
   named expired/damaged/returned kits at a depot; a return whose kits are all
   destroyed is closed as destroyed.

Blinding: results, refusals and notifications carry kit numbers and counts
only; kit-type counts appear only under the audit's unblinded ``kit_type`` key.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import approvals
from core.actors import SITE_ROLES, Actor
from core.clock import utcnow
from core.db import Database
from core.errors import NotFound, Refused
from core.fields import is_digits
from core.models import Approval, Depot, Kit, KitReturn, KitType, ReturnKit, Site, Study
from core.service import ServiceCall, service_call
from core.signatures import Signature
from core.subjects import lock_subject_row
from core.supply.kits import apply_move, lock_kits
from core.supply.lifecycle import ASSIGNED, DISPENSED, RETURNABLE, UNUSABLE
from core.supply.outbox import notify
from core.supply.shipments import DEPOT_ROLES, required_text

DECLARED, APPROVED, REJECTED, EXPIRED, RECEIVED, DESTROYED = (
    "declared", "approved", "rejected", "expired", "received", "destroyed")
RETURN_STATUSES = [DECLARED, APPROVED, REJECTED, EXPIRED, RECEIVED, DESTROYED]
# A kit in one of these returns is spoken for: it cannot be declared again.
OPEN = (DECLARED, APPROVED)
NUMBER_BASE = 700000  # return numbers are digits (typed on a keypad): 700001, 700002 ...
APPROVER_ROLES = frozenset({"project_manager"})
DEFAULT_APPROVAL_HOURS = 14 * 24  # an undecided return expires (study: supply.return_approval_hours)
MAX_KITS = 500  # more kit numbers than this in one request is a typing mistake
MAX_REASON = 1000


@dataclass(frozen=True)
class SubjectReturnResult:
    subject_number: str
    kits: list[str]
    confirmation: str | None = None


@dataclass(frozen=True)
class ReturnResult:
    """What a return service tells its caller: kit numbers and counts, never kit types."""

    return_number: str
    site: str
    depot: str
    status: str
    kits: int
    kit_numbers: list[str] = field(default_factory=list)
    confirmation: str | None = None


@dataclass(frozen=True)
class DestructionResult:
    kits: int
    kit_numbers: list[str]
    returns_closed: list[str]  # returns that became "destroyed" with this destruction
    confirmation: str | None = None


# --- 1. the subject hands kits back --------------------------------------------------------------


def record_subject_return(db: Database, *, subject_number: str, kit_numbers: Iterable[str],
                          actor: Actor, study: str | None = None,
                          idempotency_key: str | None = None) -> SubjectReturnResult:
    """Kits the subject brought back to the site: assigned/dispensed -> returned by subject."""
    actor.require(SITE_ROLES, "record kits returned by a subject")
    numbers = kit_number_set(kit_numbers)
    with service_call(db, study, f"subject_return {subject_number}", idempotency_key,
                      actor) as call:
        session = call.session
        subject = lock_subject_row(session, call.study.id, str(subject_number).strip())
        if (replay := call.replayed()) is not None:
            return SubjectReturnResult(**replay)
        actor.require_site(subject.site_code)
        kits = _locked(session, call.study.id, numbers)
        for kit in kits:
            if kit.subject_id != subject.id:
                raise Refused(f"kit {kit.kit_number} is not a kit of subject "
                              f"{subject.subject_number}; nothing was recorded",
                              code="kit_not_assigned", kit=kit.kit_number)
        for kit in kits:  # a kit already returned is refused by the lifecycle
            apply_move(call.audit, kit, "return_from_subject",
                       details={"subject": subject.subject_number})
        returned = [kit.kit_number for kit in kits]
        call.audit.record("kits_returned_by_subject", "subject", subject.subject_number,
                          new={"site": subject.site_code, "kits": returned})
        return SubjectReturnResult(**call.finish({"subject_number": subject.subject_number,
                                                  "kits": returned}))


# --- 2. the site declares a return ----------------------------------------------------------------


def declare_return(db: Database, *, site_code: str, kit_numbers: Iterable[str], reason: str,
                   actor: Actor, study: str | None = None,
                   idempotency_key: str | None = None) -> ReturnResult:
    """List a site's returnable kits in a new return to the site's depot."""
    actor.require(SITE_ROLES, "declare returns")
    reason = required_text(reason, "reason", limit=MAX_REASON)
    numbers = kit_number_set(kit_numbers)
    with service_call(db, study, f"declare_return {site_code}", idempotency_key,
                      actor) as call:
        session = call.session
        # The site row serializes a site's declarations (and a retry's replay).
        # A closed (inactive) site may still send its stock back.
        site = session.execute(
            select(Site).where(Site.study_id == call.study.id, Site.code == str(site_code))
            .with_for_update()).scalar_one_or_none()
        if site is None:
            raise NotFound(f"no site {site_code}", code="unknown_site")
        if (replay := call.replayed()) is not None:
            return ReturnResult(**replay)
        actor.require_site(site.code)
        if site.depot_id is None:
            raise Refused(f"site {site.code} has no depot to return kits to", code="no_depot")
        kits = _locked(session, call.study.id, numbers)
        open_returns = _open_returns(session, [kit.id for kit in kits])
        for kit in kits:
            _check_returnable(kit, site, open_returns.get(kit.id))
        kit_return = KitReturn(study_id=call.study.id, return_number="pending",
                               site_id=site.id, depot_id=site.depot_id, status=DECLARED,
                               declared_at=utcnow(), declared_by=actor.label, reason=reason)
        session.add(kit_return)
        session.flush()
        kit_return.return_number = str(NUMBER_BASE + kit_return.id)
        approvals.open_approval(call, kind="return", number=kit_return.return_number,
                                site_id=site.id, hours=_approval_hours(session, call.study.id))
        for kit in kits:
            session.add(ReturnKit(return_id=kit_return.id, kit_id=kit.id,
                                  status_before=kit.status))
        listed = [kit.kit_number for kit in kits]
        depot = session.get(Depot, site.depot_id)
        call.audit.record("return_declared", "return", kit_return.return_number, reason=reason,
                          new={"status": DECLARED, "site": site.code, "depot": depot.code,
                               "kits": listed,
                               "statuses": dict(Counter(kit.status for kit in kits)),
                               # per-type counts reveal arms at a site: unblinded key only
                               "kit_type": _type_counts(session, kits)})
        notify(session, call.audit, call.study.id,
               key=f"return_declared:{kit_return.return_number}", kind="return_declared",
               audience="role:project_manager", message_id="notify.return_declared",
               params={"return": kit_return.return_number, "site": site.code,
                       "count": len(kits)})
        return ReturnResult(**call.finish(_result(kit_return, site, depot, listed)))


def _check_returnable(kit: Kit, site: Site, open_return: str | None) -> None:
    """Refuse a kit the site cannot send back, saying why (no kit type, no arm)."""
    if kit.site_id != site.id:
        raise Refused(f"kit {kit.kit_number} is not at site {site.code}; nothing was "
                      "declared", code="kit_not_at_site", kit=kit.kit_number)
    if kit.status in (ASSIGNED, DISPENSED):
        raise Refused(f"kit {kit.kit_number} is {kit.status} to a subject: record the "
                      "subject's return first; nothing was declared",
                      code="kit_with_subject", kit=kit.kit_number)
    if kit.status not in RETURNABLE:
        raise Refused(f"kit {kit.kit_number} is {kit.status.replace('_', ' ')}: it cannot "
                      "be returned; nothing was declared", code="kit_not_returnable",
                      kit=kit.kit_number, status=kit.status)
    if open_return is not None:
        raise Refused(f"kit {kit.kit_number} is already in return {open_return}; nothing "
                      "was declared", code="kit_in_open_return", kit=kit.kit_number,
                      return_number=open_return)


def _open_returns(session: Session, kit_ids: list[int]) -> dict[int, str]:
    """Kit id -> number of the open (declared or approved) return that lists it."""
    if not kit_ids:
        return {}
    return dict(session.execute(
        select(ReturnKit.kit_id, KitReturn.return_number)
        .join(KitReturn, KitReturn.id == ReturnKit.return_id)
        .where(ReturnKit.kit_id.in_(kit_ids), KitReturn.status.in_(OPEN))).all())


# --- 3. the project manager decides, at the approvals gate (core.approvals) ----------------


def approve_return(db: Database, *, return_number: str, actor: Actor,
                   signature: Signature | None, study: str | None = None,
                   idempotency_key: str | None = None) -> ReturnResult:
    """declared -> approved (signed); the site is told it may ship the kits."""
    return _decide(db, return_number, True, None, actor, signature, study, idempotency_key)


def reject_return(db: Database, *, return_number: str, reason: str, actor: Actor,
                  signature: Signature | None, study: str | None = None,
                  idempotency_key: str | None = None) -> ReturnResult:
    """declared -> rejected (signed, with a reason); the kits stay at the site (and
    may be declared again)."""
    reason = required_text(reason, "reason", limit=MAX_REASON)
    return _decide(db, return_number, False, reason, actor, signature, study, idempotency_key)


def _decide(db: Database, return_number: str, approve: bool, reason: str | None, actor: Actor,
            signature: Signature | None, study: str | None, key: str | None) -> ReturnResult:
    try:
        decision = approvals.decide(db, gates={GATE.kind: GATE},
                                    number=str(return_number or "").strip(),
                                    approve=approve, reason=reason, actor=actor,
                                    signature=signature, kind="return", study=study,
                                    idempotency_key=key)
    except NotFound as error:
        if error.code != "unknown_request":
            raise
        raise NotFound(f"no return {return_number}", code="unknown_return") from None
    return ReturnResult(**decision.details, confirmation=decision.confirmation)


def _return_decided(call: ServiceCall, approval: Approval, status: str,
                    reason: str | None) -> dict[str, Any]:
    """The gate's decision carried out: the return follows it, the site is told."""
    session = call.session
    kit_return = lock_return(session, call.study.id, approval.number)
    kits = return_kits(session, kit_return)
    site = session.get(Site, kit_return.site_id)
    if status == APPROVED:
        for kit in kits:  # still at the site and returnable (it might have been used)
            if kit.site_id != site.id or kit.status not in RETURNABLE:
                raise Refused(f"kit {kit.kit_number} of return {kit_return.return_number}"
                              f" is now {kit.status.replace('_', ' ')}: reject the "
                              "return and declare it again", code="return_kit_changed",
                              kit=kit.kit_number)
    kit_return.status = status
    kit_return.decided_at = utcnow()
    kit_return.decided_by = call.actor.label
    depot = session.get(Depot, kit_return.depot_id)
    call.audit.record(f"return_{status}", "return", kit_return.return_number,
                      old={"status": DECLARED}, new={"status": status, "kits": len(kits)},
                      reason=reason)
    params: dict[str, Any] = {"return": kit_return.return_number, "count": len(kits),
                              "depot": depot.code}
    if reason:
        # The SMS quotes the reason; a long one is cut (the audit keeps it whole).
        params["reason"] = reason if len(reason) <= 60 else reason[:57] + "..."
    notify(session, call.audit, call.study.id,
           key=f"return_{status}:{kit_return.return_number}", kind=f"return_{status}",
           audience=f"site:{site.code}",
           message_id=("notify.return_approved" if status == APPROVED
                       else "notify.return_rejected"),
           params=params)
    return _result(kit_return, site, depot, [kit.kit_number for kit in kits])


def _return_expired(call: ServiceCall, approval: Approval) -> None:
    """Nobody decided in time: the kits stay at the site, which may declare them again."""
    kit_return = lock_return(call.session, call.study.id, approval.number)
    kit_return.status = EXPIRED
    site = call.session.get(Site, kit_return.site_id)
    call.audit.record("return_expired", "return", kit_return.return_number,
                      old={"status": DECLARED}, new={"status": EXPIRED})
    notify(call.session, call.audit, call.study.id,
           key=f"return_expired:{kit_return.return_number}", kind="return_expired",
           audience=f"site:{site.code}", message_id="notify.return_expired",
           params={"return": kit_return.return_number})


def _describe_return(session: Session, approval: Approval) -> approvals.About:
    kit_return = session.scalar(select(KitReturn).where(
        KitReturn.study_id == approval.study_id, KitReturn.return_number == approval.number))
    count = session.scalar(select(func.count()).where(ReturnKit.return_id == kit_return.id))
    # How many kits, never of which type: per-type counts would tell the site's arms.
    return approvals.About("return", {"count": count},
                           f"return of {count} kit{'s' if count != 1 else ''} to the depot")


GATE = approvals.Gate("return", lambda session, study_id: APPROVER_ROLES, _return_decided,
                      _return_expired, _describe_return)


# --- 4. the depot receives ---------------------------------------------------------------------


def receive_return(db: Database, *, return_number: str, actor: Actor, study: str | None = None,
                   idempotency_key: str | None = None) -> ReturnResult:
    """approved -> received: every kit -> returned to depot, at the return's depot.

    The site is cleared (the kit has left it); the subject stays on the kit for
    accountability (who had it before it came back).
    """
    actor.require(DEPOT_ROLES, "receive returns")
    with service_call(db, study, f"receive_return {return_number}", idempotency_key,
                      actor) as call:
        session = call.session
        kit_return = lock_return(session, call.study.id, return_number)
        if (replay := call.replayed()) is not None:
            return ReturnResult(**replay)
        _require_status(kit_return, APPROVED, "received")
        kits = return_kits(session, kit_return)
        details = {"return": kit_return.return_number}
        for kit in kits:  # a kit used since the declaration is refused by the lifecycle
            apply_move(call.audit, kit, "receive_return", details=details,
                       depot_id=kit_return.depot_id, site_id=None, shipment_id=None)
        kit_return.status = RECEIVED
        site, depot = session.get(Site, kit_return.site_id), session.get(Depot,
                                                                         kit_return.depot_id)
        call.audit.record("return_received", "return", kit_return.return_number,
                          old={"status": APPROVED},
                          new={"status": RECEIVED, "depot": depot.code, "kits": len(kits)})
        return ReturnResult(**call.finish(_result(kit_return, site, depot,
                                                  [kit.kit_number for kit in kits])))


# --- 5. destruction ------------------------------------------------------------------------------


def destroy_kits(db: Database, *, actor: Actor, return_number: str | None = None,
                 kit_numbers: Iterable[str] | None = None, reason: str | None = None,
                 study: str | None = None,
                 idempotency_key: str | None = None) -> DestructionResult:
    """Record destruction at a depot: a received return's kits, or named kits that are
    expired, damaged or returned to depot and at a depot."""
    actor.require(DEPOT_ROLES, "destroy kits")
    numbers = kit_number_set(kit_numbers or (), required=False)
    if (return_number is None) == (not numbers):
        raise Refused("name either a return or kit numbers", code="bad_request")
    reason = required_text(reason, "reason", limit=MAX_REASON) if reason else None
    if return_number is not None:
        operation = f"destroy_return {return_number}"
    else:  # the operation names what the key is for, in bounded length
        digest = hashlib.sha256(",".join(sorted(numbers)).encode()).hexdigest()[:16]
        operation = f"destroy_kits {digest}"
    with service_call(db, study, operation, idempotency_key, actor) as call:
        session = call.session
        if return_number is not None:
            kit_return = lock_return(session, call.study.id, return_number)
            if (replay := call.replayed()) is not None:
                return DestructionResult(**replay)
            _require_status(kit_return, RECEIVED, "destroyed")
            kits = [kit for kit in return_kits(session, kit_return) if kit.status in UNUSABLE]
            if not kits:
                raise Refused(f"return {kit_return.return_number} has no kits left to "
                              "destroy", code="nothing_to_destroy")
            returns = [kit_return]
        else:
            # Returns first, then kits: the same lock order as the path above.
            returns = _lock_returns_of(session, call.study.id, numbers)
            if (replay := call.replayed()) is not None:
                return DestructionResult(**replay)
            kits = _locked(session, call.study.id, numbers)
            for kit in kits:
                if kit.depot_id is None or kit.site_id is not None:
                    raise Refused(f"kit {kit.kit_number} is not at a depot: a site's kits are "
                                  "returned before they are destroyed; nothing was destroyed",
                                  code="kit_not_at_depot", kit=kit.kit_number)
        details = {"return": returns[0].return_number} if return_number is not None else None
        for kit in kits:  # a usable kit is refused by the lifecycle
            apply_move(call.audit, kit, "destroy", reason=reason, details=details)
        closed = []
        for kit_return in returns:
            if kit_return.status == RECEIVED and all(
                    kit.status == DESTROYED for kit in return_kits(session, kit_return)):
                kit_return.status = DESTROYED
                closed.append(kit_return.return_number)
                call.audit.record("return_destroyed", "return", kit_return.return_number,
                                  old={"status": RECEIVED}, new={"status": DESTROYED},
                                  reason=reason)
        destroyed = [kit.kit_number for kit in kits]
        call.audit.record("kits_destroyed", "kit_destruction", None, reason=reason, new={
            "kits": destroyed, "returns_closed": closed,
            "kit_type": _type_counts(session, kits)})
        return DestructionResult(**call.finish({"kits": len(destroyed),
                                                "kit_numbers": destroyed,
                                                "returns_closed": closed}))


def _lock_returns_of(session: Session, study_id: int, numbers: set[str]) -> list[KitReturn]:
    """The received returns listing these kits, locked in id order."""
    ids = session.scalars(
        select(ReturnKit.return_id).join(Kit, Kit.id == ReturnKit.kit_id)
        .join(KitReturn, KitReturn.id == ReturnKit.return_id)
        .where(Kit.study_id == study_id, Kit.kit_number.in_(numbers),
               KitReturn.status == RECEIVED)).all()
    if not ids:
        return []
    return list(session.scalars(select(KitReturn).where(KitReturn.id.in_(set(ids)))
                                .order_by(KitReturn.id).with_for_update()))


# --- listing and shared pieces -------------------------------------------------------------------


@dataclass(frozen=True)
class ReturnRow:
    return_number: str
    site: str
    depot: str
    status: str
    kits: int
    declared_at: datetime
    declared_by: str | None
    decided_at: datetime | None
    decided_by: str | None
    reason: str | None


def list_returns(session: Session, study_id: int, *, status: str | None = None,
                 site: str | None = None) -> list[ReturnRow]:
    """The study's returns, newest first, with their number of kits (blinded)."""
    kits = (select(ReturnKit.return_id, func.count().label("n"))
            .group_by(ReturnKit.return_id).subquery())
    query = (select(KitReturn.return_number, Site.code, Depot.code, KitReturn.status,
                    func.coalesce(kits.c.n, 0), KitReturn.declared_at, KitReturn.declared_by,
                    KitReturn.decided_at, KitReturn.decided_by, KitReturn.reason)
             .join(Site, Site.id == KitReturn.site_id)
             .join(Depot, Depot.id == KitReturn.depot_id)
             .outerjoin(kits, kits.c.return_id == KitReturn.id)
             .where(KitReturn.study_id == study_id))
    if status is not None:
        query = query.where(KitReturn.status == status)
    if site is not None:
        query = query.where(Site.code == site)
    return [ReturnRow(*row) for row in session.execute(query.order_by(KitReturn.id.desc()))]


def lock_return(session: Session, study_id: int, return_number: str) -> KitReturn:
    """The return row, locked: every service on one return goes through it."""
    number = str(return_number or "").strip()
    kit_return = session.execute(
        select(KitReturn).where(KitReturn.study_id == study_id,
                                KitReturn.return_number == number)
        .with_for_update()).scalar_one_or_none() if is_digits(number) else None
    if kit_return is None:
        raise NotFound(f"no return {number or '(empty)'}", code="unknown_return")
    return kit_return


def return_kits(session: Session, kit_return: KitReturn) -> list[Kit]:
    """The kits a return lists, locked in kit-number order (the order ``lock_kits`` uses)."""
    return list(session.scalars(
        select(Kit).join(ReturnKit, ReturnKit.kit_id == Kit.id)
        .where(ReturnKit.return_id == kit_return.id)
        .order_by(Kit.kit_number).with_for_update(of=Kit)))


def kit_number_set(values: Iterable[str], required: bool = True) -> set[str]:
    """Kit numbers as typed: digits only, at least one (unless not required)."""
    if isinstance(values, str):
        values = [values]
    numbers = {str(value).strip() for value in values if str(value).strip()}
    bad = sorted(number for number in numbers if not is_digits(number))
    if bad:
        raise Refused(f"{bad[0]!r} is not a kit number (digits only)", code="bad_kit_number")
    if required and not numbers:
        raise Refused("name at least one kit", code="no_kits")
    if len(numbers) > MAX_KITS:
        raise Refused(f"at most {MAX_KITS} kits at a time", code="too_many_kits")
    return numbers


def _locked(session: Session, study_id: int, numbers: set[str]) -> list[Kit]:
    """The named kits, locked; refuses (naming it) a number that is no kit."""
    locked = lock_kits(session, study_id, sorted(numbers))
    unknown = sorted(numbers - set(locked))
    if unknown:
        raise NotFound(f"no kit {unknown[0]}", code="unknown_kit", kit=unknown[0])
    return [locked[number] for number in sorted(locked)]


def _require_status(kit_return: KitReturn, status: str, action: str) -> None:
    if kit_return.status != status:
        raise Refused(f"return {kit_return.return_number} is {kit_return.status}: it cannot "
                      f"be {action}", code=f"return_{kit_return.status}",
                      return_number=kit_return.return_number)


def _approval_hours(session: Session, study_id: int) -> int:
    supply = (session.get(Study, study_id).config or {}).get("supply") or {}
    return supply.get("return_approval_hours") or DEFAULT_APPROVAL_HOURS


def _type_counts(session: Session, kits: list[Kit]) -> dict[str, int]:
    codes = dict(session.execute(select(KitType.id, KitType.code).where(
        KitType.id.in_({kit.kit_type_id for kit in kits}))).all()) if kits else {}
    return dict(Counter(codes[kit.kit_type_id] for kit in kits))


def _result(kit_return: KitReturn, site: Site, depot: Depot, kits: list[str]) -> dict[str, Any]:
    return {"return_number": kit_return.return_number, "site": site.code, "depot": depot.code,
            "status": kit_return.status, "kits": len(kits), "kit_numbers": kits}


__all__ = [
    "DestructionResult",
    "ReturnResult",
    "ReturnRow",
    "SubjectReturnResult",
    "approve_return",
    "declare_return",
    "destroy_kits",
    "list_returns",
    "receive_return",
    "record_subject_return",
    "reject_return",
]
