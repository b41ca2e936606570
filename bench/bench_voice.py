#!/usr/bin/env python
"""Voice dialog: how long the standard calls last, and server time per dialog step.

    python bench/bench_voice.py [--url URL] [--redis-url URL] [--seconds S]
                                [--calls 1,10,50] [--pin-calls 1,10]
                                [--servers sync,gthread] [--only calls steps]
                                [--profile N] [--no-write]

Two benchmarks (``--only`` picks some; both run by default):

``calls``
    The standard flows driven with ``ivrs.demo.phone.Phone`` through the Flask app
    in this process (``AppTransport``, the demo study in a SQLite file): sign-in,
    screening, a randomization call from dialing to the kit number, a
    dispensation on day 28 and a shipment receipt with every kit in good
    condition. Each call's length is estimated from what it says and what the
    caller types: words at ``--wpm`` (150) words per minute, a digit read one by
    one counting as one word; ``--key-seconds`` (0.5) per key pressed, ``#``
    included; ``--turn-seconds`` (0.5) per request for the round trip and the
    start of speech. The caller is assumed to listen to every prompt to its end
    (no barge-in), so this is the upper bound a new user meets.
``steps``
    Server time per dialog step through gunicorn + PostgreSQL + Redis with 1,
    10 and 50 concurrent calls (``--calls``), next to ``/static-twiml`` (a
    fixed answer from the same server: the ceiling) measured the same way with
    the same concurrency in the same server run; then the PIN step (argon2 and a
    transaction) with 1 and 10 (``--pin-calls``). gunicorn is started here as a
    subprocess in its own process group (5 sync workers, and 2 gthread workers
    x 8 threads; ``--servers``) and killed at the end. The load comes from
    separate client processes (``--client-processes``, threads inside) over raw
    HTTP/1.1 sockets, every request signed with ``X-Twilio-Signature``.

A dialog step is one webhook request of a signed-in call; each call cycles
through four non-committing steps, each carrying the step token the previous
answer gave: menu "2" (randomize: the subject-number prompt), the subject
number (read back), "1" (correct: the read-only randomization preview in
PostgreSQL, then the first eligibility question) and "*" (back to the menu).
Each one loads the session from Redis, moves the dialog, renders TwiML and
saves the session. The PIN step is the third request of a call (dial, user
ID, PIN); every client has its own user, as real callers do.

The database is a fresh ``bench_<random>`` PostgreSQL schema (loopback only),
migrated, loaded with the demo study, dropped at the end. Sessions go to Redis
database 14 (``--redis-url``) under call SIDs unique to this run; exactly those
keys are deleted at the end (nothing else in that database is touched).
Every measurement is a ``--warmup`` (1 s) and then a ``--seconds`` (5 s)
window. ``--profile N`` also profiles N dialog steps in this process (cProfile,
the same app on the same schema and Redis) and prints where the time goes.

Results are printed and written into BENCHMARKS.md, section "Voice dialog" (one
subsection per benchmark, replaced on each run; other sections are kept), and
the dialog-step row of the targets table at the top of the file.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing
import os
import pstats
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_randomize import (  # the foundation benchmark's plumbing
    LOOPBACK,
    ROOT,
    Schema,
    check_loopback,
    percentile,
    run_parts,
)

from core.actors import ADMIN, Actor
from core.db import Database
from core.login import change_pin
from core.migrate import upgrade
from core.subjects import screen_subject
from core.supply.resupply import run_resupply
from core.supply.shipments import dispatch_shipment
from core.users import add_user
from ivrs.app import create_app
from ivrs.config import Settings
from ivrs.conversations import calls as voice_calls
from ivrs.conversations.sessions import MemorySessionStore, RedisSessionStore
from ivrs.demo.phone import AppTransport, Phone
from ivrs.demo.scenario import STUDY_CODE, set_up_demo_study

DEFAULT_URL = "postgresql://postgres@127.0.0.1/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"
SECTION = "Voice dialog"
GUNICORN = Path(sys.executable).parent / "gunicorn"
TOKEN = "bench-twilio-auth-token"
DIALED = "+15005550006"  # the demo study's number
PARIS, PARIS_USER, PARIS_PIN = "+33612345678", "5001", "2468"
BERLIN, BERLIN_USER, BERLIN_PIN = "+4915112345678", "5003", "8642"
BENCH_PIN = "2468"
SITE = "101"
# The project's target for one dialog step at 50 concurrent calls (issue text).
TARGET_THROUGHPUT, TARGET_P99 = 0.5, 4.0
TARGET_SPEECH_SECONDS = 90.0


# --- 1. call length --------------------------------------------------------------------------


@dataclass
class Turn:
    keys: str | None  # what the caller typed before this answer (None: dialing)
    text: str  # what the answer says


@dataclass
class Flow:
    name: str
    turns: list[Turn] = field(default_factory=list)

    def add(self, keys: str | None, heard) -> None:
        self.turns.append(Turn(keys, heard.text))


def spoken_words(text: str) -> int:
    """Words as a TTS voice says them: "1 0 1" is three words, "18" one."""
    return len([w for w in re.split(r"\s+", text) if re.search(r"\w", w)])


def estimate(flow: Flow, args, menu: str | None = None) -> dict:
    """Seconds for speech, keys and turns; the final menu re-read is not counted
    (the caller has heard the result and hangs up)."""
    words = keys = 0
    for index, turn in enumerate(flow.turns):
        text = turn.text
        if index == len(flow.turns) - 1 and menu and text.endswith(menu) and text != menu:
            text = text[: -len(menu)]
        words += spoken_words(text)
        keys += len(turn.keys or "")
    speech = words * 60.0 / args.wpm
    key_time = keys * args.key_seconds
    turn_time = len(flow.turns) * args.turn_seconds
    return {"name": flow.name, "turns": len(flow.turns), "words": words, "keys": keys,
            "speech": speech, "key_time": key_time, "turn_time": turn_time,
            "total": speech + key_time + turn_time, "last": flow.turns[-1].text}


def drive(phone: Phone, flow: Flow, keys: list[str], expect: str | None = None):
    heard = None
    for key in keys:
        heard = phone.press(key)
        flow.add(key, heard)
    if expect and expect not in heard.text:
        raise SystemExit(f"{flow.name}: expected {expect!r}, heard {heard.text!r}")
    return heard


def sign_in(phone: Phone, flow: Flow, user: str, pin: str) -> str:
    flow.add(None, phone.dial())
    heard = drive(phone, flow, [f"{user}#", f"{pin}#"], "To ")
    return heard.text


def bench_calls(args, schema) -> dict:
    """The standard flows through the app in this process, on a SQLite file."""
    previous_today = os.environ.get("IVRS_TODAY")
    day0 = date.fromisoformat(args.today)
    with tempfile.TemporaryDirectory(prefix="bench_voice_") as workdir:
        os.environ["IVRS_TODAY"] = day0.isoformat()
        try:
            db = Database(f"sqlite:///{Path(workdir) / 'voice.sqlite3'}")
            upgrade(db.engine)
            set_up_demo_study(db, Path(workdir), lambda line: None, users_language="en")
            app = create_app(Settings(database_url="unused", twilio_auth_token=TOKEN), db=db,
                             store=MemorySessionStore())

            def phone(caller: str) -> Phone:
                return Phone(AppTransport(app), caller=caller, auth_token=TOKEN)

            flows: list[tuple[Flow, bool]] = []  # (flow, includes sign-in)
            login = Flow("sign-in (dial, user ID, PIN, main menu)")
            menu = sign_in(phone(PARIS), login, PARIS_USER, PARIS_PIN)
            flows.append((login, True))

            call = phone(PARIS)
            screen = Flow("screen a subject (from the menu)")
            sign_in(call, Flow("-"), PARIS_USER, PARIS_PIN)
            heard = drive(call, screen, ["1", "1"], "new subject number is")
            subject = re.search(r"is ((?:\d )+\d)", heard.text).group(1).replace(" ", "")
            flows.append((screen, False))

            call = phone(PARIS)
            rand = Flow("randomize: dial to kit number")
            sign_in(call, rand, PARIS_USER, PARIS_PIN)
            # sex female (2), age under 65 (1), then confirm
            drive(call, rand, ["2", f"{subject}#", "1", "1", "1", "1", "2", "1", "1"],
                  "give kit")
            flows.append((rand, True))

            os.environ["IVRS_TODAY"] = (day0 + timedelta(days=28)).isoformat()
            call = phone(PARIS)
            disp = Flow("dispense at visit 2 (day 28): dial to kit numbers")
            sign_in(call, disp, PARIS_USER, PARIS_PIN)
            drive(call, disp, ["3", f"{subject}#", "1", "1"], "give kit")
            flows.append((disp, True))

            os.environ["IVRS_TODAY"] = day0.isoformat()
            shipments = run_resupply(db, study=STUDY_CODE)
            shipment = next(s for s in shipments if s.site == "103")
            dispatch_shipment(db, shipment_number=shipment.shipment_number, carrier="DHL",
                              tracking_number="T1", actor=ADMIN, study=STUDY_CODE)
            call = phone(BERLIN)
            receipt = Flow(f"shipment receipt, {shipment.kits} kits all good: dial to "
                           "confirmation")
            sign_in(call, receipt, BERLIN_USER, BERLIN_PIN)
            drive(call, receipt, ["5", f"{shipment.shipment_number}#", "1", "1", "1"],
                  "is received")
            flows.append((receipt, True))
            db.dispose()
        finally:
            if previous_today is None:
                os.environ.pop("IVRS_TODAY", None)
            else:
                os.environ["IVRS_TODAY"] = previous_today
    rows = [estimate(flow, args, menu) | {"with_sign_in": signed} for flow, signed in flows]
    return {"rows": rows, "menu_words": spoken_words(menu)}


def calls_markdown(args, data: dict) -> list[str]:
    lines = [
        ("The standard flows, driven with `ivrs.demo.phone.Phone` through the app in-process "
         "(demo study, SQLite file, English prompts). Estimated length = words spoken at "
         f"{args.wpm:g} words per minute (a number read digit by digit counts one word per "
         f"digit) + {args.key_seconds:g} s per key pressed (`#` included) + "
         f"{args.turn_seconds:g} s per turn (request, answer, start of speech). The caller is "
         "assumed to hear every prompt to its end (no barge-in, although the prompts sit "
         "inside `<Gather>` so that a user who knows the menu can key ahead): an upper "
         "bound for a new user. The main menu read again after a result is not counted "
         f"(the caller hangs up; it is {data['menu_words']} words, "
         f"{data['menu_words'] * 60 / args.wpm:.0f} s)."),
        "",
        "| flow | turns | words | keys | speech s | keys s | turns s | total s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        lines.append(f"| {r['name']} | {r['turns']} | {r['words']} | {r['keys']} "
                     f"| {r['speech']:.1f} | {r['key_time']:.1f} | {r['turn_time']:.1f} "
                     f"| **{r['total']:.0f}** |")
    rand = next(r for r in data["rows"] if r["name"].startswith("randomize"))
    verdict = "holds" if rand["speech"] <= TARGET_SPEECH_SECONDS else "does not hold"
    lines += [
        "",
        (f"Randomization call from login to kit number: {rand['speech']:.0f} s of speech "
         f"({rand['words']} words), {rand['total']:.0f} s with keys and turns. The "
         f"\"about {TARGET_SPEECH_SECONDS:.0f} s of speech\" target {verdict}. Its last "
         f"answer: \"{_without_menu(rand['last'])}\""),
        "",
    ]
    return lines


def _without_menu(text: str) -> str:
    cut = text.find(" To screen a subject")
    return text if cut < 0 else text[:cut]


# --- 2. server: gunicorn on PostgreSQL + Redis ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command name) of every process we can see."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, tail = (entry / "stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        found.append((int(entry.name), int(tail.split()[1]), head.split("(", 1)[1]))
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class Server:
    """gunicorn serving ``ivrs.app:create_app()``, in its own process group."""

    def __init__(self, name: str, worker_args: list[str], env: dict[str, str], log: Path):
        self.name, self.worker_args = name, worker_args
        self.port = free_port()
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen(
            [str(GUNICORN), "--bind", f"127.0.0.1:{self.port}", *worker_args,
             "--timeout", "60", "--graceful-timeout", "5", "ivrs.app:create_app()"],
            cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True)
        self._wait_healthy()

    def _wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz",
                                            timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise SystemExit(f"gunicorn ({self.name}) did not become healthy:\n"
                         + self.log.read_text()[-3000:])

    def workers(self) -> list[int]:
        return [pid for pid, parent, _ in processes() if parent == self.process.pid]

    def cpu(self) -> float:
        return sum(proc_cpu(pid) for pid in [self.process.pid, *self.workers()])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # our own group: gunicorn only
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self._log_file.close()


class Backends:
    """The PostgreSQL backends serving our gunicorn (found by application_name) and
    the Redis server (shared with whoever else uses it)."""

    def __init__(self, schema: Schema, application_name: str):
        self.schema, self.application_name = schema, application_name
        self.redis = [pid for pid, _, name in processes() if name == "redis-server"]

    def sample(self) -> dict[int, float]:
        with self.schema.connect(autocommit=True) as conn:
            pids = [row[0] for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                (self.application_name,))]
        return {pid: proc_cpu(pid) for pid in pids}

    def redis_cpu(self) -> float:
        return sum(proc_cpu(pid) for pid in self.redis)

    @staticmethod
    def spent(before: dict[int, float], after: dict[int, float]) -> float:
        """CPU seconds of the backends alive at both samples (pooled: nearly all)."""
        return sum(after[pid] - before[pid] for pid in before.keys() & after.keys())


# --- the load generator (runs in separate processes) ---------------------------------------------


class BadAnswer(RuntimeError):
    pass


class HttpClient:
    """One keep-alive HTTP/1.1 connection (reopened when the server closes it, as
    gunicorn's sync workers do after every response), signing like Twilio."""

    def __init__(self, port: int, token: str):
        from twilio.request_validator import RequestValidator

        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.validator = RequestValidator(token)
        self.sock: socket.socket | None = None

    def post(self, path: str, form: dict[str, str]) -> tuple[int, bytes]:
        body = urllib.parse.urlencode(form).encode()
        signature = self.validator.compute_signature(self.base + path, form)
        data = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(body)}\r\nX-Twilio-Signature: {signature}\r\n\r\n"
                ).encode() + body
        reused = self.sock is not None
        try:
            return self._exchange(data)
        except (ConnectionError, BadAnswer):
            self.close()
            if not reused:
                raise
            return self._exchange(data)  # a keep-alive connection the server had closed

    def _exchange(self, data: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(data)
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BadAnswer("connection closed before an answer")
            buffer += chunk
        head, body = buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in
                   (line.split(":", 1) for line in lines[1:] if ":" in line)}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BadAnswer("connection closed in the middle of an answer")
            body += chunk
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


