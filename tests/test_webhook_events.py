"""The outbound event stream end to end (SPEC §10, "Events"): events written by
the real services in their own transactions, subscriptions, the signed
deliveries to a real HTTP receiver (tests/webhook_receiver.py), retries,
order, a killed sender, blinding, and ``ivrs webhooks``.

The example study (tests/data) in mode approval, so that every event type
happens: arm A "Drug 10 mg" (kits KA, lots LA1/LA2), arm P "Placebo" (KP,
LP1/LP2); tests/data/mrl.csv gives the first M/LT65 subject arm A, the next P.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from helpers import table_counts
from sqlalchemy import event as sa_event
from sqlalchemy import func, select
from studyfiles import DATA, MRL_CSV, signed, write_study
from webhook_receiver import Receiver

from core.actors import ADMIN, actor_for_user
from core.audit import UNBLINDED_KEYS, verify
from core.errors import IvrsError, NotFound, Refused
from core.event_deliveries import (
    STALE_AFTER,
    claim_next,
    expand_pending,
    record_delivered,
    record_retry,
)
from core.events import EVENT_TYPES
from core.gates import decide
from core.models import (
    Arm,
    AuditEvent,
    Event,
    EventDelivery,
    KitType,
    Lot,
    Study,
    WebhookSubscription,
)
from core.mrl import import_mrl
from core.randomize import randomize
from core.study_loader import load_study
from core.subjects import discontinue, record_screen_failure, screen_subject
from core.supply.confirmation import confirm_kit
from core.supply.dispensing import dispense, replace_kit
from core.supply.kit_import import import_kits
from core.supply.receipt import receive_shipment
from core.supply.shipments import dispatch_shipment, request_shipment
from core.unblinding import unblind
from core.users import set_locked
from core.webhook_subscriptions import add_subscription, remove_subscription, replay
from ivrs.main import main
from ivrs.outbound.webhooks import encode, headers, send_pending_webhooks

DAY0 = date(2026, 1, 15)
YES = {"INC1": True, "INC2": True, "EXC1": True}
M_LT65 = {"SEX": "M", "AGE": "LT65"}
TIMEOUT = 0.3  # the sender's HTTP timeout in these tests; the receiver's "slow" is longer
ROOT = Path(__file__).resolve().parents[1]
ALL_TYPES = ",".join(EVENT_TYPES)


@pytest.fixture(autouse=True)
def day0(monkeypatch):
    monkeypatch.setenv("IVRS_TODAY", DAY0.isoformat())


@pytest.fixture
def study(db, tmp_path):
    path = write_study(tmp_path, ("unblinding: {mode: investigator}",
                                  "unblinding: {mode: approval}"))
    load_study(db, path)
    import_mrl(db, MRL_CSV)
    import_kits(db, DATA / "kits.csv")  # site 101: 2 KA, 2 KP; the depot the rest
    return db


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def user(db, code: str):
    with db.sessions() as session:
        return actor_for_user(session, session.scalars(select(Study.id)).one(), code, "test")


def subscribe(db, receiver, path="/hook", events=ALL_TYPES, role=None):
    return add_subscription(db, url=receiver.url(path), event_types=events, role=role,
                            actor=ADMIN)


def events(db) -> list[Event]:
    with db.sessions() as session:
        return list(session.scalars(select(Event).order_by(Event.id)))


def deliveries(db) -> list[EventDelivery]:
    with db.sessions() as session:
        return list(session.scalars(select(EventDelivery).order_by(EventDelivery.id)))


def drain(db, start: datetime | None = None, step=timedelta(minutes=2), passes=60):
    """Passes of the sender, the queue's clock ``step`` further each time, until
    nothing waits; the last moment."""
    now = start or datetime.now(UTC)
    for _ in range(passes):
        send_pending_webhooks(db, now=now, timeout=TIMEOUT)
        if not [d for d in deliveries(db) if d.status in ("queued", "sending")]:
            return now
        now += step
    raise AssertionError(f"still waiting: {[(d.id, d.status) for d in deliveries(db)]}")


def enroll(db, coordinator, factors=M_LT65):
    subject = screen_subject(db, site_code="101", actor=coordinator).subject_number
    return randomize(db, subject_number=subject, actor=coordinator, eligibility=YES,
                     factors=factors)


def whole_trial(db, monkeypatch) -> dict[str, str]:
    """Every kind of event, through the services: two subjects randomized
    (arms A then P) with their first kits, a kit confirmed, one replaced, a
    screen failure, a shipment requested, dispatched and received, an
    unblinding requested, approved and done, a discontinuation and a later
    visit's kits. The subject numbers."""
    coordinator, investigator = user(db, "5001"), user(db, "5002")
    first, second = enroll(db, coordinator), enroll(db, coordinator)
    assert (first.arm, second.arm) == ("A", "P")
    confirm_kit(db, kit_number=first.kits[0], actor=coordinator)
    replace_kit(db, subject_number=second.subject_number, kit_number=second.kits[0],
                reason="damaged", actor=coordinator)
    third = screen_subject(db, site_code="101", actor=coordinator).subject_number
    record_screen_failure(db, subject_number=third, reason="consent withdrawn",
                          actor=coordinator)
    shipment = request_shipment(db, site_code="101", kits_per_type=2,
                                actor=coordinator).shipment_number
    dispatch_shipment(db, shipment_number=shipment, carrier="DHL", tracking_number="JD0001",
                      actor=user(db, "7001"))
    receive_shipment(db, shipment_number=shipment, actor=coordinator)
    request = unblind(db, subject_number=first.subject_number, reason="medical_emergency",
                      signature=signed(db, "5002", "unblind"), actor=investigator)
    decide(db, number=request.number, approve=True, actor=user(db, "5006"),
           signature=signed(db, "5006", "approve"))
    unblind(db, subject_number=first.subject_number, reason="medical_emergency",
            signature=signed(db, "5002", "unblind"), actor=investigator)
    discontinue(db, subject_number=first.subject_number, reason="unblinded",
                actor=coordinator)
    monkeypatch.setenv("IVRS_TODAY", (DAY0 + timedelta(days=28)).isoformat())
    dispense(db, subject_number=second.subject_number, actor=coordinator)
    return {"first": first.subject_number, "second": second.subject_number, "third": third,
            "shipment": shipment, "request": request.number}


