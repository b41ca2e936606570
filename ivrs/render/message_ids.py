"""Every message id the code can say or send, found in the code itself.

The dialogs speak in symbolic ids (``Say("login.pin")``), so the catalog
template (``locales/messages.pot``) cannot come from ``gettext()`` calls: it is
extracted by this module, which babel runs as an extraction method
(``locales/babel.cfg``; ``python -m ivrs.render.catalogs`` does the whole workflow).
The ids are:

- literals in the dialogs: the first argument of ``Say``, ``say``,
  ``refuse`` and ``hang_up`` (both sides of ``a if c else b``), the prompt
  argument of ``number_entry``, and the ``"prompt"``/``"invalid"`` values of
  state declarations; in ``ivrs/``, the first argument of ``Say``;
- ids built at run time from tables: menu options, core refusals
  (``error.<code>``), reasons, subject statuses;
- the message id of every notification ``core/`` queues (``notify(...,
  message_id=...)``): a literal, a module constant, or a conditional of those;
- the demo study's terms (eligibility questions, factors, levels, visits): a
  study file brings its own terms, which its sponsor adds to the catalogs.

Whether an id has a plural form, and its English text (a comment for
translators), come from the English catalog: English is the source language.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DIALOGS, IVRS, CORE = ROOT / "dialogs", ROOT / "ivrs", ROOT / "core"

# Calls whose first argument is a message id (a literal, or a choice between
# literals), and the keys of state declarations whose value is one.
SAYING = {"Say", "say", "refuse", "hang_up"}
DECLARING = {"prompt", "invalid"}
# number_entry(state, slot, prompt, ...): its third argument is the prompt.
PROMPT_ARGUMENT = {"number_entry": 2}
_ID = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z0-9_A-Z]+)*$")

NOTIFIERS = {"notify", "Notification"}
# The outbox itself passes its caller's message id through (or defaults to the kind).
OUTBOX = CORE / "supply" / "outbox.py"
NOT_LITERAL = "<no literal message_id>"
SUBJECT_STATUSES = ("screened", "screen_failed", "randomized", "discontinued")


def prompt_ids() -> set[str]:
    """The ids the voice and SMS dialogs (and ``ivrs/``) can say."""
    from core.unblinding import REASONS as UNBLINDING_REASONS
    from dialogs.errors import KNOWN_ERRORS
    from dialogs.sms.commands import KIT_REFUSALS
    from dialogs.sms.machine import TextModel
    from dialogs.voice.enrolment import REASONS
    from dialogs.voice.login import MENU_OPTIONS
    from dialogs.voice.machine import VoiceCall
    from dialogs.voice.supply import REPLACEMENT_REASONS

    ids = set()
    for path in DIALOGS.rglob("*.py"):
        ids |= said_ids(ast.parse(path.read_text(encoding="utf-8"), str(path)), SAYING)
    for path in IVRS.rglob("*.py"):  # ivrs/ says only a few things of its own (an apology)
        ids |= said_ids(ast.parse(path.read_text(encoding="utf-8"), str(path)), {"Say"})
    # "prompt" may name a model method that builds the prompt: not an id.
    ids = {i for i in ids if not hasattr(VoiceCall, i) and not hasattr(TextModel, i)}
    ids |= {f"menu.option.{d}" for options in MENU_OPTIONS.values() for d in options}
    ids |= {f"error.{code}" for code in KNOWN_ERRORS} | {"error.refused"}
    for kind, reasons in REASONS.items():
        ids |= {f"status.{kind}.{step}" for step in ("ask", "confirm", "done")}
        ids |= {f"reason.{reason}" for reason in reasons}
    ids |= {f"reason.{reason}" for reason in (*REPLACEMENT_REASONS, *UNBLINDING_REASONS)}
    ids |= {f"subject_status.{status}" for status in SUBJECT_STATUSES}
    ids |= {f"sms.{code}" for code in KIT_REFUSALS}
    return ids


def said_ids(tree: ast.AST, saying: set[str]) -> set[str]:
    """The message ids a module's code names literally: the first argument of
    the ``saying`` calls, ``number_entry``'s prompt, declared prompts."""
    ids: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            name = _called(node.func)
            if name in saying:
                ids |= _constants(node.args[0])
            elif name in PROMPT_ARGUMENT and len(node.args) > PROMPT_ARGUMENT[name]:
                ids |= _constants(node.args[PROMPT_ARGUMENT[name]])
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value in DECLARING:
                    ids |= _constants(value)
    return ids


