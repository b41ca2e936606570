"""From many simulated runs to what a supply manager decides on: percentiles per strategy.

Each metric is summarized across runs by its 5th, 50th and 95th percentiles
and its mean (linear interpolation, numpy's default). The stock-out
probability is the share of runs with at least one stock-out (a subject who
could not be randomized or dosed); the first stock-out day is summarized over
the runs that had one. Stock over time is the total stock held at all sites
each day, with its percentile band across runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median

import numpy as np

from core.simulation.supply import WASTE_REASONS, RunResult

# (column, what it is) in the order tables and CSV files show them
METRICS = (
    ("stockouts", "stock-out events (refused randomizations + visits without kits)"),
    ("first_stockout_day", "day of the first stock-out (runs with one)"),
    ("randomized", "subjects randomized"),
    ("produced", "kits produced (released to depots)"),
    ("dispensed", "kits dispensed"),
    ("overage", "kits produced per kit dispensed"),
    *((reason, f"waste: {reason.replace('_', ' ')}") for reason in WASTE_REASONS),
    ("site_waste", "kits sent to sites and never dispensed"),
    ("shipments", "shipments sent"),
    ("urgent_shipments", "urgent shipments"),
    ("kits_shipped", "kits shipped"),
    ("depot_short", "shipments a depot could not fill"),
    ("cover_days", "days of cover (median site): mean stock / mean daily use"),
)
PERCENTILES = (5, 50, 95)


def metric(result: RunResult, name: str) -> float | None:
    if name == "overage":
        return result.produced / result.dispensed if result.dispensed else None
    if name == "cover_days":
        return median(result.cover_days.values()) if result.cover_days else None
    if name == "site_waste":
        return result.site_waste
    return getattr(result, name)


@dataclass(frozen=True)
class Spread:
    p5: float | None
    p50: float | None
    p95: float | None
    mean: float | None

    @classmethod
    def of(cls, values: list[float | None]) -> Spread:
        present = np.array([v for v in values if v is not None], dtype=float)
        if not present.size:
            return cls(None, None, None, None)
        p5, p50, p95 = np.percentile(present, PERCENTILES)
        return cls(float(p5), float(p50), float(p95), float(present.mean()))


@dataclass(frozen=True)
class StrategySummary:
    strategy: str
    runs: int
    stockout_probability: float
    metrics: dict[str, Spread]
    stock_bands: np.ndarray  # shape (3, days): p5, p50, p95 of total site stock
    site_cover: dict[str, float]  # per site: median days of cover across runs

    @property
    def site_waste(self) -> float:
        return self.metrics["site_waste"].mean or 0.0


def summarize(results: list[RunResult]) -> dict[str, StrategySummary]:
    """Per strategy (in the order met), the summary of its runs."""
    by_strategy: dict[str, list[RunResult]] = {}
    for result in results:
        by_strategy.setdefault(result.strategy, []).append(result)
    return {name: _summary(name, runs) for name, runs in by_strategy.items()}


def _summary(name: str, runs: list[RunResult]) -> StrategySummary:
    stock = np.array([run.site_stock for run in runs], dtype=float)
    bands = np.percentile(stock, PERCENTILES, axis=0)
    covers: dict[str, list[float]] = {}
    for run in runs:
        for site, days in run.cover_days.items():
            covers.setdefault(site, []).append(days)
    return StrategySummary(
        strategy=name, runs=len(runs),
        stockout_probability=sum(run.stockouts > 0 for run in runs) / len(runs),
        metrics={key: Spread.of([metric(run, key) for run in runs]) for key, _ in METRICS},
        stock_bands=bands,
        site_cover={site: float(np.median(values)) for site, values in sorted(covers.items())})
