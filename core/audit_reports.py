"""The ``audit`` and ``user-activity`` reports (SPEC §8), read from the
hash-chained audit trail (``core.audit``), and the chain's verification that
heads both of them.

``audit``: one row per audit event in chain order. Blinded (the default), the
old and new values go through ``core.audit.blinded`` at every depth (the
unblinded keys ``arm``, ``allocation`` and ``kit_type`` read "(blinded)"), and
three more things are withheld, each because it would give an arm away:

- the study design rows (entity types ``study``, ``arm``, ``kit_type``,
  ``randomization_event``) show which settings changed, not their values: the
  study definition maps kit types to arms, and ratios are keyed by arm;
- the entity id of an ``arm`` or ``kit_type`` row (its code);
- the row hash: it covers the unredacted values, so with the rest of the row
  in hand anyone could try the few possible arms or kit types until the hash
  matches. The unblinded report appends it; the chain's verification in the
  header vouches for it in both.

``user-activity``: one row per user of the study (also those who never did
anything: an account nobody uses is worth seeing), then one per other actor
of the trail (``cli:admin``, ``system:resupply`` ...), with what each did
over the period of ``--from``/``--to`` (all time without them), counted by
GROUP BY in the database. Nothing in it is allocation: blinded or not, the
report is the same.

Neither report filters by site: an audit row names an entity, not a site
(a kit, a user, a shipment), so a site filter could only guess.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import date
from typing import Any

from sqlalchemy import and_, case, func, literal, select
from sqlalchemy.orm import Session

from core.audit import REDACTED, blinded, verify
from core.idempotency import confirmation_number
from core.models import AuditEvent, Site, Study, User, UserSite
from core.reports import Report, _stream, _utc, within_days

# Rows whose values are the study design (which kit type treats which arm, the
# ratio per arm): blinded, only the names of what changed are shown.
DESIGN_ENTITIES = frozenset({"study", "arm", "kit_type", "randomization_event"})
# Rows whose entity id is itself a code tied to an arm.
SECRET_IDS = frozenset({"arm", "kit_type"})

AUDIT_COLUMNS = ["seq", "at", "actor", "action", "entity_type", "entity_id", "reason", "old",
                 "new", "confirmation"]


def chain_notes(session: Session, study: Study) -> list[str]:
    """The header line of both reports: the whole chain recomputed, now."""
    rows = session.execute(select(func.count()).where(
        AuditEvent.study_id == study.id)).scalar_one()
    problem = verify(session, study.id)
    if problem is None:
        return [f"Audit chain verified: intact, {rows} rows"]
    where = f"row {problem.seq}" + (f" (audit row id {problem.audit_id})"
                                    if problem.audit_id is not None else " (chain head)")
    return [f"Audit chain BROKEN at {where}: {problem.problem}. "
            f"{rows} rows; from this row on the trail cannot be trusted"]


def _deep_blinded(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _deep_blinded(item) for key, item in blinded(value).items()}
    if isinstance(value, list):
        return [_deep_blinded(item) for item in value]
    return value


def blinded_values(entity_type: str, values: dict | None) -> dict | None:
    """An audit row's old or new values as the blinded audit report shows them."""
    if values is None:
        return None
    if entity_type in DESIGN_ENTITIES and isinstance(values, dict):
        return {key: REDACTED for key in values}
    return _deep_blinded(values)


def _compact(values: Any) -> str:
    if values is None:
        return ""
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False)


def audit(session: Session, study: Study, blinded: bool = True, *, start: date | None = None,
          end: date | None = None) -> Report:
    """Every audit event in chain order; dates filter on ``at`` (UTC)."""
    columns = AUDIT_COLUMNS + ([] if blinded else ["hash"])
    query = (
        select(AuditEvent.seq, AuditEvent.at, AuditEvent.actor, AuditEvent.action,
               AuditEvent.entity_type, AuditEvent.entity_id, AuditEvent.reason,
               AuditEvent.old, AuditEvent.new, AuditEvent.transaction_id, AuditEvent.hash)
        .where(AuditEvent.study_id == study.id, *within_days(AuditEvent.at, start, end))
        .order_by(AuditEvent.seq))

    def rows() -> Iterator[tuple]:
        for (seq, at, actor, action, entity_type, entity_id, reason, old, new, transaction,
             digest) in _stream(session, query):
            if blinded:
                old, new = blinded_values(entity_type, old), blinded_values(entity_type, new)
                if entity_type in SECRET_IDS and entity_id is not None:
                    entity_id = REDACTED
            row = (seq, _utc(at), actor, action, entity_type, entity_id or "", reason or "",
                   _compact(old), _compact(new),
                   confirmation_number(transaction) if transaction is not None else "")
            yield row if blinded else row + (digest,)

    return columns, rows()


# --- user activity ---------------------------------------------------------------------------

ACTIVITY_COLUMNS = ["actor", "user_code", "name", "role", "sites", "active", "locked",
                    "sign_ins", "sign_ins_voice", "sign_ins_sms", "failed_pins",
                    "failed_signatures", "lockouts", "signatures", "unblinded_views",
                    "transactions", "audit_rows", "first_activity", "last_activity"]
