"""How well a study's randomization will balance, found out before the first patient.

``simulate_randomization`` enrols simulated subjects, run after run, through
the real services (``load_study``, ``import_mrl``, ``screen_subject``,
``randomize``): what is simulated is what will run. Each run has a database
of its own, in memory: a copy of one migrated template, so that a run costs
its subjects and not a migration. Only the study file's first randomization
event is simulated, without kits, visits, supply or users (a simulated
subject needs none of them, and a PIN would cost an argon2 hash per user).

Definitions (the README repeats them for sponsors):

- *imbalance* of a group of subjects: the spread, across arms, of each arm's
  count divided by its ratio weight (max - min of n_arm / r_arm, the ratio
  reduced to lowest terms). For 1:1 it is |nA - nB|; for 2:1 a group with
  4 A and 2 P has none. It is the ``range`` that minimization minimizes.
- overall, per factor level (marginal: all subjects with SEX=F), per stratum
  (the list a subject draws from); final (after the last subject) and
  maximum (over the whole enrolment).
- *loss*: final overall imbalance squared over the number randomized (for
  1:1, simple randomization's expected loss is 1).
- *correct guesses*: before each assignment a guesser who knows every earlier
  one bets on the arm most behind the ratio (the convergence strategy):
  within the subject's stratum for list and block, over the subject's factor
  levels for minimization (the arm minimization prefers, by the core's own
  ``imbalance_per_arm``), over the whole study for simple. A tie counts as
  one over the number of tied arms (a guesser choosing among them at random).
  By chance alone a guesser is right with the largest arm's share.
- refusals are counted, not fatal: a stratum whose list runs out, a cap reached.

Determinism: run i takes a seed derived from (seed, i) for its subjects and
for the method (``seed`` of simple and minimization, ``block.seed``); every
method compared sees the same subjects in run i. Results are put back in run
order, so the report is the same whatever the number of worker processes.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import math
import os
import random
import sqlite3
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import func, select
from sqlalchemy.pool import StaticPool

from core.actors import ADMIN
from core.db import Database, make_engine
from core.errors import FileErrors, IvrsError, Refused
from core.migrate import upgrade
from core.models import Arm, ListEntry
from core.mrl import import_mrl
from core.randomization.block import block_arms
from core.randomization.minimization import imbalance_per_arm
from core.randomization.strata import stratum_key
from core.randomize import randomize
from core.study_file import parse_study_file, read_yaml
from core.study_loader import load_study
from core.subjects import screen_subject

METHODS = ("list", "block", "minimization", "simple")
MAX_SUBJECTS = 9999
ACTOR_NAME = "simulation"
# What a study file gives that a randomization-only simulation leaves out.
LEFT_OUT_SECTIONS = ("kit_types", "visits", "visits_by_cohort", "supply", "users")
DEFAULT_MINIMIZATION = {"p": "0.8", "imbalance": "range"}
GUESSERS = {
    "list": "the arm most behind the ratio in the subject's stratum",
    "block": "the arm most behind the ratio in the subject's stratum",
    "minimization": "the arm minimization prefers for the subject's factor levels",
    "simple": "the arm most behind the ratio in the whole study",
}


# --- what to simulate -------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The command's arguments. ``distributions``: factor (or ``site``) -> level -> weight."""

    study_file: Path
    subjects: int = 200
    runs: int = 100
    seed: int = 1
    methods: tuple[str, ...] = ()  # empty: the study's own method
    distributions: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    mrl: Path | None = None
    workers: int | None = None  # None: one per CPU


@dataclass(frozen=True)
class MethodPlan:
    """One method to run: the study file's data with that method, seed set per run."""

    method: str
    study_data: dict[str, Any]
    ratio: dict[str, int]  # as written for the method (the guesser's minimization uses it)
    minimization: dict[str, Any] | None  # the event's minimization parameters


