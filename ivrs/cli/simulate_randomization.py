"""``ivrs simulate randomization STUDY.yaml``: will the randomization balance?

The engine is ``core.simulation.randomization`` (the real services, one
in-memory database per run); this module is its presentation: a progress bar
on stderr, a table with one column per method, and with ``--out DIR`` two CSV
files and a chart for the supply manager who would rather look than read.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import click

from core.errors import IvrsError
from core.simulation.randomization import (
    METHODS,
    Plan,
    Report,
    Settings,
    Stats,
    metric_label,
    parse_distribution,
    run_metrics,
    simulate_randomization,
)
from ivrs.cli.common import handles_errors

RUNS_CSV, SUMMARY_CSV, CHART_PNG = ("randomization_runs.csv", "randomization_summary.csv",
                                    "randomization.png")
# Shown as a share of runs or of subjects, not as a count.
PERCENT_METRICS = {"correct_guess_rate", "list_ran_out", "cap_reached"}
# The table lists strata one by one only when there are few of them.
MAX_STRATA_SHOWN = 12


@click.command("randomization")
@click.argument("study_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--subjects", type=int, default=200, show_default=True,
              help="Subjects enrolled per run.")
@click.option("--runs", type=int, default=100, show_default=True, help="Runs per method.")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Same seed, same report (run i uses a seed derived from it and i).")
@click.option("--method", "methods", multiple=True, metavar="METHOD",
              help=f"{', '.join(METHODS)}; repeat to compare (default: the study's).")
@click.option("--distribution", "distributions", multiple=True,
              metavar="FACTOR=LEVEL:W,LEVEL:W",
              help="Weights of a factor's levels (default uniform); FACTOR may be site.")
@click.option("--mrl", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The randomization list for method list (default: one generated per run).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes running in parallel (default: one per CPU).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=f"Write {RUNS_CSV}, {SUMMARY_CSV} and {CHART_PNG} here.")
@handles_errors
def randomization(study_file: Path, subjects: int, runs: int, seed: int,
                  methods: tuple[str, ...], distributions: tuple[str, ...], mrl: Path | None,
                  workers: int | None, out: Path | None) -> None:
    """Simulate the study's randomization on simulated subjects, before go-live."""
    from tqdm import tqdm

    settings = Settings(study_file=study_file, subjects=subjects, runs=runs, seed=seed,
                        methods=methods, distributions=_distributions(distributions), mrl=mrl,
                        workers=workers)
    bars: list[tqdm] = []

    def start_bar(plan: Plan) -> None:
        bars.append(tqdm(total=len(plan.methods) * plan.runs, desc="runs", unit="run",
                         file=sys.stderr, disable=not sys.stderr.isatty()))

    try:
        report = simulate_randomization(settings, on_plan=start_bar,
                                        on_run_done=lambda: bars[0].update())
    finally:
        for bar in bars:
            bar.close()
    click.echo(render_table(report))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_runs_csv(report, out / RUNS_CSV)
        write_summary_csv(report, out / SUMMARY_CSV)
        draw_chart(report, out / CHART_PNG)
        click.echo(f"\nwrote {out / RUNS_CSV}, {out / SUMMARY_CSV} and {out / CHART_PNG}")


def _distributions(texts: tuple[str, ...]) -> dict[str, dict[str, float]]:
    chosen: dict[str, dict[str, float]] = {}
    for text in texts:
        name, weights = parse_distribution(text)
        if name in chosen:
            raise IvrsError(f"--distribution {name} is given twice", code="bad_distribution")
        chosen[name] = weights
    return chosen


# --- the table ---------------------------------------------------------------------------


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def format_stats(key: str, found: Stats | None) -> str:
    """mean (median; 5th–95th percentile), or the share for a yes/no per run."""
    if found is None:
        return "–"
    if key in ("list_ran_out", "cap_reached"):
        return f"{found.mean:.0%}"
    show = (lambda v: f"{v:.1%}") if key in PERCENT_METRICS else _number
    text = f"{show(found.mean)} ({show(found.median)}; {show(found.p5)}–{show(found.p95)})"
    if key.startswith("first_"):
        text += f" in {found.runs} run{'s' if found.runs > 1 else ''}"
    return text


def table_keys(report: Report) -> list[str]:
    keys = [key for key in report.metric_keys if "[" not in key]
    levels = [key for key in report.metric_keys if "[" in key and "|" not in key
              and key.split("[", 1)[1].rstrip("]") not in report.strata]
    strata = [key for key in report.metric_keys if "[" in key and key not in levels]
    return keys + levels + (strata if len(report.strata) <= MAX_STRATA_SHOWN else [])


