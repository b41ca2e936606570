"""``ivrs simulate supply STUDY.yaml --scenario SCENARIO.yaml``: Monte Carlo of the supply.

Runs ``core.simulation.supply`` (in memory, the real resupply and dispensing
rules), prints a table per strategy and, with ``--out DIR``, writes
``supply_runs.csv`` (one row per run and strategy), ``supply_summary.csv``
(percentiles per strategy and metric), ``supply_sites.csv`` (days of cover
per site) and ``supply.png`` (stock at sites over time with its 5-95% band,
and waste by reason, per strategy). ``--optimize`` searches resupply levels
(``core.simulation.supply_optimize``) and prints them as study-file YAML.
"""

from __future__ import annotations

import csv
import os
import sys
from datetime import timedelta
from pathlib import Path

import click
from tqdm import tqdm

from core.simulation.scenario import parse_scenario
from core.simulation.supply import WASTE_REASONS, RunResult, TrialModel, build_model, simulate
from core.simulation.supply_optimize import optimize, recommendation_yaml
from core.simulation.supply_summary import (
    METRICS,
    PERCENTILES,
    StrategySummary,
    metric,
    summarize,
)
from core.study_file import parse_study_file
from ivrs.cli.common import handles_errors

RUN_COLUMNS = ("strategy", "run", "stockouts", "randomization_refusals", "dispense_refusals",
               "first_stockout_day", "screened", "randomized", "produced", "dispensed",
               *WASTE_REASONS, "site_waste", "shipments", "urgent_shipments", "kits_shipped",
               "depot_short", "cover_days_median")


@click.command("supply")
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--scenario", "scenario_file", required=True, type=click.Path(dir_okay=False),
              help="The scenario YAML (recruitment, lots, strategies).")
@click.option("--runs", default=200, show_default=True, type=click.IntRange(1),
              help="Simulated trials per strategy.")
@click.option("--seed", default=None, type=int, help="Overrides the scenario's seed.")
@click.option("--workers", default=os.cpu_count() or 1, show_default="CPU count",
              type=click.IntRange(1), help="Processes running trials in parallel.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Write supply_runs.csv, supply_summary.csv, supply_sites.csv, supply.png.")
@click.option("--optimize", "optimize_levels", is_flag=True,
              help="Search trigger/target levels per site class for the least waste.")
@click.option("--target-risk", default=0.01, show_default=True,
              type=click.FloatRange(0, 1), help="Highest acceptable stock-out probability.")
@handles_errors
def supply(study_file, scenario_file, runs, seed, workers, out_dir, optimize_levels,
           target_risk) -> None:
    """Simulate the trial's supply RUNS times and compare the scenario's strategies."""
    study = parse_study_file(study_file)
    scenario = parse_scenario(scenario_file, study)
    if seed is not None:
        scenario = scenario.model_copy(update={"seed": seed})
    model = build_model(study, scenario)
    if optimize_levels:
        _optimize(model, study, runs, workers, target_risk)
        return
    with _progress(runs, "runs") as bar:
        results = simulate(model, runs, workers=workers, progress=bar.update)
    summaries = summarize(results)
    click.echo(f"{runs} run(s) of {model.days} days, {len(model.sites)} site(s), "
               f"seed {model.seed}")
    for summary in summaries.values():
        click.echo("")
        click.echo(_table(summary))
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _write_runs(out / "supply_runs.csv", results)
        _write_summary(out / "supply_summary.csv", summaries)
        _write_sites(out / "supply_sites.csv", summaries)
        _write_chart(out / "supply.png", model, summaries)
        click.echo(f"\nwritten: {out / 'supply_runs.csv'}, {out / 'supply_summary.csv'}, "
                   f"{out / 'supply_sites.csv'}, {out / 'supply.png'}")


def _progress(total: int | None, unit: str):
    return tqdm(total=total, unit=unit, file=sys.stderr, disable=not sys.stderr.isatty(),
                leave=False)


