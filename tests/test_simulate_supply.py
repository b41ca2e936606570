"""``ivrs simulate supply``: the Monte Carlo of the supply, on small hand-checkable trials."""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from core.errors import FileErrors
from core.simulation.scenario import LevelsDef, Strategy, parse_scenario
from core.simulation.supply import build_model, simulate
from core.simulation.supply_optimize import optimize, recommendation_yaml
from core.simulation.supply_summary import summarize
from core.study_file import parse_study_file
from ivrs.main import main

DEMO = Path(__file__).resolve().parents[1] / "ivrs" / "demo" / "data"

TWO_ARMS = """
study: {code: SIM-1, name: "Simulated study", languages: [en]}
arms: [{code: A, name: Drug}, {code: P, name: Placebo}]
randomization: {method: simple, ratio: {A: 1, P: 1}}
kit_types: [{code: KA, arm: A}, {code: KP, arm: P}]
visits:
  - {code: V1, day: 0, window: [0, 0], dispense: 1}
  - {code: V2, day: 28, window: [-3, 3], dispense: 2}
supply:
  do_not_dispense_days: 10
  do_not_ship_days: 20
  default_resupply: {trigger: 6, target: 12}
depots: [{code: "90", name: Depot, country: DE}]
sites:
  - {code: "101", name: One, country: FR, timezone: Europe/Paris, depot: "90"}
  - {code: "102", name: Two, country: FR, timezone: Europe/Paris, depot: "90",
     shipping_days: 5}
  - {code: "103", name: Three, country: FR, timezone: Europe/Paris, depot: "90"}
"""

