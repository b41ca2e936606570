"""Events for outside systems (SPEC §10), derived from a transaction's audit records.

Every service already says what it did, once, in its audit records
(``core.audit.AuditLog.record``); ``AuditLog.seal`` hands those records to
``emit`` before it takes the study's chain lock, and the events are written in
the same transaction with one multi-row INSERT: a change that rolls back has no
event, a committed one always has its event, and no service carries code of
its own for it. A transaction without any of the actions below (most of the
audit trail: sign-ins, PIN changes, messages sent) writes nothing more. A
retried call that replays its stored result seals nothing, so it emits nothing.

Which audit action is which event (``_BUILDERS``):

- ``subject.screened``: ``subject_screened``;
- ``subject.randomized``: ``subject_randomized`` (a re-randomization too);
- ``subject.status_changed``: ``subject_screen_failed``, ``subject_discontinued``
  (a randomization's change of status is ``subject.randomized``);
- ``kit.dispensed``: ``visit_dispensed`` with kits (a visit, or the first visit
  at randomization), ``kit_replaced`` (a lost or damaged kit's replacement);
  a visit that dispenses nothing is no kit event;
- ``kit.confirmed``: ``kit_confirm`` (one per kit number confirmed by SMS);
- ``shipment.requested``: ``shipment_created``, whatever made the shipment (a
  site's indent, the resupply job, an urgent resupply), once per shipment;
- ``shipment.dispatched``, ``shipment.received``: their audit actions;
- ``unblinding.requested``: ``unblinding_requested``; ``unblinding.done``:
  ``subject_unblinded``;
- ``approval.decided``: ``approval_approved``, ``approval_rejected`` and
  ``approval_expired`` (nobody decided in time: the request is closed too).

Blinding by construction: each builder copies into ``data`` the keys it names,
never an audit row's whole values, so the unblinded keys of the audit trail
(``core.audit.UNBLINDED_KEYS``: arm, allocation, kit type) and anything new a
service adds to its audit row stay out of it. ``unblinded`` holds the arm or
the kit type, for subscriptions of an unblinded role only (None when there is
nothing); the expansion adds each kit's type and lot there
(``core.event_deliveries``), outside the service's transaction.

Every event's ``data`` carries the confirmation number people hear
(``core.idempotency.confirmation_number`` of the transaction id; None for the
jobs, which have none), who acted (the audit trail's actor label) and when.
The site of a subject event is the subject number's site part (a subject
number is its site's code and a 4-digit sequence, ``core.subjects``) unless
the audit row names it: no query is made for it.

``ordering_key`` is what deliveries keep in order: ``subject:<number>`` for
subject, kit and unblinding events, ``shipment:<number>``, ``approval:<number>``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from core.clock import utcnow
from core.idempotency import confirmation_number
from core.models import Event

SUBJECT_SCREENED = "subject.screened"
SUBJECT_RANDOMIZED = "subject.randomized"
SUBJECT_STATUS_CHANGED = "subject.status_changed"
KIT_DISPENSED = "kit.dispensed"
KIT_CONFIRMED = "kit.confirmed"
SHIPMENT_REQUESTED = "shipment.requested"
SHIPMENT_DISPATCHED = "shipment.dispatched"
SHIPMENT_RECEIVED = "shipment.received"
UNBLINDING_REQUESTED = "unblinding.requested"
UNBLINDING_DONE = "unblinding.done"
APPROVAL_DECIDED = "approval.decided"
EVENT_TYPES = (SUBJECT_SCREENED, SUBJECT_RANDOMIZED, SUBJECT_STATUS_CHANGED, KIT_DISPENSED,
               KIT_CONFIRMED, SHIPMENT_REQUESTED, SHIPMENT_DISPATCHED, SHIPMENT_RECEIVED,
               UNBLINDING_REQUESTED, UNBLINDING_DONE, APPROVAL_DECIDED)

PENDING = "pending"
EXPANDED = "expanded"

SUBJECT_SEQUENCE_DIGITS = 4  # core.subjects: site code + a 4-digit sequence

# An audit record (core.audit.AuditLog.pending's dicts) -> (type, ordering key,
# data, unblinded), or None when this record is no event after all.
Derived = tuple[str, str, dict[str, Any], dict[str, Any] | None]
Builder = Callable[[dict[str, Any]], Derived | None]


def _new(record: dict[str, Any]) -> dict[str, Any]:
    return record["new"] or {}


def _subject_site(number: str, new: dict[str, Any]) -> str:
    return new.get("site") or number[:-SUBJECT_SEQUENCE_DIGITS]


def _subject(record: dict[str, Any], number: str | None = None) -> dict[str, Any]:
    number = number or record["entity_id"]
    return {"subject": number, "site": _subject_site(number, _new(record))}


def _only(values: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: values[key] for key in keys if key in values}


def _screened(record: dict[str, Any]) -> Derived:
    return (SUBJECT_SCREENED, f"subject:{record['entity_id']}",
            {**_subject(record), "status": "screened"}, None)


def _randomized(record: dict[str, Any]) -> Derived:
    new = _new(record)
    data = {**_subject(record), "status": "randomized",
            **_only(new, "event", "randomization_number", "factors")}
    return (SUBJECT_RANDOMIZED, f"subject:{record['entity_id']}", data,
            _only(new, "arm") or None)


def _status_changed(record: dict[str, Any]) -> Derived:
    data = {**_subject(record), "status": _new(record).get("status"),
            "previous_status": (record["old"] or {}).get("status"), "reason": record["reason"]}
    return SUBJECT_STATUS_CHANGED, f"subject:{record['entity_id']}", data, None


def _visit_dispensed(record: dict[str, Any]) -> Derived | None:
    new = _new(record)
    if not new.get("kits"):
        return None  # a visit without kits: nothing was dispensed
    data = {**_subject(record), **_only(new, "visit", "kits", "out_of_window", "missed")}
    return (KIT_DISPENSED, f"subject:{record['entity_id']}", data,
            _only(new, "kit_type") or None)


def _kit_replaced(record: dict[str, Any]) -> Derived:
    new = _new(record)
    data = {**_subject(record), "visit": new.get("visit"), "kits": [new.get("kit")],
            "replaced_kit": new.get("replaced_kit"), "reason": record["reason"]}
    return (KIT_DISPENSED, f"subject:{record['entity_id']}", data,
            _only(new, "kit_type") or None)


def _kit_confirmed(record: dict[str, Any]) -> Derived | None:
    new = _new(record)
    subject = new.get("subject")
    if not subject:
        return None  # cannot happen: a confirmation names its subject (core.supply.confirmation)
    data = {"kit": record["entity_id"], **_subject(record, subject),
            **_only(new, "visit", "status", "confirmed_at")}
    return KIT_CONFIRMED, f"subject:{subject}", data, None


def _shipment_created(record: dict[str, Any]) -> Derived:
    new = _new(record)
    data = {"shipment": record["entity_id"], "status": "requested",
            **_only(new, "depot", "site", "reason", "kits")}
    # per-type counts tell which arms a site holds: unblinded
    return (SHIPMENT_REQUESTED, f"shipment:{record['entity_id']}", data,
            _only(new, "kit_type") or None)


def _shipment_dispatched(record: dict[str, Any]) -> Derived:
    data = {"shipment": record["entity_id"],
            **_only(_new(record), "status", "carrier", "tracking_number", "dispatched_on",
                    "kits")}
    return SHIPMENT_DISPATCHED, f"shipment:{record['entity_id']}", data, None


def _shipment_received(record: dict[str, Any]) -> Derived:
    data = {"shipment": record["entity_id"],
            **_only(_new(record), "status", "site", "temperature_excursion", "received",
                    "damaged", "missing", "quarantined")}
    return SHIPMENT_RECEIVED, f"shipment:{record['entity_id']}", data, None


def _unblinding_requested(record: dict[str, Any]) -> Derived:
    new = _new(record)
    data = {**_subject(record), "unblinding": new.get("unblinding"), "status": "pending",
            "mode": new.get("mode"), "reason": record["reason"]}
    return UNBLINDING_REQUESTED, f"subject:{record['entity_id']}", data, None


def _unblinded(record: dict[str, Any]) -> Derived:
    new = _new(record)
    data = {**_subject(record), "unblinding": new.get("unblinding"),
            "status": new.get("unblinding_status"), "revealed_to": new.get("revealed_to"),
            "reason": record["reason"]}
    return (UNBLINDING_DONE, f"subject:{record['entity_id']}", data,
            _only(new, "arm") or None)


def _approval_decided(record: dict[str, Any]) -> Derived:
    new = _new(record)
    data = {"approval": record["entity_id"], **_only(new, "kind", "status"),
            "reason": record["reason"]}
    return APPROVAL_DECIDED, f"approval:{record['entity_id']}", data, None


_BUILDERS: dict[str, Builder] = {
    "subject_screened": _screened,
    "subject_randomized": _randomized,
    "subject_screen_failed": _status_changed,
    "subject_discontinued": _status_changed,
    "visit_dispensed": _visit_dispensed,
    "kit_replaced": _kit_replaced,
    "kit_confirm": _kit_confirmed,
    "shipment_created": _shipment_created,
    "shipment_dispatched": _shipment_dispatched,
    "shipment_received": _shipment_received,
    "unblinding_requested": _unblinding_requested,
    "subject_unblinded": _unblinded,
    "approval_approved": _approval_decided,
    "approval_rejected": _approval_decided,
    "approval_expired": _approval_decided,
}
EVENT_ACTIONS = frozenset(_BUILDERS)  # the audit actions that are events


def iso(moment: datetime) -> str:
    """A UTC timestamp as receivers read it: ``2026-01-01T09:30:00.000000Z``."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def derive(records: list[dict[str, Any]], *, study_id: int, actor: str,
           transaction_id: int | None, at: datetime) -> list[dict[str, Any]]:
    """The event rows of a transaction's audit records, in their order."""
    rows = []
    common = None
    for record in records:
        builder = _BUILDERS.get(record["action"])
        if builder is None:
            continue
        derived = builder(record)
        if derived is None:
            continue
        if common is None:
            common = {"confirmation": (confirmation_number(transaction_id)
                                       if transaction_id is not None else None),
                      "by": actor, "occurred_at": iso(at)}
        kind, ordering_key, data, unblinded = derived
        rows.append({"study_id": study_id, "type": kind, "ordering_key": ordering_key,
                     "data": {**data, **common}, "unblinded": unblinded,
                     "occurred_at": at, "status": PENDING})
    return rows


