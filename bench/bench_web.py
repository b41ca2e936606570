#!/usr/bin/env python
"""Web console: its pages through gunicorn at 10,000 subjects over 60 sites, next
to static TwiML and a static file from the same server.

    python bench/bench_web.py [--url URL] [--redis-url URL] [--clients 8,50]
                              [--seconds S] [--subjects 10000 --sites 60]
                              [--profile N] [--smoke] [--no-write]

Two studies, each in a fresh ``bench_<random>`` PostgreSQL schema (loopback
only, migrated, dropped at the end), seeded by bench_dashboard.py's
``populate`` (the demo study with its sites replaced, a year of subjects,
kits, shelves and a hash-chained audit trail whose full verification is
recorded as the daily job records it): ``--subjects`` (10,000) over
``--sites`` (60), and 100 over 5 for comparison. Each gets one web user per
concurrent client and role: the demo study's project manager 6050 and site
coordinator 5001 (site 101) and, for the other clients, more of the same roles
added with ``core.users.add_user`` (a project manager must enter a TOTP code at
every sign-in and a code is good once, so 50 browsers cannot share one
project manager's account without waiting 30 s apiece); each gets a web
password (``core.web_accounts.set_password``). Then the audit trail is topped
up to ``--tail`` (500) rows after the checkpoint, as a day's activity, which
every project-manager dashboard verifies.

gunicorn (``ivrs.app:create_app()``, started here in its own process group; 2
gthread workers x the threads ``ivrs serve`` uses) gets DATABASE_URL,
REDIS_URL (Redis database 13 by default: web sessions), IVRS_WEB_SECRET_KEY and
TWILIO_AUTH_TOKEN. Every client signs in over HTTP as a browser does: GET
/signin, the ``csrf_token`` hidden input, POST; a project manager's first
sign-in goes on to /signin/enrol, whose page shows the TOTP key (``<code
class="secret">``), and the code pyotp makes from it is posted. Each client
keeps its own session cookie. The load generator is bench_voice.py's
(``fan_out``: separate client processes, one thread per client, raw keep-alive
HTTP/1.1); the server, PostgreSQL and CPU accounting are its too.

Cells, each ``--warmup`` (1 s) then ``--seconds`` (5 s), at each ``--clients``
count (8 and 50), in this order:

``pm``       GET / as a project manager (every part of the dashboard; blinded)
``pm_changing`` the same while this process appends a chained audit row
             ``CHANGES_PER_S`` (2) times a second, each its own transaction: each
             is a new version of the study, so what the dashboards remembered
             is recomputed once per change (core.dashboard.current)
``sc``       GET / as a site coordinator of site 101
``subjects`` GET /subjects as a project manager (the first page of 50)
``subject``  GET /subjects/<number> as a project manager, 100 subjects in turn
``static``   GET /static-twiml (the ceiling the targets are read against)
``css``      GET /static/console.css (a static file, for reference)

The small study runs ``pm``, ``sc`` and ``static`` only. Every answer must be
200 with what the page should show (never the sign-in page). The workers' RSS
is read before the first cell and after the last. ``--profile N`` (default 50;
0 skips) also requests each page N times in this process (Flask test client,
the same schema and Redis): wall and CPU ms, SQL statements and their time,
the peak Python memory of one request (tracemalloc), the page's size; each
dashboard also "after a change" (``pm_cold``, ``sc_cold``: what the process
remembers of dashboards dropped before each request, as a new version of the
study does); then N project-manager dashboards at the large size under
cProfile, after a change and remembered: where the time goes.

Results are printed and written into BENCHMARKS.md, section "Web console" (its
subsection replaced on each run; other sections kept), and the web console's
rows of the targets table. ``--smoke``: 1,000 subjects, 2 s per cell, 10
profiled requests, nothing written.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import secrets
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import pyotp
from bench_dashboard import Chain, populate  # the dashboard benchmark's seeding
from bench_randomize import ROOT, Schema, check_loopback, run_parts
from bench_sms import OUTBOUND_ENV
from bench_voice import (  # the voice benchmark's server and client plumbing
    GUNICORN,
    SERVER_CONFIGS,
    TOKEN,
    Backends,
    BadAnswer,
    Cell,
    HttpClient,
    Server,
    _short,
    check_redis_loopback,
    describe_server,
    fan_out,
    replace_target_row,
    run_clients,
    server_env,
    target_status,
)
from sqlalchemy import event, select

from core.actors import ADMIN
from core.audit_checkpoints import chain_state
from core.clock import utcnow
from core.dashboard import forget_answers
from core.db import Database
from core.models import AuditHead, Study, Subject
from core.users import add_user
from core.web_accounts import set_password
from ivrs.app import create_app
from ivrs.config import Settings
from ivrs.conversations.sessions import RedisSessionStore
from ivrs.server.serve import THREADS_PER_WORKER
from ivrs.web import SECRET_ENV, sessions

DEFAULT_URL = "postgresql://postgres@127.0.0.1/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/13"  # the server has 16 databases (0-15)
SECTION = "Web console"
AFTER = "HTTP API"  # our section goes right after this one
PASSWORD = "bench-web-Console-2026"
MANAGER, COORDINATOR, SITE = "6050", "5001", "101"  # the demo study's
# The targets (BENCHMARKS.md): a page ≥ 0.5 of static TwiML's throughput, p99 within 4x.
TARGET_THROUGHPUT, TARGET_P99 = 0.5, 4.0
NOTICEABLE_MS = 100  # a response under ~100 ms feels instant; past it a user notices
RSS_GROWTH_MIB = 10  # a worker growing more than this over the run is not flat
SET_UP_THREADS = 4  # users made and browsers signed in at a time
SUBJECT_PAGES = 100  # subjects the subject-page cell turns through
# A busy trial's pace of change (each change a new version of the study: every
# dashboard remembered for the old one is recomputed once).
CHANGES_PER_S = 2
# kind: (path, who, what the answer must hold, label)
KINDS = {
    "pm": ("/", "pm", b'id="audit-heading"', "dashboard `/`, project manager"),
    "pm_changing": ("/", "pm", b'id="audit-heading"',
                    f"dashboard `/`, project manager, the study changing {CHANGES_PER_S}/s"),
    "sc": ("/", "sc", b'id="days-of-cover-title"', "dashboard `/`, site coordinator (site 101)"),
    # In-process only: what the first dashboard after a change costs, nothing remembered.
    "pm_cold": ("/", "pm", b'id="audit-heading"',
                "dashboard `/`, project manager, after a change (nothing remembered)"),
    "sc_cold": ("/", "sc", b'id="days-of-cover-title"',
                "dashboard `/`, site coordinator, after a change (nothing remembered)"),
    "subjects": ("/subjects", "pm", b'href="/subjects/', "`/subjects` (first page of 50)"),
    "subject": (None, "pm", b"<h1", "`/subjects/<number>`"),
    "static": ("/static-twiml", None, b"Static.", "`/static-twiml` (the ceiling)"),
    "css": ("/static/console.css", None, b"{", "`/static/console.css`"),
}
PAGES = ("pm", "sc", "subjects", "subject")
IN_PROCESS = ("pm_cold", "pm", "sc_cold", "sc", "subjects", "subject")
SMALL_KINDS = ("pm", "sc", "static")
LARGE_KINDS = ("pm", "pm_changing", "sc", "subjects", "subject", "static", "css")


# --- a browser over one keep-alive connection ------------------------------------------------


class Browser(HttpClient):
    """bench_voice's raw keep-alive HTTP/1.1 connection, with cookies and GET: what a
    browser sends to the console (no JavaScript, no redirects followed)."""

    def __init__(self, port: int, cookies: dict[str, str] | None = None):
        super().__init__(port, TOKEN)
        self.cookies = dict(cookies or {})

    def request(self, method: str, path: str, form: dict | None = None
                ) -> tuple[int, dict[str, str], bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
        if self.cookies:
            head += "Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()) + "\r\n"
        body = b""
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            head += ("Content-Type: application/x-www-form-urlencoded\r\n"
                     f"Content-Length: {len(body)}\r\n")
        data = (head + "\r\n").encode() + body
        reused = self.sock is not None
        try:
            return self._send(data)
        except (ConnectionError, BadAnswer):
            self.close()
            if not reused:
                raise
            return self._send(data)  # a keep-alive connection the server had closed

    def _send(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        # HttpClient._exchange, keeping the headers and the cookies set.
        if self.sock is None:
            import socket

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
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "set-cookie":
                cookie, _, attributes = value.partition(";")
                key, _, val = cookie.partition("=")
                if val and "expires=thu, 01 jan 1970" not in attributes.lower():
                    self.cookies[key.strip()] = val
                else:
                    self.cookies.pop(key.strip(), None)
            headers[name] = value
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BadAnswer("connection closed in the middle of an answer")
            body += chunk
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body


_CSRF = re.compile(rb'name="csrf_token" value="([^"]+)"')
_SECRET = re.compile(rb'<code class="secret">([^<]+)</code>')


def sign_in(port: int, user_code: str) -> tuple[dict[str, str], bool]:
    """Sign in as a browser does; returns (the cookies, whether TOTP was enrolled)."""
    browser = Browser(port)
    try:
        status, _, page = browser.request("GET", "/signin")
        token = _CSRF.search(page)
        if status != 200 or token is None:
            raise SystemExit(f"GET /signin: HTTP {status}, no csrf_token")
        status, headers, page = browser.request("POST", "/signin", {
            "csrf_token": token.group(1).decode(), "user_id": user_code, "password": PASSWORD})
        target = urllib.parse.urlsplit(headers.get("location", "")).path
        enrolled = False
        if status == 302 and target == "/signin/enrol":
            status, _, page = browser.request("GET", target)
            token, secret = _CSRF.search(page), _SECRET.search(page)
            if status != 200 or token is None or secret is None:
                raise SystemExit(f"GET /signin/enrol for {user_code}: HTTP {status}, no key")
            code = pyotp.TOTP(secret.group(1).decode().replace(" ", "")).now()
            status, headers, page = browser.request("POST", target, {
                "csrf_token": token.group(1).decode(), "code": code})
            target = urllib.parse.urlsplit(headers.get("location", "")).path
            enrolled = True
        if status != 302 or target != "/":
            raise SystemExit(f"sign-in of {user_code}: HTTP {status} to {target!r}: "
                             f"{page[:300]!r}")
        status, _, page = browser.request("GET", "/")  # the CSRF token joins the cookie here
        if status != 200:
            raise SystemExit(f"the dashboard after {user_code}'s sign-in: HTTP {status}")
        return browser.cookies, enrolled
    finally:
        browser.close()


# --- the studies --------------------------------------------------------------------------------


@dataclass
class Trial:
    """A seeded study in its own schema, with a web user per client and role."""

    label: str
    subjects: int
    sites: int
    schema: Schema
    db: Database
    seeded_s: float
    verify_s: float
    managers: list[str]
    coordinators: list[str]
    subject_numbers: list[str]
    audit_rows: int = 0
    tail: int = 0


def seed(args, schema: Schema, subjects: int, sites: int) -> Trial:
    db = schema.database(2)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_web_") as workdir:
        verified = populate(db, Path(workdir), subjects, sites, tail=0)
    clients = max(args.clients)
    managers = [MANAGER] + [str(8101 + n) for n in range(clients - 1)]
    coordinators = [COORDINATOR] + [str(8301 + n) for n in range(clients - 1)]

    def new_user(code: str) -> None:  # argon2 (PIN, password) releases the GIL: in threads
        if code not in (MANAGER, COORDINATOR):
            manager = code in managers
            add_user(db, user_code=code, name=f"Bench {'manager' if manager else 'coordinator'}",
                     role="project_manager" if manager else "site_coordinator",
                     sites=[] if manager else [SITE], phone=None, language="en", pin="1357",
                     actor=ADMIN)
        set_password(db, user_code=code, password=PASSWORD, actor=ADMIN)

    with ThreadPoolExecutor(SET_UP_THREADS) as pool:
        list(pool.map(new_user, managers + coordinators))
    with db.reads() as session:
        numbers = list(session.scalars(select(Subject.subject_number)
                                       .order_by(Subject.subject_number)))
    step = max(1, len(numbers) // SUBJECT_PAGES)
    return Trial(f"{subjects:,} subjects / {sites} sites", subjects, sites, schema, db,
                 time.perf_counter() - began, verified, managers, coordinators,
                 numbers[::step][:SUBJECT_PAGES])


def top_up_audit(trial: Trial, tail: int) -> None:
    """Chained rows after the checkpoint up to ``tail`` (the users and sign-ins made
    some already): the day's activity each project-manager dashboard verifies."""
    with trial.db.transaction() as session:
        study_id = session.scalar(select(Study.id))
        state = chain_state(session, study_id)
        head = session.get(AuditHead, study_id)
        chain = Chain(study_id)
        chain.seq, chain.prev = head.seq, head.hash
        now = utcnow()
        for n in range(tail - (head.seq - state.fully_checked_through)):
            chain.add(now, "kit_confirmed", "kit", str(n), {"status": "dispensed"})
        chain.flush(session)
    with trial.db.snapshot() as session:
        state = chain_state(session, study_id)
    if state.status != "intact":
        raise SystemExit(f"{trial.label}: the audit chain is {state.status}; nothing written")
    trial.audit_rows, trial.tail = state.rows, state.rows - state.fully_checked_through


