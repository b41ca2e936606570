"""Kit-number confirmation: the user who assigned kits confirms by SMS which kit
was physically handed out (SPEC §7 ``KIT``).

An *assignment* is the kits one call gave one subject for one visit
(``assign_kits``): they share ``subject_id``, ``visit_code``, ``assigned_at``
and ``assigned_by`` (the assigning actor's label, ``user:<code>``, which is how
the confirming user is recognised: no extra column is needed). Its kits stay
``assigned`` until each kit number is confirmed (``confirm`` -> ``dispensed``
with ``confirmed_at``). An assignment is named after its lowest kit number,
which no other assignment can share (a kit is assigned once): the request is
notified under ``kit_confirm:<that number>``, the reminder under
``kit_reminder:<that number>``, so neither is ever written twice.

Several pending assignments: the kit number says which kit is confirmed, so
any of the user's pending kits may be confirmed in any order. A wrong number
names the kits of the user's most recent pending assignment (the one the user
is most likely answering); ``pending_kits`` lists them all, newest first, so the
SMS dialog can accept a bare kit number only when exactly one is pending.

Blinding: requests, reminders, results and refusals name subjects, visits
and kit numbers, never a kit type or an arm. A kit assigned at a site the user
may not act at is refused exactly like an unknown number, so the reply tells
nothing about other sites' subjects.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from core.actors import SITE_ROLES, Actor
from core.audit import AuditLog
from core.clock import as_utc, utcnow
from core.db import Database
from core.errors import Refused
from core.models import Kit, Site, Subject
from core.service import service_call
from core.studies import get_study, study_ref
from core.supply.kits import apply_move, lock_kits, supply_settings
from core.supply.lifecycle import ASSIGNED, DISPENSED
from core.supply.outbox import notify

REQUEST_KIND = "kit_confirmation"
REMINDER_KIND = "kit_confirmation_reminder"
REQUEST_MESSAGE = "sms.kit_confirm_request"
REMINDER_MESSAGE = "sms.kit_confirm_reminder"
DEFAULT_REMINDER_HOURS = 24
SYSTEM_ACTOR = "system:kit_confirmation"
USER_PREFIX = "user:"
MAX_NAMED_KITS = 4  # kit numbers a refusal names at most (an SMS has little room)


def assignment_key(kit_numbers: list[str] | tuple[str, ...]) -> str:
    """The name of an assignment: its lowest kit number."""
    return min(kit_numbers)


def request_confirmation(session: Session, audit: AuditLog, study_id: int, *,
                         assigned_by: str, subject_number: str, visit_code: str,
                         kit_numbers: list[str]) -> None:
    """Queue the SMS asking the assigning user to confirm the kit number(s).

    Only a user has a phone: an assignment made at the CLI (``cli:admin``) is
    confirmed there or not at all, and asks nobody."""
    if not kit_numbers or not assigned_by.startswith(USER_PREFIX):
        return
    notify(session, audit, study_id, key=f"kit_confirm:{assignment_key(kit_numbers)}",
           kind=REQUEST_KIND, audience=assigned_by, message_id=REQUEST_MESSAGE,
           params={"subject": subject_number, "visit": visit_code, "kits": list(kit_numbers)})


# --- what is pending ------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingAssignment:
    subject_number: str
    site: str
    visit: str
    kits: tuple[str, ...]  # still unconfirmed, by kit number
    assigned_at: datetime


# Read by every kit confirmation (SMS KIT, a bare number): built once, bound per call.
_PENDING = (
    select(Kit.kit_number, Kit.subject_id, Kit.visit_code, Kit.assigned_at,
           Subject.subject_number, Site.code)
    .join(Subject, Subject.id == Kit.subject_id)
    .join(Site, Site.id == Subject.site_id)
    .where(Kit.study_id == bindparam("study_id"), Kit.status == ASSIGNED,
           Kit.assigned_by == bindparam("by"))
    .order_by(Kit.assigned_at.desc(), Kit.kit_number))


def _pending(session: Session, study_id: int, actor: Actor) -> list[PendingAssignment]:
    """The actor's unconfirmed assignments at sites the actor may act at, newest first."""
    rows = session.execute(_PENDING, {"study_id": study_id, "by": actor.label}).all()
    groups: dict[tuple, list[str]] = {}
    details: dict[tuple, tuple[str, str, datetime]] = {}
    for number, subject_id, visit, assigned_at, subject_number, site in rows:
        if not actor.may_act_at(site):
            continue  # the user's sites changed since: not theirs to confirm any more
        group = (subject_id, visit, assigned_at)
        groups.setdefault(group, []).append(number)
        details[group] = (subject_number, site, assigned_at)
    return [PendingAssignment(details[g][0], details[g][1], g[1] or "", tuple(kits),
                              details[g][2])
            for g, kits in groups.items()]


def pending_kits(db: Database, *, actor: Actor, study: str | None = None
                 ) -> list[PendingAssignment]:
    """The actor's assignments awaiting a kit-number confirmation, newest first
    (read-only)."""
    with db.sessions() as session:
        return _pending(session, study_ref(session, study).id, actor)


