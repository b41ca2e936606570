"""Helpers for tests that load the example study (tests/data) or variants of it."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from core.models import Base

DATA = Path(__file__).parent / "data"
STUDY_YAML = DATA / "study.yaml"
MRL_CSV = DATA / "mrl.csv"


def study_text() -> str:
    return STUDY_YAML.read_text(encoding="utf-8")


def edited(text: str, *replacements: tuple[str, str]) -> str:
    """``text`` with each (old, new) replaced once; old must be there (tests stay honest)."""
    for old, new in replacements:
        assert old in text, f"not in the example file: {old!r}"
        text = text.replace(old, new, 1)
    return text


def write_study(tmp_path: Path, *replacements: tuple[str, str], text: str | None = None,
                name: str = "study.yaml") -> Path:
    """The example study with some lines changed, as a file."""
    path = tmp_path / name
    path.write_text(edited(study_text() if text is None else text, *replacements),
                    encoding="utf-8")
    return path


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the first occurrence of ``needle``."""
    index = text.index(needle)
    return text.count("\n", 0, index) + 1


def snapshot(db) -> dict[str, list[tuple]]:
    """Every row of every table, to show that a rejected file changed nothing."""
    with db.engine.connect() as connection:
        return {
            table.name: sorted((tuple(row) for row in connection.execute(select(table))), key=repr)
            for table in Base.metadata.sorted_tables
        }