def _optimize(model: TrialModel, study, runs: int, workers: int, target_risk: float) -> None:
    with _progress(None, "runs") as bar:
        found = optimize(model, runs, target_risk=target_risk, workers=workers,
                         progress=bar.update)
    if found is None:
        raise click.ClickException(
            f"no levels tried keep the stock-out probability under {target_risk:.2%} "
            "(up to 32 times the study's levels): the depots' lots are probably too small "
            "or expire too early")
    classes = ", ".join(f"{days}-day lead time: trigger {t}, target {g}"
                        for days, (t, g) in zip(found.classes, found.candidate.levels))
    click.echo(f"# {found.evaluated} candidate(s) x {runs} run(s); predictive "
               f"{'on' if found.candidate.predictive else 'off'}; {classes}")
    click.echo(f"# stock-out probability {found.stockout_probability:.2%} "
               f"(target {target_risk:.2%}); kits sent to sites and never dispensed: "
               f"{found.site_waste:.1f} a trial on average; shipments {found.shipments:.1f}")
    overrides = {site.code for site in study.sites if site.resupply}
    click.echo(recommendation_yaml(found, model.kit_types, overrides), nl=False)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:.2f}"


def _table(summary: StrategySummary) -> str:
    head = (f"strategy {summary.strategy}: stock-out probability "
            f"{summary.stockout_probability:.1%} ({summary.runs} runs)")
    rows = [("metric", *(f"p{p}" for p in PERCENTILES), "mean")]
    for key, _ in METRICS:
        spread = summary.metrics[key]
        rows.append((key, *(_number(v) for v in (spread.p5, spread.p50, spread.p95,
                                                 spread.mean))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [head]
    for position, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  " + "  ".join(cells))
        if position == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _write_runs(path: Path, results: list[RunResult]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(RUN_COLUMNS)
        for result in results:
            row = {column: metric(result, column) for column in RUN_COLUMNS[2:-1]}
            cover = metric(result, "cover_days")
            writer.writerow([result.strategy, result.run,
                             *("" if row[c] is None else row[c] for c in RUN_COLUMNS[2:-1]),
                             "" if cover is None else round(cover, 2)])


def _write_summary(path: Path, summaries: dict[str, StrategySummary]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("strategy", "metric", "p5", "p50", "p95", "mean", "description"))
        for summary in summaries.values():
            writer.writerow((summary.strategy, "stockout_probability", "", "", "",
                             summary.stockout_probability, "share of runs with a stock-out"))
            for key, description in METRICS:
                spread = summary.metrics[key]
                writer.writerow((summary.strategy, key, *(
                    "" if v is None else round(v, 4)
                    for v in (spread.p5, spread.p50, spread.p95, spread.mean)), description))


def _write_sites(path: Path, summaries: dict[str, StrategySummary]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("strategy", "site", "cover_days_median"))
        for summary in summaries.values():
            for site, days in summary.site_cover.items():
                writer.writerow((summary.strategy, site, round(days, 2)))


def _write_chart(path: Path, model: TrialModel, summaries: dict[str, StrategySummary]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [model.start + timedelta(days=d) for d in range(model.days)]
    figure, (stock_axes, waste_axes) = plt.subplots(
        1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    for summary in summaries.values():
        low, mid, high = summary.stock_bands
        line, = stock_axes.plot(days, mid, label=f"{summary.strategy} (median)")
        stock_axes.fill_between(days, low, high, color=line.get_color(), alpha=0.2,
                                label=f"{summary.strategy} 5-95%")
    stock_axes.set_title("Kits at all sites")
    stock_axes.set_ylabel("kits")
    stock_axes.legend(fontsize="small")
    figure.autofmt_xdate()
    names = list(summaries)
    bottom = [0.0] * len(names)
    for reason in WASTE_REASONS:
        heights = [summaries[name].metrics[reason].mean or 0.0 for name in names]
        waste_axes.bar(names, heights, bottom=bottom, label=reason.replace("_", " "))
        bottom = [b + h for b, h in zip(bottom, heights)]
    waste_axes.set_title("Kits wasted by reason (mean per trial)")
    waste_axes.legend(fontsize="small")
    for index, name in enumerate(names):
        waste_axes.annotate(f"stock-out {summaries[name].stockout_probability:.0%}",
                            (index, bottom[index]), ha="center", va="bottom", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)

