"""What every randomization method is given and returns, and the counter rows they lock.

A method is a small object with ``assign(ctx) -> Assignment``. It runs inside
the randomize service's transaction, after the subject row and the caps are
locked, and may lock further rows only in this order: its stratum counter, then
the event counter (``EVENT_COUNTER``). The service then seals the audit chain.
One global lock order means no two randomizations can deadlock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session

from core.models import StratumCounter
from core.study_config import ArmConfig, EventConfig

# The event-wide counter: numbers for generated methods, and the lock that
# minimization needs because each assignment depends on all the previous ones.
EVENT_COUNTER = "#event"


@dataclass
class AssignmentContext:
    session: Session
    event: EventConfig
    arms: dict[str, ArmConfig]  # by code, in file order
    stratum_key: str
    attributes: dict[str, str]  # factor levels, plus site and cohort
    subject_id: int


@dataclass
class Assignment:
    arm: ArmConfig
    randomization_number: str
    list_entry_id: int | None = None
    # What an inspector needs to replay the decision (minimization: the totals,
    # the imbalance per arm and the random draws). Unblinded information.
    details: dict[str, Any] = field(default_factory=dict)


class Method(Protocol):
    name: str

    def assign(self, ctx: AssignmentContext) -> Assignment: ...


class ListExhausted(Exception):
    """The stratum's list (or cap of generated entries) has no entry left."""


@dataclass
class Counter:
    id: int
    used: int  # including this transaction's uses
    generated: int
    blocks: int


_counters = StratumCounter.__table__
_TAKE = (update(_counters)
         .where(_counters.c.event_id == bindparam("event"),
                _counters.c.stratum_key == bindparam("key"))
         .values(used=_counters.c.used + bindparam("count"))
         .returning(_counters.c.id, _counters.c.used, _counters.c.generated,
                    _counters.c.blocks))
_RECORD_GENERATED = (update(_counters).where(_counters.c.id == bindparam("counter"))
                     .values(generated=bindparam("new_generated"), blocks=bindparam("new_blocks")))


def take_counter(session: Session, event_id: int, study_id: int, key: str,
                 count: int = 1) -> Counter:
    """Lock a counter row, creating it on first use, and count ``count`` more uses.

    ``UPDATE ... RETURNING`` both increments and locks the row until commit, so
    the k-th transaction to commit is the one that saw ``used == k``.
    """
    params = {"event": event_id, "key": key, "count": count}
    row = session.execute(_TAKE, params).first()
    if row is None:
        _create_counter(session, event_id, study_id, key)
        row = session.execute(_TAKE, params).one()
    return Counter(*row)


def record_generated(session: Session, counter: Counter) -> None:
    session.execute(_RECORD_GENERATED, {"counter": counter.id, "new_generated": counter.generated,
                                        "new_blocks": counter.blocks})


def _create_counter(session: Session, event_id: int, study_id: int, key: str) -> None:
    # Two first users of a stratum may race here; the loser's insert does nothing.
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    session.execute(
        insert(StratumCounter)
        .values(event_id=event_id, study_id=study_id, stratum_key=key, used=0,
                generated=0, blocks=0)
        .on_conflict_do_nothing(index_elements=["event_id", "stratum_key"])
    )


def generated_number(ctx: AssignmentContext, sequence: int) -> str:
    """Numbers of generated methods: event position, then a 5-digit sequence (100001)."""
    return f"{ctx.event.position + 1}{sequence:05d}"


def next_generated_numbers(ctx: AssignmentContext, count: int = 1) -> list[str]:
    """Reserve ``count`` consecutive numbers; locks the event counter until commit."""
    counter = take_counter(ctx.session, ctx.event.id, ctx.event.study_id, EVENT_COUNTER, count)
    return [generated_number(ctx, n) for n in range(counter.used - count + 1, counter.used + 1)]


def draw_rng(event: EventConfig, *parts: object) -> random.Random:
    """Seeded (reproducible, for UAT and simulation) when the study gives a seed,
    otherwise the operating system's randomness."""
    seed = event.params.get("seed")
    if seed is None:
        return random.SystemRandom()
    return random.Random("|".join(str(p) for p in (seed, event.code, *parts)))


def ratio_weights(event: EventConfig, arms: dict[str, ArmConfig]) -> list[tuple[ArmConfig, int]]:
    ratio = event.ratio or {code: 1 for code in arms}
    return [(arms[code], int(ratio[code])) for code in arms if int(ratio.get(code, 0)) > 0]
