"""Blinding, scanned: everything a full demo run produces for people and logs.

The demo plays every kind of exchange (calls in three languages, SMS, the
supply job, an emergency unblinding) and prints the conversations, the SMS
queued and the blinded reports. This test collects all of that, every log line
at DEBUG, every notification rendered for each of its recipients (as an SMS
and as an e-mail's subject and body), and every
blinded report of SPEC §8, and finds no arm name or code, kit type or lot (lots
are per kit type) anywhere, except in the one answer the unblinding
investigator is given.
"""

from __future__ import annotations

import csv
import io
import logging
import re

from sqlalchemy import select

from core.deliveries import EMAIL, audience_users
from core.models import Arm, KitType, Notification, Randomization, Subject
from core.report_registry import REPORTS
from core.studies import get_study
from dialogs.output import Digits, Say
from ivrs.demo.scenario import run_demo
from ivrs.outbound.notify import render, render_for
from ivrs.render.speech import text

LOTS = ("LA1", "LP1")  # the demo kit list's lots: one per kit type


def secrets_of(db) -> tuple[list[str], list[str]]:
    """(words never to appear, codes never to appear as a value) of the demo study."""
    with db.sessions() as session:
        arms = session.execute(select(Arm.code, Arm.name)).all()
        kit_types = session.scalars(select(KitType.code)).all()
    return [name for _, name in arms] + list(kit_types) + list(LOTS), [code for code, _ in arms]


def permitted_answers(db) -> list[str]:
    """What the unblinding investigator hears: the arm of the subject unblinded, in
    the investigator's language (the demo's Barcelona call, in Spanish)."""
    with db.sessions() as session:
        rows = session.execute(
            select(Subject.subject_number, Arm.name)
            .join(Randomization, Randomization.subject_id == Subject.id)
            .join(Arm, Arm.id == Randomization.arm_id)
            .where(Subject.unblinded_at.is_not(None))).all()
    assert rows, "the demo unblinds a subject"
    return [text(Say("unblind.arm", {"subject": Digits(number), "arm": arm}), "es")
            for number, arm in rows]


def leaks(output: str, words: list[str], codes: list[str]) -> list[str]:
    found = [word for word in words if re.search(rf"(?<!\w){re.escape(word)}(?!\w)",
                                                 output, re.IGNORECASE)]
    for line in output.splitlines():
        # a code as a value: a CSV cell, or after "arm"/"treatment"/"=" or ":"
        cells = next(csv.reader(io.StringIO(line)), [])
        found += [f"{code} in {line!r}" for code in codes if code in cells]
        found += [f"{code} in {line!r}" for code in codes if re.search(
            rf"(?:\b[Aa]rm|\b[Tt]reatment|=|:)\s*['\"]?{re.escape(code)}['\"]?(?!\w)", line)]
    return found


def test_a_full_demo_run_shows_no_arm_outside_the_unblinding_answer(tmp_path, caplog,
                                                                    monkeypatch):
    monkeypatch.delenv("IVRS_TODAY", raising=False)
    caplog.set_level(logging.DEBUG)
    printed: list[str] = []
    db = run_demo(str(tmp_path / "demo"), echo=printed.append, interactive=False)
    words, codes = secrets_of(db)
    assert words and codes

    output = "\n".join(printed)
    answers = permitted_answers(db)
    for answer in answers:
        assert answer in output  # the investigator did hear it ...
        output = output.replace(answer, "")  # ... and nothing else may say it
    sources = {"printed": output,
               "logs": "\n".join(record.getMessage() for record in caplog.records)}
    with db.sessions() as session:
        study = get_study(session)
        rendered = []
        for notification in session.scalars(select(Notification)):
            for user in audience_users(session, study.id, notification.audience):
                rendered.append(render(notification, user))
                email = render_for(notification, user, EMAIL)  # as if they had an address
                rendered += [email.subject, email.body]
        sources["notifications"] = "\n".join(rendered)
        for name, report in REPORTS.items():
            columns, rows = report(session, study, True)
            buffer = io.StringIO()
            csv.writer(buffer).writerows([columns, *rows])
            sources[f"report {name}"] = buffer.getvalue()
    assert len(rendered) > 10 and "unblinded" in sources["notifications"]
    for source, content in sources.items():
        assert leaks(content, words, codes) == [], source
    # Nor is a PIN typed in the demo's calls ever printed (sign-in and signatures).
    for pin in ("2468", "1357", "8642", "3579"):
        assert f"you> {pin}" not in "\n".join(printed), pin


def test_the_scan_finds_an_arm_where_there_is_one():
    words, codes = ["Placebo", "KA"], ["A", "P"]
    assert leaks("Subject 1010001 receives: Placebo.", words, codes)
    assert leaks("site,kit_type\n101,KA", words, codes)
    assert leaks("subject,arm\n1010001,P", words, codes)
    assert leaks("randomized subject 1010001 (arm=A)", words, codes)
    assert leaks("A kit for subject 1010001. Press 1.", words, codes) == []
    assert leaks("Paris: a subject who is not eligible", words, codes) == []


def test_a_failed_statement_keeps_its_values_out_of_the_error(db):
    """A failing statement's exception, which a log's traceback prints, names no
    bound value: an arm being written to an audit row, say."""
    from sqlalchemy import text as sql
    from sqlalchemy.exc import DBAPIError

    try:
        with db.engine.connect() as connection:
            connection.execute(sql("SELECT * FROM no_such_table WHERE arm = :arm"),
                               {"arm": "Drug X 10 mg"})
    except DBAPIError as error:
        assert "Drug X" not in str(error) and "hidden" in str(error), str(error)
    else:
        raise AssertionError("the statement should have failed")
