"""Signed-in browsers: a random session id in the cookie, the session itself in
the server's session store (Redis, or the in-process store), as calls keep theirs.

Why not Flask's cookie session alone: a cookie cannot be revoked. Signing out,
a lock by an administrator and the idle timeout must end a session on the
server, whichever worker the next request reaches. The cookie (signed by
Flask, HttpOnly, SameSite=Lax) carries only the session id and the CSRF token.

The idle timeout (SPEC §11: 15 minutes) is checked against the time of the
last request, read from ``core.clock``, and the store's own expiry is the
backstop that removes abandoned sessions.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from core.actors import SITE_ROLES, Actor
from core.clock import utcnow

IDLE_TIMEOUT = timedelta(minutes=15)
# UAT and tests only, like IVRS_TODAY: a browser test cannot wait 15 minutes.
IDLE_OVERRIDE_ENV = "IVRS_WEB_IDLE_SECONDS"
log = logging.getLogger(__name__)
# A password accepted, the second factor still to come: a few minutes to type it.
PENDING_TIMEOUT = timedelta(minutes=5)
_KEY, _PENDING_KEY = "web:", "web-pending:"


@dataclass(frozen=True)
class WebUser:
    """Who is signed in on this browser."""

    study: str
    user_code: str
    name: str
    role: str
    site_codes: tuple[str, ...]
    language: str  # the user's own; the session's choice is kept beside it

    @property
    def actor(self) -> Actor:
        # Site roles act at their sites (none, if they have none); every other role
        # reads every site.
        sites = frozenset(self.site_codes) if self.role in SITE_ROLES or self.site_codes \
            else None
        return Actor(role=self.role, user_code=self.user_code, site_codes=sites, channel="web")


@dataclass
class WebSession:
    user: WebUser
    language: str
    last_seen: datetime


def open_session(store, user: WebUser, language: str) -> str:
    session_id = secrets.token_urlsafe(32)
    _save(store, session_id, WebSession(user, language, utcnow()))
    return session_id


def current_session(store, session_id: str | None) -> WebSession | None:
    """The session, its idle clock restarted; None when there is none or it has
    been idle too long (it is then removed)."""
    if not session_id:
        return None
    data = store.load(_KEY + session_id)
    if not data:
        return None
    last_seen = datetime.fromisoformat(data["last_seen"])
    if utcnow() - last_seen > idle_timeout():
        store.delete(_KEY + session_id)
        return None
    user = data["user"]
    session = WebSession(WebUser(**{**user, "site_codes": tuple(user["site_codes"])}),
                         data["language"], utcnow())
    _save(store, session_id, session)
    return session


def idle_timeout() -> timedelta:
    """15 minutes (SPEC §11); shorter only outside production, for tests."""
    value = os.environ.get(IDLE_OVERRIDE_ENV)
    if not value or os.environ.get("IVRS_ENV", "uat") == "production":
        return IDLE_TIMEOUT
    try:
        return timedelta(seconds=max(1, int(value)))
    except ValueError:
        log.warning("%s=%r is not a number of seconds; ignored", IDLE_OVERRIDE_ENV, value)
        return IDLE_TIMEOUT


def change_language(store, session_id: str, session: WebSession, language: str) -> None:
    session.language = language
    _save(store, session_id, session)


def close_session(store, session_id: str | None) -> None:
    if session_id:
        store.delete(_KEY + session_id)


def _save(store, session_id: str, session: WebSession) -> None:
    store.save(_KEY + session_id, {"user": asdict(session.user), "language": session.language,
                                   "last_seen": session.last_seen.isoformat()},
               int(IDLE_TIMEOUT.total_seconds()) + 60)


# --- between the password and the second factor ------------------------------------------


def hold_pending(store, data: dict[str, Any]) -> str:
    """What the second-factor page needs (who, and for an enrolment the new
    secret), kept on the server: the secret never travels in a cookie."""
    pending_id = secrets.token_urlsafe(32)
    store.save(_PENDING_KEY + pending_id, {**data, "since": utcnow().isoformat()},
               int(PENDING_TIMEOUT.total_seconds()))
    return pending_id


def pending(store, pending_id: str | None) -> dict[str, Any] | None:
    if not pending_id:
        return None
    data = store.load(_PENDING_KEY + pending_id)
    if not data or utcnow() - datetime.fromisoformat(data["since"]) > PENDING_TIMEOUT:
        return None
    return data


def drop_pending(store, pending_id: str | None) -> None:
    if pending_id:
        store.delete(_PENDING_KEY + pending_id)
