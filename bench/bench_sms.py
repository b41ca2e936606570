#!/usr/bin/env python
"""SMS webhook: server time per text message, next to static TwiML from the same server.

    python bench/bench_sms.py [--url URL] [--redis-url URL] [--senders 1,10,50]
                              [--pin-senders 1,10] [--seconds S] [--servers gthread]
                              [--profile N] [--no-write]

gunicorn is started here as a subprocess in its own process group (2 gthread
workers x 8 threads by default; ``--servers sync,gthread`` adds 5 sync workers)
with DATABASE_URL (a fresh ``bench_<random>`` PostgreSQL schema, loopback only,
migrated, the demo study loaded, dropped at the end), REDIS_URL (sessions and
kept replies; database 14 by default) and TWILIO_AUTH_TOKEN. The server,
the load generator and the CPU accounting are bench_voice.py's (``Server``,
``Backends``, ``HttpClient``): separate client processes, one thread per
sender, raw keep-alive HTTP/1.1, every request signed with ``X-Twilio-Signature``.

Each sender is a site coordinator at site 101 with a phone number of its own
(unique to the run), a final PIN (not temporary), one subject it screened and
randomized itself and that subject's V1 kit waiting for its kit-number
confirmation. Every request is a signed ``POST /sms`` with a fresh MessageSid
and ``From`` = the sender's phone. Cells, each ``--warmup`` (1 s) then
``--seconds`` (5 s):

``commands`` (at every ``--senders`` count)
    A signed-in sender (sign-in done before the window: one message opens the
    session, the PIN signs in) cycles through four read-only commands a site
    user sends: ``STATUS <its subject>`` (status, last and next visit),
    ``STOCK`` (the site's blinded inventory), ``HELP`` and ``KIT 99999999``
    (not a kit: the kit row lock finds nothing, the user's pending assignment
    is read, the refusal names the expected kit and the transaction is rolled
    back). Each loads the session from Redis, claims the MessageSid, runs the
    command, keeps the reply for a day and saves the session.
``static``
    ``/static-twiml`` with the same senders, client and server, right after.
``duplicate`` (at the largest count)
    Twilio delivering the same message again: each sender repeats one
    MessageSid whose reply is kept; the answer must be byte-identical.
``commit`` (at every count)
    ``LANG fr`` then ``LANG en``, both measured: each is a transaction with the
    user row lock, an audit row sealed into the study's chain, an idempotency
    record and a commit: the skeleton every committing SMS command has.
``pin`` (at ``--pin-senders``)
    The session is dropped from Redis (as 15 idle minutes would), ``HELP``
    opens a new one (the PIN is asked) and the PIN signs in (argon2id, a
    transaction) and runs the kept HELP; the PIN message is what is timed.

Every answer must be HTTP 200, TwiML whose root is ``<Response>``, with the
expected text, and must not name an arm, a kit type or a lot; otherwise the
script stops with a non-zero status and writes nothing. Sessions and kept
replies are stored under keys unique to the run (the senders' phones, the
run's MessageSids); exactly those keys are deleted at the end, and the script
checks that none is left. ``--profile N`` also sends N of each command through
the app in this process (Flask test client, same schema and Redis) and
reports the CPU each costs.

Results are printed and written into BENCHMARKS.md, section "SMS webhook" (one
subsection, replaced on each run; other sections are kept), and the SMS row
of the targets table.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import secrets
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_randomize import ROOT, Schema, check_loopback, percentile, run_parts  # noqa: E402
from bench_voice import (  # noqa: E402 — the voice benchmark's server and client plumbing
    DIALED,
    GUNICORN,
    SERVER_CONFIGS,
    TOKEN,
    Backends,
    BadAnswer,
    HttpClient,
    Server,
    check_redis_loopback,
    describe_server,
    fan_out,
    replace_target_row,
    run_clients,
    server_env,
    target_status,
)
from sqlalchemy import event, select  # noqa: E402

from core.actors import ADMIN, Actor  # noqa: E402
from core.db import Database  # noqa: E402
from core.login import change_pin  # noqa: E402
from core.models import Arm, Kit, KitType, Lot, Study, Subject  # noqa: E402
from core.randomize import randomize  # noqa: E402
from core.subjects import screen_subject  # noqa: E402
from core.supply.kit_import import import_kits  # noqa: E402
from core.users import add_user  # noqa: E402
from dialogs.output import LanguageName, Say  # noqa: E402
from ivrs.app import create_app  # noqa: E402
from ivrs.config import Settings  # noqa: E402
from ivrs.conversations.sessions import RedisSessionStore  # noqa: E402
from ivrs.demo.phone import AppTransport  # noqa: E402
from ivrs.demo.scenario import STRATA, STUDY_CODE, set_up_demo_study  # noqa: E402
from ivrs.demo.texter import Texter, parse_reply  # noqa: E402
from ivrs.render.sms_text import for_sms  # noqa: E402
from ivrs.render.speech import text  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"
SECTION = "SMS webhook"
SITE = "101"
BENCH_PIN = "2468"
WRONG_KIT = "99999999"  # 8 digits: no kit of the demo study or of this script has as many
ELIGIBLE = {"INC1": True, "INC2": True, "EXC1": True}
# The dialog-step target (BENCHMARKS.md), which the SMS row is read against.
TARGET_THROUGHPUT, TARGET_P99 = 0.5, 4.0
# Outbound channels the server must not use during a benchmark.
OUTBOUND_ENV = ("TWILIO_ACCOUNT_SID", "TWILIO_FROM_NUMBER", "SMTP_URL")


@dataclass(frozen=True)
class Sender:
    user: str
    phone: str
    pin: str
    subject: str
    kit: str  # the subject's V1 kit, waiting for its confirmation


# --- set-up ----------------------------------------------------------------------------------


def add_bench_kits(db: Database, workdir: Path, per_type: int, expiry: date) -> None:
    """``per_type`` more kits of each kit type at site 101, through the kit import
    service, so that every sender can randomize a subject of its own."""
    path = workdir / "bench_kits.csv"
    rows = ["kit_number,kit_type,lot,expiry_date,location"]
    number = 2_000_000  # 7 digits: the demo's kits have 6
    for kit_type, lot in (("KA", "LA2"), ("KP", "LP2")):
        for _ in range(per_type):
            number += 1
            rows.append(f"{number},{kit_type},{lot},{expiry.isoformat()},{SITE}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    import_kits(db, path, study_code=STUDY_CODE)


def make_senders(db: Database, count: int, phone_stem: str) -> list[Sender]:
    """``count`` coordinators at site 101, each with its own phone, a final PIN and
    one randomized subject whose V1 kit awaits the user's confirmation."""

    def user(n: int) -> tuple[str, str]:
        # 8001 up: clear of the demo study's user IDs (5001 to 7001)
        code, phone = f"{8001 + n}", f"{phone_stem}{n:03d}"
        add_user(db, user_code=code, name=f"Bench texter {n}", role="site_coordinator",
                 sites=[SITE], phone=phone, language="en", pin="1111", actor=ADMIN,
                 study=STUDY_CODE)
        change_pin(db, user_code=code, new_pin=BENCH_PIN, study=STUDY_CODE, actor=actor(code))
        return code, phone

    with ThreadPoolExecutor(4) as pool:  # argon2 hashing is most of it
        users = list(pool.map(user, range(count)))
    senders = []
    for n, (code, phone) in enumerate(users):
        subject = screen_subject(db, site_code=SITE, actor=actor(code),
                                 study=STUDY_CODE).subject_number
        sex, age = STRATA[n % len(STRATA)]
        randomize(db, subject_number=subject, actor=actor(code), study=STUDY_CODE,
                  eligibility=ELIGIBLE, factors={"SEX": sex, "AGE": age})
        with db.sessions() as session:
            (kit,) = session.scalars(select(Kit.kit_number).join(
                Subject, Subject.id == Kit.subject_id).where(Subject.subject_number == subject))
        senders.append(Sender(code, phone, BENCH_PIN, subject, kit))
    return senders