_STEP = re.compile(rb"step=(\d+)")
# The dialog cycle: keys, what the answer must contain, the step's label.
CYCLE = (("2", b"Enter the subject number", "subject prompt"),
         (None, b"You entered", "read back"),
         ("1", b"18 or older", "preview (PostgreSQL read)"),
         ("*", b"To screen a subject", "back to menu"))


class VoiceCall:
    """One caller's side of a call, as Twilio would send it."""

    def __init__(self, client: HttpClient, call_sid: str, caller: str):
        self.client, self.call_sid, self.caller = client, call_sid, caller
        self.step = 0

    def send(self, digits: str | None, expect: bytes) -> bytes:
        form = {"CallSid": self.call_sid, "AccountSid": "AC" + "0" * 32, "From": self.caller,
                "To": DIALED, "CallStatus": "in-progress", "Direction": "inbound"}
        if digits is not None:
            form["Digits"] = digits
        path = "/voice" if self.step == 0 else f"/voice?step={self.step}"
        status, body = self.client.post(path, form)
        if status != 200 or expect not in body:
            raise BadAnswer(f"step {self.step}: HTTP {status}, expected {expect!r}: "
                            f"{body[:300]!r}")
        found = _STEP.search(body)
        self.step = int(found.group(1)) if found else -1
        return body


