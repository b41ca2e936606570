"""User administration (``ivrs users ...``) and the unblinded-access check.

PINs never appear in an audit row: the trail says that a PIN was set or reset,
by whom and when, nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from core.actors import ADMINISTRATORS, ROLES, UNBLINDED_ROLES, Actor
from core.db import Database
from core.errors import IvrsError, NotFound, Refused
from core.fields import email_problem, is_digits
from core.lockout import record_failure, record_success
from core.models import Site, User
from core.pins import check_pin, hash_pin, is_valid_pin
from core.service import service_call


@dataclass(frozen=True)
class UserResult:
    user_code: str
    locked: bool
    confirmation: str | None


def add_user(db: Database, *, user_code: str, name: str, role: str, sites: list[str],
             phone: str | None, language: str | None, pin: str, actor: Actor,
             study: str | None = None, email: str | None = None,
             idempotency_key: str | None = None) -> UserResult:
    """``language`` None: the language of the user's first site, else the study's first.
    ``email``: where notifications go by e-mail too (``core.fields.email_problem``).
    ``idempotency_key``: a form submitted twice adds the user once and answers the same."""
    actor.require(ADMINISTRATORS, "add users")
    if not is_digits(user_code):
        raise IvrsError("a user ID is digits only (it is typed on a keypad)", code="bad_user")
    if role not in ROLES:
        raise IvrsError(f"unknown role {role} (roles: {', '.join(sorted(ROLES))})",
                        code="bad_role")
    if not is_valid_pin(pin):
        raise IvrsError("a PIN is 4 to 8 digits", code="bad_pin")
    if email is not None:
        email = email.strip()
        problem = email_problem(email)
        if problem is not None:
            raise IvrsError(f"e-mail {email!r} refused: {problem}", code="bad_email")
    with service_call(db, study, f"add_user {user_code}", idempotency_key, actor) as call:
        if (replay := call.replayed()) is not None:
            return UserResult(**replay)
        if language is None:
            first_site = call.session.execute(select(Site.language).where(
                Site.study_id == call.study.id, Site.code == sites[0])).scalar() \
                if sites else None
            language = first_site or call.study.languages[0]
        if language not in call.study.languages:
            raise IvrsError(f"language {language} is not one of the study's "
                            f"({', '.join(call.study.languages)})", code="bad_language")
        exists = call.session.execute(select(User.id).where(
            User.study_id == call.study.id, User.user_code == user_code)).scalar()
        if exists:
            raise IvrsError(f"user {user_code} already exists", code="duplicate_user")
        site_rows = call.session.execute(select(Site).where(
            Site.study_id == call.study.id, Site.code.in_(sites))).scalars().all()
        missing = set(sites) - {s.code for s in site_rows}
        if missing:
            raise IvrsError(f"unknown site(s) {', '.join(sorted(missing))}", code="unknown_site")
        # A PIN given by an administrator is temporary: the user changes it at the next call.
        user = User(study_id=call.study.id, user_code=user_code, name=name, role=role,
                    phone=phone, email=email, language=language, pin_hash=hash_pin(pin),
                    pin_temporary=True,
                    sites=list(site_rows))
        call.session.add(user)
        call.audit.record("user_created", "user", user_code, new={
            "name": name, "role": role, "sites": sorted(sites), "phone": phone,
            "email": email, "language": language, "pin": "set (temporary)"})
        return UserResult(**call.finish({"user_code": user_code, "locked": False}))


def set_locked(db: Database, *, user_code: str, locked: bool, actor: Actor, reason: str,
               study: str | None = None, idempotency_key: str | None = None) -> UserResult:
    actor.require(ADMINISTRATORS, "lock or unlock users")
    operation = f"{'lock' if locked else 'unlock'} {user_code}"
    with service_call(db, study, operation, idempotency_key, actor) as call:
        user = _lock_user(call.session, call.study.id, user_code)
        if (replay := call.replayed()) is not None:
            return UserResult(**replay)
        old = {"locked": user.locked, "failed_attempts": user.failed_attempts}
        user.locked, user.failed_attempts = locked, 0
        call.audit.record("user_locked" if locked else "user_unlocked", "user", user_code,
                          old=old, new={"locked": locked, "failed_attempts": 0}, reason=reason)
        return UserResult(**call.finish({"user_code": user_code, "locked": locked}))


def reset_pin(db: Database, *, user_code: str, pin: str, actor: Actor,
              study: str | None = None, idempotency_key: str | None = None) -> UserResult:
    actor.require(ADMINISTRATORS, "reset PINs")
    if not is_valid_pin(pin):
        raise IvrsError("a PIN is 4 to 8 digits", code="bad_pin")
    with service_call(db, study, f"reset_pin {user_code}", idempotency_key, actor) as call:
        user = _lock_user(call.session, call.study.id, user_code)
        if (replay := call.replayed()) is not None:
            return UserResult(**replay)
        user.pin_hash, user.pin_temporary = hash_pin(pin), True
        user.failed_attempts, user.locked = 0, False
        call.audit.record("pin_reset", "user", user_code,
                          new={"pin": "reset (temporary)", "locked": False})
        return UserResult(**call.finish({"user_code": user_code, "locked": False}))


def authorize_unblinded(db: Database, *, user_code: str, pin: str, purpose: str,
                        study: str | None = None) -> Actor:
    """Check an unblinded role's PIN before an unblinded view, and audit the view.

    A wrong PIN counts toward the lockout like a wrong PIN on the phone.
    """
    with service_call(db, study, "unblinded_view", None, Actor(role="admin")) as call:
        user = _lock_user(call.session, call.study.id, user_code)
        call.audit.actor = f"user:{user_code}"
        if user.locked or not user.active:
            raise Refused(f"user {user_code} is locked", code="locked")
        if not check_pin(user.pin_hash, pin):
            failure = record_failure(call, user, "pin_failed", channel=None, reason=purpose)
        else:
            failure = None
            if user.role not in UNBLINDED_ROLES:
                raise Refused(f"role {user.role} is blinded", code="blinded_role")
            record_success(user)
            call.audit.record("unblinded_view", "report", purpose, reason=purpose)
            call.finish({})
    if failure is not None:
        raise failure.refusal()
    return Actor(role=user.role, user_code=user_code)


def _lock_user(session, study_id: int, user_code: str) -> User:
    user = session.execute(select(User).where(
        User.study_id == study_id, User.user_code == user_code).with_for_update()
    ).scalar_one_or_none()
    if user is None:
        raise NotFound(f"no user {user_code}", code="unknown_user")
    return user


def record_unblinded_view(db: Database, *, actor: Actor, purpose: str,
                          study: str | None = None) -> None:
    """An unblinded view by an actor whose role is unblinded already (an API
    client's token is its authorization): refused for a blinded role, audited."""
    if actor.blinded:
        raise Refused(f"role {actor.role} is blinded", code="blinded_role")
    with service_call(db, study, "unblinded_view", None, actor) as call:
        call.audit.record("unblinded_view", "report", purpose, reason=purpose,
                          new={"channel": actor.channel})
        call.finish({})