def render_table(report: Report) -> str:
    plan = report.plan
    ratio = ":".join(plan.target_ratio) + " = " + ":".join(map(str, plan.target_ratio.values()))
    lines = [f"Randomization of {plan.study_code} ({plan.event_code}): {plan.subjects} subjects, "
             f"{plan.runs} runs per method, seed {plan.seed}, target ratio {ratio}",
             "Each cell: mean (median; 5th–95th percentile) over the runs.", ""]
    rows = [["", *report.methods]]
    rows += [[metric_label(key), *(format_stats(key, report.summary[method][key])
                                   for method in report.methods)]
             for key in table_keys(report)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) if column == 0 else cell.rjust(width)
                               for column, (cell, width) in enumerate(zip(row, widths))).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    lines.append("")
    lines.append(f"By chance alone a guess is right {report.chance:.1%} of the time "
                 "(the largest arm's share).")
    if len(report.strata) > MAX_STRATA_SHOWN:
        lines.append(f"{len(report.strata)} strata: per stratum figures are in {SUMMARY_CSV} "
                     "(--out).")
    lines += [f"Note: {note}." for note in plan.notes]
    return "\n".join(lines)


# --- the files ---------------------------------------------------------------------------


def _cell(value) -> str | int | float:
    if value is None:
        return ""
    if isinstance(value, float):
        return int(value) if value.is_integer() else round(value, 6)
    return value


def write_runs_csv(report: Report, path: Path) -> None:
    """One row per run and method: what that run ended with, and when lists ran out."""
    fixed = ["method", "run", "seed", "subjects"]
    metrics = [dict(run_metrics(result)) for result in report.runs]
    for result, values in zip(report.runs, metrics):
        for stratum in report.strata:
            values[f"final_imbalance[{stratum}]"] = result.strata_final.get(stratum, 0.0)
            values[f"max_imbalance[{stratum}]"] = result.strata_max.get(stratum, 0.0)
    keys = report.metric_keys
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(fixed + keys + ["lists_ran_out", "caps_reached"])
        for result, values in zip(report.runs, metrics):
            writer.writerow([result.method, result.run + 1, result.seed, result.subjects,
                             *(_cell(values[key]) for key in keys),
                             _events(result.exhausted), _events(result.caps_hit)])


def _events(first_at: dict[str, int]) -> str:
    """``SEX=F|AGE=GE65@87;...``: what ran out, at which subject."""
    return ";".join(f"{name}@{index}" for name, index in sorted(first_at.items(),
                                                               key=lambda item: item[1]))


def write_summary_csv(report: Report, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "label", "method", "mean", "median", "p5", "p95", "runs"])
        for key in report.metric_keys:
            for method in report.methods:
                found = report.summary[method][key]
                values = ([found.mean, found.median, found.p5, found.p95, found.runs]
                          if found else [None, None, None, None, 0])
                writer.writerow([key, metric_label(key), method, *map(_cell, values)])


def draw_chart(report: Report, path: Path) -> None:
    """Left: overall imbalance along enrolment (median, 5–95% band) per method.
    Right: mean final imbalance per factor level, one bar per method."""
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot, no display needed

    plan = report.plan
    figure = Figure(figsize=(13, 5.5), layout="constrained")
    along, levels = figure.subplots(1, 2, width_ratios=[3, 2])
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"]
    subjects = range(1, plan.subjects + 1)
    for method, color in zip(report.methods, colors):
        median, low, high = zip(*report.bands[method])
        along.fill_between(subjects, low, high, color=color, alpha=0.15, linewidth=0)
        along.plot(subjects, median, color=color, linewidth=2, label=f"{method} (median)")
    along.set_title("Imbalance along enrolment (band: 5th–95th percentile of runs)")
    along.set_xlabel("subjects enrolled")
    along.set_ylabel("imbalance (spread of count ÷ ratio weight)")
    along.grid(alpha=0.3)
    along.legend(loc="upper left")
    groups = ["final_imbalance"] + [key for key in report.metric_keys
                                    if key.startswith("final_imbalance[") and "|" not in key
                                    and key[16:-1] not in report.strata]
    width = 0.8 / len(report.methods)
    for offset, (method, color) in enumerate(zip(report.methods, colors)):
        means = [(report.summary[method][key].mean if report.summary[method][key] else 0)
                 for key in groups]
        positions = [index + (offset - (len(report.methods) - 1) / 2) * width
                     for index in range(len(groups))]
        levels.bar(positions, means, width=width, color=color, label=method)
    levels.set_xticks(range(len(groups)),
                      ["overall"] + [key[16:-1] for key in groups[1:]], rotation=30, ha="right")
    levels.set_title("Final imbalance, mean of the runs")
    levels.grid(axis="y", alpha=0.3)
    levels.legend()
    figure.suptitle(f"{plan.study_code}: {plan.subjects} subjects × {plan.runs} runs, "
                    f"seed {plan.seed}")
    figure.savefig(path, dpi=110)
