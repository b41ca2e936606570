"""``ivrs users``: user administration (a PIN set here is temporary), and the
web console's passwords, invites and second factors."""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import click

from core.actors import ADMIN
from core.errors import IvrsError
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


# --- the web console's sign-in (SPEC §11) ---------------------------------------------


def _can_prompt() -> bool:
    """Whether a person is there to type a password: a terminal, and not CI
    (where a prompt would wait for ever)."""
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        return False
    return sys.stdin.isatty()


def _new_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise IvrsError("no password on standard input", code="no_password")
        return password
    if not _can_prompt():
        raise IvrsError("no terminal to ask the password on: give it on standard input "
                        "with --password-stdin", code="no_terminal")
    return click.prompt("Password", hide_input=True,
                        confirmation_prompt="Repeat the password")


@users.command("set-password")
@click.argument("user_id")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of standard input (scripts).")
@study_option
@handles_errors
def users_set_password(user_id, password_stdin, study) -> None:
    """Set a user's web console password (asked twice, hidden)."""
    from core.web_login import set_password

    set_password(open_database(), user_code=user_id, password=_new_password(password_stdin),
                 actor=ADMIN, study=study)
    click.echo(f"user {user_id}: web password set")


@users.command("invite")
@click.argument("user_id")
@click.option("--base-url", default=None, metavar="URL",
              help="The web console's address (default: PUBLIC_BASE_URL).")
@click.option("--valid-hours", default=72, show_default=True, type=click.IntRange(min=1),
              help="How long the link works.")
@study_option
@handles_errors
def users_invite(user_id, base_url, valid_hours, study) -> None:
    """Print a one-time link for the user to set their own web password (it
    replaces any earlier link of theirs)."""
    from core.web_login import invite

    token = invite(open_database(), user_code=user_id, actor=ADMIN, study=study,
                   valid_for=timedelta(hours=valid_hours))
    base = (base_url or os.environ.get("PUBLIC_BASE_URL") or "").strip().rstrip("/")
    # Only the link (or token) on standard output, so that a script can take it.
    if base:
        click.echo(f"{base}/invite/{token}")
    else:
        click.echo(token)
        click.echo("no --base-url or PUBLIC_BASE_URL: the link is the web console's "
                   "address followed by /invite/<this token>", err=True)
    click.echo(f"user {user_id}: one-time link, valid for {valid_hours} hours", err=True)


@users.command("reset-totp")
@click.argument("user_id")
@study_option
@handles_errors
def users_reset_totp(user_id, study) -> None:
    """Clear a user's TOTP second factor (a lost phone): they enrol again at the
    next web sign-in."""
    from core.web_login import reset_totp

    reset_totp(open_database(), user_code=user_id, actor=ADMIN, study=study)
    click.echo(f"user {user_id}: second factor cleared; enrolled again at the next sign-in")
