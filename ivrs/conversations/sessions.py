"""Where a call's (or a texter's) dialog state lives between two requests.

One interface, two stores: Redis in production (every ``serve`` worker sees
every session; keys expire on their own) and an in-process dictionary for the
embedded default (demo, tests, one process only). A session is a JSON object;
the store neither knows nor cares what is in it.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Protocol

CALL_TTL = 2 * 60 * 60  # seconds: longer than any call


class SessionStoreError(RuntimeError):
    """The store did not answer: the caller gets an apology, not a stack trace."""


class SessionStore(Protocol):
    def load(self, key: str) -> dict[str, Any] | None: ...

    def save(self, key: str, data: dict[str, Any], ttl: int) -> None: ...

    def save_all(self, items: list[tuple[str, dict[str, Any], int]]) -> None:
        """Several ``save``s (key, data, ttl) at once: one round trip to Redis."""
        ...

    def delete(self, key: str) -> None: ...

    def claim(self, key: str, ttl: int) -> bool:
        """Set ``key`` if nobody has: True for the first caller only (atomic)."""
        ...

    def claim_and_load(self, claim: str, ttl: int, key: str | None
                       ) -> tuple[bool, dict[str, Any] | None]:
        """``claim(claim, ttl)`` and ``load(key)`` (None: no load) in one round trip."""
        ...

    def ping(self) -> bool: ...


class MemorySessionStore:
    """A dict with expiry times, for one process (``ivrs demo``, tests, ``--dev``)."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def load(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._data.get(key)
            if found is None:
                return None
            expires, raw = found
            if expires < time.monotonic():
                del self._data[key]
                return None
        return json.loads(raw)

    def save(self, key: str, data: dict[str, Any], ttl: int) -> None:
        raw = json.dumps(data, separators=(",", ":"))  # a copy: no sharing with the caller
        with self._lock:
            self._data[key] = (time.monotonic() + ttl, raw)
            if len(self._data) > 10_000:
                self._expire()

    def save_all(self, items: list[tuple[str, dict[str, Any], int]]) -> None:
        for key, data, ttl in items:
            self.save(key, data, ttl)

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def claim(self, key: str, ttl: int) -> bool:
        with self._lock:
            found = self._data.get(key)
            if found is not None and found[0] >= time.monotonic():
                return False
            self._data[key] = (time.monotonic() + ttl, "{}")
            return True

    def claim_and_load(self, claim: str, ttl: int, key: str | None
                       ) -> tuple[bool, dict[str, Any] | None]:
        return self.claim(claim, ttl), (self.load(key) if key is not None else None)

    def ping(self) -> bool:
        return True

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, (expires, _) in self._data.items() if expires < now]:
            del self._data[key]


class RedisSessionStore:
    """Sessions as JSON strings under ``ivrs:session:<key>`` with a TTL."""

    PREFIX = "ivrs:session:"

    def __init__(self, url: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2,
                                           health_check_interval=30)
        self._errors = (redis.RedisError, OSError)

    def load(self, key: str) -> dict[str, Any] | None:
        try:
            raw = self._redis.get(self.PREFIX + key)
        except self._errors as error:
            raise SessionStoreError(str(error)) from error
        return None if raw is None else json.loads(raw)

    def save(self, key: str, data: dict[str, Any], ttl: int) -> None:
        try:
            self._redis.set(self.PREFIX + key, json.dumps(data, separators=(",", ":")), ex=ttl)
        except self._errors as error:
            raise SessionStoreError(str(error)) from error

    def save_all(self, items: list[tuple[str, dict[str, Any], int]]) -> None:
        # A pipeline, not a transaction (MULTI): the writes are independent, and
        # each one is a round trip and most of redis-py's per-command cost.
        pipe = self._redis.pipeline(transaction=False)
        for key, data, ttl in items:
            pipe.set(self.PREFIX + key, json.dumps(data, separators=(",", ":")), ex=ttl)
        try:
            pipe.execute()
        except self._errors as error:
            raise SessionStoreError(str(error)) from error

    def delete(self, key: str) -> None:
        try:
            self._redis.delete(self.PREFIX + key)
        except self._errors as error:
            raise SessionStoreError(str(error)) from error

    def claim(self, key: str, ttl: int) -> bool:
        try:
            return bool(self._redis.set(self.PREFIX + key, "{}", ex=ttl, nx=True))
        except self._errors as error:
            raise SessionStoreError(str(error)) from error

    def claim_and_load(self, claim: str, ttl: int, key: str | None
                       ) -> tuple[bool, dict[str, Any] | None]:
        if key is None:
            return self.claim(claim, ttl), None
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self.PREFIX + claim, "{}", ex=ttl, nx=True)
        pipe.get(self.PREFIX + key)
        try:
            claimed, raw = pipe.execute()
        except self._errors as error:
            raise SessionStoreError(str(error)) from error
        return bool(claimed), None if raw is None else json.loads(raw)

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except self._errors:
            return False


def store_for(redis_url: str | None) -> SessionStore:
    return RedisSessionStore(redis_url) if redis_url else MemorySessionStore()
