#!/usr/bin/env python
"""HTTP API: randomize through gunicorn, next to ``core.randomize`` in-process.

    python bench/bench_api.py [--url URL] [--redis-url URL] [--clients 8] [--seconds S]
                              [--servers gthread] [--in-process threads|processes]
                              [--no-screen] [--profile N] [--no-write]

gunicorn is started here as a subprocess in its own process group (2 gthread
workers x 8 threads by default; ``--servers sync,gthread`` adds 5 sync workers)
with DATABASE_URL (a fresh ``bench_<random>`` PostgreSQL schema, loopback only,
migrated, dropped at the end), REDIS_URL (the server's health check and the
static route's app need it; the API keeps nothing there) and TWILIO_AUTH_TOKEN.
The server, the load generator and the CPU accounting are bench_voice.py's
(``Server``, ``Backends``, ``HttpClient``, ``fan_out``): separate client
processes, one thread per API client, raw keep-alive HTTP/1.1; here the
requests are JSON with a bearer token instead of signed forms.

Every cell has a study of its own, made as bench_randomize.py makes its
studies (``tests/factories.make_study``: method ``list``, factors SEX and AGE,
4 strata, a list long enough for ``--warmup`` + ``--seconds`` at 1,000
randomizations a second), one site per client and one API client per site
(``core.api_clients.add_client``, role site_coordinator, the site its only
one). Subjects are pre-screened in bulk by SQL (bench_randomize's
``prescreen``); each client takes its own site's subjects in turn, its strata
in rotation. Cells, each ``--warmup`` (1 s) then ``--seconds`` (5 s), at every
``--clients`` count (default 8):

``key``
    ``POST /api/v1/subjects/{number}/randomize`` with an ``Idempotency-Key``
    unique to the request: the bearer token's lookup, the body validated, the
    key looked up, ``core.randomize.randomize`` (under the key's service
    key), the answer stored under the key.
``nokey``
    The same request without the header: token, body, randomize.
``screen`` (``--no-screen`` skips it)
    ``POST /api/v1/subjects`` (screening at the client's site) then the
    randomization of the new subject, both under keys: the EDC's whole path.
``static``
    ``/static-twiml`` from the same server with the same clients, right after
    (a fixed answer: the ceiling the dialog-step target is read against).
``in-process``
    The ceiling without HTTP: ``core.randomize.randomize`` called by as many
    threads in this process (bench_randomize.py's ``run_clients``, one shared
    ``Database``; ``--in-process processes``: forked processes with an engine
    each, no interpreter lock shared), each with the actor an API client gets,
    on a study of the same kind; with a key per call (as the ``key`` cell's
    service call has) and without (as ``nokey``). gunicorn is stopped by then.

Every answer must be the expected status with the expected JSON (the subject,
a randomization number, no arm: the clients are blinded); afterwards each
study must hold exactly one randomization per answer its clients got and, for
keyed cells, one kept API answer per request. Otherwise the script exits
non-zero and writes nothing. ``--profile N`` (default 200; 0 skips) also times
the parts of one request in this process, one at a time: the bearer-token
check, the key lookup, the answer store, ``randomize`` alone, and the whole
request through Flask's test client.

Results are printed and written into BENCHMARKS.md, section "HTTP API" (placed
after "SMS webhook"; its own subsection, replaced on each run; other sections
are kept), and the API row of the targets table.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_randomize import (  # the foundation benchmark's plumbing
    RANDOMIZE_RATE_CAP,
    ROOT,
    STRATA,
    YES,
    Sampler,
    Schema,
    _Own,
    _Shared,
    check_loopback,
    check_result,
    percentile,
    prescreen,
    run_parts,
)
from bench_randomize import run_clients as run_threads
from bench_sms import OUTBOUND_ENV
from bench_voice import (  # the voice benchmark's server and client plumbing
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
from factories import make_study  # tests/ is on the path (bench_randomize)
from sqlalchemy import event, func, select

from core.actors import ADMIN, Actor
from core.api_clients import add_client, authenticate
from core.api_requests import service_key, store_answer, stored_answer
from core.db import Database
from core.models import ApiClient, ApiRequest, Randomization, Study
from core.randomize import randomize
from ivrs.app import create_app
from ivrs.config import Settings
from ivrs.conversations.sessions import MemorySessionStore

DEFAULT_URL = "postgresql://postgres@127.0.0.1/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"
SECTION = "HTTP API"
AFTER = "SMS webhook"  # our section goes right after this one
API = "/api/v1"
# The dialog-step target (BENCHMARKS.md), which the API row is read against.
TARGET_THROUGHPUT, TARGET_P99 = 0.5, 4.0
KINDS = ("key", "nokey", "screen", "static")
LABELS = {"key": "randomize, with Idempotency-Key",
          "nokey": "randomize, without a key",
          "screen": "screen + randomize (both with keys)",
          "static": "`/static-twiml`"}


# --- set-up ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    """One API client: its site, its token and the subjects it randomizes (the
    first one before the start line, to warm its connection)."""

    name: str
    site: str
    token: str
    client_id: int
    subjects: tuple[tuple[str, dict], ...]  # (subject number, factors)


def new_study(db: Database, code: str, clients: int, per_client: int, *,
              screened: bool = True, tokens: bool = True) -> list[Client]:
    """A list study with one site per client and ``per_client`` pre-screened
    subjects at each (``screened``), a list long enough for all of them, and
    one site-coordinator API client per site (``tokens``)."""
    sites = tuple(str(101 + c) for c in range(clients))
    total = clients * per_client
    # Each client turns through the 4 strata, so a stratum gets at most
    # total / 4 + clients of them.
    make_study(db, code=code, method="list", sites=sites,
               list_per_stratum=total // 4 + clients + 10)
    numbers = prescreen(db, code, total) if screened else []
    by_site: dict[str, list[str]] = {site: [] for site in sites}
    for number in numbers:
        by_site[number[:-4]].append(number)  # prescreen numbers site code + 4 digits
    made = []
    for c, site in enumerate(sites):
        name = f"bench-{code.lower()}-{c}"
        token, client_id = "", c
        if tokens:
            token = add_client(db, name=name, role="site_coordinator", sites=[site],
                               actor=ADMIN, study=code).token
            client_id = authenticate(db, token).client_id
        made.append(Client(name, site, token, client_id, tuple(
            (number, STRATA[(c + j) % 4]) for j, number in enumerate(by_site[site]))))
    return made


def subjects_per_client(args, clients: int) -> int:
    """Enough for the whole cell at RANDOMIZE_RATE_CAP (a client that runs out
    stops early and the report says so), within a site's 9,999 numbers."""
    wanted = RANDOMIZE_RATE_CAP * (args.warmup + args.seconds) / clients
    return min(9_000, int(wanted) + 2)