# --- confirming ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KitConfirmation:
    kit: str
    subject_number: str
    visit: str
    confirmed_at: str  # ISO 8601, UTC
    remaining: list[str] = field(default_factory=list)  # the assignment's other pending kits
    confirmation: str | None = None


def confirm_kit(db: Database, *, kit_number: str, actor: Actor, study: str | None = None,
                idempotency_key: str | None = None,
                subject_number: str | None = None) -> KitConfirmation:
    """Confirm that ``kit_number`` was handed out: it must be one of the actor's
    pending kits (and, when the caller names it, ``subject_number``'s).
    Refusals change nothing:

    - ``wrong_kit`` (params ``kit``, ``expected`` = the most recent pending
      assignment's kits, ``subject``, ``visit``; ``assignments`` = how many are
      pending and ``awaiting`` = the first kits of all of them, newest first): not
      a pending kit of the actor;
    - ``kit_of_another_subject`` (``kit``, ``subject``): the kit belongs to a
      subject of the actor's sites other than those awaiting confirmation;
    - ``kit_already_confirmed`` (``kit``, ``subject``): the actor confirmed it before;
    - ``no_pending_kit``: the actor has nothing to confirm.

    Only the site's people confirm what they handed out (``not_allowed`` for the
    others, before any kit is looked at).
    """
    actor.require(SITE_ROLES, "confirm kits")
    kit_number = kit_number.strip()
    with service_call(db, study, f"confirm_kit {kit_number}", idempotency_key, actor) as call:
        session = call.session
        kit = lock_kits(session, call.study.id, [kit_number]).get(kit_number)
        if (replay := call.replayed()) is not None:
            return KitConfirmation(**replay)
        pending = _pending(session, call.study.id, actor)
        mine = next((p for p in pending if kit_number in p.kits), None)
        if kit is None or mine is None:
            raise _refusal(session, kit, kit_number, pending, actor)
        if subject_number is not None and mine.subject_number != subject_number:
            raise Refused(f"kit {kit_number} belongs to subject {mine.subject_number}",
                          code="kit_of_another_subject", kit=kit_number,
                          subject=mine.subject_number)
        confirmed_at = utcnow()
        apply_move(call.audit, kit, "confirm", confirmed_at=confirmed_at,
                   details={"subject": mine.subject_number, "visit": mine.visit})
        return KitConfirmation(**call.finish({
            "kit": kit_number, "subject_number": mine.subject_number, "visit": mine.visit,
            "confirmed_at": _iso(confirmed_at),
            "remaining": [k for k in mine.kits if k != kit_number]}))


@dataclass(frozen=True)
class ConfirmedGroup:
    """Kits of one subject and visit confirmed by one message."""

    subject: str
    visit: str
    kits: tuple[str, ...]
    confirmations: tuple[str, ...]


@dataclass(frozen=True)
class KitsConfirmation:
    confirmed: list[ConfirmedGroup]
    refused: list[Refused]  # one per kit number not confirmed, in the order given
    still_pending: tuple[str, ...]  # what the confirmed kits' assignments still await


def confirm_kits(db: Database, *, kit_numbers: list[str], actor: Actor,
                 study: str | None = None, key_prefix: str | None = None) -> KitsConfirmation:
    """Confirm several kit numbers (``KIT 100234 100235``), each on its own as
    ``confirm_kit`` does (key ``<key_prefix>:<kit>``): one wrong number refuses
    that number only."""
    done: dict[tuple[str, str], list[KitConfirmation]] = {}
    refused: list[Refused] = []
    for number in kit_numbers:
        key = f"{key_prefix}:{number}" if key_prefix else None
        try:
            result = confirm_kit(db, kit_number=number, actor=actor, study=study,
                                 idempotency_key=key)
        except Refused as error:
            refused.append(error)
            continue
        done.setdefault((result.subject_number, result.visit), []).append(result)
    groups = [ConfirmedGroup(subject, visit, tuple(r.kit for r in results),
                             tuple(r.confirmation or "" for r in results))
              for (subject, visit), results in done.items()]
    # Each assignment's last confirmation knows what it still awaits.
    pending = tuple(k for results in done.values() for k in results[-1].remaining)
    return KitsConfirmation(groups, refused, pending)


def _refusal(session: Session, kit: Kit | None, kit_number: str,
             pending: list[PendingAssignment], actor: Actor) -> Refused:
    owner = _owner(session, kit) if kit is not None else None
    if owner is not None and actor.may_act_at(owner[1]):
        subject_number, _site = owner
        if kit.status == DISPENSED and kit.assigned_by == actor.label:
            return Refused(f"kit {kit_number} is already confirmed", code="kit_already_confirmed",
                           kit=kit_number, subject=subject_number)
        if subject_number not in {p.subject_number for p in pending}:
            return Refused(f"kit {kit_number} belongs to subject {subject_number}",
                           code="kit_of_another_subject", kit=kit_number,
                           subject=subject_number)
    if not pending:
        return Refused("you have no kit number to confirm", code="no_pending_kit",
                       kit=kit_number)
    latest = pending[0]
    awaiting = [number for assignment in pending for number in assignment.kits]
    return Refused(f"kit {kit_number} is not the kit assigned: expected "
                   f"{', '.join(latest.kits)} for subject {latest.subject_number} at visit "
                   f"{latest.visit}; nothing confirmed", code="wrong_kit", kit=kit_number,
                   expected=list(latest.kits), subject=latest.subject_number,
                   visit=latest.visit, assignments=len(pending),
                   awaiting=awaiting[:MAX_NAMED_KITS])