# --- the load --------------------------------------------------------------------------------------


@dataclass
class Job:
    kind: str
    port: int
    cookies: list[dict[str, str]]  # per client (empty for static routes)
    paths: list[str]  # requested in turn
    expect: bytes
    warmup: float
    seconds: float


def client_thread(job: Job, index: int, ready: threading.Barrier, go: threading.Event,
                  start: list[float], samples: list, errors: list) -> None:
    browser = Browser(job.port, job.cookies[index] if job.cookies else None)
    clock = time.perf_counter
    position = index  # clients start at different subjects

    def step() -> float:
        nonlocal position
        path = job.paths[position % len(job.paths)]
        position += 1
        began = clock()
        status, _, body = browser.request("GET", path)
        took = clock() - began
        if status != 200 or job.expect not in body:
            raise BadAnswer(f"GET {path}: HTTP {status}: {body[:200]!r}")
        return took

    try:
        step()  # before the start line: connection open, worker warm
    except Exception as error:  # noqa: BLE001 — reported; the cell fails
        errors.append(f"warm-up: {error}")
        ready.abort()
        return
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        return
    go.wait()
    measured_from = start[0] + job.warmup
    until = measured_from + job.seconds
    try:
        while time.time() < until:
            took = step()
            if measured_from <= time.time() <= until:
                samples.append((job.kind, took))
    except Exception as error:  # noqa: BLE001
        errors.append(f"{job.kind}: {error}")
    finally:
        browser.close()


