#!/usr/bin/env python
"""Supply simulation: simulated subject-days per second, and wall time against runs and sites.

    python bench/bench_simulate.py [--workers 2] [--runs 10 100] [--full] [--no-write]

The trial: 600 subjects, 60 sites (one depot, 3 to 7 shipping days), 24
months, the demo study's two arms and visits (V1 day 0: 1 kit, V2 day 28 and
V3 day 56: 2 kits), sites opening over the first 90 days and recruiting
0.5 subjects a month each on average (Gamma shape 2), 20% screen failures,
2% drop-out a month, three lots; two strategies (buffer-only and predictive).
The study file is built here (``build_study``) and checked by the real
``parse_study_file``.

Measured, with ``--workers`` processes (default 2, this machine's cores):

- wall time of 10 and 100 runs (``--runs``), and of 1,000 with ``--full``
  (otherwise extrapolated linearly from 100: runs are independent);
- subject-days per second: the days each randomized subject spent in the
  trial (randomization to the end of the simulation or their drop-out),
  summed over runs and strategies, divided by the wall time;
- scaling with sites: 10 runs of the same trial with 15, 30 and 60 sites
  (150, 300 and 600 subjects: the recruitment per site is kept).

Results are printed and written into BENCHMARKS.md, section "Simulation".
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.simulation.scenario import parse_scenario  # noqa: E402
from core.simulation.supply import build_model, simulate  # noqa: E402
from core.study_file import parse_study_file  # noqa: E402

SECTION = "## Simulation"

STUDY_HEAD = """
study: {code: BENCH-SIM, name: "Supply simulation benchmark", languages: [en]}
arms: [{code: A, name: Drug}, {code: P, name: Placebo}]
randomization: {method: simple, ratio: {A: 1, P: 1}}
kit_types: [{code: KA, arm: A}, {code: KP, arm: P}]
visits:
  - {code: V1, day: 0, window: [0, 0], dispense: 1}
  - {code: V2, day: 28, window: [-3, 3], dispense: 2}
  - {code: V3, day: 56, window: [-3, 3], dispense: 2}
supply:
  do_not_dispense_days: 30
  do_not_ship_days: 45
  default_resupply: {trigger: 3, target: 8}
depots: [{code: "90", name: "EU depot", country: DE}]
sites:
"""

SCENARIO = """
start: 2027-01-04
months: 24
seed: 11
target_subjects: {subjects}
recruitment: {{rate_mean: 0.5, rate_shape: 2.0, per: month}}
sites: {{activation: {{from: 0, to: 90}}}}
screen_failure: 0.2
dropout_per_month: 0.02
lots:
  - {{kits_per_type: {lot}, expiry_months: 18, released: 0}}
  - {{kits_per_type: {lot}, expiry_months: 18, released: 240}}
  - {{kits_per_type: {lot}, expiry_months: 18, released: 480}}
strategies:
  buffer: {{predictive: false}}
  predictive: {{predictive: true}}
"""


def build_study(sites: int) -> str:
    lines = [f'  - {{code: "{100 + i}", name: "Site {i}", country: FR, '
             f'timezone: Europe/Paris, depot: "90", shipping_days: {3 + i % 5}}}'
             for i in range(1, sites + 1)]
    return STUDY_HEAD + "\n".join(lines) + "\n"


def model_for(sites: int, directory: Path):
    study_path = directory / f"study_{sites}.yaml"
    scenario_path = directory / f"scenario_{sites}.yaml"
    study_path.write_text(build_study(sites))
    subjects = sites * 10
    scenario_path.write_text(SCENARIO.format(subjects=subjects, lot=subjects * 2))
    study = parse_study_file(study_path)
    return build_model(study, parse_scenario(scenario_path, study))


def measure(model, runs: int, workers: int) -> tuple[float, list]:
    started = time.perf_counter()
    results = simulate(model, runs, workers=workers)
    return time.perf_counter() - started, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--full", action="store_true", help="also measure 1,000 runs")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as directory:
        model = model_for(60, Path(directory))
        rows = []
        runs_list = list(args.runs) + ([1000] if args.full else [])
        for runs in runs_list:
            wall, results = measure(model, runs, args.workers)
            days = sum(r.subject_days for r in results)
            rows.append((runs, wall, days / wall, "measured"))
            print(f"60 sites, {runs} runs, {args.workers} workers: {wall:.1f} s, "
                  f"{days / wall:,.0f} subject-days/s", flush=True)
        if not args.full:
            runs, wall, rate, _ = rows[-1]
            rows.append((1000, wall * 1000 / runs, rate, f"extrapolated from {runs}"))
        scaling = []
        for sites in (15, 30, 60):
            small = model_for(sites, Path(directory))
            wall, results = measure(small, 10, args.workers)
            days = sum(r.subject_days for r in results)
            scaling.append((sites, sites * 10, wall, days / wall))
            print(f"{sites} sites, 10 runs: {wall:.1f} s", flush=True)
        serial, _ = measure(model, 10, 1)
    load_after = os.getloadavg()[0]
    lines += [
        SECTION, "",
        "Produced by `bench/bench_simulate.py` (see its docstring).", "",
        "### Supply Monte Carlo: 600 subjects, 60 sites, 24 months, 2 strategies", "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: nproc {os.cpu_count()}; Python {platform.python_version()}",
        f"- Load average (1 min) when the run started / ended: {load_before:.2f} / "
        f"{load_after:.2f} (the machine may be shared)",
        f"- Command: `python bench/bench_simulate.py {' '.join(sys.argv[1:])}`", "",
        "A run simulates the trial day by day under both strategies (buffer-only and "
        "predictive) on the same drawn subjects; subject-days are the days randomized "
        "subjects spent in the trial, summed over runs and strategies.", "",
        "| runs | workers | wall s | subject-days/s | |",
        "|---:|---:|---:|---:|---|",
    ]
    for runs, wall, rate, how in rows:
        lines.append(f"| {runs:,} | {args.workers} | {wall:.1f} | {rate:,.0f} | {how} |")
    lines += ["", f"One worker, 10 runs: {serial:.1f} s (speed-up with {args.workers} workers: "
                  f"{serial / rows[0][1]:.2f}x).", "",
              "Scaling with sites (10 runs, 10 subjects a site):", "",
              "| sites | subjects | wall s | subject-days/s |", "|---:|---:|---:|---:|"]
    for sites, subjects, wall, rate in scaling:
        lines.append(f"| {sites} | {subjects} | {wall:.1f} | {rate:,.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        _write_section(ROOT / "BENCHMARKS.md", text)


def _write_section(path: Path, text: str) -> None:
    """Replace this benchmark's section, or append it at the end."""
    current = path.read_text() if path.exists() else ""
    if SECTION + "\n" in current:
        head, _, rest = current.partition(SECTION + "\n")
        following = rest.find("\n## ")
        tail = rest[following + 1:] if following >= 0 else ""
        current = head.rstrip("\n") + "\n\n" + text + ("\n" + tail if tail else "")
    else:
        current = current.rstrip("\n") + "\n\n" + text
    path.write_text(current)


if __name__ == "__main__":
    main()
