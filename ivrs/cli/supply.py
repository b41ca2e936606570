"""``ivrs kits`` and ``ivrs shipments``: the supply side of the command line (SPEC §2).

Thin shells over the core services, acting as the administrator at the
console (the audit trail names the CLI). Output is blinded: shipments are
shown with their number of kits, never their content per kit type.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import click

from core.actors import ADMIN
from core.errors import IvrsError
from core.supply.returns import RETURN_STATUSES
from ivrs.cli.common import handles_errors, open_database, study_option, write_csv


@click.group()
def kits() -> None:
    """Kit lists."""


@kits.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@study_option
@handles_errors
def kits_import(path: str, study: str | None) -> None:
    """Import a kit list: kit_number,kit_type,lot,expiry_date,location (all or nothing)."""
    from core.supply.kit_import import import_kits

    result = import_kits(open_database(), path, study_code=study)
    click.echo(f"imported {result.rows} kits ({result.lots} new lots)")


@click.group()
def shipments() -> None:
    """Shipments from depots to sites."""


STATUSES = ["requested", "dispatched", "received", "cancelled"]


@shipments.command("list")
@click.option("--site", default=None, help="Only shipments to this site.")
@click.option("--status", type=click.Choice(STATUSES), default=None)
@study_option
@handles_errors
def shipments_list(site: str | None, status: str | None, study: str | None) -> None:
    """Shipments as CSV, newest first (blinded: number of kits only)."""
    import sys

    from core.studies import get_study
    from core.supply.reports import shipments as shipments_report

    with open_database().sessions() as session:
        columns, rows = shipments_report(session, get_study(session, study), True, site=site,
                                         status=status)
        write_csv(sys.stdout, columns, rows)


@shipments.command("request")
@click.option("--site", required=True, help="The site asking for stock.")
@click.option("--per-type", type=int, default=None,
              help="Kits of every kit type (default: the resupply target).")
@study_option
@handles_errors
def shipments_request(site: str, per_type: int | None, study: str | None) -> None:
    """A stock indent for a site, the same number of kits of every type."""
    from core.supply.shipments import request_shipment

    result = request_shipment(open_database(), site_code=site, kits_per_type=per_type,
                              actor=ADMIN, study=study)
    click.echo(f"shipment {result.shipment_number} requested: {result.kits} kits from depot "
               f"{result.depot} to site {result.site} (confirmation {result.confirmation})")


@shipments.command("dispatch")
@click.argument("number")
@click.option("--carrier", required=True)
@click.option("--tracking", required=True, help="The carrier's tracking number.")
@click.option("--date", "on", default=None, metavar="YYYY-MM-DD",
              help="Dispatch date (default: today).")
@study_option
@handles_errors
def shipments_dispatch(number: str, carrier: str, tracking: str, on: str | None,
                       study: str | None) -> None:
    """Hand a shipment to the carrier: its kits go in transit; the site is notified."""
    from core.supply.shipments import dispatch_shipment

    result = dispatch_shipment(open_database(), shipment_number=number, carrier=carrier,
                               tracking_number=tracking, dispatched_on=_date(on),
                               actor=ADMIN, study=study)
    click.echo(f"shipment {result.shipment_number} dispatched: {result.kits} kits to site "
               f"{result.site} (confirmation {result.confirmation})")


@shipments.command("cancel")
@click.argument("number")
@click.option("--reason", required=True)
@study_option
@handles_errors
def shipments_cancel(number: str, reason: str, study: str | None) -> None:
    """Cancel a shipment not yet dispatched: its kits return to the depot's stock."""
    from core.supply.shipments import cancel_shipment

    result = cancel_shipment(open_database(), shipment_number=number, reason=reason, actor=ADMIN,
                             study=study)
    click.echo(f"shipment {result.shipment_number} cancelled: {result.kits} kits back at "
               f"depot {result.depot} (confirmation {result.confirmation})")


