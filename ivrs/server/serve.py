"""``ivrs serve``: the webhook server (SPEC §2).

Production runs gunicorn through its ``BaseApplication`` API; ``--dev`` runs
Flask's development server with signature checks off. The command itself
(``ivrs/server/command.py``) checks the configuration and calls one of the two.

Workers and the session store: without REDIS_URL a call's dialog state lives in
the memory of the process that answered the previous request, so a second
worker would answer the next request of that call with no state. Hence one
worker without Redis, and more only with it.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import time

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from ivrs.outbound.scheduler import start_supply_schedule
from ivrs.server.jobs import JobsProcess

log = logging.getLogger("ivrs.serve")

MAX_DEFAULT_WORKERS = 8
# Worker class: gthread, 4 threads per worker. Why not sync: a webhook spends
# most of its time waiting (PostgreSQL, Redis) or hashing a PIN with argon2,
# which releases the GIL, so threads overlap that work within a process; and a
# sync worker is blocked whole by one slow client, which only a buffering proxy
# in front would prevent. Above all, without REDIS_URL there is exactly one
# worker, and a sync one would answer every caller in the study one request at
# a time. The dialog code is ready for threads: each request fires the shared
# voice machine's events on a model of its own (nothing shared is changed),
# and the in-process session store is locked. Each thread
# uses its own pooled database connection (pool of 10 per worker, above 4).
WORKER_CLASS = "gthread"
THREADS_PER_WORKER = 4
ENVIRONMENTS = ("production", "uat")  # IVRS_ENV (SPEC §2)


class ServeRefused(Exception):
    """The configuration cannot serve calls correctly: say why and do not start."""


def default_workers(redis_url: str | None, cpu_count: int | None = None) -> int:
    """One worker without Redis; with it 2 x CPU + 1 (gunicorn's rule of thumb), at most 8."""
    if not redis_url:
        return 1
    return min(2 * (cpu_count or os.cpu_count() or 1) + 1, MAX_DEFAULT_WORKERS)


def check_workers(requested: int | None, redis_url: str | None) -> int:
    if requested is None:
        return default_workers(redis_url)
    if requested > 1 and not redis_url:
        raise ServeRefused(
            f"--workers {requested} needs REDIS_URL: without Redis the call sessions are kept "
            "in one process's memory, and a call whose next request reaches another worker "
            "would be lost. Set REDIS_URL or run one worker.")
    return requested


def check_production_settings(settings) -> None:
    """What a production server refuses to start without (``--dev`` skips these)."""
    if settings.environment not in ENVIRONMENTS:
        # A typo ("prod") would otherwise run as UAT: IVRS_TODAY honoured, no pepper.
        raise ServeRefused(f"IVRS_ENV={settings.environment!r} is neither 'production' nor "
                           "'uat'.")
    if not settings.twilio_auth_token:
        raise ServeRefused(
            "TWILIO_AUTH_TOKEN is not set: every webhook request is checked against its "
            "X-Twilio-Signature, so without the token every call would be refused. Set it, "
            "or use --dev on a development machine (no signature checks).")
    if settings.environment == "production" and not os.environ.get("IVRS_PIN_PEPPER"):
        raise ServeRefused("IVRS_PIN_PEPPER is not set: in production (IVRS_ENV=production) "
                           "no PIN can be checked without it.")
    if settings.environment == "production" and not os.environ.get("IVRS_WEB_SECRET_KEY"):
        raise ServeRefused("IVRS_WEB_SECRET_KEY is not set: in production (IVRS_ENV=production) "
                           "the web console's cookies must be signed with a key of your own "
                           "(e.g. python -c 'import secrets; print(secrets.token_hex(32))').")


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def gunicorn_options(host: str, port: int, workers: int, supply_at: time | None,
                     database_url: str) -> dict:
    def when_ready(server) -> None:
        # Runs once, in the master, after the listening socket is open: the
        # background jobs belong to the server, never to each worker, and run
        # in a process of their own (ivrs.server.jobs says why not in a thread).
        server.jobs = JobsProcess(database_url, supply_at).start()

    return {
        "bind": bind_address(host, port),
        "workers": workers,
        "worker_class": WORKER_CLASS,
        "threads": THREADS_PER_WORKER,
        # Not preloaded: load() runs in each worker after the fork, so every
        # worker opens its own engine, connection pool and Redis client (a
        # pool inherited across fork would share sockets between processes).
        "preload_app": False,
        "errorlog": "-",  # stderr
        "loglevel": "info",
        "proc_name": "ivrs",
        "when_ready": when_ready,
        # gunicorn >= 25.1 opens a control socket at one fixed path per user
        # ($HOME/.gunicorn/gunicorn.ctl): two servers on a host would take each
        # other's. We do not use gunicornc; older gunicorn has no such setting.
        "control_socket_disable": True,
    }


OPTIONAL_SETTINGS = {"control_socket_disable"}  # set only where the installed gunicorn has them


class IvrsGunicorn(BaseApplication):
    """gunicorn with our options and our app factory (no gunicorn command line, no config file)."""

    def __init__(self, options: dict) -> None:
        self.options = options  # before super().__init__, which calls load_config()
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in OPTIONAL_SETTINGS and key not in self.cfg.settings:
                continue
            self.cfg.set(key, value)

    def load(self):
        from ivrs.app import create_app

        return create_app()

    def run(self) -> None:
        try:
            IvrsArbiter(self).run()
        except RuntimeError as error:  # as gunicorn's own run(): a message, not a trace
            print(f"\nError: {error}\n", file=sys.stderr, flush=True)
            sys.exit(1)


class IvrsArbiter(Arbiter):
    """gunicorn's master, also keeping the background jobs' process alive."""

    jobs: JobsProcess | None = None

    def manage_workers(self) -> None:
        super().manage_workers()
        if self.jobs is not None:
            self.jobs.keep_alive()

    def stop(self, graceful: bool = True) -> None:
        # The jobs first: the workers' drain may take the whole graceful timeout.
        if self.jobs is not None:
            self.jobs.stop()
            self.jobs = None
        super().stop(graceful)


def run_gunicorn(host: str, port: int, workers: int, supply_at: time | None,
                 database_url: str) -> None:
    log.info("ivrs serve: gunicorn on %s, %d worker(s) x %d threads, supply job %s",
             bind_address(host, port), workers, THREADS_PER_WORKER,
             f"daily at {supply_at.strftime('%H:%M')} UTC" if supply_at else "off")
    import_app_code()
    IvrsGunicorn(gunicorn_options(host, port, workers, supply_at, database_url)).run()


def import_app_code() -> None:
    """Import the application's modules in the master, before the fork.

    Importing opens no connection (the engine, its pool and the Redis client
    are made by create_app() in each worker), so this is safe to share; it
    saves every worker about a second of CPU at boot and shares those pages.
    """
    import ivrs.app  # noqa: F401
    import webhooks  # noqa: F401


BANNER = "!" * 76
DEV_WARNING = (BANNER + "\n"
               "ivrs serve --dev: DEVELOPMENT SERVER. Twilio signatures are NOT checked:\n"
               "anyone who can reach {address} can act as any caller.\n"
               "Never expose it to a network.\n" + BANNER)


def run_dev_server(host: str, port: int, supply_at: time | None) -> None:
    from ivrs.app import create_app
    from ivrs.config import Settings

    print(DEV_WARNING.format(address=f"http://{bind_address(host, port)}"), file=sys.stderr,
          flush=True)
    settings = Settings.from_env(dev=True)
    app = create_app(settings)
    start_supply_schedule(settings.database_url, supply_at)
    # No reloader: it would run this process twice, and the schedule with it.
    app.run(host=host, port=port, debug=False, use_reloader=False, threaded=True)

