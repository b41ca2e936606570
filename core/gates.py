"""The approvals gate with every gated action in it: what the doors and the daily
job call to list, decide and expire requests of any kind.

``core.approvals`` is the mechanism (a request, its signed four-eyes decision,
expiry) and knows no gated action; each gated module declares its ``Gate`` (kit
returns, emergency unblinding); this module puts them together, so that a
decision on request N, whatever its kind, finds what carries it out. A new gated
action adds its ``GATE`` here.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from core import approvals, unblinding
from core.actors import Actor
from core.approvals import ApprovalRow, Decision
from core.db import Database
from core.studies import study_ref
from core.supply import returns

GATES: approvals.Gates = {gate.kind: gate for gate in (returns.GATE, unblinding.GATE)}


def decide(db: Database, **request) -> Decision:
    """``core.approvals.decide`` over every gate."""
    return approvals.decide(db, gates=GATES, **request)


def check_decider(db: Database, *, number: str, actor: Actor, study: str | None = None,
                  approve: bool = True) -> str:
    """``core.approvals.check_decider`` over every gate: the request's kind."""
    return approvals.check_decider(db, gates=GATES, number=number, actor=actor, study=study,
                                   approve=approve)


def expire_stale(db: Database, *, study: str | None = None,
                 now: datetime | None = None) -> list[str]:
    """``core.approvals.expire_stale`` over every gate: the numbers expired."""
    return approvals.expire_stale(db, gates=GATES, study=study, now=now)


def list_approvals(session: Session, study_id: int, **filters) -> list[ApprovalRow]:
    """``core.approvals.list_approvals`` over every gate."""
    return approvals.list_approvals(session, study_id, gates=GATES, **filters)


# Who reads the list of requests: the approvers and the sponsor's oversight,
# and site staff their own sites' requests (list_approvals filters by site).
APPROVAL_READERS = frozenset({"project_manager", "unblinded_statistician", "investigator",
                              "site_coordinator", "pharmacist", "admin"})


def visible_approvals(db: Database, *, actor: Actor, study: str | None = None,
                      status: str | None = approvals.PENDING) -> list[ApprovalRow]:
    """The requests ``actor`` may see, newest first."""
    actor.require(APPROVAL_READERS, "read approval requests")
    with db.reads() as session:
        return list_approvals(session, study_ref(session, study).id, status=status,
                              actor=actor)