@dataclass
class Job:
    kind: str  # dialog, static, pin
    port: int
    token: str
    users: list[tuple[str, str, str]]  # (user code, phone, PIN), one per concurrent call
    subject: str
    sid_prefix: str
    warmup: float
    seconds: float


def client_thread(job: Job, index: int, ready: threading.Barrier, go: threading.Event,
                  start: list[float], samples: list, errors: list) -> None:
    user, phone, pin = job.users[index]
    client = HttpClient(job.port, job.token)
    serial = 0

    def new_call() -> VoiceCall:
        nonlocal serial
        serial += 1
        return VoiceCall(client, f"{job.sid_prefix}{index:03d}x{serial:07d}", phone)

    call = None
    try:
        if job.kind == "dialog":
            call = new_call()
            call.send(None, b"user ID")
            call.send(user, b"PIN")
            call.send(pin, b"To screen a subject")
    except Exception as error:  # noqa: BLE001 — reported, the others go on
        errors.append(f"sign-in: {error}")
        ready.abort()
        return
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        return
    go.wait()
    measured_from = start[0] + job.warmup
    until = measured_from + job.seconds
    static_form = {"CallSid": "CA" + "0" * 32, "From": phone, "To": DIALED}
    clock = time.perf_counter
    position = 0
    try:
        while time.time() < until:
            if job.kind == "static":
                began = clock()
                status, body = client.post("/static-twiml", static_form)
                took = clock() - began
                if status != 200 or b"Static." not in body:
                    raise BadAnswer(f"static: HTTP {status}")
                label = "static"
            elif job.kind == "dialog":
                keys, expect, label = CYCLE[position]
                began = clock()
                call.send(job.subject if keys is None else keys, expect)
                took = clock() - began
                position = (position + 1) % len(CYCLE)
            else:
                call = new_call()
                call.send(None, b"user ID")
                call.send(user, b"PIN")
                began = clock()
                call.send(pin, b"To screen a subject")
                took = clock() - began
                label = "pin"
            ended = time.time()
            if measured_from <= ended <= until:
                samples.append((label, took))
    except Exception as error:  # noqa: BLE001
        errors.append(f"{job.kind}: {error}")
    finally:
        client.close()


