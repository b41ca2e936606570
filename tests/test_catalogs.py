"""Every message the code can say exists in every shipped catalog, translated, with
the same placeholders, and the template, catalogs and compiled catalogs are current
(``python -m ivrs.render.catalogs --check``)."""

from __future__ import annotations

import ast
import shutil
import string

import pytest
from babel.messages.catalog import Message
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

from ivrs.render import speech
from ivrs.render.catalogs import LOCALES, check, stale_compiled
from ivrs.render.message_ids import NOT_LITERAL, all_ids, literal_ids, notification_ids, prompt_ids
from ivrs.render.speech import LOCALES_DIR, MissingCatalog, catalog

# SPEC / issue 6: the languages a release ships, at least.
REQUIRED = {"en", "fr", "es", "de", "it", "pt_BR", "ja", "zh_CN"}


def shipped() -> list[str]:
    return sorted(p.parent.parent.name for p in LOCALES_DIR.glob("*/LC_MESSAGES/messages.po"))


def _po(language: str):
    with (LOCALES_DIR / language / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        return read_po(handle)


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_the_scan_finds_prompts_in_every_form_they_take():
    ids = prompt_ids()
    assert {"login.pin", "readback", "rand.done", "kits.give", "receipt.summary",  # literals
            "subject.enter",  # number_entry's prompt
            "sms.ask_pin", "sms.ask_user_pin",  # both sides of a choice
            "sms.wrong_kit", "menu.option.8", "error.locked"} <= ids  # built from tables
    assert not ids & {"completed", "locked"}  # a phone's hang_up status, a comparison


def test_the_required_languages_are_shipped():
    assert REQUIRED <= set(shipped())


@pytest.mark.parametrize("language", shipped())
def test_every_message_exists_and_every_form_is_filled(language):
    messages = {_id(m): m for m in _po(language) if m.id}
    missing = sorted(i for i in all_ids() if i not in messages)
    assert not missing, f"{language} lacks {missing}"
    empty = sorted(i for i, m in messages.items() if not all(t.strip() for t in _strings(m)))
    assert not empty, f"{language} has empty messages {empty}"


@pytest.mark.parametrize("language", shipped())
def test_translations_keep_the_source_placeholders(language):
    source = {_id(m): m for m in _po(speech.SOURCE_LANGUAGE) if m.id}
    for message in _po(language):
        if not message.id:
            continue
        expected = set().union(*map(_fields, _strings(source[_id(message)])))
        for text in _strings(message):
            # Every form names the same things (a one-form language says the count too).
            assert _fields(text) == expected, (language, _id(message), text)


# Texts a translation may leave as they are: nothing but placeholders and punctuation.
ONLY_PLACEHOLDERS = {"rand.factor", "rand.summary_level", "web.randomize.question"}


@pytest.mark.parametrize("language", sorted(set(shipped()) - {speech.SOURCE_LANGUAGE}))
def test_translations_are_not_english_copies(language):
    source = {_id(m): _strings(m) for m in _po(speech.SOURCE_LANGUAGE) if m.id}
    copies = sorted(_id(m) for m in _po(language)
                    if m.id and _strings(m) == source[_id(m)]
                    and _id(m) not in ONLY_PLACEHOLDERS)
    assert not copies, f"{language}: left in English: {copies}"


def test_the_template_the_catalogs_and_the_compiled_catalogs_are_current():
    assert check() == [], "run: python -m ivrs.render.catalogs"


# --- the check names what is wrong, whatever Babel version wrote the files ------------------------


@pytest.fixture
def locales_copy(tmp_path):
    copy = tmp_path / "locales"
    shutil.copytree(LOCALES, copy)
    return copy


def _rewrite(path, change, *, compile_to=None):
    with path.open("rb") as handle:
        catalog = read_po(handle)
    change(catalog)
    with path.open("wb") as handle:
        write_po(handle, catalog)
    if compile_to:
        with compile_to.open("wb") as handle:
            write_mo(handle, catalog)


def _french(locales_copy):
    folder = locales_copy / "fr" / "LC_MESSAGES"
    return folder / "messages.po", folder / "messages.mo"


def test_a_copy_of_the_shipped_catalogs_passes(locales_copy):
    assert check(locales_copy) == []


def test_a_catalog_lacking_a_message_fails_naming_it(locales_copy):
    po, mo = _french(locales_copy)
    _rewrite(po, lambda c: c.delete("notify.depot_short"), compile_to=mo)
    assert check(locales_copy) == ["fr lacks notify.depot_short"]


def test_a_message_the_template_does_not_have_fails(locales_copy):
    po, mo = _french(locales_copy)
    _rewrite(po, lambda c: c.add("menu.not_in_the_code", "Bonjour"), compile_to=mo)
    assert check(locales_copy) == ["fr has menu.not_in_the_code, which the template does not"]


def test_fuzzy_obsolete_and_lost_placeholders_fail(locales_copy):
    po, mo = _french(locales_copy)

    def spoil(catalog):
        catalog["cancelled"].flags.add("fuzzy")
        catalog["confirmation"].string = "Numéro de confirmation."  # {confirmation} lost
        catalog.obsolete["old.message"] = Message("old.message", "Ancien message")

    _rewrite(po, spoil, compile_to=mo)
    problems = check(locales_copy)
    assert "fr: cancelled is fuzzy" in problems
    assert "fr keeps obsolete old.message" in problems
    assert any(p.startswith("fr: confirmation does not keep the placeholders ['confirmation']")
               for p in problems), problems


def test_an_untranslated_or_misplural_message_fails(locales_copy):
    po, mo = _french(locales_copy)

    def spoil(catalog):
        catalog["dispense.due"].string = ("{visit} {count} kit", "")
        catalog["apology"].string = ""

    _rewrite(po, spoil, compile_to=mo)
    problems = check(locales_copy)
    assert "fr: dispense.due is not translated" in problems
    assert "fr: apology is not translated" in problems


def test_a_stale_compiled_catalog_fails(locales_copy):
    po, _ = _french(locales_copy)
    _rewrite(po, lambda c: setattr(c["cancelled"], "string", "Annulé. Rien n'a été enregistré !"))
    assert check(locales_copy) == ["fr: the .mo is not compiled from the current .po"]
    assert stale_compiled(locales_copy) == ["fr"]


def test_a_template_behind_the_code_fails_naming_the_message(locales_copy):
    _rewrite(locales_copy / "messages.pot", lambda c: c.delete("rand.done"))
    assert "messages.pot lacks rand.done, which the code says" in check(locales_copy)


def test_formatting_alone_does_not_fail(locales_copy):
    """Another Babel's header and comment wrapping: the messages are the same."""
    for path in [locales_copy / "messages.pot", *locales_copy.glob("*/LC_MESSAGES/*.po")]:
        lines = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#. ") and not line.startswith("#. en:") and lines:
                lines[-1] += " " + line[3:]  # one long comment line instead of a wrapped one
            else:
                lines.append(line.replace("Generated-By: Babel", "Generated-By: Babel 9.9 ="))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert check(locales_copy) == []


def _id(message) -> str:
    return message.id if isinstance(message.id, str) else message.id[0]


def _strings(message) -> list[str]:
    return list(message.string) if isinstance(message.string, tuple) else [message.string]


@pytest.mark.parametrize("language", shipped())
def test_compiled_catalogs_are_current(language):
    assert language not in stale_compiled(), "run: pybabel compile -d locales -D messages"


def test_a_missing_catalog_is_an_error_not_a_silent_english_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(speech, "LOCALES_DIR", tmp_path)
    monkeypatch.setattr(speech, "_catalogs", {})
    with pytest.raises(MissingCatalog):
        catalog("en")


def test_plural_forms_are_chosen_by_count():
    from dialogs.output import Say, Term
    one = speech.text(Say("dispense.due", {"visit": Term("visit.V2"), "count": 1}), "en")
    two = speech.text(Say("dispense.due", {"visit": Term("visit.V2"), "count": 2}), "en")
    assert "1 kit." in one and "2 kits." in two


def test_digits_are_read_one_by_one_and_unknown_terms_by_their_code():
    from dialogs.output import Digits, Say, Term
    said = speech.text(Say("kits.give", {"kit": Digits("123456"), "visit": Term("visit.W9")}),
                       "en")
    assert said == "For W9, give kit 1 2 3 4 5 6."


# --- notifications: the message ids core/ writes to the outbox ------------------------------------


def test_the_notification_scan_finds_literals_constants_and_conditionals():
    ids = notification_ids()
    assert {"notify.shipment_dispatched",  # Notification(...) with a literal
            "sms.kit_confirm_request",  # notify(...) with a module constant
            "notify.return_approved", "notify.return_rejected"} <= set(ids)  # a conditional
    assert literal_ids(ast.parse('f"notify.{kind}"', mode="eval").body, {}) == []


def test_every_notification_names_its_message_id():
    assert NOT_LITERAL not in notification_ids(), (
        "give these notifications a literal message_id: "
        f"{notification_ids().get(NOT_LITERAL)}")


@pytest.mark.parametrize("language", shipped())
def test_every_notification_message_exists(language):
    messages = {_id(m) for m in _po(language) if m.id}
    missing = {i: where for i, where in notification_ids().items()
               if i != NOT_LITERAL and i not in messages}
    assert not missing, f"{language} lacks {missing}"
    # The SMS length checks (tests/test_sms_templates.py) cover these two families.
    assert all(i.startswith(("notify.", "sms.")) for i in notification_ids() if i != NOT_LITERAL)