def secrets_of_the_blind(db) -> tuple[set[str], list[str]]:
    """Arm codes (compared with every value: they are single letters) and arm
    names, kit type codes and lot codes (looked for anywhere in the text)."""
    with db.sessions() as session:
        codes = set(session.scalars(select(Arm.code)))
        words = [*session.scalars(select(Arm.name)), *session.scalars(select(KitType.code)),
                 *session.scalars(select(Lot.code))]
    return codes, words


def strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [str(k), *strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [str(value)]


def assert_blind(db, body: bytes) -> None:
    codes, words = secrets_of_the_blind(db)
    text = body.decode("utf-8")
    assert not codes & set(strings(json.loads(text))), text
    for word in words:
        assert word not in text, (word, text)


# --- what the services write ---------------------------------------------------------------


def test_every_service_writes_its_events_in_its_transaction(study, monkeypatch):
    numbers = whole_trial(study, monkeypatch)
    written = events(study)
    assert {event.type for event in written} == set(EVENT_TYPES)
    by_type = {}
    for event in written:
        by_type.setdefault(event.type, []).append(event)
    first, second = numbers["first"], numbers["second"]
    # randomization: the subject, then its first kit, in one transaction
    randomized = [e for e in by_type["subject.randomized"]]
    assert [e.data["subject"] for e in randomized] == [first, second]
    assert randomized[0].unblinded == {"arm": "A"} and randomized[1].unblinded == {"arm": "P"}
    kits = by_type["kit.dispensed"]
    assert [(e.data["subject"], e.data["visit"], len(e.data["kits"])) for e in kits] == [
        (first, "V1", 1), (second, "V1", 1), (second, "V1", 1), (second, "V2", 2)]
    assert kits[2].data["replaced_kit"] and kits[2].data["reason"] == "damaged"
    assert kits[0].data["confirmation"] == randomized[0].data["confirmation"]
    assert [e.data["status"] for e in by_type["subject.status_changed"]] == [
        "screen_failed", "discontinued"]
    assert by_type["subject.status_changed"][0].data["reason"] == "consent withdrawn"
    shipment = f"shipment:{numbers['shipment']}"
    assert [e.type for e in written if e.ordering_key == shipment] == [
        "shipment.requested", "shipment.dispatched", "shipment.received"]
    assert [e.data["status"] for e in written if e.ordering_key == shipment] == [
        "requested", "dispatched", "received"]
    assert [(e.type, e.data.get("status")) for e in written
            if e.ordering_key == f"subject:{first}"] == [
        ("subject.screened", "screened"), ("subject.randomized", "randomized"),
        ("kit.dispensed", None), ("kit.confirmed", "dispensed"),
        ("unblinding.requested", "pending"), ("unblinding.done", "unblinded"),
        ("subject.status_changed", "discontinued")]
    decided = by_type["approval.decided"][0]
    assert (decided.ordering_key, decided.data["kind"], decided.data["status"]) == (
        f"approval:{numbers['request']}", "unblinding", "approved")
    assert by_type["unblinding.done"][0].unblinded == {"arm": {"R1": "Drug 10 mg"}}
    for event in written:
        assert event.status == "pending" and event.data["by"].startswith("user:")
        assert event.data["site"] == "101" if "site" in event.data else True
        assert not UNBLINDED_KEYS & set(event.data), event.data
        assert_blind(study, json.dumps(event.data).encode())
    with study.sessions() as session:  # the chain is untouched by events
        assert verify(session, written[0].study_id) is None


def test_the_confirmation_number_is_the_one_the_caller_got(study):
    screened = screen_subject(study, site_code="101", actor=user(study, "5001"))
    (event,) = events(study)
    assert event.data["confirmation"] == screened.confirmation
    assert event.data["subject"] == screened.subject_number and event.ordering_key == (
        f"subject:{screened.subject_number}")


def test_a_refused_or_replayed_call_writes_no_event(study):
    coordinator = user(study, "5001")
    with pytest.raises(NotFound):
        screen_subject(study, site_code="999", actor=coordinator)
    subject = screen_subject(study, site_code="101", actor=coordinator,
                             idempotency_key="k1").subject_number
    before = table_counts(study)
    with pytest.raises(Refused):  # not randomized: nothing to dispense, rolled back
        dispense(study, subject_number=subject, actor=coordinator)
    with pytest.raises(Refused):  # a "no" is on record in the audit trail, but no event
        randomize(study, subject_number=subject, actor=coordinator,
                  eligibility={**YES, "INC1": False}, factors=M_LT65)
    screen_subject(study, site_code="101", actor=coordinator, idempotency_key="k1")  # replay
    after = table_counts(study)
    assert after["events"] == before["events"] == 1
    assert after["audit_events"] == before["audit_events"] + 1  # the refusal's record


def test_one_insert_per_transaction_with_events_none_without(study):
    coordinator = user(study, "5001")
    subject = screen_subject(study, site_code="101", actor=coordinator).subject_number
    statements: list[str] = []

    def seen(conn, cursor, statement, *args):
        statements.append(" ".join(statement.split()))

    sa_event.listen(study.engine, "before_cursor_execute", seen)
    try:
        randomize(study, subject_number=subject, actor=coordinator, eligibility=YES,
                  factors=M_LT65)
        randomization = list(statements)
        statements.clear()
        set_locked(study, user_code="5003", locked=True, actor=ADMIN, reason="test")
        without = list(statements)
    finally:
        sa_event.remove(study.engine, "before_cursor_execute", seen)
    inserts = [i for i, s in enumerate(randomization) if s.startswith("INSERT INTO events")]
    assert len(inserts) == 1  # the subject and its kit: one statement, two rows
    head = next(i for i, s in enumerate(randomization) if "FROM audit_heads" in s)
    assert inserts[0] < head  # written before the chain's lock is taken
    assert [e.type for e in events(study)][-2:] == ["subject.randomized", "kit.dispensed"]
    assert not [s for s in without if "INTO events" in s]
    assert any("INTO audit_events" in s for s in without)


# --- delivery --------------------------------------------------------------------------------


def test_a_failing_then_slow_receiver_gets_every_event_once_in_order_and_signed(study,
                                                                                 receiver):
    receiver.script = ["fail", "slow", "busy", "gone"]
    made = subscribe(study, receiver, events="subject.screened,subject.randomized,"
                     "kit.dispensed,kit.confirmed")
    coordinator = user(study, "5001")
    first = enroll(study, coordinator)
    enroll(study, coordinator)
    confirm_kit(study, kit_number=first.kits[0], actor=coordinator)
    screen_subject(study, site_code="102", actor=ADMIN)

    drain(study)

    written = events(study)
    rows = deliveries(study)
    assert sorted(d.event_id for d in rows) == [e.id for e in written]  # one row per event
    assert all(d.status == "delivered" and d.subscription_id == made.subscription.id
               for d in rows)
    assert sum(d.attempts for d in rows) == len(rows) + 4  # the four failures, retried
    kept = receiver.first_arrivals()
    assert {r.webhook_id for r in kept} == {f"evt_{e.id}" for e in written}
    assert len(receiver.received) == len(written) + 4  # at least once on the wire
    for request in receiver.received:
        body = request.verified(made.secret)  # raises unless signed with the secret
        assert body["id"] == request.webhook_id and request.headers["content-type"] == (
            "application/json")
        assert body == request.message
    by_key: dict[str, list[int]] = {}
    for request in kept:
        key = f"subject:{request.message['data']['subject']}"
        by_key.setdefault(key, []).append(int(request.webhook_id.removeprefix("evt_")))
    assert len(by_key) == 3
    assert all(ids == sorted(ids) for ids in by_key.values()), by_key
    assert by_key[f"subject:{first.subject_number}"] == [
        e.id for e in written if e.ordering_key == f"subject:{first.subject_number}"]
    message = next(r.message for r in kept if r.message["type"] == "subject.randomized")
    assert set(message) == {"id", "type", "timestamp", "data"}
    assert message["data"]["study"] == "ABC-301" and "arm" not in message["data"]


def test_a_retry_holds_back_its_subject_only(study, receiver):
    subscribe(study, receiver)
    coordinator = user(study, "5001")
    first = screen_subject(study, site_code="101", actor=coordinator).subject_number
    record_screen_failure(study, subject_number=first, reason="not eligible",
                          actor=coordinator)
    other = screen_subject(study, site_code="102", actor=ADMIN).subject_number
    receiver.script = ["fail"]
    now = datetime.now(UTC)

    report = send_pending_webhooks(study, now=now, timeout=TIMEOUT)
    # the first subject's first event failed: its second waits; the other subject's
    # went on in the next pass (a failing receiver is not tried again in a pass)
    assert (report.retrying, report.delivered) == (1, 0)
    send_pending_webhooks(study, now=now, timeout=TIMEOUT)
    assert [r.message["data"]["subject"] for r in receiver.received] == [first, other]
    status = {d.event_id: d.status for d in deliveries(study)}
    assert list(status.values()) == ["queued", "queued", "delivered"]
    assert send_pending_webhooks(study, now=now + timedelta(seconds=29)).delivered == 0
    assert send_pending_webhooks(study, now=now + timedelta(seconds=31)).delivered == 2
    assert [r.message["type"] for r in receiver.first_arrivals()] == [
        "subject.screened", "subject.screened", "subject.status_changed"]


def test_given_up_after_24_hours_audited_and_the_next_goes_on(study, receiver):
    receiver.script = ["fail"] * 100
    subscribe(study, receiver)
    subject = screen_subject(study, site_code="101", actor=ADMIN).subject_number
    record_screen_failure(study, subject_number=subject, reason="no", actor=ADMIN)
    start = datetime.now(UTC)
    now = start
    while now < start + timedelta(hours=23, minutes=50):
        send_pending_webhooks(study, now=now, timeout=TIMEOUT)
        now += timedelta(minutes=30)
    rows = deliveries(study)
    assert [d.status for d in rows] == ["queued", "queued"]
    assert rows[0].attempts > 8 and rows[1].attempts == 0  # retried all day, in order
    assert rows[0].last_status == 500 and rows[0].error == "http_500"
    send_pending_webhooks(study, now=start + timedelta(hours=24, minutes=1), timeout=TIMEOUT)
    send_pending_webhooks(study, now=start + timedelta(hours=24, minutes=2), timeout=TIMEOUT)
    rows = deliveries(study)
    assert [d.status for d in rows] == ["failed", "failed"]
    assert rows[1].attempts == 1  # its turn came after 24 h: one try, then given up
    with study.sessions() as session:
        failed = list(session.scalars(select(AuditEvent).where(
            AuditEvent.action == "webhook_failed").order_by(AuditEvent.seq)))
    assert [row.entity_id for row in failed] == [str(rows[0].id), str(rows[1].id)]
    assert failed[0].actor == "system:webhooks"
    assert failed[0].reason == "not delivered within 24 hours"
    assert failed[0].new["event"] == f"evt_{rows[0].event_id}"
    assert failed[0].new["last_status"] == 500 and "secret" not in json.dumps(failed[0].new)


def test_the_wait_between_attempts_doubles_up_to_an_hour(study, receiver):
    receiver.script = ["fail"] * 100
    subscribe(study, receiver)
    screen_subject(study, site_code="101", actor=ADMIN)
    now = start = datetime.now(UTC)
    tries = []
    for _ in range(2000):
        before = sum(d.attempts for d in deliveries(study))
        send_pending_webhooks(study, now=now, timeout=TIMEOUT)
        if sum(d.attempts for d in deliveries(study)) > before:
            tries.append(now - start)
        now += timedelta(seconds=15)
        if now - start > timedelta(hours=4):
            break
    gaps = [round((b - a).total_seconds()) for a, b in pairwise(tries)]
    assert gaps[:4] == [30, 30, 60, 120]
    assert max(gaps) <= 3600 + 15 and gaps[-1] >= 3600


def test_a_killed_sender_neither_loses_nor_duplicates(study, receiver):
    made = subscribe(study, receiver)
    lost = screen_subject(study, site_code="101", actor=ADMIN).subject_number
    other = screen_subject(study, site_code="102", actor=ADMIN).subject_number
    now = datetime.now(UTC)
    expand_pending(study, now=now)
    claimed = claim_next(study, now=now)  # ... and the sender is killed here
    assert claimed.body["data"]["subject"] == lost

    send_pending_webhooks(study, now=now + STALE_AFTER / 2, timeout=TIMEOUT)
    assert [r.message["data"]["subject"] for r in receiver.received] == [other]
    assert [d.status for d in deliveries(study)] == ["sending", "delivered"]

    report = send_pending_webhooks(study, now=now + STALE_AFTER + timedelta(seconds=1))
    assert report.requeued == 1 and deliveries(study)[0].error == "sender_lost"
    drain(study, now + STALE_AFTER + timedelta(minutes=2))
    rows = deliveries(study)
    assert [(d.status, d.attempts) for d in rows] == [("delivered", 2), ("delivered", 1)]
    assert sorted(r.webhook_id for r in receiver.received) == sorted(
        f"evt_{e.id}" for e in events(study))
    assert record_retry(study, claimed, now=now, error="timeout") is None  # too late: ignored
    assert record_delivered(study, claimed, 204, now=now) is False
    for request in receiver.received:
        request.verified(made.secret)


def test_a_sender_killed_after_its_request_left_sends_it_again_with_the_same_id(study,
                                                                               receiver):
    made = subscribe(study, receiver)
    screen_subject(study, site_code="101", actor=ADMIN)
    now = datetime.now(UTC)
    expand_pending(study, now=now)
    claimed = claim_next(study, now=now)
    body = encode(claimed.body)
    requests.post(claimed.url, data=body, headers=headers(claimed, body, int(time.time())),
                  timeout=5)  # it arrived; the sender died before it wrote the outcome
    send_pending_webhooks(study, now=now + STALE_AFTER + timedelta(seconds=1))
    drain(study, now + timedelta(minutes=5))
    (row,) = deliveries(study)
    assert (row.status, row.attempts) == ("delivered", 2)
    assert [r.webhook_id for r in receiver.received] == [f"evt_{row.event_id}"] * 2
    assert len(receiver.first_arrivals()) == 1  # a receiver that drops repeats has it once
    assert [r.verified(made.secret) for r in receiver.received] == [claimed.body] * 2


def test_a_sender_process_killed_in_the_middle_of_a_request(study, receiver, database_env):
    """A real ``ivrs webhooks send`` killed while the receiver holds its request."""
    receiver.script = ["hang"]
    subscribe(study, receiver)
    screen_subject(study, site_code="101", actor=ADMIN)
    sender = subprocess.Popen([sys.executable, "-c", "from ivrs.main import main; main()",
                               "webhooks", "send"], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        assert receiver.wait_for(1, timeout=60)
    finally:
        sender.kill()
        sender.wait(10)
    (row,) = deliveries(study)
    assert (row.status, row.attempts) == ("sending", 1)
    now = datetime.now(UTC)
    assert send_pending_webhooks(study, now=now).delivered == 0  # not stale yet: left alone
    drain(study, now + STALE_AFTER + timedelta(seconds=1))
    (row,) = deliveries(study)
    assert (row.status, row.attempts) == ("delivered", 2)
    assert [r.behaviour for r in receiver.received] == ["hang", "ok"]
    assert len(receiver.first_arrivals()) == 1


# --- blinding -----------------------------------------------------------------------------------


def test_blinded_payloads_carry_no_arm_kit_type_or_lot(study, receiver, monkeypatch):
    blind = subscribe(study, receiver, "/blind")
    manager = subscribe(study, receiver, "/pm", role="project_manager")
    open_ = subscribe(study, receiver, "/unblinded", role="unblinded_statistician")
    assert blind.subscription.blinded and not open_.subscription.blinded
    numbers = whole_trial(study, monkeypatch)
    drain(study)

    count = len(events(study))
    for path, made in (("/blind", blind), ("/pm", manager)):
        kept = receiver.first_arrivals(path)
        assert len(kept) == count
        for request in kept:
            request.verified(made.secret)
            assert_blind(study, request.body)
    unblinded = {r.message["id"]: r.verified(open_.secret)
                 for r in receiver.first_arrivals("/unblinded")}
    assert len(unblinded) == count
    arms = {m["data"]["subject"]: m["data"]["arm"] for m in unblinded.values()
            if m["type"] == "subject.randomized"}
    assert arms == {numbers["first"]: "A", numbers["second"]: "P"}
    dispensed = [m["data"] for m in unblinded.values() if m["type"] == "kit.dispensed"]
    first_kit = dispensed[0]
    assert first_kit["kit_type"] == "KA"
    assert first_kit["kit_types"] == {first_kit["kits"][0]: "KA"}
    assert first_kit["lots"][first_kit["kits"][0]] in ("LA1", "LA2")
    confirmed = next(m["data"] for m in unblinded.values() if m["type"] == "kit.confirmed")
    assert confirmed["kit_types"] == {confirmed["kit"]: "KA"}
    done = next(m["data"] for m in unblinded.values() if m["type"] == "unblinding.done")
    assert done["arm"] == {"R1": "Drug 10 mg"}
    # the signing secrets are nowhere but in the subscriptions
    with study.sessions() as session:
        trail = json.dumps([[r.new, r.old, r.reason] for r in session.scalars(
            select(AuditEvent))])
    for made in (blind, manager, open_):
        assert made.secret not in trail and made.secret.removeprefix("whsec_") not in trail


# --- subscriptions --------------------------------------------------------------------------


def test_only_active_subscriptions_of_the_types_get_deliveries(study, receiver):
    screened = subscribe(study, receiver, "/screened", events="subject.screened")
    gone = subscribe(study, receiver, "/gone", events="subject.screened")
    remove_subscription(study, subscription_id=gone.subscription.id, reason="test",
                        actor=ADMIN)
    subject = screen_subject(study, site_code="101", actor=ADMIN).subject_number
    record_screen_failure(study, subject_number=subject, reason="no", actor=ADMIN)
    drain(study)
    assert [r.path for r in receiver.received] == ["/screened"]
    assert [(d.subscription_id, d.status) for d in deliveries(study)] == [
        (screened.subscription.id, "delivered")]
    assert {e.status for e in events(study)} == {"expanded"}


def test_a_removed_subscription_gets_nothing_more(study, receiver):
    made = subscribe(study, receiver)
    screen_subject(study, site_code="101", actor=ADMIN)
    expand_pending(study, now=datetime.now(UTC))
    remove_subscription(study, subscription_id=made.subscription.id, reason="moved",
                        actor=ADMIN)
    drain_passes = send_pending_webhooks(study, timeout=TIMEOUT)
    assert drain_passes.delivered == 0 and receiver.received == []
    with pytest.raises(Refused, match="removed already"):
        remove_subscription(study, subscription_id=made.subscription.id, reason="again",
                            actor=ADMIN)
    with pytest.raises(Refused, match="is removed"):
        replay(study, subscription_id=made.subscription.id, since_event=1, actor=ADMIN)
    with study.sessions() as session:
        removed = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "webhook_removed")).one()
    assert (removed.reason, removed.new["deliveries_not_sent"]) == ("moved", 1)