def _constants(expr: ast.expr) -> set[str]:
    """The id-shaped string literal an expression is, or those it chooses between
    (``"a" if c else "b"``; the condition's own strings are not ids)."""
    if isinstance(expr, ast.IfExp):
        return _constants(expr.body) | _constants(expr.orelse)
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str) \
            and _ID.match(expr.value) and not expr.value.endswith("."):
        return {expr.value}
    return set()


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
            ids = literal_ids(given, constants) if given is not None else []
            for message_id in ids or [NOT_LITERAL]:
                found[message_id].append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def _called(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else None


def literal_ids(expr: ast.expr, constants: dict[str, str]) -> list[str]:
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return [expr.value]
    if isinstance(expr, ast.Name) and expr.id in constants:
        return [constants[expr.id]]
    if isinstance(expr, ast.IfExp):
        body, orelse = literal_ids(expr.body, constants), literal_ids(expr.orelse, constants)
        return body + orelse if body and orelse else []
    return []


def demo_study_terms() -> set[str]:
    """The demo study's terms: what ``ivrs demo`` and the tests say."""
    study = yaml.safe_load(files("ivrs.demo").joinpath("data", "study.yaml")
                           .read_text("utf-8"))
    terms = {f"eligibility.{code}" for code in study.get("eligibility") or ()}
    for factor in (study.get("randomization") or {}).get("factors") or ():
        terms.add(f"factor.{factor['code']}")
        terms |= {f"level.{factor['code']}.{level}" for level in factor["levels"]}
    terms |= {f"visit.{visit['code']}" for visit in study.get("visits") or ()}
    return terms


WEB = IVRS / "web"
# In a template: _("web.nav.subjects") or _('web.nav.subjects', count=n).
# (A literal that is only the start of an id, "web.x." ~ code, is not one.)
_TEMPLATE_ID = re.compile(r"""\b_\(\s*["']([a-z_][a-z0-9_.]*)["']\s*[,)]""")
VISIT_STATUSES = ("done", "missed", "due", "upcoming")


def web_ids() -> set[str]:
    """The web console's ids: those its templates name, every ``web.x.y``
    literal of its code (page labels, refusals; ``web.x`` is a Flask endpoint),
    and those built from tables (roles, statuses)."""
    from core.actors import ROLES
    from core.approvals import STATUSES as APPROVAL_STATUSES
    from core.gates import GATES
    from core.report_registry import SPECS
    from core.supply.lifecycle import STATUSES as KIT_STATUSES

    ids: set[str] = set()
    for path in WEB.rglob("*.html"):
        ids |= set(_TEMPLATE_ID.findall(path.read_text(encoding="utf-8")))
    for path in WEB.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.startswith("web.") and node.value.count(".") >= 2 \
                    and _ID.match(node.value):  # "web.signin" is an endpoint, not an id
                ids.add(node.value)
    ids = {i for i in ids if not i.endswith(".")}
    ids |= {f"web.role.{role}" for role in ROLES}
    ids |= {f"web.visit_status.{status}" for status in VISIT_STATUSES}
    ids |= {f"web.kit_status.{status}" for status in KIT_STATUSES}
    ids |= {f"web.dashboard.period_{period}" for period in ("day", "week")}
    ids |= {f"web.dashboard.audit.{state}" for state in ("intact", "broken", "unchecked")}
    ids |= {f"web.approvals.kind.{kind}" for kind in GATES}
    ids |= {f"web.approvals.status.{status}" for status in APPROVAL_STATUSES}
    ids |= {f"web.reports.name.{name}" for name in SPECS}
    return ids


def all_ids() -> set[str]:
    return (prompt_ids() | (set(notification_ids()) - {NOT_LITERAL}) | demo_study_terms()
            | web_ids())


# --- the babel extraction method -----------------------------------------------------------


def extract(fileobj, keywords, comment_tags, options) -> Iterator[tuple]:
    """Babel's extraction interface: (line, function, message, comments) per id.

    An id the English catalog gives a plural form is extracted as
    ``ngettext(id, id + ".plural")``; the English text goes along as a comment.
    """
    from babel.messages.pofile import read_po

    with (ROOT / "locales" / "en" / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        english = {(m.id if isinstance(m.id, str) else m.id[0]): m for m in read_po(handle)
                   if m.id}
    for line, message_id in enumerate(sorted(all_ids()), start=1):
        source = english.get(message_id)
        texts = [] if source is None else (
            list(source.string) if isinstance(source.string, tuple) else [source.string])
        comments = [f"en: {text}" for text in texts if text]
        if source is not None and source.pluralizable:
            yield line, "ngettext", (message_id, source.id[1]), comments
        else:
            yield line, "gettext", message_id, comments
