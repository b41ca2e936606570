"""The Flask application factory: settings, database, session store, routes."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask

from core.db import Database
from ivrs.config import Settings
from ivrs.conversations.sessions import SessionStore, store_for

log = logging.getLogger("ivrs")


@dataclass
class Runtime:
    """What the webhooks need, built once per process."""

    settings: Settings
    db: Database
    store: SessionStore


def create_app(settings: Settings | None = None, *, db: Database | None = None,
               store: SessionStore | None = None) -> Flask:
    import webhooks
    from ivrs import api, web

    settings = settings or Settings.from_env()
    # No application-wide /static: the console's blueprint serves its own files there.
    app = Flask("ivrs", static_folder=None)
    app.extensions["ivrs"] = Runtime(settings, db or Database(settings.database_url),
                                     store or store_for(settings.redis_url))
    if settings.skip_signatures:
        log.warning("DEVELOPMENT MODE: Twilio signatures are NOT checked; "
                    "anyone who can reach this server can act as any caller")
    elif not settings.twilio_auth_token:
        log.error("TWILIO_AUTH_TOKEN is not set: every webhook request will be refused (403)")
    app.register_blueprint(webhooks.blueprint)
    app.register_blueprint(api.blueprint)
    web.install(app, environment=settings.environment, public_base_url=settings.public_base_url,
                exempt=(webhooks.blueprint, api.blueprint))
    return app