def actor(code: str) -> Actor:
    return Actor(role="site_coordinator", user_code=code, site_codes=frozenset({SITE}),
                 channel="bench")


def blinded_words(db: Database) -> str:
    """A regular expression for what no reply may contain: arm names, kit type
    codes and lot codes of the study."""
    with db.sessions() as session:
        study = session.scalar(select(Study.id).where(Study.code == STUDY_CODE))
        names = session.scalars(select(Arm.name).where(Arm.study_id == study)).all()
        codes = [*session.scalars(select(KitType.code).where(KitType.study_id == study)),
                 *session.scalars(select(Lot.code).where(Lot.study_id == study))]
    return "|".join([*(re.escape(n) for n in names),
                     *(rf"\b{re.escape(c)}\b" for c in codes)])


# --- what each message says and must get back ------------------------------------------------


@dataclass(frozen=True)
class Message:
    label: str
    body: str
    expect: tuple[str, ...]  # every one must be in the reply's text


def commands(sender: Sender) -> list[Message]:
    """The read-only cycle of a signed-in site user."""
    return [
        Message("STATUS", f"STATUS {sender.subject}",
                (f"Subject {sender.subject}: randomized.", "Last visit V1", "Next visit V2")),
        Message("STOCK", "STOCK", (f"Site {SITE}: ", " kits available")),
        Message("HELP", "HELP", ("Commands: KIT kit-no",)),
        Message("KIT wrong", f"KIT {WRONG_KIT}",
                (f"Kit {WRONG_KIT} is not the kit assigned.",
                 f"Expected: {sender.kit} (subject {sender.subject} visit V1). "
                 "Nothing confirmed.")),
    ]