def run_clients(client_thread, job, indexes: list[int], pipe) -> None:
    """A client process: one thread per call (or sender) running ``client_thread``;
    reports when every one is ready, starts them together, measures its own CPU
    over the window and sends back (samples, errors, CPU seconds)."""
    ready = threading.Barrier(len(indexes) + 1)  # every call signed in (dialog)
    go = threading.Event()
    start = [0.0]
    samples: list = []
    errors: list = []
    threads = [threading.Thread(target=client_thread,
                                args=(job, i, ready, go, start, samples, errors), daemon=True)
               for i in indexes]
    for thread in threads:
        thread.start()
    try:
        ready.wait(timeout=120)
    except threading.BrokenBarrierError:
        pass
    pipe.send("ready")
    start[0] = pipe.recv()
    go.set()
    measured_from = start[0] + job.warmup
    time.sleep(max(0.0, measured_from - time.time()))
    cpu_from = time.process_time()
    time.sleep(max(0.0, measured_from + job.seconds - time.time()))
    cpu_to = time.process_time()
    for thread in threads:
        thread.join(timeout=120)
    pipe.send((samples, errors, cpu_to - cpu_from))
    pipe.close()


def client_process(job: Job, indexes: list[int], pipe) -> None:
    run_clients(client_thread, job, indexes, pipe)


def fan_out(args, server: Server, backends: Backends, process, job, count: int, cell) -> None:
    """Run ``count`` clients in ``args.client_processes`` forked processes (``process``
    is their body), started together; sample the server's, PostgreSQL's and Redis's
    CPU and the machine's busy share over the measured window; gather every
    process's samples, errors and CPU into ``cell``."""
    context = multiprocessing.get_context("fork")
    nproc = max(1, min(args.client_processes, count))
    pipes, children = [], []
    for part in (list(range(count))[p::nproc] for p in range(nproc)):
        ours, theirs = context.Pipe()
        child = context.Process(target=process, args=(job, part, theirs), daemon=True)
        child.start()
        pipes.append(ours)
        children.append(child)
    for pipe in pipes:
        if not pipe.poll(180):
            raise SystemExit("a client process did not get ready")
        pipe.recv()
    start = time.time() + 0.3
    for pipe in pipes:
        pipe.send(start)
    time.sleep(max(0.0, start + args.warmup - time.time()))
    server_from, busy_from = server.cpu(), machine_busy()
    pg_from, redis_from = backends.sample(), backends.redis_cpu()
    time.sleep(max(0.0, start + args.warmup + args.seconds - time.time()))
    server_to, busy_to = server.cpu(), machine_busy()
    pg_to, redis_to = backends.sample(), backends.redis_cpu()
    for pipe, child in zip(pipes, children, strict=True):
        if not pipe.poll(300):
            raise SystemExit("a client process did not finish")
        samples, errors, client_cpu = pipe.recv()
        cell.samples += samples
        cell.errors += errors
        cell.client_cpu += client_cpu
        child.join(10)
    cell.server_cpu = server_to - server_from
    cell.postgres_cpu = Backends.spent(pg_from, pg_to)
    cell.redis_cpu = redis_to - redis_from
    cell.busy = (busy_to[0] - busy_from[0]) / max(1, busy_to[1] - busy_from[1])


