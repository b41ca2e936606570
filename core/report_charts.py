"""Charts as data: what a report wants drawn (``ivrs.render.report_files`` draws it).

A chart is one panel per group (a site, say), each with lines over time (a
kit status, say). Data only: no drawing library is imported by the core.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date


@dataclass(frozen=True)
class Series:
    label: str
    points: list[tuple[date, float]]


@dataclass(frozen=True)
class Panel:
    title: str
    series: list[Series]
    note: str = ""  # a line under the panel (e.g. "days of cover: 23")


@dataclass(frozen=True)
class Chart:
    title: str
    y_label: str
    panels: list[Panel] = field(default_factory=list)
