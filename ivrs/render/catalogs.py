"""The catalog workflow in one command: extract, update, compile (or check).

    python -m ivrs.render.catalogs           # locales/messages.pot from the code, every
                                      # locale's .po updated, every .mo compiled
    python -m ivrs.render.catalogs --check   # exit 1 if any of the three is not current

Writing is the pybabel workflow (``pybabel extract -F locales/babel.cfg``,
``pybabel update -N``, ``pybabel compile``), run through babel's own
command-line interface, so it is exactly what a translator runs. Checking reads
the files back and compares messages (ids, plural ids, contexts, fuzzy and
obsolete entries, placeholders, the compiled catalogs), never the bytes a Babel
version writes: a newer Babel wraps comments and fills headers differently. A
new message id in the code appears, empty, in every locale's .po after an
update; ``tests/test_catalogs.py`` then fails, naming it, until it is translated.
"""

from __future__ import annotations

import argparse
import string
import sys
import tempfile
from pathlib import Path

from babel.messages.catalog import Catalog, Message
from babel.messages.frontend import BaseError, CommandLineInterface
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

from ivrs.render.message_ids import ROOT
from ivrs.render.speech import SOURCE_LANGUAGE

LOCALES = ROOT / "locales"
TEMPLATE = LOCALES / "messages.pot"
DOMAIN = "messages"


def pybabel(*args: str) -> int:
    """Run one pybabel command in this process; its exit status."""
    try:
        return CommandLineInterface().run(["pybabel", "-q", *args]) or 0
    except BaseError as problem:  # a failed --check, a missing file
        print(f"pybabel {args[0]}: {problem}", file=sys.stderr)
        return 1
    except SystemExit as stop:
        return int(stop.code or 0)


def extract(output: Path) -> int:
    return pybabel("extract", "-F", str(LOCALES / "babel.cfg"), "-o", str(output),
                   "--no-location", "--sort-output",
                   "--add-comments", "en:", "--project", "ivrs", str(ROOT / "ivrs"))


def update(template: Path = TEMPLATE) -> int:
    return pybabel("update", "-i", str(template), "-d", str(LOCALES), "-D", DOMAIN,
                   "--no-fuzzy-matching", "--ignore-obsolete", "--ignore-pot-creation-date",
                   "--no-wrap")


def compile_all() -> int:
    return pybabel("compile", "-d", str(LOCALES), "-D", DOMAIN, "--statistics")


def locales(directory: Path = LOCALES) -> list[str]:
    return sorted(p.parent.parent.name for p in directory.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))


# --- the check: parsed catalogs compared message by message ---------------------------------------
# Nothing below compares the bytes pybabel writes: Babel versions differ in how
# they wrap and carry comments and in their headers, and a check that judged that
# formatting would fail on a newer Babel although no message changed.

Key = tuple[str | None, str]  # (context, message id)


def _read(path: Path) -> Catalog:
    with path.open("rb") as handle:
        return read_po(handle)


def _messages_by_key(catalog) -> dict[Key, Message]:
    return {(m.context, _singular(m.id)): m for m in catalog if m.id}


def _singular(message_id) -> str:
    return message_id[0] if isinstance(message_id, (list, tuple)) else message_id


def _plural(message_id) -> str | None:
    return message_id[1] if isinstance(message_id, (list, tuple)) else None


def _forms(message: Message) -> list[str]:
    string = message.string
    return list(string) if isinstance(string, (list, tuple)) else [string]


def _placeholders(text: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name}
    except ValueError:  # an unbalanced brace: the translation cannot be formatted
        return {"<unbalanced brace>"}


def _name(key: Key) -> str:
    context, message_id = key
    return f"{message_id} (context {context})" if context else message_id


def _english(message: Message) -> str:
    """A template entry's English text (its ``en:`` comments), whitespace aside."""
    return " ".join(" ".join(message.auto_comments).split())


