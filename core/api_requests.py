"""Idempotency of the API's POSTs (SPEC §10): a request taken under an
``Idempotency-Key`` is stored with its body's digest and the answer it got.

A retry with the same key and body gets that answer again; the same key with
another body (or another route) is refused ``key_reused``. Underneath, the
core service of the request is called with a key derived from the client and
its key (``service_key``), so that two copies of one request racing each other
are serialized by the service's own row lock and act once; this table adds the
body check and keeps answers the core does not store (a refusal).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from core.clock import utcnow
from core.db import Database
from core.models import ApiRequest

MAX_KEY = 200


@dataclass(frozen=True)
class StoredAnswer:
    body_digest: str
    status: int
    response: dict[str, Any]


def service_key(client_id: int, key: str) -> str:
    """The core service's idempotency key for a client's key (fits its column
    whatever the key's length, and no two clients' keys meet)."""
    return "api:" + hashlib.sha256(f"{client_id}\0{key}".encode()).hexdigest()[:48]


def stored_answer(db: Database, client_id: int, key: str) -> StoredAnswer | None:
    with db.reads() as session:
        row = session.execute(select(ApiRequest.body_digest, ApiRequest.status,
                                     ApiRequest.response)
                              .where(ApiRequest.client_id == client_id,
                                     ApiRequest.key == key)).first()
    return None if row is None else StoredAnswer(*row)


def store_answer(db: Database, client_id: int, key: str, *, method: str, path: str,
                 body_digest: str, status: int, response: dict[str, Any]) -> StoredAnswer:
    """Keep the answer; when a racing copy stored one first, that one is returned."""
    try:
        with db.transaction() as session:
            session.add(ApiRequest(client_id=client_id, key=key, method=method, path=path[:300],
                                   body_digest=body_digest, status=status, response=response,
                                   created_at=utcnow()))
        return StoredAnswer(body_digest, status, response)
    except IntegrityError:
        first = stored_answer(db, client_id, key)
        if first is None:  # cannot be: the unique key collided with a committed row
            raise
        return first
