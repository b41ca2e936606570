"""Signing in (user ID + password, then the TOTP second factor or its enrolment),
the one-time set-up link, signing out and the language switch (SPEC §11).

The rules (password check, shared lockout, TOTP replay, invite expiry) are the
core's (``core.web_login``); these views only move between the steps. The
user's identity travels between the password and the second factor as a
pending record in the session store, never in the cookie.
"""

from __future__ import annotations

import segno
from flask import g, redirect, request, session, url_for
from markupsafe import Markup

from core import web_accounts, web_login
from core.errors import IvrsError
from core.studies import list_studies
from ivrs.web import sessions
from ivrs.web.base import blueprint, db, page, refusal_text, safe_next, store, words
from ivrs.web.i18n import offered_languages


def _studies():
    studies = list_studies(db())
    return studies if len(studies) > 1 else []


@blueprint.route("/signin", methods=["GET", "POST"])
def signin():
    notice = None
    if request.args.get("timeout"):
        notice = words("web.signin.timed_out")
    elif request.args.get("ended"):
        notice = words("web.signin.ended")
    elif request.args.get("invited"):
        notice = words("web.invite.done")
    if request.method == "GET":
        if g.web_session is not None:
            return redirect(url_for("web.dashboard"))
        return page("signin.html", notice=notice, studies=_studies(),
                    next=safe_next(request.args.get("next")))
    user_code = request.form.get("user_id", "").strip()
    study = request.form.get("study") or None
    target = safe_next(request.form.get("next"))
    try:
        found = web_login.sign_in_password(db(), user_code=user_code,
                                           password=request.form.get("password", ""),
                                           study=study, request_id=None)
    except IvrsError as refused:
        return page("signin.html", 401 if refused.code == "bad_credentials" else 403,
                    error=refusal_text(refused), studies=_studies(), next=target,
                    user_id=user_code)
    if found.second_factor == "none":
        return _signed_in(found, target)
    data = {"found": _as_json(found), "next": target}
    if found.second_factor == "enrol":
        data["secret"] = web_login.new_totp_secret()
    session["pending"] = sessions.hold_pending(store(), data)
    return redirect(url_for("web.signin_enrol" if found.second_factor == "enrol"
                            else "web.signin_totp"))


@blueprint.route("/signin/totp", methods=["GET", "POST"])
def signin_totp():
    held = sessions.pending(store(), session.get("pending"))
    if held is None or "secret" in held:
        return redirect(url_for("web.signin", timeout=1))
    if request.method == "GET":
        return page("totp.html")
    found = _from_json(held["found"])
    try:
        web_login.verify_totp(db(), user_code=found.user_code,
                              code=request.form.get("code", "").strip(), study=found.study)
    except IvrsError as refused:
        if refused.code == "locked":
            _drop_pending()
        return page("totp.html", 401, error=refusal_text(refused))
    return _signed_in(found, held.get("next"))


@blueprint.route("/signin/enrol", methods=["GET", "POST"])
def signin_enrol():
    held = sessions.pending(store(), session.get("pending"))
    if held is None or "secret" not in held:
        return redirect(url_for("web.signin", timeout=1))
    found, secret = _from_json(held["found"]), held["secret"]
    uri = web_login.totp_uri(secret, user_code=found.user_code, study=found.study)
    # The QR code is drawn on the server as SVG: no script, nothing sent elsewhere.
    qr = Markup(segno.make(uri, error="m").svg_inline(scale=4, title=words("web.enrol.qr_title")))
    if request.method == "GET":
        return page("enrol.html", qr=qr, secret=secret)
    try:
        web_login.enrol_totp(db(), user_code=found.user_code, secret=secret,
                             code=request.form.get("code", "").strip(), study=found.study)
    except IvrsError as refused:
        if refused.code == "locked":
            _drop_pending()
        return page("enrol.html", 401, qr=qr, secret=secret, error=refusal_text(refused))
    return _signed_in(found, held.get("next"))


@blueprint.route("/invite/<token>", methods=["GET", "POST"])
def invite(token: str):
    """The one-time set-up link of ``ivrs users invite``: choose a password."""
    try:
        user_code = web_accounts.invited_user(db(), token=token)
    except IvrsError as refused:
        return page("invite.html", 404, invalid=refusal_text(refused))
    if request.method == "GET":
        return page("invite.html", user_code=user_code)
    password = request.form.get("password", "")
    if password != request.form.get("password_again", ""):
        return page("invite.html", 422, user_code=user_code, error=words("web.invite.mismatch"))
    try:
        web_accounts.redeem_invite(db(), token=token, password=password)
    except IvrsError as refused:
        return page("invite.html", 422, user_code=user_code, error=refusal_text(refused))
    return redirect(url_for("web.signin", invited=1))


@blueprint.post("/signout")
def signout():
    sessions.close_session(store(), session.pop("sid", None))
    return redirect(url_for("web.signin"))


@blueprint.post("/language")
def language():
    chosen = request.form.get("language", "")
    if chosen in offered_languages():
        if g.web_session is not None:
            sessions.change_language(store(), session["sid"], g.web_session, chosen)
        session["lang"] = chosen
    return redirect(safe_next(request.form.get("next")) or url_for("web.dashboard"))


def _signed_in(found: web_login.WebSignIn, target: str | None):
    _drop_pending()
    sessions.close_session(store(), session.pop("sid", None))
    # A new session id at every sign-in: an id planted before cannot be ridden.
    session.clear()
    language = found.language if found.language in offered_languages() else g.language
    session["sid"] = sessions.open_session(store(), sessions.WebUser(
        study=found.study, user_code=found.user_code, name=found.name, role=found.role,
        site_codes=tuple(found.site_codes), language=found.language), language)
    session["lang"] = language
    return redirect(target or url_for("web.dashboard"))


def _drop_pending() -> None:
    sessions.drop_pending(store(), session.pop("pending", None))


def _as_json(found: web_login.WebSignIn) -> dict:
    return {"study": found.study, "user_code": found.user_code, "name": found.name,
            "role": found.role, "site_codes": list(found.site_codes),
            "language": found.language, "second_factor": found.second_factor}


def _from_json(data: dict) -> web_login.WebSignIn:
    return web_login.WebSignIn(**{**data, "site_codes": tuple(data["site_codes"])})
