"""``minimization``: Pocock–Simon dynamic allocation.

For each arm, the imbalance the trial would have if this subject went there is
computed over the subject's own factor levels (the marginal totals, divided by
the arm's ratio weight so that a 2:1 design aims at 2:1, not 1:1), as the range
(max - min) or the variance across arms, and summed with the factor weights.
The arm(s) with the least total imbalance are preferred with probability p;
otherwise one of the other arms is taken (weighted by the ratio). Ties, and a
trial where every arm is equally good, are broken at random by the ratio.

The totals live in ``minimization_counts`` (one row per factor level and arm),
so an assignment reads a handful of rows however many subjects came before.
The event counter's lock serializes assignments, as minimization requires: each
depends on every earlier one. Both random draws and every number used are
returned in ``details`` so that an inspector can replay the decision.
"""

from __future__ import annotations

from statistics import pvariance

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from core.models import MinimizationCount
from core.randomization.base import (
    Assignment,
    AssignmentContext,
    draw_rng,
    next_generated_numbers,
    ratio_weights,
)
from core.study_config import ArmConfig


def imbalance_per_arm(counts: dict[str, dict[str, int]], weights: dict[str, float],
                      ratio: dict[str, int], how: str) -> dict[str, float]:
    """Total weighted imbalance if the next subject were put on each arm. Pure."""
    result = {}
    for candidate in ratio:
        total = 0.0
        for factor, per_arm in counts.items():
            adjusted = [(per_arm.get(arm, 0) + (arm == candidate)) / ratio[arm] for arm in ratio]
            spread = max(adjusted) - min(adjusted) if how == "range" else pvariance(adjusted)
            total += weights.get(factor, 1.0) * spread
        result[candidate] = round(total, 9)
    return result


def choose(imbalance: dict[str, float], ratio: dict[str, int], p: float, u: float,
           v: float) -> tuple[str, list[str]]:
    """The arm for draws u (prefer the best arms?) and v (which one), and the best arms."""
    least = min(imbalance.values())
    best = [arm for arm in ratio if imbalance[arm] == least]
    others = [arm for arm in ratio if arm not in best]
    pool = best if (not others or u < p) else others
    return weighted_pick(pool, ratio, v), best


def weighted_pick(arms: list[str], ratio: dict[str, int], v: float) -> str:
    total = sum(ratio[arm] for arm in arms)
    threshold = v * total
    for arm in arms:
        threshold -= ratio[arm]
        if threshold < 0:
            return arm
    return arms[-1]


class MinimizationMethod:
    name = "minimization"

    def assign(self, ctx: AssignmentContext) -> Assignment:
        (number,) = next_generated_numbers(ctx)  # also the lock that serializes
        params = ctx.event.params.get("minimization") or {}
        factor_levels = self._factor_levels(ctx)
        ratio = {arm.code: weight for arm, weight in ratio_weights(ctx.event, ctx.arms)}
        counts = self._counts(ctx, factor_levels)
        weights = {f.code: f.weight for f in ctx.event.factors}
        weights.setdefault("site", float(params.get("site_weight", 1.0)))
        imbalance = imbalance_per_arm(counts, weights, ratio, params.get("imbalance", "range"))
        rng = draw_rng(ctx.event, number)
        u, v = rng.random(), rng.random()
        p = float(params.get("p", 0.8))
        chosen, best = choose(imbalance, ratio, p, u, v)
        arm = ctx.arms[chosen]
        self._count(ctx, factor_levels, arm)
        return Assignment(arm=arm, randomization_number=number, details={
            "minimization": {"levels": factor_levels, "totals": counts,
                             "imbalance": imbalance, "best": best, "p": p,
                             "u": u, "v": v, "ratio": ratio, "chosen": chosen},
        })

    @staticmethod
    def _factor_levels(ctx: AssignmentContext) -> dict[str, str]:
        levels = {f.code: ctx.attributes[f.code] for f in ctx.event.factors}
        if ctx.event.stratify_by_site:
            levels["site"] = ctx.attributes["site"]
        return levels

    @staticmethod
    def _counts(ctx: AssignmentContext, factor_levels: dict[str, str]) -> dict[str, dict[str, int]]:
        code_of = {arm.id: arm.code for arm in ctx.arms.values()}
        counts: dict[str, dict[str, int]] = {factor: {} for factor in factor_levels}
        rows = ctx.session.execute(
            select(MinimizationCount.factor_code, MinimizationCount.level_code,
                   MinimizationCount.arm_id, MinimizationCount.count)
            .where(MinimizationCount.event_id == ctx.event.id,
                   MinimizationCount.factor_code.in_(list(factor_levels)))
        )
        for factor, level, arm_id, count in rows:
            if factor_levels[factor] == level and arm_id in code_of:
                counts[factor][code_of[arm_id]] = count
        return counts

    @staticmethod
    def _count(ctx: AssignmentContext, factor_levels: dict[str, str], arm: ArmConfig) -> None:
        insert = (postgresql.insert if ctx.session.get_bind().dialect.name == "postgresql"
                  else sqlite.insert)
        statement = insert(MinimizationCount).values([
            {"study_id": ctx.event.study_id, "event_id": ctx.event.id, "factor_code": factor,
             "level_code": level, "arm_id": arm.id, "count": 1}
            for factor, level in factor_levels.items()
        ])
        ctx.session.execute(statement.on_conflict_do_update(
            index_elements=["event_id", "factor_code", "level_code", "arm_id"],
            set_={"count": MinimizationCount.count + 1},
        ))
