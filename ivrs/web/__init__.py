"""The web console (SPEC §11): the sponsor's people and the sites in a browser.

A door like the Twilio one and the API: server-rendered pages (Jinja2, no
front-end build) that turn forms into calls of the same core services and their
results or refusals into pages, in the reader's language, blinded by the
reader's role. It holds no rule of its own: sign-in is ``core.web_login``, the
lockout is the phone's, every page reads through ``core``.

``install`` wires what the console needs into the application: the cookie's
signing key and attributes, and CSRF protection on every form (Flask-WTF),
which the Twilio and API doors are exempt from (they are signed otherwise).
"""

from __future__ import annotations

import logging
import os

from flask import Flask
from flask_wtf.csrf import CSRFError, CSRFProtect

# Each module declares its pages on the blueprint.
from ivrs.web import (  # noqa: F401
    approvals,
    audit,
    auth,
    dashboard,
    dispensing,
    enrolment,
    kits,
    reports,
    shipments,
    softphone,
    subjects,
    unblinding,
    users,
)
from ivrs.web.base import blueprint, page
from ivrs.web.supply_forms import limit_uploads

log = logging.getLogger("ivrs.web")

SECRET_ENV = "IVRS_WEB_SECRET_KEY"
# Only for demos and tests, like the PIN pepper: production refuses to start without
# its own key (ivrs.server.serve), since with this one anyone could forge a cookie.
DEVELOPMENT_SECRET = "ivrs-development-web-secret-not-secret"
csrf = CSRFProtect()


def install(app: Flask, *, environment: str, public_base_url: str | None,
            exempt: tuple = ()) -> None:
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        log.warning("%s is not set: web console cookies are signed with a development "
                    "key (refused in production)", SECRET_ENV)
    app.config.update(
        SECRET_KEY=secret or DEVELOPMENT_SECRET,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        # Over HTTPS (production, or a public https URL) the cookie never travels in clear.
        SESSION_COOKIE_SECURE=environment == "production"
        or bool(public_base_url and public_base_url.startswith("https://")),
        SESSION_COOKIE_NAME="ivrs_session",
        # The token lives as long as the session (which the idle timeout ends).
        WTF_CSRF_TIME_LIMIT=None,
    )
    # Before the CSRF check, which reads the form: an upload's own size limit.
    app.before_request(limit_uploads)
    csrf.init_app(app)
    for door in exempt:
        csrf.exempt(door)
    app.register_blueprint(blueprint)

    @app.errorhandler(CSRFError)
    def _csrf_refused(error):
        from ivrs.web.base import words

        return page("error.html", 400, message=words("web.error.csrf"))