# The confirmation comes in the language just chosen (as the SMS sender sends it).
COMMIT_CYCLE = (Message("LANG fr", "LANG fr", (for_sms(text(
                    Say("sms.language_set", {"language": LanguageName("fr")}), "fr")),)),
                Message("LANG en", "LANG en", ("Your language is now English.",)))
ASK_PIN = Message("open", "HELP", ("Please reply with your PIN.",))
PIN_ANSWER = ("Commands: KIT kit-no",)  # the kept HELP, run once the PIN is accepted


# --- the load generator (runs in separate processes) ---------------------------------------------


@dataclass
class Job:
    kind: str  # commands, static, duplicate, commit, pin
    port: int
    senders: list[Sender]
    sid_prefix: str  # MessageSids of this cell start with it
    warmup: float
    seconds: float
    redis_url: str
    blinded: str  # regular expression of what no reply may contain


class Texting:
    """One sender's side: signed messages to /sms, every answer checked."""

    def __init__(self, job: Job, index: int):
        self.job, self.sender = job, job.senders[index]
        self.client = HttpClient(job.port, TOKEN)
        self.prefix = f"{job.sid_prefix}{index:03d}"
        self.serial = 0
        self.blinded = re.compile(job.blinded)

    def new_sid(self) -> str:
        self.serial += 1
        return f"{self.prefix}{self.serial:019d}"  # 34 characters, like Twilio's

    def form(self, sid: str, body: str) -> dict[str, str]:
        return {"MessageSid": sid, "SmsSid": sid, "AccountSid": "AC" + "0" * 32,
                "From": self.sender.phone, "To": DIALED, "Body": body, "NumMedia": "0"}

    def send(self, body: str, expect: tuple[str, ...], sid: str | None = None) -> bytes:
        sid = sid or self.new_sid()
        status, answer = self.client.post("/sms", self.form(sid, body))
        self.check(f"{body.split()[0]} ({sid})", status, answer, expect)
        return answer

    def check(self, what: str, status: int, answer: bytes, expect: tuple[str, ...],
              static: bool = False) -> str:
        """The answer's text; BadAnswer unless it is a 200 TwiML ``<Response>`` with
        every expected piece of text and nothing blinded in it."""
        if status != 200:
            raise BadAnswer(f"{what}: HTTP {status}: {answer[:300]!r}")
        try:
            if static:  # a <Gather><Say>: all of its text
                root = ET.fromstring(answer)
                if root.tag != "Response":
                    raise ValueError(f"TwiML root is {root.tag}, not Response")
                words = " ".join(root.itertext())
            else:  # the <Message> of an SMS reply
                words = parse_reply(status, answer.decode(), what).text
        except (ValueError, ET.ParseError) as error:
            raise BadAnswer(f"{what}: not TwiML ({error}): {answer[:300]!r}") from None
        missing = [e for e in expect if e not in words]
        if missing:
            raise BadAnswer(f"{what}: expected {missing!r} in {words!r}")
        leak = self.blinded.search(words)
        if leak:
            raise BadAnswer(f"{what}: the reply names {leak.group(0)!r}: {words!r}")
        return words

    def sign_in(self) -> None:
        """Open a session and sign in, unless the session is already signed in."""
        answer = self.send("HELP", ())
        if b"Please reply with your PIN." in answer:
            self.send(self.sender.pin, PIN_ANSWER)
        elif b"Commands: KIT" not in answer:
            raise BadAnswer(f"sign-in: unexpected {answer[:300]!r}")

    def static(self) -> None:
        status, answer = self.client.post("/static-twiml", self.form(self.new_sid(), "HELP"))
        self.check("static", status, answer, ("Static.",), static=True)