@dataclass(frozen=True)
class Plan:
    study_code: str
    event_code: str
    subjects: int
    runs: int
    seed: int
    methods: tuple[MethodPlan, ...]
    target_ratio: dict[str, int]  # lowest terms: imbalance is measured against it
    factors: dict[str, list[str]]  # code -> levels, in file order
    stratify_by_site: bool
    cohort: str | None
    eligibility: tuple[str, ...]
    site_weights: dict[str, float]
    level_weights: dict[str, dict[str, float]]
    mrl_text: str | None  # the --mrl file; None: a list is generated per run
    list_block_size: int  # of generated lists
    notes: tuple[str, ...]


def parse_distribution(text: str) -> tuple[str, dict[str, float]]:
    """``SEX=M:0.6,F:0.4`` to ("SEX", {"M": 0.6, "F": 0.4}); levels left out get 0."""
    name, equals, spec = (part.strip() for part in text.partition("="))
    usage = f"--distribution {text!r}: expected FACTOR=LEVEL:weight,LEVEL:weight (SEX=M:3,F:2)"
    if not (equals and name and spec):
        raise IvrsError(usage, code="bad_distribution")
    weights: dict[str, float] = {}
    for part in spec.split(","):
        level, colon, value = (piece.strip() for piece in part.partition(":"))
        if not (colon and level and value):
            raise IvrsError(usage, code="bad_distribution")
        try:
            weight = float(value)
        except ValueError:
            raise IvrsError(f"--distribution {name}: weight {value!r} of {level} is not a "
                            "number", code="bad_distribution") from None
        if not math.isfinite(weight) or weight < 0:
            raise IvrsError(f"--distribution {name}: weight {value!r} of {level} must be a "
                            "number >= 0", code="bad_distribution")
        if level in weights:
            raise IvrsError(f"--distribution {name}: level {level} is given twice",
                            code="bad_distribution")
        weights[level] = weight
    if not sum(weights.values()) > 0:
        raise IvrsError(f"--distribution {name}: at least one weight must be positive",
                        code="bad_distribution")
    return name, weights


def prepare(settings: Settings, template: bytes) -> Plan:
    """Check every argument against the study file and decide what each run does."""
    if not 1 <= settings.subjects <= MAX_SUBJECTS:
        raise IvrsError(f"--subjects must be between 1 and {MAX_SUBJECTS}", code="bad_argument")
    if settings.runs < 1:
        raise IvrsError("--runs must be at least 1", code="bad_argument")
    definition = parse_study_file(settings.study_file)
    event = definition.randomization[0]
    if event.method == "none":
        raise IvrsError(f"event {event.event} uses method none: there is nothing to randomize",
                        code="no_randomization")
    methods = _methods(settings.methods, event.method)
    if settings.mrl is not None and "list" not in methods:
        raise IvrsError("--mrl is for method list, which is not simulated here "
                        f"(methods: {', '.join(methods)})", code="bad_argument")
    factors = {factor.code: list(factor.levels) for factor in event.factors}
    sites = [site.code for site in definition.sites]
    site_weights, level_weights = _weights(settings.distributions, factors, sites)
    notes = ["subjects are screened and randomized by the real services, in an in-memory "
             "database per run; kits, visits and supply are left out"]
    if len(definition.randomization) > 1:
        notes.append(f"only the first randomization event ({event.event}) is simulated")
    raw, _ = read_yaml(settings.study_file)
    mrl_text, mrl_ratio = None, None
    if settings.mrl is not None:
        mrl_text, mrl_ratio, described = _check_list(raw, settings.mrl, template)
        notes.append(f"method list: {described}, the same in every run; only the subjects "
                     "change")
    target = _target_ratio(event.ratio, mrl_ratio, [arm.code for arm in definition.arms],
                           notes)
    block_size = 2 * sum(target.values())
    if "list" in methods and mrl_text is None:
        notes.append(f"method list: no --mrl given, so each run uses a new list of permuted "
                     f"blocks of {block_size} per stratum, long enough for every subject (it "
                     "never runs out); give --mrl FILE to simulate your own list")
    plans = tuple(_method_plan(raw, method, target, block_size, notes) for method in methods)
    for plan in plans:
        notes.append(f"guesser for {plan.method}: {GUESSERS[plan.method]}")
    return Plan(
        study_code=definition.study.code, event_code=event.event, subjects=settings.subjects,
        runs=settings.runs, seed=settings.seed, methods=plans, target_ratio=target,
        factors=factors, stratify_by_site=event.stratify_by_site, cohort=event.current_cohort,
        eligibility=tuple(definition.eligibility), site_weights=site_weights,
        level_weights=level_weights, mrl_text=mrl_text, list_block_size=block_size,
        notes=tuple(notes))


