"""``ivrs kits import FILE.csv``: the kit list a depot or the sponsor provides (SPEC §5).

The CSV (UTF-8, a BOM accepted) has the header
``kit_number,kit_type,lot,expiry_date,location``. Each row is one kit:

- ``kit_number``: digits (typed on a keypad), unique in the file and the study;
- ``kit_type``: a kit type of the study;
- ``lot``: the lot code; a lot is (kit type, lot code) and has one expiry date,
  in the file and against lots already imported;
- ``expiry_date``: ``YYYY-MM-DD``, not already past;
- ``location``: a depot code (the kit is ``at_depot``) or a site code (the kit
  is ``available`` at the site, for stock delivered outside the system).

As for the randomization list (core/mrl.py), every problem is reported with
its line (the header is line 1) and column, one bad row rejects the whole file
and nothing is written; rows go in with chunked Core inserts so that 100,000
kits load in seconds. The audit record names the file, its SHA-256 and the
counts per location; counts per kit type are kept only under the unblinded
``kit_type`` key (kit types map to arms), and lot codes are not listed at all
(a lot belongs to one kit type, so its code would reveal the type).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from core.audit import AuditLog
from core.clock import today, utcnow
from core.csv_input import CsvParser, decode, read_bytes
from core.db import Database
from core.errors import FileError, FileErrors
from core.models import Depot, Site, Study
from core.studies import get_study
from core.supply.lifecycle import AT_DEPOT, AVAILABLE
from core.models import Kit, KitType, Lot

COLUMNS = ("kit_number", "kit_type", "lot", "expiry_date", "location")
KIT_NUMBER = re.compile(r"[0-9]{1,20}")  # fits Kit.kit_number; read out on the phone
ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
MAX_LOT = 40  # Lot.code
INSERT_CHUNK = 10_000


@dataclass
class KitImportResult:
    rows: int
    lots: int  # lots created by this file (lots already known are not counted)


@dataclass
class KitRow:
    line: int
    number: str
    kit_type_id: int
    lot: str
    expiry: date
    depot_id: int | None
    site_id: int | None
    location: str


@dataclass
class KitRules:
    """What a row may contain, read once from the database."""

    kit_types: dict[str, int]  # code -> id
    depots: dict[str, int]
    sites: dict[str, int]
    taken_numbers: set[str]
    lots: dict[tuple[int, str], tuple[int, date]]  # (kit type id, code) -> (id, expiry)

    @classmethod
    def of(cls, session: Session, study: Study) -> KitRules:
        # FOR UPDATE on the kit types: two imports at once would both find a
        # number free; the second waits and then sees the first one's kits.
        kit_types = dict(session.execute(
            select(KitType.code, KitType.id).where(KitType.study_id == study.id)
            .order_by(KitType.id).with_for_update()).all())
        return cls(
            kit_types=kit_types,
            depots=dict(session.execute(
                select(Depot.code, Depot.id).where(Depot.study_id == study.id)).all()),
            sites=dict(session.execute(
                select(Site.code, Site.id).where(Site.study_id == study.id,
                                                 Site.active.is_(True))).all()),
            taken_numbers=set(session.scalars(
                select(Kit.kit_number).where(Kit.study_id == study.id))),
            lots={(kit_type_id, code): (lot_id, expiry)
                  for lot_id, kit_type_id, code, expiry in session.execute(
                      select(Lot.id, Lot.kit_type_id, Lot.code, Lot.expiry_date)
                      .where(Lot.study_id == study.id))},
        )


def import_kits(db: Database, path: str | Path, *, study_code: str | None = None,
                actor: str = "cli") -> KitImportResult:
    """Import a kit list; raises ``FileErrors`` (writing nothing) when any row is bad."""
    file = str(path)
    raw = read_bytes(file)
    text = decode(raw, file)
    with db.transaction() as session:
        study = get_study(session, study_code)
        rules = KitRules.of(session, study)
        if not rules.kit_types:
            raise FileErrors([FileError(file, None, None, f"study {study.code} has no kit "
                                        "types: add kit_types to the study file first")])
        parser = KitParser(file, rules, today())
        rows = parser.parse(text)
        return _store(session, study, rules, parser, rows, file, raw, actor)


class KitParser(CsvParser):
    """Reads the CSV against the rules, collecting every problem (up to a limit)."""

    def __init__(self, file: str, rules: KitRules, today: date):
        super().__init__(file)
        self.rules, self.today = rules, today
        self.first_line_of: dict[str, int] = {}  # kit number -> line
        # lots met in this file: (kit type id, code) -> (expiry, first line)
        self.file_lots: dict[tuple[int, str], tuple[date, int]] = {}

    def read_header(self, header: list[str] | None) -> list[str]:
        if not header or not any(name.strip() for name in header):
            self.error(1, None, f"the file is empty: expected the header {','.join(COLUMNS)}")
            raise self.fail()
        columns = [name.strip() for name in header]
        for name in COLUMNS:
            if name not in columns:
                self.error(1, name, f"missing column {name!r} (the header is "
                                    f"{','.join(COLUMNS)})")
        for index, name in enumerate(columns):
            if name not in COLUMNS:
                self.error(1, name or f"column {index + 1}",
                           f"unknown column {name!r} (columns: {', '.join(COLUMNS)})")
            elif name in columns[:index]:
                self.error(1, name, f"column {name!r} appears twice")
        if self.error_count:
            raise self.fail()
        return columns

    def read_row(self, line: int, values: dict[str, str]) -> KitRow | None:
        errors_before = self.error_count
        number = self.check_number(line, values["kit_number"])
        kit_type_id = self.check_kit_type(line, values["kit_type"])
        expiry = self.check_expiry(line, values["expiry_date"])
        lot = values["lot"]
        if not lot:
            self.error(line, "lot", "empty; expected the lot code")
        elif len(lot) > MAX_LOT:
            self.error(line, "lot", f"longer than {MAX_LOT} characters")
        elif kit_type_id is not None and expiry is not None:
            self.check_lot(line, kit_type_id, lot, expiry)
        depot_id, site_id = self.check_location(line, values["location"])
        if self.error_count > errors_before:
            return None
        return KitRow(line, number, kit_type_id, lot, expiry, depot_id, site_id,
                      values["location"])

    def check_number(self, line: int, number: str) -> str:
        if not KIT_NUMBER.fullmatch(number):
            self.error(line, "kit_number", f"{number!r} is not a kit number "
                                           "(1 to 20 digits: it is typed on a keypad)")
        elif number in self.first_line_of:
            self.error(line, "kit_number", f"duplicate kit number {number} "
                                           f"(first at line {self.first_line_of[number]})")
        elif number in self.rules.taken_numbers:
            self.error(line, "kit_number", f"kit number {number} is already in the study")
        else:
            self.first_line_of[number] = line
        return number

    def check_kit_type(self, line: int, code: str) -> int | None:
        kit_type_id = self.rules.kit_types.get(code)
        if kit_type_id is None:
            # Whoever imports kits sees the list anyway: naming the types is fine here.
            known = ", ".join(self.rules.kit_types)
            self.error(line, "kit_type", f"unknown kit type {code!r} (kit types: {known})"
                       if code else f"empty; expected a kit type ({known})")
        return kit_type_id

    def check_expiry(self, line: int, value: str) -> date | None:
        expiry = None
        if ISO_DATE.fullmatch(value):
            try:
                expiry = date.fromisoformat(value)
            except ValueError:
                pass
        if expiry is None:
            self.error(line, "expiry_date", f"{value!r} is not a date (YYYY-MM-DD)")
        elif expiry < self.today:
            self.error(line, "expiry_date", f"{value} is in the past: the kit has expired")
            expiry = None
        return expiry

    def check_lot(self, line: int, kit_type_id: int, lot: str, expiry: date) -> None:
        key = (kit_type_id, lot)
        known = self.rules.lots.get(key)
        if known is not None and known[1] != expiry:
            self.error(line, "expiry_date", f"lot {lot} already expires on "
                                            f"{known[1].isoformat()}, not {expiry.isoformat()}")
            return
        seen = self.file_lots.get(key)
        if seen is None:
            self.file_lots[key] = (expiry, line)
        elif seen[0] != expiry:
            self.error(line, "expiry_date", f"lot {lot} expires on {seen[0].isoformat()} "
                                            f"at line {seen[1]}, not {expiry.isoformat()}: "
                                            "a lot has one expiry date")

    def check_location(self, line: int, code: str) -> tuple[int | None, int | None]:
        depot_id, site_id = self.rules.depots.get(code), self.rules.sites.get(code)
        if depot_id is not None and site_id is not None:
            self.error(line, "location", f"{code!r} is both a depot and a site code")
        elif depot_id is None and site_id is None:
            self.error(line, "location", f"unknown location {code!r} (a depot code: "
                                         f"{', '.join(self.rules.depots) or 'none'}; "
                                         "or an active site code)"
                       if code else "empty; expected a depot or site code")
        return depot_id, site_id


def _store(session: Session, study: Study, rules: KitRules, parser: KitParser,
           rows: list[KitRow], file: str, raw: bytes, actor: str) -> KitImportResult:
    lot_ids = {key: lot_id for key, (lot_id, _expiry) in rules.lots.items()}
    new_lots = [Lot(study_id=study.id, kit_type_id=kit_type_id, code=code, expiry_date=expiry)
                for (kit_type_id, code), (expiry, _line) in parser.file_lots.items()
                if (kit_type_id, code) not in lot_ids]
    session.add_all(new_lots)
    session.flush()
    lot_ids.update({(lot.kit_type_id, lot.code): lot.id for lot in new_lots})
    now = utcnow()
    kits = [{"study_id": study.id, "kit_number": row.number, "kit_type_id": row.kit_type_id,
             "lot_id": lot_ids[(row.kit_type_id, row.lot)], "expiry_date": row.expiry,
             # Creation, not a move: a kit starts where the list puts it.
             "status": AT_DEPOT if row.depot_id is not None else AVAILABLE,
             "depot_id": row.depot_id, "site_id": row.site_id, "updated_at": now}
            for row in rows]
    for start in range(0, len(kits), INSERT_CHUNK):
        session.execute(insert(Kit), kits[start:start + INSERT_CHUNK])
    type_codes = {kit_type_id: code for code, kit_type_id in rules.kit_types.items()}
    digest = hashlib.sha256(raw).hexdigest()
    audit = AuditLog(study.id, actor)
    audit.record("kits_imported", "kit_list", Path(file).name, new={
        "file": Path(file).name, "sha256": digest, "rows": len(rows), "lots": len(new_lots),
        "locations": dict(sorted(Counter(row.location for row in rows).items())),
        # Counts per kit type reveal how many kits of each arm exist: unblinded key only.
        "kit_type": dict(sorted(Counter(type_codes[row.kit_type_id] for row in rows).items())),
    })
    audit.seal(session)
    return KitImportResult(rows=len(rows), lots=len(new_lots))
