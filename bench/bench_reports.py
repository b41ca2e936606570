#!/usr/bin/env python
"""Report files: rows per second of the ``subjects`` report, next to PostgreSQL's own dumps.

    python bench/bench_reports.py [--url URL] [--rows 100000] [--rounds 3]
                                  [--smoke] [--no-write] [--output FILE]

The demo study is loaded into a fresh ``bench_<random>`` schema (loopback
PostgreSQL only; the schema is dropped at the end) and ``--rows`` randomized
subjects are inserted in bulk with Core inserts (a subject row and a
randomization row each, no service calls: writing reports is what is measured).
Then, ``--rounds`` times in turn, each writing to a file in a temporary
directory:

- ``COPY (SELECT <the report's columns>) TO STDOUT (FORMAT csv, HEADER)``
  through psycopg 3, the same joins, order and timestamp text as the report, so
  that its output is byte-identical to the report's CSV (checked);
- a plain ``SELECT`` of the same rows through psycopg 3 (a server-side cursor,
  1,000 rows a fetch as the report's ``yield_per``), raw values, nothing written:
  what fetching the rows into Python costs;
- the ``subjects`` report in CSV and in Excel (and PDF, for reference), exactly
  what ``ivrs report subjects --format F --out FILE`` runs: the registry's
  builder (SQLAlchemy on psycopg 3, rows streamed in batches) and the format's
  writer, in this process.

Each figure is the median of the rounds: wall-clock rows per second, the
process CPU time, and the ratios to COPY and to SELECT. Results are printed and
written into BENCHMARKS.md, section "Reports" (its subsection replaced on each
run; other sections are kept). ``--smoke`` is a quick check that everything
runs: 2,000 rows, one round, nothing written.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_randomize import DEFAULT_URL, Schema, check_loopback, run_parts  # noqa: E402
from sqlalchemy import insert, select, text  # noqa: E402

from core.models import Arm, Randomization, RandomizationEvent, Site, Subject  # noqa: E402
from core.report_registry import SPECS  # noqa: E402
from core.studies import get_study  # noqa: E402
from ivrs.demo.scenario import STUDY_CODE, set_up_demo_study  # noqa: E402
from ivrs.render.report_files import ReportHeader, write_report  # noqa: E402

SECTION = "Reports"
BATCH = 10_000  # rows per bulk insert
FETCH = 1_000  # rows per fetch of the SELECT baseline: the reports' yield_per
START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
STAMP = """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""
FROM = """FROM subjects s
JOIN sites si ON si.id = s.site_id
LEFT JOIN randomizations r ON r.subject_id = s.id AND r.event_id = {event}
WHERE s.study_id = {study}
ORDER BY s.subject_number"""
COPY_SQL = ("COPY (SELECT s.subject_number, si.code AS site, s.status, "
            "r.randomization_number, " + STAMP.format("r.randomized_at") + " AS randomized_at, "
            + STAMP.format("s.screened_at") + " AS screened_at\n" + FROM
            + ") TO STDOUT (FORMAT csv, HEADER)")
SELECT_SQL = ("SELECT s.subject_number, si.code, s.status, r.randomization_number, "
              "r.randomized_at, s.screened_at\n" + FROM)


# --- the data -----------------------------------------------------------------------------