ONE_ARM = """
study: {code: SIM-2, name: "Open-label study", languages: [en]}
arms: [{code: A, name: Drug}]
randomization: {method: none}
kit_types: [{code: KA, arm: A}]
visits:
  - {code: V1, day: 0, window: [0, 0], dispense: 1}
  - {code: V2, day: 40, window: [-3, 3], dispense: 1}
supply:
  default_resupply: {trigger: 1, target: 5}
depots: [{code: "90", name: Depot, country: DE}]
sites:
  - {code: "101", name: One, country: FR, timezone: Europe/Paris, depot: "90",
     shipping_days: 2}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def model_of(tmp_path: Path, study_text: str, scenario_text: str):
    study = parse_study_file(write(tmp_path, "study.yaml", study_text))
    return build_model(study, parse_scenario(write(tmp_path, "scenario.yaml", scenario_text),
                                             study))


def test_zero_lead_time_and_ample_stock_never_stocks_out(tmp_path):
    model = model_of(tmp_path, TWO_ARMS, """
        start: 2027-01-04
        months: 6
        seed: 3
        target_subjects: 40
        recruitment: {rate_mean: 3, rate_shape: 2, per: month}
        sites: {activation: {from: 0, to: 30}, shipping_days: {"101": 0, "102": 0, "103": 0}}
        screen_failure: 0.2
        dropout_per_month: 0.05
        lots: [{kits_per_type: 500, expiry_months: 36}]
        strategies: {buffer: {predictive: false}, predictive: {predictive: true}}
        """)
    results = simulate(model, 20)
    assert len(results) == 40
    assert sum(r.randomized for r in results) > 200  # the trials did recruit
    for result in results:
        assert result.stockouts == 0 and result.first_stockout_day is None
        assert result.dispensed >= result.randomized  # V1 at least
        # every kit produced is dispensed or wasted for one reason
        assert result.produced == result.dispensed + result.waste


def test_without_resupply_the_site_stocks_out_on_the_predicted_day(tmp_path):
    # One site, one arm, one subject a day. Day 0: the site is active and the
    # job sends its initial shipment (the target, 5 kits), which arrives on day 2
    # (2 shipping days), when the site starts screening. Days 2-6: five subjects
    # take a kit each at V1; day 7: nothing left, the sixth is refused.
    model = model_of(tmp_path, ONE_ARM, """
        start: 2027-01-04
        months: 1
        target_subjects: 100
        recruitment: {rate_mean: 1, per: day, process: regular}
        sites: {activation: {days: {"101": 0}}}
        lots: [{kits_per_type: 100, expiry_months: 24}]
        strategies: {none: {resupply: false}, job: {}}
        """)
    (none, job), = [simulate(model, 1)]
    assert none.shipments == 1 and none.kits_shipped == 5
    assert none.randomized == 5
    assert none.first_stockout_day == 7
    assert none.randomization_refusals == model.days - 7
    assert none.dispense_refusals == 0  # V2 (day 40+) is after the month simulated
    # the real resupply job (trigger 1, target 5) resupplies the same trial: it ships
    # again when the stock is 1 (the morning of day 6), but 2 days of lead time at a subject
    # a day still leave gaps, which the trigger rule predicts: day 7 again, not later
    assert job.shipments > 1 and job.first_stockout_day == 7
    assert job.randomized > none.randomized and job.stockouts < none.stockouts


def demo_model(**changes):
    study = parse_study_file(DEMO / "study.yaml")
    scenario = parse_scenario(DEMO / "scenario.yaml", study)
    return build_model(study, scenario.model_copy(update=changes))


def test_the_same_seed_gives_the_same_report_whatever_the_workers():
    model = demo_model(months=6)
    alone = simulate(model, 6, workers=1)
    shared = simulate(model, 6, workers=2)
    assert alone == shared
    assert [r.run for r in alone] == [run for run in range(6) for _ in model.strategies]
    other = simulate(demo_model(months=6, seed=8), 6)
    assert other != alone


def test_a_bad_scenario_field_is_refused_by_name(tmp_path):
    study = parse_study_file(DEMO / "study.yaml")
    bad = write(tmp_path, "bad.yaml", """
        start: 2027-01-04
        months: 12
        target_subjects: 60
        recruitment: {rate_mean: 3, per: fortnight}
        sites: {activation: {days: {"999": 3}}}
        screen_failure: 1.5
        lots: [{kits_per_type: 10, expiry_months: 12}]
        strategies: {lean: {default_resupply: {trigger: 5, target: 5}}}
        """)
    with pytest.raises(FileErrors) as shape:
        parse_scenario(bad, study)
    fields = {error.field for error in shape.value.errors}
    assert fields == {"recruitment.per", "screen_failure"}
    assert all(error.line for error in shape.value.errors)
    bad.write_text(bad.read_text().replace("fortnight", "week").replace("1.5", "0.5"))
    with pytest.raises(FileErrors) as checks:
        parse_scenario(bad, study)
    messages = {error.field: error.message for error in checks.value.errors}
    assert set(messages) == {"sites.activation.days.999",
                             "strategies.lean.default_resupply.trigger"}
    assert "unknown site '999'" in messages["sites.activation.days.999"]


def test_the_cli_prints_tables_and_writes_csv_files_and_a_chart(tmp_path, monkeypatch):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "simulate", "supply", str(DEMO / "study.yaml"), "--scenario",
        str(DEMO / "scenario.yaml"), "--runs", "4", "--workers", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for strategy in ("buffer", "predictive", "none"):
        assert f"strategy {strategy}: stock-out probability" in result.output
    with (out / "supply_runs.csv").open() as handle:
        runs = list(csv.DictReader(handle))
    assert len(runs) == 12 and {row["strategy"] for row in runs} == {"buffer", "predictive",
                                                                      "none"}
    assert all(int(row["produced"]) == 800 for row in runs)
    with (out / "supply_summary.csv").open() as handle:
        summary = list(csv.DictReader(handle))
    assert {row["metric"] for row in summary} >= {"stockout_probability", "expired_site",
                                                  "unused_depot", "shipments", "cover_days"}
    assert (out / "supply_sites.csv").read_text().startswith("strategy,site,cover_days_median")
    assert (out / "supply.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a bad scenario: one clear message, exit status 1
    bad = write(tmp_path, "bad.yaml", "start: 2027-01-04\nmonths: 0\n")
    result = CliRunner().invoke(main, ["simulate", "supply", str(DEMO / "study.yaml"),
                                       "--scenario", str(bad)])
    assert result.exit_code == 1
    assert "months" in result.output and "Traceback" not in result.output


def test_optimize_returns_levels_whose_simulated_risk_is_under_the_target(tmp_path):
    model = model_of(tmp_path, TWO_ARMS, """
        start: 2027-01-04
        months: 3
        seed: 5
        target_subjects: 30
        recruitment: {rate_mean: 4, rate_shape: 4, per: month}
        sites: {activation: {from: 0, to: 10}}
        lots: [{kits_per_type: 400, expiry_months: 24}]
        strategies: {buffer: {}}
        """)
    found = optimize(model, 12, target_risk=0.1)
    assert found is not None and found.classes == (3, 5)  # lead times of the sites
    levels = found.candidate.levels
    assert all(0 <= trigger < target for trigger, target in levels)
    # not more than the study's own levels (6/12), which are safe here
    assert sum(target for _, target in levels) < 2 * 12
    check = {"check": Strategy(predictive=found.candidate.predictive, sites={
        code: LevelsDef(trigger=levels[index][0], target=levels[index][1])
        for code, index in found.site_class.items()})}
    summary = summarize(simulate(model.__class__(**{**vars(model), "strategies": check}),
                                 12))["check"]
    assert summary.stockout_probability <= 0.1
    text = recommendation_yaml(found, model.kit_types, set())
    document = yaml.safe_load(text)
    assert set(document["supply"]) == {"default_resupply", "predictive"}
    assert all(set(site["resupply"]) == {"KA", "KP"} for site in document.get("sites", []))
