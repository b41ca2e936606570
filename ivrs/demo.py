"""``ivrs demo``: a demo study in a SQLite file, played through the core services.

This first version drives the services directly (the voice and SMS dialogs
arrive with their own issues and will replace these calls with real ones). It
shows what a site sees: subject numbers, randomization numbers, confirmation
numbers, refusals with their reasons; and what the sponsor sees: the blinded
subjects report and the audit chain's verification.
"""

from __future__ import annotations

import csv
import io
import os
import random
from contextlib import contextmanager
from datetime import date, timedelta
from importlib.resources import files
from pathlib import Path
from typing import Callable

from core.actors import Actor
from core.audit import verify
from core.clock import today
from core.db import Database
from core.errors import IvrsError
from core.migrate import upgrade
from core.mrl import import_mrl
from core.randomize import randomize
from core.reports import subjects as subjects_report
from core.studies import get_study
from core.study_loader import load_study
from core.subjects import record_screen_failure, screen_subject
from core.supply.dispensing import dispense
from core.supply.dispensing_report import dispensing as dispensing_report
from core.supply.kit_import import import_kits
from core.supply.receipt import receive_shipment
from core.supply.reports import site_inventory
from core.supply.resupply import run_resupply
from core.supply.shipments import dispatch_shipment

STUDY_CODE = "DEMO-301"
STRATA = [("M", "LT65"), ("M", "GE65"), ("F", "LT65"), ("F", "GE65")]


def write_demo_mrl(path: Path, per_stratum: int = 30, seed: int = 301) -> None:
    """A 2:1 list in permuted blocks of 3, as a statistician would hand it over."""
    rng = random.Random(seed)
    number = 1000
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["randomization_number", "arm", "SEX", "AGE", "block"])
        for sex, age in STRATA:
            for block in range(per_stratum // 3):
                arms = ["A", "A", "P"]
                rng.shuffle(arms)
                for arm in arms:
                    number += 1
                    writer.writerow([number, arm, sex, age, f"{sex}{age}-{block + 1}"])


def write_demo_kits(path: Path, expiry: date, seed: int = 302) -> None:
    """A kit list (SPEC §5): stock at the depot and a first supply at sites 101 and 102.

    Kit numbers are random digits, so that they say nothing about the kit type.
    """
    rng = random.Random(seed)
    numbers = rng.sample(range(100000, 999999), 60)
    rows = []
    for location, per_type in (("101", 3), ("102", 3), ("90", 24)):
        for kit_type, lot in (("KA", "LA1"), ("KP", "LP1")):
            rows += [(kit_type, lot, location)] * per_type
    rng.shuffle(rows)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["kit_number", "kit_type", "lot", "expiry_date", "location"])
        for number, (kit_type, lot, location) in zip(numbers, rows):
            writer.writerow([number, kit_type, lot, expiry.isoformat(), location])


