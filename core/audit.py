"""The tamper-evident audit trail: one hash chain per study.

Services collect their audit records while they work (``AuditLog.record``) and
seal them into the chain as the *last* step of their transaction
(``AuditLog.seal``): write the events the records describe for outside systems
(``core.events``: one INSERT, only when there are any), lock the study's chain
head, hash the records onto it, insert them, move the head, commit. The head's row lock is therefore held only
for those few statements and the commit, not for the whole service, and studies
never wait for each other. Each row's hash covers its content and the previous
row's hash; ``verify`` recomputes the chain and names the first row that was
altered, removed or inserted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Iterator

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from core import events
from core.clock import utcnow
from core.models import AuditEvent, AuditHead

GENESIS = "0" * 64
_heads, _events = AuditHead.__table__, AuditEvent.__table__
_LOCK_HEAD = (select(_heads.c.seq, _heads.c.hash)
              .where(_heads.c.study_id == bindparam("study_id")).with_for_update())
_INSERT_ROWS = insert(_events)
_MOVE_HEAD = (update(_heads).where(_heads.c.study_id == bindparam("head_study"))
              .values(seq=bindparam("new_seq"), hash=bindparam("new_hash")))
# Keys of audit values that reveal allocation: blinded views show them redacted.
UNBLINDED_KEYS = frozenset({"arm", "allocation", "kit_type"})
REDACTED = "(blinded)"


def blinded(values: dict | None) -> dict | None:
    """An audit row's old/new values as a blinded reader may see them."""
    if values is None:
        return None
    return {key: REDACTED if key in UNBLINDED_KEYS else value for key, value in values.items()}


def jsonable(value: Any) -> Any:
    """Turn values into what JSON stores and gives back unchanged (for hashing)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [jsonable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _iso(moment: datetime) -> str:
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds")


def row_hash(
    *, study_id: int, seq: int, at: datetime, actor: str, action: str, entity_type: str,
    entity_id: str | None, reason: str | None, old: Any, new: Any, prev_hash: str,
    transaction_id: int | None = None,
) -> str:
    payload = json.dumps(
        [study_id, seq, transaction_id, _iso(at), actor, action, entity_type, entity_id,
         reason, old, new, prev_hash],
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass
class AuditLog:
    """Audit records of one transaction, waiting to be sealed into the chain."""

    study_id: int
    actor: str
    pending: list[dict[str, Any]] = field(default_factory=list)
    transaction_id: int | None = None

    def record(self, action: str, entity_type: str, entity_id: Any = None, *,
               old: dict | None = None, new: dict | None = None,
               reason: str | None = None) -> None:
        self.pending.append({
            "action": action, "entity_type": entity_type,
            "entity_id": None if entity_id is None else str(entity_id),
            "old": jsonable(old), "new": jsonable(new), "reason": reason,
        })

    def seal(self, session: Session) -> int | None:
        """Chain the pending records; returns the sequence number of the first.

        Call it last in the transaction: it takes the study's chain lock. The
        records' events (``core.events``) are written first, so that the lock is
        held no longer for them.
        """
        if not self.pending:
            return None
        events.emit(session, study_id=self.study_id, actor=self.actor,
                    transaction_id=self.transaction_id, records=self.pending)
        head = _lock_head(session, self.study_id)
        seq, prev = head
        first = seq + 1
        at = utcnow()
        rows = []
        for record in self.pending:
            seq += 1
            digest = row_hash(study_id=self.study_id, seq=seq, at=at, actor=self.actor,
                              prev_hash=prev, transaction_id=self.transaction_id, **record)
            rows.append({**record, "study_id": self.study_id, "seq": seq, "at": at,
                         "actor": self.actor, "prev_hash": prev, "hash": digest,
                         "transaction_id": self.transaction_id})
            prev = digest
        session.execute(_INSERT_ROWS, rows)
        session.execute(_MOVE_HEAD, {"head_study": self.study_id, "new_seq": seq,
                                     "new_hash": prev})
        self.pending.clear()
        return first


def _lock_head(session: Session, study_id: int) -> tuple[int, str]:
    row = session.execute(_LOCK_HEAD, {"study_id": study_id}).first()
    if row is None:
        # The study was created in this very transaction; nobody else can see it.
        session.add(AuditHead(study_id=study_id, seq=0, hash=GENESIS))
        session.flush()
        return 0, GENESIS
    return row.seq, row.hash


# Why a chain is broken, by code: the English of the CLI, the logs and the record
# of a verification. A door with readers in other languages words the code itself
# (the console: ``web.audit.break.<code>``) with the same parameters.
BREAKS = {
    "rows_removed": "sequence jumps from {previous} to {found}: rows were removed",
    "duplicate_seq": "duplicate sequence",
    "not_linked": "does not link to the previous row (inserted or reordered)",
    "altered": "content altered (hash mismatch)",
    "rows_removed_at_end": "chain head says seq {head} but the rows end at {last}: "
                           "rows were removed from the end",
}


@dataclass(frozen=True)
class ChainBreak:
    study_id: int
    seq: int
    audit_id: int | None  # None: the break is at the chain's head
    code: str  # one of BREAKS
    params: dict[str, int] = field(default_factory=dict)

    @property
    def problem(self) -> str:
        return BREAKS[self.code].format(**self.params)

    def record(self) -> dict[str, Any]:
        """The break as a verification's audit row keeps it (``from_record``)."""
        return {"seq": self.seq, "audit_id": self.audit_id, "code": self.code,
                "params": dict(self.params)}

    @classmethod
    def from_record(cls, study_id: int, found: dict[str, Any] | None) -> ChainBreak | None:
        """The break a verification recorded; None for a record without one (made
        before breaks were recorded by code, or of an unknown code)."""
        if not isinstance(found, dict) or found.get("code") not in BREAKS:
            return None
        return cls(study_id, int(found["seq"]), found.get("audit_id"), found["code"],
                   {key: int(value) for key, value in (found.get("params") or {}).items()})

    def __str__(self) -> str:
        where = f"audit row id {self.audit_id}" if self.audit_id is not None else "chain head"
        return f"study {self.study_id}: {where} (seq {self.seq}): {self.problem}"


