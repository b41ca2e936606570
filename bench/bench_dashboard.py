#!/usr/bin/env python
"""The web console's dashboard data (core.dashboard): its latency and memory at
10,000 subjects over 60 sites, against the same at 100 subjects over 5 sites.

    python bench/bench_dashboard.py [--database-url URL] [--calls 50]
                                    [--subjects 10000 --sites 60] [--smoke]

Each study is the demo study with its sites replaced by ``--sites`` sites, in a
fresh ``bench_<random>`` schema (loopback PostgreSQL only; dropped at the end).
Its year of activity is inserted in bulk with Core inserts, no service calls
(the dashboard is what is measured): subjects screened over a year, 92% then
randomized (3% of those later discontinued), 8% screen failures, with their
status history; 3 kits given to each randomized subject (2% of subjects'
last kit unconfirmed); a shelf of 12 kits at each site (2 of a lot expiring in
40 days) and 1,000 at the depot; 5 audit rows per subject, hash-chained exactly
as core.audit seals them, so the chain verifies. Then, as in production, the
daily job's full verification is recorded (core.audit_checkpoints; its time is
printed: what the dashboard does not pay) and a day's activity follows it:
``--tail`` (500) more chained rows, which each dashboard call verifies.

Measured, in this process: ``--calls`` calls of ``core.dashboard.dashboard`` for
the project manager (blinded, every part) and for the unblinded statistician
(plus the per-kit-type stock and the lots), each after dropping what
``core.dashboard.current`` remembers (so each call reads, as the first one after
a change to the study does), p50 and p99 in ms, the statements per call, and the peak Python memory of one call (tracemalloc). Nothing is
written to BENCHMARKS.md (the web console's page will join this bench there).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_randomize import DEFAULT_URL, Schema, check_loopback
from sqlalchemy import event, insert, select, text, update

from core.actors import ADMIN, Actor
from core.audit import row_hash
from core.audit_checkpoints import record_verification
from core.dashboard import dashboard, forget_answers
from core.models import (
    AuditEvent,
    AuditHead,
    Depot,
    Kit,
    KitType,
    Lot,
    Site,
    Study,
    Subject,
    SubjectStatusChange,
)
from core.study_loader import load_study

BATCH = 5_000
AUDIT_PER_SUBJECT = 5
MANAGER = Actor(role="project_manager", user_code="6050", channel="web")
STATISTICIAN = Actor(role="unblinded_statistician", user_code="5004", channel="web")


def study_file(workdir: Path, sites: int) -> Path:
    study = yaml.safe_load(files("ivrs.demo").joinpath("data", "study.yaml").read_text("utf-8"))
    study["sites"] = [{"code": str(101 + n), "name": f"Site {101 + n}", "country": "FR",
                       "language": "fr", "timezone": "Europe/Paris", "depot": "90"}
                      for n in range(sites)]
    study["users"] = [user for user in study["users"]
                      if all(int(site) < 101 + sites for site in user.get("sites", []))]
    study["randomization"]["caps"] = {"SEX=F": 100_000, "total": 100_000, "site=101": 9_999}
    path = workdir / "study.yaml"
    path.write_text(yaml.safe_dump(study, allow_unicode=True), encoding="utf-8")
    return path


class Chain:
    """Audit rows chained as core.audit.AuditLog.seal chains them."""

    def __init__(self, study_id: int):
        self.study_id, self.seq, self.prev, self.rows = study_id, 0, "0" * 64, []

    def add(self, at: datetime, action: str, entity_type: str, entity_id: str, new: dict):
        self.seq += 1
        record = dict(action=action, entity_type=entity_type, entity_id=entity_id, old=None,
                      new=new, reason=None)
        digest = row_hash(study_id=self.study_id, seq=self.seq, at=at, actor="user:5001",
                          prev_hash=self.prev, transaction_id=None, **record)
        self.rows.append({**record, "study_id": self.study_id, "seq": self.seq, "at": at,
                          "actor": "user:5001", "prev_hash": self.prev, "hash": digest,
                          "transaction_id": None})
        self.prev = digest

    def flush(self, session) -> None:
        for first in range(0, len(self.rows), BATCH):
            session.execute(insert(AuditEvent), self.rows[first:first + BATCH])
        self.rows = []
        session.execute(update(AuditHead).where(AuditHead.study_id == self.study_id)
                        .values(seq=self.seq, hash=self.prev))


def populate(db, workdir: Path, subjects: int, sites: int, tail: int) -> float:
    """The study and its year; returns the recorded full verification's seconds."""
    load_study(db, study_file(workdir, sites))
    now = datetime.now(UTC)
    start = now - timedelta(days=365)
    with db.transaction() as session:
        study = session.scalars(select(Study)).one()
        site_ids = list(session.scalars(select(Site.id).where(Site.study_id == study.id)
                                        .order_by(Site.code)))
        kinds = list(session.scalars(select(KitType.id).where(KitType.study_id == study.id)
                                     .order_by(KitType.code)))
        depot = session.scalar(select(Depot.id).where(Depot.study_id == study.id))
        lots = {}
        for kind in kinds:
            for name, days in (("far", 700), ("near", 40)):
                lots[(kind, name)] = session.scalar(insert(Lot).returning(Lot.id), dict(
                    study_id=study.id, kit_type_id=kind, code=f"L{kind}{name}",
                    expiry_date=(now + timedelta(days=days)).date()))
        head = session.get(AuditHead, study.id)
        chain = Chain(study.id)
        chain.seq, chain.prev = head.seq, head.hash
        seq_of_site = dict.fromkeys(site_ids, 0)
        kit_number = 1_000_000
        pending_subjects, pending_changes, pending_kits = [], [], []

        def kit(kind, lot, status, **place):
            nonlocal kit_number
            kit_number += 1
            return dict(study_id=study.id, kit_number=str(kit_number), kit_type_id=kind,
                        lot_id=lots[(kind, lot)],
                        expiry_date=(now + timedelta(days=700 if lot == "far" else 40)).date(),
                        status=status, updated_at=now, **place)

        for n in range(subjects):
            site = site_ids[n % len(site_ids)]
            seq_of_site[site] += 1
            at = start + timedelta(seconds=n * 365 * 86400 / subjects)
            failed = n % 25 in (3, 11)
            status = ("screen_failed" if failed else
                      "discontinued" if n % 33 == 5 else "randomized")
            pending_subjects.append(dict(study_id=study.id, site_id=site, status=status,
                                         subject_number=f"{101 + site_ids.index(site)}"
                                                        f"{seq_of_site[site]:04d}",
                                         screened_at=at, screened_by="bench"))
            for number in range(AUDIT_PER_SUBJECT):
                chain.add(at, ("subject_screened", "subject_randomized", "kit_assigned",
                               "kit_confirmed", "visit_done")[number], "subject", str(n),
                          {"status": status, "n": number})
            if len(pending_subjects) == BATCH or n == subjects - 1:
                ids = session.scalars(insert(Subject).returning(
                    Subject.id, sort_by_parameter_order=True), pending_subjects).all()
                first = n - len(ids) + 1
                for offset, subject_id in enumerate(ids):
                    m = first + offset
                    row = pending_subjects[offset]
                    at = row["screened_at"]
                    pending_changes.append(dict(study_id=study.id, subject_id=subject_id,
                                                from_status=None, to_status="screened", at=at))
                    if row["status"] == "screen_failed":
                        pending_changes.append(dict(study_id=study.id, subject_id=subject_id,
                                                    from_status="screened",
                                                    to_status="screen_failed", at=at))
                        continue
                    pending_changes.append(dict(study_id=study.id, subject_id=subject_id,
                                                from_status="screened", to_status="randomized",
                                                at=at + timedelta(hours=1)))
                    for visit in range(3):
                        given = min(at + timedelta(days=28 * visit, hours=1), now)
                        unconfirmed = visit == 2 and m % 50 == 7
                        pending_kits.append(kit(
                            kinds[(m + visit) % len(kinds)], "far",
                            "assigned" if unconfirmed else "dispensed",
                            subject_id=subject_id, visit_code=f"V{visit + 1}",
                            assigned_at=given, assigned_by="user:5001",
                            confirmed_at=None if unconfirmed else given))
                session.execute(insert(SubjectStatusChange), pending_changes)
                session.execute(insert(Kit), pending_kits)
                pending_subjects, pending_changes, pending_kits = [], [], []
        shelf = [kit(kinds[k % len(kinds)], "near" if k < 2 else "far", "available",
                     site_id=site) for site in site_ids for k in range(12)]
        shelf += [kit(kinds[k % len(kinds)], "far", "at_depot", depot_id=depot)
                  for k in range(1000)]
        session.execute(insert(Kit), shelf)
        for site, count in seq_of_site.items():
            session.execute(update(Site).where(Site.id == site).values(last_subject_seq=count))
        chain.flush(session)
        study_id = study.id
    with db.transaction() as session:
        for table in ("subjects", "subject_status_history", "kits", "audit_events"):
            session.execute(text(f"ANALYZE {table}"))
    began = time.perf_counter()
    found = record_verification(db, actor=ADMIN)
    verified = time.perf_counter() - began
    assert found.intact, found.problem
    with db.transaction() as session:  # a day's activity after the checkpoint
        head = session.get(AuditHead, study_id)
        chain = Chain(study_id)
        chain.seq, chain.prev = head.seq, head.hash
        for n in range(tail):
            chain.add(now, "kit_confirmed", "kit", str(n), {"status": "dispensed"})
        chain.flush(session)
    return verified


