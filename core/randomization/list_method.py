"""``list``: the statistician's uploaded master randomization list (MRL).

Within a stratum, entries are used in file order: the k-th subject to be
randomized in a stratum gets the stratum's k-th entry.
"""

from __future__ import annotations

from sqlalchemy import bindparam, update

from core.clock import utcnow
from core.models import ListEntry
from core.randomization.base import Assignment, AssignmentContext, ListExhausted, take_counter

_entries = ListEntry.__table__
_TAKE_ENTRY = (
    update(_entries)
    .where(_entries.c.event_id == bindparam("event"), _entries.c.stratum_key == bindparam("key"),
           _entries.c.position == bindparam("pos"))
    .values(subject_id=bindparam("subject"), used_at=bindparam("now"))
    .returning(_entries.c.id, _entries.c.randomization_number, _entries.c.arm_id,
               _entries.c.block)
)


def take_entry(ctx: AssignmentContext, position: int) -> Assignment:
    """Give the subject the stratum's entry at ``position`` (one UPDATE ... RETURNING)."""
    row = ctx.session.execute(_TAKE_ENTRY, {
        "event": ctx.event.id, "key": ctx.stratum_key, "pos": position,
        "subject": ctx.subject_id, "now": utcnow()}).first()
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
