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


# The example study's PINs (tests/data/study.yaml): signatures type them again.
PINS = {"5001": "2468", "5002": "1357", "5003": "8642", "5004": "9753", "5005": "97531",
        "5006": "246810", "7001": "1122", "9001": "5566"}


def signed(db, user_code: str, meaning: str = "test signature", study: str | None = None):
    """A fresh signature of an example-study user (core.signatures.sign)."""
    from core.actors import actor_for_user
    from core.models import Study
    from core.signatures import sign

    with db.sessions() as session:
        query = select(Study.id) if study is None else select(Study.id).where(Study.code == study)
        actor = actor_for_user(session, session.scalars(query).one(), user_code, "test")
    return sign(db, user_code=user_code, pin=PINS[user_code], actor=actor, meaning=meaning,
                study=study)