def _methods(asked: tuple[str, ...], study_method: str) -> tuple[str, ...]:
    chosen: list[str] = []
    for method in asked or (study_method,):
        if method not in METHODS:
            raise IvrsError(f"unknown method {method!r} (methods: {', '.join(METHODS)})",
                            code="bad_method")
        if method not in chosen:
            chosen.append(method)
    return tuple(chosen)


def _weights(distributions: Mapping[str, Mapping[str, float]], factors: dict[str, list[str]],
             sites: list[str]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Uniform unless a distribution is given; every name and level checked."""
    choices = {**factors, "site": sites}
    for name, weights in distributions.items():
        if name not in choices:
            raise IvrsError(f"--distribution: unknown factor {name!r} (factors: "
                            f"{', '.join(list(factors) + ['site'])})", code="bad_distribution")
        unknown = [level for level in weights if level not in choices[name]]
        if unknown:
            what = "site" if name == "site" else f"level of {name}"
            raise IvrsError(f"--distribution: unknown {what} {unknown[0]!r} (allowed: "
                            f"{', '.join(choices[name])})", code="bad_distribution")
    chosen = {name: {level: float(distributions.get(name, {}).get(level, 0.0))
                     if name in distributions else 1.0 for level in levels}
              for name, levels in choices.items()}
    site_weights = chosen.pop("site")
    return site_weights, chosen


def _target_ratio(ratio: dict[str, int] | None, mrl_ratio: dict[str, int] | None,
                  arms: list[str], notes: list[str]) -> dict[str, int]:
    if ratio:
        return _lowest_terms(ratio)
    if mrl_ratio:
        target = _lowest_terms(mrl_ratio)
        notes.append(f"the study file gives no ratio: {_ratio_text(target)} is the list's "
                     "(--mrl), and generated methods use it")
        return target
    target = {arm: 1 for arm in arms}
    notes.append(f"the study file gives no ratio: equal allocation ({_ratio_text(target)}) "
                 "is assumed")
    return target


def _lowest_terms(ratio: Mapping[str, int]) -> dict[str, int]:
    positive = {arm: int(weight) for arm, weight in ratio.items() if int(weight) > 0}
    divisor = reduce(math.gcd, positive.values())
    return {arm: weight // divisor for arm, weight in positive.items()}


def _ratio_text(ratio: Mapping[str, int]) -> str:
    return f"{':'.join(ratio)} = {':'.join(str(weight) for weight in ratio.values())}"


def _method_plan(raw: dict[str, Any], method: str, target: dict[str, int], block_size: int,
                 notes: list[str]) -> MethodPlan:
    """The study file's data with ``method``, checked by the study file's own parser."""
    data = {key: value for key, value in copy.deepcopy(raw).items()
            if key not in LEFT_OUT_SECTIONS}
    events = data["randomization"]
    event = dict(events[0] if isinstance(events, list) else events)
    event["method"] = method
    if method != "list" and not event.get("ratio"):
        event["ratio"] = {arm: str(weight) for arm, weight in target.items()}
    if method == "block":
        if not event.get("block"):
            event["block"] = {"sizes": [str(block_size)], "seed": "0"}
            notes.append(f"method block: the study file gives no block sizes: blocks of "
                         f"{block_size}")
    else:
        event.pop("block", None)
    if method == "minimization":
        if not event.get("minimization"):
            event["minimization"] = dict(DEFAULT_MINIMIZATION)
            notes.append("method minimization: the study file gives no parameters: p 0.8, "
                         "imbalance range, every factor weighing 1")
    else:
        event.pop("minimization", None)
    if method not in ("simple", "minimization"):
        event.pop("seed", None)
    data["randomization"] = event
    with tempfile.TemporaryDirectory(prefix="ivrs-sim-") as workdir:
        try:
            parsed = parse_study_file(_write_study(Path(workdir), data, method, 0))
        except FileErrors as errors:
            problems = "; ".join(f"{error.field or 'file'}: {error.message}"
                                 for error in errors.errors)
            raise IvrsError(f"method {method} cannot run this study: {problems}",
                            code="bad_method") from None
    parsed_event = parsed.randomization[0]
    return MethodPlan(method=method, study_data=data, ratio=dict(parsed_event.ratio or target),
                      minimization=parsed_event.params()["minimization"])


def _write_study(workdir: Path, data: dict[str, Any], method: str, run_seed: int) -> Path:
    """The study file a run loads: ``data`` with the run's seed for the method."""
    data = copy.deepcopy(data)
    event = data["randomization"]
    if method == "block":
        event["block"] = {**event["block"], "seed": str(run_seed)}
    elif method in ("simple", "minimization"):
        event["seed"] = str(run_seed)
    path = workdir / "study.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _check_list(raw: dict[str, Any], mrl: Path, template: bytes
                ) -> tuple[str, dict[str, int], str]:
    """Import the list once, as a run will (a bad list fails here, naming its line);
    returns its text, its arm counts and a description."""
    data = {key: value for key, value in copy.deepcopy(raw).items()
            if key not in LEFT_OUT_SECTIONS}
    events = data["randomization"]
    event = dict(events[0] if isinstance(events, list) else events)
    event["method"] = "list"
    for key in ("block", "minimization", "seed"):
        event.pop(key, None)
    data["randomization"] = event
    db = fresh_database(template)
    try:
        with tempfile.TemporaryDirectory(prefix="ivrs-sim-") as workdir:
            load_study(db, _write_study(Path(workdir), data, "list", 0), actor=ACTOR_NAME)
        imported = import_mrl(db, mrl, actor=ACTOR_NAME)
        with db.sessions() as session:
            counts = dict(session.execute(
                select(Arm.code, func.count(ListEntry.id))
                .join(ListEntry, ListEntry.arm_id == Arm.id).group_by(Arm.code)).all())
    finally:
        db.dispose()
    text = Path(mrl).read_bytes().decode("utf-8-sig")
    return text, counts, (f"the list {Path(mrl).name} ({imported.rows} entries in "
                          f"{imported.strata} strata)")


