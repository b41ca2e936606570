"""Every report of SPEC §8 by the name ``ivrs report NAME`` takes, and what each
offers besides its rows: a title, the filters it accepts, header notes (the
audit chain's verification, say) and a chart for the PDF.

A report's rows come from its builder, ``(session, study, blinded, **filters)
-> (columns, rows)`` with rows streamed (see ``core.reports``); ``filters`` names
the keywords among ``site``, ``start`` and ``end`` (dates, inclusive) that the
builder takes. The formats (CSV, Excel, PDF) are the presentation's
(``ivrs.render.report_files``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from core.actors import SITE_ROLES, Actor
from core.audit_reports import audit, chain_notes, user_activity
from core.errors import IvrsError, NotFound, Refused
from core.models import Study
from core.report_charts import Chart
from core.reports import Report, randomization, subjects, unblinding
from core.supply.dispensing_report import dispensing
from core.supply.overview import stock_chart, supply_overview
from core.supply.reports import SUPPLY_REPORTS

FILTERS = frozenset({"site", "start", "end"})
SITE = frozenset({"site"})
DATES = frozenset({"start", "end"})


@dataclass(frozen=True)
class ReportSpec:
    title: str
    build: Callable[..., Report]
    filters: frozenset[str] = frozenset()
    # lines for the report's header (Excel's "About" sheet, the PDF's first page)
    notes: Callable[[Session, Study], list[str]] | None = None
    # a chart drawn in the PDF before the table
    chart: Callable[[Session, Study, bool], Chart] | None = None


# Dates filter on each report's main date: subjects screened_at, randomization
# randomized_at, dispensing dispensed_at, shipments created_at, unblinding
# requested_at, audit and user-activity the audit rows' at.
SPECS: dict[str, ReportSpec] = {
    "subjects": ReportSpec("Subjects", subjects, FILTERS),
    "randomization": ReportSpec("Randomization", randomization, FILTERS),
    "dispensing": ReportSpec("Dispensing", dispensing, FILTERS),
    "kits": ReportSpec("Kits", SUPPLY_REPORTS["kits"], SITE),
    "site-inventory": ReportSpec("Site inventory", SUPPLY_REPORTS["site-inventory"], SITE),
    "depot-inventory": ReportSpec("Depot inventory", SUPPLY_REPORTS["depot-inventory"]),
    "shipments": ReportSpec("Shipments", SUPPLY_REPORTS["shipments"], FILTERS),
    "unconfirmed-kits": ReportSpec("Kits awaiting confirmation",
                                   SUPPLY_REPORTS["unconfirmed-kits"], SITE),
    "unblinding": ReportSpec("Emergency unblinding", unblinding, FILTERS),
    "audit": ReportSpec("Audit trail", audit, DATES, notes=chain_notes),
    "user-activity": ReportSpec("User activity", user_activity, DATES, notes=chain_notes),
    "supply-overview": ReportSpec("Supply overview", supply_overview, SITE,
                                  chart=stock_chart),
}

# name -> builder, for callers that only want the rows
REPORTS: dict[str, Callable[..., Report]] = {name: spec.build for name, spec in SPECS.items()}


# --- who may read which report -------------------------------------------------------------

# The sponsor's roles read every report (blinded unless the role is unblinded);
# site roles read only reports that can be limited to a site, for their own
# sites; the depot its inventories and shipments.
DEPOT_REPORTS = frozenset({"kits", "depot-inventory", "shipments", "site-inventory"})
SPONSOR_ROLES = frozenset({"project_manager", "unblinded_statistician", "admin"})
# Every role that reads some report (report_access decides which, and for which site).
REPORT_READERS = SPONSOR_ROLES | {"depot_manager"} | SITE_ROLES


@dataclass(frozen=True)
class ReportAccess:
    spec: ReportSpec
    blinded: bool
    site: str | None  # the site the report is limited to (site roles: always one)


def report_access(actor: Actor, name: str, site: str | None) -> ReportAccess:
    """May ``actor`` read report ``name`` (for ``site``), and blinded or not?
    Refusals: ``unknown_report``, ``not_allowed``, ``wrong_site``, ``site_required``."""
    spec = SPECS.get(name)
    if spec is None:
        raise NotFound(f"no report {name} (reports: {', '.join(SPECS)})", code="unknown_report")
    if site is not None and "site" not in spec.filters:
        raise IvrsError(f"report {name} cannot be limited to a site", code="bad_filter")
    if actor.role in SITE_ROLES:
        if "site" not in spec.filters:
            raise Refused(f"report {name} covers every site", code="not_allowed")
        if site is None and actor.site_codes is not None and len(actor.site_codes) == 1:
            site = next(iter(actor.site_codes))
        if site is None and actor.site_codes is not None:
            raise Refused("name one of your sites", code="site_required")
        if site is not None:
            actor.require_site(site)
    elif actor.role == "depot_manager" and name not in DEPOT_REPORTS:
        raise Refused(f"role depot_manager may not read report {name}", code="not_allowed")
    elif actor.role not in REPORT_READERS:
        raise Refused(f"role {actor.role} may not read reports", code="not_allowed")
    return ReportAccess(spec, actor.blinded, site)


def readable_reports(actor: Actor) -> list[str]:
    """The reports ``actor`` may read, in ``SPECS`` order: those ``report_access``
    grants, or grants once one of the actor's sites is named."""
    names = []
    for name in SPECS:
        try:
            report_access(actor, name, None)
        except Refused as refusal:
            if refusal.code != "site_required":
                continue
        names.append(name)
    return names
