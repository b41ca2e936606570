"""Signing in to the web console (SPEC §11): user ID and password, then a TOTP
code where one is required. The interface the web door calls.

Every wrong secret (password or code) counts toward the lockout the phone's PIN
counts toward (``core.lockout``): three in a row, on any channel, lock the user.
A sign-in is complete, and audited ``signed_in`` with channel ``web``, when its
last factor is checked: the password when no second factor applies, else the
TOTP code (``verify_totp``, or ``enrol_totp`` the first time). Until then the
failure count is not reset, so a password guessed right does not wipe out the
record of wrong codes.

The core does not know whether a TOTP call follows a right password: the web
session must call ``verify_totp`` and ``enrol_totp`` only after
``sign_in_password`` returned ``second_factor`` "verify" or "enrol" for that
user, in that session.

A user who has enrolled is always asked for a code, also where the study does
not require one: an enrolled factor is not ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from core import totp
from core.actors import SITE_ROLES, Actor
from core.db import Database
from core.errors import IvrsError, Refused
from core.lockout import locked, record_failure, record_success
from core.login import locked_user_row
from core.models import Study, User
from core.passwords import check_password
from core.rehash import PASSWORD, upgrade_hash
from core.service import service_call
from core.studies import study_ref
from core.web_accounts import invite, invited_user, redeem_invite, reset_totp, set_password

__all__ = ["WebSignIn", "enrol_totp", "invite", "invited_user", "new_totp_secret",
           "redeem_invite", "reset_totp", "set_password", "sign_in_password", "study_options",
           "totp_required", "totp_uri", "verify_totp"]

CHANNEL = "web"
NO_SECOND_FACTOR, ENROL, VERIFY = "none", "enrol", "verify"
_BAD_CREDENTIALS = "user ID or password not valid"
_BAD_TOTP = "the code is not valid"


@dataclass(frozen=True)
class WebSignIn:
    study: str  # the study's code
    user_code: str
    name: str
    role: str
    site_codes: tuple[str, ...]
    language: str
    second_factor: str  # "none" (not required), "enrol" (required, no secret yet), "verify"


def sign_in_password(db: Database, *, user_code: str, password: str, study: str | None = None,
                     request_id: str | None = None) -> WebSignIn:
    """Check a user ID and password. Refused ``bad_credentials`` (an unknown or
    deactivated user, no password set, a wrong password: never which) or
    ``locked``. ``request_id`` goes into the security event of a lockout."""
    user_code, password = str(user_code or "").strip(), str(password or "")
    failure = None
    with service_call(db, study, "web_sign_in", None, _web_actor()) as call:
        user = locked_user_row(call.session, call.study.id, user_code)
        if user is None:
            check_password(None, password)  # as long as a wrong password takes
            raise Refused(_BAD_CREDENTIALS, code="bad_credentials")
        call.audit.actor = f"user:{user.user_code}"
        if user.locked:
            raise locked(user.user_code)
        if not check_password(user.password_hash, password):  # False when none is set
            failure = record_failure(call, user, "password_failed", channel=CHANNEL,
                                     message=_BAD_CREDENTIALS)
        else:
            # The password is right whatever the second factor says next.
            upgrade_hash(call, user, PASSWORD, password)
            second_factor = _second_factor(user, _options(call))
            if second_factor == NO_SECOND_FACTOR:
                _signed_in(call, user, "password")
            signed = WebSignIn(study=call.study.code, user_code=user.user_code, name=user.name,
                               role=user.role, site_codes=tuple(s.code for s in user.sites),
                               language=user.language, second_factor=second_factor)
    if failure is not None:
        raise failure.refusal(request_id)
    return signed


def new_totp_secret() -> str:
    return totp.new_secret()


def totp_uri(secret: str, *, user_code: str, study: str) -> str:
    """The provisioning URI (shown as a QR code) of ``secret`` for this user."""
    return totp.provisioning_uri(secret, account=user_code, issuer=f"ivrs {study}")


def enrol_totp(db: Database, *, user_code: str, secret: str, code: str,
               study: str | None = None, request_id: str | None = None) -> None:
    """Take ``secret`` (from ``new_totp_secret``, shown to the user) as the
    user's second factor once they type a code it makes, and complete the
    sign-in. Refused ``bad_totp`` (counts toward the lockout),
    ``totp_enrolled_already``, ``locked`` or ``bad_credentials``."""
    if not totp.is_valid_secret(secret):
        raise IvrsError("not a TOTP secret made by new_totp_secret", code="bad_totp_secret")
    failure = None
    with service_call(db, study, "web_totp_enrol", None, _web_actor()) as call:
        user = _signing_in(call, user_code)
        if user.totp_secret is not None:
            raise Refused(f"user {user.user_code} has a second factor already: an "
                          "administrator resets it (ivrs users reset-totp)",
                          code="totp_enrolled_already")
        step = totp.matching_step(secret, code, after=user.totp_last_step)
        if step is None:
            failure = record_failure(call, user, "totp_failed", channel=CHANNEL,
                                     code="bad_totp", message=_BAD_TOTP)
        else:
            user.totp_secret, user.totp_last_step = secret, step
            call.audit.record("totp_enrolled", "user", user.user_code, new={"totp": "enrolled"})
            _signed_in(call, user, "password+totp")
    if failure is not None:
        raise failure.refusal(request_id)


def verify_totp(db: Database, *, user_code: str, code: str, study: str | None = None,
                request_id: str | None = None) -> None:
    """Check the second factor and complete the sign-in. Refused ``bad_totp``
    (wrong, malformed, or a code whose time step was used already: a replay;
    counts toward the lockout), ``locked``, ``totp_not_enrolled`` or
    ``bad_credentials``."""
    failure = None
    with service_call(db, study, "web_totp", None, _web_actor()) as call:
        user = _signing_in(call, user_code)
        if user.totp_secret is None:
            raise Refused(f"user {user.user_code} has no second factor yet",
                          code="totp_not_enrolled")
        step = totp.matching_step(user.totp_secret, code, after=user.totp_last_step)
        if step is None:
            failure = record_failure(call, user, "totp_failed", channel=CHANNEL,
                                     code="bad_totp", message=_BAD_TOTP)
        else:
            user.totp_last_step = step
            _signed_in(call, user, "password+totp")
    if failure is not None:
        raise failure.refusal(request_id)


def totp_required(role: str, study_options: Mapping[str, Any] | None = None) -> bool:
    """SPEC §11: a TOTP code for every role but the site roles, and for those when
    the study file says ``web: {totp_for_site_roles: true}``. ``study_options``
    is the study's options (``study_options()``, ``Study.config``) or their
    ``web`` section itself."""
    if role not in SITE_ROLES:
        return True
    options = study_options or {}
    web = options if "totp_for_site_roles" in options else (options.get("web") or {})
    return bool(web.get("totp_for_site_roles", False))


def study_options(db: Database, *, study: str | None = None) -> dict[str, Any]:
    """The study's options as loaded from its file (what ``totp_required`` reads)."""
    with db.reads() as session:
        ref = study_ref(session, study)
        return dict(session.scalar(select(Study.config).where(Study.id == ref.id)) or {})


# --- helpers --------------------------------------------------------------------------


def _web_actor() -> Actor:
    return Actor(role="admin", channel=CHANNEL)


def _options(call) -> dict[str, Any]:
    return call.session.scalar(select(Study.config).where(Study.id == call.study.id)) or {}


def _second_factor(user: User, options: Mapping[str, Any]) -> str:
    if user.totp_secret is not None:
        return VERIFY
    return ENROL if totp_required(user.role, options) else NO_SECOND_FACTOR


def _signing_in(call, user_code: str) -> User:
    """The user completing a sign-in, their row locked; refused if unknown or locked."""
    user = locked_user_row(call.session, call.study.id, str(user_code or "").strip())
    if user is None:
        raise Refused(_BAD_CREDENTIALS, code="bad_credentials")
    call.audit.actor = f"user:{user.user_code}"
    if user.locked:
        raise locked(user.user_code)
    return user


def _signed_in(call, user: User, factors: str) -> None:
    record_success(user)
    # On the record: the user-activity report counts sign-ins per channel.
    call.audit.record("signed_in", "user", user.user_code,
                      new={"channel": CHANNEL, "factors": factors})
    call.finish({})