# --- databases ---------------------------------------------------------------------------


def migrated_template() -> bytes:
    """An empty database at the newest schema, as bytes to copy one per run."""
    connection = sqlite3.connect(":memory:", check_same_thread=False)
    engine = make_engine("sqlite://", creator=lambda: connection, poolclass=StaticPool)
    try:
        upgrade(engine)
        return connection.serialize()
    finally:
        engine.dispose()
        connection.close()


def fresh_database(template: bytes) -> Database:
    """A private in-memory copy of the template (one connection: StaticPool)."""
    connection = sqlite3.connect(":memory:", check_same_thread=False)
    connection.deserialize(template)
    return Database(engine=make_engine("sqlite://", creator=lambda: connection,
                                       poolclass=StaticPool))


class RunDatabases:
    """One engine per process whose one connection is reset to the template before
    each run. SQLAlchemy caches compiled statements per engine: a new engine per run
    would compile every statement again (a third of a short run's time)."""

    def __init__(self, template: bytes):
        self.template = template
        self.connection = sqlite3.connect(":memory:", check_same_thread=False)
        self.engine = make_engine("sqlite://", creator=lambda: self.connection,
                                  poolclass=StaticPool)

    def fresh(self) -> Database:
        self.connection.deserialize(self.template)
        # A new Database each run: its configuration cache must not outlive the data.
        return Database(engine=self.engine)


# --- one run -----------------------------------------------------------------------------


def run_seed(seed: int, run: int) -> int:
    """A run's seed: derived from (seed, run), not seed + run, so runs never overlap."""
    digest = hashlib.sha256(f"ivrs-simulation|{seed}|{run}".encode()).digest()
    return int.from_bytes(digest[:6], "big")


@dataclass(frozen=True)
class SimulatedSubject:
    site: str
    levels: dict[str, str]


