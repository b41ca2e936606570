"""The supply simulation's scenario file: what the study file does not say.

The study file says what the system will do (sites, depots, shipping days,
visits, resupply levels); the scenario says what the world will do (when
sites open, how fast they recruit, how many subjects fail screening or drop
out, what the depots receive and when it expires) and which resupply
strategies to compare. Read like the study file (``core.study_file``): YAML
with line numbers, pydantic shapes with unknown keys refused, then checks
against the study; every problem is a ``FileError`` naming the line and the
field (``strategies.buffer.default_resupply.trigger``).

Fields (days are counted from ``start``, day 0)::

    start: 2027-01-04          # first day simulated (a date)
    months: 24                 # how long (calendar months)
    seed: 7                    # the runs are reproducible from it (--seed overrides)
    target_subjects: 600       # recruitment stops once this many are randomized
    recruitment:               # per site: rate ~ Gamma(rate_shape, rate_mean / rate_shape)
      rate_mean: 0.5           #   mean subjects screened per site per `per`
      rate_shape: 2.0          #   shape (large: all sites alike; small: a few fast sites)
      per: month               #   day | week | month (30.4375 days)
      process: poisson         #   poisson (Anisimov) | regular (rate_mean exactly, no
                               #   gamma: arrivals on fixed days, for hand-checked tests)
    sites:
      activation: {from: 0, to: 90, days: {"101": 0}}  # uniform day in [from, to];
                               #   `days` fixes it per site code
      shipping_days: {"103": 5}  # per site code: overrides the study's shipping_days
    screen_failure: 0.2        # probability a screened subject is not randomized
    dropout_per_month: 0.02    # monthly probability a randomized subject drops out
    damaged: 0.0               # probability a shipped kit arrives damaged (wasted)
    ratio: {A: 2, P: 1}        # treatment ratio (default: the study's first ratio, else 1:1)
    lots:                      # production: what each depot receives, when
      - {kits_per_type: 400, expiry_months: 18, released: 0, depot: "90"}
                               #   expiry_months after the release day; depot: default all
    strategies:                # compared side by side, on the same simulated subjects
      buffer: {predictive: false}
      predictive: {predictive: true}
      none: {resupply: false}  # only the initial shipment
      lean: {default_resupply: {trigger: 1, target: 4}, initial_target: 4,
             sites: {"101": {trigger: 2, target: 6}}}
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
)

from core.errors import FileError, FileErrors
from core.study_file import (
    Code,
    DepotCode,
    SiteCode,
    SourceMap,
    StudyDefinition,
    read_yaml,
)

Probability = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
DAYS_PER = {"day": 1.0, "week": 7.0, "month": 30.4375}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Recruitment(Section):
    rate_mean: PositiveFloat
    rate_shape: PositiveFloat = 2.0
    per: Literal["day", "week", "month"] = "month"
    process: Literal["poisson", "regular"] = "poisson"

    def mean_per_day(self) -> float:
        return self.rate_mean / DAYS_PER[self.per]


class Activation(Section):
    from_: NonNegativeInt = Field(0, alias="from")
    to: NonNegativeInt = 0
    days: dict[SiteCode, NonNegativeInt] = {}


class SitesSection(Section):
    activation: Activation = Activation()
    shipping_days: dict[SiteCode, NonNegativeInt] = {}


class Lot(Section):
    kits_per_type: PositiveInt
    expiry_months: PositiveInt
    released: NonNegativeInt = 0  # day the depot receives it
    depot: DepotCode | None = None  # None: every depot receives kits_per_type


class LevelsDef(Section):
    trigger: NonNegativeInt
    target: PositiveInt


class Strategy(Section):
    resupply: bool = True  # false: the initial shipment only
    predictive: bool | None = None  # None: the study's supply.predictive
    default_resupply: LevelsDef | None = None  # replaces the study's default levels
    initial_target: PositiveInt | None = None  # replaces supply.initial.target
    # per site code, for every kit type: above the study's per-site levels
    sites: dict[SiteCode, LevelsDef] = {}


class Scenario(Section):
    start: date
    months: Annotated[int, Field(ge=1, le=120)]
    seed: int = 0
    target_subjects: PositiveInt
    recruitment: Recruitment
    sites: SitesSection = SitesSection()
    screen_failure: Probability = 0.0
    dropout_per_month: Probability = 0.0
    damaged: Probability = 0.0
    ratio: dict[Code, PositiveInt] | None = None
    lots: list[Lot] = Field(min_length=1)
    strategies: dict[Code, Strategy] = Field(min_length=1)


def parse_scenario(path, study: StudyDefinition) -> Scenario:
    """Read and check a scenario file against the study; ``FileErrors`` lists every problem."""
    data, source = read_yaml(path)
    if not isinstance(data, dict):
        raise FileErrors([FileError(source.file, 1, None, "the scenario must be a mapping "
                                    "(start, months, recruitment, lots, strategies ...)")])
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise FileErrors([_shape_error(error, source) for error in exc.errors()]) from None
    errors = _check_against_study(scenario, study, source)
    if errors:
        raise FileErrors(sorted(errors, key=lambda error: error.line or 0))
    return scenario


def _shape_error(error: dict, source: SourceMap) -> FileError:
    loc = tuple("from" if part == "from_" else part for part in error["loc"])
    kind, message = error["type"], error["msg"]
    if kind == "missing":
        message = "required, but missing"
    elif kind == "extra_forbidden":
        message = f"unknown key {loc[-1]!r}"
    elif kind == "value_error":
        message = message.removeprefix("Value error, ")
    elif kind == "literal_error":
        message = f"{error['input']!r} is not allowed (allowed: {error['ctx']['expected']})"
    else:
        message = f"{message[:1].lower()}{message[1:]} (got {_short(error['input'])})"
    return source.error(loc, message)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_against_study(scenario: Scenario, study: StudyDefinition,
                         source: SourceMap) -> list[FileError]:
    errors: list[FileError] = []
    sites = {site.code for site in study.sites}
    depots = {depot.code for depot in study.depots}
    arms = [arm.code for arm in study.arms]

    def known(value: str, allowed, path: tuple, what: str) -> None:
        if value not in allowed:
            errors.append(source.error(path, f"unknown {what} {value!r} ({what}s: "
                                             f"{', '.join(sorted(allowed)) or 'none'})"))

    activation = scenario.sites.activation
    if activation.from_ > activation.to:
        errors.append(source.error(("sites", "activation", "from"),
                                   f"from ({activation.from_}) is after to ({activation.to})"))
    for code in activation.days:
        known(code, sites, ("sites", "activation", "days", code), "site")
    for code in scenario.sites.shipping_days:
        known(code, sites, ("sites", "shipping_days", code), "site")
    for arm in scenario.ratio or {}:
        known(arm, arms, ("ratio", arm), "arm")
    for index, lot in enumerate(scenario.lots):
        if lot.depot is not None:
            known(lot.depot, depots, ("lots", index, "depot"), "depot")
    if not depots:
        errors.append(source.error(("lots",), "the study has no depots to receive the lots"))
    if not study.kit_types:
        errors.append(source.error(("lots",), "the study has no kit_types to simulate"))
    for name, strategy in scenario.strategies.items():
        path = ("strategies", name)
        levels = [(path + ("default_resupply",), strategy.default_resupply)]
        for code, site_levels in strategy.sites.items():
            known(code, sites, path + ("sites", code), "site")
            levels.append((path + ("sites", code), site_levels))
        for where, level in levels:
            if level is not None and level.trigger >= level.target:
                errors.append(source.error(where + ("trigger",),
                                           f"trigger ({level.trigger}) must be below target "
                                           f"({level.target})"))
    return errors
