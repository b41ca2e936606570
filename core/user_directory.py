"""What the doors read about a study's users: the administrator's list (the web
console's users page) and the numbers a softphone call is made between.

No hash leaves the database: whether a PIN, a password or a TOTP secret is set
is asked in SQL (``IS NOT NULL``) and only the answer comes back. The list is
one study's users, which is small (a study's staff, not its subjects): it is
read whole, in two queries of one transaction (the users, then their sites).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import select

from core.actors import ADMINISTRATORS, Actor
from core.db import Database
from core.models import Site, StudyPhoneNumber, User, UserSite
from core.studies import study_ref

# Who administers users (and reads their list): the administrator only, as at the CLI.
USER_ADMINISTRATORS = ADMINISTRATORS


@dataclass(frozen=True)
class UserLine:
    user_code: str
    name: str
    role: str
    sites: tuple[str, ...]
    language: str
    phone: str | None
    email: str | None
    active: bool
    locked: bool
    pin_temporary: bool
    password_set: bool
    totp_enrolled: bool


def list_users(db: Database, *, actor: Actor, study: str | None = None) -> list[UserLine]:
    """The study's users in user-ID order (refused ``not_allowed`` for any role but admin)."""
    actor.require(USER_ADMINISTRATORS, "read the users")
    with db.reads() as session:
        ref = study_ref(session, study)
        sites: dict[int, list[str]] = defaultdict(list)
        for user_id, code in session.execute(
                select(UserSite.user_id, Site.code).join(Site, Site.id == UserSite.site_id)
                .join(User, User.id == UserSite.user_id)
                .where(User.study_id == ref.id).order_by(Site.code)):
            sites[user_id].append(code)
        rows = session.execute(
            select(User.id, User.user_code, User.name, User.role, User.language, User.phone,
                   User.email, User.active, User.locked, User.pin_temporary,
                   User.password_hash.is_not(None), User.totp_secret.is_not(None))
            .where(User.study_id == ref.id).order_by(User.user_code))
        return [UserLine(code, name, role, tuple(sites.get(user_id, ())), language, phone,
                         email, bool(active), bool(locked), bool(temporary), bool(password),
                         bool(totp))
                for (user_id, code, name, role, language, phone, email, active, locked,
                     temporary, password, totp) in rows]


@dataclass(frozen=True)
class CallingNumbers:
    caller: str | None  # the user's phone; None: the call comes from a withheld number
    dialed: str | None  # the study's first number; None: the study has none


def calling_numbers(db: Database, *, user_code: str, study: str | None = None
                    ) -> CallingNumbers:
    """The numbers a call of this user to this study is made between (the web's
    softphone places it as if the user dialed the study from their phone)."""
    with db.reads() as session:
        ref = study_ref(session, study)
        caller = session.scalar(select(User.phone).where(User.study_id == ref.id,
                                                         User.user_code == user_code))
        dialed = session.scalar(select(StudyPhoneNumber.number)
                                .where(StudyPhoneNumber.study_id == ref.id)
                                .order_by(StudyPhoneNumber.id).limit(1))
        return CallingNumbers(caller or None, dialed or None)
