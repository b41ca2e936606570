"""``ivrs study load FILE.yaml``: create a study from its definition file, or update it.

The file is checked first (``core.study_file``: every problem, with its line
and field). Then one transaction brings the database to what the file says
and audits each difference with its old and new values, so loading the same
file twice changes nothing and writes no audit row. Any problem found on the
way (a phone number another study owns, an arm that is in use ...) rejects
the whole file: nothing is written.

Rules for a study that is already running:

- Rows are matched by code (arms, events, depots, sites, users; user ``id``).
- An arm or an event that data refers to (randomizations, list entries ...)
  cannot be removed; nor can a depot that a site still uses. Removed sites
  and users are deactivated (``active = False``), never deleted, because
  their history still names them; a site with subjects cannot be removed.
- Once an event has randomizations or an imported list, its method,
  ``stratify_by_site``, factors and levels are frozen: the strata of the list
  and of the subjects already randomized were built from them. The ratio, the
  method parameters and the caps stay changeable (each change audited; a ratio
  change as ``ratio_changed``).
- A PIN in the file is only an initial PIN; see ``StudyWriter.sync_pin``.

A reload is a configuration change like a ratio change (core.study_config):
it holds the study's configuration lock, so it waits for the randomizations
in flight, and when it changes anything it increments ``config_version`` so
that every worker drops its cached configuration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session, selectinload

from core.audit import AuditLog, jsonable
from core.clock import utcnow
from core.db import Database
from core.errors import FileError, FileErrors
from core.models import (
    Arm,
    CapCounter,
    Depot,
    Factor,
    FactorLevel,
    Kit,
    KitType,
    ListEntry,
    MinimizationCount,
    Randomization,
    RandomizationEvent,
    RandomizationList,
    Site,
    SiteSupply,
    StratumCounter,
    Study,
    StudyPhoneNumber,
    Subject,
    User,
)
from core.pins import hash_pin
from core.randomization.strata import cap_matches, parse_key
from core.studies import bump_config_version
from core.study_config import own_config
from core.study_file import EventDef, StudyDefinition, parse_study_file

__all__ = ["LoadResult", "load_study", "parse_study_file"]

# Study.config holds these sections of the file, as validated.
CONFIG_SECTIONS = ("kit_types", "visits", "visits_by_cohort", "supply", "unblinding",
                   "eligibility_source", "web")
# What a study loaded before a setting existed has, so that reloading its
# unchanged file audits no change.
CONFIG_DEFAULTS = {"eligibility_source": "ivrs", "web": {"totp_for_site_roles": False}}


@dataclass
class LoadResult:
    study_code: str
    created: bool
    # One line per audited change ("site_updated 101: name ... → ..."); empty
    # when the file was already loaded as it is.
    changes: list[str] = field(default_factory=list)


def load_study(db: Database, path: str | Path, *, actor: str = "cli") -> LoadResult:
    """Load or update the study a file defines; raises ``FileErrors``, writing nothing."""
    definition = parse_study_file(path)
    with db.transaction() as session:
        return StudyWriter(session, definition, actor).write()


def _diff(current: dict[str, Any], wanted: dict[str, Any]) -> tuple[dict, dict]:
    """The fields whose values differ: (their old values, their new values)."""
    changed = [name for name in wanted if current.get(name) != wanted[name]]
    return {name: current.get(name) for name in changed}, {name: wanted[name] for name in changed}


def _show(value: Any) -> str:
    return json.dumps(jsonable(value), ensure_ascii=False)


def _describe(action: str, entity_id: Any, old: dict | None, new: dict | None) -> str:
    line = f"{action} {entity_id}"
    if old and new:
        line += ": " + "; ".join(f"{name} {_show(old.get(name))} → {_show(new[name])}"
                                 for name in new)
    return line


class StudyWriter:
    """Brings one study's rows to what a checked file says, in the caller's transaction."""

    def __init__(self, session: Session, definition: StudyDefinition, actor: str):
        self.session = session
        self.d = definition
        self.source = definition.source
        self.actor = actor
        self.errors: list[FileError] = []
        self.changes: list[str] = []

    # --- the whole load ---------------------------------------------------------------

    def write(self) -> LoadResult:
        self.study, created = self.study_row()
        # The chain needs the study's id: study_row has flushed a new study.
        self.audit = AuditLog(self.study.id, self.actor)
        if created:
            self.record("study_created", "study", self.study.code, new=self.study_settings())
        else:
            self.update_study()
        self.sync_phone_numbers()
        arms = self.sync_arms()
        self.sync_events(arms)
        self.remove_site_supply()  # before kit types: an override may name a removed one
        self.sync_kit_types(arms)
        depots = self.sync_depots()
        sites = self.sync_sites(depots)
        self.sync_site_supply(sites)
        self.remove_depots(depots)
        self.sync_users(sites)
        if self.errors:
            raise FileErrors(sorted(self.errors, key=lambda error: error.line or 0))
        if self.audit.pending and not created:
            self.study.updated_at = utcnow()
            bump_config_version(self.session, self.study.id)
        self.session.flush()
        self.audit.seal(self.session)  # last: it takes the study's chain lock
        return LoadResult(self.study.code, created, self.changes)

    def record(self, action: str, entity_type: str, entity_id: Any, *,
               old: dict | None = None, new: dict | None = None) -> None:
        self.audit.record(action, entity_type, entity_id, old=old, new=new)
        self.changes.append(_describe(action, entity_id, old, new))

    def error(self, path: tuple, message: str) -> None:
        self.errors.append(self.source.error(path, message))

    def uses(self, value: int, references: list[tuple[InstrumentedAttribute, str]]) -> list[str]:
        """What refers to a row, e.g. ["12 randomizations", "40 list entries"]."""
        found = []
        for column, label in references:
            count = self.session.scalar(
                select(func.count()).select_from(column.class_).where(column == value))
            if count:
                found.append(f"{count} {label}")
        return found

    # --- the study itself --------------------------------------------------------------

    def study_row(self) -> tuple[Study, bool]:
        existing = self.session.scalar(select(Study.id).where(Study.code == self.d.study.code))
        if existing is not None:
            # The lock order of every configuration change: configuration lock,
            # then the study row (the other order could deadlock with them).
            own_config(self.session, existing)
        # FOR UPDATE: two loads of the same study run one after the other.
        study = self.session.scalars(
            select(Study).where(Study.code == self.d.study.code).with_for_update()
        ).one_or_none()
        if study is not None:
            return study, False
        settings = self.study_settings()
        study = Study(code=self.d.study.code, name=settings["name"],
                      languages=settings["languages"], eligibility=settings["eligibility"],
                      unblinding_mode=settings["unblinding_mode"], config=self.d.config())
        self.session.add(study)
        self.session.flush()
        return study, True

    def study_settings(self) -> dict[str, Any]:
        return {"name": self.d.study.name, "languages": list(self.d.study.languages),
                "eligibility": list(self.d.eligibility),
                "unblinding_mode": self.d.unblinding.mode, **self.d.config()}

    def update_study(self) -> None:
        study = self.study
        current = {"name": study.name, "languages": study.languages,
                   "eligibility": study.eligibility, "unblinding_mode": study.unblinding_mode,
                   **{name: (study.config or {}).get(name, CONFIG_DEFAULTS.get(name))
                      for name in CONFIG_SECTIONS}}
        old, new = _diff(current, self.study_settings())
        if not new:
            return
        for name in ("name", "languages", "eligibility", "unblinding_mode"):
            if name in new:
                setattr(study, name, new[name])
        if any(name in new for name in CONFIG_SECTIONS):
            # A new dict, so that SQLAlchemy sees the JSON column change.
            study.config = {**(study.config or {}), **self.d.config()}
        self.record("study_updated", "study", study.code, old=old, new=new)

    def sync_phone_numbers(self) -> None:
        wanted = self.d.study.phone_numbers
        rows = {row.number: row for row in self.session.scalars(
            select(StudyPhoneNumber).where(StudyPhoneNumber.study_id == self.study.id))}
        # A dialed number routes a call to one study only.
        taken = dict(self.session.execute(
            select(StudyPhoneNumber.number, Study.code)
            .join(Study, Study.id == StudyPhoneNumber.study_id)
            .where(StudyPhoneNumber.number.in_(wanted), StudyPhoneNumber.study_id != self.study.id)
        ).all())
        for index, number in enumerate(wanted):
            if number in taken:
                self.error(("study", "phone_numbers", index),
                           f"{number} is already a number of study {taken[number]}: "
                           "a dialed number routes calls to one study")
            elif number not in rows:
                self.session.add(StudyPhoneNumber(study_id=self.study.id, number=number))
                self.record("phone_number_added", "study_phone_number", number,
                            new={"number": number})
        for number, row in rows.items():
            if number not in wanted:
                self.session.delete(row)
                self.record("phone_number_removed", "study_phone_number", number,
                            old={"number": number})

    # --- arms ----------------------------------------------------------------------------

    def sync_arms(self) -> dict[str, Arm]:
        rows = {arm.code: arm for arm in self.session.scalars(
            select(Arm).where(Arm.study_id == self.study.id))}
        for position, arm in enumerate(self.d.arms):
            wanted = {"name": arm.name, "position": position}
            row = rows.get(arm.code)
            if row is None:
                rows[arm.code] = Arm(study_id=self.study.id, code=arm.code, **wanted)
                self.session.add(rows[arm.code])
                self.record("arm_created", "arm", arm.code, new={"code": arm.code, **wanted})
            else:
                self.update_row(row, "arm_updated", "arm", arm.code,
                                {"name": row.name, "position": row.position}, wanted)
        in_file = {arm.code for arm in self.d.arms}
        for code, row in list(rows.items()):
            if code not in in_file:
                self.remove_arm(row)
                del rows[code]
        self.session.flush()
        return rows

    def remove_arm(self, row: Arm) -> None:
        uses = self.uses(row.id, [(Randomization.arm_id, "randomizations"),
                                  (ListEntry.arm_id, "list entries"),
                                  (MinimizationCount.arm_id, "minimization counts")])
        if uses:
            self.error(("arms",), f"arm {row.code!r} is no longer in the file but has "
                                  f"{', '.join(uses)}: an arm in use cannot be removed")
            return
        self.session.delete(row)
        self.record("arm_removed", "arm", row.code, old={"code": row.code, "name": row.name})

    def update_row(self, row: Any, action: str, entity_type: str, entity_id: str,
                   current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
        """Set the plain columns that differ and audit them; returns the new values."""
        old, new = _diff(current, wanted)
        for name, value in new.items():
            setattr(row, name, value)
        if new:
            self.record(action, entity_type, entity_id, old=old, new=new)
        return new

    # --- kit types -------------------------------------------------------------------------

    def sync_kit_types(self, arms: dict[str, Arm]) -> None:
        """Kit types become rows (kits point at them); their arm is unblinded information."""
        rows = {kt.code: kt for kt in self.session.scalars(
            select(KitType).where(KitType.study_id == self.study.id))}
        for kit_type in self.d.kit_types or []:
            row = rows.get(kit_type.code)
            arm = arms[kit_type.arm]
            if row is None:
                self.session.add(KitType(study_id=self.study.id, code=kit_type.code,
                                         arm_id=arm.id))
                # "kit_type" is an unblinded audit key: blinded views redact it.
                self.record("kit_type_created", "kit_type", kit_type.code,
                            new={"kit_type": {"code": kit_type.code, "arm": kit_type.arm}})
            elif row.arm_id != arm.id:
                if self.uses(row.id, [(Kit.kit_type_id, "kits")]):
                    self.error(("kit_types",), f"kit type {kit_type.code!r} has kits: "
                                               "its arm cannot change")
                    continue
                row.arm_id = arm.id
                self.record("kit_type_updated", "kit_type", kit_type.code,
                            new={"kit_type": {"code": kit_type.code, "arm": kit_type.arm}})
        in_file = {kit_type.code for kit_type in self.d.kit_types or []}
        for code, row in rows.items():
            if code in in_file:
                continue
            if self.uses(row.id, [(Kit.kit_type_id, "kits")]):
                self.error(("kit_types",), f"kit type {code!r} is no longer in the file "
                                           "but has kits: it cannot be removed")
                continue
            self.session.delete(row)
            self.record("kit_type_removed", "kit_type", code, old={"kit_type": {"code": code}})
        self.session.flush()

    # --- randomization events ------------------------------------------------------------

    def sync_events(self, arms: dict[str, Arm]) -> None:
        rows = {event.code: event for event in self.session.scalars(
            select(RandomizationEvent).where(RandomizationEvent.study_id == self.study.id)
            .options(selectinload(RandomizationEvent.factors).selectinload(Factor.levels)))}
        for position, event in enumerate(self.d.events):
            row = rows.get(event.event)
            if row is None:
                self.create_event(event, position)
            else:
                self.update_event(row, event, position, ("randomization", position))
        in_file = {event.event for event in self.d.events}
        for code, row in rows.items():
            if code not in in_file:
                self.remove_event(row)

    @staticmethod
    def event_settings(event: EventDef, position: int) -> dict[str, Any]:
        return {"position": position, "method": event.method, "ratio": dict(event.ratio or {}),
                "stratify_by_site": event.stratify_by_site, "params": event.params(),
                "caps": dict(event.caps)}

    @staticmethod
    def factor_view(factors) -> list[dict[str, Any]]:
        return [{"code": f.code, "levels": [getattr(level, "code", level) for level in f.levels]}
                for f in factors]

    def create_event(self, event: EventDef, position: int) -> None:
        settings = self.event_settings(event, position)
        row = RandomizationEvent(study_id=self.study.id, code=event.event, **settings)
        self.session.add(row)
        self.session.flush()
        self.add_factors(row, event)
        self.sync_cap_counters(row, event.caps)
        self.record("event_created", "randomization_event", event.event,
                    new={**settings, "factors": self.factor_view(event.factors)})

    def update_event(self, row: RandomizationEvent, event: EventDef, position: int,
                     path: tuple) -> None:
        uses = self.uses(row.id, [(Randomization.event_id, "randomizations"),
                                  (ListEntry.event_id, "list entries")])
        current = {"position": row.position, "method": row.method, "ratio": row.ratio,
                   "stratify_by_site": row.stratify_by_site, "params": row.params,
                   "caps": row.caps}
        old, new = _diff(current, self.event_settings(event, position))
        for frozen in ("method", "stratify_by_site"):
            if frozen in new and uses:
                self.error(path + (frozen,),
                           f"event {row.code} already has {', '.join(uses)}: its {frozen} "
                           f"cannot change (it is {_show(old[frozen])})")
        for name, value in new.items():
            setattr(row, name, value)
        if "ratio" in new:
            self.record("ratio_changed", "randomization_event", row.code,
                        old={"ratio": old.pop("ratio")}, new={"ratio": new.pop("ratio")})
        if new:
            self.record("event_updated", "randomization_event", row.code, old=old, new=new)
        self.sync_factors(row, event, path, uses)
        self.sync_cap_counters(row, event.caps)

    def sync_factors(self, row: RandomizationEvent, event: EventDef, path: tuple,
                     uses: list[str]) -> None:
        stored, wanted = self.factor_view(row.factors), self.factor_view(event.factors)
        if stored == wanted:
            # Weights mirror params["minimization"]["weights"], audited with the params.
            weights = self.factor_weights(event)
            for factor in row.factors:
                factor.weight = weights[factor.code]
            return
        if uses:
            shown = ", ".join(f"{f['code']} [{', '.join(f['levels'])}]" for f in stored)
            self.error(path + ("factors",),
                       f"event {row.code} already has {', '.join(uses)}: its factors and "
                       f"levels cannot change (they are {shown or 'none'})")
            return
        row.factors.clear()
        # Delete the old rows before inserting new ones with the same codes.
        self.session.flush()
        self.add_factors(row, event)
        self.record("factors_changed", "randomization_event", row.code,
                    old={"factors": stored}, new={"factors": wanted})

    @staticmethod
    def factor_weights(event: EventDef) -> dict[str, float]:
        weights = (event.params()["minimization"] or {}).get("weights", {})
        return {f.code: float(weights.get(f.code, 1.0)) for f in event.factors}

    def add_factors(self, row: RandomizationEvent, event: EventDef) -> None:
        weights = self.factor_weights(event)
        for position, factor in enumerate(event.factors):
            row.factors.append(Factor(
                study_id=self.study.id, code=factor.code, position=position,
                weight=weights[factor.code],
                levels=[FactorLevel(study_id=self.study.id, code=level, position=index)
                        for index, level in enumerate(factor.levels)],
            ))
        self.session.flush()

    def sync_cap_counters(self, row: RandomizationEvent, caps: dict[str, int]) -> None:
        """One counter per cap. A changed limit keeps its count; a new cap starts
        from the subjects it already covers, so that adding one mid-study cannot
        let enrollment overshoot it."""
        counters = {counter.cap_key: counter for counter in self.session.scalars(
            select(CapCounter).where(CapCounter.event_id == row.id))}
        for key, limit in caps.items():
            counter = counters.get(key)
            if counter is None:
                self.session.add(CapCounter(study_id=self.study.id, event_id=row.id, cap_key=key,
                                            cap=limit, count=self.covered_count(row, key)))
            elif counter.cap != limit:
                counter.cap = limit
        for key, counter in counters.items():
            if key not in caps:
                self.session.delete(counter)

    def covered_count(self, row: RandomizationEvent, cap_key: str) -> int:
        if row.id is None:
            return 0
        randomized = self.session.execute(
            select(Randomization.stratum_key, Randomization.factors, Site.code)
            .join(Subject, Subject.id == Randomization.subject_id)
            .join(Site, Site.id == Subject.site_id)
            .where(Randomization.event_id == row.id))
        return sum(1 for key, levels, site in randomized
                   if cap_matches(cap_key, {**parse_key(key), **(levels or {}), "site": site}))

    def remove_event(self, row: RandomizationEvent) -> None:
        uses = self.uses(row.id, [(Randomization.event_id, "randomizations"),
                                  (ListEntry.event_id, "list entries"),
                                  (RandomizationList.event_id, "randomization lists"),
                                  (StratumCounter.event_id, "stratum counters"),
                                  (MinimizationCount.event_id, "minimization counts")])
        if uses:
            self.error(("randomization",), f"event {row.code} is no longer in the file but has "
                                           f"{', '.join(uses)}: an event in use cannot be removed")
            return
        self.session.execute(delete(CapCounter).where(CapCounter.event_id == row.id))
        self.session.delete(row)  # its factors and levels go with it
        self.record("event_removed", "randomization_event", row.code,
                    old={"method": row.method, "factors": self.factor_view(row.factors)})

    # --- depots and sites ----------------------------------------------------------------

    def sync_depots(self) -> dict[str, Depot]:
        rows = {depot.code: depot for depot in self.session.scalars(
            select(Depot).where(Depot.study_id == self.study.id))}
        for depot in self.d.depots:
            wanted = {"name": depot.name, "country": depot.country}
            row = rows.get(depot.code)
            if row is None:
                rows[depot.code] = Depot(study_id=self.study.id, code=depot.code, **wanted)
                self.session.add(rows[depot.code])
                self.record("depot_created", "depot", depot.code,
                            new={"code": depot.code, **wanted})
            else:
                self.update_row(row, "depot_updated", "depot", depot.code,
                                {"name": row.name, "country": row.country}, wanted)
        self.session.flush()
        return rows

    def remove_depots(self, rows: dict[str, Depot]) -> None:
        """After the sites: a site may have just moved away from a removed depot."""
        in_file = {depot.code for depot in self.d.depots}
        for code, row in rows.items():
            if code in in_file:
                continue
            self.session.flush()
            users = self.session.scalars(select(Site.code).where(Site.depot_id == row.id)).all()
            if users:
                self.error(("depots",), f"depot {code} is no longer in the file but supplies "
                                        f"site(s) {', '.join(sorted(users))}, deactivated ones "
                                        "included: a depot in use cannot be removed")
                continue
            self.session.delete(row)
            self.record("depot_removed", "depot", code, old={"code": code, "name": row.name})

    def sync_sites(self, depots: dict[str, Depot]) -> dict[str, Site]:
        rows = {site.code: site for site in self.session.scalars(
            select(Site).where(Site.study_id == self.study.id))}
        depot_codes = {depot.id: code for code, depot in depots.items()}
        for site in self.d.sites:
            wanted = {"name": site.name, "country": site.country, "language": site.language,
                      "timezone": site.timezone, "depot": site.depot,
                      "shipping_days": site.shipping_days, "active": True}
            row = rows.get(site.code)
            if row is None:
                rows[site.code] = row = Site(study_id=self.study.id, code=site.code)
                self.session.add(row)
                self.set_site(row, wanted, depots)
                wanted.pop("active")
                self.record("site_created", "site", site.code, new={"code": site.code, **wanted})
                continue
            current = {"name": row.name, "country": row.country, "language": row.language,
                       "timezone": row.timezone, "depot": depot_codes.get(row.depot_id),
                       "shipping_days": row.shipping_days, "active": row.active}
            old, new = _diff(current, wanted)
            if new:
                self.set_site(row, new, depots)
                self.record("site_updated", "site", site.code, old=old, new=new)
        in_file = {site.code for site in self.d.sites}
        for code, row in rows.items():
            if code not in in_file and row.active:
                self.deactivate_site(row)
        self.session.flush()
        return rows

    def wanted_site_supply(self) -> dict[tuple[str, str], dict[str, int]]:
        """(site code, kit type code) -> levels, as the file's ``sites[i].resupply`` says."""
        return {(site.code, code): {"trigger": levels.trigger, "target": levels.target}
                for site in self.d.sites for code, levels in site.resupply.items()}

    def remove_site_supply(self) -> None:
        """Drop the per-site levels the file no longer gives (audited)."""
        wanted = self.wanted_site_supply()
        rows = self.session.execute(
            select(SiteSupply, Site.code, KitType.code)
            .join(Site, Site.id == SiteSupply.site_id)
            .join(KitType, KitType.id == SiteSupply.kit_type_id)
            .where(SiteSupply.study_id == self.study.id)).all()
        for row, site_code, kit_code in rows:
            if (site_code, kit_code) not in wanted:
                self.session.delete(row)
                self.record("site_supply_removed", "site", site_code, old={
                    "kit_type": {"code": kit_code, "trigger": row.trigger,
                                 "target": row.target}})
        self.session.flush()

    def sync_site_supply(self, sites: dict[str, Site]) -> None:
        """Per-site resupply levels (``sites[i].resupply``) as ``SiteSupply`` rows.

        The levels name a kit type, so they are audited under the unblinded
        ``kit_type`` key (a blinded reader sees that a site's levels changed).
        Removals happen earlier (``remove_site_supply``).
        """
        kit_types = {kt.code: kt.id for kt in self.session.scalars(
            select(KitType).where(KitType.study_id == self.study.id))}
        rows = {(row.site_id, row.kit_type_id): row for row in self.session.scalars(
            select(SiteSupply).where(SiteSupply.study_id == self.study.id))}
        for (site_code, code), levels in self.wanted_site_supply().items():
            key = (sites[site_code].id, kit_types[code])
            row = rows.get(key)
            if row is None:
                self.session.add(SiteSupply(study_id=self.study.id, site_id=key[0],
                                            kit_type_id=key[1], **levels))
                self.record("site_supply_set", "site", site_code,
                            new={"kit_type": {"code": code, **levels}})
            elif (row.trigger, row.target) != (levels["trigger"], levels["target"]):
                old = {"code": code, "trigger": row.trigger, "target": row.target}
                row.trigger, row.target = levels["trigger"], levels["target"]
                self.record("site_supply_set", "site", site_code,
                            old={"kit_type": old}, new={"kit_type": {"code": code, **levels}})
        self.session.flush()

    @staticmethod
    def set_site(row: Site, values: dict[str, Any], depots: dict[str, Depot]) -> None:
        for name, value in values.items():
            if name == "depot":
                row.depot_id = depots[value].id if value is not None else None
            else:
                setattr(row, name, value)

    def deactivate_site(self, row: Site) -> None:
        uses = self.uses(row.id, [(Subject.site_id, "subjects")])
        if uses:
            self.error(("sites",), f"site {row.code} is no longer in the file but has "
                                   f"{', '.join(uses)}: a site with subjects cannot be removed")
            return
        row.active = False
        self.record("site_deactivated", "site", row.code, old={"active": True},
                    new={"active": False})

    # --- users ---------------------------------------------------------------------------

    def sync_users(self, sites: dict[str, Site]) -> None:
        rows = {user.user_code: user for user in self.session.scalars(
            select(User).where(User.study_id == self.study.id).options(selectinload(User.sites)))}
        for user in self.d.users:
            wanted = {"name": user.name, "role": user.role, "phone": user.phone,
                      "email": user.email, "language": user.language,
                      "sites": sorted(user.sites), "active": True}
            row = rows.get(user.id)
            if row is None:
                self.create_user(user, wanted, sites)
                continue
            current = {"name": row.name, "role": row.role, "phone": row.phone,
                       "email": row.email, "language": row.language,
                       "sites": sorted(s.code for s in row.sites), "active": row.active}
            old, new = _diff(current, wanted)
            for name, value in new.items():
                if name == "sites":
                    row.sites = [sites[code] for code in value]
                else:
                    setattr(row, name, value)
            if self.sync_pin(row, user.pin):
                old["pin"], new["pin"] = None, "set"
            if new:
                self.record("user_updated", "user", user.id, old=old, new=new)
        in_file = {user.id for user in self.d.users}
        for code, row in rows.items():
            if code not in in_file and row.active:
                # Never deleted: audit rows and subjects' histories name the user.
                row.active = False
                self.record("user_deactivated", "user", code, old={"active": True},
                            new={"active": False})

    def create_user(self, user, wanted: dict[str, Any], sites: dict[str, Site]) -> None:
        row = User(study_id=self.study.id, user_code=user.id, name=user.name, role=user.role,
                   phone=user.phone, email=user.email, language=user.language,
                   sites=[sites[code] for code in wanted["sites"]],
                   pin_hash=hash_pin(user.pin) if user.pin else None, pin_temporary=False)
        self.session.add(row)
        new = {key: value for key, value in wanted.items() if key != "active"}
        if user.pin:
            new["pin"] = "set"  # never the PIN, nor its hash
        self.record("user_created", "user", user.id, new=new)

    @staticmethod
    def sync_pin(row: User, pin: str | None) -> bool:
        """Set the file's PIN only for a user who has none yet; True when set.

        A PIN in the file is an initial PIN. Once a user has one, a reload
        never replaces it: if the stored hash still matches the file's PIN
        there is nothing to do, and if it does not, the user has changed their
        PIN by phone since and that PIN stands (a reload must not undo it). So
        the stored hash is never compared (which would also cost an argon2
        check per user per reload); ``ivrs users reset-pin`` is how an
        administrator replaces a PIN.
        """
        if pin is None or row.pin_hash is not None:
            return False
        row.pin_hash = hash_pin(pin)
        row.pin_temporary = False
        return True
