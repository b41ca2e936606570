"""Every report of SPEC §8 by the name ``ivrs report NAME`` takes, and what each
offers besides its rows: a title, the filters it accepts, header notes (the
audit chain's verification, say) and a chart for the PDF.

A report's rows come from its builder, ``(session, study, blinded, **filters)
-> (columns, rows)`` with rows streamed (see ``core.reports``); ``filters`` names
the keywords among ``site``, ``start`` and ``end`` (dates, inclusive) that the
builder takes. The formats (CSV, Excel, PDF) are the presentation's
(``ivrs.report_files``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from core.models import Study
from core.report_charts import Chart
from core.reports import Report, randomization, subjects, unblinding
from core.supply.dispensing_report import dispensing
from core.supply.reports import SUPPLY_REPORTS

FILTERS = frozenset({"site", "start", "end"})


@dataclass(frozen=True)
class ReportSpec:
    title: str
    build: Callable[..., Report]
    filters: frozenset[str] = frozenset()
    # lines for the report's header (Excel's "About" sheet, the PDF's first page)
    notes: Callable[[Session, Study], list[str]] | None = None
    # a chart drawn in the PDF before the table
    chart: Callable[[Session, Study, bool], Chart] | None = None


SPECS: dict[str, ReportSpec] = {
    "subjects": ReportSpec("Subjects", subjects),
    "randomization": ReportSpec("Randomization", randomization),
    "dispensing": ReportSpec("Dispensing", dispensing),
    "kits": ReportSpec("Kits", SUPPLY_REPORTS["kits"]),
    "site-inventory": ReportSpec("Site inventory", SUPPLY_REPORTS["site-inventory"]),
    "depot-inventory": ReportSpec("Depot inventory", SUPPLY_REPORTS["depot-inventory"]),
    "shipments": ReportSpec("Shipments", SUPPLY_REPORTS["shipments"]),
    "unconfirmed-kits": ReportSpec("Kits awaiting confirmation",
                                   SUPPLY_REPORTS["unconfirmed-kits"]),
    "unblinding": ReportSpec("Emergency unblinding", unblinding),
}

# name -> builder, for callers that only want the rows
REPORTS: dict[str, Callable[..., Report]] = {name: spec.build for name, spec in SPECS.items()}
