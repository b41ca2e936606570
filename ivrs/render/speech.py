"""Prompt ids + parameters -> the words said (or texted) in a language.

Catalogs are the gettext files under ``locales/``, loaded once per process.
Digits are said one by one, separated so that text-to-speech does not read
"1010001" as a million; dates use the locale's long form (``babel.dates``),
quantities the locale's number format (``babel.numbers``); a ``count``
parameter chooses the catalog's plural form.
"""

from __future__ import annotations

import functools
import logging
import threading
from datetime import date
from importlib.resources import files
from pathlib import Path
from typing import Any

from babel import Locale
from babel.dates import format_date
from babel.numbers import format_decimal
from babel.support import Translations

from dialogs.output import Digits, LanguageName, Say, Term

LOCALES_DIR = Path(str(files("locales")))
DOMAIN = "messages"
SOURCE_LANGUAGE = "en"

# Our language codes -> Twilio <Say language> and <Say voice>. Mandarin is
# cmn-CN for Twilio's and Polly's voices, not zh-CN. The voice matters: Twilio's
# default voice ("man") speaks neither Japanese nor Mandarin, so every language
# gets an Amazon Polly voice of its own (one voice per language: a caller hears
# the same person through the whole call).
SAY_LANGUAGES = {
    "en": "en-US", "fr": "fr-FR", "es": "es-ES", "de": "de-DE", "it": "it-IT",
    "pt_BR": "pt-BR", "ja": "ja-JP", "zh_CN": "cmn-CN",
}
SAY_VOICES = {
    "en": "Polly.Joanna", "fr": "Polly.Lea", "es": "Polly.Lucia", "de": "Polly.Vicki",
    "it": "Polly.Bianca", "pt_BR": "Polly.Camila", "ja": "Polly.Mizuki",
    "zh_CN": "Polly.Zhiyu",
}

log = logging.getLogger(__name__)
_catalogs: dict[str, Translations] = {}
_catalogs_lock = threading.Lock()
_uncatalogued: set[str] = set()


class MissingCatalog(LookupError):
    pass


def catalog(language: str) -> Translations:
    """The compiled catalog of a language. Unlike ``Translations.load``, a missing
    ``.mo`` is an error here, not a silent fall back to the message ids."""
    found = _catalogs.get(language)
    if found is None:
        path = LOCALES_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.mo"
        if not path.is_file():
            raise MissingCatalog(f"no compiled catalog for {language!r} at {path}")
        with path.open("rb") as handle, _catalogs_lock:
            found = _catalogs.setdefault(language, Translations(handle, domain=DOMAIN))
    return found


def available_languages() -> list[str]:
    return sorted(p.parent.parent.name for p in LOCALES_DIR.glob(f"*/LC_MESSAGES/{DOMAIN}.mo"))


def say_language(language: str) -> str:
    return SAY_LANGUAGES.get(spoken_language(language), SAY_LANGUAGES[SOURCE_LANGUAGE])


def say_voice(language: str) -> str:
    return SAY_VOICES.get(spoken_language(language), SAY_VOICES[SOURCE_LANGUAGE])


def spoken_language(language: str) -> str:
    """The language we can speak: this one if its catalog exists, else English
    (a study may list languages whose catalogs a later release brings)."""
    if language in _catalogs:
        return language
    if language in _uncatalogued:  # asked on every prompt: no file check each time
        return SOURCE_LANGUAGE
    try:
        catalog(language)
        return language
    except MissingCatalog:
        _uncatalogued.add(language)
        log.info("no catalog for language %s: English is spoken instead", language)
        return SOURCE_LANGUAGE


def text(say: Say, language: str) -> str:
    """One prompt in words."""
    language = spoken_language(say.language or language)
    template = _lookup(say.id, language, say.params.get("count"))
    if template is None:
        log.error("message %s has no text in %s or %s", say.id, language, SOURCE_LANGUAGE)
        return ""
    values = {name: _spoken(value, language) for name, value in say.params.items()}
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError):
        log.error("message %s in %s does not fit its parameters", say.id, language)
        return ""


def texts(says: tuple[Say, ...] | list[Say], language: str) -> list[str]:
    return [t for t in (text(say, language) for say in says) if t]


def template(message_id: str, language: str, count: Any = None) -> str | None:
    """The text of a message in ``language`` (English when it lacks one), with its
    ``{placeholders}`` unfilled; None when no catalog has it. The web console
    fills the placeholders its own way (written, not spoken)."""
    return _lookup(message_id, language, count)


def _lookup(message_id: str, language: str, count: Any = None) -> str | None:
    for lang in dict.fromkeys((spoken_language(language), SOURCE_LANGUAGE)):
        translations = catalog(lang)
        if isinstance(count, int):
            found = translations.ngettext(message_id, message_id + ".plural", count)
            if found not in (message_id, message_id + ".plural"):
                return found
        found = translations.gettext(message_id)
        if found != message_id:
            return found
    return None


@functools.lru_cache(maxsize=64)
def _locale(language: str) -> Locale:
    """Parsed once: babel parses a locale's data anew on every ``Locale.parse``."""
    return Locale.parse(language)


def _spoken(value: Any, language: str) -> str:
    if isinstance(value, Digits):
        return " ".join(value)
    if isinstance(value, Term):
        found = _lookup(str(value), language)
        return found if found is not None else str(value).rsplit(".", 1)[-1]
    if isinstance(value, (list, tuple)):  # kit numbers of one assignment, in an SMS
        return ", ".join(_spoken(item, language) for item in value)
    if isinstance(value, LanguageName):
        # The language alone ("中文", not "中文 (简体, 中国)": speech reads brackets aloud).
        return _locale(str(value)).get_language_name(_locale(language)) or str(value)
    if isinstance(value, date):
        return format_date(value, format="long", locale=_locale(language))
    if isinstance(value, int) and not isinstance(value, bool):  # a quantity: 1,200 / 1.200
        return format_decimal(value, locale=_locale(language))
    return str(value)
