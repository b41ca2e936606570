"""The catalog workflow in one command: extract, update, compile (or check).

    python -m ivrs.catalogs           # locales/messages.pot from the code, every
                                      # locale's .po updated, every .mo compiled
    python -m ivrs.catalogs --check   # exit 1 if any of the three is not current

It is the pybabel workflow (``pybabel extract -F locales/babel.cfg``, ``pybabel
update -N``, ``pybabel compile``), run through babel's own command-line
interface so that what CI checks is exactly what a translator runs. A new
message id in the code appears, empty, in every locale's .po after an update;
``tests/test_catalogs.py`` then fails until it is translated.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from babel.messages.frontend import BaseError, CommandLineInterface
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

from ivrs.message_ids import ROOT

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


def update(template: Path = TEMPLATE, *, check: bool = False) -> int:
    args = ["update", "-i", str(template), "-d", str(LOCALES), "-D", DOMAIN,
            "--no-fuzzy-matching", "--ignore-obsolete", "--ignore-pot-creation-date",
            "--no-wrap"]
    return pybabel(*args, *(["--check"] if check else []))


def compile_all() -> int:
    return pybabel("compile", "-d", str(LOCALES), "-D", DOMAIN, "--statistics")


def locales() -> list[str]:
    return sorted(p.parent.parent.name for p in LOCALES.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))


def stale_compiled() -> list[str]:
    """Locales whose .mo does not hold exactly what their .po says."""
    stale = []
    for language in locales():
        directory = LOCALES / language / "LC_MESSAGES"
        with (directory / f"{DOMAIN}.po").open("rb") as handle:
            source = {_key(m.id): _key(m.string) for m in read_po(handle) if m.id and m.string}
        mo = directory / f"{DOMAIN}.mo"
        if not mo.is_file():
            stale.append(language)
            continue
        with mo.open("rb") as handle:
            compiled = {_key(m.id): _key(m.string) for m in read_mo(handle) if m.id}
        if compiled != source:
            stale.append(language)
    return stale


def _key(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def template_is_current() -> bool:
    """The committed template equals a fresh extraction (creation date aside)."""
    with tempfile.TemporaryDirectory() as directory:
        fresh = Path(directory) / "messages.pot"
        if extract(fresh) != 0:
            return False
        return _messages(fresh) == _messages(TEMPLATE)


def _messages(path: Path) -> list[tuple]:
    if not path.is_file():
        return []
    with path.open("rb") as handle:
        return [(_key(m.id), tuple(m.auto_comments)) for m in read_po(handle) if m.id]


def check() -> list[str]:
    """What is not current, in words (empty: all is)."""
    problems = []
    if not template_is_current():
        problems.append(f"{TEMPLATE.relative_to(ROOT)} is not what the code says")
    if update(check=True) != 0:
        problems.append("a locale's .po lacks or has extra messages against the template")
    problems += [f"{lang}: the .mo is not compiled from the current .po"
                 for lang in stale_compiled()]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ivrs.catalogs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if the catalogs are not current")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(f"not current: {problem}", file=sys.stderr)
        if problems:
            print("run: python -m ivrs.catalogs", file=sys.stderr)
        return 1 if problems else 0
    for step in (lambda: extract(TEMPLATE), update, compile_all):
        if step() != 0:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
