"""``ivrs demo``: a demo study in a SQLite file, played by telephone.

The site staff's actions are real calls: a ``Phone`` speaks to the webhook
routes of the app in this process, with signed requests and the in-process
session store, exactly as Twilio would; each call is printed as the
conversation the caller has (``ivrs>`` / ``you>``). The depot's side (the
resupply job, the dispatch) goes through the services, as the depot's own
tools would. Then the sponsor's view: the blinded reports and the audit
chain's verification. Nothing printed names an arm or a kit type, except the
one answer an emergency unblinding gives its investigator.
"""

from __future__ import annotations

import csv
import io
import os
import random
import secrets
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from importlib.resources import files
from pathlib import Path

from sqlalchemy import select, update

from core.actors import Actor
from core.audit import verify
from core.clock import today
from core.db import Database
from core.migrate import upgrade
from core.models import StudyPhoneNumber, Subject, User
from core.mrl import import_mrl
from core.reports import subjects as subjects_report
from core.reports import unblinding as unblinding_report
from core.studies import get_study
from core.study_loader import load_study
from core.supply.dispensing_report import dispensing as dispensing_report
from core.supply.kit_import import import_kits
from core.models import Kit, Shipment
from core.supply.reports import site_inventory
from core.supply.resupply import run_resupply
from core.supply.shipments import dispatch_shipment

STUDY_CODE = "DEMO-301"
STRATA = [("M", "LT65"), ("M", "GE65"), ("F", "LT65"), ("F", "GE65")]


