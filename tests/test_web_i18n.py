"""ivrs.web.i18n: numbers and days written as babel writes them, byte for byte,
though the console remembers each one it has written (a dashboard writes
hundreds of the same counts and days on every page)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from babel.dates import format_date, format_datetime
from babel.numbers import format_decimal

from ivrs.web.i18n import locale_of, written

LANGUAGES = ["en", "fr", "de", "es", "it", "ja", "pt_BR", "zh_CN", "hi", "ar", "de_CH",
             "nb", "xx_NOT_A_LANGUAGE"]
NUMBERS = [0, 1, 7, -3, 12, 999, 1000, 1001, 9999, 10_000, 12_345, -12_345, 100_000,
           1_234_567, 10**12 + 7, -(10**15)]
DAYS = [date(2026, 1, 1), date(2026, 11, 23), date(1999, 12, 31), date(2027, 2, 28)]


@pytest.mark.parametrize("language", LANGUAGES)
def test_numbers_are_written_as_babel_writes_them(language):
    for _ in range(2):  # the first time formatted, then remembered
        for number in NUMBERS:
            assert written(number, language) == format_decimal(number,
                                                               locale=locale_of(language))


@pytest.mark.parametrize("language", LANGUAGES)
def test_days_and_times_are_written_as_babel_writes_them(language):
    for _ in range(2):
        for day in DAYS:
            assert written(day, language) == format_date(day, format="medium",
                                                         locale=locale_of(language))
    moment = datetime(2026, 11, 23, 14, 5, tzinfo=UTC)
    assert written(moment, language) == format_datetime(moment, format="medium",
                                                        locale=locale_of(language))


def test_other_values_are_not_taken_for_numbers():
    assert written(True, "fr") == "True"
    assert written(12.5, "fr") == "12.5"
    assert written("1234", "fr") == "1234"
    assert written(12_345, "fr") == format_decimal(12_345, locale="fr")  # "12 345"