def verify(session: Session, study_id: int, *,
           after: tuple[int, str] = (0, GENESIS)) -> ChainBreak | None:
    """Recompute one study's chain; the first break, or None when it is intact.

    Give it a session of one snapshot (``Database.snapshot``) when anything may
    write meanwhile: with a statement per snapshot, rows read before a commit and
    the head read after it look like rows removed from the end.

    ``after`` (seq, hash) starts the check after a row already verified
    (core.audit_checkpoints): the rows after it must link to that hash.
    """
    expected_seq, prev = after
    # Plain rows, not ORM objects: building an object per row was most of the
    # cost (100,000 rows on PostgreSQL: 10 s as objects, 5 s as rows).
    rows: Iterator = session.execute(
        select(_events).where(_events.c.study_id == study_id, _events.c.seq > expected_seq)
        .order_by(_events.c.seq).execution_options(yield_per=1000)
    )
    for row in rows:
        expected_seq += 1
        if row.seq > expected_seq:
            return ChainBreak(study_id, row.seq, row.id, "rows_removed",
                              {"previous": expected_seq - 1, "found": row.seq})
        if row.seq != expected_seq:
            return ChainBreak(study_id, row.seq, row.id, "duplicate_seq")
        if row.prev_hash != prev:
            return ChainBreak(study_id, row.seq, row.id, "not_linked")
        digest = row_hash(study_id=row.study_id, seq=row.seq, at=row.at, actor=row.actor,
                          action=row.action, entity_type=row.entity_type,
                          entity_id=row.entity_id, reason=row.reason, old=row.old,
                          new=row.new, prev_hash=row.prev_hash,
                          transaction_id=row.transaction_id)
        if digest != row.hash:
            return ChainBreak(study_id, row.seq, row.id, "altered")
        prev = row.hash
    head = session.get(AuditHead, study_id)
    if head is not None and (head.seq != expected_seq or head.hash != prev):
        return ChainBreak(study_id, head.seq, None, "rows_removed_at_end",
                          {"head": head.seq, "last": expected_seq})
    return None
