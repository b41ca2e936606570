"""``--optimize``: the least wasteful resupply levels whose stock-out risk is acceptable.

**Site classes.** Sites are grouped by their shipping lead time (the study's
``shipping_days``, or the scenario's override): the lead time is what the
levels must cover, and recruitment rates are drawn per run (all sites share
one distribution), so they do not tell sites apart before go-live. Every
site of a class gets the same trigger and target, for every kit type (equal
levels per kit type keep shipments blind, ``core.supply.resupply``).

**Objective.** Production is fixed by the scenario's lots, so what the levels
change is how many kits are sent to sites and never dispensed (expired at a
site, damaged, left at sites at the end): the mean of that *site waste* across
runs is minimised (fewer shipments breaks ties), subject to the stock-out
probability (runs with at least one stock-out) being at most ``target_risk``.

**Search**, for predictive off and on (the better one wins):

1. a safe start: every class at the study's levels scaled by 1, 2, 4 ... 32
   (trigger and target), the smallest scale whose risk is under target;
2. greedy coordinate descent: from the current levels, each neighbour
   (one class lowered: trigger - 1, target - 1, both - 1, or the gap
   target - trigger halved) is simulated; the feasible neighbour with the
   least site waste is taken if it is better; stop when none is.

All the candidates of a step are strategies of one simulation, so they
replay the same drawn trials (common random numbers: a difference between two
candidates is theirs, not the draw's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import yaml

from core.simulation.scenario import LevelsDef, Strategy
from core.simulation.supply import TrialModel, simulate
from core.simulation.supply_summary import StrategySummary, summarize

SCALES = (1, 2, 4, 8, 16, 32)
MAX_STEPS = 60
ClassLevels = tuple[tuple[int, int], ...]  # per class: (trigger, target)


@dataclass(frozen=True)
class Candidate:
    predictive: bool
    levels: ClassLevels

    @property
    def name(self) -> str:
        text = "_".join(f"{t}-{g}" for t, g in self.levels)
        return f"{'P' if self.predictive else 'B'}_{text}"


@dataclass(frozen=True)
class Recommendation:
    candidate: Candidate
    classes: tuple[int, ...]  # shipping days of each class
    site_class: dict[str, int]  # site code -> class index
    stockout_probability: float
    site_waste: float
    shipments: float
    evaluated: int  # candidates simulated


def site_classes(model: TrialModel) -> tuple[tuple[int, ...], dict[str, int]]:
    lead_times = tuple(sorted({site.shipping_days for site in model.sites if site.depot}))
    return lead_times, {site.code: lead_times.index(site.shipping_days)
                        for site in model.sites if site.depot}


def optimize(model: TrialModel, runs: int, *, target_risk: float = 0.01, workers: int = 1,
             progress: Callable[[int], None] | None = None) -> Recommendation | None:
    """The best feasible levels found, or None when even the safest start is too risky."""
    classes, site_class = site_classes(model)
    search = _Search(model, runs, target_risk, workers, site_class, progress)
    best: Recommendation | None = None
    for predictive in (False, True):
        found = search.descend(predictive, len(classes))
        if found is None:
            continue
        candidate, summary = found
        option = Recommendation(candidate, classes, site_class, summary.stockout_probability,
                                summary.site_waste, summary.metrics["shipments"].mean or 0.0,
                                search.evaluated)
        if best is None or _key(option) < _key(best):
            best = option
    return replace(best, evaluated=search.evaluated) if best else None


def _key(option: Recommendation) -> tuple[float, float]:
    return (round(option.site_waste, 6), option.shipments)


class _Search:
    def __init__(self, model: TrialModel, runs: int, target_risk: float, workers: int,
                 site_class: dict[str, int], progress):
        self.model, self.runs, self.target_risk = model, runs, target_risk
        self.workers, self.site_class, self.progress = workers, site_class, progress
        self.evaluated = 0
        default = model.default_levels
        self.start = (default.trigger, default.target) if default else (2, 6)

    def evaluate(self, candidates: list[Candidate]) -> dict[Candidate, StrategySummary]:
        strategies = {c.name: self.strategy(c) for c in candidates}
        results = simulate(replace(self.model, strategies=strategies), self.runs,
                           workers=self.workers, progress=self.progress)
        self.evaluated += len(candidates)
        summaries = summarize(results)
        return {c: summaries[c.name] for c in candidates}

    def strategy(self, candidate: Candidate) -> Strategy:
        return Strategy(predictive=candidate.predictive, sites={
            code: LevelsDef(trigger=candidate.levels[index][0],
                            target=candidate.levels[index][1])
            for code, index in self.site_class.items()})

    def feasible(self, summary: StrategySummary) -> bool:
        return summary.stockout_probability <= self.target_risk

    def descend(self, predictive: bool, classes: int):
        trigger, target = self.start
        starts = [Candidate(predictive, ((trigger * s, max(target * s, trigger * s + 1)),)
                            * classes) for s in SCALES]
        scored = self.evaluate(starts)
        feasible = [c for c in starts if self.feasible(scored[c])]
        if not feasible:
            return None
        current, summary = feasible[0], scored[feasible[0]]
        for _ in range(MAX_STEPS):
            neighbours = _neighbours(current)
            if not neighbours:
                break
            scored = self.evaluate(neighbours)
            better = [c for c in neighbours if self.feasible(scored[c])
                      and _score(scored[c]) < _score(summary)]
            if not better:
                break
            current = min(better, key=lambda c: _score(scored[c]))
            summary = scored[current]
        return current, summary


def _score(summary: StrategySummary) -> tuple[float, float]:
    return (round(summary.site_waste, 6), summary.metrics["shipments"].mean or 0.0)


def _neighbours(candidate: Candidate) -> list[Candidate]:
    found: list[Candidate] = []
    for index, (trigger, target) in enumerate(candidate.levels):
        options = {(trigger - 1, target), (trigger, target - 1), (trigger - 1, target - 1),
                   (trigger, trigger + max(1, (target - trigger) // 2))}
        for new_trigger, new_target in sorted(options):
            if 0 <= new_trigger < new_target and (new_trigger, new_target) != (trigger, target):
                levels = list(candidate.levels)
                levels[index] = (new_trigger, new_target)
                found.append(Candidate(candidate.predictive, tuple(levels)))
    return found


def recommendation_yaml(recommendation: Recommendation, kit_types: tuple[str, ...],
                        study_overrides: set[str]) -> str:
    """The recommendation in the study file's own syntax (``supply`` and per-site
    ``resupply``), to paste into the study file. The most common class's levels
    become ``default_resupply``; sites of other classes, and sites the study
    file already overrides, get their own ``resupply``."""
    levels = recommendation.candidate.levels
    sizes = [list(recommendation.site_class.values()).count(i) for i in range(len(levels))]
    main = max(range(len(levels)), key=lambda i: (sizes[i], -i))
    trigger, target = levels[main]
    supply = {"default_resupply": {"trigger": trigger, "target": target},
              "predictive": recommendation.candidate.predictive}
    sites = []
    for code, index in recommendation.site_class.items():
        if index != main or code in study_overrides:
            site_trigger, site_target = levels[index]
            sites.append({"code": code, "resupply": {
                kit: {"trigger": site_trigger, "target": site_target} for kit in kit_types}})
    document: dict = {"supply": supply}
    if sites:
        document["sites"] = sites
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=None)
