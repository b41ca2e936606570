"""``list``: the statistician's uploaded master randomization list (MRL).

Within a stratum, entries are used in file order: the k-th subject to be
randomized in a stratum gets the stratum's k-th entry.
"""

from __future__ import annotations

from sqlalchemy import update

from core.clock import utcnow
from core.models import ListEntry
from core.randomization.base import Assignment, AssignmentContext, ListExhausted, take_counter


def take_entry(ctx: AssignmentContext, position: int) -> Assignment:
    """Give the subject the stratum's entry at ``position`` (one UPDATE ... RETURNING)."""
    row = ctx.session.execute(
        update(ListEntry)
        .where(ListEntry.event_id == ctx.event.id, ListEntry.stratum_key == ctx.stratum_key,
               ListEntry.position == position)
        .values(subject_id=ctx.subject_id, used_at=utcnow())
        .returning(ListEntry.id, ListEntry.randomization_number, ListEntry.arm_id,
                   ListEntry.block)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        raise ListExhausted(ctx.stratum_key)
    arm = next(a for a in ctx.arms.values() if a.id == row.arm_id)
    return Assignment(arm=arm, randomization_number=row.randomization_number,
                      list_entry_id=row.id, details={"list_position": position,
                                                     "block": row.block})


class ListMethod:
    name = "list"

    def assign(self, ctx: AssignmentContext) -> Assignment:
        counter = take_counter(ctx.session, ctx.event.id, ctx.event.study_id, ctx.stratum_key)
        return take_entry(ctx, counter.used)
