"""``ivrs approvals``: the gated actions (unblinding requests, returns) awaiting a
decision, and deciding them at the console (SPEC §2).

A decision is signed like one made by SMS: ``--user ID`` of an approving role
and that user's PIN (asked without echo, or ``IVRS_PIN`` in scripts). The
listing is blinded: what a request is about never names an arm.
"""

from __future__ import annotations

import sys

import click

from core.approvals import STATUSES
from ivrs.cli.common import handles_errors, open_database, read_pin, study_option, write_csv

LIST_COLUMNS = ["number", "kind", "site", "status", "about", "requested_by", "requested_at",
                "expires_at", "decided_by", "decided_at", "reason"]


@click.group()
def approvals() -> None:
    """Requests awaiting an approver: unblinding (mode approval) and kit returns."""


@approvals.command("list")
@click.option("--status", type=click.Choice(STATUSES), default="pending", show_default=True)
@click.option("--all", "every", is_flag=True, help="Every request, whatever its status.")
@study_option
@handles_errors
def approvals_list(status: str, every: bool, study: str | None) -> None:
    """Requests as CSV, newest first."""
    from core.gates import list_approvals
    from core.studies import get_study

    with open_database().sessions() as session:
        rows = list_approvals(session, get_study(session, study).id,
                              status=None if every else status)
        write_csv(sys.stdout, LIST_COLUMNS,
                  [[_cell(getattr(row, column)) for column in LIST_COLUMNS] for row in rows])


def _decision_command(name: str, approve: bool) -> None:
    """``approve`` and ``reject``: one signed decision, the other way round."""

    @approvals.command(name, help=f"{name.capitalize()} request NUMBER, signed by --user "
                                  "(PIN asked, or IVRS_PIN).")
    @click.argument("number")
    @click.option("--user", "user_code", required=True, help="Your user ID (approving role).")
    @click.option("--reason", default=None, required=not approve,
                  help="Why (required to reject).")
    @study_option
    @handles_errors
    def command(number: str, user_code: str, reason: str | None, study: str | None) -> None:
        from core.actors import actor_for_user
        from core.gates import decide
        from core.signatures import sign
        from core.studies import get_study

        db = open_database()
        with db.sessions() as session:
            actor = actor_for_user(session, get_study(session, study).id, user_code, "cli")
        verb = "approve" if approve else "reject"
        signature = sign(db, user_code=user_code, pin=read_pin(), actor=actor,
                         meaning=f"{verb} request {number}", study=study)
        decision = decide(db, number=number, approve=approve, reason=reason, actor=actor,
                          signature=signature, study=study)
        click.echo(f"{decision.kind} request {decision.number} {decision.status}, signed by "
                   f"{signature.signer} (confirmation {decision.confirmation})")


_decision_command("approve", True)
_decision_command("reject", False)


def _cell(value) -> str:
    from datetime import datetime

    from core.reports import _utc  # one UTC format for every listing

    if isinstance(value, datetime):
        return _utc(value)
    return "" if value is None else str(value)