def _owner(session: Session, kit: Kit) -> tuple[str, str] | None:
    """(subject number, site code) of the subject the kit was given to, if any."""
    if kit.subject_id is None:
        return None
    row = session.execute(select(Subject.subject_number, Site.code)
                          .join(Site, Site.id == Subject.site_id)
                          .where(Subject.id == kit.subject_id)).first()
    return (row[0], row[1]) if row is not None else None


def _iso(moment: datetime) -> str:
    return as_utc(moment).isoformat()


def awaits_confirmation(session: Session, study_id: int, kind: str,
                        params: dict[str, Any]) -> bool:
    """Whether a kit-confirmation request or reminder still asks for something:
    False once every kit it names is confirmed (or replaced), so that a message
    that waited in the outbox (Twilio down or not yet configured) is not sent
    for kits already handled. Any other notification kind: True."""
    if kind not in (REQUEST_KIND, REMINDER_KIND):
        return True
    kits = [str(number) for number in params.get("kits") or ()]
    return bool(kits) and session.scalar(select(Kit.id).where(
        Kit.study_id == study_id, Kit.kit_number.in_(kits), Kit.status == ASSIGNED)
        .limit(1)) is not None


# --- reminders ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reminder:
    audience: str
    subject_number: str
    visit: str
    kits: tuple[str, ...]


def reminder_hours(settings: dict[str, Any]) -> int:
    return int(settings.get("confirmation_reminder_hours", DEFAULT_REMINDER_HOURS))


def run_confirmation_reminders(db: Database, *, study: str | None = None,
                               delay_hours: int | None = None,
                               now: datetime | None = None) -> list[Reminder]:
    """One reminder per assignment still (partly) unconfirmed ``delay_hours`` after it
    was made (default: the study's ``supply.confirmation_reminder_hours``, 24).
    Never twice: the key is the assignment's. Returns the reminders this run queued."""
    now = as_utc(now or utcnow())
    with db.transaction() as session:
        study_row = get_study(session, study)
        hours = delay_hours if delay_hours is not None else reminder_hours(
            supply_settings(study_row))
        cutoff = now - timedelta(hours=hours)
        rows = session.execute(
            select(Kit.kit_number, Kit.subject_id, Kit.visit_code, Kit.assigned_at,
                   Kit.assigned_by, Subject.subject_number)
            .join(Subject, Subject.id == Kit.subject_id)
            .where(Kit.study_id == study_row.id, Kit.status == ASSIGNED,
                   Kit.assigned_by.like(f"{USER_PREFIX}%"), Kit.assigned_at <= cutoff)
            .order_by(Kit.assigned_at, Kit.kit_number)).all()
        unconfirmed: dict[tuple, list[str]] = defaultdict(list)
        subjects: dict[int, str] = {}
        for number, subject_id, visit, assigned_at, assigned_by, subject_number in rows:
            unconfirmed[(subject_id, visit, assigned_at, assigned_by)].append(number)
            subjects[subject_id] = subject_number
        names = _assignment_names(session, study_row.id, list(unconfirmed))
        audit = AuditLog(study_row.id, SYSTEM_ACTOR)
        queued = []
        for group, kits in unconfirmed.items():
            subject_id, visit, _at, assigned_by = group
            if notify(session, audit, study_row.id, key=f"kit_reminder:{names[group]}",
                      kind=REMINDER_KIND, audience=assigned_by, message_id=REMINDER_MESSAGE,
                      params={"subject": subjects[subject_id], "visit": visit or "",
                              "kits": kits}) is not None:
                queued.append(Reminder(assigned_by, subjects[subject_id], visit or "",
                                       tuple(kits)))
        audit.seal(session)
    return queued


def _assignment_names(session: Session, study_id: int, groups: list[tuple]) -> dict[tuple, str]:
    """Each assignment's name: the lowest kit number among *all* its kits, confirmed
    or since replaced included, so that it stays the same whatever is confirmed."""
    members: dict[tuple, list[str]] = defaultdict(list)
    subject_ids = sorted({group[0] for group in groups})
    wanted = set(groups)
    for start in range(0, len(subject_ids), 500):
        for number, subject_id, visit, assigned_at, assigned_by in session.execute(
                select(Kit.kit_number, Kit.subject_id, Kit.visit_code, Kit.assigned_at,
                       Kit.assigned_by)
                .where(Kit.study_id == study_id,
                       Kit.subject_id.in_(subject_ids[start:start + 500]))):
            group = (subject_id, visit, assigned_at, assigned_by)
            if group in wanted:
                members[group].append(number)
    return {group: assignment_key(members[group]) for group in groups}