_events = Event.__table__


def emit(session: Session, *, study_id: int, actor: str, transaction_id: int | None,
         records: list[dict[str, Any]]) -> int:
    """Write the events of ``records`` in the caller's transaction, with one
    INSERT (none when no record is an event); how many were written."""
    if not any(record["action"] in EVENT_ACTIONS for record in records):
        return 0
    rows = derive(records, study_id=study_id, actor=actor, transaction_id=transaction_id,
                  at=utcnow())
    if rows:
        session.execute(insert(_events).values(rows))
    return len(rows)


def payload_data(data: dict[str, Any], unblinded: dict[str, Any] | None, *,
                 blinded: bool) -> dict[str, Any]:
    """What a subscriber reads as the event's ``data``: the unblinded fields are
    added only for a subscription of an unblinded role."""
    if blinded or not unblinded:
        return dict(data)
    return {**data, **unblinded}


def webhook_id(event_id: int) -> str:
    """The event's id on the wire (body ``id``, header ``webhook-id``): the same
    for every delivery and attempt of it, so that receivers recognise a repeat."""
    return f"evt_{event_id}"


def message(*, event_id: int, kind: str, occurred_at: datetime, study: str,
            data: dict[str, Any], unblinded: dict[str, Any] | None,
            blinded: bool) -> dict[str, Any]:
    """The JSON body a subscriber gets (Standard Webhooks' ``type``, ``timestamp``,
    ``data``, and the id)."""
    return {"id": webhook_id(event_id), "type": kind, "timestamp": iso(occurred_at),
            "data": {"study": study, **payload_data(data, unblinded, blinded=blinded)}}