@dataclass
class Cell:
    kind: str
    calls: int
    seconds: float
    samples: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    server_cpu: float = 0.0
    postgres_cpu: float = 0.0
    redis_cpu: float = 0.0
    client_cpu: float = 0.0
    busy: float = 0.0  # machine CPU busy share during the window

    @property
    def count(self) -> int:
        return len(self.samples)

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def ms(self, q: float, label: str | None = None) -> float:
        return 1000 * percentile([t for l, t in self.samples if label in (None, l)], q)

    def per_request(self, seconds: float) -> float:
        return 1000 * seconds / self.count if self.count else float("nan")


def measure(args, server: Server, backends: Backends, kind: str, users: list, subject: str,
            run_id: str, cell_no: int) -> Cell:
    calls = len(users)
    job = Job(kind, server.port, TOKEN, users, subject, f"CA{run_id}{cell_no:02d}",
              args.warmup, args.seconds)
    cell = Cell(kind, calls, args.seconds)
    fan_out(args, server, backends, client_process, job, calls, cell)
    for error in cell.errors[:3]:
        print(f"  client error ({kind}, {calls} calls): {error}", flush=True)
    print(f"  {server.name:8} {kind:6} {calls:3} calls: {cell.rate:7.1f}/s  p50 {cell.ms(0.5):6.1f}"
          f" ms  p99 {cell.ms(0.99):6.1f} ms  server CPU {cell.per_request(cell.server_cpu):.2f}"
          f" ms/req  machine busy {cell.busy:.0%}", flush=True)
    return cell


def bench_users(db: Database, count: int) -> list[tuple[str, str, str]]:
    """``count`` site coordinators at site 101 with their own phones and final PINs."""
    users = []
    for n in range(count):
        # 8001 up: clear of the demo study's user IDs (5001 to 7001)
        code, phone = f"{8001 + n}", f"+3361000{n:04d}"
        add_user(db, user_code=code, name=f"Bench caller {n}", role="site_coordinator",
                 sites=[SITE], phone=phone, language="en", pin="1111", actor=ADMIN,
                 study=STUDY_CODE)
        change_pin(db, user_code=code, new_pin=BENCH_PIN, study=STUDY_CODE,
                   actor=Actor(role="site_coordinator", user_code=code,
                               site_codes=frozenset({SITE}), channel="bench"))
        users.append((code, phone, BENCH_PIN))
    return users


def server_env(args, schema: Schema, application_name: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"DATABASE_URL": f"{schema.url}&application_name={application_name}", "REDIS_URL": args.redis_url,
                "TWILIO_AUTH_TOKEN": TOKEN, "IVRS_TODAY": args.today, "IVRS_ENV": "uat",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                            env.get("PYTHONPATH")]))})
    env.pop("PUBLIC_BASE_URL", None)  # the signed URL is the one we call
    return env


SERVER_CONFIGS = {
    "sync": lambda args: ["--workers", str(args.sync_workers), "--worker-class", "sync"],
    "gthread": lambda args: ["--workers", str(args.gthread_workers), "--worker-class",
                             "gthread", "--threads", str(args.gthread_threads)],
}


def describe_server(args, name: str) -> str:
    if name == "sync":
        return f"{args.sync_workers} sync workers"
    return f"{args.gthread_workers} gthread workers x {args.gthread_threads} threads"


def delete_sessions(redis_url: str, run_id: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{RedisSessionStore.PREFIX}voice:CA{run_id}*",
                                 count=1000))
    for at in range(0, len(keys), 500):
        client.delete(*keys[at:at + 500])
    client.close()
    return len(keys)