def template_problems(template: Path = TEMPLATE) -> list[str]:
    """How the committed template differs from what the code says now."""
    with tempfile.TemporaryDirectory() as directory:
        fresh = Path(directory) / "messages.pot"
        if extract(fresh) != 0:
            return ["the message ids could not be extracted from the code"]
        said = _messages_by_key(_read(fresh))
    name = template.name
    if not template.is_file():
        return [f"{name} is missing"]
    committed = _messages_by_key(_read(template))
    problems = [f"{name} lacks {_name(k)}, which the code says" for k in said.keys() - committed.keys()]
    problems += [f"{name} has {_name(k)}, which the code no longer says"
                 for k in committed.keys() - said.keys()]
    for key in said.keys() & committed.keys():
        if _plural(said[key].id) != _plural(committed[key].id):
            problems.append(f"{name}: the plural id of {_name(key)} is not what the code says")
        if _english(said[key]) != _english(committed[key]):
            problems.append(f"{name}: the English text of {_name(key)} is not what the code says")
    return sorted(problems)


def catalog_problems(language: str, directory: Path = LOCALES,
                     template: Path | None = None) -> list[str]:
    """What keeps one locale's .po from matching the template, message by message:
    the same ids, plural ids and contexts, every form filled, nothing fuzzy or
    obsolete, the English source's placeholders in every form."""
    template_catalog = _read(template or directory / TEMPLATE.name)
    expected = _messages_by_key(template_catalog)
    po = _read(directory / language / "LC_MESSAGES" / f"{DOMAIN}.po")
    found = _messages_by_key(po)
    source_path = directory / SOURCE_LANGUAGE / "LC_MESSAGES" / f"{DOMAIN}.po"
    source = _messages_by_key(_read(source_path)) if source_path.is_file() else {}
    problems = [f"{language} lacks {_name(k)}" for k in expected.keys() - found.keys()]
    problems += [f"{language} has {_name(k)}, which the template does not"
                 for k in found.keys() - expected.keys()]
    problems += [f"{language} keeps obsolete {message_id}" for message_id in po.obsolete]
    for key in sorted(expected.keys() & found.keys(), key=_name):
        message = found[key]
        if _plural(message.id) != _plural(expected[key].id):
            problems.append(f"{language}: the plural id of {_name(key)} is not the template's")
        if message.fuzzy:
            problems.append(f"{language}: {_name(key)} is fuzzy")
        forms = _forms(message)
        if _plural(message.id) is not None and len(forms) != po.num_plurals:
            problems.append(f"{language}: {_name(key)} has {len(forms)} forms, "
                            f"the language {po.num_plurals}")
        if not all(form.strip() for form in forms):
            problems.append(f"{language}: {_name(key)} is not translated")
            continue
        if key in source:
            wanted = set().union(*map(_placeholders, _forms(source[key])))
            for form in forms:
                if _placeholders(form) != wanted:
                    problems.append(f"{language}: {_name(key)} does not keep the placeholders "
                                    f"{sorted(wanted)}: {form!r}")
    return sorted(problems)


def compiled_problems(language: str, directory: Path = LOCALES) -> list[str]:
    """Whether the locale's .mo holds exactly what its .po says."""
    folder = directory / language / "LC_MESSAGES"
    source = {(m.context, _key(m.id)): _key(m.string)
              for m in _read(folder / f"{DOMAIN}.po") if m.id and m.string and not m.fuzzy}
    mo = folder / f"{DOMAIN}.mo"
    if not mo.is_file():
        return [f"{language}: the .mo is missing"]
    with mo.open("rb") as handle:
        compiled = {(m.context, _key(m.id)): _key(m.string) for m in read_mo(handle) if m.id}
    return [] if compiled == source else [f"{language}: the .mo is not compiled from the current .po"]


def stale_compiled(directory: Path = LOCALES) -> list[str]:
    """Locales whose .mo does not hold exactly what their .po says."""
    return [language for language in locales(directory) if compiled_problems(language, directory)]


def _key(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def check(directory: Path = LOCALES) -> list[str]:
    """What is not current, in words (empty: all is)."""
    template = directory / TEMPLATE.name
    problems = template_problems(template)
    for language in locales(directory):
        problems += catalog_problems(language, directory, template)
        problems += compiled_problems(language, directory)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ivrs.render.catalogs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if the catalogs are not current")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(f"not current: {problem}", file=sys.stderr)
        if problems:
            print("run: python -m ivrs.render.catalogs", file=sys.stderr)
        return 1 if problems else 0
    for step in (lambda: extract(TEMPLATE), update, compile_all):
        if step() != 0:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
