"""What the audit, user-activity and supply-overview reports say about a study
whose week is known by heart, and how every report's filters narrow it.

The week (the demo study, its staff speaking English; IVRS_TODAY moves the
days): kits imported on 23 November (6 at site 101, 6 at 102, 48 at the
depot); 101 randomizes a subject on the 25th (kit confirmed on the 26th) and
another on the 28th (kit not confirmed); 102 receives a shipment of 2 on the
27th (1 damaged), randomizes a subject on the 28th and unblinds them; a
shipment of 4 leaves for 103 on the 28th; user 5003 locks themself out with
three wrong PINs, an administrator locks 5007 on the 29th. The reports are
read on the 30th.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import date

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text
from voice import demo_study_in_english

from core import append_only
from core.actors import ADMIN, Actor
from core.audit_reports import chain_notes
from core.errors import Refused
from core.login import sign_in
from core.models import Arm, AuditEvent, Randomization, Study, Subject
from core.randomize import randomize
from core.report_registry import SPECS
from core.signatures import sign
from core.subjects import screen_subject
from core.supply.confirmation import confirm_kit
from core.models import Kit, KitType, Shipment
from core.supply.overview import SERIES, stock_chart
from core.supply.receipt import receive_shipment
from core.supply.shipments import dispatch_shipment, request_shipment
from core.unblinding import unblind
from core.users import set_locked
from ivrs.main import main

PARIS = Actor(role="site_coordinator", user_code="5001", site_codes=frozenset({"101"}),
              channel="voice")
BARCELONA = Actor(role="investigator", user_code="5002", site_codes=frozenset({"102"}),
                  channel="voice")
DEPOT = Actor(role="depot_manager", user_code="7001", channel="voice")
ELIGIBLE = {"INC1": True, "INC2": True, "EXC1": True}
WOMAN_UNDER_65 = {"SEX": "F", "AGE": "LT65"}
DAYS = [date(2026, 11, day) for day in range(23, 31)]


def on(monkeypatch, day: int) -> None:
    monkeypatch.setenv("IVRS_TODAY", f"2026-11-{day:02d}")


def randomized(db, actor: Actor, site: str) -> tuple[str, list[str]]:
    subject = screen_subject(db, site_code=site, actor=actor).subject_number
    result = randomize(db, subject_number=subject, actor=actor, eligibility=ELIGIBLE,
                       factors=WOMAN_UNDER_65)
    return subject, list(result.kits)


def shipment_kits(db, number: str) -> list[str]:
    with db.sessions() as session:
        return list(session.scalars(
            select(Kit.kit_number).join(Shipment, Shipment.id == Kit.shipment_id)
            .where(Shipment.shipment_number == number).order_by(Kit.kit_number)))


def shipped(db, site: str, per_type: int) -> str:
    number = request_shipment(db, site_code=site, kits_per_type=per_type,
                              actor=ADMIN).shipment_number
    dispatch_shipment(db, shipment_number=number, carrier="DHL", tracking_number=f"T{number}",
                      actor=DEPOT)
    return number


@pytest.fixture
def week(db, tmp_path, monkeypatch):
    on(monkeypatch, 23)
    demo_study_in_english(db, tmp_path)
    sign_in(db, user_code="5001", pin="2468", channel="voice")
    for _ in range(3):
        with pytest.raises(Refused):
            sign_in(db, user_code="5003", pin="0000", channel="sms")
    on(monkeypatch, 25)
    sign_in(db, user_code="5001", pin="2468", channel="voice")
    first, (first_kit,) = randomized(db, PARIS, "101")
    on(monkeypatch, 26)
    sign_in(db, user_code="5001", pin="2468", channel="sms")
    confirm_kit(db, kit_number=first_kit, actor=PARIS)
    to_102 = shipped(db, "102", 1)
    on(monkeypatch, 27)
    damaged = shipment_kits(db, to_102)[0]
    receive_shipment(db, shipment_number=to_102, actor=BARCELONA, damaged=[damaged])
    on(monkeypatch, 28)
    second, _ = randomized(db, BARCELONA, "102")
    signature = sign(db, user_code="5002", pin="1357", actor=BARCELONA,
                     meaning=f"emergency unblinding of subject {second}")
    unblind(db, subject_number=second, reason="medical_emergency", signature=signature,
            actor=BARCELONA)
    third, _ = randomized(db, PARIS, "101")
    shipped(db, "103", 2)
    on(monkeypatch, 29)
    set_locked(db, user_code="5007", locked=True, actor=ADMIN, reason="left the site")
    on(monkeypatch, 30)
    return {"subjects": (first, second, third), "first_kit": first_kit}


def read(db, name: str, blinded: bool = True, **filters) -> list[dict[str, str]]:
    """The report as its CSV reads back."""
    with db.sessions() as session:
        study = session.scalars(select(Study)).one()
        columns, rows = SPECS[name].build(session, study, blinded, **filters)
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([columns, *rows])
    return list(csv.DictReader(io.StringIO(out.getvalue())))


def notes(db) -> list[str]:
    with db.sessions() as session:
        return chain_notes(session, session.scalars(select(Study)).one())


def secrets(db) -> tuple[list[str], list[str]]:
    """(arm names and kit type codes, arm codes) of the study."""
    with db.sessions() as session:
        arms = session.execute(select(Arm.code, Arm.name)).all()
        kit_types = list(session.scalars(select(KitType.code)))
    return [name for _, name in arms] + kit_types, [code for code, _ in arms]


# --- audit ------------------------------------------------------------------------------------


def test_the_audit_report_is_the_chain_in_order_blinded_by_default(db, week):
    with db.sessions() as session:
        stored = session.execute(select(AuditEvent.seq, AuditEvent.hash)
                                 .order_by(AuditEvent.seq)).all()
        arm_of_subject = dict(session.execute(
            select(Subject.subject_number, Arm.code)
            .join(Randomization, Randomization.subject_id == Subject.id)
            .join(Arm, Arm.id == Randomization.arm_id)).all())
    rows = read(db, "audit")
    assert [int(row["seq"]) for row in rows] == [seq for seq, _ in stored]
    assert list(rows[0]) == ["seq", "at", "actor", "action", "entity_type", "entity_id",
                             "reason", "old", "new", "confirmation"]  # no hash: see below
    randomizations = [row for row in rows if row["action"] == "subject_randomized"]
    assert len(randomizations) == 3
    assert all(json.loads(row["new"])["arm"] == "(blinded)" for row in randomizations)
    assert {row["entity_id"] for row in rows if row["entity_type"] in ("arm", "kit_type")} \
        == {"(blinded)"}
    assert json.loads(next(row["new"] for row in rows if row["action"] == "subject_unblinded")
                      )["arm"] == "(blinded)"
    words, codes = secrets(db)
    everything = "\n".join(",".join(row.values()) for row in rows)
    assert [word for word in words if re.search(rf"\b{re.escape(word)}\b", everything)] == []
    assert not [code for code in codes if f'"{code}"' in everything]
    signed_in = next(row for row in rows if row["action"] == "signed_in")
    assert (signed_in["actor"], json.loads(signed_in["new"])) == ("user:5001",
                                                                   {"channel": "voice"})
    assert signed_in["at"].startswith("2026-11-23T") and signed_in["at"].endswith("Z")
    assert re.fullmatch(r"\d{6}", signed_in["confirmation"])

    unblinded = read(db, "audit", blinded=False)
    assert [row["hash"] for row in unblinded] == [digest for _, digest in stored]
    arms = {row["entity_id"]: json.loads(row["new"])["arm"] for row in unblinded
            if row["action"] == "subject_randomized"}
    assert arms == {subject: arm_of_subject[subject] for subject in week["subjects"]}
    assert "KA" in {row["entity_id"] for row in unblinded if row["entity_type"] == "kit_type"}


def test_the_header_says_whether_the_chain_is_intact(db, week):
    with db.sessions() as session:
        count = session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
    assert notes(db) == [f"Audit chain verified: intact, {count} rows"]
    assert SPECS["audit"].notes is chain_notes and SPECS["user-activity"].notes is chain_notes

    with db.engine.begin() as conn:  # a DBA drops the triggers and edits a row
        for statement in append_only.drop_statements(db.engine.dialect.name):
            conn.execute(text(statement))
        conn.execute(text("UPDATE audit_events SET reason = 'tampered' WHERE seq = 7"))
    (note,) = notes(db)
    assert note.startswith("Audit chain BROKEN at row 7 (audit row id ")
    assert "content altered (hash mismatch)" in note and f"{count} rows" in note


# --- user activity ----------------------------------------------------------------------------


def test_user_activity_counts_what_each_user_did(db, week):
    rows = {row["actor"]: row for row in read(db, "user-activity")}
    with db.sessions() as session:
        audit_rows = dict(session.execute(select(AuditEvent.actor, func.count())
                                          .group_by(AuditEvent.actor)).all())
    paris = rows["user:5001"]
    assert (paris["user_code"], paris["name"], paris["role"], paris["sites"]) == (
        "5001", "Marie Curie", "site_coordinator", "101")
    assert {key: paris[key] for key in ("sign_ins", "sign_ins_voice", "sign_ins_sms",
                                        "failed_pins", "lockouts", "signatures")} == {
        "sign_ins": "3", "sign_ins_voice": "2", "sign_ins_sms": "1", "failed_pins": "0",
        "lockouts": "0", "signatures": "0"}
    # three sign-ins, two screenings, two randomizations, one confirmation
    assert paris["transactions"] == "8"
    assert paris["audit_rows"] == str(audit_rows["user:5001"])
    assert paris["first_activity"].startswith("2026-11-23T")
    assert paris["last_activity"].startswith("2026-11-28T")

    berlin = rows["user:5003"]
    assert (berlin["failed_pins"], berlin["lockouts"], berlin["locked"],
            berlin["sign_ins"]) == ("3", "1", "yes", "0")
    barcelona = rows["user:5002"]
    # a receipt, a screening, a randomization, a signature, an unblinding
    assert (barcelona["signatures"], barcelona["transactions"]) == ("1", "5")
    pasteur = rows["user:5007"]  # locked by an administrator, never did anything
    assert (pasteur["lockouts"], pasteur["locked"], pasteur["audit_rows"],
            pasteur["first_activity"]) == ("1", "yes", "0", "")
    assert rows["user:7001"]["transactions"] == "2"  # two dispatches
    assert rows["user:5004"]["role"] == "unblinded_statistician"
    # actors that are not users come after the users: the loader, the administrator
    assert list(rows)[-2:] == ["cli", "cli:admin"]
    assert rows["cli:admin"]["audit_rows"] == str(audit_rows["cli:admin"])
    assert read(db, "user-activity", blinded=False) == list(rows.values())


def test_user_activity_over_a_day(db, week):
    rows = {row["actor"]: row for row in read(db, "user-activity", start=date(2026, 11, 26),
                                              end=date(2026, 11, 26))}
    paris = rows["user:5001"]
    assert (paris["sign_ins"], paris["sign_ins_sms"], paris["transactions"]) == ("1", "1", "2")
    assert paris["first_activity"].startswith("2026-11-26T")
    assert rows["user:5003"]["failed_pins"] == "0"
    assert rows["user:5007"]["lockouts"] == "0"  # locked on the 29th


# --- supply overview --------------------------------------------------------------------------

NUMBERS = ("available", "assigned", "dispensed", "quarantined", "damaged", "in_transit",
           "dispensable", "used_last_28_days", "days_of_cover")


def test_the_supply_overview_counts_each_sites_stock_and_cover(db, week):
    rows = {row["site"]: {key: row[key] for key in NUMBERS} for row in read(db, "supply-overview")}
    assert rows == {
        # 6 imported, 2 given (one confirmed): 4 last 28 / 2 a day ... 4 * 28 // 2 = 56 days
        "101": dict(zip(NUMBERS, ("4", "1", "1", "0", "0", "0", "4", "2", "56"))),
        # 6 imported + 1 received (1 damaged), 1 given: 6 * 28 // 1
        "102": dict(zip(NUMBERS, ("6", "1", "0", "0", "1", "0", "6", "1", "168"))),
        # 4 on their way, nothing on the shelf: no cover
        "103": dict(zip(NUMBERS, ("0", "0", "0", "0", "0", "4", "0", "0", "0"))),
    }
    unblinded = read(db, "supply-overview", blinded=False)
    assert list(unblinded[0])[-1] == "kit_type"
    assert len(unblinded) == 6  # 3 sites x 2 kit types
    for site, numbers in rows.items():
        for key in NUMBERS[:-1]:
            assert sum(int(row[key]) for row in unblinded if row["site"] == site) \
                == int(numbers[key])
    with db.sessions() as session:
        kit_type = session.execute(
            select(KitType.code).join(Kit, Kit.kit_type_id == KitType.id)
            .where(Kit.kit_number == week["first_kit"])).scalar_one()
    first_kit_row = next(row for row in unblinded
                         if row["site"] == "101" and row["dispensed"] == "1")
    assert first_kit_row["kit_type"] == kit_type


def test_days_of_cover_is_infinite_without_use(db, tmp_path, monkeypatch):
    on(monkeypatch, 23)
    demo_study_in_english(db, tmp_path)
    rows = read(db, "supply-overview")
    assert [(row["site"], row["available"], row["days_of_cover"]) for row in rows] == [
        ("101", "6", "∞"), ("102", "6", "∞"), ("103", "0", "0")]


def chart_of(db, blinded: bool = True, **filters):
    with db.sessions() as session:
        return stock_chart(session, session.scalars(select(Study)).one(), blinded, **filters)


def test_the_chart_replays_each_sites_stock_day_by_day(db, week):
    chart = chart_of(db)
    assert [panel.title.split()[0] for panel in chart.panels] == ["101", "102", "103"]
    lines = {(panel.title.split()[0], series.label): series.points
             for panel in chart.panels for series in panel.series}
    assert {label for _, label in lines} == set(SERIES)
    for points in lines.values():
        assert [day for day, _ in points] == DAYS

    def counts(site, label):
        return [int(count) for _, count in lines[(site, label)]]

    #                                              23 24 25 26 27 28 29 30
    assert counts("101", "available") == [6, 6, 5, 5, 5, 4, 4, 4]
    assert counts("101", "awaiting confirmation") == [0, 0, 1, 0, 0, 1, 1, 1]
    assert counts("102", "available") == [6, 6, 6, 6, 7, 6, 6, 6]
    assert counts("102", "in transit") == [0, 0, 0, 2, 0, 0, 0, 0]
    assert counts("102", "expired or damaged") == [0, 0, 0, 0, 1, 1, 1, 1]
    assert counts("103", "in transit") == [0, 0, 0, 0, 0, 4, 4, 4]
    assert counts("103", "available") == [0] * 8
    # the last day is today's stock, as the table counts it
    table = {row["site"]: row for row in read(db, "supply-overview")}
    for site, row in table.items():
        assert counts(site, "available")[-1] == int(row["available"])
        assert counts(site, "in transit")[-1] == int(row["in_transit"])
        assert counts(site, "awaiting confirmation")[-1] == int(row["assigned"])
    notes_of = {panel.title.split()[0]: panel.note for panel in chart.panels}
    assert notes_of["101"] == "days of cover: 56 (4 dispensable, 2 used in the last 28 days)"
    assert notes_of["103"].startswith("days of cover: 0 ")

    unblinded = chart_of(db, blinded=False)
    assert [panel.series for panel in unblinded.panels] == [panel.series
                                                           for panel in chart.panels]
    assert "by kit type: KA " in unblinded.panels[0].note
    assert not any("KA" in panel.note or "KP" in panel.note for panel in chart.panels)


def test_the_chart_takes_a_site_and_a_range(db, week):
    chart = chart_of(db, site="102", start=date(2026, 11, 26), end=date(2026, 11, 28))
    (panel,) = chart.panels
    assert panel.title.startswith("102 ")
    available = next(series for series in panel.series if series.label == "available")
    assert available.points == [(date(2026, 11, 26), 6.0), (date(2026, 11, 27), 7.0),
                                (date(2026, 11, 28), 6.0)]


# --- filters ----------------------------------------------------------------------------------

SITE_COLUMN = {"subjects": "site", "randomization": "site", "dispensing": "site",
               "kits": "location", "site-inventory": "site", "shipments": "destination",
               "unconfirmed-kits": "site", "unblinding": "site", "supply-overview": "site"}
DATE_COLUMN = {"subjects": "screened_at", "randomization": "randomized_at",
               "dispensing": "dispensed_at", "shipments": "created_at",
               "unblinding": "requested_at", "audit": "at"}


def test_every_site_filter_keeps_that_sites_rows(db, week):
    for name, column in SITE_COLUMN.items():
        assert "site" in SPECS[name].filters, name
        everything = read(db, name)
        kept = []
        for site in ("101", "102", "103"):
            expected = [row for row in everything if row[column] == site]
            assert read(db, name, site=site) == expected, (name, site)
            kept.append(len(expected))
        assert everything and min(kept) < len(everything) and max(kept) > 0, name


def test_every_date_filter_keeps_the_days_asked_for(db, week):
    for name, column in DATE_COLUMN.items():
        assert {"start", "end"} <= SPECS[name].filters, name
        everything = read(db, name)
        kept = []
        for start, end in ((date(2026, 11, 28), date(2026, 11, 28)),
                           (date(2026, 11, 26), None), (None, date(2026, 11, 25))):
            expected = [row for row in everything
                        if (start is None or date.fromisoformat(row[column][:10]) >= start)
                        and (end is None or date.fromisoformat(row[column][:10]) <= end)]
            assert read(db, name, start=start, end=end) == expected, (name, start, end)
            kept.append(len(expected))
        assert everything and min(kept) < len(everything) and max(kept) > 0, name


def test_filters_are_declared_where_they_make_sense():
    assert SPECS["depot-inventory"].filters == frozenset()
    assert SPECS["audit"].filters == SPECS["user-activity"].filters == {"start", "end"}
    assert SPECS["supply-overview"].filters == {"site"}
    assert SPECS["supply-overview"].chart is stock_chart


def test_the_cli_writes_the_new_reports_and_refuses_filters_they_do_not_take(
        db, week, database_env):
    runner = CliRunner()
    result = runner.invoke(main, ["report", "audit", "--from", "2026-11-28", "--to",
                                  "2026-11-28"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows and {row["at"][:10] for row in rows} == {"2026-11-28"}
    result = runner.invoke(main, ["report", "supply-overview", "--site", "103"])
    assert result.exit_code == 0, result.output
    assert [row["site"] for row in csv.DictReader(io.StringIO(result.stdout))] == ["103"]
    for args, refused in ((["audit", "--site", "101"], "--site"),
                          (["user-activity", "--site", "101"], "--site"),
                          (["supply-overview", "--from", "2026-11-01"], "--from"),
                          (["depot-inventory", "--site", "101", "--to", "2026-11-30"],
                           "--to, --site"),
                          (["kits", "--to", "2026-11-30"], "--to")):
        result = runner.invoke(main, ["report", *args])
        assert result.exit_code == 1, args
        assert f"report {args[0]} takes no {refused}" in result.output, result.output
