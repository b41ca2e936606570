"""Every prompt the dialogs can say exists in every shipped catalog, with the same
placeholders, and the compiled catalogs are current."""

from __future__ import annotations

import ast
import re
import string
from collections import defaultdict
from pathlib import Path

import pytest
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

from dialogs.errors import KNOWN_ERRORS
from dialogs.voice.enrolment import REASONS
from dialogs.voice.login import MENU_OPTIONS
from dialogs.voice.supply import REPLACEMENT_REASONS
from ivrs import speech
from ivrs.speech import LOCALES_DIR, MissingCatalog, catalog

DIALOGS = Path(__file__).resolve().parent.parent / "dialogs"
IVRS = Path(__file__).resolve().parent.parent / "ivrs"
# A literal prompt id in code: Say("x.y"), say("x"), refuse("x"), hang_up("x"),
# and the "prompt"/"invalid" keys of the state declarations.
_LITERAL = re.compile(
    r"""(?:\bSay\(|\bsay\(|\brefuse\(|\bhang_up\(|"prompt":\s*|"invalid":\s*)"([a-z_][a-z0-9_.]*)\"""")

_SAY = re.compile(r"""\bSay\("([a-z_][a-z0-9_.]*)\"""")


def prompt_ids() -> set[str]:
    ids = set()
    for path in DIALOGS.rglob("*.py"):
        ids |= set(_LITERAL.findall(path.read_text(encoding="utf-8")))
    for path in IVRS.glob("*.py"):  # ivrs/ says only a few things of its own (an apology)
        ids |= set(_SAY.findall(path.read_text(encoding="utf-8")))
    # "prompt" may name a model method that builds the prompt: not an id.
    from dialogs.voice.machine import VoiceCall
    # "x." + code: a prefix, completed below.
    ids = {i for i in ids if not hasattr(VoiceCall, i) and not i.endswith(".")}
    # Ids built at run time.
    ids |= {f"menu.option.{d}" for options in MENU_OPTIONS.values() for d in options}
    ids |= {f"error.{code}" for code in KNOWN_ERRORS} | {"error.refused"}
    for kind, reasons in REASONS.items():
        ids |= {f"status.{kind}.{step}" for step in ("ask", "confirm", "done")}
        ids |= {f"reason.{reason}" for reason in reasons}
    ids |= {f"reason.{reason}" for reason in REPLACEMENT_REASONS}
    return ids


def shipped() -> list[str]:
    return sorted(p.parent.parent.name for p in LOCALES_DIR.glob("*/LC_MESSAGES/messages.po"))


def _po(language: str):
    with (LOCALES_DIR / language / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        return read_po(handle)


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_the_prompt_scan_finds_prompts():
    ids = prompt_ids()
    assert {"login.pin", "readback", "rand.done", "kits.give", "receipt.summary"} <= ids


@pytest.mark.parametrize("language", shipped())
def test_every_prompt_exists_and_is_not_empty(language):
    messages = {m.id if isinstance(m.id, str) else m.id[0]: m for m in _po(language) if m.id}
    missing = sorted(i for i in prompt_ids() if i not in messages)
    assert not missing, f"{language} lacks {missing}"
    empty = sorted(i for i, m in messages.items() if not all(_strings(m)))
    assert not empty, f"{language} has empty messages {empty}"


@pytest.mark.parametrize("language", shipped())
def test_translations_keep_the_source_placeholders(language):
    source = {m.id: m for m in _po(speech.SOURCE_LANGUAGE) if m.id}
    for message in _po(language):
        if not message.id or message.id not in source:
            continue
        expected = _strings(source[message.id])
        for text in _strings(message):
            assert _fields(text) <= set().union(*map(_fields, expected)), (language, message.id)


def _key(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _strings(message) -> list[str]:
    return list(message.string) if isinstance(message.string, tuple) else [message.string]


@pytest.mark.parametrize("language", shipped())
def test_compiled_catalogs_are_current(language):
    directory = LOCALES_DIR / language / "LC_MESSAGES"
    with (directory / "messages.mo").open("rb") as handle:
        compiled = {_key(m.id): _key(m.string) for m in read_mo(handle) if m.id}
    source = {_key(m.id): _key(m.string) for m in _po(language) if m.id and m.string}
    assert compiled == source, "run: pybabel compile -d locales -D messages"


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

CORE = Path(__file__).resolve().parent.parent / "core"
NOTIFIERS = {"notify", "Notification"}
# The outbox itself passes its caller's message id through (or defaults to the kind).
OUTBOX = CORE / "supply" / "outbox.py"
NOT_LITERAL = "<no literal message_id>"


def notification_ids() -> dict[str, list[str]]:
    """Message id -> the places in core/ that write a notification with it.

    Every ``notify(...)`` and ``Notification(...)`` must name its message id as a
    literal, a module constant, or a conditional between those: anything else (no
    ``message_id=``, so the kind is used; an f-string) is listed under NOT_LITERAL."""
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted(CORE.rglob("*.py")):
        if path == OUTBOX:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        constants = {target.id: node.value.value for node in tree.body
                     if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                     and isinstance(node.value.value, str)
                     for target in node.targets if isinstance(target, ast.Name)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and _called(node.func) in NOTIFIERS):
                continue
            given = next((k.value for k in node.keywords if k.arg == "message_id"), None)
            ids = _literal_ids(given, constants) if given is not None else []
            for message_id in ids or [NOT_LITERAL]:
                found[message_id].append(f"{path.relative_to(CORE.parent)}:{node.lineno}")
    return found


def _called(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else None


def _literal_ids(expr: ast.expr, constants: dict[str, str]) -> list[str]:
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return [expr.value]
    if isinstance(expr, ast.Name) and expr.id in constants:
        return [constants[expr.id]]
    if isinstance(expr, ast.IfExp):
        body, orelse = _literal_ids(expr.body, constants), _literal_ids(expr.orelse, constants)
        return body + orelse if body and orelse else []
    return []


def test_the_notification_scan_finds_literals_constants_and_conditionals():
    ids = notification_ids()
    assert {"notify.shipment_dispatched",  # Notification(...) with a literal
            "sms.kit_confirm_request",  # notify(...) with a module constant
            "notify.return_approved", "notify.return_rejected"} <= set(ids)  # a conditional
    assert _literal_ids(ast.parse('f"notify.{kind}"', mode="eval").body, {}) == []


def test_every_notification_names_its_message_id():
    assert NOT_LITERAL not in notification_ids(), (
        "give these notifications a literal message_id: "
        f"{notification_ids().get(NOT_LITERAL)}")


@pytest.mark.parametrize("language", shipped())
def test_every_notification_message_exists(language):
    messages = {m.id if isinstance(m.id, str) else m.id[0] for m in _po(language) if m.id}
    missing = {i: where for i, where in notification_ids().items()
               if i != NOT_LITERAL and i not in messages}
    assert not missing, f"{language} lacks {missing}"
    # The SMS length checks (tests/test_sms_templates.py) cover these two families.
    assert all(i.startswith(("notify.", "sms.")) for i in notification_ids() if i != NOT_LITERAL)
