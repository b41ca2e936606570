"""``ivrs simulate randomization``: the known behaviours of each method, reproduced by
the simulator through the real services (each run in its own in-memory database,
so these tests need neither the ``db`` fixture nor PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from core.errors import IvrsError
from core.simulation.randomization import Settings, parse_distribution, simulate_randomization
from ivrs.main import main

SITES = """\
sites:
  - {code: "101", name: One, country: FR, timezone: Europe/Paris}
  - {code: "102", name: Two, country: DE, timezone: Europe/Berlin}
"""


def study_file(tmp_path: Path, randomization: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text("study: {code: SIM-1, name: Simulated, languages: [en]}\n"
                    "arms: [{code: A, name: Active}, {code: P, name: Placebo}]\n"
                    f"randomization:\n{randomization}eligibility: [INC1]\n{SITES}",
                    encoding="utf-8")
    return path


TWO_FACTORS = """\
  factors:
    - {code: SEX, levels: [M, F]}
    - {code: AGE, levels: [LT65, GE65]}
"""


def test_simple_randomization_imbalance_grows_like_the_square_root_of_n(tmp_path):
    # Four times the subjects, twice the imbalance: E|nA - nB| is 2.19 for 8 subjects
    # and 4.48 for 32 (ratio 2.05; the same √4 as 50 vs 200, at a test's cost). With
    # 60 runs each, 99.8% of seeds give a ratio in [1.3, 3.2] (a random-walk Monte
    # Carlo); a method whose imbalance stays bounded (ratio ~1) or drifts linearly
    # (ratio ~4) falls outside.
    path = study_file(tmp_path, "  method: simple\n  ratio: {A: 1, P: 1}\n")
    small = simulate_randomization(Settings(path, subjects=8, runs=60, seed=7, workers=2))
    large = simulate_randomization(Settings(path, subjects=32, runs=60, seed=7, workers=2))
    small_mean = small.summary["simple"]["final_imbalance"].mean
    large_mean = large.summary["simple"]["final_imbalance"].mean
    assert 1.3 <= large_mean / small_mean <= 3.2
    # loss = imbalance² / n: 1 on average for 1:1 simple randomization, at any n
    assert 0.5 <= large.summary["simple"]["loss"].mean <= 1.6
    # nothing to predict: the guesser does no better than a coin
    assert 0.4 <= large.summary["simple"]["correct_guess_rate"].mean <= 0.6


def test_permuted_blocks_never_exceed_half_the_block_in_any_stratum(tmp_path):
    path = study_file(tmp_path, "  method: block\n  ratio: {A: 1, P: 1}\n"
                                "  block: {sizes: [4], seed: 11}\n" + TWO_FACTORS)
    report = simulate_randomization(Settings(path, subjects=60, runs=3, seed=3, workers=1))
    worst = [value for run in report.runs for value in run.strata_max.values()]
    assert len(report.runs) == 3 and len(report.strata) == 4
    assert max(worst) == 2  # reached (AA then PP), never exceeded
    assert all(run.randomized == 60 for run in report.runs)
    # the convergence guesser profits from blocks: well above the coin's 50%
    assert report.summary["block"]["correct_guess_rate"].mean > 0.6


def test_minimization_beats_stratified_blocks_on_marginal_balance(tmp_path):
    factors = "".join(f"    - {{code: F{index}, levels: [L1, L2]}}\n" for index in range(1, 5))
    path = study_file(tmp_path, "  method: block\n  ratio: {A: 1, P: 1}\n"
                                "  block: {sizes: [4], seed: 5}\n  factors:\n" + factors)
    report = simulate_randomization(Settings(path, subjects=64, runs=4, seed=2, workers=2,
                                             methods=("block", "minimization")))
    block = report.summary["block"]["mean_level_imbalance"].mean
    minimization = report.summary["minimization"]["mean_level_imbalance"].mean
    assert minimization < block
    assert any("minimization: the study file gives no parameters" in note
               for note in report.plan.notes)


def test_the_same_seed_gives_the_same_report_whatever_the_workers(tmp_path):
    path = study_file(tmp_path, "  method: minimization\n  ratio: {A: 2, P: 1}\n"
                                "  minimization: {p: 0.8}\n" + TWO_FACTORS)
    settings = dict(subjects=15, runs=3, methods=("minimization", "list"))
    one = simulate_randomization(Settings(path, seed=4, workers=1, **settings))
    two = simulate_randomization(Settings(path, seed=4, workers=2, **settings))
    other = simulate_randomization(Settings(path, seed=5, workers=1, **settings))
    assert one.summary == two.summary and one.runs == two.runs and one.bands == two.bands
    assert one.runs != other.runs
    assert one.plan.target_ratio == {"A": 2, "P": 1}


def test_lists_and_caps_that_run_out_are_counted_not_fatal(tmp_path):
    path = study_file(tmp_path, "  method: list\n  factors:\n"
                                "    - {code: SEX, levels: [M, F]}\n  caps: {SEX=F: 3}\n")
    mrl = tmp_path / "mrl.csv"
    mrl.write_text("randomization_number,arm,SEX\n"
                   + "".join(f"{1000 + n},{'AP'[n % 2]},M\n" for n in range(4))
                   + "".join(f"{2000 + n},{'PA'[n % 2]},F\n" for n in range(10)),
                   encoding="utf-8")
    report = simulate_randomization(Settings(path, subjects=24, runs=2, seed=1, workers=1,
                                             mrl=mrl, distributions={"SEX": {"M": 1, "F": 1}}))
    for run in report.runs:
        assert run.randomized == 4 + 3 + 0  # M's list has 4 entries, F is capped at 3
        assert run.exhausted == {"SEX=M": run.exhausted["SEX=M"]}
        assert run.caps_hit == {"SEX=F": run.caps_hit["SEX=F"]}
        assert run.list_refusals + run.cap_refusals == 24 - run.randomized
    assert report.summary["list"]["list_ran_out"].mean == 1.0
    assert report.plan.target_ratio == {"A": 1, "P": 1}  # the list's own ratio
    assert any("the list mrl.csv (14 entries in 2 strata)" in note for note in report.plan.notes)


def test_a_distribution_weights_the_levels(tmp_path):
    path = study_file(tmp_path, "  method: simple\n  ratio: {A: 1, P: 1}\n" + TWO_FACTORS)
    report = simulate_randomization(Settings(
        path, subjects=10, runs=1, workers=1,
        distributions={"SEX": {"F": 1.0}, "site": {"102": 1.0}}))
    assert set(report.strata) <= {"SEX=F|AGE=LT65", "SEX=F|AGE=GE65"}
    assert report.runs[0].levels_max["SEX=M"] == 0


def test_the_command_prints_the_table_and_writes_the_files(tmp_path):
    path = study_file(tmp_path, "  method: block\n  ratio: {A: 1, P: 1}\n"
                                "  block: {sizes: [4], seed: 1}\n" + TWO_FACTORS)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "simulate", "randomization", str(path), "--subjects", "12", "--runs", "2",
        "--method", "block", "--method", "simple", "--distribution", "SEX=M:3,F:1",
        "--workers", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "final imbalance, overall" in result.output
    header = next(line for line in result.output.splitlines() if "block" in line)
    assert header.split() == ["block", "simple"]
    runs = (out / "randomization_runs.csv").read_text(encoding="utf-8").splitlines()
    assert runs[0].startswith("method,run,seed,subjects,randomized,final_imbalance")
    assert len(runs) == 1 + 2 * 2
    summary = (out / "randomization_summary.csv").read_text(encoding="utf-8").splitlines()
    assert summary[0] == "metric,label,method,mean,median,p5,p95,runs"
    assert any(line.startswith("max_imbalance[SEX=F],") for line in summary)
    assert (out / "randomization.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("arguments, message", [
    (["--method", "urn"], "unknown method 'urn'"),
    (["--distribution", "BMI=HIGH:1"], "unknown factor 'BMI'"),
    (["--distribution", "SEX=X:1"], "unknown level of SEX 'X'"),
    (["--distribution", "SEX=M"], "expected FACTOR=LEVEL:weight"),
    (["--distribution", "SEX=M:0,F:0"], "at least one weight must be positive"),
    (["--subjects", "0"], "--subjects must be between"),
    (["--mrl", "list.csv"], "--mrl is for method list"),
])
def test_bad_arguments_are_refused_with_exit_1(tmp_path, arguments, message):
    path = study_file(tmp_path, "  method: simple\n  ratio: {A: 1, P: 1}\n" + TWO_FACTORS)
    result = CliRunner().invoke(main, ["simulate", "randomization", str(path), "--runs", "1",
                                       "--subjects", "2", "--workers", "1", *arguments])
    assert result.exit_code == 1
    assert message in result.output


def test_a_study_file_that_fails_validation_is_refused_with_exit_1(tmp_path):
    path = study_file(tmp_path, "  method: block\n  ratio: {A: 1, P: 1}\n")  # no block sizes
    result = CliRunner().invoke(main, ["simulate", "randomization", str(path)])
    assert result.exit_code == 1
    assert "method block needs block" in result.output


def test_a_method_the_study_cannot_take_is_refused(tmp_path):
    path = study_file(tmp_path, "  method: simple\n  ratio: {A: 1, P: 1}\n"
                                "  stratify_by_site: false\n")
    with pytest.raises(IvrsError, match="minimization needs at least one factor"):
        simulate_randomization(Settings(path, subjects=2, runs=1, workers=1,
                                        methods=("minimization",)))


def test_parse_distribution():
    assert parse_distribution("SEX=M:3, F:1.5") == ("SEX", {"M": 3.0, "F": 1.5})
    with pytest.raises(IvrsError, match="is not a number"):
        parse_distribution("SEX=M:lots")
