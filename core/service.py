"""The frame of every core service: one transaction, idempotent by key, audited.

    with service_call(db, study_code, "screen", key, actor) as call:
        ... lock the row the operation is about ...
        if (replay := call.replayed()) is not None:
            return replay
        ... work, call.audit.record(...) ...
        return call.finish({...})

``finish`` seals the audit records into the study's chain (the last and only
study-wide lock of the transaction), takes the first audit sequence number as
the confirmation number people hear and write down, and stores the result under
the idempotency key, all before the commit.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from sqlalchemy.orm import Session

from core.actors import Actor
from core.audit import AuditLog
from core.db import Database
from core.idempotency import new_key, store_result, stored_result
from core.models import Study
from core.studies import get_study


@dataclass
class ServiceCall:
    session: Session
    study: Study
    actor: Actor
    audit: AuditLog
    operation: str
    key: str

    def replayed(self) -> dict[str, Any] | None:
        return stored_result(self.session, self.study.id, self.key, self.operation)

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        first_seq = self.audit.seal(self.session)
        result = {**result, "confirmation": None if first_seq is None else f"{first_seq:06d}"}
        store_result(self.session, self.study.id, self.key, self.operation, result)
        return result


@contextmanager
def service_call(db: Database, study_code: str | None, operation: str, key: str | None,
                 actor: Actor) -> Iterator[ServiceCall]:
    with db.transaction() as session:
        study = get_study(session, study_code)
        yield ServiceCall(session, study, actor, AuditLog(study.id, actor.label), operation,
                          key or new_key())