def client_process(job: Job, indexes: list[int], pipe) -> None:
    run_clients(client_thread, job, indexes, pipe)


def measure(args, server: Server, backends: Backends, trial: Trial, kind: str,
            clients: int, cookies: dict[str, list]) -> Cell:
    path, who, expect, _ = KINDS[kind]
    paths = [f"/subjects/{n}" for n in trial.subject_numbers] if kind == "subject" else [path]
    job = Job(kind, server.port, cookies[who][:clients] if who else [], paths, expect,
              args.warmup, args.seconds)
    cell = Cell(kind, clients, args.seconds)
    changes = Changes(trial, CHANGES_PER_S) if kind == "pm_changing" else None
    try:
        fan_out(args, server, backends, client_process, job, clients, cell)
    finally:
        if changes is not None:
            changes.stop()
    print(f"  {kind:8} {clients:3} clients: {cell.rate:7.1f}/s  p50 {cell.ms(0.5):6.1f} ms  "
          f"p99 {cell.ms(0.99):6.1f} ms  server CPU {cell.per_request(cell.server_cpu):.2f} "
          f"ms/req  PG CPU {cell.per_request(cell.postgres_cpu):.2f} ms/req  machine busy "
          f"{cell.busy:.0%}", flush=True)
    if cell.errors or not cell.count:
        for error in cell.errors[:5]:
            print(f"  wrong answer: {error}", file=sys.stderr, flush=True)
        raise SystemExit(f"{kind} with {clients} client(s): {len(cell.errors) or 'no'} "
                         "client(s) failed" + ("" if cell.count else ", no answer measured")
                         + "; nothing written")
    return cell