def draw_subjects(plan: Plan, run: int) -> list[SimulatedSubject]:
    """The run's subjects, the same for every method compared."""
    rng = random.Random(f"subjects|{run_seed(plan.seed, run)}")
    sites, site_weights = list(plan.site_weights), list(plan.site_weights.values())
    subjects = []
    for _ in range(plan.subjects):
        site = rng.choices(sites, site_weights)[0]
        levels = {code: rng.choices(list(weights), list(weights.values()))[0]
                  for code, weights in plan.level_weights.items()}
        subjects.append(SimulatedSubject(site, levels))
    return subjects


@dataclass
class RunResult:
    method: str
    run: int
    seed: int
    subjects: int
    randomized: int
    final_imbalance: float
    max_imbalance: float
    levels_final: dict[str, float]
    levels_max: dict[str, float]
    strata_final: dict[str, float]
    strata_max: dict[str, float]
    correct_guesses: float  # expected number of right guesses (ties shared)
    exhausted: dict[str, int]  # stratum -> the subject (1..N) first refused for it
    caps_hit: dict[str, int]  # cap -> the subject first refused for it
    list_refusals: int
    cap_refusals: int
    trajectory: tuple[float, ...]  # overall imbalance after each subject

    @property
    def loss(self) -> float | None:
        return self.final_imbalance ** 2 / self.randomized if self.randomized else None

    @property
    def guess_rate(self) -> float | None:
        return self.correct_guesses / self.randomized if self.randomized else None


def imbalance(counts: Mapping[str, int], ratio: Mapping[str, int]) -> float:
    adjusted = [counts.get(arm, 0) / weight for arm, weight in ratio.items()]
    return round(max(adjusted) - min(adjusted), 9)


class Balance:
    """The arm counts of every group a subject belongs to, and their worst imbalance."""

    def __init__(self, ratio: dict[str, int]):
        self.ratio = ratio
        self.counts: dict[str, dict[str, int]] = {}
        self.worst: dict[str, float] = {}

    def add(self, group: str, arm: str) -> None:
        counts = self.counts.setdefault(group, {})
        counts[arm] = counts.get(arm, 0) + 1
        self.worst[group] = max(self.worst.get(group, 0.0), self.now(group))

    def now(self, group: str) -> float:
        return imbalance(self.counts.get(group, {}), self.ratio)

    def most_behind(self, group: str) -> list[str]:
        counts = self.counts.get(group, {})
        adjusted = {arm: counts.get(arm, 0) / weight for arm, weight in self.ratio.items()}
        least = min(adjusted.values())
        return [arm for arm, value in adjusted.items() if value == least]


OVERALL = "*overall*"