def _csv(columns, rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue().rstrip("\n")


@contextmanager
def days_later(days: int):
    """UAT time travel (SPEC §2 IVRS_TODAY): the system takes today + days as today."""
    previous = os.environ.get("IVRS_TODAY")
    start = date.fromisoformat(previous) if previous else today()
    os.environ["IVRS_TODAY"] = (start + timedelta(days=days)).isoformat()
    try:
        yield today()
    finally:
        if previous is None:
            os.environ.pop("IVRS_TODAY", None)
        else:
            os.environ["IVRS_TODAY"] = previous


def play_supply(db: Database, echo: Callable[[str], None], paris: Actor) -> None:
    """The supply half: resupply, a shipment dispatched and received, visits."""
    depot = Actor(role="depot_manager", user_code="7001", channel="demo")
    echo("")
    echo("== supply run (resupply job)")
    shipments = run_resupply(db, study=STUDY_CODE)
    for shipment in shipments:
        echo(f"shipment {shipment.shipment_number} to site {shipment.site}: {shipment.kits} kits"
             f" ({shipment.reason})")
    for shipment in shipments:
        dispatch_shipment(db, shipment_number=shipment.shipment_number, carrier="DHL",
                          tracking_number=f"JD0146{shipment.shipment_number}", actor=depot,
                          study=STUDY_CODE)
        echo(f"[depot 90, user 7001] dispatched shipment {shipment.shipment_number} with DHL")
    to_paris = next((s for s in shipments if s.site == "101"), None)
    if to_paris is not None:
        received = receive_shipment(db, shipment_number=to_paris.shipment_number, actor=paris,
                                    study=STUDY_CODE)
        echo(f"[site 101, user 5001] shipment {received.shipment_number} received: "
             f"{received.received} kits in good condition "
             f"(confirmation {received.confirmation})")

    echo("")
    with days_later(28) as day:
        visit = dispense(db, subject_number="1010001", actor=paris, study=STUDY_CODE)
        echo(f"[{day}] [site 101] subject 1010001 visit {visit.visit}: kit(s) "
             f"{', '.join(visit.kits)} (confirmation {visit.confirmation})")
    with days_later(56) as day:
        visit = dispense(db, subject_number="1010002", actor=paris, study=STUDY_CODE)
        missed = f"; missed and skipped: {', '.join(visit.missed)}" if visit.missed else ""
        echo(f"[{day}] [site 101] subject 1010002 visit {visit.visit}: kit(s) "
             f"{', '.join(visit.kits)}{missed} (confirmation {visit.confirmation})")
        later = run_resupply(db, study=STUDY_CODE)
        for shipment in later:
            echo(f"[{day}] supply run: stock at site {shipment.site} reached its trigger, "
                 f"shipment {shipment.shipment_number} of {shipment.kits} kits requested")


def set_up_demo_study(db: Database, workdir: Path, echo: Callable[[str], None] = print) -> None:
    """The demo study, its randomization list and its kits, in a migrated database."""
    study_file = workdir / "study.yaml"
    study_file.write_text(files("ivrs").joinpath("demo_data", "study.yaml").read_text("utf-8"),
                          encoding="utf-8")
    mrl_file = workdir / "mrl.csv"
    write_demo_mrl(mrl_file)
    loaded = load_study(db, study_file)
    echo(f"Loaded study {loaded.study_code} from {study_file}")
    imported = import_mrl(db, mrl_file, study_code=STUDY_CODE)
    echo(f"Imported the randomization list: {imported.rows} entries in {imported.strata} strata")
    kits_file = workdir / "kits.csv"
    write_demo_kits(kits_file, today() + timedelta(days=730))
    import_kits(db, kits_file, study_code=STUDY_CODE)
    echo(f"Imported the kit list {kits_file}: stock at depot 90 and at sites 101 and 102")


def run_demo(directory: str, echo: Callable[[str], None] = print) -> Database:
    workdir = Path(directory)
    workdir.mkdir(parents=True, exist_ok=True)
    database_file = workdir / "demo.sqlite3"
    if database_file.exists():
        database_file.unlink()  # a demo starts from scratch every time
    db = Database(f"sqlite:///{database_file}")
    upgrade(db.engine)
    echo(f"== ivrs demo: database {database_file}")
    set_up_demo_study(db, workdir, echo)

    # Site staff act as themselves: the coordinator in Paris, the investigator in Barcelona.
    paris = Actor(role="site_coordinator", user_code="5001", site_codes=frozenset({"101"}),
                  channel="demo")
    barcelona = Actor(role="investigator", user_code="5002", site_codes=frozenset({"102"}),
                      channel="demo")
    yes = {"INC1": True, "INC2": True, "EXC1": True}
    echo("")
    for actor, site, factors in [
        (paris, "101", {"SEX": "F", "AGE": "LT65"}),
        (paris, "101", {"SEX": "M", "AGE": "GE65"}),
        (barcelona, "102", {"SEX": "F", "AGE": "LT65"}),
        (barcelona, "102", {"SEX": "M", "AGE": "LT65"}),
    ]:
        screened = screen_subject(db, site_code=site, actor=actor, study=STUDY_CODE)
        echo(f"[site {site}, user {actor.user_code}] screened subject {screened.subject_number}"
             f" (confirmation {screened.confirmation})")
        result = randomize(db, subject_number=screened.subject_number, actor=actor,
                           study=STUDY_CODE, eligibility=yes, factors=factors)
        # What the site hears: the number, never the arm (the study is blinded).
        echo(f"[site {site}, user {actor.user_code}] randomized {result.subject_number}: "
             f"randomization number {result.randomization_number}, "
             f"kit(s) {', '.join(result.kits) or 'none'} for visit {result.visit} "
             f"(confirmation {result.confirmation})")

    echo("")
    ineligible = screen_subject(db, site_code="101", actor=paris, study=STUDY_CODE)
    try:
        randomize(db, subject_number=ineligible.subject_number, actor=paris, study=STUDY_CODE,
                  eligibility={**yes, "INC2": False}, factors={"SEX": "M", "AGE": "LT65"})
    except IvrsError as refused:
        echo(f"[site 101] randomization of {ineligible.subject_number} refused: {refused}")
    failed = record_screen_failure(db, subject_number=ineligible.subject_number,
                                   reason="inclusion criterion 2 not met", actor=paris,
                                   study=STUDY_CODE)
    echo(f"[site 101] {failed.subject_number} recorded as screen failure "
         f"(confirmation {failed.confirmation})")
    try:
        randomize(db, subject_number="1020001", actor=paris, study=STUDY_CODE,
                  eligibility=yes, factors={"SEX": "F", "AGE": "LT65"})
    except IvrsError as refused:
        echo(f"[site 101] user 5001 tried subject 1020001 of another site: {refused}")

    play_supply(db, echo, paris)

    echo("")
    with db.sessions() as session:
        study = get_study(session, STUDY_CODE)
        for title, report in (("subjects", subjects_report), ("site-inventory", site_inventory),
                              ("dispensing", dispensing_report)):
            echo(f"== {title} report (blinded)")
            columns, rows = report(session, study, True)
            echo(_csv(columns, rows))
            echo("")
        problem = verify(session, study.id)
    echo("")
    echo("== audit chain: " + ("intact" if problem is None else f"BROKEN: {problem}"))
    echo(f"Try: DATABASE_URL=sqlite:///{database_file} ivrs report randomization")
    return db
