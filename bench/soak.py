"""Soak: mixed calls and SMS at a moderate rate for a long time, with a fault
injected every few minutes, through a real ``ivrs serve`` (4 workers) on a
PostgreSQL cluster and a Redis of its own, outbound SMS to a fake Twilio.

Six site users, each in a loop with a few seconds' thought between actions:
screen and randomize a subject by phone (paced so that the whole run uses at
most 110 of the demo list's 120 entries), confirm its kit by SMS (``KIT``,
then the PIN), ask ``STATUS`` and ``STOCK`` by SMS, and call to hear the last
confirmation again. Requests are retried and sometimes sent twice as Twilio
does, and a caller who hears an apology calls again (tests/faults.py).

Faults, in turn, every ``--fault-every`` seconds: a worker killed (SIGKILL),
Redis killed and started again 3 s later, PostgreSQL crashed and started 10 s
later, the server stopped with SIGTERM and started again.

Every ``--sample-every`` seconds it records each server process's RSS, the
PostgreSQL connections of the run's database, Redis's clients, the answers and
errors so far. At the end it checks exactly-once against the database (what
every caller heard is stored, nothing twice, the audit chain intact) and that
every answer was a 200 or 204; it exits 1 if any of that fails.

    python bench/soak.py --minutes 30            # the soak; writes BENCHMARKS.md
    python bench/soak.py --minutes 2 --no-write  # what CI runs

Needs PostgreSQL's and Redis's server binaries (as root it runs PostgreSQL as
the ``postgres`` user), and the test extra (it reuses the tests' harness).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests")]

from bench_randomize import update_benchmarks  # (imports below need the path above)
from e2e import (
    DAY_1,
    PIN,
    TOKEN,
    Call,
    Server,
    assert_given_once,
    assert_heard_is_stored,
    kill_server,
    read_outcome,
    signed_up_users,
    start_server,
    stock_sites,
    wait_for_health,
)
from fake_twilio import ACCOUNT_SID, FROM_NUMBER, FakeTwilio
from faults import Interrupted, Tally, TwilioLikeTransport, caller_through_faults
from own_servers import OwnPostgres, OwnRedis, postgres_bin
from sqlalchemy import select, text

from core.audit import verify
from core.db import Database
from core.migrate import upgrade
from core.models import Study
from ivrs.demo.texter import Texter

SECTION = "Soak"
USERS = 6
RANDOMIZATION_BUDGET = 110  # of the demo list's 120 entries (30 in each of 4 strata)
THINK_SECONDS = (1.0, 3.0)


@dataclass
class Sample:
    at: float  # seconds since the start
    rss_mb: dict[int, float]  # server process pid -> RSS
    pg_connections: int
    redis_clients: int
    answers: int
    errors: int


@dataclass
class Soak:
    args: argparse.Namespace
    postgres: OwnPostgres
    redis: OwnRedis
    twilio: FakeTwilio
    workdir: Path
    database_url: str = ""
    db: Database | None = None
    server: Server | None = None
    tally: Tally = field(default_factory=Tally)
    calls: list = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    faults: list[tuple[float, str, float]] = field(default_factory=list)  # at, what, recovery s
    sms: dict[str, int] = field(default_factory=lambda: {"sent": 0, "apologies": 0})
    failures: list[str] = field(default_factory=list)
    started: float = 0.0
    randomized: int = 0
    next_randomization: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    # --- set-up ------------------------------------------------------------------------

    def set_up(self) -> None:
        os.environ["IVRS_TODAY"] = DAY_1.isoformat()  # the demo lots' dates follow it
        from voice import demo_study_in_english

        self.database_url = self.postgres.create_database(f"soak_{uuid.uuid4().hex[:8]}")
        self.db = Database(self.database_url, pool_size=4)
        upgrade(self.db.engine)
        demo_study_in_english(self.db, self.workdir)
        self.users = signed_up_users(self.db, USERS, first=8101)
        stock_sites(self.db, self.workdir / "site-kits.csv")
        self.server = self.serve()

    def serve(self, **options) -> Server:
        return start_server(self.database_url, DAY_1, self.workdir, workers=4,
                            REDIS_URL=self.redis.url, TWILIO_ACCOUNT_SID=ACCOUNT_SID,
                            TWILIO_FROM_NUMBER=FROM_NUMBER,
                            TWILIO_API_BASE_URL=self.twilio.base_url, **options)

    # --- the load ----------------------------------------------------------------------

    def site_user(self, number: int, user) -> None:
        rng = random.Random(number)
        transport = TwilioLikeTransport(self.server.url, self.tally, rng)
        texter = Texter(transport, sender=user.phone, auth_token=TOKEN,
                        public_base_url=self.server.url)
        subjects: list[str] = []
        while not self.stop.is_set():
            try:
                index = self.take_randomization()
                if index is not None:
                    call = caller_through_faults(transport, user, index,
                                                 deadline=time.monotonic() + 120)
                    with self.lock:
                        self.calls.append(call)
                    subjects.append(call.heard["subject"])
                    for kit in call.heard.get("v1_kits", []):
                        self.text(texter, f"KIT {kit}", PIN)
                elif subjects:
                    self.text(texter, rng.choice([f"STATUS {rng.choice(subjects)}", "STOCK"]),
                              PIN)
                    self.hear_last_confirmation(transport, user)
            except Exception:  # noqa: BLE001 — counted, printed, and the soak fails
                with self.lock:
                    self.failures.append(f"user {user.code}: {traceback.format_exc()}")
            self.stop.wait(rng.uniform(*THINK_SECONDS))

    def take_randomization(self) -> int | None:
        """The next subject's index when one is due (the pace spreads the budget
        over the run), else None."""
        with self.lock:
            now = time.monotonic()
            if self.randomized >= RANDOMIZATION_BUDGET or now < self.next_randomization:
                return None
            self.randomized += 1
            self.next_randomization = now + self.args.minutes * 60 / RANDOMIZATION_BUDGET
            return self.randomized

    def text(self, texter: Texter, body: str, pin: str) -> None:
        """A command by SMS; its PIN when asked. An apology is counted and left:
        the texter will try again at its next turn."""
        for message in (body, pin):
            try:
                reply = texter.send(message)
            except Interrupted:
                return
            with self.lock:
                self.sms["sent"] += 1
                if "sorry" in reply.text.lower():
                    self.sms["apologies"] += 1
                    return
            if "PIN" not in reply.text:
                return

    def hear_last_confirmation(self, transport, user) -> None:
        call = Call.to(self.server.url, user, transport)
        try:
            call.sign_in()
            call.phone.press("9")
            call.phone.hang_up()
        except Interrupted:
            pass

    # --- faults ------------------------------------------------------------------------

    def faults_loop(self) -> None:
        kinds = [self.kill_a_worker, self.restart_redis, self.restart_postgres,
                 self.restart_server]
        turn = 0
        while not self.stop.wait(self.args.fault_every):
            fault = kinds[turn % len(kinds)]
            turn += 1
            at = time.monotonic() - self.started
            try:
                name, recovery = fault()
            except Exception:  # noqa: BLE001
                with self.lock:
                    self.failures.append(f"fault {fault.__name__}: {traceback.format_exc()}")
                continue
            self.faults.append((at, name, recovery))
            print(f"  {at:7.1f} s  {name}: back in {recovery:.2f} s", flush=True)

    def kill_a_worker(self) -> tuple[str, float]:
        victim = random.choice(self.server.workers())
        os.kill(victim, signal.SIGKILL)
        started = time.monotonic()
        while victim in self.server.workers() or len(self.server.workers()) < 4:
            time.sleep(0.05)
        return "worker killed (SIGKILL)", time.monotonic() - started

    def restart_redis(self) -> tuple[str, float]:
        self.redis.kill()
        wait_for_health(self.server.url, 503, timeout=10)
        time.sleep(3)
        self.redis.start()
        return "Redis killed, restarted 3 s later", wait_for_health(self.server.url, 200, 30)

    def restart_postgres(self) -> tuple[str, float]:
        self.postgres.crash()
        wait_for_health(self.server.url, 503, timeout=10)
        time.sleep(10)
        self.postgres.start()
        return "PostgreSQL crashed, started 10 s later", wait_for_health(self.server.url, 200,
                                                                        30)

    def restart_server(self) -> tuple[str, float]:
        old = self.server
        port = int(old.url.rsplit(":", 1)[1])
        started = time.monotonic()
        os.kill(old.process.pid, signal.SIGTERM)
        code = old.process.wait(timeout=60)
        if code != 0:
            raise AssertionError(f"ivrs serve exited {code} on SIGTERM")
        self.server = self.serve(port=port)
        return "SIGTERM, new server", time.monotonic() - started

    # --- samples -----------------------------------------------------------------------

    def sample_loop(self) -> None:
        while not self.stop.wait(self.args.sample_every):
            self.samples.append(self.sample())

    def sample(self) -> Sample:
        server = self.server
        pids = [server.process.pid, *server.children()]
        rss = {pid: mb for pid in pids if (mb := rss_mb(pid)) is not None}
        return Sample(time.monotonic() - self.started, rss, self.pg_connections(),
                      self.redis_clients(), sum(self.tally.statuses.values()),
                      sum(self.tally.errors.values()))

    def pg_connections(self) -> int:
        try:
            with self.db.engine.connect() as connection:
                return connection.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                )).scalar() - 1  # not this one
        except Exception:  # noqa: BLE001 — PostgreSQL is down: a fault under way
            return -1

    def redis_clients(self) -> int:
        import redis

        try:
            return int(redis.Redis(port=self.redis.port, socket_timeout=1)
                       .info("clients")["connected_clients"]) - 1
        except (redis.RedisError, OSError):
            return -1

    # --- the run -----------------------------------------------------------------------

    def run(self) -> None:
        self.started = time.monotonic()
        threads = [threading.Thread(target=self.site_user, args=(i, user), daemon=True)
                   for i, user in enumerate(self.users)]
        threads += [threading.Thread(target=self.faults_loop, daemon=True),
                    threading.Thread(target=self.sample_loop, daemon=True)]
        self.samples.append(self.sample())
        for thread in threads:
            thread.start()
        self.stop.wait(self.args.minutes * 60)
        self.stop.set()
        for thread in threads:
            thread.join(timeout=180)
        self.samples.append(self.sample())

    def check(self) -> list[str]:
        """Exactly-once, from the database; the answers' statuses."""
        problems = list(self.failures)
        try:
            outcome = read_outcome(self.db)
            assert_given_once(outcome)
            assert_heard_is_stored(outcome, self.calls)
        except AssertionError as error:
            problems.append(f"exactly-once: {error}")
        # One snapshot: the server is still up (its jobs may commit), and rows read
        # before a commit with the head read after it would look like a broken chain.
        with self.db.snapshot() as session:
            for study in session.scalars(select(Study)):
                if (broken := verify(session, study.id)) is not None:
                    problems.append(f"audit chain of {study.code}: {broken}")
        bad = {status: n for status, n in self.tally.statuses.items() if status not in (200, 204)}
        if bad:
            problems.append(f"answers other than 200/204: {bad}")
        return problems


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# --- report --------------------------------------------------------------------------------


