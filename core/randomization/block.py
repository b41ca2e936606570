"""``block``: permuted blocks generated from a seed, per stratum (and site when stratified).

Blocks are generated lazily, one at a time, when a stratum has used every
entry generated so far; they are stored as list entries, so from then on a
block list behaves exactly like an uploaded one. Block k of a stratum is
shuffled by a generator seeded with (seed, event, stratum, k), so the same seed
gives the same sequence per stratum whatever order the strata fill up in (UAT
can reproduce it). Sizes may vary: each block's size is drawn from the
configured sizes by the same generator. A ratio change applies from the next
block on: a started block is finished as it was drawn.
"""

from __future__ import annotations

import random

from sqlalchemy import insert, select

from core.models import ListEntry, RandomizationList
from core.randomization.base import (
    Assignment,
    AssignmentContext,
    Counter,
    next_generated_numbers,
    ratio_weights,
    record_generated,
    take_counter,
)
from core.randomization.list_method import take_entry


def block_arms(seed: object, event_code: str, stratum_key: str, block_index: int,
               sizes: list[int], ratio: list[tuple[str, int]]) -> list[str]:
    """The arm codes of one block, in order. Pure, so tests and UAT can replay it."""
    rng = random.Random(f"{seed}|{event_code}|{stratum_key}|{block_index}")
    size = rng.choice(sizes)
    total = sum(weight for _, weight in ratio)
    arms = [code for code, weight in ratio for _ in range(weight * size // total)]
    rng.shuffle(arms)
    return arms


class BlockMethod:
    name = "block"

    def assign(self, ctx: AssignmentContext) -> Assignment:
        counter = take_counter(ctx.session, ctx.event.id, ctx.event.study_id, ctx.stratum_key)
        if counter.used > counter.generated:
            _generate_block(ctx, counter)
        return take_entry(ctx, counter.used)


def _generate_block(ctx: AssignmentContext, counter: Counter) -> None:
    params = ctx.event.params.get("block") or {}
    weights = [(arm.code, weight) for arm, weight in ratio_weights(ctx.event, ctx.arms)]
    block_index = counter.blocks + 1
    codes = block_arms(params.get("seed", 0), ctx.event.code, ctx.stratum_key, block_index,
                       list(params.get("sizes") or [4]), weights)
    # Numbers first: that takes the event counter's lock, which also makes the
    # creation of the generated list row below race-free.
    numbers = next_generated_numbers(ctx, len(codes))
    list_id = _generated_list_id(ctx)
    ctx.session.execute(insert(ListEntry), [
        {"study_id": ctx.event.study_id, "event_id": ctx.event.id, "list_id": list_id,
         "stratum_key": ctx.stratum_key, "position": counter.generated + offset,
         "randomization_number": number, "arm_id": ctx.arms[code].id,
         "block": f"B{block_index}"}
        for offset, (code, number) in enumerate(zip(codes, numbers), start=1)
    ])
    counter.generated += len(codes)
    counter.blocks = block_index
    record_generated(ctx.session, counter)


def _generated_list_id(ctx: AssignmentContext) -> int:
    generated = ctx.session.execute(
        select(RandomizationList).where(RandomizationList.event_id == ctx.event.id,
                                        RandomizationList.kind == "generated")
    ).scalar()
    if generated is None:
        generated = RandomizationList(study_id=ctx.event.study_id, event_id=ctx.event.id,
                                      kind="generated", source="block method")
        ctx.session.add(generated)
        ctx.session.flush()
    return generated.id
