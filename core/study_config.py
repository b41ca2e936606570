"""A study's randomization configuration, read once per process and version.

Randomizing needs the events, their factors and levels, the arms, whether
caps exist and who answers the eligibility questions: six queries that return
the same rows for months. They are read
into plain frozen objects and kept per process, keyed by the study's
``config_version``, which every configuration change (study reload, ratio
change) increments in its own transaction. Each randomization reads the study
row anyway, so it always sees the current version: a worker never runs on a
stale configuration, and nothing is shared between workers.

The configuration lock (``share_config``/``own_config``) closes the remaining
gap on PostgreSQL: a randomization holds it shared from its start to its
commit and a configuration change holds it exclusively, so an amendment waits
for the randomizations in flight and they never commit on a ratio older than
an amendment committed before them. It is a transaction-scoped advisory lock:
no row is written to take it. SQLite serializes writers anyway.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session, selectinload

from core.models import Arm, CapCounter, Factor, RandomizationEvent, Study

LOCK_SPACE = 0x1715  # first key of our advisory locks; the second is the study id
_SHARED = select(func.pg_advisory_xact_lock_shared(LOCK_SPACE, bindparam("study_id")))
_EXCLUSIVE = select(func.pg_advisory_xact_lock(LOCK_SPACE, bindparam("study_id")))


@dataclass(frozen=True)
class ArmConfig:
    id: int
    code: str
    name: str


@dataclass(frozen=True)
class FactorConfig:
    code: str
    weight: float
    levels: tuple[str, ...]


@dataclass(frozen=True)
class EventConfig:
    id: int
    study_id: int
    code: str
    position: int
    method: str
    ratio: dict[str, Any]
    params: dict[str, Any]
    stratify_by_site: bool
    factors: tuple[FactorConfig, ...]
    has_caps: bool


@dataclass(frozen=True)
class StudyConfig:
    study_id: int
    version: int
    arms: dict[str, ArmConfig]  # by code, in file order
    events: tuple[EventConfig, ...] = field(default=())  # in order, method "none" left out
    # "ivrs": the phone asks the eligibility questions; "edc": the EDC records
    # the answers through the API (core.eligibility). Study.config's setting.
    eligibility_source: str = "ivrs"


class ConfigCache:
    """Per ``Database`` (so two databases in one process never mix their study ids)."""

    def __init__(self) -> None:
        self._configs: dict[int, StudyConfig] = {}
        self._lock = threading.Lock()

    def get(self, study_id: int, version: int) -> StudyConfig | None:
        cached = self._configs.get(study_id)
        return cached if cached is not None and cached.version == version else None

    def put(self, config: StudyConfig) -> None:
        with self._lock:
            current = self._configs.get(config.study_id)
            if current is None or current.version <= config.version:
                self._configs[config.study_id] = config


def study_config(session: Session, study_id: int, version: int) -> StudyConfig:
    cache: ConfigCache | None = session.info.get("config_cache")
    config = cache.get(study_id, version) if cache is not None else None
    if config is None:
        config = _read(session, study_id, version)
        if cache is not None:
            cache.put(config)
    return config


def _read(session: Session, study_id: int, version: int) -> StudyConfig:
    arms = {arm.code: ArmConfig(arm.id, arm.code, arm.name) for arm in session.execute(
        select(Arm).where(Arm.study_id == study_id).order_by(Arm.position)).scalars()}
    capped = set(session.execute(
        select(CapCounter.event_id).where(CapCounter.study_id == study_id)).scalars())
    events = tuple(
        EventConfig(
            id=event.id, study_id=study_id, code=event.code, position=event.position,
            method=event.method, ratio=dict(event.ratio or {}), params=dict(event.params or {}),
            stratify_by_site=event.stratify_by_site, has_caps=event.id in capped,
            factors=tuple(FactorConfig(f.code, f.weight, tuple(lv.code for lv in f.levels))
                          for f in event.factors),
        )
        for event in session.execute(
            select(RandomizationEvent).where(RandomizationEvent.study_id == study_id)
            .options(selectinload(RandomizationEvent.factors).selectinload(Factor.levels))
            .order_by(RandomizationEvent.position)).scalars()
        if event.method != "none"
    )
    settings = session.scalar(select(Study.config).where(Study.id == study_id)) or {}
    return StudyConfig(study_id=study_id, version=version, arms=arms, events=events,
                       eligibility_source=settings.get("eligibility_source", "ivrs"))


def share_config(session: Session, study_id: int) -> None:
    """Held by every randomization until its commit (PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_SHARED, {"study_id": study_id})


def own_config(session: Session, study_id: int) -> None:
    """Held by a configuration change until its commit (PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_EXCLUSIVE, {"study_id": study_id})