def bench_steps(args, schema: Schema) -> dict:
    os.environ["IVRS_TODAY"] = args.today  # set-up services run on the same day as the server
    db = schema.database(4)
    run_id = secrets.token_hex(4)
    results: dict[str, dict] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench_voice_") as workdir:
            set_up_demo_study(db, Path(workdir), lambda line: None, users_language="en")
            paris = Actor(role="site_coordinator", user_code=PARIS_USER,
                          site_codes=frozenset({SITE}), channel="bench")
            subject = screen_subject(db, site_code=SITE, actor=paris,
                                     study=STUDY_CODE).subject_number
            users = bench_users(db, max(args.calls + args.pin_calls))
            application_name = f"bench_voice_{run_id}"
            env = server_env(args, schema, application_name)
            backends = Backends(schema, application_name)
            cell_no = 0
            for name in args.servers:
                server = Server(name, SERVER_CONFIGS[name](args), env,
                                Path(workdir) / f"gunicorn-{name}.log")
                print(f"gunicorn {describe_server(args, name)} on port {server.port}",
                      flush=True)
                rows, pins = [], []
                try:
                    for calls in args.calls:
                        pair = []
                        for kind in ("dialog", "static"):
                            cell_no += 1
                            pair.append(measure(args, server, backends, kind, users[:calls], subject,
                                                run_id, cell_no))
                        rows.append(tuple(pair))
                    for calls in args.pin_calls:
                        cell_no += 1
                        pins.append(measure(args, server, backends, "pin", users[:calls], subject,
                                            run_id, cell_no))
                finally:
                    server.stop()
                results[name] = {"rows": rows, "pins": pins}
            profile = profile_steps(args, schema, db, users[0], subject, run_id) \
                if args.profile else None
    finally:
        deleted = delete_sessions(args.redis_url, run_id)
        print(f"deleted {deleted} session keys of this run from {args.redis_url}", flush=True)
        db.dispose()
    return {"servers": results, "subject": subject, "profile": profile}


def profile_steps(args, schema: Schema, db: Database, user, subject: str, run_id: str) -> dict:
    """N dialog steps through the app in this process (Flask test client, the same
    schema and Redis), under cProfile: where a step's time goes."""
    app = create_app(Settings(database_url=schema.url, redis_url=args.redis_url,
                              twilio_auth_token=TOKEN), db=db)
    code, phone_number, pin = user
    phone = Phone(AppTransport(app), caller=phone_number, auth_token=TOKEN)
    keys = ["2", f"{subject}#", "1", "*"]
    # CPU time, not wall time: on a shared machine the wall clock mostly measures waiting
    # for a core; what limits throughput is the CPU a step costs.
    profiler = cProfile.Profile(time.process_time)
    try:
        phone.dial()
        phone.press(f"{code}#")
        phone.press(f"{pin}#")
        for key in keys * 5:  # warm
            phone.press(key)
        began = time.process_time()
        for n in range(args.profile):
            phone.press(keys[n % len(keys)])
        step_cpu = (time.process_time() - began) / args.profile
        client = app.test_client()
        began = time.process_time()
        for _ in range(args.profile):
            client.post("/static-twiml", data={"CallSid": "CA" + "0" * 32})
        static_cpu = (time.process_time() - began) / args.profile
        profiler.enable()
        for n in range(args.profile):
            phone.press(keys[n % len(keys)])
        profiler.disable()
    finally:
        voice_calls.end(app.extensions["ivrs"].store, phone.call_sid)  # its session goes too
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(40)
    stats.sort_stats("tottime").print_stats(25)
    print(out.getvalue())
    return {"steps": args.profile, "step_cpu_ms": step_cpu * 1000,
            "static_cpu_ms": static_cpu * 1000, "top": _top_costs(stats, args),
            "own": _own_costs(stats, args)}


# (label, end of the file name, function name) of the costs worth naming
PROFILE_PARTS = (
    ("Flask dispatch (routes and before_request)", "flask/app.py", "full_dispatch_request"),
    ("signature check (RequestValidator)", "webhooks.py", "signature_valid"),
    ("calls.answer (session, dialog, TwiML)", "ivrs/conversations/calls.py", "answer"),
    ("session load from Redis", "ivrs/conversations/sessions.py", "load"),
    ("session save to Redis", "ivrs/conversations/sessions.py", "save"),
    ("dialog step (dialogs.voice.run)", "dialogs/voice/machine.py", "run"),
    ("transitions add_model", "transitions/core.py", "add_model"),
    ("transitions remove_model", "transitions/core.py", "remove_model"),
    ("TwiML render (ivrs.render.twiml.voice_response)", "ivrs/render/twiml.py", "voice_response"),
    ("randomization preview (PostgreSQL read)", "core/previews.py", "randomization_questions"),
)


def _own_costs(stats: pstats.Stats, args, count: int = 12) -> list[tuple[str, float]]:
    """The functions with the most CPU of their own (not counting callees)."""
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:count]
    return [(f"{_short(filename)}:{function}", 1000 * row[2] / args.profile)
            for (filename, _, function), row in rows]