class Changes:
    """A chained audit row every 1/``per_second`` s, each in its own transaction,
    from a thread of this process: what each change to the study does to the
    dashboards (a new version; the audit tail one row longer)."""

    def __init__(self, trial: Trial, per_second: float):
        self.trial, self.every, self.made = trial, 1 / per_second, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with self.trial.db.transaction() as session:
                study_id = session.scalar(select(Study.id))
                head = session.get(AuditHead, study_id, with_for_update=True)
                chain = Chain(study_id)
                chain.seq, chain.prev = head.seq, head.hash
                chain.add(utcnow(), "kit_confirmed", "kit", f"change-{self.made}",
                          {"status": "dispensed"})
                chain.flush(session)
            self.made += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def rss_mib(server: Server) -> list[float]:
    """Each gunicorn worker's resident memory, MiB."""
    found = []
    for pid in server.workers():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        kib = next(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("VmRSS:"))
        found.append(kib / 1024)
    return sorted(found)


def serve(args, trial: Trial, kinds: tuple[str, ...], run_id: str, workdir: Path) -> dict:
    """gunicorn on the trial's schema: sign every client in, then every cell."""
    application_name = f"bench_web_{run_id}_{trial.subjects}"
    env = server_env(args, trial.schema, application_name)
    env[SECRET_ENV] = args.secret
    for name in OUTBOUND_ENV:
        env.pop(name, None)  # nothing leaves the machine
    backends = Backends(trial.schema, application_name)
    server = Server("gthread", SERVER_CONFIGS["gthread"](args), env,
                    workdir / f"gunicorn-{trial.subjects}.log")
    print(f"gunicorn {describe_server(args, 'gthread')} on port {server.port}, "
          f"{trial.label}", flush=True)
    cookies: dict[str, list] = {"pm": [], "sc": []}
    try:
        began = time.perf_counter()
        enrolled = 0
        with ThreadPoolExecutor(SET_UP_THREADS) as pool:
            for who, codes in (("pm", trial.managers), ("sc", trial.coordinators)):
                for jar, totp in pool.map(lambda code: sign_in(server.port, code), codes):
                    cookies[who].append(jar)
                    enrolled += totp
        signed_in = time.perf_counter() - began
        print(f"  {sum(map(len, cookies.values()))} browsers signed in over HTTP "
              f"({enrolled} TOTP enrolments) in {signed_in:.1f} s", flush=True)
        top_up_audit(trial, args.tail)
        print(f"  audit: {trial.audit_rows:,} rows, {trial.tail} after the checkpoint",
              flush=True)
        sizes, missing = {}, {}
        for kind in kinds:  # one answer of each, for its size
            path, who, _, _ = KINDS[kind]
            browser = Browser(server.port, cookies[who][0] if who else None)
            path = path or f"/subjects/{trial.subject_numbers[0]}"
            status, _, body = browser.request("GET", path)
            browser.close()
            if status == 200:
                sizes[kind] = len(body)
            elif kind == "css":  # a reference only: say so, measure the rest
                missing[kind] = f"GET {path} answers HTTP {status}"
                print(f"!! {missing[kind]}: not measured", file=sys.stderr, flush=True)
        kinds = tuple(kind for kind in kinds if kind not in missing)
        rss_before = rss_mib(server)
        rows: dict[int, dict[str, Cell]] = {}
        for clients in args.clients:
            rows[clients] = {kind: measure(args, server, backends, trial, kind, clients, cookies)
                             for kind in kinds}
        rss_after = rss_mib(server)
        print(f"  worker RSS MiB before / after: {_mib(rss_before)} / {_mib(rss_after)}",
              flush=True)
    finally:
        server.stop()
        delete_sessions(args.redis_url, cookies, args.secret)
    return {"rows": rows, "rss_before": rss_before, "rss_after": rss_after, "sizes": sizes,
            "missing": missing, "signed_in_s": signed_in,
            "browsers": sum(map(len, cookies.values()))}


def delete_sessions(redis_url: str, cookies: dict[str, list], secret: str) -> None:
    """Exactly this run's web sessions (their ids are in the signed cookies)."""
    import redis
    from flask import Flask
    from flask.sessions import SecureCookieSessionInterface

    app = Flask("bench_web")
    app.secret_key = secret
    serializer = SecureCookieSessionInterface().get_signing_serializer(app)
    keys = []
    for jar in (jar for jars in cookies.values() for jar in jars):
        sid = serializer.loads(jar.get("ivrs_session", "")).get("sid") \
            if jar.get("ivrs_session") else None
        if sid:
            keys.append(f"{RedisSessionStore.PREFIX}web:{sid}")
    client = redis.Redis.from_url(redis_url)
    if keys:
        client.delete(*keys)
    client.close()
    print(f"  deleted {len(keys)} web sessions of this run from {redis_url}", flush=True)


# --- in-process: the cost of one page and where it goes ---------------------------------------