def client_thread(job: Job, index: int, ready: threading.Barrier, go: threading.Event,
                  start: list[float], samples: list, errors: list) -> None:
    texting = Texting(job, index)
    sender = texting.sender
    redis_client = kept = None
    try:
        if job.kind in ("commands", "duplicate", "commit"):
            texting.sign_in()
        if job.kind == "duplicate":
            kept_sid = texting.new_sid()
            kept = texting.send("STOCK", commands(sender)[1].expect, sid=kept_sid)
        if job.kind == "pin":
            import redis

            redis_client = redis.Redis.from_url(job.redis_url)
            session_key = f"{RedisSessionStore.PREFIX}sms:{STUDY_CODE}:{sender.phone}"
    except Exception as error:  # noqa: BLE001 — reported; the cell fails
        errors.append(f"set-up: {error}")
        ready.abort()
        return
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        return
    go.wait()
    measured_from = start[0] + job.warmup
    until = measured_from + job.seconds
    clock = time.perf_counter
    cycle = {"commands": commands(sender), "commit": list(COMMIT_CYCLE)}.get(job.kind, [])
    position = 0

    def timed(label: str, action) -> None:
        began = clock()
        action()
        took = clock() - began
        if measured_from <= time.time() <= until:
            samples.append((label, took))

    try:
        while time.time() < until:
            if job.kind == "static":
                timed("static", texting.static)
            elif job.kind == "duplicate":
                def again() -> None:
                    answer = texting.send("STOCK", commands(sender)[1].expect, sid=kept_sid)
                    if answer != kept:
                        raise BadAnswer(f"duplicate {kept_sid}: another answer: {answer!r}")
                timed("duplicate", again)
            elif job.kind == "pin":
                redis_client.delete(session_key)  # as 15 idle minutes would
                timed("open", lambda: texting.send(ASK_PIN.body, ASK_PIN.expect))
                timed("pin", lambda: texting.send(sender.pin, PIN_ANSWER))
            elif job.kind == "commit":
                for message in cycle:  # fr then en: the user is left in English
                    timed(message.label, lambda m=message: texting.send(m.body, m.expect))
            else:
                message = cycle[position]
                timed(message.label, lambda m=message: texting.send(m.body, m.expect))
                position = (position + 1) % len(cycle)
    except Exception as error:  # noqa: BLE001
        errors.append(f"{job.kind}: {error}")
    finally:
        texting.client.close()
        if redis_client is not None:
            redis_client.close()


def client_process(job: Job, indexes: list[int], pipe) -> None:
    run_clients(client_thread, job, indexes, pipe)


@dataclass
class Cell:
    kind: str
    senders: int
    seconds: float
    unit: str | None = None  # the label the rate counts (None: every message)
    samples: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    server_cpu: float = 0.0
    postgres_cpu: float = 0.0
    redis_cpu: float = 0.0
    client_cpu: float = 0.0
    busy: float = 0.0  # the machine's CPU busy share during the window

    def count(self, label: str | None = None) -> int:
        label = label or self.unit
        return sum(1 for name, _ in self.samples if label in (None, name))

    def rate(self, label: str | None = None) -> float:
        return self.count(label) / self.seconds

    def ms(self, q: float, label: str | None = None) -> float:
        label = label or self.unit
        values = [t for name, t in self.samples if label in (None, name)]
        return 1000 * percentile(values, q) if values else float("nan")

    def per(self, seconds: float) -> float:
        """ms of CPU per counted message."""
        return 1000 * seconds / self.count() if self.count() else float("nan")


def measure(args, server: Server, backends: Backends, job: Job, unit: str | None = None
            ) -> Cell:
    count = len(job.senders)
    cell = Cell(job.kind, count, args.seconds, unit)
    fan_out(args, server, backends, client_process, job, count, cell)
    print(f"  {server.name:8} {job.kind:9} {count:3} senders: {cell.rate():7.1f}/s  "
          f"p50 {cell.ms(0.5):6.1f} ms  p99 {cell.ms(0.99):6.1f} ms  "
          f"server CPU {cell.per(cell.server_cpu):.2f} ms/msg  machine busy {cell.busy:.0%}",
          flush=True)
    if cell.errors or not cell.count():
        for error in cell.errors[:5]:
            print(f"  wrong answer: {error}", file=sys.stderr, flush=True)
        raise SystemExit(f"{job.kind} with {count} sender(s): "
                         f"{len(cell.errors) or 'no'} client(s) failed"
                         + ("" if cell.count() else ", no answer measured")
                         + "; nothing written")
    return cell


# --- the benchmark ---------------------------------------------------------------------------


def delete_run_keys(redis_url: str, run_id: str, senders: list[Sender]) -> tuple[int, int]:
    """Delete the kept replies of this run's MessageSids and the senders' sessions;
    (deleted, left over) where left over counts keys of the run found afterwards."""
    import redis

    prefix = RedisSessionStore.PREFIX
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}sms:reply:SM{run_id}*", count=1000))
    keys += [f"{prefix}sms:{STUDY_CODE}:{s.phone}".encode() for s in senders]
    deleted = 0
    for at in range(0, len(keys), 500):
        deleted += client.delete(*keys[at:at + 500])
    stem = senders[0].phone[:-3] if senders else None
    left = sum(1 for _ in client.scan_iter(match=f"*SM{run_id}*", count=1000))
    if stem:
        left += sum(1 for _ in client.scan_iter(match=f"*{stem}*", count=1000))
    client.close()
    return deleted, left


