"""From the study file to randomized subjects: site strata, cohorts, reloads mid-study."""

from __future__ import annotations

import itertools

from core.actors import ADMIN
from core.mrl import import_mrl
from core.randomization.block import block_arms
from core.randomize import randomize
from core.study_loader import load_study
from core.subjects import screen_subject
import studyfiles

YES = {"INC1": True, "INC2": True, "EXC1": True}
M_LT65 = {"SEX": "M", "AGE": "LT65"}
# The example study with randomization alone (SPEC §4: no kit types, nothing
# dispensed): these tests are about randomization, so no site needs stock.
RANDOMIZATION_ONLY = (
    ("kit_types:\n  - {code: KA, arm: A}\n  - {code: KP, arm: P}\n", ""),
    ("  - {code: V1, day: 0, window: [0, 0], dispense: 1}\n"
     "  - {code: V2, day: 28, window: [-3, 3], dispense: 2}\n"
     "  - {code: V3, day: 56, window: [-3, 3], dispense: 2}\n", ""),
    ("visits:\n", ""),
)


def write_study(tmp_path, *replacements, **options):
    return studyfiles.write_study(tmp_path, *RANDOMIZATION_ONLY, *replacements, **options)


def enroll(db, site: str, factors=M_LT65):
    subject = screen_subject(db, site_code=site, actor=ADMIN)
    return randomize(db, subject_number=subject.subject_number, actor=ADMIN, eligibility=YES,
                     factors=factors)


def test_site_strata_and_cohorts_follow_the_file(db, tmp_path):
    stratified = ("stratify_by_site: false",
                  "stratify_by_site: true\n  cohorts: [C1, C2]\n  current_cohort: C1")
    load_study(db, write_study(tmp_path, stratified))
    mrl = tmp_path / "mrl.csv"
    mrl.write_text("randomization_number,arm,site,SEX,AGE,cohort\n"
                   "11,A,101,M,LT65,C1\n12,P,101,M,LT65,C1\n"
                   "21,P,102,M,LT65,C1\n"
                   "31,A,101,M,LT65,C2\n32,P,101,M,LT65,C2\n", encoding="utf-8")
    import_mrl(db, mrl)
    assert enroll(db, "101").randomization_number == "11"
    assert enroll(db, "102").randomization_number == "21"
    assert enroll(db, "101").randomization_number == "12"
    # the sponsor opens cohort 2 by reloading the file: workers see it at once
    load_study(db, write_study(tmp_path, (stratified[0], stratified[1].replace(
        "current_cohort: C1", "current_cohort: C2")), name="cohort2.yaml"))
    second = enroll(db, "101")
    assert (second.randomization_number, second.stratum) == ("31", "site=101|cohort=C2|SEX=M|AGE=LT65")


def test_block_lists_per_site_are_reproducible(db, tmp_path):
    load_study(db, write_study(tmp_path, ("method: list", "method: block\n"
                                          "  block: {sizes: [3, 6], seed: 77}"),
                               ("stratify_by_site: false", "stratify_by_site: true")))
    arms = {"101": [], "102": []}
    for site in itertools.islice(itertools.cycle(["101", "102", "101"]), 15):
        arms[site].append(enroll(db, site).arm)
    for site, got in arms.items():
        key = f"site={site}|SEX=M|AGE=LT65"
        expected = []
        for block in itertools.count(1):
            expected += block_arms(77, "R1", key, block, [3, 6], [("A", 2), ("P", 1)])
            if len(expected) >= len(got):
                break
        assert got == expected[:len(got)]


def test_a_ratio_changed_by_reload_applies_to_the_next_block(db, tmp_path):
    block = ("method: list", "method: block\n  block: {sizes: [6], seed: 5}")
    load_study(db, write_study(tmp_path, block))
    first = [enroll(db, "101").arm for _ in range(6)]
    assert sorted(first) == ["A"] * 4 + ["P"] * 2  # 2:1 as loaded
    result = load_study(db, write_study(tmp_path, block, ("{A: 2, P: 1}", "{A: 1, P: 1}"),
                                        name="amended.yaml"))
    assert any("ratio" in change for change in result.changes)
    second = [enroll(db, "101").arm for _ in range(6)]
    assert sorted(second) == ["A"] * 3 + ["P"] * 3