def api_actor(client: Client) -> Actor:
    """The actor ``core.api_clients.authenticate`` gives this client's requests."""
    return Actor(role="site_coordinator", site_codes=frozenset({client.site}), channel="api",
                 client=client.name)


# --- the load generator (runs in separate processes) ---------------------------------------------


class ApiHttp(HttpClient):
    """bench_voice's keep-alive raw HTTP/1.1 connection, sending JSON with a bearer
    token (its signed ``post`` is still there for ``/static-twiml``)."""

    def __init__(self, port: int, bearer: str):
        super().__init__(port, TOKEN)
        self.bearer = bearer

    def post_json(self, path: str, body: dict, key: str | None = None) -> tuple[int, dict]:
        payload = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Authorization: Bearer {self.bearer}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n")
        if key is not None:
            head += f"Idempotency-Key: {key}\r\n"
        data = (head + "\r\n").encode() + payload
        reused = self.sock is not None
        try:
            status, answer = self._exchange(data)
        except (ConnectionError, BadAnswer):
            self.close()
            if not reused:
                raise
            status, answer = self._exchange(data)  # a keep-alive connection the server closed
        try:
            return status, json.loads(answer)
        except ValueError:
            raise BadAnswer(f"{path}: HTTP {status}, not JSON: {answer[:300]!r}") from None


@dataclass
class Job:
    kind: str  # key, nokey, screen, static
    port: int
    clients: list[Client]
    key_prefix: str  # Idempotency-Keys of this cell start with it
    warmup: float
    seconds: float


def client_thread(job: Job, index: int, ready: threading.Barrier, go: threading.Event,
                  start: list[float], samples: list, errors: list) -> None:
    client = job.clients[index]
    http = ApiHttp(job.port, client.token)
    subjects = iter(client.subjects)
    clock = time.perf_counter
    serial = acted = 0

    def new_key() -> str:
        nonlocal serial
        serial += 1
        return f"{job.key_prefix}-{index}-{serial}"

    def randomize_one(number: str, factors: dict, keyed: bool) -> None:
        nonlocal acted
        status, answer = http.post_json(f"{API}/subjects/{number}/randomize",
                                        {"factors": factors, "eligibility": YES},
                                        new_key() if keyed else None)
        if status != 200 or answer.get("subject_number") != number \
                or not answer.get("randomization_number") or not answer.get("confirmation"):
            raise BadAnswer(f"randomize {number}: HTTP {status}: {answer!r}")
        if "arm" in answer:
            raise BadAnswer(f"randomize {number}: a blinded client was told the arm")
        acted += 1

    def screen_one() -> str:
        status, answer = http.post_json(f"{API}/subjects", {"site": client.site}, new_key())
        number = str(answer.get("subject_number", ""))
        if status != 201 or answer.get("status") != "screened" \
                or not number.startswith(client.site):
            raise BadAnswer(f"screen at {client.site}: HTTP {status}: {answer!r}")
        return number

    static_form = {"CallSid": "CA" + "0" * 32, "From": "+15005550000", "To": DIALED}

    def step() -> list[tuple[str, float]] | None:
        """One unit of the cell, timed by request; None when out of subjects."""
        began = clock()
        if job.kind == "static":
            status, body = http.post("/static-twiml", static_form)
            if status != 200 or b"Static." not in body:
                raise BadAnswer(f"static: HTTP {status}: {body[:200]!r}")
            return [("static", clock() - began)]
        if job.kind == "screen":
            number = screen_one()
            middle = clock()
            randomize_one(number, STRATA[(index + acted) % 4], True)
            ended = clock()
            return [("screen", middle - began), ("randomize", ended - middle),
                    ("pair", ended - began)]
        number, factors = next(subjects, (None, None))
        if number is None:
            return None
        began = clock()
        randomize_one(number, factors, job.kind == "key")
        return [("randomize", clock() - began)]

    try:
        step()  # before the start line: connection open, server warm
    except Exception as error:  # noqa: BLE001 — reported; the cell fails
        errors.append(f"warm-up: {error}")
        samples.append(("_acted", float(acted)))
        ready.abort()
        return
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        samples.append(("_acted", float(acted)))
        return
    go.wait()
    measured_from = start[0] + job.warmup
    until = measured_from + job.seconds
    try:
        while time.time() < until:
            timed = step()
            if timed is None:
                samples.append(("_exhausted", 0.0))
                break
            if measured_from <= time.time() <= until:
                samples.extend(timed)
    except Exception as error:  # noqa: BLE001
        errors.append(f"{job.kind}: {error}")
    finally:
        samples.append(("_acted", float(acted)))  # every randomization it got an answer for
        http.close()


