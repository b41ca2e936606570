"""``simple``: each subject drawn independently, weighted by the ratio."""

from __future__ import annotations

from core.randomization.base import (
    Assignment,
    AssignmentContext,
    draw_rng,
    next_generated_numbers,
    ratio_weights,
)
from core.randomization.minimization import weighted_pick


class SimpleMethod:
    name = "simple"

    def assign(self, ctx: AssignmentContext) -> Assignment:
        (number,) = next_generated_numbers(ctx)
        ratio = {arm.code: weight for arm, weight in ratio_weights(ctx.event, ctx.arms)}
        v = draw_rng(ctx.event, number).random()
        chosen = weighted_pick(list(ratio), ratio, v)
        return Assignment(arm=ctx.arms[chosen], randomization_number=number,
                          details={"simple": {"v": v, "ratio": ratio, "chosen": chosen}})