def _short(filename: str) -> str:
    for marker in ("site-packages/", f"{ROOT}/", "python3.11/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _top_costs(stats: pstats.Stats, args) -> list[tuple[str, float]]:
    found = []
    for label, suffix, name in PROFILE_PARTS:
        total = max((row[3] for (filename, _, function), row in stats.stats.items()
                     if function == name and filename.endswith(suffix)), default=0.0)
        found.append((label, 1000 * total / args.profile))
    return found


def steps_markdown(args, data: dict) -> list[str]:
    lines = [
        ("gunicorn (started by the script, `ivrs.app:create_app()`) on PostgreSQL (a fresh "
         "schema, the demo study loaded) and Redis (sessions). A dialog step is one signed "
         "`/voice` request of a signed-in call; each call cycles through menu \"2\" → "
         "subject number → \"1\" (the read-only randomization preview in PostgreSQL, then "
         "the first eligibility question) → \"*\" (back to the menu), every request "
         "carrying the step token of the previous answer (session loaded from Redis, dialog "
         "moved, TwiML rendered, session saved). The ceiling is `/static-twiml` from the "
         "same server, with the same number of concurrent calls, same client, same run. "
         f"Clients: {args.client_processes} separate process(es) with one thread per call, "
         "raw HTTP/1.1 sockets (keep-alive where the server allows it; sync workers close "
         "the connection after each answer, so every request there includes a TCP "
         f"connect, for both routes). {args.seconds:g} s measured after {args.warmup:g} s "
         "warm-up per cell. The two cores are shared by the server, PostgreSQL, Redis and "
         "the clients: \"server CPU\" is the gunicorn processes' CPU time per request "
         "during the window, \"PG CPU\" that of the PostgreSQL backends serving it (by "
         "`application_name`), \"Redis CPU\" that of the Redis server (shared with any "
         "other user of it), \"machine busy\" the share of both cores in use."),
        "",
    ]
    for name, result in data["servers"].items():
        lines += [f"**{describe_server(args, name)}**", "",
                  ("| calls | step/s | static/s | step ÷ static (≥ 0.5) | step p50 ms "
                   "| step p99 ms | static p50 ms | static p99 ms | p99 step ÷ static (≤ 4) "
                   "| server CPU ms/step | server CPU ms/static | PG CPU ms/step "
                   "| Redis CPU ms/step | machine busy |"),
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for step, static in result["rows"]:
            lines.append(
                f"| {step.calls} | {step.rate:.0f} | {static.rate:.0f} "
                f"| {_ratio(step.rate, static.rate):.2f} | {step.ms(0.5):.1f} "
                f"| {step.ms(0.99):.1f} | {static.ms(0.5):.1f} | {static.ms(0.99):.1f} "
                f"| {_ratio(step.ms(0.99), static.ms(0.99)):.1f} "
                f"| {step.per_request(step.server_cpu):.2f} "
                f"| {static.per_request(static.server_cpu):.2f} "
                f"| {step.per_request(step.postgres_cpu):.2f} "
                f"| {step.per_request(step.redis_cpu):.2f} | {step.busy:.0%} |")
        lines += ["", "p50 by kind of step (ms): " + "; ".join(
            f"{calls} call(s): " + ", ".join(
                f"{label} {step.ms(0.5, label):.1f}" for _, _, label in CYCLE)
            for calls, (step, _) in zip(args.calls, result["rows"])) + ".", ""]
        if result["pins"]:
            lines += [("PIN step (the third request of a call: argon2id check and a "
                       "transaction with the user row lock and an audit row), each call with "
                       "its own user:"), "",
                      ("| calls | PIN steps/s | p50 ms | p99 ms | server CPU ms/step "
                       "| PG CPU ms/step |"),
                      "|---:|---:|---:|---:|---:|---:|"]
            for pin in result["pins"]:
                # Each call also dials and enters its user ID: CPU is per PIN step (3 requests).
                lines.append(f"| {pin.calls} | {pin.rate:.0f} | {pin.ms(0.5):.1f} "
                             f"| {pin.ms(0.99):.1f} | {pin.per_request(pin.server_cpu):.2f} "
                             f"| {pin.per_request(pin.postgres_cpu):.2f} |")
            lines += ["", ("The PIN rows' CPU per step covers the whole sign-in (dial, user "
                           "ID and PIN: three requests)."), ""]
        errors = sum(len(c.errors) for row in result["rows"] for c in row) + \
            sum(len(c.errors) for c in result["pins"])
        if errors:
            lines += [f"**{errors} client(s) stopped on an error; see the console output.**",
                      ""]
    verdict = target_verdict(args, data)
    if verdict:
        lines += [f"Against the target at {max(args.calls)} calls: {verdict[1]}.", ""]
    profile = data.get("profile")
    if profile:
        lines += [(f"Where a step's CPU goes: {profile['steps']} steps of the same cycle "
                   "through the app in this process (Flask test client, same schema and "
                   f"Redis) cost {profile['step_cpu_ms']:.2f} ms CPU each without the "
                   "profiler (the test client and `Phone`'s signing and TwiML parsing "
                   f"included), a `/static-twiml` request {profile['static_cpu_ms']:.2f} ms. "
                   "Under cProfile (CPU clock, so inflated by the profiler), ms per step, "
                   "cumulative (parts overlap):"), ""]
        lines += [f"- {label}: {ms:.2f}" for label, ms in profile["top"] if ms]
        lines += ["", "Most CPU of their own (ms per step, under cProfile): " + "; ".join(
            f"`{name}` {ms:.2f}" for name, ms in profile["own"]) + ".", ""]
    return lines


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def target_verdict(args, data: dict) -> tuple[str, str, str] | None:
    """(measured, status, short status) for the targets table, from the sync run at
    the largest concurrency (the gthread figures follow it)."""
    parts, met = [], []
    for name, result in data["servers"].items():
        if not result["rows"]:
            continue
        step, static = result["rows"][-1]
        throughput = _ratio(step.rate, static.rate)
        p99 = _ratio(step.ms(0.99), static.ms(0.99))
        ok = throughput >= TARGET_THROUGHPUT and p99 <= TARGET_P99
        met.append(ok)
        parts.append(f"{describe_server(args, name)}: {step.rate:.0f} steps/s vs "
                     f"{static.rate:.0f} static ({throughput:.2f}), p99 {step.ms(0.99):.0f} vs "
                     f"{static.ms(0.99):.0f} ms ({p99:.1f}x)")
    if not parts:
        return None
    measured = "; ".join(parts)
    if all(met):
        status = "met"
    elif any(met):
        status = "met with " + ", ".join(describe_server(args, n) for n, ok in
                                         zip(data["servers"], met) if ok) + " only"
    else:
        status = "**not met**"
    return measured, f"{measured}: {status}", status


def update_target_row(path: Path, measured: str, status: str, calls: int) -> None:
    """Replace (or add) the dialog-step row of the targets table; other rows stay."""
    label = (f"dialog step at {calls} concurrent calls (gunicorn + PostgreSQL + Redis) ≥ 0.5 "
             "of the throughput of static TwiML from the same server, p99 within 4x")
    replace_target_row(path, f"| {label} | {measured} | {status} |", "| dialog step")


def replace_target_row(path: Path, row: str, prefix: str, after: str | None = None) -> None:
    """Put ``row`` in place of the targets table's row starting with ``prefix``; when
    there is none, after the row starting with ``after`` (or at the table's end).
    The benchmarks that read their cell against a target share this table."""
    lines = path.read_text().split("\n")
    start = next((i for i, line in enumerate(lines)
                  if line.startswith("## Against the project's targets")), None)
    if start is None:
        return
    first = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("|")), None)
    if first is None:
        return
    last = first
    while last + 1 < len(lines) and lines[last + 1].startswith("|"):
        last += 1
    table = range(first, last + 1)
    existing = next((i for i in table if lines[i].startswith(prefix)), None)
    if existing is not None:
        lines[existing] = row
    else:
        anchor = next((i for i in table if after and lines[i].startswith(after)), last)
        lines.insert(anchor + 1, row)
    path.write_text("\n".join(lines))


