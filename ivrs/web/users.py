"""Users (SPEC §11, the administrator's page): the study's users, and the
actions of ``ivrs users``: add a user, lock or unlock one with a reason, reset a
PIN (temporary), send a one-time set-up link (an invite), reset a TOTP second
factor. Each calls the core service the CLI calls, with the form's
idempotency key, so that a double submit acts once.

What is set is never shown again: no PIN, password or secret is on any page
after the form that set it, and an invite's link is shown once, on the answer
to the form that made it (only its digest is kept).
"""

from __future__ import annotations

import uuid

from flask import request

from core import user_directory, web_login
from core.actors import ROLES
from core.errors import IvrsError, NotFound, Refused
from core.records import list_sites, study_summary
from core.users import add_user, reset_pin, set_locked
from ivrs.web.base import actor, blueprint, db, page, refusal_text, runtime, user, words

# The refusals of these services in the administrator's words (the phone's
# ``error.<code>`` texts are written for callers).
REFUSALS = {
    "bad_user": "web.users.error.bad_user",
    "bad_role": "web.users.error.bad_role",
    "bad_pin": "web.users.error.bad_pin",
    "bad_email": "web.users.error.bad_email",
    "bad_language": "web.users.error.bad_language",
    "duplicate_user": "web.users.error.duplicate_user",
    "unknown_site": "web.users.error.unknown_site",
    "unknown_user": "web.users.error.unknown_user",
    "invite_shown_already": "web.users.error.invite_shown_already",
}
# Codes about the state of things (409) or who asks (403); other refusals are bad input.
_CONFLICTS = frozenset({"duplicate_user", "key_reused", "invite_shown_already"})
_FORBIDDEN = frozenset({"not_allowed", "wrong_site"})
# What the CLI records when no reason is given (``ivrs users lock``): the audit row has one.
DEFAULT_REASONS = {True: "locked by administrator", False: "unlocked by administrator"}


def _said(error: IvrsError) -> str:
    message_id = REFUSALS.get(error.code)
    return words(message_id) if message_id else refusal_text(error)


def _status(error: IvrsError) -> int:
    if error.code in _FORBIDDEN:
        return 403
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, Refused) or error.code in _CONFLICTS:
        return 409
    return 422


def _new_key() -> str:
    return uuid.uuid4().hex


def _key() -> str | None:
    return request.form.get("idempotency_key") or None


# --- the list and the form to add a user --------------------------------------------------


def _list_page(status: int = 200, **context):
    lines = user_directory.list_users(db(), actor=actor(), study=user().study)
    summary = study_summary(db(), actor=actor(), study=user().study)
    context.setdefault("form", {})
    return page("users.html", status, lines=lines, roles=sorted(ROLES),
                sites=list_sites(db(), actor=actor(), study=user().study),
                languages=summary.languages, idempotency_key=_new_key(), **context)


@blueprint.get("/users")
def users():
    try:
        return _list_page()
    except IvrsError as refused:  # the core's own check of the role
        return page("error.html", _status(refused), message=_said(refused))


@blueprint.post("/users")
def user_add():
    form = request.form
    # Kept to draw the form again after a refusal: everything but the PIN.
    kept = {name: form.get(name, "").strip() for name in
            ("user_id", "name", "role", "phone", "email", "language")}
    kept["sites"] = form.getlist("sites")
    try:
        done = add_user(db(), user_code=kept["user_id"], name=kept["name"], role=kept["role"],
                        sites=kept["sites"], phone=kept["phone"] or None,
                        email=kept["email"] or None, language=kept["language"] or None,
                        pin=form.get("pin", ""), actor=actor(), study=user().study,
                        idempotency_key=_key())
    except IvrsError as refused:
        return _list_page(_status(refused), error=_said(refused), form=kept)
    return page("user_done.html", done=words("web.users.done.added", user=done.user_code),
                user_code=done.user_code, confirmation=done.confirmation)


# --- one user and the actions on them ---------------------------------------------------


def _one(user_code: str) -> user_directory.UserLine:
    for line in user_directory.list_users(db(), actor=actor(), study=user().study):
        if line.user_code == user_code:
            return line
    raise NotFound(f"no user {user_code}", code="unknown_user")


def _user_page(user_code: str, status: int = 200, **context):
    try:
        line = _one(user_code)
    except IvrsError as refused:
        return page("error.html", _status(refused), message=_said(refused))
    return page("user.html", status, line=line, idempotency_key=_new_key(), **context)


@blueprint.get("/users/<user_code>")
def user_detail(user_code: str):
    return _user_page(user_code)


def _refused(user_code: str, refused: IvrsError):
    return _user_page(user_code, _status(refused), error=_said(refused))


@blueprint.post("/users/<user_code>/lock")
def user_lock(user_code: str):
    return _set_locked(user_code, True)


@blueprint.post("/users/<user_code>/unlock")
def user_unlock(user_code: str):
    return _set_locked(user_code, False)


def _set_locked(user_code: str, locked: bool):
    reason = request.form.get("reason", "").strip() or DEFAULT_REASONS[locked]
    try:
        done = set_locked(db(), user_code=user_code, locked=locked, reason=reason,
                          actor=actor(), study=user().study, idempotency_key=_key())
    except IvrsError as refused:
        return _refused(user_code, refused)
    said = "web.users.done.locked" if locked else "web.users.done.unlocked"
    return page("user_done.html", done=words(said, user=user_code), user_code=user_code,
                confirmation=done.confirmation)


@blueprint.post("/users/<user_code>/pin")
def user_reset_pin(user_code: str):
    try:
        done = reset_pin(db(), user_code=user_code, pin=request.form.get("pin", ""),
                         actor=actor(), study=user().study, idempotency_key=_key())
    except IvrsError as refused:
        return _refused(user_code, refused)
    return page("user_done.html", done=words("web.users.done.pin_reset", user=user_code),
                user_code=user_code, confirmation=done.confirmation)


@blueprint.post("/users/<user_code>/invite")
def user_invite(user_code: str):
    try:
        token = web_login.invite(db(), user_code=user_code, actor=actor(), study=user().study,
                                 idempotency_key=_key())
    except IvrsError as refused:
        return _refused(user_code, refused)
    base = (runtime().settings.public_base_url or request.host_url).rstrip("/")
    return page("user_done.html", done=words("web.users.done.invited", user=user_code),
                user_code=user_code, link=f"{base}/invite/{token}")


@blueprint.post("/users/<user_code>/totp")
def user_reset_totp(user_code: str):
    try:
        confirmation = web_login.reset_totp(db(), user_code=user_code, actor=actor(),
                                            study=user().study, idempotency_key=_key())
    except IvrsError as refused:
        return _refused(user_code, refused)
    return page("user_done.html", done=words("web.users.done.totp_reset", user=user_code),
                user_code=user_code, confirmation=confirmation)
