"""The web console's credentials as an administrator manages them: a password
set directly, a one-time set-up link (an invite), a TOTP enrolment cleared.

No audit row holds a password, a token or a TOTP secret: only that one was set
or cleared, by whom and when. A user deactivated (removed from the study file)
is unknown here; a locked user may be given a password or an invite (the
administrator unlocks separately, ``ivrs users unlock``) but cannot redeem one
while locked.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import select

from core.actors import ADMINISTRATORS, Actor
from core.api_clients import token_digest
from core.clock import as_utc, utcnow
from core.db import Database
from core.errors import IvrsError, NotFound, Refused
from core.lockout import locked
from core.login import locked_user_row
from core.models import Study, User, UserInvite
from core.passwords import hash_password, password_problem
from core.service import service_call

INVITE_VALID_FOR = timedelta(hours=72)
# A token from secrets.token_urlsafe(32) is 43 characters; anything much longer
# is not one of ours and is not worth a digest and a query.
_MAX_TOKEN_LENGTH = 100


def set_password(db: Database, *, user_code: str, password: str, actor: Actor,
                 study: str | None = None) -> None:
    """An administrator sets a user's web password. Refused ``weak_password``
    (``core.passwords.password_problem``) or ``unknown_user``."""
    actor.require(ADMINISTRATORS, "set passwords")
    user_code = str(user_code).strip()
    _check_password(password, user_code)
    password_hash = hash_password(password)  # outside the row lock: argon2 takes its time
    with service_call(db, study, f"set_password {user_code}", None, actor) as call:
        user = _active_user(call, user_code)
        had_one = user.password_hash is not None
        user.password_hash = password_hash
        call.audit.record("password_set", "user", user_code,
                          old={"password": "set" if had_one else "none"},
                          new={"password": "set"})
        call.finish({})


def invite(db: Database, *, user_code: str, actor: Actor, study: str | None = None,
           valid_for: timedelta = INVITE_VALID_FOR, idempotency_key: str | None = None) -> str:
    """A one-time token for the user to set their own password (the web's
    ``/invite/<token>``), valid for ``valid_for``. Only its digest is stored;
    the user's older unused invites end now.

    ``idempotency_key`` used already (a form sent twice): refused
    ``invite_shown_already``, and the first link stays the valid one — the
    token was shown once and is kept nowhere to be shown again."""
    actor.require(ADMINISTRATORS, "invite users")
    if valid_for <= timedelta(0):
        raise IvrsError("an invite must be valid for some time", code="bad_valid_for")
    user_code = str(user_code).strip()
    token = secrets.token_urlsafe(32)
    with service_call(db, study, f"invite {user_code}", idempotency_key, actor) as call:
        user = _active_user(call, user_code)
        if (replay := call.replayed()) is not None:
            raise Refused(f"this invite was made already (confirmation {replay['confirmation']})"
                          ": its link was shown once; make a new invite if it is lost",
                          code="invite_shown_already")
        now = utcnow()
        older = call.session.scalars(select(UserInvite).where(
            UserInvite.user_id == user.id, UserInvite.used_at.is_(None),
            UserInvite.expires_at > now).with_for_update()).all()
        for earlier in older:
            earlier.expires_at = now
        expires_at = now + valid_for
        call.session.add(UserInvite(study_id=call.study.id, user_id=user.id,
                                    token_digest=token_digest(token), expires_at=expires_at,
                                    created_at=now))
        call.audit.record("user_invited", "user", user_code,
                          new={"expires_at": expires_at.isoformat(),
                               "earlier_invites_voided": len(older)})
        call.finish({})
    return token


def invited_user(db: Database, *, token: str, study: str | None = None) -> str:
    """The user ID a valid invite is for (the web shows it above the password
    form). Refused ``invite_invalid`` (unknown, used, expired or voided, or
    the user deactivated) or ``locked``."""
    with db.reads() as session:
        found = _find_invite(session, token, study)
        if found is None:
            raise _invalid()
        invitation, user, _ = found
        _check_usable(invitation, user)
        return user.user_code


def redeem_invite(db: Database, *, token: str, password: str, study: str | None = None) -> str:
    """Set the invited user's password and use the invite up; returns the user
    ID. Refused ``invite_invalid``, ``locked`` or ``weak_password`` (the invite
    stays usable then)."""
    with db.reads() as session:
        found = _find_invite(session, token, study)
    if found is None:
        raise _invalid()
    _, found_user, study_code = found
    _check_password(password, found_user.user_code)
    password_hash = hash_password(password)
    with service_call(db, study_code, "redeem_invite", None,
                      Actor(role="admin", channel="web")) as call:
        # Both rows locked, so that two redemptions of one link cannot both win.
        invitation = call.session.scalars(select(UserInvite).where(
            UserInvite.token_digest == token_digest(token)).with_for_update()).one()
        user = call.session.scalars(
            select(User).where(User.id == invitation.user_id).with_for_update()).one()
        _check_usable(invitation, user)
        call.audit.actor = f"user:{user.user_code}"
        invitation.used_at = utcnow()
        had_one = user.password_hash is not None
        user.password_hash = password_hash
        call.audit.record("invite_redeemed", "user", user.user_code, new={"invite": "used"})
        call.audit.record("password_set", "user", user.user_code,
                          old={"password": "set" if had_one else "none"},
                          new={"password": "set", "by": "invite"})
        call.finish({})
        return user.user_code


def reset_totp(db: Database, *, user_code: str, actor: Actor, study: str | None = None,
               idempotency_key: str | None = None) -> str:
    """Clear the user's TOTP secret (a lost phone): the next sign-in enrols again.
    Returns the confirmation number; with an ``idempotency_key`` used already,
    nothing is done again and the first confirmation number comes back."""
    actor.require(ADMINISTRATORS, "reset second factors")
    user_code = str(user_code).strip()
    with service_call(db, study, f"reset_totp {user_code}", idempotency_key, actor) as call:
        user = _active_user(call, user_code)
        if (replay := call.replayed()) is not None:
            return replay["confirmation"]
        was = "enrolled" if user.totp_secret else "none"
        user.totp_secret = user.totp_last_step = None
        call.audit.record("totp_reset", "user", user_code, old={"totp": was},
                          new={"totp": "none"})
        return call.finish({})["confirmation"]


# --- helpers --------------------------------------------------------------------------


def _check_password(password: str, user_code: str) -> None:
    problem = password_problem(password, user_code)
    if problem is not None:
        raise IvrsError(f"password refused: {problem}", code="weak_password")


def _active_user(call, user_code: str) -> User:
    user = locked_user_row(call.session, call.study.id, user_code)
    if user is None:
        raise NotFound(f"no user {user_code}", code="unknown_user")
    return user


def _invalid() -> Refused:
    return Refused("this link is not valid (used, expired or replaced): ask for a new one",
                   code="invite_invalid")


def _find_invite(session, token: str, study: str | None
                 ) -> tuple[UserInvite, User, str] | None:
    """The invite a token is (the token names its study: ``study`` may be None
    with several studies loaded), its user and its study's code."""
    if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_LENGTH:
        return None
    row = session.execute(
        select(UserInvite, User, Study.code)
        .join(User, User.id == UserInvite.user_id).join(Study, Study.id == UserInvite.study_id)
        .where(UserInvite.token_digest == token_digest(token))).first()
    if row is None or (study is not None and row[2] != study):
        return None
    return row[0], row[1], row[2]


def _check_usable(invitation: UserInvite, user: User) -> None:
    if (invitation.used_at is not None or as_utc(invitation.expires_at) <= utcnow()
            or not user.active):
        raise _invalid()
    if user.locked:
        raise locked(user.user_code)
