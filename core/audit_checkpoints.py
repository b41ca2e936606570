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

**Rows already checked on an earlier page** (PostgreSQL): recomputing the
rows after the checkpoint in Python is most of a dashboard's cost, and on
most requests they are the rows the previous request recomputed. So each
process remembers, per database and study, the last tail it found intact:
the checkpoint it started from, the head it ended at (seq, hash) and a
fingerprint of those rows as stored (SHA-256 over each row's whole text, in
seq order, computed by PostgreSQL in one statement, no row sent). A later
call recomputes only the rows after that head, linked to its hash, and uses
the remembered part only when its fingerprint, taken now in the same
snapshot, is unchanged, so a row after the checkpoint that is altered,
removed or inserted since is still found on the very next call (the
fingerprint differs, the whole tail is recomputed as before). The memory is
consulted only after the newest checkpoint has been read and found intact
and the tail found short enough, so it cannot turn **broken** or
**unchecked** into **intact**; only intact results are remembered. SQLite
has no such fingerprint: there the tail is recomputed on every call.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from core.actors import Actor
from core.audit import GENESIS, AuditLog, ChainBreak, verify
from core.clock import as_utc, utcnow
from core.db import Database
from core.models import AuditEvent, AuditHead
from core.report_registry import SPONSOR_ROLES
from core.studies import study_ref

VERIFIED = "audit_verified"
MAX_ROWS_CHECKED_NOW = 1_000
STUDIES_REMEMBERED = 32  # per database, in this process
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
            "problem": found.problem,
            # by code too: the dashboard words it in its reader's language
            **({} if problem is None else {"break": problem.record()})})
        audit.seal(session)
    return found


@dataclass(frozen=True)
class ChainState:
    status: str  # intact | broken | unchecked
    rows: int  # rows in the chain now (the head's seq)
    fully_checked_at: datetime | None  # when the whole chain was last recomputed
    fully_checked_through: int | None  # the last row that full check covered
    checked_now_through: int | None  # rows after that, up to this one, checked just now
    problem: str | None  # in English (logs, the API); ``chain_break`` is it by code
    chain_break: ChainBreak | None = None


def chain_state(session: Session, study_id: int, *,
                max_rows: int = MAX_ROWS_CHECKED_NOW,
                head: tuple[int, str] | None = None) -> ChainState:
    """The chain's state from its newest checkpoint (see the module's docstring).
    Read it in one snapshot (``Database.snapshot``); ``head``: the chain's head
    (seq, hash) as already read in that snapshot."""
    rows, head_hash = head if head is not None else _head(session, study_id)
    checkpoint = session.execute(
        select(AuditEvent.seq, AuditEvent.at, AuditEvent.new)
        .where(AuditEvent.study_id == study_id, AuditEvent.action == VERIFIED)
        .order_by(AuditEvent.seq.desc()).limit(1)).first()
    if checkpoint is None:
        if rows > max_rows:
            return ChainState(UNCHECKED, rows, None, None, None, None)
        problem = verify(session, study_id)
        return ChainState(INTACT if problem is None else BROKEN, rows, utcnow(), rows, None,
                          None if problem is None else str(problem), problem)
    at, found = as_utc(checkpoint.at), checkpoint.new or {}
    through = int(found.get("through_seq", 0))
    if not found.get("intact"):
        return ChainState(BROKEN, rows, at, through, None, found.get("problem"),
                          ChainBreak.from_record(study_id, found.get("break")))
    if rows - through > max_rows:
        return ChainState(UNCHECKED, rows, at, through, None, None)
    through_hash = found.get("through_hash", GENESIS)
    problem = _verify_tail(session, study_id, (checkpoint.seq, through, through_hash),
                           (rows, head_hash))
    return ChainState(INTACT if problem is None else BROKEN, rows, at, through, rows,
                      None if problem is None else str(problem), problem)


# --- the rows after the checkpoint, remembered --------------------------------------------


@dataclass(frozen=True)
class _Checked:
    """A tail found intact: from the checkpoint (its row's seq, and the seq and
    hash it covered) to a head (seq, hash), the rows' fingerprint as stored."""

    checkpoint: tuple[int, int, str]
    seq: int
    hash: str
    fingerprint: str


_checked: weakref.WeakKeyDictionary[Engine, dict[int, _Checked]] = weakref.WeakKeyDictionary()
_checked_lock = threading.Lock()


def _verify_tail(session: Session, study_id: int, checkpoint: tuple[int, int, str],
                 head: tuple[int, str]):
    """``verify`` of the rows after the checkpoint, recomputing only those after
    the tail found intact last time when that tail is unchanged."""
    _, through, through_hash = checkpoint
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        return verify(session, study_id, after=(through, through_hash))
    engine = getattr(bind, "engine", bind)
    with _checked_lock:
        known = _checked.get(engine, {}).get(study_id)
    if known is not None and (known.checkpoint != checkpoint or known.seq > head[0]):
        known = None  # another checkpoint since, or a head behind the one we saw
    fingerprint, known_fingerprint, beyond = _fingerprints(
        session, study_id, through, head[0], known.seq if known is not None else None)
    if known is not None and known_fingerprint == known.fingerprint:
        if (known.seq, known.hash) == head and not beyond:
            return None  # nothing after the rows found intact, which are as they were
        problem = verify(session, study_id, after=(known.seq, known.hash))
    else:
        problem = verify(session, study_id, after=(through, through_hash))
    if problem is None:
        _remember(engine, study_id, _Checked(checkpoint, head[0], head[1], fingerprint))
    return problem


# Each row's whole text (as PostgreSQL writes the row) hashed, the hashes joined in
# seq order and hashed: over the rows after the checkpoint up to the head, and up
# to the head found intact last time; and the rows past the head (there are none).
_FINGERPRINTS = text(
    "SELECT encode(sha256(convert_to(coalesce(string_agg(digest, '' ORDER BY seq)"
    " FILTER (WHERE seq <= :head), ''), 'UTF8')), 'hex'),"
    " encode(sha256(convert_to(coalesce(string_agg(digest, '' ORDER BY seq)"
    " FILTER (WHERE seq <= :known), ''), 'UTF8')), 'hex'),"
    " count(*) FILTER (WHERE seq > :head)"
    " FROM (SELECT seq, encode(sha256(convert_to(audit_events::text, 'UTF8')), 'hex') AS digest"
    " FROM audit_events WHERE study_id = :study AND seq > :through) AS tail")


def _fingerprints(session: Session, study_id: int, through: int, head_seq: int,
                  known_seq: int | None) -> tuple[str, str | None, int]:
    full, known, beyond = session.execute(_FINGERPRINTS, {
        "study": study_id, "through": through, "head": head_seq,
        "known": -1 if known_seq is None else known_seq}).one()
    return full, None if known_seq is None else known, int(beyond)


def _remember(engine: Engine, study_id: int, checked: _Checked) -> None:
    with _checked_lock:
        studies = _checked.setdefault(engine, {})
        studies.pop(study_id, None)
        if len(studies) >= STUDIES_REMEMBERED:
            studies.pop(next(iter(studies)))  # the least recently remembered
        studies[study_id] = checked


def forget_checked_tails() -> None:
    """Drop what this process remembers (tests; nothing else needs it)."""
    with _checked_lock:
        _checked.clear()


def _head(session: Session, study_id: int) -> tuple[int, str]:
    head = session.execute(select(AuditHead.seq, AuditHead.hash)
                           .where(AuditHead.study_id == study_id)).first()
    return (head.seq, head.hash) if head is not None else (0, GENESIS)