def test_replay_sends_again_with_the_same_ids_and_fills_what_was_never_sent(study,
                                                                           receiver):
    screen_subject(study, site_code="101", actor=ADMIN)  # before any subscription
    expand_pending(study, now=datetime.now(UTC))
    early = subscribe(study, receiver, "/early", events="subject.screened")
    screen_subject(study, site_code="102", actor=ADMIN)
    screen_subject(study, site_code="103", actor=ADMIN)
    drain(study)
    ids = [e.id for e in events(study)]
    assert [r.webhook_id for r in receiver.received] == [f"evt_{i}" for i in ids[1:]]

    assert replay(study, subscription_id=early.subscription.id, since_event=ids[0],
                  actor=ADMIN) == 3
    drain(study)
    assert [r.webhook_id for r in receiver.received[2:]] == [f"evt_{i}" for i in ids]
    rows = deliveries(study)
    assert len(rows) == 3 and {d.status for d in rows} == {"delivered"}
    assert sorted((d.event_id, d.attempts) for d in rows) == [
        (ids[0], 1), (ids[1], 2), (ids[2], 2)]
    for request in receiver.received:
        request.verified(early.secret)

    moment = events(study)[2].occurred_at
    assert replay(study, subscription_id=early.subscription.id, since=moment,
                  actor=ADMIN) == 1
    with study.sessions() as session:
        audit = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "webhook_replayed").order_by(AuditEvent.seq)).all()
    assert [(a.new["since_event"], a.new["deliveries"]) for a in audit] == [
        (ids[0], 3), (None, 1)]
    assert audit[0].actor == "cli:admin" and audit[0].reason


