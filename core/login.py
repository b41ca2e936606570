"""Signing in by phone: user ID + PIN, the shared lockout, and changing a PIN.

The lockout lives in the user row and every check takes that row's lock, so
three wrong PINs lock the user whether they come from one call or from three
calls at the same moment (and from voice or SMS alike). A failed attempt is
committed: a refusal that rolled back its own count would never lock anyone.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, bindparam, select

from core.actors import Actor
from core.db import Database
from core.errors import IvrsError, Refused
from core.fields import is_digits
from core.lockout import locked, record_failure, record_success
from core.models import Study, StudyPhoneNumber, User
from core.pins import check_pin, hash_pin, is_valid_pin
from core.rehash import PIN, upgrade_hash
from core.service import service_call
from core.studies import study_ref

# Checked when the user ID is unknown, so that a wrong ID costs the same time
# as a wrong PIN and timing does not tell which of the two was wrong.
_DUMMY_HASH = None


@dataclass(frozen=True)
class Login:
    """A signed-in user: who they are and what the dialog needs to serve them."""

    user_code: str
    role: str
    site_codes: tuple[str, ...]
    language: str
    pin_temporary: bool


def sign_in(db: Database, *, user_code: str, pin: str, channel: str,
            study: str | None = None, request_id: str | None = None) -> Login:
    """Check a user ID and PIN. Raises ``Refused`` with code ``bad_credentials``
    (never saying which of the two was wrong) or ``locked``. ``request_id`` (the
    CallSid or MessageSid) goes into the security event of a lockout."""
    failure = None
    with service_call(db, study, "sign_in", None, Actor(role="admin", channel=channel)) as call:
        user = locked_user_row(call.session, call.study.id, user_code)
        if user is None:
            check_pin(dummy_hash(), pin)
            raise Refused("user ID or PIN not valid", code="bad_credentials")
        call.audit.actor = f"user:{user.user_code}"
        if user.locked:
            raise locked(user.user_code)
        if not check_pin(user.pin_hash, pin):
            failure = record_failure(call, user, "pin_failed", channel=channel)
        else:
            record_success(user)
            upgrade_hash(call, user, PIN, pin)
            # Signing in is on the record: the user-activity report reads it.
            call.audit.record("signed_in", "user", user.user_code, new={"channel": channel})
            call.finish({})
            login = Login(user_code=user.user_code, role=user.role,
                          site_codes=tuple(site.code for site in user.sites),
                          language=user.language, pin_temporary=user.pin_temporary)
    if failure is not None:
        raise failure.refusal(request_id)
    return login


def change_pin(db: Database, *, user_code: str, new_pin: str, actor: Actor,
               study: str | None = None, idempotency_key: str | None = None) -> str | None:
    """The signed-in user sets a new PIN (it is no longer temporary).

    Returns the confirmation number. The new PIN must be 4–8 digits and differ
    from the current one; the audit row says that the PIN changed, never what to.
    """
    if not is_valid_pin(new_pin):
        raise IvrsError("a PIN is 4 to 8 digits", code="bad_pin")
    if actor.user_code != user_code:
        raise Refused("a user changes only their own PIN", code="not_allowed")
    with service_call(db, study, f"change_pin {user_code}", idempotency_key, actor) as call:
        user = locked_user_row(call.session, call.study.id, user_code)
        if (replay := call.replayed()) is not None:
            return replay["confirmation"]
        if user is None or user.locked:
            raise Refused(f"user {user_code} is locked", code="locked")
        if check_pin(user.pin_hash, new_pin):
            raise IvrsError("the new PIN must differ from the current one",
                            code="pin_unchanged")
        was_temporary = user.pin_temporary
        user.pin_hash, user.pin_temporary = hash_pin(new_pin), False
        call.audit.record("pin_changed", "user", user_code,
                          old={"pin_temporary": was_temporary},
                          new={"pin": "changed", "pin_temporary": False})
        return call.finish({})["confirmation"]


def set_language(db: Database, *, language: str, actor: Actor, study: str | None = None,
                 idempotency_key: str | None = None) -> str:
    """The signed-in user chooses the language of their messages and calls (SMS
    ``LANG``). Refused with ``bad_language`` unless the study offers it."""
    language = language.strip()
    with service_call(db, study, f"set_language {actor.user_code}", idempotency_key,
                      actor) as call:
        user = locked_user_row(call.session, call.study.id, actor.user_code or "")
        if (replay := call.replayed()) is not None:
            return replay["language"]
        if user is None:
            raise Refused("user ID or PIN not valid", code="bad_credentials")
        offered = {code.lower(): code for code in call.study.languages}
        chosen = offered.get(language.lower().replace("-", "_"))
        if chosen is None:
            raise Refused(f"language {language} is not offered (offered: "
                          f"{', '.join(call.study.languages)})", code="bad_language",
                          language=language, languages=" ".join(call.study.languages))
        if chosen != user.language:
            call.audit.record("language_changed", "user", user.user_code,
                              old={"language": user.language}, new={"language": chosen})
            user.language = chosen
        return call.finish({"language": chosen})["language"]


@dataclass(frozen=True)
class PhoneUsers:
    """The active users registered with one phone number (a site may share one)."""

    study: str  # the study's code
    user_codes: tuple[str, ...]
    language: str | None  # the first user's language: the number's language
    locked: frozenset[str] = frozenset()  # of user_codes, those locked now


_studies, _numbers, _users = Study.__table__, StudyPhoneNumber.__table__, User.__table__
# Every text message asks this first: one statement, no ORM, no study configuration.
_USERS_BY_NUMBERS = (
    select(_studies.c.code, _users.c.user_code, _users.c.language, _users.c.locked)
    .select_from(_numbers.join(_studies, _studies.c.id == _numbers.c.study_id)
                 .outerjoin(_users, and_(_users.c.study_id == _studies.c.id,
                                         _users.c.phone == bindparam("phone"),
                                         _users.c.active.is_(True))))
    .where(_numbers.c.number == bindparam("dialed"))
    .order_by(_users.c.user_code))


def users_for_phone(db: Database, *, phone: str | None, dialed: str | None = None,
                    study: str | None = None) -> PhoneUsers:
    """Who may be texting or calling from ``phone``, in the study that ``dialed``
    routes to (or ``study``, or the only study)."""
    with db.read_connection() as connection:
        rows = []
        if dialed and study is None:
            rows = connection.execute(_USERS_BY_NUMBERS,
                                      {"dialed": dialed, "phone": phone}).all()
        if rows:
            code = rows[0][0]
        else:  # a number no study has: the only study takes it (SPEC §4)
            ref = study_ref(connection, study)
            code = ref.code
            rows = connection.execute(select(_studies.c.code, _users.c.user_code,
                                             _users.c.language, _users.c.locked)
                                      .join(_users, _users.c.study_id == _studies.c.id)
                                      .where(_studies.c.id == ref.id, _users.c.phone == phone,
                                             _users.c.active.is_(True))
                                      .order_by(_users.c.user_code)).all()
    users = [(user_code, language, locked) for _, user_code, language, locked in rows
             if user_code]
    return PhoneUsers(code, tuple(u for u, _, _ in users), users[0][1] if users else None,
                      frozenset(u for u, _, locked in users if locked))


# Every step of a signed-in call asks this: one statement built once, bound per call.
_USER_STANDING = (
    select(_users.c.active, _users.c.locked)
    .join(_studies, _studies.c.id == _users.c.study_id)
    .where(_studies.c.code == bindparam("study"), _users.c.user_code == bindparam("user")))


def may_continue(db: Database, *, study: str, user_code: str) -> bool:
    """Whether a user signed in earlier in a call may go on: still active and not
    locked (an administrator's lock or deactivation, or wrong PINs on another
    channel, take effect at the caller's next step). One indexed read."""
    with db.read_connection() as connection:
        row = connection.execute(_USER_STANDING, {"study": study, "user": user_code}).first()
    return row is not None and row.active and not row.locked


def language_for_phone(db: Database, *, phone: str | None, study: str | None = None
                       ) -> str | None:
    """The language of the active user registered with this phone number, if any."""
    return users_for_phone(db, phone=phone, study=study).language


def locked_user_row(session, study_id: int, user_code: str) -> User | None:
    if not is_digits(user_code):
        return None
    return session.execute(select(User).where(
        User.study_id == study_id, User.user_code == user_code, User.active.is_(True))
        .with_for_update()).scalar_one_or_none()


def dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_pin("00000000")
    return _DUMMY_HASH
