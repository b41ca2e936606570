"""``ivrs serve``: check the configuration, then run gunicorn (or Flask's dev server).

A configuration that cannot serve calls correctly is refused
before anything starts, with one clear message and exit status 2.
"""

from __future__ import annotations

import os
import sys

import click


def _refuse(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="gunicorn worker processes (default: 1 without REDIS_URL; with it "
                   "2 x CPU + 1, at most 8). More than one needs REDIS_URL.")
@click.option("--dev", is_flag=True,
              help="Flask's development server, Twilio signatures NOT checked.")
def serve(host: str, port: int, workers: int | None, dev: bool) -> None:
    """Run the webhook server; also runs the supply job daily at IVRS_SUPPLY_AT
    (UTC HH:MM, default 02:00; 'off' disables it)."""
    from ivrs.config import Settings
    from ivrs.outbound.scheduler import ScheduleError, parse_supply_at
    from ivrs.server import serve as server
    from ivrs.server.logs import configure_logging

    try:
        supply_at = parse_supply_at(os.environ.get("IVRS_SUPPLY_AT"))
    except ScheduleError as error:
        _refuse(str(error))
    configure_logging()
    if dev:
        if workers not in (None, 1):
            click.echo(f"warning: --workers {workers} is ignored with --dev (one process)",
                       err=True)
        server.run_dev_server(host, port, supply_at)
        return
    settings = Settings.from_env()
    try:
        server.check_production_settings(settings)
        workers = server.check_workers(workers, settings.redis_url)
    except server.ServeRefused as refusal:
        _refuse(str(refusal))
    server.run_gunicorn(host, port, workers, supply_at, settings.database_url)