# (label, end of the file name, function name) of the costs worth naming
PROFILE_PARTS = (
    ("the whole request (Flask `full_dispatch_request`)", "flask/app.py",
     "full_dispatch_request"),
    ("session from Redis, idle clock restarted (`ivrs.web.sessions.current_session`)",
     "ivrs/web/sessions.py", "current_session"),
    ("user still active (`core.login.may_continue`)", "core/login.py", "may_continue"),
    ("the view (`ivrs.web.dashboard.dashboard`)", "ivrs/web/dashboard.py", "dashboard"),
    ("`core.dashboard.current`: one snapshot, the audit head, remembered or read",
     "core/dashboard/__init__.py", "current"),
    ("· every read but the audit state (`core.dashboard._read`)", "core/dashboard/__init__.py",
     "_read"),
    ("· enrollment by site", "core/dashboard/enrollment.py", "by_site"),
    ("· caps", "core/dashboard/enrollment.py", "caps"),
    ("· enrollment over time", "core/dashboard/enrollment.py", "over_time"),
    ("· stock and days of cover", "core/dashboard/stock.py", "stock"),
    ("· expiring kits", "core/dashboard/stock.py", "expiring"),
    ("· unconfirmed kits", "core/dashboard/stock.py", "unconfirmed"),
    ("· pending approvals (count)", "core/approvals.py", "count_approvals"),
    ("· audit chain: checkpoint + tail verified (`chain_state`)", "core/audit_checkpoints.py",
     "chain_state"),
    ("charts: bars (`ivrs.render.charts.bar_chart`)", "ivrs/render/charts.py", "bar_chart"),
    ("charts: enrollment over time (`step_chart`)", "ivrs/render/charts.py", "step_chart"),
    ("the remembered part rendered (`ivrs.web.dashboard._body`)", "ivrs/web/dashboard.py",
     "_body"),
    ("the templates (`render_template`, the remembered part's included)", "flask/templating.py",
     "render_template"),
    ("SQL sent and answered (psycopg `Cursor.execute`)", "psycopg/cursor.py", "execute"),
)


def page_costs(args, trial: Trial, kinds: tuple[str, ...], profile: bool) -> dict:
    """Each page ``args.profile`` times through the Flask test client in this process
    (the trial's schema, Redis sessions), one request at a time."""
    os.environ[SECRET_ENV] = args.secret
    app = create_app(Settings(database_url=trial.schema.url, redis_url=args.redis_url,
                              twilio_auth_token=TOKEN), db=trial.db)
    store = app.extensions["ivrs"].store
    sids = []
    clients = {}
    for who, code, role, sites in (("pm", MANAGER, "project_manager", ()),
                                   ("sc", COORDINATOR, "site_coordinator", (SITE,))):
        client = app.test_client()
        sid = sessions.open_session(store, sessions.WebUser(
            study="DEMO-301", user_code=code, name=code, role=role, site_codes=sites,
            language="en"), "en")
        with client.session_transaction() as cookie:
            cookie["sid"] = sid
        sids.append(sid)
        clients[who] = client
    sql = {"n": 0, "seconds": 0.0}
    started: list[float] = []

    def before(*_):
        started.append(time.perf_counter())

    def after(*_):
        sql["n"] += 1
        sql["seconds"] += time.perf_counter() - started.pop()

    def get(kind: str, n: int):
        path, who, expect, _ = KINDS[kind]
        if kind.endswith("_cold"):  # as after a change: nothing remembered
            forget_answers()
            app.extensions.pop("ivrs.dashboard_pages", None)
        answer = clients[who].get(path or f"/subjects/{trial.subject_numbers[n % SUBJECT_PAGES]}")
        if answer.status_code != 200 or expect not in answer.data:
            raise SystemExit(f"in-process {kind}: HTTP {answer.status_code}")
        return answer

    rows = {}
    try:
        for kind in kinds:
            for n in range(5):  # warm: imports, templates, statement caches
                get(kind, n)
            walls, cpus, statements, sql_ms = [], [], [], []
            event.listen(trial.db.engine, "before_cursor_execute", before)
            event.listen(trial.db.engine, "after_cursor_execute", after)
            for n in range(args.profile):
                sql["n"], sql["seconds"] = 0, 0.0
                wall, cpu = time.perf_counter(), time.process_time()
                answer = get(kind, n)
                cpus.append(time.process_time() - cpu)
                walls.append(time.perf_counter() - wall)
                statements.append(sql["n"])
                sql_ms.append(sql["seconds"])
            event.remove(trial.db.engine, "before_cursor_execute", before)
            event.remove(trial.db.engine, "after_cursor_execute", after)
            tracemalloc.start()
            get(kind, 0)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            rows[kind] = {"wall": 1000 * statistics.median(walls),
                          "cpu": 1000 * statistics.median(cpus),
                          "statements": max(statements),
                          "sql": 1000 * statistics.median(sql_ms),
                          "peak_kib": peak / 1024, "bytes": len(answer.data)}
            print(f"  in-process {kind:8}: {rows[kind]['wall']:.1f} ms wall, "
                  f"{rows[kind]['cpu']:.1f} ms CPU, {rows[kind]['statements']} statements "
                  f"({rows[kind]['sql']:.1f} ms), peak {rows[kind]['peak_kib']:,.0f} KiB, "
                  f"{rows[kind]['bytes']:,} bytes", flush=True)
        found = {"in_process": rows}
        if profile:
            found["profile"] = profile_dashboard(args, lambda n: get("pm_cold", n))
            found["profile_warm"] = profile_dashboard(args, lambda n: get("pm", n))
    finally:
        for sid in sids:
            sessions.close_session(store, sid)
    return found