def measure(db, actor: Actor, calls: int) -> dict:
    statements = []
    counter = {"n": 0}

    def count(*_):
        counter["n"] += 1

    event.listen(db.engine, "before_cursor_execute", count)
    board = dashboard(db, actor=actor)  # warm: imports, caches
    assert board.audit is not None and board.audit.status == "intact", board.audit
    times = []
    for _ in range(calls):
        counter["n"] = 0
        forget_answers()  # the read itself, as after a change to the study
        began = time.perf_counter()
        dashboard(db, actor=actor)
        times.append((time.perf_counter() - began) * 1000)
        statements.append(counter["n"])
    event.remove(db.engine, "before_cursor_execute", count)
    forget_answers()
    tracemalloc.start()
    dashboard(db, actor=actor)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    times.sort()
    return {"p50": statistics.median(times), "p99": times[min(len(times) - 1,
                                                               round(0.99 * len(times)))],
            "statements": max(statements), "peak_kib": peak / 1024,
            "sites": len(board.stock_by_site),
            "points": len(board.enrollment_over_time.points),
            "granularity": board.enrollment_over_time.granularity}


def run(url: str, subjects: int, sites: int, calls: int, tail: int) -> dict:
    schema = Schema(url)
    try:
        db = schema.database(1)
        with tempfile.TemporaryDirectory() as workdir:
            began = time.perf_counter()
            verified = populate(db, Path(workdir), subjects, sites, tail)
            seeded = time.perf_counter() - began
        with db.sessions() as session:
            rows = session.scalar(select(AuditHead.seq))
        results = {"seeded_s": seeded, "verify_s": verified, "audit_rows": rows}
        for name, actor in (("manager", MANAGER), ("statistician", STATISTICIAN)):
            results[name] = measure(db, actor, calls)
        db.dispose()
        return results
    finally:
        schema.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("IVRS_BENCH_DATABASE_URL",
                                                                 DEFAULT_URL))
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--sites", type=int, default=60)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--tail", type=int, default=500,
                        help="audit rows after the last full verification (default 500)")
    parser.add_argument("--smoke", action="store_true", help="1,000 subjects, 5 calls")
    args = parser.parse_args(argv)
    if args.smoke:
        args.subjects, args.calls = 1_000, 5
    check_loopback(args.database_url)
    sizes = [(100, 5), (args.subjects, args.sites)]
    found = {}
    for subjects, sites in sizes:
        print(f"{subjects:,} subjects over {sites} sites ...", flush=True)
        found[(subjects, sites)] = run(args.database_url, subjects, sites, args.calls,
                                       args.tail)
        done = found[(subjects, sites)]
        print(f"  seeded in {done['seeded_s']:.1f} s; {done['audit_rows']:,} audit rows; "
              f"full verification (recorded) {done['verify_s']:.2f} s", flush=True)
    base = found[sizes[0]]
    print(f"\ncore.dashboard.dashboard, {args.calls} calls, PostgreSQL; audit: checkpoint + "
          f"{args.tail} rows verified per call\n")
    print("| study | actor | p50 ms | p99 ms | p50 ÷ small | statements | peak KiB | "
          "sites | time points |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for (subjects, sites), done in found.items():
        for name in ("manager", "statistician"):
            cell = done[name]
            print(f"| {subjects:,} subjects / {sites} sites | {name} | {cell['p50']:.1f} | "
                  f"{cell['p99']:.1f} | {cell['p50'] / base[name]['p50']:.2f} | "
                  f"{cell['statements']} | {cell['peak_kib']:,.0f} | {cell['sites']} | "
                  f"{cell['points']} {cell['granularity']}s |")


if __name__ == "__main__":
    main()
