"""The audit trail read a page at a time (the web console's audit page), and
the chain's verification as every door but the CLI asks for it.

Who reads it is who may read the ``audit`` report (``report_access``), and a
blinded reader sees each row exactly as the blinded audit report shows it
(``core.audit_reports``: values through ``blinded_values``, the code of an arm
or kit type withheld, no hash). Newest first, by keyset on the chain's
sequence: a page is one indexed range read however long the trail is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import select

from core.actors import Actor
from core.audit import REDACTED, ChainBreak, verify
from core.audit_reports import SECRET_IDS, blinded_values
from core.db import Database
from core.idempotency import confirmation_number
from core.models import AuditEvent
from core.report_registry import SPONSOR_ROLES, report_access
from core.reports import within_days
from core.studies import study_ref

# The roles report_access lets read the audit report (it covers every site, so
# no site role; not among the depot's reports). A test holds the two together.
AUDIT_READERS = SPONSOR_ROLES
PAGE_SIZE, MAX_PAGE_SIZE = 50, 200


@dataclass(frozen=True)
class AuditLine:
    seq: int
    at: datetime
    actor: str
    action: str
    entity_type: str
    entity_id: str
    reason: str
    old: str  # compact JSON, as the audit report writes it ("" for none)
    new: str
    confirmation: str


@dataclass(frozen=True)
class AuditPage:
    items: list[AuditLine]
    next_before: int | None  # pass as ``before`` for the next (older) page; None: the last


def audit_page(db: Database, *, actor: Actor, study: str | None = None,
               entity_type: str | None = None, entity_id: str | None = None,
               by: str | None = None, start: date | None = None, end: date | None = None,
               before: int | None = None, limit: int | None = None) -> AuditPage:
    """The newest audit rows older than sequence ``before``, filtered by entity
    (type and/or id), actor label (``by``) and dates (UTC, inclusive)."""
    blinded = report_access(actor, "audit", None).blinded
    size = max(1, min(limit or PAGE_SIZE, MAX_PAGE_SIZE))
    with db.reads() as session:
        ref = study_ref(session, study)
        query = (select(AuditEvent.seq, AuditEvent.at, AuditEvent.actor, AuditEvent.action,
                        AuditEvent.entity_type, AuditEvent.entity_id, AuditEvent.reason,
                        AuditEvent.old, AuditEvent.new, AuditEvent.transaction_id)
                 .where(AuditEvent.study_id == ref.id, *within_days(AuditEvent.at, start, end))
                 .order_by(AuditEvent.seq.desc()).limit(size + 1))
        if entity_type:
            query = query.where(AuditEvent.entity_type == entity_type)
        if entity_id:
            query = query.where(AuditEvent.entity_id == entity_id)
            if blinded:
                # The blinded report withholds these ids: a filter must not find them.
                query = query.where(AuditEvent.entity_type.not_in(SECRET_IDS))
        if by:
            query = query.where(AuditEvent.actor == by)
        if before is not None:
            query = query.where(AuditEvent.seq < before)
        rows = session.execute(query).all()
    lines = [_line(row, blinded) for row in rows[:size]]
    return AuditPage(lines, lines[-1].seq if len(rows) > size else None)


def _line(row: Any, blinded: bool) -> AuditLine:
    seq, at, actor, action, entity_type, entity_id, reason, old, new, transaction = row
    if blinded:
        old, new = blinded_values(entity_type, old), blinded_values(entity_type, new)
        if entity_type in SECRET_IDS and entity_id is not None:
            entity_id = REDACTED
    return AuditLine(seq, at, actor, action, entity_type, entity_id or "", reason or "",
                     _compact(old), _compact(new),
                     confirmation_number(transaction) if transaction is not None else "")


def _compact(values: Any) -> str:
    if values is None:
        return ""
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False)


def verify_chain(db: Database, *, actor: Actor, study: str | None = None) -> ChainBreak | None:
    """Recompute the study's whole chain, as ``ivrs audit verify`` does: the first
    break, or None when it is intact."""
    actor.require(SPONSOR_ROLES, "verify the audit trail")
    # Not db.reads(): on PostgreSQL those are autocommit, and the chain is read
    # through a server-side cursor, which needs a transaction (one snapshot too).
    with db.sessions() as session:
        return verify(session, study_ref(session, study).id)
