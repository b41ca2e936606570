"""Idempotency keys: a retried call (Twilio retries, a double keypress) acts once.

The service looks its key up *after* taking its main row lock, so a retry that
raced the original waits for it and then finds its stored result. The unique
constraint on (study, key) is the last line of defence.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from core.clock import utcnow
from core.errors import IvrsError
from core.models import IdempotencyRecord


def new_key() -> str:
    return uuid.uuid4().hex


def stored_result(session: Session, study_id: int, key: str, operation: str) -> dict | None:
    record = session.execute(
        select(IdempotencyRecord).where(IdempotencyRecord.study_id == study_id,
                                        IdempotencyRecord.key == key)
    ).scalar_one_or_none()
    if record is None:
        return None
    if record.operation != operation:
        raise IvrsError(f"idempotency key {key!r} was used for {record.operation}",
                        code="key_reused")
    return {**record.result, "confirmation": confirmation_number(record.id)}


_records = IdempotencyRecord.__table__
_STORE = insert(_records).returning(_records.c.id)


def store_result(session: Session, study_id: int, key: str, operation: str,
                 result: dict[str, Any]) -> int:
    """Record the call; its id is the transaction's confirmation number."""
    return session.execute(_STORE, {"study_id": study_id, "key": key, "operation": operation,
                                    "result": result, "created_at": utcnow()}).scalar_one()


def confirmation_number(record_id: int) -> str:
    return f"{record_id:06d}"