class Enrolment:
    """One run's subjects through the services, and what the guesser and the counts saw."""

    def __init__(self, plan: Plan, method: MethodPlan):
        self.plan, self.method = plan, method
        self.levels = Balance(plan.target_ratio)
        self.strata = Balance(plan.target_ratio)
        self.overall = Balance(plan.target_ratio)
        self.correct = 0.0
        self.randomized = 0
        self.exhausted: dict[str, int] = {}
        self.caps_hit: dict[str, int] = {}
        self.refusals = {"list_exhausted": 0, "cap_reached": 0}
        self.trajectory: list[float] = []

    def run(self, db: Database, subjects: list[SimulatedSubject]) -> None:
        eligibility = {question: True for question in self.plan.eligibility}
        for index, subject in enumerate(subjects, start=1):
            screened = screen_subject(db, site_code=subject.site, actor=ADMIN,
                                      study=self.plan.study_code)
            try:
                result = randomize(db, subject_number=screened.subject_number, actor=ADMIN,
                                   eligibility=eligibility, factors=subject.levels,
                                   study=self.plan.study_code)
            except Refused as refusal:
                self.refused(index, subject, refusal)
            else:
                self.assigned(subject, result.stratum, result.arm)
            self.trajectory.append(self.overall.now(OVERALL))

    def refused(self, index: int, subject: SimulatedSubject, refusal: Refused) -> None:
        if refusal.code == "list_exhausted":
            self.exhausted.setdefault(self.stratum_of(subject), index)
        elif refusal.code == "cap_reached":
            self.caps_hit.setdefault(refusal.params["cap"], index)
        else:
            raise refusal
        self.refusals[refusal.code] += 1

    def stratum_of(self, subject: SimulatedSubject) -> str:
        plan = self.plan
        return stratum_key(list(plan.factors), subject.levels,
                           site=subject.site if plan.stratify_by_site else None,
                           cohort=plan.cohort)

    def marginal_groups(self, subject: SimulatedSubject) -> dict[str, str]:
        """Factor -> its level group ("SEX=F"); site too when the event balances sites."""
        groups = {code: f"{code}={level}" for code, level in subject.levels.items()}
        if self.plan.stratify_by_site:
            groups["site"] = f"site={subject.site}"
        return groups

    def guess(self, subject: SimulatedSubject, stratum: str) -> list[str]:
        method = self.method.method
        if method in ("list", "block"):
            return self.strata.most_behind(stratum)
        if method == "simple":
            return self.overall.most_behind(OVERALL)
        params = self.method.minimization or {}
        groups = self.marginal_groups(subject)
        counts = {factor: dict(self.levels.counts.get(group, {}))
                  for factor, group in groups.items()}
        weights = {**params.get("weights", {}), "site": params.get("site_weight", 1.0)}
        totals = imbalance_per_arm(counts, weights, self.method.ratio,
                                   params.get("imbalance", "range"))
        least = min(totals.values())
        return [arm for arm, total in totals.items() if total == least]

    def assigned(self, subject: SimulatedSubject, stratum: str, arm: str) -> None:
        best = self.guess(subject, stratum)
        if arm in best:
            self.correct += 1 / len(best)
        self.randomized += 1
        self.overall.add(OVERALL, arm)
        self.strata.add(stratum, arm)
        for group in self.marginal_groups(subject).values():
            self.levels.add(group, arm)

    def result(self, run: int, seed: int) -> RunResult:
        level_names = [f"{code}={level}" for code, levels in self.plan.factors.items()
                       for level in levels]
        if self.plan.stratify_by_site:
            level_names += [f"site={site}" for site in self.plan.site_weights]
        return RunResult(
            method=self.method.method, run=run, seed=seed, subjects=len(self.trajectory),
            randomized=self.randomized, final_imbalance=self.overall.now(OVERALL),
            max_imbalance=self.overall.worst.get(OVERALL, 0.0),
            levels_final={name: self.levels.now(name) for name in level_names},
            levels_max={name: self.levels.worst.get(name, 0.0) for name in level_names},
            strata_final={key: self.strata.now(key) for key in sorted(self.strata.counts)},
            strata_max={key: self.strata.worst[key] for key in sorted(self.strata.counts)},
            correct_guesses=round(self.correct, 9), exhausted=self.exhausted,
            caps_hit=self.caps_hit, list_refusals=self.refusals["list_exhausted"],
            cap_refusals=self.refusals["cap_reached"], trajectory=tuple(self.trajectory))


def write_generated_list(path: Path, plan: Plan, subjects: list[SimulatedSubject],
                         seed: int) -> None:
    """A permuted-block MRL as the block method would draw it (``block_arms``), with
    whole blocks enough for every subject of the run in each stratum."""
    ratio = list(plan.target_ratio.items())
    needed: dict[tuple[str, ...], int] = {}
    for subject in subjects:
        key = ((subject.site,) if plan.stratify_by_site else ()) + tuple(subject.levels.values())
        needed[key] = needed.get(key, 0) + 1
    columns = ["randomization_number", "arm", *(["site"] if plan.stratify_by_site else []),
               *plan.factors, *(["cohort"] if plan.cohort else []), "block"]
    number = 100000
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for key in sorted(needed):
            site_part = list(key[:1]) if plan.stratify_by_site else []
            levels = dict(zip(plan.factors, key[len(site_part):]))
            stratum = stratum_key(list(plan.factors), levels,
                                  site=site_part[0] if site_part else None, cohort=plan.cohort)
            for block in range(1, math.ceil(needed[key] / plan.list_block_size) + 1):
                for arm in block_arms(seed, plan.event_code, stratum, block,
                                      [plan.list_block_size], ratio):
                    number += 1
                    writer.writerow([number, arm, *site_part, *levels.values(),
                                     *([plan.cohort] if plan.cohort else []), f"B{block}"])