def profile_dashboard(args, request) -> dict:
    """``args.profile`` project-manager dashboards under cProfile, wall clock: one
    request at a time, so the wall clock is this process's CPU plus its waits on
    PostgreSQL and Redis."""
    profiler = cProfile.Profile(time.perf_counter)
    profiler.enable()
    for n in range(args.profile):
        request(n)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    top = []
    for label, suffix, name in PROFILE_PARTS:
        total = max((row[3] for (filename, _, function), row in stats.stats.items()
                     if function == name and filename.endswith(suffix)), default=0.0)
        top.append((label, 1000 * total / args.profile))
    own = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:12]
    own = [(f"{_short(filename)}:{function}", 1000 * row[2] / args.profile)
           for (filename, _, function), row in own]
    for label, ms in top:
        print(f"  {label}: {ms:.2f} ms")
    return {"requests": args.profile, "top": top, "own": own}


# --- the benchmark ------------------------------------------------------------------------------


def bench_web(args, schema: Schema) -> dict:
    os.environ["IVRS_TODAY"] = args.today  # set-up services run on the server's day
    run_id = secrets.token_hex(4)
    small_schema = Schema(args.url)
    trials = []
    try:
        for size_schema, (subjects, sites), kinds in (
                (small_schema, (100, 5), SMALL_KINDS),
                (schema, (args.subjects, args.sites), LARGE_KINDS)):
            trial = seed(args, size_schema, subjects, sites)
            print(f"{trial.label}: seeded in {trial.seeded_s:.1f} s (full audit verification "
                  f"recorded: {trial.verify_s:.2f} s)", flush=True)
            with tempfile.TemporaryDirectory(prefix="bench_web_") as workdir:
                served = serve(args, trial, kinds, run_id, Path(workdir))
            large = subjects == args.subjects
            costs = page_costs(args, trial, IN_PROCESS if large else ("pm_cold", "pm", "sc"),
                               profile=large and args.profile > 0) if args.profile else {}
            trial.db.dispose()
            trials.append({"trial": trial, "kinds": kinds, **served, **costs})
    finally:
        small_schema.close()
    return {"small": trials[0], "large": trials[1]}


# --- the report ---------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _mib(values: list[float]) -> str:
    return " + ".join(f"{v:.0f}" for v in values) or "–"