def populate(schema: Schema, rows: int) -> dict:
    """The demo study and ``rows`` randomized subjects; the ids the baselines need."""
    db = schema.database(1)
    try:
        with tempfile.TemporaryDirectory() as workdir:
            set_up_demo_study(db, Path(workdir), lambda line: None)
        began = time.monotonic()
        with db.transaction() as session:
            study = get_study(session, STUDY_CODE)
            sites = session.scalars(select(Site.id).where(Site.study_id == study.id)).all()
            arms = session.scalars(select(Arm.id).where(Arm.study_id == study.id)).all()
            event = session.scalars(select(RandomizationEvent.id).where(
                RandomizationEvent.study_id == study.id)
                .order_by(RandomizationEvent.position)).first()
            for first in range(1, rows + 1, BATCH):
                numbers = range(first, min(first + BATCH, rows + 1))
                returning = insert(Subject).returning(Subject.id, sort_by_parameter_order=True)
                ids = session.scalars(returning, [
                    dict(study_id=study.id, site_id=sites[n % len(sites)],
                         subject_number=f"{n:07d}", status="randomized",
                         screened_at=START + timedelta(minutes=n), screened_by="bench")
                    for n in numbers]).all()
                session.execute(insert(Randomization), [
                    dict(study_id=study.id, event_id=event, subject_id=subject_id,
                         randomization_number=f"{n:06d}", arm_id=arms[n % len(arms)],
                         stratum_key="SEX=F|AGE=LT65", factors={}, eligibility={},
                         method="list", details={}, randomized_at=START + timedelta(
                             minutes=n, seconds=30), randomized_by="bench")
                    for n, subject_id in zip(numbers, ids)])
            for table in ("subjects", "randomizations", "sites"):  # as autovacuum soon would
                session.execute(text(f"ANALYZE {table}"))
            ids = {"study": study.id, "event": event}
        print(f"  {rows:,} subjects inserted in {time.monotonic() - began:.1f} s", flush=True)
    finally:
        db.dispose()
    return ids


# --- the measurements ------------------------------------------------------------------------


def timed(run) -> tuple[float, float, int]:
    """(wall seconds, process CPU seconds, rows) of one run."""
    wall, cpu = time.perf_counter(), time.process_time()
    rows = run()
    return time.perf_counter() - wall, time.process_time() - cpu, rows


def copy_out(schema: Schema, ids: dict, path: Path) -> int:
    with schema.connect() as conn, conn.cursor() as cursor, open(path, "wb") as out:
        with cursor.copy(COPY_SQL.format(**ids)) as copy:
            for chunk in copy:
                out.write(chunk)
    with open(path, "rb") as written:
        return sum(1 for _ in written) - 1


def select_rows(schema: Schema, ids: dict) -> int:
    count = 0
    with schema.connect() as conn, conn.cursor(name="bench_select") as cursor:
        cursor.itersize = FETCH
        cursor.execute(SELECT_SQL.format(**ids))
        for _ in cursor:
            count += 1
    return count


def report_file(db, fmt: str, path: Path) -> int:
    """What ``ivrs report subjects --format FMT --out PATH`` does after the sign-in."""
    spec = SPECS["subjects"]
    binary = fmt != "csv"
    with db.sessions() as session, open(path, "wb" if binary else "w", **(
            {} if binary else {"newline": "", "encoding": "utf-8"})) as stream:
        study = get_study(session, STUDY_CODE)
        columns, rows = spec.build(session, study, True)
        header = ReportHeader(name="subjects", title=spec.title,
                              study=f"{study.code}: {study.name}",
                              generated_at=datetime.now(UTC), generated_by="bench",
                              blinded=True)
        return write_report(fmt, stream, header, columns, rows)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bench_reports(args, schema: Schema) -> dict:
    ids = populate(schema, args.rows)
    db = schema.database(1)
    cells = {"COPY": lambda d: copy_out(schema, ids, d / "copy.csv"),
             "SELECT": lambda d: select_rows(schema, ids),
             "report csv": lambda d: report_file(db, "csv", d / "subjects.csv"),
             "report xlsx": lambda d: report_file(db, "xlsx", d / "subjects.xlsx")}
    if not args.no_pdf:
        cells["report pdf"] = lambda d: report_file(db, "pdf", d / "subjects.pdf")
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in cells}
    sizes: dict[str, int] = {}
    try:
        with tempfile.TemporaryDirectory() as directory:
            workdir = Path(directory)
            report_file(db, "xlsx", workdir / "warm-up.xlsx")  # imports, caches: not measured
            for round_ in range(args.rounds):
                names = list(cells) if round_ % 2 == 0 else list(reversed(cells))
                for name in names:
                    results[name].append(timed(lambda: cells[name](workdir)))
                    print(f"  round {round_ + 1} {name}: {results[name][-1][0]:.2f} s",
                          flush=True)
            identical = digest(workdir / "copy.csv") == digest(workdir / "subjects.csv")
            for path in workdir.iterdir():
                sizes[path.name] = path.stat().st_size
    finally:
        db.dispose()
    for name, runs in results.items():
        counts = {rows for _, _, rows in runs}
        if counts != {args.rows}:
            sys.exit(f"{name} gave {counts} rows, expected {args.rows}")
    if not identical:
        sys.exit("the COPY output differs from the report's CSV: not the same rows")
    return {"results": results, "sizes": sizes}