@pytest.mark.parametrize("url, events_, role, message", [
    ("ftp://example.org/hook", "subject.screened", None, "must start with http"),
    ("example.org/hook", "subject.screened", None, "must start with http"),
    ("https://", "subject.screened", None, "name a host"),
    ("https://exa mple.org/", "subject.screened", None, "without spaces"),
    ("https://example.org:port/", "subject.screened", None, "is not an URL"),
    ("https://example.org/", "subject.eaten", None, "unknown event type subject.eaten"),
    ("https://example.org/", " , ", None, "no event type given"),
    ("https://example.org/", "subject.screened", "admin", "role must be one of"),
])
def test_bad_subscriptions_are_refused_and_nothing_is_stored(study, url, events_, role,
                                                             message):
    before = table_counts(study)
    with pytest.raises(IvrsError, match=message):
        add_subscription(study, url=url, event_types=events_, role=role, actor=ADMIN)
    assert table_counts(study) == before


def test_only_an_administrator_manages_subscriptions(study):
    manager = user(study, "5006")
    with pytest.raises(Refused, match="may not add webhook"):
        add_subscription(study, url="https://example.org/", event_types="subject.screened",
                         actor=manager)


# --- ivrs webhooks ---------------------------------------------------------------------------


@pytest.fixture
def run(study, database_env):
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, ["webhooks", *args])

    return invoke


