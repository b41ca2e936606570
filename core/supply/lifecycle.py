"""The kit lifecycle: every status a kit can be in and every move allowed between them.

Declared as data for a ``transitions`` state machine, built once per process.
Services never set ``Kit.status`` themselves: they ask ``move`` for the status a
trigger leads to from the current one, and a move that the lifecycle does not
allow is refused with the reason (what the kit is, what was asked).
"""

from __future__ import annotations

from transitions import Machine

from core.errors import Refused

AT_DEPOT = "at_depot"
RESERVED = "reserved"  # picked for a shipment, not yet dispatched
IN_TRANSIT = "in_transit"
AVAILABLE = "available"  # at a site, dispensable
ASSIGNED = "assigned"  # given to a subject, kit number not yet confirmed
DISPENSED = "dispensed"  # confirmed by kit number
RETURNED_BY_SUBJECT = "returned_by_subject"
QUARANTINED = "quarantined"  # temperature excursion, until released or rejected
DAMAGED = "damaged"
MISSING = "missing"
EXPIRED = "expired"
RETURNED_TO_DEPOT = "returned_to_depot"
DESTROYED = "destroyed"

STATUSES = [AT_DEPOT, RESERVED, IN_TRANSIT, AVAILABLE, ASSIGNED, DISPENSED,
            RETURNED_BY_SUBJECT, QUARANTINED, DAMAGED, MISSING, EXPIRED, RETURNED_TO_DEPOT,
            DESTROYED]

# Unused stock a site can send back, and what a depot can destroy.
RETURNABLE = [AVAILABLE, RETURNED_BY_SUBJECT, EXPIRED, DAMAGED, QUARANTINED]
UNUSABLE = [EXPIRED, DAMAGED, RETURNED_TO_DEPOT]

TRANSITIONS = [
    {"trigger": "reserve", "source": AT_DEPOT, "dest": RESERVED},
    {"trigger": "unreserve", "source": RESERVED, "dest": AT_DEPOT},  # shipment cancelled
    {"trigger": "dispatch", "source": RESERVED, "dest": IN_TRANSIT},
    {"trigger": "receive", "source": IN_TRANSIT, "dest": AVAILABLE},
    {"trigger": "quarantine", "source": [IN_TRANSIT, AVAILABLE], "dest": QUARANTINED},
    {"trigger": "release", "source": QUARANTINED, "dest": AVAILABLE},
    {"trigger": "reject", "source": QUARANTINED, "dest": DAMAGED},
    {"trigger": "damage", "source": [IN_TRANSIT, AVAILABLE, AT_DEPOT, ASSIGNED, DISPENSED],
     "dest": DAMAGED},
    {"trigger": "lose", "source": [IN_TRANSIT, AVAILABLE, ASSIGNED, DISPENSED], "dest": MISSING},
    {"trigger": "assign", "source": AVAILABLE, "dest": ASSIGNED},
    {"trigger": "confirm", "source": ASSIGNED, "dest": DISPENSED},
    {"trigger": "unassign", "source": ASSIGNED, "dest": AVAILABLE},  # assignment voided
    {"trigger": "return_from_subject", "source": [ASSIGNED, DISPENSED],
     "dest": RETURNED_BY_SUBJECT},
    {"trigger": "expire", "source": [AT_DEPOT, RESERVED, AVAILABLE, QUARANTINED],
     "dest": EXPIRED},
    {"trigger": "receive_return", "source": RETURNABLE, "dest": RETURNED_TO_DEPOT},
    {"trigger": "destroy", "source": UNUSABLE, "dest": DESTROYED},
]


class _Lifecycle:
    """The machine has no model of its own: it only answers "where does this lead"."""

    def __init__(self) -> None:
        self.machine = Machine(model=None, states=STATUSES, transitions=TRANSITIONS,
                               initial=AT_DEPOT, auto_transitions=False)
        self.triggers = sorted({t["trigger"] for t in TRANSITIONS})

    def destination(self, status: str, trigger: str) -> str | None:
        for transition in self.machine.get_transitions(trigger=trigger, source=status):
            return transition.dest
        return None


LIFECYCLE = _Lifecycle()


def move(kit_number: str, status: str, trigger: str) -> str:
    """The status ``trigger`` takes a kit to, or a refusal saying why not."""
    if trigger not in LIFECYCLE.triggers:
        raise ValueError(f"unknown kit trigger {trigger!r}")
    destination = LIFECYCLE.destination(status, trigger)
    if destination is None:
        raise Refused(f"kit {kit_number} is {status.replace('_', ' ')}: it cannot be "
                      f"{_past(trigger)}", code="kit_move_not_allowed", kit=kit_number,
                      status=status, trigger=trigger)
    return destination


def allowed(status: str, trigger: str) -> bool:
    return LIFECYCLE.destination(status, trigger) is not None


_PAST = {"reserve": "reserved", "unreserve": "unreserved", "dispatch": "dispatched",
         "receive": "received", "quarantine": "quarantined", "release": "released",
         "reject": "rejected", "damage": "declared damaged", "lose": "declared missing",
         "assign": "assigned", "confirm": "confirmed", "unassign": "unassigned",
         "return_from_subject": "returned by a subject", "expire": "expired",
         "receive_return": "received back at the depot", "destroy": "destroyed"}


def _past(trigger: str) -> str:
    return _PAST[trigger]