def bench_sms(args, schema: Schema) -> dict:
    os.environ["IVRS_TODAY"] = args.today  # set-up services run on the server's day
    db = schema.database(4)
    run_id = secrets.token_hex(4)
    phone_stem = f"+1555{secrets.randbelow(10**6):06d}"  # + 3 digits per sender
    most = max(args.senders + args.pin_senders)
    senders: list[Sender] = []
    results: dict[str, dict] = {}
    cell_no = 0
    try:
        with tempfile.TemporaryDirectory(prefix="bench_sms_") as workdir:
            set_up_demo_study(db, Path(workdir), lambda line: None, users_language="en")
            add_bench_kits(db, Path(workdir), most + 10,
                           date.fromisoformat(args.today) + timedelta(days=730))
            began = time.monotonic()
            senders = make_senders(db, most, phone_stem)
            print(f"{most} senders with a randomized subject each in "
                  f"{time.monotonic() - began:.1f} s", flush=True)
            blinded = blinded_words(db)
            application_name = f"bench_sms_{run_id}"
            env = server_env(args, schema, application_name)
            for name in OUTBOUND_ENV:
                env.pop(name, None)  # messages go to the outbox, never to a real phone
            backends = Backends(schema, application_name)

            def job(kind: str, count: int) -> Job:
                nonlocal cell_no
                cell_no += 1
                return Job(kind, server.port, senders[:count], f"SM{run_id}{cell_no:02d}",
                           args.warmup, args.seconds, args.redis_url, blinded)

            for name in args.servers:
                server = Server(name, SERVER_CONFIGS[name](args), env,
                                Path(workdir) / f"gunicorn-{name}.log")
                print(f"gunicorn {describe_server(args, name)} on port {server.port}",
                      flush=True)
                rows, commits, pins = [], [], []
                try:
                    for count in args.senders:
                        command = measure(args, server, backends, job("commands", count))
                        static = measure(args, server, backends, job("static", count))
                        rows.append((command, static))
                    duplicate = measure(args, server, backends,
                                        job("duplicate", max(args.senders)))
                    if not args.no_commit:
                        for count in args.senders:
                            commits.append(measure(args, server, backends,
                                                   job("commit", count)))
                    for count in args.pin_senders:
                        pins.append(measure(args, server, backends, job("pin", count), "pin"))
                finally:
                    server.stop()
                results[name] = {"rows": rows, "duplicate": duplicate, "commits": commits,
                                 "pins": pins}
            profile = profile_commands(args, schema, db, senders[0], run_id) \
                if args.profile else None
    finally:
        deleted, left = delete_run_keys(args.redis_url, run_id, senders)
        print(f"deleted {deleted} keys of this run from {args.redis_url}", flush=True)
        db.dispose()
    if left:
        raise SystemExit(f"{left} Redis key(s) of this run are left in {args.redis_url}")
    return {"servers": results, "profile": profile, "senders": senders}


def profile_commands(args, schema: Schema, db: Database, sender: Sender, run_id: str) -> dict:
    """Each command N times through the app in this process (Flask test client,
    the same schema and Redis): its CPU and SQL statements per message, then the
    whole cycle under cProfile (CPU clock) for where a message's time goes."""
    app = create_app(Settings(database_url=schema.url, redis_url=args.redis_url,
                              twilio_auth_token=TOKEN), db=db)
    texter = Texter(AppTransport(app), sender=sender.phone, to=DIALED, auth_token=TOKEN)
    serial = 0

    def send(body: str) -> str:
        nonlocal serial
        serial += 1
        return texter.send(body, message_sid=f"SM{run_id}99{serial:022d}").text

    statements = [0]

    def count(*_) -> None:
        statements[0] += 1

    if "PIN" in send("HELP"):
        send(sender.pin)
    cycle = [*commands(sender), *COMMIT_CYCLE]
    cpu, sql = {}, {}
    event.listen(db.engine, "before_cursor_execute", count)
    try:
        for message in cycle:
            for _ in range(10):  # warm
                send(message.body)
            statements[0] = 0
            began = time.process_time()
            for _ in range(args.profile):
                reply = send(message.body)
            cpu[message.label] = 1000 * (time.process_time() - began) / args.profile
            sql[message.label] = statements[0] / args.profile
            if not all(e in reply for e in message.expect):
                raise SystemExit(f"profile {message.label}: unexpected {reply!r}")
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    client = app.test_client()
    began = time.process_time()
    for _ in range(args.profile):
        client.post("/static-twiml", data={"MessageSid": "SM" + "0" * 32})
    cpu["static"] = 1000 * (time.process_time() - began) / args.profile
    profiler = cProfile.Profile(time.process_time)
    reads = commands(sender)
    profiler.enable()
    for n in range(args.profile):
        send(reads[n % len(reads)].body)
    profiler.disable()
    stats = pstats.Stats(profiler)
    parts = [(label, 1000 * sum(max((row[3] for (filename, _, function), row
                                     in stats.stats.items()
                                     if function == name and filename.endswith(suffix)),
                                    default=0.0) for name in names) / args.profile)
             for label, suffix, names in PROFILE_PARTS]
    return {"messages": args.profile, "cpu_ms": cpu, "statements": sql, "parts": parts}