def run_once(plan: Plan, databases: RunDatabases, method_index: int, run: int) -> RunResult:
    method = plan.methods[method_index]
    seed = run_seed(plan.seed, run)
    subjects = draw_subjects(plan, run)
    db = databases.fresh()
    with tempfile.TemporaryDirectory(prefix="ivrs-sim-") as workdir:
        folder = Path(workdir)
        load_study(db, _write_study(folder, method.study_data, method.method, seed),
                   actor=ACTOR_NAME)
        if method.method == "list":
            mrl = folder / "mrl.csv"
            if plan.mrl_text is None:
                write_generated_list(mrl, plan, subjects, seed)
            else:
                mrl.write_text(plan.mrl_text, encoding="utf-8")
            import_mrl(db, mrl, study_code=plan.study_code, actor=ACTOR_NAME)
    enrolment = Enrolment(plan, method)
    enrolment.run(db, subjects)
    return enrolment.result(run, seed)


# Each worker process gets the plan and the template once (initializer), not per run.
_worker: dict[str, Any] = {}


def _start_worker(plan: Plan, template: bytes) -> None:
    _worker["plan"], _worker["databases"] = plan, RunDatabases(template)


def _run_task(task: tuple[int, int]) -> RunResult:
    return run_once(_worker["plan"], _worker["databases"], *task)


