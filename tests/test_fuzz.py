"""Fuzzing at the doors (issue 25), with hypothesis: signed SMS from registered
and unknown numbers with bodies from a broad alphabet (other scripts' digits,
control characters, emoji, markup, very long strings, commands with hostile
arguments), and the study and list loaders fed a real file with random edits.

The voice webhook's fuzzing is the state machine of ``test_voice_properties.py``
(random keys, hostile keys and forged step tokens at every state of every flow).

A CI run takes a bounded number of examples (``IVRS_FUZZ_EXAMPLES``, default 40,
derandomized under CI so that a red build replays); a longer run on demand:
``IVRS_FUZZ_EXAMPLES=2000 python -m pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from importlib.resources import files

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from voice import BARCELONA, DEPOT, PARIS, UNKNOWN

from core.audit import verify
from core.errors import FileErrors
from core.models import Base, Study
from core.mrl import import_mrl
from core.study_loader import load_study
from ivrs.demo.scenario import write_demo_mrl

EXAMPLES = int(os.environ.get("IVRS_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=bool(os.environ.get("CI")),
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.filter_too_much])
PINS = {"2468", "1357", "8642", "1122"}
# Tables a message may change without acting on the trial: a failed PIN counts on
# the user row and is audited; LANG sets the user's language.
SIGN_IN_TABLES = {"users", "audit_events", "audit_heads", "idempotency_records"}

ALPHABET = st.characters(codec="utf-8", exclude_characters="\r")
hostile_text = st.one_of(
    st.text(ALPHABET, max_size=40),
    st.text(ALPHABET, min_size=1000, max_size=1700),  # beyond one message
    st.sampled_from(["٤٥٦", "４５６", "४५६", "²³", "\x00", "\x1b[2J", "\ufffe", "\u202e",
                     "<Say>x</Say>", "]]>", "&amp;", "%s%n", "'; DROP TABLE users;--",
                     "😀" * 30]),
)
commands = st.sampled_from(["", "KIT ", "LANG ", "RECV ", "DISP ", "STATUS ", "STOCK ", "HELP ",
                            "APPROVE ", "REJECT 1 ", "DAMAGED ", "STOP ", "START "])
bodies = st.lists(st.builds(lambda c, t: c + t, commands, hostile_text), min_size=1,
                  max_size=4).filter(lambda messages: not any(m.strip() in PINS for m in messages))


def trial_content(db) -> dict[str, list]:
    with db.reads() as session:
        return {name: sorted(map(repr, session.execute(select(table)).all()))
                for name, table in Base.metadata.tables.items() if name not in SIGN_IN_TABLES}


def audit_intact(db) -> bool:
    with db.sessions() as session:  # verify streams the chain: a transaction, not a read
        return all(verify(session, study_id) is None
                   for study_id in session.scalars(select(Study.id)))


def test_sms_fuzz_answers_valid_twiml_and_changes_no_trial_data(voice):
    before = trial_content(voice.db)

    ran = []

    @FUZZ
    @given(sender=st.sampled_from([PARIS, BARCELONA, DEPOT, UNKNOWN]), messages=bodies)
    def messages_from(sender, messages):
        ran.append(len(messages))
        texter = voice.texter(sender)
        for body in messages:
            reply = texter.send(body)
            assert reply.status == 200, reply
            root = ET.fromstring(reply.xml)
            assert root.tag == "Response" and all(child.tag == "Message" for child in root), \
                reply.xml
            assert len(root) <= 1 and all(len(child) == 0 for child in root), reply.xml
            assert "went wrong on our side" not in reply.text, (body, reply.text)

    messages_from()
    print(f"SMS fuzz: {len(ran)} examples, {sum(ran)} messages")
    assert trial_content(voice.db) == before
    assert audit_intact(voice.db)


# --- the loaders -----------------------------------------------------------------------------

STUDY_LINES = files("ivrs.demo").joinpath("data", "study.yaml").read_text("utf-8").splitlines()
def edits(lines: list[str]):
    """Up to three random edits of a file's lines (line, and the text it brings)."""
    return st.lists(st.tuples(st.sampled_from(["delete", "replace", "insert", "duplicate", "cut"]),
                              st.integers(min_value=0, max_value=len(lines) - 1),
                              st.text(ALPHABET, max_size=30)),
                    min_size=1, max_size=3)


def edited(lines: list[str], changes) -> str:
    lines = list(lines)
    for action, index, text in changes:
        index = min(index, len(lines) - 1) if lines else 0
        if not lines:
            lines = [text]
        elif action == "delete":
            del lines[index]
        elif action == "replace":
            lines[index] = text
        elif action == "insert":
            lines.insert(index, text)
        elif action == "duplicate":
            lines.insert(index, lines[index])
        else:  # cut the line somewhere, as a bad copy and paste would
            lines[index] = lines[index][:len(text)]
    return "\n".join(lines) + "\n"


def assert_clear(errors: FileErrors, name: str) -> None:
    assert errors.errors, "FileErrors without an error"
    for error in errors.errors:
        assert error.file.endswith(name) and error.message.strip(), str(error)
        # The line where the file has lines to name; the field where one is at fault.
        assert error.line is not None or error.field is not None \
            or "empty" in error.message or "encoding" in error.message.lower() \
            or "UTF-8" in error.message, str(error)


def fuzz_loader(label: str, path, lines: list[str], load) -> None:
    """``load(path)`` on ``path`` holding ``lines`` with random edits: it loads or
    raises FileErrors that name line and field, never anything else."""
    ran = []

    @FUZZ
    @given(changes=edits(lines))
    def load_edited(changes):
        ran.append(changes)
        path.write_text(edited(lines, changes), encoding="utf-8")
        try:
            load(path)
        except FileErrors as errors:
            assert_clear(errors, path.name)

    load_edited()
    print(f"{label} fuzz: {len(ran)} examples")


def test_a_study_file_with_random_edits_loads_or_names_line_and_field(db, tmp_path):
    fuzz_loader("study file", tmp_path / "study.yaml", STUDY_LINES, lambda p: load_study(db, p))
    assert audit_intact(db)


def test_a_list_with_random_edits_imports_or_names_line_and_field(db, tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text("\n".join(STUDY_LINES) + "\n", encoding="utf-8")
    load_study(db, study)
    mrl = tmp_path / "mrl.csv"
    write_demo_mrl(mrl, per_stratum=4)
    lines = mrl.read_text(encoding="utf-8").splitlines()
    fuzz_loader("list", mrl, lines, lambda p: import_mrl(db, p))
    assert audit_intact(db)
