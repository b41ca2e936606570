"""The console's words: message ids from the same catalogs as the phone's, written
(not spoken) in the user's language, with numbers and dates in its format.

Templates call ``_("web.nav.subjects", count=3)``; the ids are found in the
templates and in this package by ``ivrs.render.message_ids``, so a page's new
string fails the catalog tests until it is translated in every language.
"""

from __future__ import annotations

import functools
import logging
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.numbers import format_decimal, parse_pattern
from markupsafe import Markup, escape

from ivrs.render.speech import SOURCE_LANGUAGE, available_languages, spoken_language, template

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=64)
def locale_of(language: str) -> Locale:
    try:
        return Locale.parse(language)
    except (UnknownLocaleError, ValueError):
        return Locale.parse(SOURCE_LANGUAGE)


def written(value: Any, language: str) -> str:
    """A parameter as the reader of ``language`` writes it."""
    kind = type(value)
    if kind is int:  # most of a page's cells: remembered (babel's is ~40 µs a number)
        return _written_int(value, language)
    if kind is date:
        return _written_date(value, language)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return format_decimal(value, locale=locale_of(language))
    if isinstance(value, datetime):
        return format_datetime(value, format="medium", locale=locale_of(language))
    if isinstance(value, date):
        return format_date(value, format="medium", locale=locale_of(language))
    return str(value)


# A number or a day written in a language is a pure function of the two (babel's
# locale data does not change while the process runs): the same counts and days
# recur on every page, so each is formatted by babel once and then remembered.
@functools.lru_cache(maxsize=8192)
def _written_int(value: int, language: str) -> str:
    return _decimal_pattern(language).apply(value, locale_of(language))


@functools.lru_cache(maxsize=64)
def _decimal_pattern(language: str):
    """format_decimal's own pattern (the locale's default decimal format)."""
    return parse_pattern(locale_of(language).decimal_formats[None])


@functools.lru_cache(maxsize=4096)
def _written_date(value: date, language: str) -> str:
    return format_date(value, format="medium", locale=locale_of(language))


def translate(message_id: str, language: str, **params: Any) -> str:
    """One message in words; the id itself (logged) when no catalog has it, so a
    page never shows an empty label."""
    language = spoken_language(language)
    text = template(message_id, language, params.get("count"))
    if text is None:
        log.error("message %s has no text in %s or %s", message_id, language, SOURCE_LANGUAGE)
        return message_id
    values = {name: written(value, language) for name, value in params.items()}
    try:
        return text.format(**values)
    except (KeyError, IndexError, ValueError):
        log.error("message %s in %s does not fit its parameters", message_id, language)
        return message_id


def translate_markup(message_id: str, language: str, **params: Any) -> Markup:
    """For templates: the parameters are escaped, the catalog's text is trusted."""
    return Markup(escape(translate(message_id, language, **params)))


def local_time(moment: datetime | None, language: str, zone: str | None = None) -> str:
    """A stored UTC time in the site's zone when it has one (with the zone's name,
    so that a monitor in another country reads it right), else in UTC."""
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    tz = _zone(zone)
    label = tz.key if isinstance(tz, ZoneInfo) else "UTC"
    return format_datetime(moment, format="medium", tzinfo=tz,
                           locale=locale_of(language)) + f" ({label})"


@functools.lru_cache(maxsize=256)
def _zone(zone: str | None):
    if not zone:
        return UTC
    try:
        return ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def language_name(code: str) -> str:
    """A language named in itself ("Deutsch", "日本語"), as a language menu shows it."""
    locale = locale_of(code)
    return (locale.get_display_name(locale) or code).capitalize()


def offered_languages() -> list[str]:
    """The languages the console can be read in: those with a compiled catalog."""
    return available_languages()


def best_language(accepted: list[str], offered: list[str]) -> str:
    """The first of the browser's languages (Accept-Language, best first) that
    is offered, matching ``pt-BR`` to ``pt_BR`` and ``fr-CA`` to ``fr``."""
    by_lower = {code.lower(): code for code in offered}
    for wanted in accepted:
        wanted = wanted.replace("-", "_").lower()
        if wanted in by_lower:
            return by_lower[wanted]
        base = wanted.split("_")[0]
        if base in by_lower:
            return by_lower[base]
        for code in offered:  # zh matches zh_CN
            if code.lower().split("_")[0] == base:
                return code
    return SOURCE_LANGUAGE