# --- across runs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    mean: float
    median: float
    p5: float
    p95: float
    runs: int  # how many runs had a value (e.g. a list ran out in 12 of 100)


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = (len(sorted_values) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def stats(values: list[float | None]) -> Stats | None:
    present = sorted(value for value in values if value is not None)
    if not present:
        return None
    return Stats(mean=round(sum(present) / len(present), 9),
                 median=round(percentile(present, 0.5), 9),
                 p5=round(percentile(present, 0.05), 9),
                 p95=round(percentile(present, 0.95), 9), runs=len(present))


def run_metrics(result: RunResult) -> dict[str, float | None]:
    """The per-run values summarized across runs, by metric key (see METRIC_LABELS)."""
    levels, strata = list(result.levels_final.values()), list(result.strata_final.values())
    metrics: dict[str, float | None] = {
        "randomized": result.randomized,
        "final_imbalance": result.final_imbalance,
        "max_imbalance": result.max_imbalance,
        "loss": result.loss,
        "mean_level_imbalance": sum(levels) / len(levels) if levels else None,
        "worst_level_imbalance": max(levels, default=None),
        "max_level_imbalance": max(result.levels_max.values(), default=None),
        "mean_stratum_imbalance": sum(strata) / len(strata) if strata else None,
        "worst_stratum_imbalance": max(strata, default=None),
        "max_stratum_imbalance": max(result.strata_max.values(), default=None),
        "correct_guess_rate": result.guess_rate,
        "list_ran_out": 1.0 if result.exhausted else 0.0,
        "first_ran_out_at": min(result.exhausted.values(), default=None),
        "list_refusals": result.list_refusals,
        "cap_reached": 1.0 if result.caps_hit else 0.0,
        "first_cap_at": min(result.caps_hit.values(), default=None),
        "cap_refusals": result.cap_refusals,
    }
    for name, value in result.levels_final.items():
        metrics[f"final_imbalance[{name}]"] = value
        metrics[f"max_imbalance[{name}]"] = result.levels_max[name]
    return metrics


METRIC_LABELS = {
    "randomized": "subjects randomized",
    "final_imbalance": "final imbalance, overall",
    "max_imbalance": "maximum imbalance during enrolment, overall",
    "loss": "loss (final imbalance² / randomized)",
    "mean_level_imbalance": "final marginal imbalance, mean of the factor levels",
    "worst_level_imbalance": "final marginal imbalance, worst factor level",
    "max_level_imbalance": "maximum marginal imbalance during enrolment",
    "mean_stratum_imbalance": "final imbalance per stratum, mean of the strata",
    "worst_stratum_imbalance": "final imbalance per stratum, worst stratum",
    "max_stratum_imbalance": "maximum imbalance in a stratum during enrolment",
    "correct_guess_rate": "correct guesses of the next arm (convergence strategy)",
    "list_ran_out": "share of runs where a stratum's list ran out",
    "first_ran_out_at": "subject at which a list first ran out (those runs)",
    "list_refusals": "subjects refused: list exhausted",
    "cap_reached": "share of runs where a cap was reached",
    "first_cap_at": "subject at which a cap was first reached (those runs)",
    "cap_refusals": "subjects refused: cap reached",
}


def metric_label(key: str) -> str:
    if key in METRIC_LABELS:
        return METRIC_LABELS[key]
    name, _, group = key.partition("[")
    group = group.rstrip("]")
    if name.startswith("final"):
        return f"final imbalance {group}" if "=" in group and "|" not in group \
            else f"final imbalance, stratum {group}"
    return f"maximum imbalance {group}" if "|" not in group \
        else f"maximum imbalance, stratum {group}"


@dataclass(frozen=True)
class Report:
    plan: Plan
    runs: list[RunResult]  # by method, then run
    summary: dict[str, dict[str, Stats | None]]  # method -> metric key -> statistics
    metric_keys: list[str]  # every key, in display order
    strata: list[str]  # every stratum a run used
    bands: dict[str, list[tuple[float, float, float]]]  # method -> per subject: median, 5%, 95%

    @property
    def methods(self) -> list[str]:
        return [method.method for method in self.plan.methods]

    @property
    def chance(self) -> float:
        """What a guesser with no information gets right: the largest arm's share."""
        ratio = self.plan.target_ratio
        return max(ratio.values()) / sum(ratio.values())


def summarize(plan: Plan, runs: list[RunResult]) -> Report:
    strata = sorted({key for result in runs for key in result.strata_final})
    summary: dict[str, dict[str, Stats | None]] = {}
    keys: list[str] = []
    bands = {}
    for method in (m.method for m in plan.methods):
        mine = [result for result in runs if result.method == method]
        metrics = [run_metrics(result) for result in mine]
        for result, values in zip(mine, metrics):
            for key in strata:  # a stratum nobody entered in a run is balanced
                values[f"final_imbalance[{key}]"] = result.strata_final.get(key, 0.0)
                values[f"max_imbalance[{key}]"] = result.strata_max.get(key, 0.0)
        keys = list(metrics[0])
        summary[method] = {key: stats([values[key] for values in metrics]) for key in keys}
        bands[method] = [
            (round(percentile(column, 0.5), 9), round(percentile(column, 0.05), 9),
             round(percentile(column, 0.95), 9))
            for column in (sorted(values) for values in zip(*(r.trajectory for r in mine)))]
    return Report(plan=plan, runs=runs, summary=summary, metric_keys=keys, strata=strata,
                  bands=bands)


def simulate_randomization(settings: Settings, *,
                           on_run_done: Callable[[], None] | None = None,
                           on_plan: Callable[[Plan], None] | None = None) -> Report:
    """Every run of every method; ``on_run_done`` after each (a progress bar)."""
    template = migrated_template()
    plan = prepare(settings, template)
    if on_plan is not None:
        on_plan(plan)
    tasks = [(index, run) for index in range(len(plan.methods)) for run in range(plan.runs)]
    workers = max(1, min(settings.workers or os.cpu_count() or 1, len(tasks)))
    done: dict[tuple[int, int], RunResult] = {}
    if workers == 1:
        databases = RunDatabases(template)
        for task in tasks:
            done[task] = run_once(plan, databases, *task)
            if on_run_done is not None:
                on_run_done()
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_start_worker,
                                 initargs=(plan, template)) as pool:
            futures = {pool.submit(_run_task, task): task for task in tasks}
            try:
                for future in as_completed(futures):
                    done[futures[future]] = future.result()
                    if on_run_done is not None:
                        on_run_done()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return summarize(plan, [done[task] for task in tasks])
