"""``ivrs mrl import FILE.csv``: a statistician's master randomization list (SPEC §5).

The CSV (UTF-8, a BOM accepted) has the header ``randomization_number,arm``,
one column per stratification factor of the event (named by the factor code),
``site`` when the event stratifies by site, and optionally ``block`` and
``cohort``. Within a stratum, rows are used in file order: each row becomes
the next position of its stratum (after the entries a previous import left,
so a second list extends the first).

Every row is checked and every problem reported with its line (the header is
line 1) and column; one bad row rejects the whole file and nothing is written.
The audit record names the file, its SHA-256, the row and stratum counts, but
never an arm: blinded people read the audit trail.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, selectinload

from core.audit import AuditLog
from core.csv_input import CsvParser, decode, read_bytes
from core.db import Database
from core.errors import NotFound, Refused
from core.models import (
    Arm,
    Factor,
    ListEntry,
    RandomizationEvent,
    RandomizationList,
    Site,
    Study,
)
from core.randomization.strata import stratum_key
from core.studies import get_study

NUMBER = re.compile(r"[0-9]{1,20}")  # a keypad identifier that fits the column
OPTIONAL_COLUMNS = ("block", "cohort")
MAX_TEXT = 40  # block and cohort columns
INSERT_CHUNK = 10_000


@dataclass
class ImportResult:
    rows: int
    strata: int
    list_id: int


@dataclass
class ListRow:
    line: int
    number: str
    arm_id: int
    stratum: str
    block: str | None
    cohort: str | None


def import_mrl(db: Database, path: str | Path, *, study_code: str | None = None,
               event_code: str | None = None, actor: str = "cli") -> ImportResult:
    """Import a list for an event of method ``list``; raises ``FileErrors``, writing nothing.

    Without ``study_code``, the only study loaded; without ``event_code``, the
    study's first event of method ``list``.
    """
    file = str(path)
    raw = read_bytes(file)
    text = decode(raw, file)
    with db.transaction() as session:
        study = get_study(session, study_code)
        event = _find_event(session, study, event_code)
        rules = ListRules.of(session, study, event)
        rows = ListParser(file, rules).parse(text)
        return _store(session, study, event, rules, rows, file, raw, actor)


def _find_event(session: Session, study: Study, code: str | None) -> RandomizationEvent:
    # FOR UPDATE: two imports for one event would compute the same positions.
    events = session.scalars(
        select(RandomizationEvent).where(RandomizationEvent.study_id == study.id)
        .order_by(RandomizationEvent.position).with_for_update()
    ).all()
    listing = ", ".join(f"{e.code} ({e.method})" for e in events) or "none"
    if code is None:
        event = next((e for e in events if e.method == "list"), None)
        if event is None:
            raise Refused(f"no randomization event of study {study.code} uses method list "
                          f"(events: {listing})", code="no_list_event")
        return event
    event = next((e for e in events if e.code == code), None)
    if event is None:
        raise NotFound(f"study {study.code} has no event {code!r} (events: {listing})",
                       code="unknown_event")
    if event.method != "list":
        raise Refused(f"event {event.code} uses method {event.method}, not list: it takes no "
                      "uploaded list", code="not_list_method")
    return event


@dataclass
class ListRules:
    """What a row of this event's list may contain."""

    event: RandomizationEvent
    arms: dict[str, int]  # code -> id
    factors: dict[str, list[str]]  # code -> levels, in file order
    sites: set[str]
    cohorts: list[str]
    taken_numbers: set[str]  # already in this event's lists
    last_positions: dict[str, int]  # stratum key -> highest position so far

    @classmethod
    def of(cls, session: Session, study: Study, event: RandomizationEvent) -> ListRules:
        event = session.scalars(
            select(RandomizationEvent).where(RandomizationEvent.id == event.id)
            .options(selectinload(RandomizationEvent.factors).selectinload(Factor.levels))).one()
        return cls(
            event=event,
            arms=dict(session.execute(
                select(Arm.code, Arm.id).where(Arm.study_id == study.id)).all()),
            factors={f.code: [level.code for level in f.levels] for f in event.factors},
            sites=set(session.scalars(select(Site.code).where(Site.study_id == study.id))),
            cohorts=list((event.params or {}).get("cohorts") or []),
            taken_numbers=set(session.scalars(
                select(ListEntry.randomization_number).where(ListEntry.event_id == event.id))),
            last_positions=dict(session.execute(
                select(ListEntry.stratum_key, func.max(ListEntry.position))
                .where(ListEntry.event_id == event.id).group_by(ListEntry.stratum_key)).all()),
        )

    def required_columns(self) -> list[str]:
        site = ["site"] if self.event.stratify_by_site else []
        return ["randomization_number", "arm", *self.factors, *site]


