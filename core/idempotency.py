"""Idempotency keys: a retried call (Twilio retries, a double keypress) acts once.

The service looks its key up *after* taking its main row lock, so a retry that
raced the original waits for it and then finds its stored result. The unique
constraint on (study, key) is the last line of defence.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.orm import Session

from core.clock import utcnow
from core.errors import IvrsError
from core.models import IdempotencyRecord


def new_key() -> str:
    return uuid.uuid4().hex


_records = IdempotencyRecord.__table__
# Every committing service asks this (most often to find nothing): three columns
# by a statement built once, not an ORM object per call.
_STORED = (select(_records.c.id, _records.c.operation, _records.c.result)
           .where(_records.c.study_id == bindparam("study_id"), _records.c.key == bindparam("key")))


def stored_result(session: Session, study_id: int, key: str, operation: str) -> dict | None:
    record = session.execute(_STORED, {"study_id": study_id, "key": key}).one_or_none()
    if record is None:
        return None
    record_id, used_for, result = record
    if used_for != operation:
        raise IvrsError(f"idempotency key {key!r} was used for {used_for}", code="key_reused")
    return {**result, "confirmation": confirmation_number(record_id)}


_STORE = insert(_records).returning(_records.c.id)


def store_result(session: Session, study_id: int, key: str, operation: str,
                 result: dict[str, Any]) -> int:
    """Record the call; its id is the transaction's confirmation number."""
    return session.execute(_STORE, {"study_id": study_id, "key": key, "operation": operation,
                                    "result": result, "created_at": utcnow()}).scalar_one()


def confirmation_number(record_id: int) -> str:
    return f"{record_id:06d}"
