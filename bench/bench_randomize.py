#!/usr/bin/env python
"""Randomization throughput, next to the row-lock ceilings PostgreSQL itself allows.

    python bench/bench_randomize.py [--url URL] [--seconds S] [--clients 1,8,32]
                                    [--workers threads|processes] [--only NAME ...]
                                    [--fill 10000] [--no-write]

Three benchmarks (``--only`` picks some; all run by default):

``throughput``
    Randomizations per second into PostgreSQL with 1, 8 and 32 concurrent
    clients: method ``list``, 4 strata, subjects pre-screened, each randomization
    one full ``core.randomize.randomize`` call (subject lock, stratum counter,
    list entry, randomization row, status history, audit row sealed into the
    chain, idempotency record, commit). In the same run, with the same number of
    clients, two ceilings through psycopg 3 directly (the driver the service
    uses under SQLAlchemy): ``UPDATE counters SET n = n + 1 WHERE stratum = %s
    RETURNING n`` on a 4-row table, autocommit (one statement, one
    transaction); and a ``SELECT ... FOR UPDATE SKIP LOCKED`` + ``UPDATE`` loop
    taking rows from a table, one explicit transaction per row.
``studies``
    The audit chain is one per study, so studies must not serialize on each
    other: 8 clients on 1 study against 2 studies with 4 clients each.
``minimization``
    The cost of a minimization assignment around the 100th and around the
    10,000th subject (median of 50 ``randomize`` calls each, one client), on a
    SQLite file and on PostgreSQL. The study is filled by calling the service in
    a loop (bounded by ``--fill-timeout``).

Clients are threads (default; each randomize client uses the shared
``Database``, whose pool gives it its own connection, each baseline client its
own psycopg connection) or, with ``--workers processes``, forked processes each
with its own engine (no GIL shared between clients). Every measurement is
duration-bounded (``--warmup`` + ``--seconds``), runs in a fresh schema that is
dropped at the end, and only loopback addresses are accepted. Subjects are
pre-screened in bulk by SQL (subject row + status history, site counters moved
on; no audit rows: screening is not what is measured).

Results are printed and written into BENCHMARKS.md, section "Randomization
throughput" (one subsection per benchmark, replaced on each run; other
sections of the file are kept).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # factories.make_study builds the studies

import psycopg
import sqlalchemy
from factories import make_study
from sqlalchemy import event, insert, select, text
from sqlalchemy.engine import make_url

from core.actors import ADMIN
from core.db import Database, database_url, make_engine
from core.migrate import upgrade
from core.models import Site, Study, Subject, SubjectStatusChange
from core.randomize import randomize

DEFAULT_URL = "postgresql://postgres@127.0.0.1/test"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
YES = {"INC1": True, "EXC1": True}
STRATA = [{"SEX": s, "AGE": a} for s, a in itertools.product(["M", "F"], ["LT65", "GE65"])]
SECTION = "Randomization throughput"
# Upper bound on the randomize rate we size subject pools and lists for; a client
# that runs out stops early and the result says so.
RANDOMIZE_RATE_CAP = 1000
BASELINE_ROWS_PER_SECOND = 40_000


# --- plumbing ------------------------------------------------------------------------------


def check_loopback(url: str) -> None:
    parsed = make_url(database_url(url))
    if parsed.drivername.startswith("sqlite"):
        return
    hosts = [parsed.host] if parsed.host else []
    hosts += str(parsed.query.get("host", "")).split(",") if parsed.query.get("host") else []
    for host in hosts:
        if host and host not in LOOPBACK and not host.startswith("/"):
            sys.exit(f"refusing {host!r}: this benchmark only talks to loopback addresses")


class Schema:
    """A fresh PostgreSQL schema, migrated; dropped on close."""

    def __init__(self, url: str):
        self.base_url = database_url(url)
        self.name = f"bench_{uuid.uuid4().hex[:10]}"
        self.admin = make_engine(url, pool_size=1, max_overflow=0)
        with self.admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{self.name}"'))
        self.url = f"{self.base_url}?options=-csearch_path%3D{self.name}"
        db = Database(self.url, pool_size=1, max_overflow=0)
        upgrade(db.engine)
        db.dispose()
        # libpq form of the same place, for psycopg used directly
        plain = make_url(self.base_url).set(drivername="postgresql")
        self.conninfo = plain.render_as_string(hide_password=False)

    def database(self, clients: int, application_name: str | None = None) -> Database:
        url = self.url + (f"&application_name={application_name}" if application_name else "")
        return Database(url, pool_size=clients + 2, max_overflow=4)

    def connect(self, autocommit: bool = False) -> psycopg.Connection:
        return psycopg.connect(self.conninfo, autocommit=autocommit,
                               options=f"-c search_path={self.name}")

    def close(self) -> None:
        with self.admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE'))
        self.admin.dispose()


def prescreen(db: Database, study_code: str, count: int) -> list[str]:
    """``count`` screened subjects over the study's sites, inserted in bulk."""
    with db.transaction() as s:
        study = s.execute(select(Study).where(Study.code == study_code)).scalar_one()
        sites = s.execute(select(Site).where(Site.study_id == study.id).order_by(Site.code)
                          .with_for_update()).scalars().all()
        rows = []
        for i in range(count):
            site = sites[i % len(sites)]
            site.last_subject_seq += 1
            if site.last_subject_seq > 9999:
                raise SystemExit(f"site {site.code} is full: ask for fewer subjects")
            rows.append({"study_id": study.id, "site_id": site.id, "status": "screened",
                         "subject_number": f"{site.code}{site.last_subject_seq:04d}",
                         "screened_by": "bench", "screened_at": datetime.now(UTC)})
        s.execute(insert(Subject), rows)
        numbers = [row["subject_number"] for row in rows]
        ids = dict(s.execute(select(Subject.subject_number, Subject.id)
                             .where(Subject.study_id == study.id,
                                    Subject.status == "screened")).all())
        s.execute(insert(SubjectStatusChange), [
            {"study_id": study.id, "subject_id": ids[n], "from_status": None,
             "to_status": "screened", "by": "bench", "at": datetime.now(UTC)}
            for n in numbers])
    return numbers


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Sampler:
    """Samples pg_stat_activity for one application_name every ``interval`` seconds
    during the measured window: where do the clients' backends spend their time?"""

    TABLE = re.compile(r"\b(?:FROM|UPDATE|INTO)\s+\"?(\w+)", re.IGNORECASE)

    def __init__(self, schema: Schema, application_name: str, interval: float = 0.01):
        self.schema, self.app, self.interval = schema, application_name, interval
        self.tally: dict[str, int] = {}
        self.samples = 0

    def start(self, warm_until: float, end_at: float) -> None:
        self.thread = threading.Thread(target=self._run, args=(warm_until, end_at), daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join()

    def _run(self, warm_until: float, end_at: float) -> None:
        with self.schema.connect(autocommit=True) as conn:
            while time.monotonic() < warm_until:
                time.sleep(self.interval)
            while time.monotonic() < end_at:
                for state, wait_type, wait, query in conn.execute(
                        "SELECT state, wait_event_type, wait_event, left(query, 200)"
                        " FROM pg_stat_activity WHERE application_name = %s", (self.app,)):
                    key = self.classify(state, wait_type, wait, query or "")
                    self.tally[key] = self.tally.get(key, 0) + 1
                self.samples += 1
                time.sleep(self.interval)

    @classmethod
    def classify(cls, state, wait_type, wait, query) -> str:
        if state == "idle in transaction":
            return "client working inside a transaction"
        if state != "active":
            return "client working outside a transaction"
        if wait_type == "Lock":
            match = cls.TABLE.search(query)
            return f"waiting for a row lock ({match.group(1) if match else wait})"
        if wait_type in ("IO", "LWLock", "IPC"):
            return f"server {wait_type} ({wait})"
        return "server running a statement"

    def shares(self) -> list[tuple[str, float]]:
        total = sum(self.tally.values()) or 1
        return sorted(((k, v / total) for k, v in self.tally.items()), key=lambda kv: -kv[1])

    def lock_share(self) -> float:
        return sum(share for key, share in self.shares() if key.startswith("waiting"))

    def describe(self, top: int = 4) -> str:
        return "; ".join(f"{key} {share:.0%}" for key, share in self.shares()[:top])


@dataclass
class Run:
    """What one client reports back."""

    done: int = 0  # operations completed inside the measured window
    calls: int = 0  # operations completed in all (warm-up included)
    latencies: list[float] = field(default_factory=list)  # seconds, inside the window
    exhausted: bool = False
    errors: list[str] = field(default_factory=list)


@dataclass
class Result:
    clients: int
    ops: int
    seconds: float
    latencies: list[float]
    exhausted: int
    errors: list[str]
    calls: int = 0
    client_cpu: float = 0.0
    sampler: Sampler | None = None

    @property
    def rate(self) -> float:
        return self.ops / self.seconds

    def ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


class StartLine:
    """Every client connects and warms up first; then all start together.

    ``ready``: all clients (and the runner) have finished their setup. The runner
    then fixes the start time and releases everybody through ``go``.
    """

    def __init__(self, parties: int, warmup: float, seconds: float, kind):
        self.ready = kind.Barrier(parties + 1)
        self.go = kind.Barrier(parties + 1)
        self.times = kind.Array("d", 3) if hasattr(kind, "Array") else [0.0, 0.0, 0.0]
        self.warmup, self.seconds = warmup, seconds

    def client_wait(self) -> tuple[float, float, float]:
        self.ready.wait(SETUP_TIMEOUT)
        self.go.wait(SETUP_TIMEOUT)
        return tuple(self.times[:3])

    def runner_release(self) -> tuple[float, float, float]:
        self.ready.wait(SETUP_TIMEOUT)
        start_at = time.monotonic() + 0.05
        self.times[:3] = [start_at, start_at + self.warmup, start_at + self.warmup + self.seconds]
        self.go.wait(SETUP_TIMEOUT)
        return tuple(self.times[:3])


SETUP_TIMEOUT = 300.0


def client_loop(setup, operation, line: StartLine) -> Run:
    """Connect and warm up (``setup``), wait for the common start, then call
    ``operation(state, i)`` until the end, counting the calls that finish inside
    the measured window (after the warm-up)."""
    run = Run()
    state = None
    try:
        state = setup()
    except Exception:  # noqa: BLE001
        run.errors.append(traceback.format_exc(limit=4))
    _start_at, warm_until, end_at = line.client_wait()
    if state is None:
        return run
    i = 0
    try:
        while True:
            began = time.monotonic()
            if began >= end_at:
                break
            if not operation(state, i):
                run.exhausted = True
                break
            finished = time.monotonic()
            if warm_until <= finished <= end_at:
                run.done += 1
                run.latencies.append(finished - began)
            i += 1
        run.calls = i
    except Exception:  # noqa: BLE001
        run.errors.append(traceback.format_exc(limit=4))
    finally:
        close = getattr(state, "close", None)
        if close is not None:
            close()
    return run


def run_clients(workers: str, specs: list[tuple], warmup: float, seconds: float,
                sampler: Sampler | None = None) -> Result:
    """Run ``client_loop(*spec, line)`` for each spec at once; duration-bounded."""
    runs: list[Run] = []
    if workers == "threads":
        line = StartLine(len(specs), warmup, seconds, threading)
        lock = threading.Lock()

        def target(spec):
            run = client_loop(*spec, line)
            with lock:
                runs.append(run)

        threads = [threading.Thread(target=target, args=(spec,), daemon=True) for spec in specs]
        for thread in threads:
            thread.start()
        _, warm_until, end_at = line.runner_release()
        if sampler is not None:
            sampler.start(warm_until, end_at)
        for thread in threads:
            thread.join(max(1.0, end_at - time.monotonic() + 120))
    else:
        context = multiprocessing.get_context("fork")
        line = StartLine(len(specs), warmup, seconds, context)
        results = context.Queue()

        def target(spec):
            results.put(client_loop(*spec, line))

        processes = [context.Process(target=target, args=(spec,)) for spec in specs]
        for process in processes:
            process.start()
        _, warm_until, end_at = line.runner_release()
        if sampler is not None:
            sampler.start(warm_until, end_at)
        for _ in processes:
            runs.append(results.get(timeout=max(1.0, end_at - time.monotonic() + 120)))
        for process in processes:
            process.join(10)
    if sampler is not None:
        sampler.join()
    if len(runs) != len(specs):
        raise RuntimeError(f"only {len(runs)} of {len(specs)} clients reported back")
    return Result(clients=len(specs), ops=sum(r.done for r in runs), seconds=seconds,
                  latencies=[x for r in runs for x in r.latencies],
                  exhausted=sum(r.exhausted for r in runs),
                  errors=[e for r in runs for e in r.errors], calls=sum(r.calls for r in runs))


# --- the three kinds of client -----------------------------------------------------------------


class _Shared:
    """A thread client's view of the shared Database (nothing to close per client)."""

    def __init__(self, db: Database, subjects):
        self.db, self.subjects = db, subjects


class _Own(_Shared):
    """A process client's own engine."""

    def close(self):
        self.db.dispose()


def randomize_specs(workers: str, schema: Schema, plan: list[tuple[str, list[tuple[str, dict]]]],
                    shared: Database | None, application_name: str) -> list[tuple]:
    """One spec per client: ``plan`` is [(study_code, [(subject, factors), ...]), ...]."""
    specs = []
    for study_code, subjects in plan:
        def call(db, subject, study_code=study_code):
            number, factors = subject
            randomize(db, subject_number=number, actor=ADMIN, eligibility=YES,
                      factors=factors, study=study_code)

        def setup(subjects=subjects, call=call):
            # one call before the start: connection made, statement caches warm
            if workers == "threads":
                state = _Shared(shared, subjects[1:])
            else:
                state = _Own(schema.database(0, application_name), subjects[1:])
            call(state.db, subjects[0])
            return state

        def operation(state, i, call=call):
            if i >= len(state.subjects):
                return False
            call(state.db, state.subjects[i])
            return True

        specs.append((setup, operation))
    return specs


def counter_spec(schema: Schema, client: int) -> tuple:
    def setup():
        return schema.connect(autocommit=True)

    def operation(conn, i):
        conn.execute("UPDATE counters SET n = n + 1 WHERE stratum = %s RETURNING n",
                     ((client + i) % 4 + 1,)).fetchone()
        return True

    return setup, operation


def skip_locked_spec(schema: Schema, client: int) -> tuple:
    def setup():
        return schema.connect(autocommit=False)

    def operation(conn, i):
        stratum = (client + i) % 4 + 1
        row = conn.execute(
            "SELECT id FROM queue WHERE stratum = %s AND taken_at IS NULL"
            " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED", (stratum,)).fetchone()
        if row is None:
            conn.rollback()
            return False
        conn.execute("UPDATE queue SET taken_at = now(), taken_by = %s WHERE id = %s",
                     (client, row[0]))
        conn.commit()
        return True

    return setup, operation


def prepare_baselines(schema: Schema, queue_rows: int) -> None:
    with schema.connect(autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS counters, queue")
        conn.execute("CREATE TABLE counters (stratum int PRIMARY KEY, n bigint NOT NULL)")
        conn.execute("INSERT INTO counters SELECT g, 0 FROM generate_series(1, 4) g")
        conn.execute("CREATE TABLE queue (id bigserial PRIMARY KEY, stratum int NOT NULL,"
                     " taken_by int, taken_at timestamptz)")
        conn.execute("INSERT INTO queue (stratum) SELECT g %% 4 + 1"
                     " FROM generate_series(1, %s) g", (queue_rows,))
        conn.execute("CREATE INDEX queue_free ON queue (stratum, id) WHERE taken_at IS NULL")
        conn.execute("ANALYZE counters, queue")


# --- benchmarks ---------------------------------------------------------------------------------


def new_list_study(db: Database, code: str, subjects: int) -> list[tuple[str, dict]]:
    make_study(db, code=code, method="list", list_per_stratum=subjects // 4 + 10)
    numbers = prescreen(db, code, subjects)
    return [(number, STRATA[i % 4]) for i, number in enumerate(numbers)]


def deal(subjects: list, clients: int) -> list[list]:
    return [subjects[c::clients] for c in range(clients)]


def measure_randomize(args, schema: Schema, studies: list[str], clients: int) -> Result:
    """``clients`` clients split evenly over ``studies`` (each a fresh list study)."""
    wanted = int(RANDOMIZE_RATE_CAP * (args.warmup + args.seconds)) // len(studies)
    per_study = min(19_000, max(200, wanted))  # two sites of 9,999 numbers each
    setup_db = schema.database(1)
    plan = []
    for code in studies:
        subjects = new_list_study(setup_db, code, per_study)
        share = clients // len(studies)
        plan += [(code, part) for part in deal(subjects, share)]
    setup_db.dispose()
    app = f"{schema.name}_r{clients}_{len(studies)}"
    shared = schema.database(clients, app) if args.workers == "threads" else None
    sampler = Sampler(schema, app)
    cpu = time.process_time()
    try:
        result = run_clients(args.workers,
                             randomize_specs(args.workers, schema, plan, shared, app),
                             args.warmup, args.seconds, sampler)
    finally:
        if shared is not None:
            shared.dispose()
    result.client_cpu = time.process_time() - cpu  # this process only (threads mode)
    result.sampler = sampler
    check_result(f"randomize x{clients} ({len(studies)} studies)", result)
    return result


def check_result(label: str, result: Result) -> None:
    if result.errors:
        print(f"!! {label}: {len(result.errors)} client(s) failed:\n{result.errors[0]}",
              file=sys.stderr)
    if result.exhausted:
        print(f"!! {label}: {result.exhausted} client(s) ran out of work before the end;"
              " the rate is a lower bound", file=sys.stderr)


def statements_per_randomize(schema: Schema) -> tuple[int, list[str]]:
    """Statements one steady-state list randomization sends (SQLAlchemy cursor events)."""
    db = schema.database(1)
    try:
        subjects = new_list_study(db, "STMT", 12)
        for number, factors in subjects[:8]:  # every stratum's counter exists now
            randomize(db, subject_number=number, actor=ADMIN, eligibility=YES, factors=factors,
                      study="STMT")
        seen: list[str] = []

        @event.listens_for(db.engine, "before_cursor_execute")
        def count(conn, cursor, statement, parameters, context, executemany):
            seen.append(" ".join(statement.split())[:60])

        number, factors = subjects[8]
        randomize(db, subject_number=number, actor=ADMIN, eligibility=YES, factors=factors,
                  study="STMT")
        return len(seen), seen
    finally:
        db.dispose()


def bench_throughput(args, schema: Schema) -> dict:
    rows = []
    statements, listing = statements_per_randomize(schema)
    queue_rows = int(BASELINE_ROWS_PER_SECOND * (args.warmup + args.seconds))
    cpu_per_call = None
    for clients in args.clients:
        rand = measure_randomize(args, schema, [f"T{clients}"], clients)
        if clients == 1 and args.workers == "threads":
            cpu_per_call = rand.client_cpu / max(1, rand.calls)
        prepare_baselines(schema, queue_rows)
        counter = run_clients(args.workers, [counter_spec(schema, c) for c in range(clients)],
                              args.warmup, args.seconds)
        check_result(f"counter x{clients}", counter)
        skip = run_clients(args.workers, [skip_locked_spec(schema, c) for c in range(clients)],
                           args.warmup, args.seconds)
        check_result(f"skip locked x{clients}", skip)
        rows.append((clients, rand, counter, skip))
        print(f"  {clients:>2} clients: randomize {rand.rate:8.1f}/s   counter UPDATE "
              f"{counter.rate:8.1f}/s   SKIP LOCKED {skip.rate:8.1f}/s\n"
              f"     randomize backends: {rand.sampler.describe()}", flush=True)
    return {"rows": rows, "statements": statements, "listing": listing,
            "cpu_per_call": cpu_per_call}


def bench_studies(args, schema: Schema) -> dict:
    """Alternate 1 study / 2 studies ``--rounds`` times (the machine may be shared)."""
    ones, twos = [], []
    for r in range(args.rounds):
        ones.append(measure_randomize(args, schema, [f"ONE{r}"], 8))
        twos.append(measure_randomize(args, schema, [f"TWO{r}-A", f"TWO{r}-B"], 8))
        print(f"  round {r + 1}, 8 clients: 1 study {ones[-1].rate:.1f}/s   "
              f"2 studies (4+4) {twos[-1].rate:.1f}/s", flush=True)
    one, two = merge(ones), merge(twos)
    print(f"     1 study: {one.sampler.describe()}\n     2 studies: {two.sampler.describe()}",
          flush=True)
    return {"one": one, "two": two, "ones": ones, "twos": twos}


def merge(results: list[Result]) -> Result:
    """Rounds of one configuration: the median rate, all latencies, summed samples."""
    middle = results[0]
    sampler = Sampler.__new__(Sampler)
    sampler.tally, sampler.samples = {}, 0
    for r in results:
        for key, n in r.sampler.tally.items():
            sampler.tally[key] = sampler.tally.get(key, 0) + n
        sampler.samples += r.sampler.samples
    return Result(clients=middle.clients, ops=statistics.median(r.ops for r in results),
                  seconds=middle.seconds,
                  latencies=[x for r in results for x in r.latencies],
                  exhausted=sum(r.exhausted for r in results),
                  errors=[e for r in results for e in r.errors], sampler=sampler)


def minimization_cost(db: Database, label: str, fill: int, samples: int,
                      fill_timeout: float) -> dict:
    make_study(db, code="MIN", method="minimization", params={"minimization": {"p": 0.8}})
    numbers = prescreen(db, "MIN", fill + 2 * samples)
    stream = iter(enumerate(numbers))
    statements: list[int] = [0]

    @event.listens_for(db.engine, "before_cursor_execute")
    def count(*_):
        statements[0] += 1

    def call():
        i, number = next(stream)
        randomize(db, subject_number=number, actor=ADMIN, eligibility=YES,
                  factors=STRATA[i % 4], study="MIN")
        return i + 1

    def sample() -> tuple[list[float], float, int]:
        times, first = [], None
        statements[0] = 0
        for _ in range(samples):
            began = time.perf_counter()
            done = call()
            times.append(time.perf_counter() - began)
            first = first or done
        return times, statements[0] / samples, first

    done = 0
    while done < 100:
        done = call()
    early, early_statements, early_at = sample()
    began = time.monotonic()
    target = fill
    while done < target and time.monotonic() - began < fill_timeout:
        done = call()
    fill_seconds = time.monotonic() - began
    late, late_statements, late_at = sample()
    result = {"label": label, "early_at": early_at, "late_at": late_at,
              "early": statistics.median(early), "late": statistics.median(late),
              "early_p90": percentile(early, 0.9), "late_p90": percentile(late, 0.9),
              "early_statements": early_statements, "late_statements": late_statements,
              "fill_seconds": fill_seconds, "fill_rate": (done - 100 - samples) / fill_seconds,
              "short": done < target}
    print(f"  {label}: median {result['early'] * 1000:.2f} ms at subject {early_at}, "
          f"{result['late'] * 1000:.2f} ms at subject {late_at} "
          f"(ratio {result['late'] / result['early']:.2f}; fill {fill_seconds:.0f} s)",
          flush=True)
    return result


def bench_minimization(args, schema: Schema | None) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-ivrs-") as tmp:
        path = Path(args.sqlite_file) if args.sqlite_file else Path(tmp) / "bench.sqlite3"
        if path.exists():
            sys.exit(f"{path} exists: give a new file")
        db = Database(f"sqlite:///{path}")
        upgrade(db.engine)
        try:
            results.append(minimization_cost(db, "SQLite file", args.fill, 50, args.fill_timeout))
        finally:
            db.dispose()
            if args.sqlite_file:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
    if schema is not None:
        db = schema.database(1)
        try:
            results.append(minimization_cost(db, "PostgreSQL", args.fill, 50, args.fill_timeout))
        finally:
            db.dispose()
    return results


# --- report -----------------------------------------------------------------------------------


def machine(schema: Schema | None) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pg = "not measured"
    if schema is not None:
        with schema.connect(autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            sync = conn.execute("SHOW synchronous_commit").fetchone()[0]
            pg = f"PostgreSQL {version} (synchronous_commit={sync}, loopback TCP)"
    import sqlite3
    return (f"nproc {os.cpu_count()} ({cpu}); {pg}; SQLite {sqlite3.sqlite_version}; "
            f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
            f"psycopg {psycopg.__version__}")


def header(stamp: str, machine_line: str, command: str, load: tuple) -> list[str]:
    now = os.getloadavg()
    return [f"- Date: {stamp}", f"- Machine: {machine_line}",
            (f"- Load average (1 min) when the run started / when this part ended: "
            f"{load[0]:.2f} / {now[0]:.2f} (the machine may be shared)"),
            f"- Command: `{command}`", ""]


def throughput_markdown(args, data: dict) -> list[str]:
    lines = [
        (f"Clients: {args.workers}. Each randomize is one full `core.randomize.randomize` call "
        "(method `list`, 4 strata, one study, pre-screened subjects) through SQLAlchemy on "
        "psycopg 3. The two baselines use psycopg 3 directly, the same number of clients: "
        "`UPDATE counters SET n = n + 1 WHERE stratum = %s RETURNING n` on a 4-row table in "
        "autocommit (one statement = one transaction), and `SELECT id ... FOR UPDATE SKIP "
        "LOCKED LIMIT 1` + `UPDATE` in one explicit transaction per row. "
        f"{args.seconds:g} s measured after {args.warmup:g} s warm-up per cell."),
        "",
        ("| clients | randomize/s | p50 ms | p95 ms | counter UPDATE/s | SKIP LOCKED/s "
        "| randomize ÷ counter | randomize ÷ SKIP LOCKED | randomize backends waiting on "
        "row locks |"),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for clients, rand, counter, skip in data["rows"]:
        flag = " (ran out)" if rand.exhausted else ""
        lines.append(
            f"| {clients} | {rand.rate:.1f}{flag} | {rand.ms(0.5):.1f} | {rand.ms(0.95):.1f} "
            f"| {counter.rate:.0f} | {skip.rate:.0f} | {rand.rate / counter.rate:.3f} "
            f"| {rand.rate / skip.rate:.3f} | {rand.sampler.lock_share():.0%} |")
    lines += ["", ("Where the randomize clients' server connections were, sampled from "
              "`pg_stat_activity` every 10 ms during the measured window:"), ""]
    for clients, rand, _, _ in data["rows"]:
        lines.append(f"- {clients} client(s): {rand.sampler.describe(6)}")
    lines.append("")
    lines.append(f"Statements per steady-state list randomization (SQLAlchemy "
                 f"`before_cursor_execute`, not counting BEGIN/COMMIT or the pool's pre-ping): "
                 f"{data['statements']}.")
    if data["cpu_per_call"] is not None:
        lines.append(f"Client CPU per randomize call (1 client, process CPU time / calls): "
                     f"{data['cpu_per_call'] * 1000:.1f} ms.")
    errors = sum(len(r.errors) for row in data["rows"] for r in row[1:])
    if errors:
        lines.append(f"**{errors} client(s) failed during this run; see the console output.**")
    lines.append("")
    return lines


def studies_markdown(args, data: dict) -> list[str]:
    one, two = data["one"], data["two"]
    each = {key: ", ".join(f"{r.rate:.1f}" for r in data[key]) for key in ("ones", "twos")}
    return [
        (f"Clients: {args.workers}, 8 in all, method `list`. One audit chain per study: "
        "two studies should not serialize on each other's chain head. The two "
        f"configurations alternate, {args.rounds} round(s) of {args.seconds:g} s each; "
        "the table gives the median of the rounds (p50/p95 over all rounds' calls)."),
        "",
        "| studies | clients | randomize/s | each round | p50 ms | p95 ms | waiting on row locks |",
        "|---:|---:|---:|---|---:|---:|---:|",
        (f"| 1 | 8 | {one.rate:.1f} | {each['ones']} | {one.ms(0.5):.1f} | {one.ms(0.95):.1f} "
        f"| {one.sampler.lock_share():.0%} |"),
        (f"| 2 | 4 + 4 | {two.rate:.1f} | {each['twos']} | {two.ms(0.5):.1f} "
        f"| {two.ms(0.95):.1f} | {two.sampler.lock_share():.0%} |"),
        "",
        f"2 studies ÷ 1 study: {two.rate / one.rate:.2f}.",
        "",
        "Where the clients' server connections were (sampled from `pg_stat_activity`):",
        "",
        f"- 1 study: {one.sampler.describe(6)}",
        f"- 2 studies: {two.sampler.describe(6)}",
        "",
    ]


def minimization_markdown(args, data: list[dict]) -> list[str]:
    lines = [
        ("One client; each figure is the median (p90 in brackets) of 50 consecutive "
        "`randomize` calls (method `minimization`, p = 0.8, factors SEX and AGE), taken "
        f"after 100 subjects and after filling to {args.fill:,} subjects with the service "
        "in a loop."),
        "",
        ("| database | at subject | median ms (p90) | statements/call | at subject "
        "| median ms (p90) | statements/call | ratio late ÷ early | fill rate |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data:
        short = " (fill timed out)" if r["short"] else ""
        lines.append(
            f"| {r['label']} | {r['early_at']} | {r['early'] * 1000:.2f} "
            f"({r['early_p90'] * 1000:.2f}) | {r['early_statements']:.0f} | "
            f"{r['late_at']}{short} | {r['late'] * 1000:.2f} ({r['late_p90'] * 1000:.2f}) | "
            f"{r['late_statements']:.0f} | {r['late'] / r['early']:.2f} | "
            f"{r['fill_rate']:.0f}/s |")
    lines.append("")
    return lines


def update_benchmarks(path: Path, subsections: dict[str, list[str]], section_name: str = SECTION,
                      script: str = "bench/bench_randomize.py") -> None:
    """Replace (or add) our subsections of "## <section_name>"; keep the rest."""
    text_in = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text_in.rstrip("\n").split("\n")
    start = next((i for i, line in enumerate(lines) if line.strip() == f"## {section_name}"),
                 None)
    if start is None:
        lines += ["", f"## {section_name}", "", f"Produced by `{script}` (see bench/README.md)."]
        start = lines.index(f"## {section_name}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    section = lines[start:end]
    for title, body in subsections.items():
        head = f"### {title}"
        at = next((i for i, line in enumerate(section) if line.strip() == head), None)
        new = [head, "", *body]
        if at is None:
            while section and not section[-1].strip():
                section.pop()
            section += ["", *new]
        else:
            stop = next((i for i in range(at + 1, len(section))
                         if section[i].startswith("### ")), len(section))
            section[at:stop] = new
    while section and not section[-1].strip():
        section.pop()
    lines[start:end] = section + ([""] if end < len(lines) else [])
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines).rstrip("\n") + "\n")
    tmp.replace(path)


def run_parts(args, argv: list[str] | None, script: str, section: str, parts: list) -> None:
    """Run the chosen parts of a benchmark script in one fresh schema, print the
    markdown and rewrite the script's section of BENCHMARKS.md.

    ``parts``: (name for --only, progress line, subsection title, bench(args, schema),
    markdown(args, data)).
    """
    chosen = args.only or [name for name, *_ in parts]
    command = f"python {script} " + shlex.join(sys.argv[1:] if argv is None else argv)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    schema = Schema(args.url)
    out: dict[str, list[str]] = {}
    try:
        machine_line = machine(schema)
        print(f"{machine_line}\nschema {schema.name}, clients as {args.workers}", flush=True)
        for name, progress, title, bench, markdown in parts:
            if name in chosen:
                print(progress, flush=True)
                data = bench(args, schema)
                out[title] = header(stamp, machine_line, command, load) + markdown(args, data)
    finally:
        schema.close()
    report = []
    for title, body in out.items():
        report += [f"### {title}", "", *body]
    print("\n" + "\n".join(report))
    if not args.no_write:
        update_benchmarks(Path(args.output), out, section, script)
        print(f"written to {args.output}")


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("IVRS_BENCH_DATABASE_URL", DEFAULT_URL),
                        help="PostgreSQL on a loopback address (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--clients", default="1,8,32", help="client counts (default 1,8,32)")
    parser.add_argument("--workers", choices=["threads", "processes"], default="threads")
    parser.add_argument("--rounds", type=int, default=2,
                        help="studies: alternating rounds per configuration (default 2)")
    parser.add_argument("--only", nargs="+", choices=["throughput", "studies", "minimization"])
    parser.add_argument("--fill", type=int, default=10_000,
                        help="minimization: subjects before the late sample (default 10000)")
    parser.add_argument("--fill-timeout", type=float, default=300.0,
                        help="minimization: give up filling after this many seconds per database")
    parser.add_argument("--sqlite-file", help="minimization: the SQLite file (default: a temp file)")
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    if args.fill > 2 * 9999 - 200:
        parser.error("--fill: two sites hold at most 19,998 subjects")
    check_loopback(args.url)
    run_parts(args, argv, "bench/bench_randomize.py", SECTION, [
        ("throughput", "throughput (randomize vs. row-lock baselines):",
         f"Randomize vs. row-lock baselines ({args.workers})", bench_throughput,
         throughput_markdown),
        ("studies", "one study vs. two studies:", f"One study vs. two studies ({args.workers})",
         bench_studies, studies_markdown),
        ("minimization", "minimization cost at ~100 and ~N subjects:",
         "Minimization cost: subject 100 vs. subject 10,000", bench_minimization,
         minimization_markdown),
    ])


if __name__ == "__main__":
    main()