def web_markdown(args, data: dict) -> list[str]:
    large, small = data["large"], data["small"]
    lt = large["trial"]
    lines = [
        (f"gunicorn ({describe_server(args, 'gthread')}: `ivrs serve`'s threads per "
         "worker; started by the script, `ivrs.app:create_app()`) on PostgreSQL (a fresh "
         "schema per study) and Redis (web sessions, database "
         f"{urllib.parse.urlsplit(args.redis_url).path.strip('/') or '0'}). Each study is "
         "bench_dashboard.py's: the demo study with its sites replaced, a year of subjects "
         "(92% randomized, 3 kits each, their status history), shelves at every site, 1,000 "
         "kits at the depot and a hash-chained audit trail whose full verification is "
         f"recorded as the daily job records it; then {args.tail} rows after that "
         "checkpoint (the day's activity, the bench users' and sign-ins' rows among them), "
         "which each project-manager dashboard verifies. Every client is a browser of its "
         "own: its own user (the demo study's project manager 6050 and site coordinator "
         "5001, and more of each added with `add_user`, since a TOTP code is good once), a "
         "web password (`core.web_accounts.set_password`), signed in over HTTP (GET /signin, "
         "the CSRF token, POST; for a project manager the TOTP enrolment page's key and a "
         "pyotp code), its own session cookie. "
         f"Clients: {args.client_processes} separate process(es) with one thread per "
         "client, raw keep-alive HTTP/1.1 (bench_voice.py's load generator). "
         f"{args.seconds:g} s measured after {args.warmup:g} s warm-up per cell; every "
         "answer checked (200 and what the page shows). The subject page turns through "
         f"{SUBJECT_PAGES} subjects of every site (seeded without randomization rows, so "
         "its visit schedule is empty: a lighter page than a real randomized subject's). "
         "\"server CPU\" is the gunicorn processes' CPU per request during the window, "
         "\"PG CPU\" that of the PostgreSQL backends serving them (by `application_name`), "
         "\"machine busy\" the share of both cores in use. The machine has 2 cores shared "
         "with other engineers' work: one run, noisy; the ratios are taken within it."),
        "",
        ("| study | clients | page | requests/s | p50 ms | p99 ms | ÷ static (≥ 0.5) "
         "| p99 ÷ static (≤ 4) | server CPU ms/request | PG CPU ms/request | machine busy |"),
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for part in (large, small):
        trial = part["trial"]
        for clients, row in part["rows"].items():
            static = row["static"]
            for kind, cell in row.items():
                ceiling = kind in ("static", "css")
                lines.append(
                    f"| {trial.label} | {clients} | {KINDS[kind][3]} | {cell.rate:.0f} "
                    f"| {cell.ms(0.5):.1f} | {cell.ms(0.99):.1f} "
                    f"| {'' if kind == 'static' else f'{_ratio(cell.rate, static.rate):.2f}'} "
                    f"| {'' if kind == 'static' else f'{_ratio(cell.ms(0.99), static.ms(0.99)):.1f}'} "
                    f"| {cell.per_request(cell.server_cpu):.2f} "
                    f"| {'' if ceiling else f'{cell.per_request(cell.postgres_cpu):.2f}'} "
                    f"| {cell.busy:.0%} |")
    lines += ["", "Page sizes (bytes): " + ", ".join(
        f"{KINDS[kind][3]} {size:,}" for kind, size in large["sizes"].items()) + " at "
        f"{lt.label}; the project manager's dashboard is {small['sizes']['pm']:,} at "
        f"{small['trial'].label}.", ""]
    for kind, why in large["missing"].items():
        lines += [(f"Not measured: {KINDS[kind][3]}: {why}. The application's own `/static` "
                   "route (Flask's default static folder, `ivrs/static`, which does not exist) "
                   "is matched before the console blueprint's at the same URL, so the "
                   "stylesheet every console page links to is not served."), ""]
    lines += [("Memory: gunicorn workers' RSS (MiB) before the first cell and after the last: "
               + "; ".join(f"{part['trial'].label} {_mib(part['rss_before'])} → "
                           f"{_mib(part['rss_after'])}" for part in (large, small))
               + f". Signing in {large['browsers']} browsers over HTTP took "
               f"{large['signed_in_s']:.1f} s (argon2 per password; TOTP enrolment for the "
               "project managers)."), ""]
    if large.get("in_process"):
        lines += in_process_markdown(args, large, small)
    lines += verdict_markdown(args, data)
    return lines


def in_process_markdown(args, large: dict, small: dict) -> list[str]:
    lines = [(f"One request at a time in this process (Flask test client, same schema and "
              f"Redis, {args.profile} requests per page, medians): wall and CPU ms, SQL "
              "statements (SQLAlchemy `before_cursor_execute`; BEGIN/COMMIT and pre-pings "
              "not counted) and their wall time, the peak Python memory of one request "
              "(tracemalloc) and the page's size:"), "",
             ("| study | page | wall ms | CPU ms | statements | SQL ms | peak KiB "
              "| bytes |"),
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for part in (large, small):
        label = part["trial"].label
        for kind, row in part.get("in_process", {}).items():
            lines.append(f"| {label} | {KINDS[kind][3]} | {row['wall']:.1f} | {row['cpu']:.1f} "
                         f"| {row['statements']} | {row['sql']:.1f} | {row['peak_kib']:,.0f} "
                         f"| {row['bytes']:,} |")
    for key, when in (("profile", "after a change (nothing remembered)"),
                      ("profile_warm", "remembered (no change since the last one)")):
        profile = large.get(key)
        if not profile:
            continue
        lines += ["", (f"Where a project-manager dashboard's time goes at "
                       f"{large['trial'].label}, {when}: {profile['requests']} requests under "
                       "cProfile (wall clock: this process's CPU plus its waits on PostgreSQL "
                       "and Redis; inflated by the profiler), ms per request, cumulative "
                       "(parts overlap; · is inside `core.dashboard.current`):"), ""]
        lines += [f"- {label}: {ms:.2f}" for label, ms in profile["top"] if ms]
        lines += ["", "Most time of their own (ms per request, under cProfile): " + "; ".join(
            f"`{name}` {ms:.2f}" for name, ms in profile["own"]) + "."]
    return lines + [""]


def target_verdicts(args, data: dict) -> list[tuple[str, str, str, str]]:
    """(row prefix, label, measured, status) for the targets table."""
    large, small = data["large"], data["small"]
    # 1. The dashboard at the large size: p99 under what a user notices (read against
    # static from the same server, at each client count), its cost flat as the trial
    # grows, the workers' memory flat.
    clients = max(args.clients)
    pm, small_pm = large["rows"][clients]["pm"], small["rows"][clients]["pm"]
    grows = _ratio(pm.per_request(pm.server_cpu + pm.postgres_cpu),
                   small_pm.per_request(small_pm.server_cpu + small_pm.postgres_cpu))
    growth = [after - before for before, after in zip(large["rss_before"], large["rss_after"],
                                                      strict=False)]
    flat_memory = bool(growth) and max(growth) < RSS_GROWTH_MIB
    # Both dashboards (every part, and a site's) must be quick; the one under
    # changes is reported beside them.
    quick = [count for count in args.clients
             if max(large["rows"][count][kind].ms(0.99) for kind in ("pm", "sc"))
             < NOTICEABLE_MS]

    def changing(count: int) -> str:
        cell = large["rows"][count].get("pm_changing")
        return "" if cell is None else (f"; the study changing {CHANGES_PER_S}/s: p99 "
                                        f"{cell.ms(0.99):.0f} ms, {cell.rate:.0f}/s")
    measured = "; ".join(
        f"{count} clients: p99 {large['rows'][count]['pm'].ms(0.99):.0f} ms vs static "
        f"{large['rows'][count]['static'].ms(0.99):.0f} ms (p50 "
        f"{large['rows'][count]['pm'].ms(0.5):.0f} ms, {large['rows'][count]['pm'].rate:.0f}/s; "
        f"site coordinator p99 {large['rows'][count]['sc'].ms(0.99):.0f} ms{changing(count)})"
        for count in args.clients)
    measured += (f"; CPU per dashboard (gunicorn + PostgreSQL) ÷ the same at "
                 f"{small['trial'].label}: {grows:.2f}; worker RSS {_mib(large['rss_before'])} "
                 f"→ {_mib(large['rss_after'])} MiB")
    in_process = large.get("in_process")
    if in_process and small.get("in_process"):
        measured += (f"; one request alone, after a change / remembered: "
                     f"{in_process['pm_cold']['wall']:.0f} / {in_process['pm']['wall']:.0f} ms "
                     f"wall; peak Python memory of one dashboard after a change "
                     f"{in_process['pm_cold']['peak_kib']:,.0f} KiB vs "
                     f"{small['in_process']['pm_cold']['peak_kib']:,.0f} KiB")
    if len(quick) == len(args.clients):
        status = "met" if flat_memory else "p99 met; **worker memory grew**"
    elif quick:
        status = (f"met at {', '.join(map(str, quick))} clients; **p99 not met at "
                  f"{', '.join(str(c) for c in args.clients if c not in quick)}**")
    else:
        status = "**not met**"
    dashboard = ("| web dashboard",
                 (f"web dashboard at {large['trial'].label} (project manager: every part; "
                  "and a site coordinator's) "
                  f"renders with p99 under what a user notices (taken as {NOTICEABLE_MS} ms), "
                  "read against a static page from the same server; no page loads a whole "
                  "table into memory"), measured, status)
    # 2. Every web page against static TwiML, at the largest client count.
    row = large["rows"][clients]
    static = row["static"]
    parts, met = [], []
    for kind in PAGES:
        cell = row[kind]
        throughput, p99 = _ratio(cell.rate, static.rate), _ratio(cell.ms(0.99), static.ms(0.99))
        met.append((throughput >= TARGET_THROUGHPUT, p99 <= TARGET_P99))
        parts.append(f"{KINDS[kind][3]} {cell.rate:.0f}/s ({throughput:.2f}), p99 "
                     f"{cell.ms(0.99):.0f} ms ({p99:.1f}x)")
    pages = ("| web page", (f"web page at {clients} concurrent browsers (gunicorn + PostgreSQL "
                            "+ Redis) ≥ 0.5 of the throughput of static TwiML from the same "
                            "server, p99 within 4x"),
             f"static {static.rate:.0f}/s, p99 {static.ms(0.99):.0f} ms; " + "; ".join(parts),
             target_status(met))
    return [dashboard, pages]


def verdict_markdown(args, data: dict) -> list[str]:
    lines = ["Against the targets:", ""]
    for _, label, measured, status in target_verdicts(args, data):
        lines.append(f"- {label}: {measured}: **{status.strip('*')}**.")
    return lines + [""]


def place_section(path: Path) -> None:
    """Move "## Web console" right after "## HTTP API" (run_parts appends a new
    section at the end of the file); nothing moves if it is there."""
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
    parser.add_argument("--clients", default="8,50",
                        help="concurrent browsers, comma-separated (default 8,50)")
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--sites", type=int, default=60)
    parser.add_argument("--tail", type=int, default=500,
                        help="audit rows after the last full verification (default 500)")
    parser.add_argument("--gthread-workers", type=int, default=2)
    parser.add_argument("--gthread-threads", type=int, default=THREADS_PER_WORKER)
    parser.add_argument("--client-processes", type=int, default=2,
                        help="load generator processes (threads inside; default 2)")
    parser.add_argument("--today", default=os.environ.get("IVRS_TODAY")
                        or date.today().isoformat(), help="IVRS_TODAY for the server")
    parser.add_argument("--profile", type=int, default=50, metavar="N",
                        help="also request each page N times in-process (0: skip)")
    parser.add_argument("--smoke", action="store_true",
                        help="1,000 subjects, 2 s per cell, 10 profiled requests; nothing written")
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    try:
        args.clients = sorted({int(c) for c in args.clients.split(",") if c})
    except ValueError:
        parser.error("--clients is comma-separated numbers")
    if not args.clients or min(args.clients) < 1 or max(args.clients) > 200:
        parser.error("--clients: 1 to 200 browsers per cell")
    if args.smoke:
        args.subjects, args.seconds, args.warmup = 1_000, 2.0, 0.5
        args.profile = min(args.profile, 10)
        args.no_write = True
    if not GUNICORN.exists():
        parser.error(f"gunicorn is not installed next to {sys.executable}")
    args.workers = f"{args.client_processes} process(es) with threads"  # run_parts prints it
    args.only = None
    args.secret = secrets.token_urlsafe(32)  # this run's cookie-signing key
    check_loopback(args.url)
    check_redis_loopback(args.redis_url)
    verdicts = []

    def bench(args, schema):
        data = bench_web(args, schema)
        verdicts.extend(target_verdicts(args, data))
        return data

    run_parts(args, argv, "bench/bench_web.py", SECTION, [
        ("web", "web console pages through gunicorn vs. static TwiML:",
         "Console pages vs. static TwiML (gunicorn + PostgreSQL + Redis)", bench,
         web_markdown),
    ])
    if not args.no_write:
        place_section(Path(args.output))
        after = "| API randomize"
        for prefix, label, measured, status in verdicts:
            replace_target_row(Path(args.output), f"| {label} | {measured} | {status} |",
                               prefix, after)
            after = prefix
        print("targets table: web console rows written")


if __name__ == "__main__":
    main()