def client_process(job: Job, indexes: list[int], pipe) -> None:
    run_clients(client_thread, job, indexes, pipe)


@dataclass
class Cell:
    kind: str
    clients: int
    seconds: float
    unit: str  # the label the rate counts
    samples: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    server_cpu: float = 0.0
    postgres_cpu: float = 0.0
    redis_cpu: float = 0.0
    client_cpu: float = 0.0
    busy: float = 0.0  # the machine's CPU busy share during the window
    lock_share: float | None = None  # in-process: backends waiting on row locks
    calls: int = 0  # in-process: calls in all (warm-up included)

    def count(self, label: str | None = None) -> int:
        label = label or self.unit
        return sum(1 for name, _ in self.samples if name == label)

    def rate(self, label: str | None = None) -> float:
        return self.count(label) / self.seconds

    def ms(self, q: float, label: str | None = None) -> float:
        label = label or self.unit
        return 1000 * percentile([t for name, t in self.samples if name == label], q)

    @property
    def requests(self) -> int:
        return sum(self.count(label) for label in ("randomize", "screen", "static"))

    def per_request(self, seconds: float) -> float:
        return 1000 * seconds / self.requests if self.requests else float("nan")

    def per_unit(self, seconds: float) -> float:
        return 1000 * seconds / self.count() if self.count() else float("nan")

    @property
    def acted(self) -> int:
        return int(sum(t for name, t in self.samples if name == "_acted"))

    @property
    def exhausted(self) -> int:
        return self.count("_exhausted")


def measure(args, server: Server, backends: Backends, job: Job) -> Cell:
    unit = {"static": "static", "screen": "pair"}.get(job.kind, "randomize")
    cell = Cell(job.kind, len(job.clients), args.seconds, unit)
    fan_out(args, server, backends, client_process, job, len(job.clients), cell)
    print(f"  {server.name:8} {job.kind:7} {cell.clients:3} clients: {cell.rate():7.1f}/s  "
          f"p50 {cell.ms(0.5):6.1f} ms  p99 {cell.ms(0.99):6.1f} ms  server CPU "
          f"{cell.per_request(cell.server_cpu):.2f} ms/request  machine busy {cell.busy:.0%}",
          flush=True)
    if cell.errors or not cell.count():
        for error in cell.errors[:5]:
            print(f"  wrong answer: {error}", file=sys.stderr, flush=True)
        raise SystemExit(f"{job.kind} with {cell.clients} client(s): "
                         f"{len(cell.errors) or 'no'} client(s) failed"
                         + ("" if cell.count() else ", no answer measured")
                         + "; nothing written")
    if cell.exhausted:
        print(f"!! {job.kind}: {cell.exhausted} client(s) ran out of subjects; the rate is a "
              "lower bound", file=sys.stderr, flush=True)
    return cell


def check_stored(db: Database, code: str, cell: Cell) -> None:
    """The study holds one randomization per answer its clients got and, when
    every request had a key, one kept answer per request."""
    with db.reads() as session:
        study_id = session.scalar(select(Study.id).where(Study.code == code))
        randomized = session.scalar(select(func.count()).select_from(Randomization)
                                    .where(Randomization.study_id == study_id))
        kept = session.scalar(select(func.count()).select_from(ApiRequest)
                              .join(ApiClient, ApiClient.id == ApiRequest.client_id)
                              .where(ApiClient.study_id == study_id))
    expected_kept = {"key": cell.acted, "screen": 2 * cell.acted}.get(cell.kind, 0)
    if randomized != cell.acted or kept != expected_kept:
        raise SystemExit(f"{cell.kind}: study {code} holds {randomized} randomization(s) and "
                         f"{kept} kept answer(s); the clients got {cell.acted} randomization "
                         f"answer(s) (expected {expected_kept} kept); nothing written")


