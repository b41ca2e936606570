#!/usr/bin/env python
"""Trial supply: dispensing throughput, the resupply job's scaling, and flat dispensing cost.

    python bench/bench_supply.py [--url URL] [--seconds S] [--workers threads|processes]
                                 [--only dispensing resupply flat] [--no-write]

Three benchmarks (``--only`` picks some; all run by default):

``dispensing``
    Dispensations per second with 8 concurrent clients (``--clients``), the
    study having 1 site and then 50 sites; each operation is one full
    ``core.supply.dispensing.dispense`` call for the V2 visit of a distinct
    subject (subject lock, visit schedule, two kits picked ``FOR UPDATE SKIP
    LOCKED`` and moved, visit row, audit row sealed into the chain, idempotency
    record, commit). Next to it, in the same run and with the same number of
    clients, the baseline of the foundation issue's benchmark: a bare
    ``SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1`` + ``UPDATE`` loop through
    psycopg 3, one explicit transaction per row (``bench_randomize``'s code).
``resupply``
    One ``core.supply.resupply.run_resupply`` over 200 sites x 4 kit types with
    20,000 kits at the depot, then over 400 sites x 4 x 40,000: the first run
    (every site gets its initial shipment) and a second run the same day
    (nothing to ship), on PostgreSQL and on a SQLite file; the growth ratio
    when the sites double.
``flat``
    The median of 50 consecutive ``dispense`` calls (one client) when the site
    has about 100 subjects and when it has ``--crowd`` (default 9,999: the most
    subject numbers one site has), on PostgreSQL.

Subjects are randomized through the real ``core.randomize.randomize`` service
(method ``simple``, 8 threads, which also dispenses their V1 kit), on day 0
(``IVRS_TODAY``); dispensing then runs on day 28 (``IVRS_TODAY``), when V2
is due. Screening is done in bulk by SQL (``bench_randomize.prescreen``).
Kits and lots are created by bulk Core inserts: ``available`` at the sites
for dispensing, ``at_depot`` for the resupply job; on PostgreSQL the
tables are then ANALYZEd (as autovacuum soon would). Every measurement is
duration-bounded, runs in a fresh PostgreSQL schema dropped at the end, and
only loopback addresses are accepted.

Results are printed and written into BENCHMARKS.md, section "Supply" (one
subsection per benchmark, replaced on each run; other sections are kept).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_randomize import (  # the foundation benchmark's plumbing
    BASELINE_ROWS_PER_SECOND,
    ROOT,
    Database,
    Result,
    Schema,
    check_loopback,
    check_result,
    percentile,
    prepare_baselines,
    prescreen,
    run_clients,
    skip_locked_spec,
    run_parts,
)
from sqlalchemy import event, insert, select, text

from core.actors import ADMIN, Actor
from core.migrate import upgrade
from core.models import Depot, Site, Study
from core.randomize import randomize
from core.study_loader import load_study
from core.supply.dispensing import dispense
from core.supply.lifecycle import AT_DEPOT, AVAILABLE
from core.models import Kit, KitType, Lot, Shipment
from core.supply.resupply import run_resupply

DEFAULT_URL = "postgresql://postgres@127.0.0.1/test"
SECTION = "Supply"
# Upper bound on the dispense rate we size subject pools for; a client that runs
# out stops early and the result says so (the rate is then a lower bound).
DISPENSE_RATE_CAP = 350
DAY0 = datetime.now(UTC).date()
V2_DAY = DAY0 + timedelta(days=28)
COORDINATOR = Actor(role="site_coordinator", user_code="bench", site_codes=None)
YES = {"INC1": True}
_PHONES = itertools.count(1)  # a dialed number routes to one study: one each


# --- study files and stock --------------------------------------------------------------


def study_yaml(code: str, sites: int, arms: int, *, initial: int | None = None) -> str:
    """A study file: ``arms`` arms (1:1...), one kit type per arm, visits V1 (day 0,
    1 kit) and V2 (day 28 +-3, 2 kits), no predictive resupply, one depot."""
    letters = "ABCDEFGH"[:arms]
    arm_lines = "\n".join(f"  - {{code: {a}, name: \"Arm {a}\"}}" for a in letters)
    ratio = ", ".join(f"{a}: 1" for a in letters)
    kit_lines = "\n".join(f"  - {{code: K{a}, arm: {a}}}" for a in letters)
    site_lines = "\n".join(
        f"  - {{code: \"{1000 + i}\", name: \"Site {1000 + i}\", country: DE, language: en, "
        f"timezone: Europe/Berlin, depot: \"90\"}}" for i in range(sites))
    initial_line = f"\n  initial: {{target: {initial}}}" if initial else ""
    return textwrap.dedent("""\
        study:
          code: "{code}"
          name: "Supply benchmark"
          languages: [en]
          phone_numbers: ["+1500555{phone:04d}"]
        arms:
        {arms}
        randomization:
          method: simple
          ratio: {{{ratio}}}
          seed: 42
        eligibility: [INC1]
        unblinding: {{mode: investigator}}
        kit_types:
        {kits}
        visits:
          - {{code: V1, day: 0, window: [0, 0], dispense: 1}}
          - {{code: V2, day: 28, window: [-3, 3], dispense: 2}}
        supply:
          do_not_dispense_days: 30
          do_not_ship_days: 45
          default_resupply: {{trigger: 2, target: 6}}{initial}
        depots:
          - {{code: "90", name: "Depot", country: DE}}
        sites:
        {sites}
        users:
          - {{id: "9001", name: "Ada Admin", role: admin, language: en, pin: "5566"}}
        """).format(code=code, phone=next(_PHONES), arms=arm_lines, ratio=ratio, kits=kit_lines, sites=site_lines,
                    initial=initial_line)


def load(db: Database, text_: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text_)
    try:
        load_study(db, f.name, actor="bench")
    finally:
        os.unlink(f.name)


def add_kits(db: Database, study_code: str, *, per_type: dict[str | None, int],
             lot_size: int = 500) -> int:
    """Bulk-insert kits of every kit type: ``per_type[site_code]`` kits of each type
    ``available`` at that site, ``per_type[None]`` ``at_depot`` at the study's depot.
    Lots of ``lot_size`` kits, expiring from day 0 + 400 on (one day per lot)."""
    with db.transaction() as s:
        study = s.execute(select(Study).where(Study.code == study_code)).scalar_one()
        types = s.execute(select(KitType.id).where(KitType.study_id == study.id)
                          .order_by(KitType.code)).scalars().all()
        depot = s.execute(select(Depot.id).where(Depot.study_id == study.id)).scalar_one()
        sites = dict(s.execute(select(Site.code, Site.id).where(Site.study_id == study.id)).all())
        taken = s.execute(select(Kit.id).where(Kit.study_id == study.id)).all()
        number = 100_000 + len(taken)
        lot_count = s.execute(select(Lot.id).where(Lot.study_id == study.id)).all()
        lot_seq = len(lot_count)
        now = datetime.now(UTC)
        kits = []
        for where, count in per_type.items():
            place = ({"status": AT_DEPOT, "depot_id": depot, "site_id": None} if where is None
                     else {"status": AVAILABLE, "depot_id": None, "site_id": sites[where]})
            for type_id in types:
                for start in range(0, count, lot_size):
                    lot_seq += 1
                    expiry = DAY0 + timedelta(days=400 + lot_seq)
                    lot_id = s.execute(insert(Lot).returning(Lot.id), {
                        "study_id": study.id, "kit_type_id": type_id, "code": f"L{lot_seq}",
                        "expiry_date": expiry}).scalar_one()
                    for _ in range(min(lot_size, count - start)):
                        number += 1
                        kits.append({"study_id": study.id, "kit_number": str(number),
                                     "kit_type_id": type_id, "lot_id": lot_id,
                                     "expiry_date": expiry, "updated_at": now, **place})
        for start in range(0, len(kits), 10_000):
            s.execute(insert(Kit), kits[start:start + 10_000])
    return len(kits)


ANALYZED = ("kits", "lots", "shipments", "shipment_kits", "subjects", "randomizations",
            "subject_visits", "sites")


def analyze(db: Database) -> None:
    """Fresh planner statistics after a bulk load, as autovacuum would soon give them
    (PostgreSQL only; the tables of this schema only, never the whole database).
    Without it the first resupply run over freshly inserted kits was 2-3x slower."""
    if db.engine.dialect.name != "postgresql":
        return
    with db.engine.connect() as conn:
        conn.execute(text("ANALYZE " + ", ".join(ANALYZED)))
        conn.commit()


class Today:
    """Sets IVRS_TODAY (the service clock) for a block; restored after."""

    def __init__(self, day: date):
        self.day = day

    def __enter__(self):
        self.old = os.environ.get("IVRS_TODAY")
        os.environ["IVRS_TODAY"] = self.day.isoformat()

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("IVRS_TODAY", None)
        else:
            os.environ["IVRS_TODAY"] = self.old


def randomize_all(db: Database, study_code: str, numbers: list[str], threads: int = 8) -> float:
    """Randomize the subjects through the service on day 0, in parallel; seconds taken."""
    began = time.monotonic()
    with Today(DAY0), ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda n: randomize(db, subject_number=n, actor=ADMIN, eligibility=YES,
                                          factors={}, study=study_code), numbers))
    return time.monotonic() - began


def dispensing_study(schema: Schema, code: str, sites: int, subjects: int) -> tuple[list[str], float]:
    """A study with ``sites`` sites, ``subjects`` randomized subjects (V1 done), and
    enough kits at every site for everybody's V1 and V2 whatever the arm."""
    db = schema.database(8)
    try:
        load(db, study_yaml(code, sites, 2))
        per_site = -(-subjects // sites)
        site_codes = [str(1000 + i) for i in range(sites)]
        add_kits(db, code, per_type={c: 3 * per_site + 10 for c in site_codes})
        numbers = prescreen(db, code, subjects)
        seconds = randomize_all(db, code, numbers)
        analyze(db)
    finally:
        db.dispose()
    return numbers, seconds


# --- dispensing throughput -------------------------------------------------------------


class _Client:
    """A dispensing client: the shared Database (threads) or its own engine (processes)."""

    def __init__(self, db: Database, own: bool = False):
        self.db, self.own, self.numbers = db, own, []

    def close(self) -> None:
        if self.own:
            self.db.dispose()


def dispense_specs(workers: str, schema: Schema, study_code: str, parts: list[list[str]],
                   shared: Database | None) -> list[tuple]:
    specs = []
    for part in parts:
        def setup(part=part):
            # one call before the start: connection made, statement caches warm
            state = _Client(shared) if workers == "threads" else _Client(schema.database(0),
                                                                          own=True)
            dispense(state.db, subject_number=part[0], actor=COORDINATOR, study=study_code)
            state.numbers = part[1:]
            return state

        def operation(state, i):
            if i >= len(state.numbers):
                return False
            dispense(state.db, subject_number=state.numbers[i], actor=COORDINATOR,
                     study=study_code)
            return True

        specs.append((setup, operation))
    return specs


def measure_dispensing(args, schema: Schema, sites: int) -> tuple[Result, Result, float]:
    code = f"D{sites}"
    wanted = int(DISPENSE_RATE_CAP * (args.warmup + args.seconds)) + 8 * args.clients
    subjects = min(wanted, 9_999 * sites)
    numbers, randomize_seconds = dispensing_study(schema, code, sites, subjects)
    print(f"  {sites} site(s): {subjects} subjects randomized in {randomize_seconds:.1f} s",
          flush=True)
    parts = [numbers[c::args.clients] for c in range(args.clients)]
    shared = schema.database(args.clients) if args.workers == "threads" else None
    try:
        with Today(V2_DAY):
            result = run_clients(args.workers,
                                 dispense_specs(args.workers, schema, code, parts, shared),
                                 args.warmup, args.seconds)
    finally:
        if shared is not None:
            shared.dispose()
    check_result(f"dispense x{args.clients} ({sites} sites)", result)
    prepare_baselines(schema, int(BASELINE_ROWS_PER_SECOND * (args.warmup + args.seconds)))
    skip = run_clients(args.workers, [skip_locked_spec(schema, c) for c in range(args.clients)],
                       args.warmup, args.seconds)
    check_result(f"skip locked x{args.clients}", skip)
    print(f"  {sites} site(s), {args.clients} clients: dispense {result.rate:.1f}/s "
          f"(p50 {result.ms(0.5):.1f} ms)   SKIP LOCKED {skip.rate:.0f}/s   "
          f"ratio {result.rate / skip.rate:.3f}", flush=True)
    return result, skip, randomize_seconds


def bench_dispensing(args, schema: Schema) -> list[tuple]:
    return [(sites, *measure_dispensing(args, schema, sites)) for sites in args.sites]


def dispensing_markdown(args, rows: list[tuple]) -> list[str]:
    lines = [
        (f"Clients: {args.workers}, {args.clients} of them. Each dispense is one full "
         "`core.supply.dispensing.dispense` call for the V2 visit (2 kits) of a distinct "
         "subject, through SQLAlchemy on psycopg 3: subject lock, schedule, kits picked "
         "`FOR UPDATE SKIP LOCKED` and moved through the kit state machine, visit row, audit "
         "row sealed into the study's chain, idempotency record, commit. Subjects were "
         "randomized beforehand through the real `core.randomize.randomize` (method simple, "
         "2 arms, 8 threads, which dispensed their V1 kit) on day 0; dispensing runs on day "
         "28 (`IVRS_TODAY`). The baseline is the foundation issue's: `SELECT id ... FOR "
         "UPDATE SKIP LOCKED LIMIT 1` + `UPDATE` through psycopg 3, one explicit transaction "
         f"per row, same clients, same run. {args.seconds:g} s measured after "
         f"{args.warmup:g} s warm-up per cell."),
        "",
        ("| sites | clients | dispense/s | p50 ms | p95 ms | SKIP LOCKED/s "
         "| dispense ÷ SKIP LOCKED | subjects randomized (s) |"),
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sites, result, skip, rand_seconds in rows:
        flag = " (ran out)" if result.exhausted else ""
        lines.append(
            f"| {sites} | {args.clients} | {result.rate:.1f}{flag} | {result.ms(0.5):.1f} "
            f"| {result.ms(0.95):.1f} | {skip.rate:.0f} | {result.rate / skip.rate:.3f} "
            f"| {rand_seconds:.1f} |")
    errors = sum(len(r.errors) + len(s.errors) for _, r, s, _ in rows)
    if errors:
        lines.append(f"\n**{errors} client(s) failed during this run; see the console output.**")
    lines.append("")
    return lines


# --- resupply scaling ---------------------------------------------------------------------


def resupply_case(db: Database, code: str, sites: int, kits: int) -> dict:
    began = time.monotonic()
    load(db, study_yaml(code, sites, 4))
    load_seconds = time.monotonic() - began
    began = time.monotonic()
    add_kits(db, code, per_type={None: kits // 4})
    kit_seconds = time.monotonic() - began
    analyze(db)
    with Today(DAY0):
        began = time.monotonic()
        first = run_resupply(db, study=code, today=DAY0)
        first_seconds = time.monotonic() - began
        began = time.monotonic()
        second = run_resupply(db, study=code, today=DAY0)
        second_seconds = time.monotonic() - began
    with db.sessions() as s:
        study_id = s.execute(select(Study.id).where(Study.code == code)).scalar_one()
        shipments = len(s.execute(select(Shipment.id).where(Shipment.study_id == study_id)).all())
    return {"sites": sites, "kits": kits, "first": first_seconds, "second": second_seconds,
            "shipped": sum(x.kits for x in first), "shipments": len(first),
            "second_shipments": len(second), "stored": shipments, "load": load_seconds,
            "kit_insert": kit_seconds}


def bench_resupply(args, schema: Schema | None) -> list[tuple[str, list[dict]]]:
    out = []

    def cases(db: Database, label: str) -> None:
        rows = []
        for i, sites in enumerate(args.resupply_sites):
            row = resupply_case(db, f"R{i}", sites, sites * 100)
            rows.append(row)
            print(f"  {label}: {sites} sites x 4 kit types, {row['kits']:,} kits: first run "
                  f"{row['first']:.2f} s ({row['shipments']} shipments, {row['shipped']:,} kits), "
                  f"second run {row['second']:.2f} s ({row['second_shipments']} shipments)",
                  flush=True)
        out.append((label, rows))

    if schema is not None:
        db = schema.database(1)
        try:
            cases(db, "PostgreSQL")
        finally:
            db.dispose()
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory(prefix="bench-ivrs-") as tmp:
            db = Database(f"sqlite:///{Path(tmp) / 'supply.sqlite3'}")
            upgrade(db.engine)
            try:
                cases(db, "SQLite file")
            finally:
                db.dispose()
    return out


def resupply_markdown(args, data: list[tuple[str, list[dict]]]) -> list[str]:
    lines = [
        ("One `core.supply.resupply.run_resupply` call (one transaction per site) over a "
         "study loaded from a generated file: 4 arms, one kit type each, default resupply "
         "trigger 2 / target 6, one depot holding 100 kits per site (lots of 500, "
         "`at_depot`, bulk-inserted). First run: every site is new and gets its initial "
         "shipment (6 kits of each type = 24 kits); second run the same day: every site is "
         "at target counting what is on its way, nothing is shipped. One client. On "
         "PostgreSQL the kit tables are ANALYZEd after the bulk insert (as autovacuum soon "
         "would); without it the 400-site first run took 2-3x longer in a trial run."),
        "",
        ("| database | sites | depot kits | first run s | shipments (kits) | ms/site "
         "| second run s | shipments | ms/site |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, rows in data:
        for r in rows:
            lines.append(
                f"| {label} | {r['sites']} | {r['kits']:,} | {r['first']:.2f} "
                f"| {r['shipments']} ({r['shipped']:,}) | {r['first'] / r['sites'] * 1000:.1f} "
                f"| {r['second']:.2f} | {r['second_shipments']} "
                f"| {r['second'] / r['sites'] * 1000:.1f} |")
    lines.append("")
    for label, rows in data:
        if len(rows) >= 2:
            a, b = rows[0], rows[-1]
            lines.append(
                f"- {label}: sites x{b['sites'] / a['sites']:g} → first run "
                f"x{b['first'] / a['first']:.2f}, second run x{b['second'] / a['second']:.2f}.")
    lines.append("")
    return lines


# --- flat dispensing cost -----------------------------------------------------------------


def bench_flat(args, schema: Schema) -> dict:
    samples = 50
    code = "FLAT"
    db = schema.database(8)
    try:
        load(db, study_yaml(code, 1, 2))
        total = args.crowd
        add_kits(db, code, per_type={"1000": 3 * total + 10})
        numbers = prescreen(db, code, total)
        statements = [0]

        @event.listens_for(db.engine, "before_cursor_execute")
        def count(*_):
            statements[0] += 1

        def sample(batch: list[str]) -> tuple[list[float], float]:
            times = []
            with Today(V2_DAY):
                dispense(db, subject_number=batch[0], actor=COORDINATOR, study=code)  # warm
                statements[0] = 0
                for number in batch[1:]:
                    began = time.perf_counter()
                    dispense(db, subject_number=number, actor=COORDINATOR, study=code)
                    times.append(time.perf_counter() - began)
            return times, statements[0] / len(times)

        early_n = 2 * samples + 2  # about 100: both samples come from these
        randomize_all(db, code, numbers[:early_n])
        analyze(db)
        early, early_st = sample(numbers[:samples + 1])
        began = time.monotonic()
        fill = numbers[early_n:total]
        done = early_n
        # bounded: randomize in chunks until the crowd is reached or the time is up
        for start in range(0, len(fill), 500):
            if time.monotonic() - began > args.fill_timeout:
                break
            chunk = fill[start:start + 500]
            randomize_all(db, code, chunk)
            done += len(chunk)
        fill_seconds = time.monotonic() - began
        analyze(db)
        # the late sample: subjects of the first batch not dispensed yet, now that the
        # site has ``done`` subjects (as many V1 kits assigned, and their visits)
        late, late_st = sample(numbers[samples + 1:2 * samples + 2])
    finally:
        db.dispose()
    result = {"early_at": early_n, "late_at": done, "early": statistics.median(early),
              "late": statistics.median(late), "early_p90": percentile(early, 0.9),
              "late_p90": percentile(late, 0.9), "early_st": early_st, "late_st": late_st,
              "fill_seconds": fill_seconds, "short": done < total}
    print(f"  site with {early_n} subjects: median {result['early'] * 1000:.2f} ms; with "
          f"{done}: {result['late'] * 1000:.2f} ms (ratio {result['late'] / result['early']:.2f};"
          f" fill {fill_seconds:.0f} s)", flush=True)
    return result


def flat_markdown(args, r: dict) -> list[str]:
    short = " (fill timed out)" if r["short"] else ""
    return [
        ("One client on PostgreSQL, one site; each figure is the median (p90 in brackets) "
         "of 49 consecutive V2 `dispense` calls, first when the site has about 100 "
         f"randomized subjects, then after randomizing up to {args.crowd:,} (each with its "
         "V1 kit assigned, and 3 kits per subject of each type on the shelf)."),
        "",
        ("| subjects at the site | median ms (p90) | statements/call | subjects at the site "
         "| median ms (p90) | statements/call | ratio |"),
        "|---:|---:|---:|---:|---:|---:|---:|",
        (f"| {r['early_at']} | {r['early'] * 1000:.2f} ({r['early_p90'] * 1000:.2f}) "
         f"| {r['early_st']:.0f} | {r['late_at']}{short} "
         f"| {r['late'] * 1000:.2f} ({r['late_p90'] * 1000:.2f}) | {r['late_st']:.0f} "
         f"| {r['late'] / r['early']:.2f} |"),
        "",
    ]


# --- BENCHMARKS.md --------------------------------------------------------------------------


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("IVRS_BENCH_DATABASE_URL", DEFAULT_URL),
                        help="PostgreSQL on a loopback address (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--clients", type=int, default=8, help="dispensing clients (default 8)")
    parser.add_argument("--sites", default="1,50", help="dispensing: site counts (default 1,50)")
    parser.add_argument("--workers", choices=["threads", "processes"], default="threads")
    parser.add_argument("--resupply-sites", default="200,400",
                        help="resupply: site counts, 100 depot kits per site (default 200,400)")
    parser.add_argument("--no-sqlite", action="store_true", help="resupply: PostgreSQL only")
    parser.add_argument("--crowd", type=int, default=9_999,
                        help="flat: subjects at the site for the late sample (default 9999)")
    parser.add_argument("--fill-timeout", type=float, default=90.0,
                        help="flat: stop randomizing more subjects after this many seconds")
    parser.add_argument("--only", nargs="+", choices=["dispensing", "resupply", "flat"])
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    args.sites = [int(x) for x in args.sites.split(",")]
    args.resupply_sites = [int(x) for x in args.resupply_sites.split(",")]
    if not 200 <= args.crowd <= 9_999:
        parser.error("--crowd: between 200 and 9,999 (the subject numbers one site has)")
    check_loopback(args.url)
    run_parts(args, argv, "bench/bench_supply.py", SECTION, [
        ("dispensing", "dispensing throughput vs. SKIP LOCKED baseline:",
         f"Dispensing throughput ({args.workers})", bench_dispensing, dispensing_markdown),
        ("resupply", "supply run scaling:", "Resupply job: sites doubled", bench_resupply,
         resupply_markdown),
        ("flat", "dispensing cost with few and many subjects at the site:",
         "Dispensing cost: small site vs. crowded site", bench_flat, flat_markdown),
    ])


if __name__ == "__main__":
    main()