# Wrong PINs at sign-in (or before an unblinded view) and at a signature, and
# on the web a wrong password or TOTP code: all count toward the one lockout
# (core.lockout), and the row that locks the user says so.
LOCKOUT_FAILURES = ("pin_failed", "signature_failed", "password_failed", "totp_failed")


def _count(condition) -> Any:
    return func.count(case((condition, 1)))


def _activity_by_actor(study: Study, start: date | None, end: date | None):
    """Per actor label, what the actor did: one GROUP BY over the trail."""
    event = AuditEvent
    action, channel = event.action, event.new["channel"].as_string()
    signed_in = action == "signed_in"
    return (
        select(event.actor.label("actor"),
               _count(signed_in).label("sign_ins"),
               _count(and_(signed_in, channel == "voice")).label("sign_ins_voice"),
               _count(and_(signed_in, channel == "sms")).label("sign_ins_sms"),
               _count(action == "pin_failed").label("failed_pins"),
               _count(action == "signature_failed").label("failed_signatures"),
               _count(and_(action.in_(LOCKOUT_FAILURES), event.new["locked"].as_boolean()))
               .label("locked_out"),
               _count(action == "signed").label("signatures"),
               _count(action == "unblinded_view").label("unblinded_views"),
               func.count(event.transaction_id.distinct()).label("transactions"),
               func.count().label("audit_rows"),
               func.min(event.at).label("first_at"), func.max(event.at).label("last_at"))
        .where(event.study_id == study.id, *within_days(event.at, start, end))
        .group_by(event.actor)
    ).subquery("activity")


def _locks_by_user(study: Study, start: date | None, end: date | None):
    """Per user code, how many times an administrator locked the user."""
    return (
        select(AuditEvent.entity_id.label("user_code"), func.count().label("locks"))
        .where(AuditEvent.study_id == study.id, AuditEvent.entity_type == "user",
               AuditEvent.action == "user_locked", *within_days(AuditEvent.at, start, end))
        .group_by(AuditEvent.entity_id)
    ).subquery("locks")


def _sites_by_user(session: Session, study: Study) -> dict[int, str]:
    """Site codes per user id (users x their sites: a small table)."""
    sites: dict[int, list[str]] = defaultdict(list)
    for user_id, code in session.execute(
            select(UserSite.user_id, Site.code).join(Site, Site.id == UserSite.site_id)
            .where(Site.study_id == study.id).order_by(UserSite.user_id, Site.code)):
        sites[user_id].append(code)
    return {user_id: " ".join(codes) for user_id, codes in sites.items()}


def user_activity(session: Session, study: Study, blinded: bool = True, *,
                  start: date | None = None, end: date | None = None) -> Report:
    """Per user, then per other actor: sign-ins by channel, failed PINs, lockouts
    (the user's own third wrong PIN, and locks by an administrator), signatures,
    unblinded views, transactions (confirmation numbers) and audit rows, and the
    first and last activity, over the dates given (on the audit rows' ``at``)."""
    activity = _activity_by_actor(study, start, end)
    locks = _locks_by_user(study, start, end)
    counts = [activity.c.sign_ins, activity.c.sign_ins_voice, activity.c.sign_ins_sms,
              activity.c.failed_pins, activity.c.failed_signatures, activity.c.locked_out,
              activity.c.signatures, activity.c.unblinded_views, activity.c.transactions,
              activity.c.audit_rows, activity.c.first_at, activity.c.last_at]
    label = literal("user:") + User.user_code
    users = (
        select(label, User.user_code, User.name, User.role, User.active, User.locked, User.id,
               locks.c.locks, *counts)
        .outerjoin(activity, activity.c.actor == label)
        .outerjoin(locks, locks.c.user_code == User.user_code)
        .where(User.study_id == study.id)
        .order_by(User.user_code))
    user_labels = select(label).where(User.study_id == study.id)
    others = (select(activity.c.actor, *counts)
              .where(activity.c.actor.not_in(user_labels))
              .order_by(activity.c.actor))
    sites = _sites_by_user(session, study)

    def rows() -> Iterator[tuple]:
        for (actor, user_code, name, role, active, locked, user_id, admin_locks,
             *numbers) in _stream(session, users):
            yield (actor, user_code, name, role, sites.get(user_id, ""),
                   "yes" if active else "no", "yes" if locked else "no",
                   *_activity(numbers, admin_locks or 0))
        for actor, *numbers in _stream(session, others):
            yield (actor, "", "", "", "", "", "", *_activity(numbers, 0))

    return list(ACTIVITY_COLUMNS), rows()


def _activity(numbers: list, admin_locks: int) -> tuple:
    (sign_ins, voice, sms, failed_pins, failed_signatures, locked_out, signatures,
     unblinded_views, transactions, audit_rows, first_at, last_at) = numbers
    return (sign_ins or 0, voice or 0, sms or 0, failed_pins or 0, failed_signatures or 0,
            (locked_out or 0) + admin_locks, signatures or 0, unblinded_views or 0,
            transactions or 0, audit_rows or 0, _utc(first_at), _utc(last_at))
