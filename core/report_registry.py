"""Every report of SPEC §8 by the name ``ivrs report NAME`` takes."""

from __future__ import annotations

from typing import Callable

from sqlalchemy.orm import Session

from core.models import Study
from core.reports import Report, randomization, subjects, unblinding
from core.supply.dispensing_report import dispensing
from core.supply.reports import SUPPLY_REPORTS

REPORTS: dict[str, Callable[[Session, Study, bool], Report]] = {
    "subjects": subjects,
    "randomization": randomization,
    "dispensing": dispensing,
    **SUPPLY_REPORTS,
    "unblinding": unblinding,
}