# --- in-process: the ceiling ----------------------------------------------------------------------


def inprocess_cell(args, schema: Schema, code: str, keyed: bool, clients: int) -> Cell:
    """``clients`` clients calling ``core.randomize.randomize`` directly (bench_randomize's
    ``run_clients``: threads sharing one ``Database``, or with ``--in-process processes``
    forked processes with an engine each), each as its API client's actor, on a fresh
    study of the same kind."""
    setup_db = schema.database(1)
    plan = new_study(setup_db, code, clients, subjects_per_client(args, clients), tokens=False)
    application_name = f"{schema.name}_{code.lower()}"
    threads = args.in_process == "threads"
    shared = schema.database(clients, application_name) if threads else None
    specs = []
    for c, client in enumerate(plan):
        actor = api_actor(client)

        def call(db, subject, actor=actor, c=c):
            number, factors = subject
            randomize(db, subject_number=number, actor=actor, eligibility=YES,
                      factors=factors, study=code,
                      idempotency_key=service_key(c, f"in-process-{number}") if keyed else None)

        def setup(client=client, call=call):
            state = (_Shared(shared, client.subjects[1:]) if threads else
                     _Own(schema.database(0, application_name), client.subjects[1:]))
            call(state.db, client.subjects[0])  # connection made, statement caches warm
            return state

        def operation(state, i, call=call):
            if i >= len(state.subjects):
                return False
            call(state.db, state.subjects[i])
            return True

        specs.append((setup, operation))
    sampler = Sampler(schema, application_name)
    cpu = time.process_time()
    try:
        result = run_threads(args.in_process, specs, args.warmup, args.seconds, sampler)
    finally:
        if shared is not None:
            shared.dispose()
    label = f"in-process {'with' if keyed else 'without'} key x{clients}"
    check_result(label, result)
    if result.errors or not result.ops:
        raise SystemExit(f"{label}: {len(result.errors)} client(s) failed; nothing written")
    cell = Cell("in-process key" if keyed else "in-process nokey", clients, args.seconds,
                "randomize", samples=[("randomize", t) for t in result.latencies],
                client_cpu=time.process_time() - cpu if threads else float("nan"), lock_share=sampler.lock_share(),
                calls=result.calls)
    cell.samples += [("_exhausted", 0.0)] * result.exhausted
    with setup_db.reads() as session:
        study_id = session.scalar(select(Study.id).where(Study.code == code))
        randomized = session.scalar(select(func.count()).select_from(Randomization)
                                    .where(Randomization.study_id == study_id))
    setup_db.dispose()
    if randomized != result.calls + clients:  # the warm-up calls too
        raise SystemExit(f"{label}: {randomized} randomizations stored for "
                         f"{result.calls + clients} calls; nothing written")
    print(f"  in-process {'key' if keyed else 'nokey':5} {clients:3} {args.in_process}: "
          f"{cell.rate():7.1f}/s  p50 {cell.ms(0.5):6.1f} ms  p99 {cell.ms(0.99):6.1f} ms  "
          f"waiting on row locks {cell.lock_share:.0%}", flush=True)
    return cell


# --- the parts of one request, in-process ---------------------------------------------------------


