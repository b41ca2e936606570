"""What every page shares: the blueprint, who is signed in, the language, the
rendering of a page and of a refusal, and the headers every answer carries."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from core.db import Database
from core.errors import IvrsError
from core.login import may_continue
from ivrs.render.speech import template
from ivrs.web import sessions
from ivrs.web.access import exists_in, may_open, pages_for
from ivrs.web.descriptions import about_text, break_text, history_reason_text
from ivrs.web.i18n import (
    best_language,
    language_name,
    local_time,
    offered_languages,
    translate,
    written,
)

blueprint = Blueprint("web", __name__, template_folder="templates", static_folder="static",
                      static_url_path="/static")

# Pages a browser may open before signing in.
PUBLIC = frozenset({"web.signin", "web.signin_totp", "web.signin_enrol", "web.invite",
                    "web.language", "web.static"})


def runtime():
    """The application's database and session store (``ivrs.app.Runtime``)."""
    return current_app.extensions["ivrs"]


def db() -> Database:
    return runtime().db


def store():
    return runtime().store


def user() -> sessions.WebUser:
    return g.web_session.user


def actor():
    return g.web_session.user.actor


def words(message_id: str, **params: Any) -> str:
    """A message in the reader's language."""
    return translate(message_id, g.get("language", "en"), **params)


# Refusals that only the console meets (signing in with a password, a TOTP code,
# an invite link), or whose phone wording ("your PIN") does not fit a page.
WEB_REFUSALS = {
    "bad_credentials": "web.refusal.bad_credentials",
    "weak_password": "web.refusal.weak_password",
    "bad_totp": "web.refusal.bad_totp",
    "totp_enrolled_already": "web.refusal.totp_enrolled_already",
    "totp_not_enrolled": "web.refusal.totp_not_enrolled",
    "invite_invalid": "web.refusal.invite_invalid",
    "signature_required": "web.refusal.signature_required",
    "signature_expired": "web.refusal.signature_expired",
}


def refusal_text(error: IvrsError) -> str:
    """A core refusal in the reader's words: the console's own message for its
    code, else the phone's (``error.<code>``), else a general one naming the
    code (a code is stable and says nothing an arm could be read from)."""
    if error.code in WEB_REFUSALS:
        return words(WEB_REFUSALS[error.code])
    if error.code and template(f"error.{error.code}", g.language) is not None:
        return words(f"error.{error.code}")
    return words("web.error.refused", code=error.code or "refused")


def safe_next(target: str | None) -> str | None:
    """Only a path of this site: ``next=//evil.example`` must not send a user away."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    return target


@blueprint.before_request
def _identify() -> Any:
    if not exists_in(request.endpoint or "", runtime().settings.environment):
        abort(404)  # before the sign-in: production does not even say the page needs one
    g.web_session = sessions.current_session(store(), session.get("sid"))
    if g.web_session is not None:
        g.language = g.web_session.language
    else:
        g.language = session.get("lang") or best_language(
            [lang for lang, _q in request.accept_languages], offered_languages())
    if request.endpoint in PUBLIC:
        return None
    if g.web_session is None:
        timed_out = session.pop("sid", None) is not None
        return redirect(url_for("web.signin", next=request.full_path.rstrip("?"),
                                **({"timeout": 1} if timed_out else {})))
    signed_in = g.web_session.user
    # A lock or deactivation takes effect at the next page, as at the phone's next step.
    if not may_continue(db(), study=signed_in.study, user_code=signed_in.user_code):
        sessions.close_session(store(), session.pop("sid", None))
        return redirect(url_for("web.signin", ended=1))
    if not may_open(signed_in.role, request.endpoint or ""):
        abort(403)
    return None


@blueprint.after_request
def _headers(response):
    # Pages show trial data: no cache keeps them, no other site frames them.
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
    return response


@blueprint.app_context_processor
def _page_context() -> dict[str, Any]:
    web_session = g.get("web_session")
    language = g.get("language", "en")
    return {
        "_": lambda message_id, **params: translate(message_id, language, **params),
        "language": language,
        "html_lang": language.replace("_", "-"),
        "languages": [(code, language_name(code)) for code in offered_languages()],
        "signed_in": web_session.user if web_session else None,
        "nav": pages_for(web_session.user.role, runtime().settings.environment)
        if web_session else [],
        "local_time": lambda moment, zone=None: local_time(moment, language, zone),
        "format_date": lambda day: written(day, language) if day else "",
        "fmt": lambda number: written(number, language),
        "has_text": lambda message_id: template(message_id, language) is not None,
        "about": lambda about_: about_text(about_, language),
        "chain_break": lambda found: break_text(found, language),
        "history_reason": lambda entry: history_reason_text(entry, language),
    }


def page(template_name: str, status: int = 200, **context: Any):
    return render_template(template_name, **context), status


@blueprint.errorhandler(403)
def _forbidden(error):
    return page("error.html", 403, message=words("web.error.forbidden"))