# (label, end of the file name, function names) of the costs worth naming
PROFILE_PARTS = (
    ("Flask dispatch (routes and before_request)", "flask/app.py", ("full_dispatch_request",)),
    ("signature check", "webhooks.py", ("signature_valid",)),
    ("texts.answer (all of the message's work)", "ivrs/conversations/texts.py", ("answer",)),
    ("the study and the sender's users, one read (users_for_phone)", "core/login.py",
     ("users_for_phone",)),
    ("the dialog and its command (dialogs.sms.run)", "dialogs/sms/machine.py", ("run",)),
    ("reply rendering (texts.reply)", "ivrs/conversations/texts.py", ("reply",)),
    ("Redis: claim with session load, then session with kept reply (two round trips)",
     "ivrs/conversations/sessions.py", ("claim_and_load", "save_all")),
    ("connection pool ping (only for a connection idle 1 s or more)", "_psycopg_common.py",
     ("do_ping",)),
)


# --- the report ------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def sms_markdown(args, data: dict) -> list[str]:
    labels = [m.label for m in commands(data["senders"][0])]
    lines = [
        ("gunicorn (started by the script, `ivrs.app:create_app()`) on PostgreSQL (a fresh "
         "schema, the demo study loaded) and Redis (sessions and kept replies). Each sender "
         "is a site coordinator of site 101 with its own phone number, a final PIN and one "
         "subject it randomized, whose V1 kit awaits its confirmation. A command is one "
         "signed `POST /sms` with a fresh MessageSid from a signed-in sender (signed in "
         "before the window), cycling through `STATUS <its subject>` (status, last and next "
         "visit), `STOCK` (blinded site inventory), `HELP` and `KIT 99999999` (not a kit: "
         "the user's pending assignment is read, the refusal names the expected kit, the "
         "transaction is rolled back). Each loads the session from Redis, claims the "
         "MessageSid, runs the command, keeps the reply and saves the session. The ceiling "
         "is `/static-twiml` from the same server, same senders, same client, right after. "
         f"Clients: {args.client_processes} separate process(es) with one thread per "
         "sender, raw keep-alive HTTP/1.1, every request signed with "
         f"`X-Twilio-Signature`. {args.seconds:g} s measured after {args.warmup:g} s "
         "warm-up per cell; every answer is checked (HTTP 200, TwiML `<Response>`, the "
         "expected text, no arm, kit type or lot). \"server CPU\" is the gunicorn "
         "processes' CPU per message in the window, \"PG CPU\" that of the PostgreSQL "
         "backends serving them (by `application_name`), \"Redis CPU\" that of the Redis "
         "server (shared with any other user of it), \"machine busy\" the share of both "
         "cores in use."),
        "",
    ]
    for name, result in data["servers"].items():
        lines += [f"**{describe_server(args, name)}**", "",
                  ("| senders | commands/s | static/s | commands ÷ static | command p50 ms "
                   "| command p99 ms | static p50 ms | static p99 ms | p99 command ÷ static "
                   "| server CPU ms/command | server CPU ms/static | PG CPU ms/command "
                   "| Redis CPU ms/command | machine busy |"),
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for command, static in result["rows"]:
            lines.append(
                f"| {command.senders} | {command.rate():.0f} | {static.rate():.0f} "
                f"| {_ratio(command.rate(), static.rate()):.2f} | {command.ms(0.5):.1f} "
                f"| {command.ms(0.99):.1f} | {static.ms(0.5):.1f} | {static.ms(0.99):.1f} "
                f"| {_ratio(command.ms(0.99), static.ms(0.99)):.1f} "
                f"| {command.per(command.server_cpu):.2f} | {static.per(static.server_cpu):.2f} "
                f"| {command.per(command.postgres_cpu):.2f} "
                f"| {command.per(command.redis_cpu):.2f} | {command.busy:.0%} |")
        lines += ["", "p50 / p99 by command (ms): " + "; ".join(
            f"{command.senders} sender(s): " + ", ".join(
                f"{label} {command.ms(0.5, label):.1f} / {command.ms(0.99, label):.1f}"
                for label in labels)
            for command, _ in result["rows"]) + ".", ""]
        dup = result["duplicate"]
        static = result["rows"][-1][1]
        lines += [(f"Duplicate delivery (the same MessageSid again: the kept reply, "
                   f"byte-identical, nothing done) at {dup.senders} senders: "
                   f"{dup.rate():.0f}/s, p50 {dup.ms(0.5):.1f} ms, p99 {dup.ms(0.99):.1f} ms, "
                   f"server CPU {dup.per(dup.server_cpu):.2f} ms, PG CPU "
                   f"{dup.per(dup.postgres_cpu):.2f} ms per message; "
                   f"{_ratio(dup.rate(), static.rate()):.2f} of static."), ""]
        if result["commits"]:
            lines += [("Committing command: `LANG fr` then `LANG en` (user row lock, an "
                       "audit row sealed into the study's chain, idempotency record, "
                       "commit), both timed:"), "",
                      ("| senders | LANG/s | p50 ms | p99 ms | server CPU ms/message "
                       "| PG CPU ms/message | machine busy |"),
                      "|---:|---:|---:|---:|---:|---:|---:|"]
            for cell in result["commits"]:
                lines.append(f"| {cell.senders} | {cell.rate():.0f} | {cell.ms(0.5):.1f} "
                             f"| {cell.ms(0.99):.1f} | {cell.per(cell.server_cpu):.2f} "
                             f"| {cell.per(cell.postgres_cpu):.2f} | {cell.busy:.0%} |")
            lines.append("")
        if result["pins"]:
            lines += [("PIN message (the session dropped as 15 idle minutes would, `HELP` "
                       "opens a new one, then the PIN: argon2id, a transaction with the user "
                       "row lock, and the kept HELP), each sender its own user; the PIN "
                       "message is timed, CPU covers both messages:"), "",
                      ("| senders | sign-ins/s | PIN p50 ms | PIN p99 ms | opening p50 ms "
                       "| server CPU ms/sign-in | PG CPU ms/sign-in |"),
                      "|---:|---:|---:|---:|---:|---:|---:|"]
            for cell in result["pins"]:
                lines.append(f"| {cell.senders} | {cell.rate():.0f} | {cell.ms(0.5):.1f} "
                             f"| {cell.ms(0.99):.1f} | {cell.ms(0.5, 'open'):.1f} "
                             f"| {cell.per(cell.server_cpu):.2f} "
                             f"| {cell.per(cell.postgres_cpu):.2f} |")
            lines.append("")
    verdict = target_verdict(args, data)
    if verdict:
        lines += [f"Against the dialog-step target at {max(args.senders)} senders: "
                  f"{verdict[1]}.", ""]
    profile = data.get("profile")
    if profile:
        cpu = profile["cpu_ms"]
        lines += [(f"CPU per message in-process ({profile['messages']} of each through the "
                   "Flask test client, same schema and Redis; the client's signing and "
                   "TwiML parsing included), with SQL statements per message in brackets "
                   "(SQLAlchemy `before_cursor_execute`; pool pings, BEGIN and "
                   "COMMIT/ROLLBACK not counted): " + ", ".join(
                       f"{label} {ms:.2f} ms"
                       + (f" ({profile['statements'][label]:.0f})"
                          if label in profile["statements"] else "")
                       for label, ms in cpu.items()) + "."), "",
                  ("Where a read command's CPU goes (the four commands in turn under cProfile, "
                   "CPU clock, so inflated by the profiler; ms per message, cumulative, parts "
                   "overlap):"), ""]
        lines += [f"- {label}: {ms:.2f}" for label, ms in profile["parts"]]
        lines.append("")
    lines += limits_paragraph(args, data)
    return lines


def limits_paragraph(args, data: dict) -> list[str]:
    """What limits it, from this run's figures."""
    name, result = next(iter(data["servers"].items()))
    command, static = result["rows"][-1]
    dup = result["duplicate"]
    server_ms = command.per(command.server_cpu)
    total = server_ms + command.per(command.postgres_cpu) + command.per(command.redis_cpu)
    static_ms = static.per(static.server_cpu)
    return [(f"What limits it ({describe_server(args, name)}, {command.senders} senders): CPU. "
             f"The two cores were {command.busy:.0%} busy during the commands and are "
             "shared by gunicorn, PostgreSQL, Redis and the load generator. A command costs "
             f"{total:.2f} ms of server-side CPU ({server_ms:.2f} gunicorn, "
             f"{command.per(command.postgres_cpu):.2f} PostgreSQL, "
             f"{command.per(command.redis_cpu):.2f} Redis) against {static_ms:.2f} ms for "
             "the static route, so with the cores saturated the throughput ratio can "
             f"hardly exceed about {_ratio(static_ms, total):.2f} on this machine, whatever "
             "the concurrency. A "
             "duplicate delivery skips the dialog (the sender's lookup, then the Redis "
             f"claim and read only) and costs {dup.per(dup.server_cpu):.2f} ms of gunicorn "
             "CPU. Every command pays Flask's request and form handling, the signature "
             "check, the study and the sender's users from PostgreSQL (one Core statement), "
             "two Redis round trips (claim with session load, then session with kept "
             "reply); then its own reads (the STATUS overview: three statements, the STOCK "
             "summary: one, the KIT refusal's kit lock, idempotency lookup and "
             "pending-assignment read inside a rolled-back transaction). No lock is shared between senders on the "
             "read path; the committing LANG cell takes the study's audit chain lock."
             + floor_sentence(data.get("profile"))), ""]


def floor_sentence(profile: dict | None) -> str:
    """The fixed cost of any message, from the in-process profile: HELP reads
    nothing for itself."""
    if not profile or "HELP" not in profile["cpu_ms"]:
        return ""
    parts = dict(profile["parts"])
    users = parts.get("the study and the sender's users, one read (users_for_phone)", 0.0)
    answer = parts.get("texts.answer (all of the message's work)", 0.0)
    return (f" In-process, HELP, which reads nothing for itself, still costs "
            f"{profile['cpu_ms']['HELP']:.2f} ms of CPU and "
            f"{profile['statements']['HELP']:.0f} SQL statement(s): under the profiler the "
            f"lookup of the study and the sender's users ({users:.2f} ms, one Core "
            f"statement on a pooled connection) is {_ratio(users, answer):.0%} of the message's work "
            f"({answer:.2f} ms), before any command runs.")


def target_verdict(args, data: dict) -> tuple[str, str, str] | None:
    """(measured, sentence, status) for the targets table, at the largest count."""
    parts, met = [], []
    for name, result in data["servers"].items():
        command, static = result["rows"][-1]
        throughput = _ratio(command.rate(), static.rate())
        p99 = _ratio(command.ms(0.99), static.ms(0.99))
        met.append((throughput >= TARGET_THROUGHPUT, p99 <= TARGET_P99))
        parts.append(f"{describe_server(args, name)}: {command.rate():.0f} commands/s vs "
                     f"{static.rate():.0f} static ({throughput:.2f}), p99 "
                     f"{command.ms(0.99):.0f} vs {static.ms(0.99):.0f} ms ({p99:.1f}x); "
                     f"duplicate delivery {result['duplicate'].rate():.0f}/s, p99 "
                     f"{result['duplicate'].ms(0.99):.0f} ms")
    if not parts:
        return None
    status = target_status(met)
    measured = "; ".join(parts)
    return measured, f"{measured}: {status}", status


def update_target_row(path: Path, measured: str, status: str, senders: int) -> None:
    """Replace (or add, after the dialog-step row) the SMS row of the targets table."""
    label = (f"SMS command at {senders} concurrent senders (gunicorn + PostgreSQL + Redis), "
             "read against the dialog-step target: ≥ 0.5 of static TwiML's throughput, "
             "p99 within 4x")
    replace_target_row(path, f"| {label} | {measured} | {status} |", "| SMS command")


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("IVRS_BENCH_DATABASE_URL", DEFAULT_URL),
                        help="PostgreSQL on a loopback address (default %(default)s)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS,
                        help="Redis on a loopback address (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--senders", default="1,10,50",
                        help="concurrent senders (default 1,10,50)")
    parser.add_argument("--pin-senders", default="1,10",
                        help="concurrent senders for the PIN message (default 1,10)")
    parser.add_argument("--no-commit", action="store_true",
                        help="skip the committing command (LANG)")
    parser.add_argument("--servers", default="gthread",
                        help="gunicorn configurations: sync, gthread (default gthread)")
    parser.add_argument("--sync-workers", type=int, default=2 * (os.cpu_count() or 2) + 1)
    parser.add_argument("--gthread-workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--gthread-threads", type=int, default=8)
    parser.add_argument("--client-processes", type=int, default=2,
                        help="load generator processes (threads inside; default 2)")
    parser.add_argument("--today", default=os.environ.get("IVRS_TODAY")
                        or date.today().isoformat(), help="IVRS_TODAY for the server")
    parser.add_argument("--profile", type=int, default=200, metavar="N",
                        help="also send N of each command in-process for CPU (0: skip)")
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    try:
        args.senders = [int(c) for c in args.senders.split(",") if c]
        args.pin_senders = [int(c) for c in args.pin_senders.split(",") if c]
    except ValueError:
        parser.error("--senders and --pin-senders are comma-separated numbers")
    if not args.senders or min(args.senders + args.pin_senders) < 1 \
            or max(args.senders + args.pin_senders) > 999:
        parser.error("--senders: 1 to 999 senders per cell")
    args.servers = [s for s in args.servers.split(",") if s]
    unknown = set(args.servers) - set(SERVER_CONFIGS)
    if unknown or not args.servers:
        parser.error(f"--servers: unknown {', '.join(sorted(unknown)) or '(none given)'}")
    if not GUNICORN.exists():
        parser.error(f"gunicorn is not installed next to {sys.executable}")
    args.workers = f"{args.client_processes} process(es) with threads"  # run_parts prints it
    args.only = None
    check_loopback(args.url)
    check_redis_loopback(args.redis_url)
    verdicts = []

    def bench(args, schema):
        data = bench_sms(args, schema)
        verdicts.append(target_verdict(args, data))
        return data

    run_parts(args, argv, "bench/bench_sms.py", SECTION, [
        ("sms", "SMS commands vs. static TwiML through gunicorn:",
         "SMS commands vs. static TwiML (gunicorn + PostgreSQL + Redis)", bench, sms_markdown),
    ])
    if verdicts and verdicts[0] and not args.no_write:
        measured, _, status = verdicts[0]
        update_target_row(Path(args.output), measured, status, max(args.senders))
        print("targets table: SMS row written")


if __name__ == "__main__":
    main()