def profile_parts(args, schema: Schema) -> dict:
    """The parts of one API randomization, each alone, one at a time, in this
    process: median wall and CPU ms per call and SQL statements per call."""
    n = args.profile
    db = schema.database(1)
    statements = [0]

    def count(*_) -> None:
        statements[0] += 1

    try:
        [client] = new_study(db, "PRF", 1, 4 * (n + 10) + 10)
        subjects = iter(client.subjects)
        actor = api_actor(client)
        app = create_app(Settings(database_url=schema.url, twilio_auth_token=TOKEN), db=db,
                         store=MemorySessionStore())
        http = app.test_client()
        headers = {"Authorization": f"Bearer {client.token}"}
        serial = [0]

        def key() -> str:
            serial[0] += 1
            return f"profile-{serial[0]}"

        answer = {"subject_number": "1010001", "event": "R1", "randomization_number": "1001",
                  "kits": [], "confirmation": "000001"}

        def via_api(keyed: bool) -> None:
            number, factors = next(subjects)
            sent = headers | ({"Idempotency-Key": key()} if keyed else {})
            got = http.post(f"{API}/subjects/{number}/randomize", headers=sent,
                            json={"factors": factors, "eligibility": YES})
            if got.status_code != 200:
                raise SystemExit(f"profile: HTTP {got.status_code}: {got.json}")

        def in_process(keyed: bool) -> None:
            number, factors = next(subjects)
            randomize(db, subject_number=number, actor=actor, eligibility=YES, factors=factors,
                      study="PRF",
                      idempotency_key=service_key(client.client_id, key()) if keyed else None)

        parts = [
            ("bearer token check (`core.api_clients.authenticate`)",
             lambda: authenticate(db, client.token)),
            ("Idempotency-Key lookup, a new key (`core.api_requests.stored_answer`)",
             lambda: stored_answer(db, client.client_id, key())),
            ("answer kept under the key (`core.api_requests.store_answer`)",
             lambda: store_answer(db, client.client_id, key(), method="POST",
                                  path=f"{API}/subjects/1010001/randomize",
                                  body_digest="0" * 64, status=200, response=answer)),
            ("`core.randomize.randomize` with a key", lambda: in_process(True)),
            ("`core.randomize.randomize` without a key", lambda: in_process(False)),
            ("whole API randomize with Idempotency-Key (Flask test client)", lambda: via_api(True)),
            ("whole API randomize without a key (Flask test client)", lambda: via_api(False)),
            ("`/static-twiml` (Flask test client)",
             lambda: http.post("/static-twiml", data={"CallSid": "CA" + "0" * 32})),
        ]
        for _ in range(10):  # warm
            for _, action in parts:
                action()
        # Interleaved (every part once per round) and medians: the machine's speed
        # drifts, and the whole is compared with the sum of its parts.
        walls: dict[str, list[float]] = {label: [] for label, _ in parts}
        cpus: dict[str, list[float]] = {label: [] for label, _ in parts}
        sql = dict.fromkeys(walls, 0)
        event.listen(db.engine, "before_cursor_execute", count)
        for _ in range(n):
            for label, action in parts:
                statements[0] = 0
                wall, cpu = time.perf_counter(), time.process_time()
                action()
                cpus[label].append(time.process_time() - cpu)
                walls[label].append(time.perf_counter() - wall)
                sql[label] += statements[0]
        rows = {label: (1000 * statistics.median(walls[label]),
                        1000 * statistics.median(cpus[label]), sql[label] / n)
                for label in walls}
        event.remove(db.engine, "before_cursor_execute", count)
    finally:
        db.dispose()
    for label, (wall, cpu, sql) in rows.items():
        print(f"  {label}: {wall:.2f} ms wall, {cpu:.2f} ms CPU, {sql:.1f} statements")
    return {"calls": n, "rows": rows}


# --- the benchmark ---------------------------------------------------------------------------


def bench_api(args, schema: Schema) -> dict:
    os.environ["IVRS_TODAY"] = args.today  # the services here run on the server's day
    run_id = secrets.token_hex(4)
    db = schema.database(2)
    kinds = [k for k in KINDS if not (k == "screen" and args.no_screen)]
    results: dict[str, dict[int, dict[str, Cell]]] = {}
    cell_no = 0
    try:
        with tempfile.TemporaryDirectory(prefix="bench_api_") as workdir:
            application_name = f"bench_api_{run_id}"
            env = server_env(args, schema, application_name)
            for name in OUTBOUND_ENV:
                env.pop(name, None)  # nothing leaves the machine
            backends = Backends(schema, application_name)
            for name in args.servers:
                server = Server(name, SERVER_CONFIGS[name](args), env,
                                Path(workdir) / f"gunicorn-{name}.log")
                print(f"gunicorn {describe_server(args, name)} on port {server.port}",
                      flush=True)
                results[name] = {}
                try:
                    for clients in args.clients:
                        row = {}
                        for kind in kinds:
                            cell_no += 1
                            code = f"API{cell_no}"
                            began = time.monotonic()
                            plan = new_study(db, code, clients,
                                             subjects_per_client(args, clients),
                                             screened=kind in ("key", "nokey"))
                            print(f"  study {code}: {clients} sites and clients "
                                  f"({time.monotonic() - began:.1f} s)", flush=True)
                            row[kind] = measure(args, server, backends, Job(
                                kind, server.port, plan, f"{run_id}-{cell_no}", args.warmup,
                                args.seconds))
                            if kind != "static":
                                check_stored(db, code, row[kind])
                        results[name][clients] = row
                finally:
                    server.stop()
    finally:
        db.dispose()
    inprocess: dict[int, dict[str, Cell]] = {}
    for clients in args.clients:
        inprocess[clients] = {}
        for keyed in (True, False):
            cell_no += 1
            inprocess[clients]["key" if keyed else "nokey"] = inprocess_cell(
                args, schema, f"INP{cell_no}", keyed, clients)
    profile = profile_parts(args, schema) if args.profile else None
    return {"servers": results, "inprocess": inprocess, "profile": profile}


# --- the report ------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _per_call(cell: Cell) -> str:
    """Client CPU per in-process call (threads only: the processes' CPU is not seen)."""
    if cell.client_cpu != cell.client_cpu:  # NaN
        return "–"
    return f"{1000 * cell.client_cpu / max(1, cell.calls):.2f}"


def inprocess_clients(args) -> str:
    if args.in_process == "threads":
        return "threads sharing one `Database`, as bench_randomize.py's default"
    return "forked processes with an engine each, as bench_randomize.py's `--workers processes`"


