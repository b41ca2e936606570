"""The audit chain's state without recomputing it on every look: checkpoints.

``core.audit.verify`` recomputes the whole chain, about 50 µs a row on
PostgreSQL (100,000 rows: 5 s); too slow for a page that people open all day.
So a full verification is recorded: ``record_verification`` (``ivrs audit
verify``, and the daily job) recomputes the chain in one snapshot and appends an
``audit_verified`` row to it saying what it found, up to which row (seq and
hash) and, by the row's time, when. It is a row of the chain itself, so no
table is needed and it is as tamper-evident as everything else.

``chain_state`` then answers from the newest checkpoint:

- the checkpoint found the chain broken: **broken**, with its problem (a
  chain is append-only; once broken it stays broken);
- it found it intact: the rows after it are recomputed now, linked to the
  checkpoint's hash, when they are at most ``MAX_ROWS_CHECKED_NOW`` (a day's
  rows of a large study; about 50 ms): **intact** or **broken**; more than
  that (the job has not run for a long while): **unchecked**, still saying
  when the last full verification was and what it found;
- no checkpoint: a chain of at most ``MAX_ROWS_CHECKED_NOW`` rows is verified
  in full now; a longer one is **unchecked**.

What this can miss, and says: a row at or before the checkpoint changed *after*
the checkpoint was taken is found by the next full verification, not here;
``fully_checked_at`` tells the reader how old that assurance is. It never says
intact where the full verification it relies on found a break.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.actors import Actor
from core.audit import GENESIS, AuditLog, verify
from core.clock import as_utc, utcnow
from core.db import Database
from core.models import AuditEvent, AuditHead
from core.report_registry import SPONSOR_ROLES
from core.studies import study_ref

VERIFIED = "audit_verified"
MAX_ROWS_CHECKED_NOW = 1_000
INTACT, BROKEN, UNCHECKED = "intact", "broken", "unchecked"


@dataclass(frozen=True)
class Verification:
    """What a full verification found (and recorded)."""

    study: str
    intact: bool
    rows: int  # rows verified: the chain up to its head at the time
    problem: str | None


def record_verification(db: Database, *, actor: Actor,
                        study: str | None = None) -> Verification:
    """Recompute the whole chain and append what was found as a checkpoint."""
    actor.require(SPONSOR_ROLES, "verify the audit trail")
    with db.snapshot() as session:
        ref = study_ref(session, study)
        through, through_hash = _head(session, ref.id)
        problem = verify(session, ref.id)
    found = Verification(ref.code, problem is None, through,
                         None if problem is None else str(problem))
    # A separate transaction: the check may take seconds and must not hold the
    # chain's head lock meanwhile; rows sealed in between are after ``through``.
    with db.transaction() as session:
        audit = AuditLog(ref.id, actor.label)
        audit.record(VERIFIED, "audit_chain", ref.code, new={
            "intact": found.intact, "through_seq": through, "through_hash": through_hash,
            "problem": found.problem})
        audit.seal(session)
    return found


@dataclass(frozen=True)
class ChainState:
    status: str  # intact | broken | unchecked
    rows: int  # rows in the chain now (the head's seq)
    fully_checked_at: datetime | None  # when the whole chain was last recomputed
    fully_checked_through: int | None  # the last row that full check covered
    checked_now_through: int | None  # rows after that, up to this one, checked just now
    problem: str | None


def chain_state(session: Session, study_id: int, *,
                max_rows: int = MAX_ROWS_CHECKED_NOW) -> ChainState:
    """The chain's state from its newest checkpoint (see the module's docstring).
    Read it in one snapshot (``Database.snapshot``)."""
    rows, _ = _head(session, study_id)
    checkpoint = session.execute(
        select(AuditEvent.at, AuditEvent.new)
        .where(AuditEvent.study_id == study_id, AuditEvent.action == VERIFIED)
        .order_by(AuditEvent.seq.desc()).limit(1)).first()
    if checkpoint is None:
        if rows > max_rows:
            return ChainState(UNCHECKED, rows, None, None, None, None)
        problem = verify(session, study_id)
        return ChainState(INTACT if problem is None else BROKEN, rows, utcnow(), rows, None,
                          None if problem is None else str(problem))
    at, found = as_utc(checkpoint.at), checkpoint.new or {}
    through = int(found.get("through_seq", 0))
    if not found.get("intact"):
        return ChainState(BROKEN, rows, at, through, None, found.get("problem"))
    if rows - through > max_rows:
        return ChainState(UNCHECKED, rows, at, through, None, None)
    problem = verify(session, study_id, after=(through, found.get("through_hash", GENESIS)))
    return ChainState(INTACT if problem is None else BROKEN, rows, at, through, rows,
                      None if problem is None else str(problem))


def _head(session: Session, study_id: int) -> tuple[int, str]:
    head = session.execute(select(AuditHead.seq, AuditHead.hash)
                           .where(AuditHead.study_id == study_id)).first()
    return (head.seq, head.hash) if head is not None else (0, GENESIS)