@shipments.command("receive")
@click.argument("number")
@click.option("--damaged", multiple=True, metavar="KIT", help="A damaged kit (repeatable).")
@click.option("--missing", multiple=True, metavar="KIT", help="A missing kit (repeatable).")
@click.option("--excursion", is_flag=True, help="Temperature excursion: quarantine the kits.")
@click.option("--logger-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Temperature logger data (JSON or text) for an excursion.")
@study_option
@handles_errors
def shipments_receive(number, damaged, missing, excursion, logger_file, study) -> None:
    """Record a shipment's receipt at its site (what a site user does by phone)."""
    from core.supply.receipt import receive_shipment

    logger = None
    if logger_file:
        if not excursion:
            raise IvrsError("--logger-file goes with --excursion")
        try:
            logger = Path(logger_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise IvrsError(f"cannot read {logger_file}: {exc}") from None
    result = receive_shipment(open_database(), shipment_number=number, damaged=damaged,
                              missing=missing, temperature_excursion=excursion,
                              logger_data=logger, actor=ADMIN, study=study)
    click.echo(f"shipment {result.shipment_number} received at site {result.site}: "
               f"{result.received} available, {result.quarantined} quarantined, "
               f"{result.damaged} damaged, {result.missing} missing "
               f"(confirmation {result.confirmation})")


def _quarantine_command(name: str) -> None:
    """``shipments release`` and ``shipments reject``: one decision, two outcomes."""

    @shipments.command(name, help=f"{name.capitalize()} a shipment's quarantined kits.")
    @click.argument("number")
    @click.option("--reason", default=None)
    @study_option
    @handles_errors
    def command(number: str, reason: str | None, study: str | None) -> None:
        from core.supply import receipt

        decide = receipt.release_quarantine if name == "release" else receipt.reject_quarantine
        result = decide(open_database(), shipment_number=number, reason=reason, actor=ADMIN,
                        study=study)
        click.echo(f"shipment {number}: {result.kits} kits {result.status} "
                   f"(confirmation {result.confirmation})")


_quarantine_command("release")
_quarantine_command("reject")


def _date(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise IvrsError(f"--date {value!r} is not a date (YYYY-MM-DD)") from None


# --- returns: site -> depot, then destruction (core.supply.returns) ---------------------------


@click.group()
def returns() -> None:
    """Kit returns: declared by a site, approved by the project manager (``ivrs
    approvals``), received and destroyed at the depot."""



@returns.command("list")
@click.option("--site", default=None, help="Only returns from this site.")
@click.option("--status", type=click.Choice(RETURN_STATUSES), default=None)
@study_option
@handles_errors
def returns_list(site: str | None, status: str | None, study: str | None) -> None:
    """Returns as CSV, newest first (blinded: number of kits only)."""
    import sys

    from core.studies import get_study
    from core.supply.returns import list_returns

    columns = ["return_number", "site", "depot", "status", "kits", "declared_at",
               "declared_by", "decided_at", "decided_by", "reason"]
    with open_database().sessions() as session:
        rows = list_returns(session, get_study(session, study).id, status=status, site=site)
        write_csv(sys.stdout, columns, [
            [getattr(row, column) for column in columns] for row in rows])


@returns.command("declare")
@click.option("--site", required=True, help="The site sending the kits back.")
@click.option("--kit", "kit_numbers", multiple=True, required=True, metavar="KIT",
              help="A kit to return (repeatable).")
@click.option("--reason", required=True)
@study_option
@handles_errors
def returns_declare(site: str, kit_numbers: tuple[str, ...], reason: str,
                    study: str | None) -> None:
    """Declare a site's unused or returned kits for return to its depot."""
    from core.supply.returns import declare_return

    result = declare_return(open_database(), site_code=site, kit_numbers=kit_numbers,
                            reason=reason, actor=ADMIN, study=study)
    click.echo(f"return {result.return_number} declared: {result.kits} kits from site "
               f"{result.site} to depot {result.depot} (confirmation {result.confirmation})")


@returns.command("receive")
@click.argument("number")
@study_option
@handles_errors
def returns_receive(number: str, study: str | None) -> None:
    """Record an approved return's arrival at the depot."""
    from core.supply.returns import receive_return

    result = receive_return(open_database(), return_number=number, actor=ADMIN, study=study)
    click.echo(f"return {result.return_number} received: {result.kits} kits at depot "
               f"{result.depot} (confirmation {result.confirmation})")


@returns.command("destroy")
@click.argument("number")
@click.option("--reason", default=None, help="Why / how (e.g. incineration certificate).")
@study_option
@handles_errors
def returns_destroy(number: str, reason: str | None, study: str | None) -> None:
    """Record the destruction of a received return's kits."""
    from core.supply.returns import destroy_kits

    result = destroy_kits(open_database(), return_number=number, reason=reason, actor=ADMIN,
                          study=study)
    closed = f"; return {number} closed" if result.returns_closed else ""
    click.echo(f"{result.kits} kits destroyed{closed} (confirmation {result.confirmation})")
