"""SMS segment counting, GSM-7 against UCS-2, at the boundaries carriers use."""

from __future__ import annotations

import pytest

from ivrs.render.sms_text import is_gsm7, segments


@pytest.mark.parametrize("text,encoding,units,count", [
    ("", "GSM-7", 0, 1),
    ("a" * 160, "GSM-7", 160, 1),
    ("a" * 161, "GSM-7", 161, 2),
    ("a" * 306, "GSM-7", 306, 2),
    ("a" * 307, "GSM-7", 307, 3),
    ("Kit 123456 for visit V2: élève àù", "GSM-7", 33, 1),  # é, à, ù are in the alphabet
    ("€" * 80, "GSM-7", 160, 1),  # extension characters take two septets
    ("€" * 81, "GSM-7", 162, 2),
    ("[kit]", "GSM-7", 7, 1),
    ("ç" * 70, "UCS-2", 70, 1),  # lower-case ç is not in GSM-7 (only Ç)
    ("キット" * 23 + "ト", "UCS-2", 70, 1),
    ("キット" * 24, "UCS-2", 72, 2),
    ("x" * 134 + "語", "UCS-2", 135, 3),
    ("😀" * 35, "UCS-2", 70, 1),  # an emoji is two UTF-16 code units
    ("😀" * 36, "UCS-2", 72, 2),
])
def test_segments(text, encoding, units, count):
    result = segments(text)
    assert (result.encoding, result.units, result.count) == (encoding, units, count)


def test_one_foreign_character_makes_the_whole_text_ucs2():
    assert is_gsm7("Subject 1010001, kit 123456")
    assert not is_gsm7("Subject 1010001, kit 123456 ✓")
    assert segments("a" * 100 + "✓").count == 2