def test_cli_add_list_remove_replay_send(run, study, receiver):
    added = run("add", receiver.url("/cli") + "?token=abc", "--events",
                "subject.screened, subject.status_changed")
    assert added.exit_code == 0, added.output
    first, second = added.output.splitlines()
    assert first == ("webhook subscription 1 added: subject.screened, subject.status_changed "
                     "for role project_manager")
    secret = second.rsplit(" ", 1)[1]
    assert secret.startswith("whsec_") and len(secret) == len("whsec_") + 44
    with study.sessions() as session:
        assert session.scalars(select(WebhookSubscription.secret)).one() == secret
        audit = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "webhook_added")).one()
    assert audit.new["url"] == receiver.url("/cli")  # no query: a token is often there
    assert audit.new["blinded"] is True

    screen_subject(study, site_code="101", actor=ADMIN)
    sent = run("send")
    assert sent.exit_code == 0 and sent.output.strip() == (
        "webhooks: expanded 1, requeued 0, delivered 1, retrying 0, failed 0")
    receiver.received[0].verified(secret)

    listed = run("list")
    assert listed.exit_code == 0 and secret not in listed.output
    (row,) = list(csv.DictReader(io.StringIO(listed.output)))
    assert (row["id"], row["event_types"], row["role"], row["blinded"], row["delivered"],
            row["queued"], row["removed_at"]) == (
        "1", "subject.screened,subject.status_changed", "project_manager", "yes", "1", "0",
        "")

    replayed = run("replay", "1", "--since-event", "1")
    assert replayed.exit_code == 0 and "1 delivery(ies) queued" in replayed.output
    assert run("send").output.strip().endswith("delivered 1, retrying 0, failed 0")
    assert [r.webhook_id for r in receiver.received] == ["evt_1", "evt_1"]
    since = run("replay", "1", "--since", "2000-01-01T00:00:00Z")
    assert since.exit_code == 0 and "1 delivery(ies) queued" in since.output

    removed = run("remove", "1")
    assert removed.exit_code == 0 and removed.output.strip() == "webhook subscription 1 removed"
    (row,) = list(csv.DictReader(io.StringIO(run("list").output)))
    assert row["removed_at"] != "" and row["queued"] == "1"