# --- report ------------------------------------------------------------------------------------


def reports_markdown(args, data: dict) -> list[str]:
    medians = {name: (statistics.median(w for w, _, _ in runs),
                      statistics.median(c for _, c, _ in runs))
               for name, runs in data["results"].items()}
    copy_wall, select_wall = medians["COPY"][0], medians["SELECT"][0]
    files = {"COPY": "copy.csv", "report csv": "subjects.csv", "report xlsx": "subjects.xlsx",
             "report pdf": "subjects.pdf"}
    lines = [
        (f"The `subjects` report (6 columns, blinded) over {args.rows:,} randomized subjects of "
         "the demo study, written to a file, against two baselines in the same run and "
         "schema: `COPY (SELECT ...) TO STDOUT (FORMAT csv, HEADER)` through psycopg 3 with "
         "the report's joins, order and timestamp text (its file is byte-identical to the "
         "report's CSV, checked), and a plain `SELECT` of the same rows through a psycopg 3 "
         "server-side cursor, 1,000 rows a fetch, nothing written. The reports run what "
         "`ivrs report subjects --format F --out FILE` runs (the registry's builder on "
         "SQLAlchemy + psycopg 3, rows streamed, then the format's writer), in-process. "
         f"Median of {args.rounds} rounds, the order reversed every other round; CPU is "
         "this process's (the server's work is not in it)."),
        "",
        "| what | rows/s | wall s | client CPU s | file MB | ÷ COPY | ÷ SELECT |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (wall, cpu) in medians.items():
        size = f"{data['sizes'][files[name]] / 1e6:.1f}" if name in files else "–"
        lines.append(f"| {name} | {args.rows / wall:,.0f} | {wall:.2f} | {cpu:.2f} | {size} | "
                     f"{copy_wall / wall:.3f} | {select_wall / wall:.3f} |")
    csv_wall, xlsx_wall = medians["report csv"][0], medians["report xlsx"][0]
    lines += [
        "",
        (f"Ratios are rows/s of the line ÷ rows/s of the baseline. The CSV report runs at "
         f"{copy_wall / csv_wall:.2f} of COPY's rate and {select_wall / csv_wall:.2f} of the "
         f"bare SELECT's; Excel at {copy_wall / xlsx_wall:.3f} of COPY's: openpyxl builds "
         "and serializes a cell object per value (typed: numbers, date-times with their "
         "number format, text) into the sheet's XML, then zips it, all in Python."),
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("IVRS_BENCH_DATABASE_URL", DEFAULT_URL),
                        help="PostgreSQL on a loopback address (default %(default)s)")
    parser.add_argument("--rows", type=int, default=100_000, help="subjects (default 100000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, median (default 3)")
    parser.add_argument("--no-pdf", action="store_true", help="skip the PDF reference line")
    parser.add_argument("--smoke", action="store_true",
                        help="2,000 rows, one round, nothing written")
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.rounds, args.no_write = 2_000, 1, True
    if not 1 <= args.rows <= 9_999_999:
        parser.error("--rows: 1 to 9,999,999 (seven-digit subject numbers)")
    args.only, args.workers = None, "one client"  # what run_parts reads and prints
    check_loopback(args.url)
    run_parts(args, argv, "bench/bench_reports.py", SECTION, [
        ("reports", "subjects report files vs. COPY and SELECT:",
         f"Subjects report at {args.rows:,} subjects: CSV and Excel vs. COPY and SELECT",
         bench_reports, reports_markdown),
    ])


if __name__ == "__main__":
    main()
