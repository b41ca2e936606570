"""Monte Carlo of a trial's supply: many simulated trials, day by day, in memory.

Every supply decision is the real core's, through its pure functions: the
resupply trigger and blind-preserving quantities (``plan_quantities``), usable
stock (``usable_after``), the initial shipment (``first_shipment``), the
predictive margin (``need_before_arrival``), the first visit and its expiry
limit (``first_visit``, ``last_unusable_expiry``), the visit due
(``due_visit``), first-expiry-first-out picking (``take_first_expiring``),
the refusal of a randomization when any arm lacks kits (``short_kit_types``)
and the do-not-ship window (``last_shippable_expiry``). Only the world is
simulated: stock is kept in memory (a sorted list of expiry dates per place
and kit type), no database is touched.

One run draws one trial (``draw_trial``): each site's activation day and
recruitment rate (Gamma, the Anisimov model), each screened subject's day,
screen failure, arm and drop-out day. Every strategy then replays the *same*
draw (common random numbers: differences between strategies are the
strategies', not chance's). A day, in order:

1. lots released reach their depot;
2. shipments due arrive (kits damaged in transit are wasted);
3. kits past expiry (``expiry_date < today``, as ``core.supply.expiry``) leave
   the stock as waste (expired at a site or at a depot);
4. sites whose activation day it is become active (they screen from
   activation + shipping days, when their initial shipment is in);
5. the resupply job runs for every active site with a depot (initial shipment,
   then trigger/target, predictive when the strategy says so); a depot that
   cannot fill a shipment ships nothing (``depot_short``), as in the core;
6. drop-outs, then visits due today: the visit's kits are picked, or the
   visit is refused (a **stock-out**) and recorded missed;
7. subjects screened today: screen failures leave; the others are randomized
   unless the site lacks dispensable first-visit kits for any arm (a
   **stock-out**: the subject is lost and an urgent shipment is requested,
   as ``core.supply.dispensing.refuse_for_stock`` does). Recruitment stops at
   ``target_subjects`` randomized. A strategy with ``resupply: false`` ships
   the initial shipment only (no job, no urgent shipment).

Subjects come on the nominal day of each visit. Runs are independent and
seeded by (seed, run index): results do not depend on the number of workers.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left, insort
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from multiprocessing import get_context
from types import SimpleNamespace
from typing import Any

from core.simulation.scenario import Scenario, Strategy
from core.study_file import StudyDefinition
from core.supply.dispensing import (
    SupplyConfig,
    dispensable_count,
    first_visit,
    short_kit_types,
    take_first_expiring,
)
from core.supply.kits import last_shippable_expiry
from core.supply.resupply import (
    Levels,
    TreatedSubject,
    UsableAfter,
    first_shipment,
    first_visit_horizon,
    need_before_arrival,
    plan_quantities,
    usable_after,
)
from core.supply.visits import DueVisit, due_visit, last_unusable_expiry

WASTE_REASONS = ("expired_site", "expired_depot", "damaged", "unused_site", "unused_depot")


# --- the trial, as the simulator needs it ---------------------------------------------------


@dataclass(frozen=True)
class SiteModel:
    code: str
    depot: str | None
    shipping_days: int
    activation_day: int | None  # fixed by the scenario, else drawn per run


@dataclass(frozen=True)
class TrialModel:
    """The study file and the scenario, reduced to plain (picklable) data."""

    start: date
    days: int
    seed: int
    target_subjects: int
    kit_types: tuple[str, ...]  # kit type codes; the index is the simulator's kit type id
    arm_kit_type: tuple[int | None, ...]  # per arm index: its kit type index
    ratio: tuple[int, ...]  # per arm index
    sites: tuple[SiteModel, ...]
    depots: tuple[str, ...]
    config: dict[str, Any]  # what Study.config holds (visits, supply ...)
    site_levels: dict[str, dict[int, Levels]]  # the study file's per-site overrides
    default_levels: Levels | None  # the study file's default_resupply
    activation: tuple[int, int]
    rate_per_day: float
    rate_shape: float
    process: str
    screen_failure: float
    dropout_per_day: float
    damaged: float
    lots: tuple[tuple[int, int, str | None, date], ...]  # (day, kits per type, depot, expiry)
    strategies: dict[str, Strategy]

    @property
    def supply(self) -> dict[str, Any]:
        return self.config.get("supply") or {}


def add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    year, month = day.year + month // 12, month % 12 + 1
    length = (date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)).day
    return date(year, month, min(day.day, length))


def build_model(study: StudyDefinition, scenario: Scenario,
                strategies: dict[str, Strategy] | None = None) -> TrialModel:
    arms = [arm.code for arm in study.arms]
    kit_types = tuple(kit.code for kit in study.kit_types)
    # One kit type per arm, the first by code (as core.supply.dispensing.supply_config).
    arm_kit_type: list[int | None] = []
    for arm in arms:
        mapped = sorted((kit.code, index) for index, kit in enumerate(study.kit_types)
                        if kit.arm == arm)
        arm_kit_type.append(mapped[0][1] if mapped else None)
    ratio = scenario.ratio or next((e.ratio for e in study.randomization if e.ratio), None)
    weights = tuple(int((ratio or {}).get(arm, 0 if ratio else 1)) for arm in arms)
    shipping = scenario.sites.shipping_days
    days_fixed = scenario.sites.activation.days
    sites = tuple(SiteModel(site.code, site.depot, shipping.get(site.code, site.shipping_days),
                            days_fixed.get(site.code)) for site in study.sites)
    default = study.supply.default_resupply if study.supply else None
    site_levels = {site.code: {index: Levels(site.resupply[code].trigger,
                                             site.resupply[code].target)
                               for index, code in enumerate(kit_types) if code in site.resupply}
                   for site in study.sites}
    lots = tuple((lot.released, lot.kits_per_type, lot.depot,
                  add_months(scenario.start + timedelta(days=lot.released), lot.expiry_months))
                 for lot in scenario.lots)
    monthly = scenario.dropout_per_month
    return TrialModel(
        start=scenario.start, days=(add_months(scenario.start, scenario.months)
                                    - scenario.start).days,
        seed=scenario.seed, target_subjects=scenario.target_subjects, kit_types=kit_types,
        arm_kit_type=tuple(arm_kit_type), ratio=weights, sites=sites,
        depots=tuple(depot.code for depot in study.depots), config=study.config(),
        site_levels=site_levels,
        default_levels=Levels(default.trigger, default.target) if default else None,
        activation=(scenario.sites.activation.from_, scenario.sites.activation.to),
        rate_per_day=scenario.recruitment.mean_per_day(),
        rate_shape=scenario.recruitment.rate_shape, process=scenario.recruitment.process,
        screen_failure=scenario.screen_failure,
        dropout_per_day=-math.log(1 - monthly) / 30.4375 if monthly else 0.0,
        damaged=scenario.damaged, lots=lots,
        strategies=dict(strategies if strategies is not None else scenario.strategies))


# --- one drawn trial (shared by every strategy) ----------------------------------------------


@dataclass(frozen=True)
class Screened:
    day: int
    site: int
    fails: bool
    arm: int
    dropout_after: float  # days after randomization (inf: never)


@dataclass(frozen=True)
class TrialDraw:
    activation: tuple[int, ...]  # per site
    screened: tuple[Screened, ...]  # by day, then site


def run_random(seed: int, run: int, stream: str) -> random.Random:
    """A stream of its own per (seed, run, purpose): string seeds are hashed with
    SHA-512 by ``random``, the same in every process."""
    return random.Random(f"ivrs-supply:{seed}:{run}:{stream}")


def draw_trial(model: TrialModel, run: int) -> TrialDraw:
    rng = run_random(model.seed, run, "trial")
    low, high = model.activation
    activation = tuple(site.activation_day if site.activation_day is not None
                       else rng.randint(low, high) for site in model.sites)
    screened: list[Screened] = []
    arms = list(range(len(model.ratio)))
    for index, start in enumerate(activation):
        # a site screens once its initial shipment can have arrived (activation +
        # shipping days): the usual "green light" after the first drug receipt
        for day in _arrival_days(model, rng, start + model.sites[index].shipping_days):
            dropout = (rng.expovariate(model.dropout_per_day) if model.dropout_per_day
                       else math.inf)
            screened.append(Screened(day, index, rng.random() < model.screen_failure,
                                     rng.choices(arms, weights=model.ratio)[0], dropout))
    screened.sort(key=lambda s: (s.day, s.site))
    return TrialDraw(activation, tuple(screened))


def _arrival_days(model: TrialModel, rng: random.Random, start: int) -> Iterable[int]:
    if model.process == "regular":
        rate = model.rate_per_day
        for day in range(start, model.days):
            offset = day - start
            yield from [day] * (math.floor((offset + 1) * rate) - math.floor(offset * rate))
        return
    rate = rng.gammavariate(model.rate_shape, model.rate_per_day / model.rate_shape)
    moment = float(start)
    while rate > 0:
        moment += rng.expovariate(rate)
        if moment >= model.days:
            return
        yield int(moment)


# --- one strategy over one drawn trial ----------------------------------------------------


@dataclass
class RunResult:
    strategy: str
    run: int
    stockouts: int = 0
    randomization_refusals: int = 0
    dispense_refusals: int = 0
    first_stockout_day: int | None = None
    screened: int = 0
    randomized: int = 0
    produced: int = 0
    dispensed: int = 0
    shipments: int = 0
    urgent_shipments: int = 0
    kits_shipped: int = 0
    depot_short: int = 0
    subject_days: int = 0  # days randomized subjects spent in the trial (until drop-out)
    expired_site: int = 0
    expired_depot: int = 0
    damaged: int = 0
    unused_site: int = 0
    unused_depot: int = 0
    cover_days: dict[str, float] = field(default_factory=dict)  # per site that dispensed
    site_stock: list[int] = field(default_factory=list)  # per day, all sites

    @property
    def waste(self) -> int:
        return sum(getattr(self, reason) for reason in WASTE_REASONS)

    @property
    def site_waste(self) -> int:
        """Kits sent to sites and never dispensed: what the levels decide."""
        return self.expired_site + self.damaged + self.unused_site


@dataclass
class _Subject:
    treated: TreatedSubject
    site: int
    dropout_day: float
    active: bool = True


@dataclass
class _Shipment:
    site: int
    arrival: int
    kits: dict[int, list[date]]
    urgent: bool


class _Trial:
    """The state of one simulated trial under one strategy."""

    def __init__(self, model: TrialModel, draw: TrialDraw, name: str, run: int):
        self.m, self.draw, self.strategy = model, draw, model.strategies[name]
        self.result = RunResult(name, run)
        supply = model.supply
        self.dnd = int(supply.get("do_not_dispense_days") or 0)
        self.study_like = SimpleNamespace(config=model.config)  # for last_shippable_expiry
        self.predictive = (self.strategy.predictive if self.strategy.predictive is not None
                           else bool(supply.get("predictive")))
        initial = supply.get("initial")
        if self.strategy.initial_target is not None:
            initial = {"target": self.strategy.initial_target}
        self.initial = initial
        self.levels = [self._levels(site) for site in model.sites]
        self.visits = list(model.config.get("visits") or [])
        self.supply_config = SupplyConfig(0, 0, model.config, {
            arm: (kit_type, model.kit_types[kit_type])
            for arm, kit_type in enumerate(model.arm_kit_type) if kit_type is not None},
            self.dnd)
        self.type_ids = dict(self.supply_config.kit_types.values())
        self.schedule = self.supply_config.schedule(None)
        types = range(len(model.kit_types))
        self.site_stock = [{t: [] for t in types} for _ in model.sites]
        self.depot_stock = {depot: {t: [] for t in types} for depot in model.depots}
        self.pending: list[list[_Shipment]] = [[] for _ in model.sites]
        self.arrivals: dict[int, list[_Shipment]] = defaultdict(list)
        self.supplied = [False] * len(model.sites)
        self.active = [False] * len(model.sites)
        self.subjects: list[list[_Subject]] = [[] for _ in model.sites]
        self.calendar: dict[int, list[_Subject]] = defaultdict(list)
        self.stock_days = [0] * len(model.sites)
        self.site_dispensed = [0] * len(model.sites)
        self.damage_rng = run_random(model.seed, run, f"damage:{name}")
        self.usable_after_cache: dict[tuple[date, int], UsableAfter] = {}

    def _levels(self, site: SiteModel) -> dict[int, Levels]:
        """Per kit type: the strategy's site levels, else the study's site override,
        else the strategy's default, else the study's default (no levels: no resupply)."""
        types = range(len(self.m.kit_types))
        chosen = self.strategy.sites.get(site.code)
        if chosen is not None:
            return {t: Levels(chosen.trigger, chosen.target) for t in types}
        default = self.m.default_levels
        if self.strategy.default_resupply is not None:
            default = Levels(self.strategy.default_resupply.trigger,
                             self.strategy.default_resupply.target)
        overrides = self.m.site_levels[site.code]
        levels = {t: overrides.get(t, default) for t in types}
        return {t: level for t, level in levels.items() if level is not None}

    # -- the day -----------------------------------------------------------------------------

    def run(self) -> RunResult:
        m, r = self.m, self.result
        screened_by_day: dict[int, list[Screened]] = defaultdict(list)
        for subject in self.draw.screened:
            screened_by_day[subject.day].append(subject)
        lots_by_day: dict[int, list] = defaultdict(list)
        for lot in m.lots:
            lots_by_day[lot[0]].append(lot)
        for day in range(m.days):
            today = m.start + timedelta(days=day)
            for _, kits, depot, expiry in lots_by_day.get(day, ()):
                self._release(kits, depot, expiry)
            for shipment in self.arrivals.pop(day, ()):
                self._receive(shipment)
            self._expire(today)
            self.usable_after_cache: dict[tuple[date, int], UsableAfter] = {}
            for index, activation in enumerate(self.draw.activation):
                if activation == day:
                    self.active[index] = True
            self._resupply_job(day, today)
            for subject in self.calendar.pop(day, ()):
                self._visit(subject, day, today)
            for screened in screened_by_day.get(day, ()):
                if r.randomized < m.target_subjects:
                    self._screen(screened, day, today)
            total = 0
            for index, stock in enumerate(self.site_stock):
                held = sum(len(kits) for kits in stock.values())
                total += held
                if self.active[index]:
                    self.stock_days[index] += held
            r.site_stock.append(total)
        self._finish()
        return r

    def _release(self, kits: int, depot: str | None, expiry: date) -> None:
        for code in ([depot] if depot else self.m.depots):
            for t, stock in self.depot_stock[code].items():
                stock.extend([expiry] * kits)
                stock.sort()
                self.result.produced += kits

    def _receive(self, shipment: _Shipment) -> None:
        self.pending[shipment.site].remove(shipment)
        for t, kits in shipment.kits.items():
            for expiry in kits:
                if self.m.damaged and self.damage_rng.random() < self.m.damaged:
                    self.result.damaged += 1
                else:
                    insort(self.site_stock[shipment.site][t], expiry)

    def _expire(self, today: date) -> None:
        # a kit expiring today is still usable today (core.supply.expiry)
        for stock in self.site_stock:
            self.result.expired_site += _drop_before(stock, today)
        for stock in self.depot_stock.values():
            self.result.expired_depot += _drop_before(stock, today)

    def _resupply_job(self, day: int, today: date) -> None:
        for index, site in enumerate(self.m.sites):
            if not self.active[index] or site.depot is None:
                continue
            if not self.supplied[index]:
                quantities = first_shipment(self.initial, range(len(self.m.kit_types)),
                                            self.levels[index])
            elif self.strategy.resupply:
                quantities = self._plan(index, today, force=False)
            else:
                continue
            self._ship(index, day, today, quantities, urgent=False)

    def _plan(self, index: int, today: date, *, force: bool) -> dict[int, int]:
        site = self.m.sites[index]
        key = (today, site.shipping_days)
        after = self.usable_after_cache.get(key)
        if after is None:  # the same for every site with this lead time today
            after = self.usable_after_cache[key] = usable_after(
                today, site.shipping_days, self.dnd, first_visit_horizon(self.schedule))
        stock = {t: dispensable_count(kits, after.at_site)
                 for t, kits in self.site_stock[index].items()}
        for shipment in self.pending[index]:
            for t, kits in shipment.kits.items():
                stock[t] += dispensable_count(kits, after.on_the_way)
        extra = 0
        if self.predictive:
            extra = need_before_arrival(self.visits, [s.treated for s in self.subjects[index]],
                                        today, site.shipping_days)
        return plan_quantities(self.levels[index], stock, extra=extra, force=force)

    def _ship(self, index: int, day: int, today: date, quantities: dict[int, int], *,
              urgent: bool) -> None:
        if not any(quantities.values()):
            return
        r, site = self.result, self.m.sites[index]
        depot = self.depot_stock[site.depot]
        latest = last_shippable_expiry(self.study_like, today)
        if any(dispensable_count(depot[t], latest) < n for t, n in quantities.items()):
            r.depot_short += 1  # all or nothing, as create_shipment
            return
        kits = {t: take_first_expiring(depot[t], n, latest) for t, n in quantities.items()}
        self.supplied[index] = True
        r.shipments += 1
        r.urgent_shipments += urgent
        r.kits_shipped += sum(quantities.values())
        shipment = _Shipment(index, day + site.shipping_days, kits, urgent)
        self.pending[index].append(shipment)
        if site.shipping_days == 0:
            self._receive(shipment)
        else:
            self.arrivals[shipment.arrival].append(shipment)

    def _stockout(self, day: int) -> None:
        r = self.result
        r.stockouts += 1
        if r.first_stockout_day is None:
            r.first_stockout_day = day

    def _screen(self, screened: Screened, day: int, today: date) -> None:
        r = self.result
        r.screened += 1
        if screened.fails:
            return
        plan = first_visit(self.supply_config, None, today)
        stock = self.site_stock[screened.site]
        if plan is not None:
            counts = {t: dispensable_count(stock[t], plan.latest_unusable) for t in stock}
            if short_kit_types(self.type_ids, counts, plan.visit.dispense):
                r.randomization_refusals += 1
                self._stockout(day)
                self._urgent(screened.site, day, today)
                return
        kit_type = self.m.arm_kit_type[screened.arm]
        subject = _Subject(TreatedSubject(kit_type if kit_type is not None else -1, today,
                                          set()), screened.site, day + screened.dropout_after)
        r.randomized += 1
        r.subject_days += int(min(subject.dropout_day, self.m.days)) - day
        if plan is not None:
            if plan.visit.dispense and kit_type is not None:
                take_first_expiring(stock[kit_type], plan.visit.dispense, plan.latest_unusable)
                self._dispensed(screened.site, plan.visit.dispense)
            subject.treated.recorded.add(plan.visit.code)
        self.subjects[screened.site].append(subject)
        self._schedule_next(subject, today)

    def _urgent(self, index: int, day: int, today: date) -> None:
        site = self.m.sites[index]
        if (not self.strategy.resupply or site.depot is None
                or any(s.urgent for s in self.pending[index])):
            return
        self._ship(index, day, today, self._plan(index, today, force=True), urgent=True)

    def _due(self, subject: _Subject, today: date) -> DueVisit:
        return due_visit(self.schedule, subject.treated.day0, subject.treated.recorded, today)

    def _schedule_next(self, subject: _Subject, today: date) -> None:
        """Put the subject in the calendar on the nominal day of their next visit."""
        due = self._due(subject, today + timedelta(days=1))
        if due.visit is None:
            self._leave(subject)
            return
        day = (due.visit.due_on(subject.treated.day0) - self.m.start).days
        if subject.dropout_day <= day:
            self.calendar[max(int(subject.dropout_day), (today - self.m.start).days + 1)
                          ].append(subject)
        else:
            self.calendar[day].append(subject)

    def _visit(self, subject: _Subject, day: int, today: date) -> None:
        if not subject.active:
            return
        if subject.dropout_day <= day:
            self._leave(subject)
            return
        due = self._due(subject, today)
        if due.visit is None:
            self._leave(subject)
            return
        treated = subject.treated
        for missed in due.missed:
            treated.recorded.add(missed.code)
        visit = due.visit
        if visit.dispense and treated.kit_type_id >= 0:
            floor = last_unusable_expiry(due.next_visit, treated.day0, today, self.dnd)
            stock = self.site_stock[subject.site][treated.kit_type_id]
            if take_first_expiring(stock, visit.dispense, floor) is None:
                self.result.dispense_refusals += 1
                self._stockout(day)  # the visit is missed: no kits
            else:
                self._dispensed(subject.site, visit.dispense)
        treated.recorded.add(visit.code)
        self._schedule_next(subject, today)

    def _dispensed(self, index: int, kits: int) -> None:
        self.result.dispensed += kits
        self.site_dispensed[index] += kits

    def _leave(self, subject: _Subject) -> None:
        if subject.active:
            subject.active = False
            self.subjects[subject.site].remove(subject)

    def _finish(self) -> None:
        r = self.result
        r.unused_site = sum(len(kits) for stock in self.site_stock for kits in stock.values())
        r.unused_site += sum(len(kits) for shipments in self.pending for s in shipments
                             for kits in s.kits.values())
        r.unused_depot = sum(len(kits) for stock in self.depot_stock.values()
                             for kits in stock.values())
        for index, site in enumerate(self.m.sites):
            if self.site_dispensed[index]:
                # average stock held / average kits used a day, over the site's active days
                r.cover_days[site.code] = self.stock_days[index] / self.site_dispensed[index]


def _drop_before(stock: dict[int, list[date]], today: date) -> int:
    dropped = 0
    for kits in stock.values():
        if kits and kits[0] < today:
            cut = bisect_left(kits, today)
            del kits[:cut]
            dropped += cut
    return dropped


def simulate_run(model: TrialModel, run: int) -> list[RunResult]:
    """One drawn trial under every strategy (in the scenario's order)."""
    draw = draw_trial(model, run)
    return [_Trial(model, draw, name, run).run() for name in model.strategies]


# --- many runs -----------------------------------------------------------------------------------


_WORKER_MODEL: TrialModel | None = None


def _init_worker(model: TrialModel) -> None:
    global _WORKER_MODEL
    _WORKER_MODEL = model


def _worker_run(run: int) -> list[RunResult]:
    assert _WORKER_MODEL is not None
    return simulate_run(_WORKER_MODEL, run)


def simulate(model: TrialModel, runs: int, *, workers: int = 1,
             progress: Callable[[int], None] | None = None) -> list[RunResult]:
    """``runs`` trials under every strategy, in run order whatever ``workers``."""
    results: list[RunResult] = []
    if workers <= 1 or runs <= 1:
        for run in range(runs):
            results.extend(simulate_run(model, run))
            if progress:
                progress(1)
        return results
    chunk = max(1, min(16, runs // (workers * 8)))
    with get_context("spawn").Pool(workers, _init_worker, (model,)) as pool:
        for batch in pool.imap(_worker_run, range(runs), chunksize=chunk):
            results.extend(batch)
            if progress:
                progress(1)
    return results