def write_demo_mrl(path: Path, per_stratum: int = 30, seed: int = 301, *,
                   numbers_after: int = 1000, block_prefix: str = "") -> None:
    """A 2:1 list in permuted blocks of 3, as a statistician would hand it over
    (a second one, numbered after the first, extends it when imported)."""
    rng = random.Random(seed)
    number = numbers_after
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["randomization_number", "arm", "SEX", "AGE", "block"])
        for sex, age in STRATA:
            for block in range(per_stratum // 3):
                arms = ["A", "A", "P"]
                rng.shuffle(arms)
                for arm in arms:
                    number += 1
                    writer.writerow([number, arm, sex, age,
                                     f"{sex}{age}-{block_prefix}{block + 1}"])


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


def set_up_demo_study(db: Database, workdir: Path, echo: Callable[[str], None] = print, *,
                      users_language: str | None = None) -> None:
    """The demo study, its randomization list and its kits, in a migrated database.

    ``users_language`` makes every user speak that language instead of the study
    file's (tests and benchmarks that read English prompts)."""
    study_file = workdir / "study.yaml"
    study_file.write_text(files("ivrs.demo").joinpath("data", "study.yaml").read_text("utf-8"),
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
    if users_language is not None:
        with db.transaction() as session:
            session.execute(update(User).values(language=users_language))



# --- the calls ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Someone of the demo study's staff, as its study file knows them."""

    who: str
    phone: str
    user: str
    pin: str


PARIS = Caller("Marie Curie, coordinator at site 101 (Paris)", "+33612345678", "5001", "2468")
BARCELONA = Caller("Santiago Ramón, investigator at site 102 (Barcelona)", "+34612345678",
                   "5002", "1357")
PASTEUR = Caller("Louis Pasteur, coordinator at site 101 (Paris), who speaks French",
                 "+33698765432", "5007", "1593")
BERLIN = Caller("Rudolf Virchow, coordinator at site 103 (Berlin)", "+4915112345678", "5003",
                "8642")
MANAGER = Caller("Florence Nightingale, project manager", "+447700900456", "6050", "3579")
DEPOT = "[depot 90, user 7001]"

# Keypad answers of the demo study's randomization questions.
ELIGIBLE = ("1", "1", "1")  # INC1, INC2, EXC1: yes
FEMALE, MALE = "2", "1"
UNDER_65, OVER_65 = "1", "2"


class DemoLine:
    """The demo's telephone line: the webhook routes of an app in this process.

    The demo makes up a Twilio auth token for its run and signs every request
    with it, so its calls pass the same signature check as Twilio's.
    """

    def __init__(self, db: Database, echo: Callable[[str], None], width: int | None) -> None:
        from ivrs.app import create_app
        from ivrs.config import Settings
        from ivrs.conversations.sessions import MemorySessionStore

        self.token = secrets.token_urlsafe(32)
        settings = Settings(database_url=db.engine.url.render_as_string(hide_password=False),
                            twilio_auth_token=self.token)
        self.app = create_app(settings, db=db, store=MemorySessionStore())
        self.echo, self.width = echo, width
        with db.sessions() as session:
            study_id = get_study(session, STUDY_CODE).id
            self.number = session.execute(select(StudyPhoneNumber.number).where(
                StudyPhoneNumber.study_id == study_id).order_by(StudyPhoneNumber.id)).scalar()

    def call(self, caller: Caller, purpose: str, *, sign_in: bool = True):
        """A call from a caller's phone, signed in unless told otherwise."""
        from ivrs.demo.terminal import TerminalCall
        from ivrs.demo.phone import AppTransport, Phone

        self.echo("")
        self.echo(f"== {purpose}: {caller.who} calls {self.number} from {caller.phone}")
        phone = Phone(AppTransport(self.app), caller=caller.phone, dialed=self.number,
                      auth_token=self.token)
        call = TerminalCall(phone, self.echo, width=self.width)
        call.dial()
        if sign_in:
            call.press(f"{caller.user}#")
            call.press(f"{caller.pin}#")
        return call

    def texts(self, caller: Caller, purpose: str, messages: list[str]) -> list[str]:
        """Text messages from a caller's phone, one after the other; their replies."""
        from ivrs.demo.phone import AppTransport
        from ivrs.demo.texter import Texter

        self.echo("")
        self.echo(f"== {purpose}: {caller.who} texts {self.number} from {caller.phone}")
        texter = Texter(AppTransport(self.app), sender=caller.phone, to=self.number,
                        auth_token=self.token)
        replies = []
        for message in messages:
            self.echo(f"sms> {'*' * len(message) if message == caller.pin else message}")
            replies.append(texter.send(message).text)
            self.echo(f"ivrs> {replies[-1]}")
        return replies

    def outbox(self, caller: Caller) -> list[str]:
        """The SMS the system has queued for a caller (sent by Twilio when configured):
        to them by name, to their role or to their sites."""
        from core.deliveries import audience_users
        from core.models import Notification
        from ivrs.outbound.notify import render

        with self.app.extensions["ivrs"].db.sessions() as session:
            user = session.scalars(select(User).where(User.user_code == caller.user)).one()
            audiences = session.scalars(select(Notification.audience).distinct()).all()
            theirs = [audience for audience in audiences
                      if user in audience_users(session, user.study_id, audience)]
            queued = session.scalars(select(Notification).where(
                Notification.audience.in_(theirs)).order_by(Notification.id)).all()
            messages = [render(notification, user) for notification in queued]
        for message in messages:
            self.echo(f"[SMS to {caller.phone}] {message}")
        return messages


@dataclass
class DemoRun:
    """What the scenes share: the database, the line, and what earlier calls learned."""

    db: Database
    line: DemoLine
    echo: Callable[[str], None]
    subjects: dict[str, list[str]] = field(default_factory=dict)  # site -> subject numbers
    shipments: list = field(default_factory=list)  # dispatched by the depot


def screen_by_phone(call, run: DemoRun, site: str) -> str:
    """Menu 1 at a one-site user: the new subject number is the first number said."""
    from ivrs.demo.terminal import spoken_numbers

    call.press("1")
    subject = spoken_numbers(call.press("1"))[0]
    run.subjects.setdefault(site, []).append(subject)
    return subject


def enter_subject(call, menu_key: str, subject: str):
    """A menu option that starts with a subject number, read back and confirmed."""
    call.press(menu_key)
    call.press(f"{subject}#")
    return call.press("1")


def randomize_by_phone(call, subject: str, sex: str, age: str) -> None:
    enter_subject(call, "2", subject)
    for answer in ELIGIBLE:
        call.press(answer)
    call.press(sex)
    call.press(age)
    call.press("1")


def paris_randomizes(run: DemoRun) -> None:
    call = run.line.call(PARIS, "Paris screens and randomizes two subjects")
    for sex, age in ((FEMALE, UNDER_65), (MALE, OVER_65)):
        randomize_by_phone(call, screen_by_phone(call, run, "101"), sex, age)
    call.hang_up()


def barcelona_randomizes(run: DemoRun) -> None:
    call = run.line.call(BARCELONA, "Barcelona screens and randomizes a subject")
    randomize_by_phone(call, screen_by_phone(call, run, "102"), FEMALE, UNDER_65)
    call.hang_up()


def barcelona_edc_randomizes(run: DemoRun) -> None:
    """The site's EDC screens and randomizes a subject through the HTTP API, with the
    eligibility and the stratification factors the eCRF holds."""
    from ivrs.demo.edc import DemoEdc

    run.echo("")
    run.echo("== Barcelona's EDC screens and randomizes a subject through the HTTP API")
    edc = DemoEdc(run.line.app, run.db, run.echo, site="102", study=STUDY_CODE)
    subject = edc.post("/subjects", {"site": "102"})["subject_number"]
    run.subjects.setdefault("102", []).append(subject)
    edc.post(f"/subjects/{subject}/randomize", {
        "eligibility": {"INC1": True, "INC2": True, "EXC1": True},
        "factors": {"SEX": "M", "AGE": "LT65"}})
    edc.get(f"/subjects/{subject}")


def paris_confirms_kits_by_sms(run: DemoRun) -> None:
    """The kit-number confirmation: the SMS each randomization queued, a kit number
    mistyped and caught, then the right numbers (the second one bare)."""
    run.echo("")
    run.echo("== the SMS the randomizations queued for Paris (sent through Twilio when "
             "configured; `ivrs outbox` lists them otherwise)")
    run.line.outbox(PARIS)
    with run.db.sessions() as session:
        first, second = (session.scalars(select(Kit.kit_number).join(
            Subject, Subject.id == Kit.subject_id).where(Subject.subject_number == number)
            .order_by(Kit.kit_number)).first() for number in run.subjects["101"][:2])
    mistyped = first[:-2] + first[-1] + first[-2] if first[-1] != first[-2] else "999999"
    run.line.texts(PARIS, "Paris confirms the kits handed out",
                   [f"KIT {mistyped}", PARIS.pin, f"KIT {first}", second])


def berlin_receives_by_sms(run: DemoRun) -> None:
    to_berlin = next((s for s in run.shipments if s.site == "103"), None)
    if to_berlin is None:
        return
    with run.db.sessions() as session:
        shipment_id = session.scalar(select(Shipment.id).where(
            Shipment.shipment_number == to_berlin.shipment_number))
        broken = session.scalars(select(Kit.kit_number).where(
            Kit.shipment_id == shipment_id).order_by(Kit.kit_number)).first()
    run.line.texts(BERLIN, f"Berlin receives shipment {to_berlin.shipment_number}, "
                           "one kit broken", [
                               f"RECV {to_berlin.shipment_number} DAMAGED {broken}",
                               BERLIN.pin, "STOCK"])


def paris_ineligible_subject(run: DemoRun) -> None:
    """A no to an eligibility question, then the screen failure; and another site's subject."""
    call = run.line.call(PARIS, "Paris: a subject who is not eligible")
    subject = screen_by_phone(call, run, "101")
    enter_subject(call, "2", subject)
    call.press(ELIGIBLE[0])
    call.press("2")  # INC2: no
    enter_subject(call, "6", subject)
    call.press("1")  # reason: not eligible
    call.press("1")  # record it
    other_site = run.subjects.get("102", [])
    if other_site:
        enter_subject(call, "2", other_site[0])
        call.press("*")  # back to the menu
    call.hang_up()


def barcelona_unblinds(run: DemoRun) -> None:
    """Menu 7, in Spanish: the investigator signs (the PIN again), gives the
    reason and hears the treatment; the project manager is told that it happened."""
    subject = run.subjects["102"][0]
    call = run.line.call(BARCELONA, f"Barcelona: emergency unblinding of subject {subject}")
    enter_subject(call, "7", subject)
    call.press(f"{BARCELONA.pin}#")  # the signature: the PIN again
    call.press("1")  # reason: a medical emergency
    call.press("1")  # unblind now
    call.hang_up()
    run.echo("")
    run.echo("== the SMS the unblinding queued for the project manager (not the treatment)")
    run.line.outbox(MANAGER)


def depot_ships(run: DemoRun) -> None:
    """The depot's side is not a phone call: the resupply job, then the dispatch."""
    run.echo("")
    run.echo("== the supply run (resupply job) and the depot")
    for shipment in run_resupply(run.db, study=STUDY_CODE):
        run.echo(f"supply run: shipment {shipment.shipment_number} to site {shipment.site}: "
                 f"{shipment.kits} kits ({shipment.reason})")
        dispatch_shipment(run.db, shipment_number=shipment.shipment_number, carrier="DHL",
                          tracking_number=f"JD0146{shipment.shipment_number}",
                          actor=Actor(role="depot_manager", user_code="7001", channel="demo"),
                          study=STUDY_CODE)
        run.echo(f"{DEPOT} dispatched shipment {shipment.shipment_number} with DHL")
        run.shipments.append(shipment)


def paris_receives(run: DemoRun) -> None:
    to_paris = next((s for s in run.shipments if s.site == "101"), None)
    if to_paris is None:
        return
    call = run.line.call(PARIS, f"Paris confirms the receipt of shipment "
                                f"{to_paris.shipment_number}")
    enter_subject(call, "5", to_paris.shipment_number)
    call.press("1")  # every kit arrived in good condition
    call.press("1")  # confirm
    call.hang_up()


def paris_visit_2(run: DemoRun) -> None:
    """Four weeks on (UAT time travel): visit 2 of the first subject, in French, then
    the supply run."""
    subject = run.subjects["101"][0]
    with days_later(28) as day:
        call = run.line.call(PASTEUR, f"{day}, visit 2 of subject {subject}")
        enter_subject(call, "3", subject)
        call.press("1")  # dispense the kits of the visit due
        call.hang_up()
        for shipment in run_resupply(run.db, study=STUDY_CODE):
            run.echo(f"[{day}] supply run: stock at site {shipment.site} reached its trigger: "
                     f"shipment {shipment.shipment_number} of {shipment.kits} kits requested")


# The demo, in order. Another exchange (a call in another language, ...) is
# one more function taking the DemoRun, added here.
SCENES: tuple[Callable[[DemoRun], None], ...] = (
    paris_randomizes,
    paris_confirms_kits_by_sms,
    barcelona_randomizes,
    barcelona_edc_randomizes,
    paris_ineligible_subject,
    depot_ships,
    paris_receives,
    berlin_receives_by_sms,
    paris_visit_2,
    barcelona_unblinds,
)


def offer_a_call(run: DemoRun) -> None:
    """At a terminal: one call of the visitor's own, with the Paris coordinator's phone."""
    from ivrs.demo.terminal import converse, read_terminal

    run.echo("")
    answer = read_terminal(f"Your turn: call as {PARIS.who} (user ID {PARIS.user}, PIN "
                           f"{PARIS.pin}). Type c and Enter to call, or press Enter to skip: ",
                           False)
    if (answer or "").strip().lower() != "c":
        return
    run.echo("(keys and Enter; an empty line is silence; q hangs up)")
    converse(run.line.call(PARIS, "Your call", sign_in=False), read_terminal)


def print_reports(db: Database, echo: Callable[[str], None]) -> None:
    echo("")
    with db.sessions() as session:
        study = get_study(session, STUDY_CODE)
        for title, report in (("subjects", subjects_report), ("site-inventory", site_inventory),
                              ("dispensing", dispensing_report),
                              ("unblinding", unblinding_report)):
            echo(f"== {title} report (blinded)")
            columns, rows = report(session, study, True)
            echo(_csv(columns, rows))
            echo("")
        problem = verify(session, study.id)
    echo("== audit chain: " + ("intact" if problem is None else f"BROKEN: {problem}"))


def run_demo(directory: str, echo: Callable[[str], None] = print, *,
             interactive: bool | None = None) -> Database:
    """The demo from scratch in ``directory``; ``interactive`` (default: stdin is a
    terminal) offers a call of one's own after the scripted ones."""
    from ivrs.demo.terminal import terminal_width

    workdir = Path(directory)
    workdir.mkdir(parents=True, exist_ok=True)
    database_file = workdir / "demo.sqlite3"
    if database_file.exists():
        database_file.unlink()  # a demo starts from scratch every time
    db = Database(f"sqlite:///{database_file}")
    upgrade(db.engine)
    echo(f"== ivrs demo: database {database_file}")
    set_up_demo_study(db, workdir, echo)

    run = DemoRun(db, DemoLine(db, echo, terminal_width()), echo)
    for scene in SCENES:
        scene(run)
    if sys.stdin.isatty() if interactive is None else interactive:
        offer_a_call(run)

    print_reports(db, echo)
    echo(f"Try: export DATABASE_URL=sqlite:///{database_file}; ivrs call; "
         f"ivrs report randomization")
    return db