def target_status(met: list[tuple[bool, bool]]) -> str:
    """The targets table's verdict over (throughput met, p99 met) per server."""
    throughput_ok = all(t for t, _ in met)
    p99_ok = all(p for _, p in met)
    if throughput_ok and p99_ok:
        return "met"
    if p99_ok:
        return "p99 met; **throughput not met**"
    if throughput_ok:
        return "throughput met; **p99 not met**"
    return "**not met**"


# --- main -----------------------------------------------------------------------------------------


def check_redis_loopback(url: str) -> None:
    host = urllib.parse.urlsplit(url).hostname
    if host and host not in LOOPBACK:
        sys.exit(f"refusing Redis at {host!r}: this benchmark only talks to loopback addresses")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("IVRS_BENCH_DATABASE_URL", DEFAULT_URL),
                        help="PostgreSQL on a loopback address (default %(default)s)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS,
                        help="Redis on a loopback address (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--calls", default="1,10,50", help="concurrent calls (default 1,10,50)")
    parser.add_argument("--pin-calls", default="1,10",
                        help="concurrent calls for the PIN step (default 1,10)")
    parser.add_argument("--servers", default="sync,gthread",
                        help="gunicorn configurations: sync, gthread (default both)")
    parser.add_argument("--sync-workers", type=int, default=2 * (os.cpu_count() or 2) + 1)
    parser.add_argument("--gthread-workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--gthread-threads", type=int, default=8)
    parser.add_argument("--client-processes", type=int, default=2,
                        help="load generator processes (threads inside; default 2)")
    parser.add_argument("--today", default=os.environ.get("IVRS_TODAY")
                        or date.today().isoformat(), help="IVRS_TODAY for the calls")
    parser.add_argument("--wpm", type=float, default=150.0, help="calls: TTS words per minute")
    parser.add_argument("--key-seconds", type=float, default=0.5, help="calls: per key press")
    parser.add_argument("--turn-seconds", type=float, default=0.5, help="calls: per turn")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="steps: also profile N dialog steps in-process (cProfile)")
    parser.add_argument("--only", nargs="+", choices=["calls", "steps"])
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    args.calls = [int(c) for c in args.calls.split(",")]
    args.pin_calls = [int(c) for c in args.pin_calls.split(",") if c]
    args.servers = [s for s in args.servers.split(",") if s]
    unknown = set(args.servers) - set(SERVER_CONFIGS)
    if unknown:
        parser.error(f"--servers: unknown {', '.join(sorted(unknown))}")
    if not GUNICORN.exists():
        parser.error(f"gunicorn is not installed next to {sys.executable}")
    args.workers = f"{args.client_processes} process(es) with threads"  # run_parts prints it
    check_loopback(args.url)
    check_redis_loopback(args.redis_url)
    verdicts = []

    def steps(args, schema):
        data = bench_steps(args, schema)
        verdicts.append(target_verdict(args, data))
        return data

    run_parts(args, argv, "bench/bench_voice.py", SECTION, [
        ("calls", "call length of the standard flows (in-process, SQLite):",
         "Call length of the standard flows", bench_calls, calls_markdown),
        ("steps", "dialog step vs. static TwiML through gunicorn:",
         "Dialog step vs. static TwiML (gunicorn + PostgreSQL + Redis)", steps,
         steps_markdown),
    ])
    if verdicts and verdicts[0] and not args.no_write:
        measured, _, status = verdicts[0]
        update_target_row(Path(args.output), measured, status, max(args.calls))
        print("targets table: dialog-step row written")


if __name__ == "__main__":
    main()