def test_cli_unblinded_subscription_says_so(run):
    added = run("add", "https://edc.example.org/hook", "--events", "subject.randomized",
                "--role", "unblinded_statistician")
    assert added.exit_code == 0
    assert "UNBLINDED: its payloads carry arms, kit types and lots" in added.output


@pytest.mark.parametrize("args, message", [
    (["add", "ftp://example.org/", "--events", "subject.screened"], "must start with http"),
    (["add", "https://example.org/", "--events", "kit.eaten"], "unknown event type kit.eaten"),
    (["replay", "1"], "say where the replay starts"),
    (["replay", "1", "--since-event", "1", "--since", "2026-01-01"], "not both"),
    (["replay", "1", "--since", "yesterday"], "is not an ISO time"),
    (["replay", "7", "--since-event", "1"], "no webhook subscription 7"),
    (["remove", "7"], "no webhook subscription 7"),
])
def test_cli_refusals_are_one_clear_line_and_change_nothing(run, study, args, message):
    before = table_counts(study)
    result = run(*args)
    assert result.exit_code == 1 and message in result.stderr, result.stderr
    assert result.stderr.startswith("error: ")
    assert table_counts(study) == before


# --- the server's thread ------------------------------------------------------------------------


def test_the_jobs_thread_sends_the_stream(study, receiver, database_env):
    from ivrs.outbound.scheduler import start_webhook_sender

    subscribe(study, receiver)
    screen_subject(study, site_code="101", actor=ADMIN)
    loop = start_webhook_sender(database_env, every=0.05)
    try:
        assert receiver.wait_for(1, timeout=30)
        assert loop.wait_for_runs(loop.runs + 2, timeout=30)
    finally:
        loop.stop(timeout=10)
    assert loop.failures == 0 and len(receiver.received) == 1
    assert [d.status for d in deliveries(study)] == ["delivered"]


def test_nothing_to_send_costs_one_read(study):
    statements: list[str] = []

    def seen(conn, cursor, statement, *args):
        statements.append(statement)

    sa_event.listen(study.engine, "before_cursor_execute", seen)
    try:
        report = send_pending_webhooks(study)
    finally:
        sa_event.remove(study.engine, "before_cursor_execute", seen)
    assert report.summary() == "expanded 0, requeued 0, delivered 0, retrying 0, failed 0"
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
    with study.sessions() as session:
        assert session.scalar(select(func.count()).select_from(EventDelivery)) == 0