class ListParser(CsvParser):
    """Reads the CSV against the rules, collecting every problem."""

    def __init__(self, file: str, rules: ListRules):
        super().__init__(file)
        self.rules = rules
        self.first_line_of: dict[str, int] = {}  # randomization number -> line

    def read_header(self, header: list[str] | None) -> list[str]:
        required = self.rules.required_columns()
        if not header or not any(name.strip() for name in header):
            self.error(1, None, f"the file is empty: expected the header {','.join(required)}")
            raise self.fail()
        columns = [name.strip() for name in header]
        allowed = required + list(OPTIONAL_COLUMNS)
        for name in required:
            if name not in columns:
                self.error(1, name, f"missing column {name!r} (the header of event "
                                    f"{self.rules.event.code} is {','.join(required)}, "
                                    f"optionally with {', '.join(OPTIONAL_COLUMNS)})")
        for index, name in enumerate(columns):
            if name not in allowed:
                self.error(1, name or f"column {index + 1}",
                           f"unknown column {name!r} (columns: {', '.join(allowed)})")
            elif name in columns[:index]:
                self.error(1, name, f"column {name!r} appears twice")
        if self.error_count:
            raise self.fail()
        return columns

    def read_row(self, line: int, values: dict[str, str]) -> ListRow | None:
        errors_before = self.error_count
        rules = self.rules
        number = self.check_number(line, values["randomization_number"])
        arm_id = rules.arms.get(values["arm"])
        if arm_id is None:
            self.error(line, "arm", f"unknown arm {values['arm']!r} "
                                    f"(arms: {', '.join(rules.arms)})")
        levels = {}
        for factor, allowed in rules.factors.items():
            levels[factor] = self.check_choice(line, factor, values[factor], allowed, "level")
        site = None
        if rules.event.stratify_by_site:
            site = self.check_choice(line, "site", values["site"], sorted(rules.sites), "site")
        cohort = values.get("cohort") or None
        if cohort is not None:
            cohort = self.check_choice(line, "cohort", cohort, rules.cohorts, "cohort")
        block = values.get("block") or None
        for column, value in (("block", block), ("cohort", cohort)):
            if value is not None and len(value) > MAX_TEXT:
                self.error(line, column, f"longer than {MAX_TEXT} characters")
        if self.error_count > errors_before:
            return None
        key = stratum_key(rules.factors, levels, site=site, cohort=cohort)
        return ListRow(line, number, arm_id, key, block, cohort)

    def check_number(self, line: int, number: str) -> str:
        column = "randomization_number"
        if not NUMBER.fullmatch(number):
            self.error(line, column, f"{number!r} is not a randomization number "
                                     "(1 to 20 digits: it is read out on the phone)")
        elif number in self.first_line_of:
            self.error(line, column, f"duplicate randomization number {number} "
                                     f"(first at line {self.first_line_of[number]})")
        elif number in self.rules.taken_numbers:
            self.error(line, column, f"randomization number {number} is already in a list "
                                     f"of event {self.rules.event.code}")
        else:
            self.first_line_of[number] = line
        return number

    def check_choice(self, line: int, column: str, value: str, allowed: list[str],
                     what: str) -> str:
        """``value`` must be one of ``allowed``; ``what`` is "site", "cohort" or "level"."""
        if value not in allowed:
            shown = ", ".join(allowed[:12]) + (", ..." if len(allowed) > 12 else "")
            of_factor = f" of {column}" if what == "level" else ""
            self.error(line, column,
                       f"unknown {what} {value!r}{of_factor} ({what}s: {shown or 'none'})"
                       if value else f"empty; expected a {what}{of_factor} ({shown or 'none'})")
        return value


def _store(session: Session, study: Study, event: RandomizationEvent, rules: ListRules,
           rows: list[ListRow], file: str, raw: bytes, actor: str) -> ImportResult:
    digest = hashlib.sha256(raw).hexdigest()
    name = Path(file).name
    listing = RandomizationList(study_id=study.id, event_id=event.id, kind="uploaded",
                                source=name, sha256=digest, rows=len(rows))
    session.add(listing)
    session.flush()
    positions = dict(rules.last_positions)
    entries = []
    for row in rows:
        positions[row.stratum] = positions.get(row.stratum, 0) + 1
        entries.append({"study_id": study.id, "event_id": event.id, "list_id": listing.id,
                        "stratum_key": row.stratum, "position": positions[row.stratum],
                        "randomization_number": row.number, "arm_id": row.arm_id,
                        "block": row.block, "cohort": row.cohort})
    # Core inserts in chunks: no ORM object per row, and bounded statement size.
    for start in range(0, len(entries), INSERT_CHUNK):
        session.execute(insert(ListEntry), entries[start:start + INSERT_CHUNK])
    strata = len({row.stratum for row in rows})
    audit = AuditLog(study.id, actor)
    # No arms here, not even counts per arm: the audit trail is read by blinded people.
    audit.record("mrl_imported", "randomization_list", listing.id, new={
        "event": event.code, "file": name, "sha256": digest, "rows": len(rows),
        "strata": strata,
    })
    audit.seal(session)
    return ImportResult(rows=len(rows), strata=strata, list_id=listing.id)
