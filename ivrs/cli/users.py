"""``ivrs users``: user administration (a PIN set here is temporary)."""

from __future__ import annotations

import click

from core.actors import ADMIN
from ivrs.cli.common import handles_errors, open_database, study_option


@click.group()
def users() -> None:
    """User administration (a PIN set here is temporary: changed at the next call)."""


@users.command("add")
@click.argument("user_id")
@click.option("--name", required=True)
@click.option("--role", required=True)
@click.option("--site", "sites", multiple=True, help="Site code (repeatable).")
@click.option("--phone", default=None)
@click.option("--email", default=None,
              help="E-mail address: notifications are sent there too (with SMTP_URL).")
@click.option("--language", default=None,
              help="Default: the language of the user's first site (else the study's first).")
@click.option("--pin", required=True, help="Temporary PIN, 4-8 digits.")
@study_option
@handles_errors
def users_add(user_id, name, role, sites, phone, email, language, pin, study) -> None:
    from core.users import add_user

    add_user(open_database(), user_code=user_id, name=name, role=role, sites=list(sites),
             phone=phone, email=email, language=language, pin=pin, actor=ADMIN, study=study)
    click.echo(f"user {user_id} added; the PIN must be changed at the first call")


def _lock_command(name: str, locked: bool) -> None:
    """``users lock`` and ``users unlock``: the same service, the other way round."""

    @users.command(name, help=f"{name.capitalize()} a user (audited).")
    @click.argument("user_id")
    @click.option("--reason", default=f"{name}ed by administrator")
    @study_option
    @handles_errors
    def command(user_id, reason, study) -> None:
        from core.users import set_locked

        set_locked(open_database(), user_code=user_id, locked=locked, actor=ADMIN, reason=reason,
                   study=study)
        click.echo(f"user {user_id} {name}ed")


_lock_command("lock", True)
_lock_command("unlock", False)


@users.command("reset-pin")
@click.argument("user_id")
@click.option("--pin", required=True, help="Temporary PIN, 4-8 digits.")
@study_option
@handles_errors
def users_reset_pin(user_id, pin, study) -> None:
    from core.users import reset_pin

    reset_pin(open_database(), user_code=user_id, pin=pin, actor=ADMIN, study=study)
    click.echo(f"user {user_id}: PIN reset; it must be changed at the next call")
