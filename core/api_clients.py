"""API clients: the systems that call ``/api/v1`` and their bearer tokens (SPEC §10).

A client has a role and sites as a user has (§4), and acts with exactly those
rights: every service checks the ``Actor`` it gets, whichever door it came
through. Its token is made here, shown once, and kept only as its SHA-256
digest: a token is 256 random bits, so a fast digest is as safe as a slow
password hash against a stolen table, and a request's lookup is one indexed
read. Revoking a client refuses its token at the next request.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from core.actors import ROLES, SITE_ROLES, Actor, actor_for_user
from core.clock import utcnow
from core.db import Database
from core.errors import IvrsError, NotFound, Refused
from core.models import ApiClient, Site, Study
from core.service import service_call
from core.studies import study_ref

TOKEN_PREFIX = "ivrs_"
# Roles a client may have: an administrator's powers stay at the server's shell.
CLIENT_ROLES = frozenset(ROLES - {"admin"})
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True)
class ClientInfo:
    name: str
    role: str
    sites: tuple[str, ...]
    token_hint: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class NewClient:
    client: ClientInfo
    token: str  # shown once: only its digest is stored


def add_client(db: Database, *, name: str, role: str, sites: list[str], actor: Actor,
               study: str | None = None) -> NewClient:
    """Make a client and its token (audited ``api_client_added``, without the token)."""
    actor.require(frozenset(), "add API clients")
    name = (name or "").strip()
    if not name or len(name) > 60 or not set(name) <= NAME_CHARS:
        raise IvrsError("a client name is 1-60 letters, digits, '-', '_' or '.'",
                        code="bad_client_name")
    if role not in CLIENT_ROLES:
        raise IvrsError(f"role must be one of {', '.join(sorted(CLIENT_ROLES))}",
                        code="bad_role")
    sites = sorted({str(code).strip() for code in sites})
    if sites and role not in SITE_ROLES:
        raise IvrsError(f"role {role} acts at every site: --site is for "
                        f"{', '.join(sorted(SITE_ROLES))}", code="bad_site")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with service_call(db, study, f"api_client_add {name}", None, actor) as call:
        session = call.session
        known = set(session.scalars(select(Site.code).where(Site.study_id == call.study.id)))
        unknown = [code for code in sites if code not in known]
        if unknown:
            raise NotFound(f"no site {', '.join(unknown)}", code="unknown_site")
        if session.scalar(select(ApiClient.id).where(ApiClient.study_id == call.study.id,
                                                     ApiClient.name == name)) is not None:
            raise Refused(f"API client {name} exists already", code="client_exists")
        client = ApiClient(study_id=call.study.id, name=name, role=role, sites=sites,
                           token_digest=token_digest(token), token_hint=token[:12],
                           created_at=utcnow(), created_by=actor.label)
        session.add(client)
        session.flush()
        call.audit.record("api_client_added", "api_client", name,
                          new={"role": role, "sites": sites, "token_hint": client.token_hint})
        call.finish({})
        return NewClient(_info(client), token)


def list_clients(db: Database, *, study: str | None = None) -> list[ClientInfo]:
    with db.reads() as session:
        ref = study_ref(session, study)
        return [_info(client) for client in session.scalars(
            select(ApiClient).where(ApiClient.study_id == ref.id).order_by(ApiClient.name))]


def revoke_client(db: Database, *, name: str, actor: Actor, reason: str,
                  study: str | None = None) -> ClientInfo:
    actor.require(frozenset(), "revoke API clients")
    with service_call(db, study, f"api_client_revoke {name}", None, actor) as call:
        client = call.session.scalars(
            select(ApiClient).where(ApiClient.study_id == call.study.id, ApiClient.name == name)
            .with_for_update()).first()
        if client is None:
            raise NotFound(f"no API client {name}", code="unknown_client")
        if client.revoked_at is not None:
            raise Refused(f"API client {name} is revoked already", code="client_revoked")
        client.revoked_at = utcnow()
        call.audit.record("api_client_revoked", "api_client", name, reason=reason,
                          old={"revoked": False}, new={"revoked": True})
        call.finish({})
        return _info(client)


@dataclass(frozen=True)
class Authenticated:
    """A request's client: who acts (the ``Actor`` every service checks), in which study."""

    client_id: int
    study_code: str
    actor: Actor


def authenticate(db: Database, token: str) -> Authenticated | None:
    """The client whose live token this is; None for an unknown or revoked one."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    digest = token_digest(token)
    with db.reads() as session:
        row = session.execute(
            select(ApiClient.id, ApiClient.name, ApiClient.role, ApiClient.sites,
                   ApiClient.revoked_at, ApiClient.study_id)
            .where(ApiClient.token_digest == digest)).first()
        if row is None or row.revoked_at is not None:
            return None
        study_code = session.scalar(select(Study.code).where(Study.id == row.study_id))
    sites = frozenset(row.sites) if row.role in SITE_ROLES and row.sites else None
    return Authenticated(row.id, study_code, Actor(role=row.role, site_codes=sites,
                                                   channel="api", client=row.name))


def _info(client: ApiClient) -> ClientInfo:
    return ClientInfo(client.name, client.role, tuple(client.sites), client.token_hint,
                      client.created_at, client.revoked_at)


def signing_actor(db: Database, client: Authenticated, user_code: str) -> Actor:
    """The person who signs a step taken through a client (an unblinding, an
    approval): a signature is a person's act (21 CFR 11.50), never a system's.

    The signer must be an active user of the client's role, at the client's
    sites when the client has sites; the step then runs as that user (their
    rights, their audit rows), through the client (``channel`` names it).
    Anything else is refused as a bad signature, saying nothing of which part
    was wrong."""
    client_actor = client.actor
    with db.reads() as session:
        ref = study_ref(session, client.study_code)
        try:
            user = actor_for_user(session, ref.id, str(user_code), channel="api")
        except NotFound:
            user = None
    if user is None or user.role != client_actor.role or (
            client_actor.site_codes is not None
            and not (user.site_codes or frozenset()) <= client_actor.site_codes):
        raise Refused("user ID or PIN not valid", code="bad_credentials")
    return Actor(role=user.role, user_code=user.user_code, site_codes=user.site_codes,
                 channel=f"api:{client_actor.client}")
