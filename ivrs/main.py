"""The ``ivrs`` command: one click group made of every door's commands.

It stands above everything it puts together: the operator's commands
(``ivrs.cli``), the server (``ivrs.server``) and the demo with the telephone and
SMS in the terminal (``ivrs.demo``), which drive the Twilio door as its clients.
Each command imports its heavy modules when it runs, so that ``ivrs --help`` or a
call in the terminal starts quickly.
"""

from __future__ import annotations

import click

from ivrs.cli import (
    api_clients,
    approvals,
    audit,
    export,
    jobs,
    reports,
    setup,
    simulate,
    supply,
    users,
    webhooks,
)
from ivrs.config import ConfigError
from ivrs.demo import commands as demo_commands
from ivrs.demo import terminal
from ivrs.server import command as server


class _Commands(click.Group):
    """A setting that cannot be used (``ivrs.config.ConfigError``, e.g. a bad
    ``SMTP_URL``) stops any command with one clear message and exit status 2,
    as ``ivrs serve`` refuses a configuration it cannot serve with."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(2)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ivrs")
def main() -> None:
    """ivrs: randomization and trial supply over the telephone and SMS.

    Configuration is by environment: DATABASE_URL (default: a SQLite file
    ivrs.sqlite3 here), IVRS_PIN_PEPPER, IVRS_ENV, IVRS_TODAY, the Twilio
    settings and SMTP_URL / SMTP_FROM; see README.md.
    """


for command in (
    setup.init, setup.study, setup.mrl, users.users, reports.report, audit.audit,
    approvals.approvals, export.export, jobs.supply, jobs.outbox, supply.kits,
    supply.shipments, supply.returns, simulate.simulate, api_clients.api_clients,
    webhooks.webhooks,
    server.serve,
    demo_commands.demo, demo_commands.sms, terminal.call,
):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    main()