def api_markdown(args, data: dict) -> list[str]:
    lines = [
        ("gunicorn (started by the script, `ivrs.app:create_app()`) on PostgreSQL (a fresh "
         "schema). Every cell has a study of its own of the kind bench_randomize.py uses "
         "(method `list`, factors SEX and AGE: 4 strata, no kits), one site per client and "
         "one API client per site (`core.api_clients.add_client`, role site_coordinator, "
         "that site only: blinded). Subjects are pre-screened in bulk by SQL; each client "
         "randomizes its own site's subjects, turning through the strata. A randomize is "
         f"`POST {API}/subjects/{{number}}/randomize` with a bearer token and a JSON body "
         "(factors and eligibility); with an `Idempotency-Key` unique to the request, the "
         "server also looks the key up before and keeps the answer under it after. \"screen "
         f"+ randomize\" is `POST {API}/subjects` then the new subject's randomize, both "
         "with keys; its rate counts pairs. `/static-twiml` from the same server, same "
         "clients, right after, is the ceiling the dialog-step target is read against. "
         f"Clients: {args.client_processes} separate process(es) with one thread per API "
         "client, raw keep-alive HTTP/1.1 (bench_voice.py's load generator). The in-process "
         f"ceiling is `core.randomize.randomize` called by as many clients in the benchmark's "
         f"own process ({inprocess_clients(args)}), each with the actor "
         "its API client has, on a fresh study of the same kind, with gunicorn stopped. "
         f"{args.seconds:g} s measured after {args.warmup:g} s warm-up per cell. Every answer "
         "is checked (status, subject, randomization number, confirmation, no arm) and so is "
         "the database afterwards (one randomization per answer, one kept answer per keyed "
         "request). \"server CPU\" is the gunicorn processes' CPU per HTTP request during the "
         "window, \"PG CPU\" that of the PostgreSQL backends serving them (by "
         "`application_name`) per randomization, \"client CPU\" that of the load generator "
         "per request, \"machine busy\" the share of both cores in use."),
        "",
    ]
    inprocess = data["inprocess"]
    for name, by_count in data["servers"].items():
        lines += [f"**{describe_server(args, name)}**", "",
                  ("| clients | cell | requests/s | randomizations/s | p50 ms | p99 ms "
                   "| ÷ in-process | ÷ static (≥ 0.5) | p99 ÷ static (≤ 4) "
                   "| server CPU ms/request | PG CPU ms/randomization | client CPU ms/request "
                   "| machine busy |"),
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for clients, row in by_count.items():
            static = row["static"]
            for kind, cell in row.items():
                randomizations = cell.rate("randomize")
                base = inprocess[clients]["nokey" if kind == "nokey" else "key"]
                versus = (f"{_ratio(randomizations, base.rate()):.2f}" if kind != "static"
                          else "")
                flag = " (ran out)" if cell.exhausted else ""
                p99 = cell.ms(0.99, "randomize" if kind != "static" else "static")
                lines.append(
                    f"| {clients} | {LABELS[kind]} | {cell.requests / cell.seconds:.0f}{flag} "
                    f"| {'' if kind == 'static' else f'{randomizations:.0f}'} "
                    f"| {cell.ms(0.5, 'randomize' if kind != 'static' else 'static'):.1f} "
                    f"| {p99:.1f} | {versus} "
                    f"| {'' if kind == 'static' else f'{_ratio(cell.rate(), static.rate()):.2f}'} "
                    f"| {'' if kind == 'static' else f'{_ratio(p99, static.ms(0.99)):.1f}'} "
                    f"| {cell.per_request(cell.server_cpu):.2f} "
                    f"| {'' if kind == 'static' else f'{cell.per_unit(cell.postgres_cpu):.2f}'} "
                    f"| {cell.per_request(cell.client_cpu):.2f} | {cell.busy:.0%} |")
        lines.append("")
        notes = []
        for clients, row in by_count.items():
            cell = row.get("screen")
            if cell is not None:
                notes.append(f"{clients} client(s): screen p50 {cell.ms(0.5, 'screen'):.1f} / "
                             f"p99 {cell.ms(0.99, 'screen'):.1f} ms, randomize "
                             f"{cell.ms(0.5, 'randomize'):.1f} / "
                             f"{cell.ms(0.99, 'randomize'):.1f} ms, the pair "
                             f"{cell.ms(0.5, 'pair'):.1f} / {cell.ms(0.99, 'pair'):.1f} ms")
        if notes:
            lines += ["Screen + randomize, p50 / p99 by request: " + "; ".join(notes) + ".",
                      ""]
    lines += [(f"The ceiling: `core.randomize.randomize` in-process "
               f"({inprocess_clients(args)}), the same actor and kind of study:"), "",
              ("| clients | calls | randomize/s | p50 ms | p99 ms | backends waiting on row "
               "locks | client CPU ms/call |"),
              "|---:|---|---:|---:|---:|---:|---:|"]
    for clients, row in inprocess.items():
        for kind, cell in row.items():
            flag = " (ran out)" if cell.exhausted else ""
            lines.append(f"| {clients} | {'with a key' if kind == 'key' else 'without a key'} "
                         f"| {cell.rate():.0f}{flag} | {cell.ms(0.5):.1f} | {cell.ms(0.99):.1f} "
                         f"| {cell.lock_share:.0%} "
                         f"| {_per_call(cell)} |")
    lines.append("")
    verdict = target_verdict(args, data)
    if verdict:
        lines += [(f"Against the dialog-step target at {max(args.clients)} clients: "
                   f"{verdict[1]}."), ""]
    profile = data.get("profile")
    if profile:
        rows = profile["rows"]
        lines += [(f"The parts of one request, each called alone {profile['calls']} times in "
                   "this process, one at a time, in turn (every part once per round; no "
                   "concurrency; the same schema, a study of the same kind, one client), "
                   "median per call; SQL statements counted with SQLAlchemy's "
                   "`before_cursor_execute` (BEGIN, COMMIT and pool pre-pings not counted). "
                   "The test-client rows include building the request and reading the answer "
                   "on the client's side:"), "",
                  "| part | wall ms | CPU ms | statements |", "|---|---:|---:|---:|"]
        lines += [f"| {label} | {wall:.2f} | {cpu:.2f} | {sql:.1f} |"
                  for label, (wall, cpu, sql) in rows.items()]
        lines += ["", *door_sentence(rows), ""]
    lines += limits_paragraph(args, data)
    return lines


def door_sentence(rows: dict) -> list[str]:
    """What the door adds around the core service, from the profile's rows."""
    values = list(rows.values())
    auth, lookup, store, core_key, core_nokey, api_key, api_nokey, static = values
    keyed = api_key[1] - auth[1] - lookup[1] - store[1] - core_key[1]
    plain = api_nokey[1] - auth[1] - core_nokey[1]
    return [(f"CPU: an API randomize with a key costs {api_key[1]:.2f} ms against "
             f"{core_key[1]:.2f} ms for the service alone (the service is "
             f"{_ratio(core_key[1], api_key[1]):.0%} of it); the token check is {auth[1]:.2f} ms, "
             f"the key lookup {lookup[1]:.2f} ms and the kept answer {store[1]:.2f} ms, "
             + _rest(keyed, static[1]) + f" Without a key: {api_nokey[1]:.2f} ms against "
             f"{core_nokey[1]:.2f} ms, "
             + (f"{plain:.2f} ms outside the token check and the service. " if plain >= 0 else
                "the token check and the service timed alone coming to more than the whole. ")
             + 
             "Statements: "
             f"{api_key[2]:.0f} with a key, {api_nokey[2]:.0f} without, {core_key[2]:.0f} in "
             "the service.")]


def _rest(rest: float, static: float) -> str:
    if rest < 0:
        return (f"and these three plus the service come to {-rest:.2f} ms more than the whole "
                "request when each is timed alone: this timing is not precise enough to "
                "isolate what Flask, pydantic and JSON cost.")
    return (f"which leaves {rest:.2f} ms for Flask, the body's validation (pydantic), the "
            f"answer's JSON and the test client ({static:.2f} ms of it is what even the static "
            "route costs).")


def limits_paragraph(args, data: dict) -> list[str]:
    """What limits it, from this run's figures."""
    name, by_count = next(iter(data["servers"].items()))
    clients = max(by_count)
    key, static = by_count[clients]["key"], by_count[clients]["static"]
    base = data["inprocess"][clients]["key"]
    server_ms, pg_ms = key.per_unit(key.server_cpu), key.per_unit(key.postgres_cpu)
    client_ms = key.per_unit(key.client_cpu)
    total = server_ms + pg_ms + client_ms
    static_server = static.per_request(static.server_cpu)
    static_total = static_server + static.per_request(static.client_cpu)
    return [(f"What limits it ({describe_server(args, name)}, {clients} clients): CPU. The "
             f"two cores were {key.busy:.0%} busy during the keyed randomizations (and "
             f"{static.busy:.0%} during the static requests), shared by gunicorn, PostgreSQL "
             "and the load generator. A keyed API randomization costs "
             f"{total:.2f} ms of the CPU measured ({server_ms:.2f} gunicorn, {pg_ms:.2f} "
             f"PostgreSQL, {client_ms:.2f} load generator) against {static_total:.2f} ms for a "
             f"static request ({static_server:.2f} gunicorn): with the cores saturated the "
             "throughput ratio to static cannot be much more than "
             f"{_ratio(static_total, total):.2f} (it was {_ratio(key.rate(), static.rate()):.2f}"
             "; the kernel's share of the TCP work is not counted). Reaching 0.5 would take an "
             "API randomization "
             "of at most about twice a static request's CPU; it costs "
             f"{_ratio(total, static_total):.0f} times as much. In-process, "
             f"the same service call with {clients} {args.in_process} ran at "
             f"{base.rate():.0f}/s, its backends waiting on row locks {base.lock_share:.0%} of "
             "the time (the stratum counter and the audit chain head)"
             + (", its threads sharing one interpreter lock where gunicorn has "
                f"{describe_server(args, name)}" if args.in_process == "threads" else "")
             + (" (`--in-process processes` lifts that)" if args.in_process == "threads"
                else "")
             + "; the HTTP door reached "
             f"{_ratio(key.rate(), base.rate()):.2f} of that rate, paying the token check, "
             "the key lookup and the kept answer (three more short database round trips), "
             "Flask, pydantic and JSON on top of the service, and the p99 is "
             f"{_ratio(key.ms(0.99), base.ms(0.99)):.1f}x the in-process one."), ""]


def target_verdict(args, data: dict) -> tuple[str, str, str] | None:
    """(measured, sentence, status) for the targets table, at the largest count."""
    parts, met = [], []
    clients = max(args.clients)
    base = data["inprocess"][clients]
    for name, by_count in data["servers"].items():
        row = by_count[clients]
        key, nokey, static = row["key"], row["nokey"], row["static"]
        throughput = _ratio(key.rate(), static.rate())
        p99 = _ratio(key.ms(0.99), static.ms(0.99))
        met.append((throughput >= TARGET_THROUGHPUT, p99 <= TARGET_P99))
        parts.append(f"{describe_server(args, name)}: {key.rate():.0f} randomize/s with "
                     f"Idempotency-Key vs {static.rate():.0f} static ({throughput:.2f}), p99 "
                     f"{key.ms(0.99):.0f} vs {static.ms(0.99):.0f} ms ({p99:.1f}x); "
                     f"{nokey.rate():.0f}/s without a key; in-process `core.randomize` "
                     f"{base['key'].rate():.0f}/s with a key, {base['nokey'].rate():.0f}/s "
                     f"without (API ÷ in-process {_ratio(key.rate(), base['key'].rate()):.2f} "
                     f"and {_ratio(nokey.rate(), base['nokey'].rate()):.2f})")
    if not parts:
        return None
    status = target_status(met)
    measured = "; ".join(parts)
    return measured, f"{measured}: {status}", status


def update_target_row(path: Path, measured: str, status: str, clients: int) -> None:
    """Replace (or add, after the SMS row) the API row of the targets table."""
    label = (f"API randomize at {clients} concurrent clients (gunicorn + PostgreSQL), read "
             "against the dialog-step target: ≥ 0.5 of static TwiML's throughput, p99 within "
             "4x")
    replace_target_row(path, f"| {label} | {measured} | {status} |", "| API randomize", "| SMS command")


def place_section(path: Path) -> None:
    """Move "## HTTP API" right after the "## SMS webhook" section (run_parts
    appends a new section at the end of the file); nothing moves if it is there."""
    lines = path.read_text().split("\n")

    def bounds(title: str) -> tuple[int, int] | None:
        start = next((i for i, line in enumerate(lines) if line.strip() == f"## {title}"), None)
        if start is None:
            return None
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        return start, end

    ours, after = bounds(SECTION), bounds(AFTER)
    if ours is None or after is None or ours[0] == after[1]:
        return
    block = lines[ours[0]:ours[1]]
    while block and not block[-1].strip():
        block.pop()
    del lines[ours[0]:ours[1]]
    while lines and not lines[-1].strip():
        lines.pop()
    after = bounds(AFTER)
    lines[after[1]:after[1]] = [*block, ""]
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("IVRS_BENCH_DATABASE_URL", DEFAULT_URL),
                        help="PostgreSQL on a loopback address (default %(default)s)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS,
                        help="Redis on a loopback address (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--clients", default="8",
                        help="concurrent API clients, comma-separated (default 8)")
    parser.add_argument("--in-process", choices=["threads", "processes"], default="threads",
                        help="the in-process clients: threads sharing one Database "
                        "(default, as bench_randomize.py) or forked processes")
    parser.add_argument("--no-screen", action="store_true",
                        help="skip the screen + randomize cell")
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
                        help="also time the parts of a request N times in-process (0: skip)")
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    try:
        args.clients = sorted({int(c) for c in args.clients.split(",") if c})
    except ValueError:
        parser.error("--clients is comma-separated numbers")
    if not args.clients or min(args.clients) < 1 or max(args.clients) > 200:
        parser.error("--clients: 1 to 200 clients per cell")
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
        data = bench_api(args, schema)
        verdicts.append(target_verdict(args, data))
        return data

    run_parts(args, argv, "bench/bench_api.py", SECTION, [
        ("api", "API randomize through gunicorn vs. core.randomize in-process:",
         "Randomize through the API vs. in-process and static TwiML (gunicorn + PostgreSQL)",
         bench, api_markdown),
    ])
    if not args.no_write:
        place_section(Path(args.output))
        if verdicts and verdicts[0]:
            measured, _, status = verdicts[0]
            update_target_row(Path(args.output), measured, status, max(args.clients))
            print("targets table: API row written")


if __name__ == "__main__":
    main()
