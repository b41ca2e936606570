"""``list``: the statistician's uploaded master randomization list (MRL).

Within a stratum, entries are used in file order: the k-th subject to be
randomized in a stratum gets the stratum's k-th entry.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.clock import utcnow
from core.models import ListEntry
from core.randomization.base import Assignment, AssignmentContext, ListExhausted, take_counter


def take_list_entry(ctx: AssignmentContext) -> ListEntry:
    counter = take_counter(ctx.session, ctx.event.id, ctx.event.study_id, ctx.stratum_key)
    entry = ctx.session.execute(
        select(ListEntry).where(
            ListEntry.event_id == ctx.event.id,
            ListEntry.stratum_key == ctx.stratum_key,
            ListEntry.position == counter.used,
        )
    ).scalar_one_or_none()
    if entry is None:
        raise ListExhausted(ctx.stratum_key)
    return entry


def mark_used_by_id(session: Session, entry_id: int, subject_id: int) -> None:
    session.execute(
        update(ListEntry).where(ListEntry.id == entry_id)
        .values(subject_id=subject_id, used_at=utcnow())
    )


class ListMethod:
    name = "list"

    def assign(self, ctx: AssignmentContext) -> Assignment:
        entry = take_list_entry(ctx)
        arm = next(a for a in ctx.arms.values() if a.id == entry.arm_id)
        return Assignment(arm=arm, randomization_number=entry.randomization_number,
                          list_entry_id=entry.id,
                          details={"list_position": entry.position, "block": entry.block})
