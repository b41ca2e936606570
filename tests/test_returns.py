"""Returns end to end: a subject hands kits back, the site declares a return, the
project manager approves (never their own), the depot receives and destroys.
Role checks, illegal moves (nothing changed), blinding, the CLI."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from datetime import date

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from studyfiles import DATA, MRL_CSV, STUDY_YAML, signed, snapshot

from core.actors import ADMIN, Actor, actor_for_user
from core.audit import AuditLog, blinded, verify
from core.errors import NotFound, Refused
from core.models import AuditEvent, Depot, Site, Study
from core.mrl import import_mrl
from core.randomize import randomize
from core.study_loader import load_study
from core.subjects import screen_subject
from core.supply.kit_import import import_kits
from core.supply.kits import apply_move
from core.models import Kit, KitReturn, Notification, ReturnKit
from core.supply.receipt import receive_shipment
from core.supply.returns import (
    approve_return,
    declare_return,
    destroy_kits,
    list_returns,
    receive_return,
    record_subject_return,
    reject_return,
)
from core.supply.shipments import dispatch_shipment, request_shipment

TODAY = date(2026, 1, 15)
YES = {"INC1": True, "INC2": True, "EXC1": True}
SECRETS = ("KA", "KP", "LA1", "LP1", "LA2", "LP2", "Drug", "Placebo", "'A'", "'P'")


@pytest.fixture(autouse=True)
def fixed_today(monkeypatch):
    monkeypatch.setenv("IVRS_TODAY", TODAY.isoformat())


def user(db, code: str) -> Actor:
    with db.sessions() as session:
        study_id = session.scalars(select(Study.id)).one()
        return actor_for_user(session, study_id, code, "test")


@pytest.fixture
def site101(db):
    """The example study; site 101 received 2 kits of each type (4 available); one
    subject randomized there holds one of them."""
    load_study(db, STUDY_YAML)
    import_mrl(db, MRL_CSV)
    import_kits(db, DATA / "kits.csv")
    number = request_shipment(db, site_code="101", kits_per_type=2,
                              actor=user(db, "5001")).shipment_number
    dispatch_shipment(db, shipment_number=number, carrier="DHL", tracking_number="T1",
                      actor=user(db, "7001"))
    receive_shipment(db, shipment_number=number, actor=user(db, "5001"))
    subject = screen_subject(db, site_code="101", actor=user(db, "5001")).subject_number
    result = randomize(db, subject_number=subject, actor=user(db, "5001"), eligibility=YES,
                       factors={"SEX": "M", "AGE": "LT65"})
    assert len(result.kits) == 1
    return db, subject, result.kits[0]


def kits_at(db, site: str, status: str = "available") -> list[str]:
    with db.sessions() as session:
        return list(session.scalars(
            select(Kit.kit_number).join(Site, Site.id == Kit.site_id)
            .where(Site.code == site, Kit.status == status).order_by(Kit.kit_number)))


def kit(db, number: str) -> Kit:
    with db.sessions() as session:
        return session.scalars(select(Kit).where(Kit.kit_number == number)).one()


def return_row(db, number: str) -> KitReturn:
    with db.sessions() as session:
        return session.scalars(select(KitReturn).where(
            KitReturn.return_number == number)).one()


def audit_rows(db, action: str) -> list[AuditEvent]:
    with db.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                    .order_by(AuditEvent.seq)))


def signatures(db) -> dict:
    return {code: signed(db, code) for code in ("5001", "5002", "5006", "7001", "9001")}


def notifications(db, kind: str) -> list[Notification]:
    with db.sessions() as session:
        return list(session.scalars(select(Notification).where(Notification.kind == kind)))


def assert_blind(result) -> None:
    text = repr(asdict(result))
    for secret in SECRETS:
        assert secret not in text, secret


def chain_ok(db) -> None:
    with db.sessions() as session:
        assert verify(session, session.scalars(select(Study.id)).one()) is None


def test_the_full_path_from_subject_to_destruction(site101):
    db, subject, subject_kit = site101
    unused = kits_at(db, "101")
    assert len(unused) >= 3

    handed_back = record_subject_return(db, subject_number=subject, kit_numbers=[subject_kit],
                                        actor=user(db, "5002"))
    assert handed_back.kits == [subject_kit] and handed_back.confirmation
    assert kit(db, subject_kit).status == "returned_by_subject"

    declared = declare_return(db, site_code="101", kit_numbers=[subject_kit, *unused[:2]],
                              reason="site close-out", actor=user(db, "5001"))
    assert_blind(declared)
    assert (declared.site, declared.depot, declared.status, declared.kits) == (
        "101", "90", "declared", 3)
    assert declared.return_number == str(700000 + return_row(db, declared.return_number).id)
    assert declared.kit_numbers == sorted([subject_kit, *unused[:2]])
    # kits stay where they are until the depot has them
    assert kit(db, unused[0]).status == "available"
    with db.sessions() as session:
        before = dict(session.execute(select(Kit.kit_number, ReturnKit.status_before)
                                      .join(ReturnKit, ReturnKit.kit_id == Kit.id)).all())
    assert before == {subject_kit: "returned_by_subject", unused[0]: "available",
                      unused[1]: "available"}
    (note,) = notifications(db, "return_declared")
    assert note.audience == "role:project_manager"
    assert note.params == {"return": declared.return_number, "site": "101", "count": 3}

    approved = approve_return(db, return_number=declared.return_number,
                              actor=user(db, "5006"),
                   signature=signed(db, "5006"))
    assert approved.status == "approved"
    row = return_row(db, declared.return_number)
    assert (row.decided_by, row.declared_by) == ("user:5006", "user:5001")
    (note,) = notifications(db, "return_approved")
    assert note.audience == "site:101" and note.params["count"] == 3

    received = receive_return(db, return_number=declared.return_number,
                              actor=user(db, "7001"))
    assert (received.status, received.kits) == ("received", 3)
    with db.sessions() as session:
        depot_id = session.scalars(select(Depot.id).where(Depot.code == "90")).one()
    back = kit(db, subject_kit)
    assert (back.status, back.site_id, back.depot_id) == ("returned_to_depot", None, depot_id)
    assert back.subject_id is not None  # accountability: who had it
    assert kit(db, unused[2]).status == "available"  # not in the return

    destroyed = destroy_kits(db, return_number=declared.return_number, reason="incinerated",
                             actor=user(db, "7001"))
    assert_blind(destroyed)
    assert destroyed.kits == 3 and destroyed.returns_closed == [declared.return_number]
    assert {kit(db, n).status for n in declared.kit_numbers} == {"destroyed"}
    assert return_row(db, declared.return_number).status == "destroyed"

    actions = [e.action for e in audit_rows(db, "return_declared") + audit_rows(
        db, "return_approved") + audit_rows(db, "return_received") + audit_rows(
        db, "return_destroyed")]
    assert actions == ["return_declared", "return_approved", "return_received",
                       "return_destroyed"]
    (declared_audit,) = audit_rows(db, "return_declared")
    assert declared_audit.actor == "user:5001" and declared_audit.reason == "site close-out"
    assert declared_audit.new["kits"] == declared.kit_numbers
    assert sum(declared_audit.new["kit_type"].values()) == 3
    assert blinded(declared_audit.new)["kit_type"] == "(blinded)"
    assert len(audit_rows(db, "kit_receive_return")) == 3
    assert len(audit_rows(db, "kit_destroy")) == 3
    assert all(e.reason == "incinerated" for e in audit_rows(db, "kit_destroy"))
    chain_ok(db)
    with db.sessions() as session:
        study_id = session.scalars(select(Study.id)).one()
        (listed,) = list_returns(session, study_id)
    assert (listed.return_number, listed.status, listed.kits) == (
        declared.return_number, "destroyed", 3)


def test_roles_are_checked_and_refusals_change_nothing(site101):
    db, subject, subject_kit = site101
    sig = signatures(db)  # signed before the snapshots: signing is audited
    unused = kits_at(db, "101")
    before = snapshot(db)
    with pytest.raises(Refused, match="role project_manager may not"):
        declare_return(db, site_code="101", kit_numbers=unused[:1], reason="r",
                       actor=user(db, "5006"))
    with pytest.raises(Refused, match="role depot_manager may not"):
        declare_return(db, site_code="101", kit_numbers=unused[:1], reason="r",
                       actor=user(db, "7001"))
    with pytest.raises(Refused, match="not one of your sites"):
        declare_return(db, site_code="101", kit_numbers=unused[:1], reason="r",
                       actor=user(db, "5003"))
    with pytest.raises(Refused, match="not one of your sites"):
        record_subject_return(db, subject_number=subject, kit_numbers=[subject_kit],
                              actor=user(db, "5005"))
    with pytest.raises(Refused, match="reason is required"):
        declare_return(db, site_code="101", kit_numbers=unused[:1], reason=" ",
                       actor=user(db, "5001"))
    assert snapshot(db) == before

    number = declare_return(db, site_code="101", kit_numbers=unused[:1], reason="r",
                            actor=user(db, "5001")).return_number
    before = snapshot(db)
    with pytest.raises(Refused, match="role site_coordinator may not approve"):
        approve_return(db, return_number=number, actor=user(db, "5001"), signature=sig["5001"])
    with pytest.raises(Refused, match="role investigator may not reject"):
        reject_return(db, return_number=number, reason="no", actor=user(db, "5002"), signature=sig["5002"])
    with pytest.raises(Refused, match="role depot_manager may not approve"):
        approve_return(db, return_number=number, actor=user(db, "7001"), signature=sig["7001"])
    with pytest.raises(Refused, match="role project_manager may not receive"):
        receive_return(db, return_number=number, actor=user(db, "5006"))
    with pytest.raises(Refused, match="role site_coordinator may not destroy"):
        destroy_kits(db, return_number=number, actor=user(db, "5001"))
    assert snapshot(db) == before


def test_only_a_signing_project_manager_decides_a_return(site101):
    db, _, _ = site101
    sig = signatures(db)  # signed before the snapshots: signing is audited
    unused = kits_at(db, "101")
    admin = Actor(role="admin", user_code="9001")
    # a signed-in administrator acts at no site (only the CLI operator has every power)
    with pytest.raises(Refused, match="role admin may not declare returns"):
        declare_return(db, site_code="101", kit_numbers=unused[:1], reason="r", actor=admin)
    number = declare_return(db, site_code="101", kit_numbers=unused[:1], reason="r",
                            actor=user(db, "5001")).return_number
    before = snapshot(db)
    # the console administrator is no approver, signed or not
    with pytest.raises(Refused, match="role admin may not approve return requests"):
        approve_return(db, return_number=number, actor=admin, signature=sig["9001"])
    pm = user(db, "5006")
    with pytest.raises(Refused, match="must be signed") as refused:
        approve_return(db, return_number=number, actor=pm, signature=None)
    assert refused.value.code == "signature_required"
    with pytest.raises(Refused, match="signed by the user who takes it"):
        approve_return(db, return_number=number, actor=pm, signature=sig["5001"])
    assert snapshot(db) == before
    result = approve_return(db, return_number=number, actor=pm, signature=sig["5006"])
    assert result.status == "approved"
    (decision,) = audit_rows(db, "approval_approved")
    assert decision.new["signature"]["signer"] == "user:5006 Pat Manager"


def test_illegal_moves_are_refused_with_nothing_changed(site101):
    db, subject, subject_kit = site101
    sig = signatures(db)  # signed before the snapshots: signing is audited
    unused = kits_at(db, "101")
    before = snapshot(db)
    # a dispensed/assigned kit cannot be declared until the subject returned it
    with pytest.raises(Refused, match=f"kit {subject_kit} is assigned to a subject: record"):
        declare_return(db, site_code="101", kit_numbers=[unused[0], subject_kit], reason="r",
                       actor=user(db, "5001"))
    # a kit that is not the subject's
    with pytest.raises(Refused, match=f"kit {unused[0]} is not a kit of subject"):
        record_subject_return(db, subject_number=subject, kit_numbers=[unused[0]],
                              actor=user(db, "5001"))
    # kits at the depot are not the site's
    with db.sessions() as session:
        depot_kit = session.scalars(select(Kit.kit_number).where(
            Kit.status == "at_depot").order_by(Kit.kit_number)).first()
    with pytest.raises(Refused, match=f"kit {depot_kit} is not at site 101"):
        declare_return(db, site_code="101", kit_numbers=[depot_kit], reason="r",
                       actor=user(db, "5001"))
    with pytest.raises(NotFound, match="no kit 999999"):
        declare_return(db, site_code="101", kit_numbers=["999999"], reason="r",
                       actor=user(db, "5001"))
    with pytest.raises(Refused, match="not a kit number"):
        declare_return(db, site_code="101", kit_numbers=["12a"], reason="r",
                       actor=user(db, "5001"))
    with pytest.raises(Refused, match="at least one kit"):
        declare_return(db, site_code="101", kit_numbers=[], reason="r", actor=user(db, "5001"))
    with pytest.raises(NotFound, match="no site 999"):
        declare_return(db, site_code="999", kit_numbers=unused[:1], reason="r", actor=ADMIN)
    with pytest.raises(NotFound, match="no return 700999"):
        approve_return(db, return_number="700999", actor=user(db, "5006"), signature=sig["5006"])
    # usable kits at the depot cannot be destroyed; site kits must be returned first
    with pytest.raises(Refused, match=f"kit {depot_kit} is at depot: it cannot be destroyed"):
        destroy_kits(db, kit_numbers=[depot_kit], actor=user(db, "7001"))
    with pytest.raises(Refused, match=f"kit {unused[0]} is not at a depot"):
        destroy_kits(db, kit_numbers=[unused[0]], actor=user(db, "7001"))
    with pytest.raises(Refused, match="either a return or kit numbers"):
        destroy_kits(db, actor=user(db, "7001"))
    assert snapshot(db) == before

    number = declare_return(db, site_code="101", kit_numbers=unused[:2], reason="r",
                            actor=user(db, "5001")).return_number
    before = snapshot(db)
    # out of order: receive / destroy before approval
    with pytest.raises(Refused, match=f"return {number} is declared: it cannot be received"):
        receive_return(db, return_number=number, actor=user(db, "7001"))
    with pytest.raises(Refused, match=f"return {number} is declared: it cannot be destroyed"):
        destroy_kits(db, return_number=number, actor=user(db, "7001"))
    # a kit in an open return cannot be declared twice
    with pytest.raises(Refused, match=f"kit {unused[1]} is already in return {number}"):
        declare_return(db, site_code="101", kit_numbers=[unused[1], unused[2]], reason="r",
                       actor=user(db, "5001"))
    assert snapshot(db) == before

    approve_return(db, return_number=number, actor=user(db, "5006"), signature=sig["5006"])
    before = snapshot(db)
    with pytest.raises(Refused, match="already in return"):
        declare_return(db, site_code="101", kit_numbers=[unused[0]], reason="r",
                       actor=user(db, "5001"))
    with pytest.raises(Refused, match=f"return request {number} is approved: it cannot be rejected now"):
        reject_return(db, return_number=number, reason="late", actor=user(db, "5006"), signature=sig["5006"])
    with pytest.raises(Refused, match=f"return {number} is approved: it cannot be destroyed"):
        destroy_kits(db, return_number=number, actor=user(db, "7001"))
    assert snapshot(db) == before


def test_a_rejected_return_leaves_the_kits_at_the_site(site101):
    db, _, _ = site101
    unused = kits_at(db, "101")
    number = declare_return(db, site_code="101", kit_numbers=unused[:2], reason="r",
                            actor=user(db, "5001")).return_number
    before_kits = {n: (kit(db, n).status, kit(db, n).site_id) for n in unused}
    result = reject_return(db, return_number=number, reason="still in date: keep using",
                           actor=user(db, "5006"),
                   signature=signed(db, "5006"))
    assert (result.status, result.kits) == ("rejected", 2)
    assert {n: (kit(db, n).status, kit(db, n).site_id) for n in unused} == before_kits
    (note,) = notifications(db, "return_rejected")
    assert note.audience == "site:101"
    assert note.params["reason"] == "still in date: keep using"
    before = snapshot(db)
    with pytest.raises(Refused, match="is rejected: it cannot be received"):
        receive_return(db, return_number=number, actor=user(db, "7001"))
    assert snapshot(db) == before
    # no longer open: the kits may be declared again
    again = declare_return(db, site_code="101", kit_numbers=unused[:1], reason="r2",
                           actor=user(db, "5001"))
    assert again.return_number != number and again.status == "declared"


def test_a_kit_used_after_the_declaration_blocks_approval(site101):
    db, _, _ = site101
    sig = signatures(db)  # signed before the snapshots: signing is audited
    unused = kits_at(db, "101")
    number = declare_return(db, site_code="101", kit_numbers=unused[:1], reason="r",
                            actor=user(db, "5001")).return_number
    _move(db, unused[0], "assign")  # e.g. dispensed meanwhile (the lifecycle allows it)
    before = snapshot(db)
    with pytest.raises(Refused, match=f"kit {unused[0]} of return {number} is now assigned"):
        approve_return(db, return_number=number, actor=user(db, "5006"), signature=sig["5006"])
    assert snapshot(db) == before


def _move(db, number: str, trigger: str) -> None:
    """A direct, audited kit move (what another service, e.g. the expiry job, does)."""
    with db.transaction() as session:
        row = session.scalars(select(Kit).where(Kit.kit_number == number)).one()
        audit = AuditLog(row.study_id, "test")
        apply_move(audit, row, trigger, reason="test")
        audit.seal(session)


def test_quarantined_and_damaged_kits_go_back_and_expired_depot_kits_are_destroyed(db):
    load_study(db, STUDY_YAML)
    import_kits(db, DATA / "kits.csv")
    number = request_shipment(db, site_code="102", kits_per_type=1,
                              actor=user(db, "5003")).shipment_number
    dispatch_shipment(db, shipment_number=number, carrier="DHL", tracking_number="T1",
                      actor=user(db, "7001"))
    receive_shipment(db, shipment_number=number, temperature_excursion=True,
                     actor=user(db, "5003"))
    quarantined = kits_at(db, "102", "quarantined")
    assert len(quarantined) == 2
    declared = declare_return(db, site_code="102", kit_numbers=quarantined,
                              reason="excursion", actor=user(db, "5005"))
    approve_return(db, return_number=declared.return_number, actor=user(db, "5006"),
                   signature=signed(db, "5006"))
    receive_return(db, return_number=declared.return_number, actor=user(db, "7001"))
    assert {kit(db, n).status for n in quarantined} == {"returned_to_depot"}
    # destroying by kit number: one kit, then the other closes the return
    first = destroy_kits(db, kit_numbers=quarantined[:1], actor=user(db, "7001"))
    assert first.returns_closed == []
    assert return_row(db, declared.return_number).status == "received"
    second = destroy_kits(db, kit_numbers=quarantined[1:], actor=user(db, "7001"),
                          reason="certificate 42")
    assert second.returns_closed == [declared.return_number]
    assert return_row(db, declared.return_number).status == "destroyed"
    # an expired kit at the depot: destroyed without any return
    with db.sessions() as session:
        depot_kit = session.scalars(select(Kit.kit_number).where(
            Kit.status == "at_depot").order_by(Kit.kit_number)).first()
    _move(db, depot_kit, "expire")
    result = destroy_kits(db, kit_numbers=[depot_kit], actor=ADMIN)
    assert result.kits == 1 and kit(db, depot_kit).status == "destroyed"
    chain_ok(db)


def test_retries_act_once(site101):
    db, subject, subject_kit = site101
    unused = kits_at(db, "101")
    coordinator = user(db, "5001")
    first = declare_return(db, site_code="101", kit_numbers=unused[:1], reason="r",
                           actor=coordinator, idempotency_key="k-declare")
    again = declare_return(db, site_code="101", kit_numbers=unused[:1], reason="r",
                           actor=coordinator, idempotency_key="k-declare")
    assert again == first
    approve_return(db, return_number=first.return_number, actor=user(db, "5006"), signature=signed(db, "5006"),
                   idempotency_key="k-approve")
    replay = approve_return(db, return_number=first.return_number, actor=user(db, "5006"), signature=signed(db, "5006"),
                            idempotency_key="k-approve")
    assert replay.status == "approved"
    assert len(notifications(db, "return_approved")) == 1
    with db.sessions() as session:
        assert len(session.scalars(select(KitReturn)).all()) == 1
    r1 = record_subject_return(db, subject_number=subject, kit_numbers=[subject_kit],
                               actor=coordinator, idempotency_key="k-subject")
    r2 = record_subject_return(db, subject_number=subject, kit_numbers=[subject_kit],
                               actor=coordinator, idempotency_key="k-subject")
    assert r1 == r2 and len(audit_rows(db, "kit_return_from_subject")) == 1


def test_audit_is_blind_outside_the_kit_type_key(site101):
    db, subject, subject_kit = site101
    record_subject_return(db, subject_number=subject, kit_numbers=[subject_kit],
                          actor=user(db, "5001"))
    number = declare_return(db, site_code="101", kit_numbers=[subject_kit, *kits_at(db, "101")],
                            reason="close-out", actor=user(db, "5001")).return_number
    approve_return(db, return_number=number, actor=user(db, "5006"),
                   signature=signed(db, "5006"))
    receive_return(db, return_number=number, actor=user(db, "7001"))
    destroy_kits(db, return_number=number, actor=user(db, "7001"))
    with db.sessions() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.entity_type.in_(
            ["return", "kit_destruction", "notification"]))).all()
        notes = session.scalars(select(Notification).where(
            Notification.kind.like("return_%"))).all()
    assert events
    for event in events:
        text = repr((blinded(event.old), blinded(event.new), event.reason))
        for secret in ("KA", "KP"):
            assert secret not in text, (event.action, text)
    for note in notes:
        for secret in ("KA", "KP"):
            assert secret not in repr(note.params)


def test_cli_returns(site101, database_env):
    db, _, _ = site101
    unused = kits_at(db, "101")
    runner = CliRunner()
    from ivrs.main import main

    def run(*args, pin="246810"):
        return runner.invoke(main, list(args), catch_exceptions=False, env={"IVRS_PIN": pin})

    result = run("returns", "declare", "--site", "101", "--kit", unused[0], "--kit", unused[1],
                 "--reason", "close-out")
    assert result.exit_code == 0, result.output
    assert "declared: 2 kits from site 101 to depot 90" in result.output
    cli_number = result.output.split()[1]
    # decisions are signed by a project manager at the approvals gate
    result = run("approvals", "list")
    assert result.exit_code == 0, result.output
    (listed,) = csv.DictReader(io.StringIO(result.output))
    assert (listed["number"], listed["kind"], listed["site"], listed["about"]) == (
        cli_number, "return", "101", "return of 2 kits to the depot")
    result = run("approvals", "approve", cli_number, "--user", "5001", pin="2468")
    assert result.exit_code == 1 and "role site_coordinator may not approve" in result.output
    result = run("approvals", "reject", cli_number, "--user", "5006",
                 "--reason", "declared by mistake")
    assert result.exit_code == 0, result.output
    assert f"return request {cli_number} rejected, signed by user:5006 Pat Manager" \
        in result.output

    number = declare_return(db, site_code="101", kit_numbers=unused[:2], reason="r",
                            actor=user(db, "5001")).return_number
    result = run("approvals", "approve", number, "--user", "5006")
    assert result.exit_code == 0, result.output
    for args, expected in (
            (("receive", number), "received: 2 kits at depot 90"),
            (("destroy", number, "--reason", "incinerated"),
             f"2 kits destroyed; return {number} closed")):
        result = run("returns", *args)
        assert result.exit_code == 0, result.output
        assert expected in result.output
    result = run("returns", "receive", number)
    assert result.exit_code == 1 and f"return {number} is destroyed" in result.output
    result = run("returns", "list")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [(r["return_number"], r["status"], r["kits"]) for r in rows] == [
        (number, "destroyed", "2"), (cli_number, "rejected", "2")]
    for secret in ("KA", "KP"):
        assert secret not in result.output
    result = run("returns", "list", "--status", "rejected")
    assert len(list(csv.DictReader(io.StringIO(result.output)))) == 1



def test_kits_declared_for_return_are_not_dispensed_or_counted(site101):
    """A kit the site has declared for return stays at the site but is out of use."""
    from sqlalchemy import func

    from core.supply.dispensing import pick_kits
    from core.supply.kits import not_in_open_return

    db, _, _ = site101
    declared = kits_at(db, "101")[0]
    declare_return(db, site_code="101", kit_numbers=[declared], reason="unused",
                   actor=user(db, "5001"))
    with db.sessions() as s:
        kit = s.scalars(select(Kit).where(Kit.kit_number == declared)).one()
        same_type = s.scalar(select(func.count()).select_from(Kit).where(
            Kit.site_id == kit.site_id, Kit.status == "available",
            Kit.kit_type_id == kit.kit_type_id))
        usable = s.scalar(select(func.count()).select_from(Kit).where(
            Kit.site_id == kit.site_id, Kit.status == "available",
            Kit.kit_type_id == kit.kit_type_id, not_in_open_return()))
        picked = pick_kits(s, kit.study_id, kit.site_id, kit.kit_type_id, 10, date(2000, 1, 1))
    assert usable == same_type - 1
    assert declared not in {k.kit_number for k in picked} and len(picked) == usable
