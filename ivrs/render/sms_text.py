"""How many SMS segments a text takes: GSM-7 or UCS-2, as carriers count them.

A text made only of the GSM 03.38 alphabet travels in 7-bit encoding: 160
characters in one segment, 153 per segment when split (the rest of each
segment carries the joining header); characters of the extension table
(``^{}[]~|\\€`` and form feed) take two. Any other character (é is in the
alphabet, but ç upper-case, Japanese or an emoji are not) makes the whole text
UCS-2: 70 UTF-16 code units in one segment, 67 per segment when split. SPEC §7
wants replies in one segment where possible and never more than three.

A Spanish or Portuguese text is UCS-2 for one "á" or "ç": ``for_sms`` then
writes those letters as their GSM-7 neighbours ("a", "c"; curly quotes as
straight ones), as Twilio's Smart Encoding does, so that such a text takes one
segment instead of three. Only a text that becomes GSM-7 entirely is changed:
Japanese and Chinese stay as written.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from core.output_text import for_medium

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")
GSM7 = GSM7_BASIC | GSM7_EXTENSION

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67
MAX_SEGMENTS = 3


@dataclass(frozen=True)
class Segments:
    encoding: str  # "GSM-7" | "UCS-2"
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    count: int


def is_gsm7(text: str) -> bool:
    # A set operation rather than a test per character: every SMS reply is
    # checked several times on its way out (texts.reply), at C speed here.
    return GSM7.issuperset(text)


def segments(text: str) -> Segments:
    if is_gsm7(text):
        units = len(text) + sum(map(text.count, GSM7_EXTENSION))  # those take two septets
        return Segments("GSM-7", units, _count(units, GSM7_SINGLE, GSM7_PART))
    units = len(text.encode("utf-16-le")) // 2
    return Segments("UCS-2", units, _count(units, UCS2_SINGLE, UCS2_PART))


def _count(units: int, single: int, part: int) -> int:
    if units <= single:
        return 1
    return -(-units // part)  # ceiling division


# Letters outside GSM-7 that have a close neighbour in it (beyond dropping an
# accent, which unicodedata does for the rest).
_NEIGHBOURS = {"ç": "c", "œ": "oe", "Œ": "OE", "‘": "'", "’": "'", "‚": "'", "“": '"',
               "”": '"', "„": '"', "«": '"', "»": '"', "–": "-", "—": "-", "…": "...",
               "\u00a0": " ", "\u202f": " ", "º": "o", "ª": "a"}


def for_sms(text: str) -> str:
    """The text as it is best sent, without what an SMS cannot carry
    (``core.output_text``): unchanged if GSM-7 or if it cannot become GSM-7; else
    with its Latin letters written without the accents GSM-7 lacks."""
    text = for_medium(text, "sms")
    if is_gsm7(text):
        return text
    plain = "".join(_neighbour(ch) for ch in text)
    return plain if is_gsm7(plain) else text


def _neighbour(ch: str) -> str:
    if ch in GSM7_BASIC or ch in GSM7_EXTENSION:
        return ch
    if ch in _NEIGHBOURS:
        return _NEIGHBOURS[ch]
    base = unicodedata.normalize("NFD", ch)[0]
    return base if base.isascii() else ch
