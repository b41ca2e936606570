"""``ivrs api-clients``: the systems that may call the HTTP API, and their tokens."""

from __future__ import annotations

import sys

import click

from core.actors import ADMIN
from ivrs.cli.common import handles_errors, open_database, study_option, write_csv


@click.group("api-clients")
def api_clients() -> None:
    """API clients (SPEC §10): each has a role, sites and one bearer token."""


@api_clients.command("add")
@click.argument("name")
@click.option("--role", required=True, help="The role it acts with (SPEC §4), e.g. investigator.")
@click.option("--site", "sites", multiple=True,
              help="A site it acts at (repeatable; site roles only). None: every site.")
@study_option
@handles_errors
def add(name, role, sites, study) -> None:
    """Make a client; its token is printed once (only a digest of it is kept)."""
    from core.api_clients import add_client

    made = add_client(open_database(), name=name, role=role, sites=list(sites), actor=ADMIN,
                      study=study)
    click.echo(f"API client {made.client.name} added (role {made.client.role}, sites "
               f"{', '.join(made.client.sites) or 'all'}). Its token, shown only now:", err=True)
    click.echo(made.token)


@api_clients.command("list")
@study_option
@handles_errors
def list_(study) -> None:
    """The clients as CSV (never a token: its first characters tell tokens apart)."""
    from core.api_clients import list_clients

    rows = [(c.name, c.role, " ".join(c.sites), c.token_hint + "...",
             c.created_at.isoformat(), c.revoked_at.isoformat() if c.revoked_at else "")
            for c in list_clients(open_database(), study=study)]
    write_csv(sys.stdout, ["name", "role", "sites", "token", "created_at", "revoked_at"], rows)


@api_clients.command("revoke")
@click.argument("name")
@click.option("--reason", default="revoked by administrator")
@study_option
@handles_errors
def revoke(name, reason, study) -> None:
    """End a client: its token is refused from its next request on."""
    from core.api_clients import revoke_client

    revoke_client(open_database(), name=name, actor=ADMIN, reason=reason, study=study)
    click.echo(f"API client {name} revoked")
