"""Visit math: windows, the visit due now, missed visits, the do-not-dispense limit."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from studyfiles import line_of, write_study

from core.errors import FileErrors
from core.study_file import parse_study_file
from core.supply.visits import (
    Visit,
    due_visit,
    last_unusable_expiry,
    parse_schedule,
    schedule_for,
)

DAY0 = date(2026, 1, 1)
VISITS = [
    {"code": "V1", "day": 0, "window": [0, 0], "dispense": 1},
    {"code": "V2", "day": 28, "window": [-3, 3], "dispense": 2},
    {"code": "V3", "day": 56, "window": [-3, 3], "dispense": 2},
]
SCHEDULE = parse_schedule(VISITS)


def on(day: int) -> date:
    return DAY0 + timedelta(days=day)


def due(done, day):
    return due_visit(SCHEDULE, DAY0, done, on(day))


def test_parse_orders_by_day_and_reads_windows():
    schedule = parse_schedule(list(reversed(VISITS)))
    assert [v.code for v in schedule] == ["V1", "V2", "V3"]
    assert schedule[1] == Visit("V2", 28, -3, 3, 2)
    assert schedule[1].window(DAY0) == (on(25), on(31))
    assert schedule[1].due_on(DAY0) == on(28)


def test_first_visit_is_due_on_day_0():
    result = due([], 0)
    assert (result.visit.code, result.out_of_window, result.missed) == ("V1", False, ())
    assert result.next_visit.code == "V2"


@pytest.mark.parametrize("day, early", [(24, True), (25, False), (28, False), (31, False)])
def test_window_start_and_end_are_inclusive(day, early):
    result = due({"V1"}, day)
    assert result.visit.code == "V2" and result.out_of_window is early and not result.missed


def test_day_after_window_end_misses_the_visit_and_the_next_is_due():
    result = due({"V1"}, 32)
    assert [v.code for v in result.missed] == ["V2"]
    assert result.visit.code == "V3" and result.out_of_window  # V3 opens on day 53
    assert result.next_visit is None


def test_several_missed_visits_are_all_reported():
    result = due(set(), 40)  # V1 (day 0) and V2 (25..31) have passed
    assert [v.code for v in result.missed] == ["V1", "V2"] and result.visit.code == "V3"


def test_recorded_visits_are_skipped_whatever_their_status():
    assert due({"V1", "V2"}, 30).visit.code == "V3"  # V2 done early: V3 next, early
    assert due({"V1", "V2"}, 30).out_of_window


def test_after_the_last_visit_nothing_is_due():
    assert due({"V1", "V2", "V3"}, 56).visit is None
    past = due({"V1", "V2"}, 60)  # V3's window closed on day 59
    assert past.visit is None and [v.code for v in past.missed] == ["V3"]


def test_a_visit_added_before_one_already_had_is_not_in_the_subject_future():
    changed = parse_schedule(VISITS + [{"code": "V1b", "day": 14, "window": [-2, 2],
                                        "dispense": 1}])
    result = due_visit(changed, DAY0, {"V1", "V2"}, on(50))
    assert result.visit.code == "V3" and not result.missed
    # but a subject who has not reached it yet gets it
    assert due_visit(changed, DAY0, {"V1"}, on(13)).visit.code == "V1b"


def test_cohort_schedules():
    config = {"visits": VISITS,
              "visits_by_cohort": {"C2": [{"code": "W1", "day": 0, "window": [0, 2],
                                           "dispense": 3}]}}
    assert [v.code for v in schedule_for(config, "C2")] == ["W1"]
    assert [v.code for v in schedule_for(config, "C1")] == ["V1", "V2", "V3"]
    assert [v.code for v in schedule_for(config, None)] == ["V1", "V2", "V3"]
    assert schedule_for({}, None) == ()


def test_do_not_dispense_limit_counts_from_the_next_visit():
    v2 = SCHEDULE[1]
    # at V1 on day 0: V2 is on day 28, 30 days margin -> kits must expire after day 58
    assert last_unusable_expiry(v2, DAY0, on(0), 30) == on(58)
    # no next visit: from today
    assert last_unusable_expiry(None, DAY0, on(56), 30) == on(86)
    # the next visit's date already passed: from today
    assert last_unusable_expiry(v2, DAY0, on(40), 30) == on(70)


def test_a_cohort_schedule_must_name_a_known_cohort(tmp_path):
    schedule = ("visits_by_cohort:\n  C9:\n"
                "    - {code: W1, day: 0, window: [1, 0], dispense: 2}\nsupply:")
    path = write_study(tmp_path, ("stratify_by_site: false",
                                  "stratify_by_site: false\n  cohorts: [C1, C2]"),
                       ("supply:", schedule))
    with pytest.raises(FileErrors) as errors:
        parse_study_file(path)
    (error,) = errors.value.errors
    assert error.field == "visits_by_cohort.C9" and "unknown cohort 'C9'" in error.message
    assert error.line == line_of(path.read_text(encoding="utf-8"), "  C9:")
    fixed = write_study(tmp_path, ("stratify_by_site: false",
                                   "stratify_by_site: false\n  cohorts: [C1, C2]"),
                        ("supply:", schedule.replace("C9", "C2")), name="fixed.yaml")
    with pytest.raises(FileErrors) as errors:
        parse_study_file(fixed)
    (error,) = errors.value.errors
    assert error.field == "visits_by_cohort.C2[0].window"
