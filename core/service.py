"""The frame of every core service: one transaction, idempotent by key, audited.

    with service_call(db, study_code, "screen", key, actor) as call:
        ... lock the row the operation is about ...
        if (replay := call.replayed()) is not None:
            return replay
        ... work, call.audit.record(...) ...
        return call.finish({...})

``finish`` stores the result under the idempotency key (the record's id is the
confirmation number people hear and write down; the operation names what the
key is for, e.g. the subject, so that a key reused for something else is
refused rather than answered with another call's result), then seals the audit
records, stamped with that number, into the study's chain: the last and only
study-wide lock of the transaction, held for two statements and the commit.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.actors import Actor
from core.audit import AuditLog
from core.db import Database
from core.errors import IvrsError
from core.idempotency import confirmation_number, new_key, store_result, stored_result
from core.studies import StudyRef, study_ref


@dataclass
class ServiceCall:
    session: Session
    study: StudyRef
    actor: Actor
    audit: AuditLog
    operation: str
    key: str

    key_given: bool = True

    def replayed(self) -> dict[str, Any] | None:
        if not self.key_given:
            return None  # a fresh key cannot have been used: skip the lookup
        return stored_result(self.session, self.study.id, self.key, self.operation)

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        record_id = store_result(self.session, self.study.id, self.key, self.operation, result)
        self.audit.transaction_id = record_id
        self.audit.seal(self.session)
        return {**result, "confirmation": confirmation_number(record_id)}


@contextmanager
def service_call(db: Database, study_code: str | None, operation: str, key: str | None,
                 actor: Actor) -> Iterator[ServiceCall]:
    try:
        with db.transaction() as session:
            study = study_ref(session, study_code)
            yield ServiceCall(session, study, actor, AuditLog(study.id, actor.label),
                              operation, key or new_key(), key_given=key is not None)
    except IntegrityError as error:
        # Two calls with one key for different things, at the same moment: the
        # second one's record collides with the first's. Nothing was written.
        if "idempotency_records" not in str(error.orig) and "uq_idempotency" not in str(error):
            raise
        raise IvrsError(f"idempotency key {key!r} is being used by another request",
                        code="key_reused") from None