def growth(samples: list[Sample], warm_up: float) -> tuple[float, float, float, int]:
    """The largest RSS growth of one server process over its life once warmed up
    (``warm_up`` seconds after it was first seen): (MB, over how many seconds,
    its RSS at the end, MB; how many processes were measured that way)."""
    series: dict[int, list[tuple[float, float]]] = {}
    for sample in samples:
        for pid, mb in sample.rss_mb.items():
            series.setdefault(pid, []).append((sample.at, mb))
    measured = []
    for points in series.values():
        born = points[0][0]
        warm = [(at, mb) for at, mb in points if at >= born + warm_up]
        if len(warm) >= 2:
            measured.append((warm[-1][1] - warm[0][1], warm[-1][0] - warm[0][0], warm[-1][1]))
    if not measured:
        return 0.0, 0.0, 0.0, 0
    grown, seconds, final = max(measured)
    return grown, seconds, final, len(measured)


def markdown(soak: Soak, problems: list[str], command: str) -> list[str]:
    tally, samples = soak.tally, soak.samples
    seconds = samples[-1].at
    answers = sum(tally.statuses.values())
    grown, over, final, measured = growth(samples, warm_up=min(60.0, seconds / 8))
    connections = [s.pg_connections for s in samples if s.pg_connections >= 0]
    clients = [s.redis_clients for s in samples if s.redis_clients >= 0]
    recoveries = [f"{name} at {at:.0f} s (back in {recovery:.2f} s)"
                  for at, name, recovery in soak.faults]
    lines = [
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Command: `{command}`",
        f"- Machine: nproc {os.cpu_count()}; PostgreSQL binaries {postgres_bin()}",
        "",
        (f"{USERS} site users for {seconds / 60:.1f} minutes against `ivrs serve` (4 workers "
         "x 4 threads), PostgreSQL and Redis of its own, outbound SMS to a fake Twilio."),
        "",
        "| measure | value |",
        "|---|---|",
        (f"| webhook answers | {answers} ({answers / seconds:.1f}/s): "
         f"{dict(sorted(tally.statuses.items()))} |"),
        f"| subjects randomized by phone | {len(soak.calls)} |",
        f"| SMS texted to the server (commands and PINs) | {soak.sms['sent']} |",
        f"| connection errors retried | {dict(tally.errors) or 0} |",
        (f"| apologies (voice / SMS), all during faults | {tally.apologies} / "
         f"{soak.sms['apologies']} |"),
        f"| requests sent twice on purpose | {tally.duplicates} |",
        f"| faults | {len(soak.faults)}: " + "; ".join(recoveries) + " |",
        (f"| largest RSS growth of one server process once warmed up | {grown:+.1f} MB over "
         f"{over / 60:.1f} min (to {final:.0f} MB; {measured} processes measured) |"),
        (f"| PostgreSQL connections of the run's database | median "
         f"{statistics.median(connections) if connections else 0:.0f}, "
         f"max {max(connections, default=0)} |"),
        (f"| Redis clients | median {statistics.median(clients) if clients else 0:.0f}, "
         f"max {max(clients, default=0)} |"),
        (f"| exactly-once, audit chain, statuses | "
         f"{'held' if not problems else 'FAILED: ' + '; '.join(p[:200] for p in problems)} |"),
        "",
        "RSS of the server's processes over the run (MB, master first):",
        "",
    ]
    step = max(1, len(samples) // 12)
    for sample in samples[::step] + ([samples[-1]] if len(samples) % step != 1 else []):
        sizes = ", ".join(f"{mb:.0f}" for mb in sample.rss_mb.values())
        lines.append(f"- {sample.at:6.0f} s: {sizes}; PostgreSQL connections "
                     f"{sample.pg_connections}, Redis clients {sample.redis_clients}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--fault-every", type=float, default=None,
                        help="seconds between faults (default: a quarter of the run, at "
                             "most 4 minutes, so that each kind of fault happens)")
    parser.add_argument("--sample-every", type=float, default=10.0)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    if args.fault_every is None:
        args.fault_every = min(240.0, args.minutes * 60 / 5)
    command = "python bench/soak.py " + " ".join(sys.argv[1:] if argv is None else argv)
    from e2e import free_port

    workdir = Path(tempfile.mkdtemp(prefix="ivrs-soak-"))
    postgres = OwnPostgres(free_port())
    redis = OwnRedis(free_port(), workdir)
    postgres.start()
    redis.start()
    soak = None
    try:
        with FakeTwilio(auth_token=TOKEN) as twilio:
            soak = Soak(args, postgres, redis, twilio, workdir)
            soak.set_up()
            print(f"soak: {args.minutes} min, a fault every {args.fault_every:.0f} s, "
                  f"server {soak.server.url}", flush=True)
            soak.run()
            problems = soak.check()
            report = markdown(soak, problems, command)
    finally:
        if soak is not None and soak.server is not None:
            kill_server(soak.server)
        if soak is not None and soak.db is not None:
            soak.db.dispose()
        redis.kill()
        postgres.remove()
    print("\n".join(report))
    if not args.no_write:
        update_benchmarks(Path(args.output), {f"{args.minutes:g} minutes": report}, SECTION,
                          "bench/soak.py")
        print(f"written to {args.output}")
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
