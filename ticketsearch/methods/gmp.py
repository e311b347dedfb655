"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"): the mask moves while the
weights train, written only against the public mask-schedule hook (:class:`ticketsearch.training.MaskSchedule`).

Sparsity follows the cubic schedule s_t = s_f + (s_i − s_f)(1 − (t − t0)/(nΔt))³ from s_i = 0 (dense) at
t0 to the target s_f at t0 + nΔt, pruning the smallest-magnitude weights every Δt steps. Pruned weights are
never revived: each pruning step ranks only the weights still kept. Levels as every moving-mask method's
(:mod:`.moving`): 1, the network GMP trained while pruning; 2, its final mask retrained from init.

Under ``--pattern`` every step selects through ``core.select`` with the pattern: N:M steps above N/M keep
every group's N best surviving weights first (the floor rule of :mod:`ticketsearch.core.select`, so the
groups shrink towards N of M and the first step below N/M can keep exactly N of them), steps at or below
N/M prune within the pattern; block steps prune whole blocks. The final mask (at ``--density`` ≤ N/M)
obeys the pattern, with exact counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..core.errors import ConfigError
from ..core.hparams import RunHparams
from ..core.select import select
from ..sparse import get_mask, prunable_parameters
from ..training.schedule import MaskSchedule, MaskUpdate
from .base import RunContext, register_strategy, suggest_density, suggest_lr
from .moving import MovingMask, budget_iterations

if TYPE_CHECKING:  # optuna is imported only by `ticketsearch study`
    from optuna.trial import Trial

__all__ = ["GMP", "GMPSchedule", "cubic_density"]


def cubic_density(t: int, target: float, t0: int, t_end: int) -> float:
    """Zhu & Gupta's density at step ``t``: 1 up to ``t0``, ``target`` from ``t_end`` on, cubic between."""
    if t <= t0:
        return 1.0
    if t >= t_end:
        return target
    frac = (t - t0) / (t_end - t0)
    return target + (1.0 - target) * (1.0 - frac) ** 3


class GMPSchedule(MaskSchedule):
    """Prune to :func:`cubic_density` at t0, t0 + Δt, ... and exactly at t_end; magnitude within the kept.

    Stateless beyond the iteration and the masks (both in the checkpoint), so a resumed run prunes at the
    same steps by the same rule.
    """

    def __init__(
        self,
        target: float,
        t0: int,
        t_end: int,
        every: int,
        *,
        scope: str,
        distribution: str,
        min_layer_density: float = 0.0,
        pattern: str = "unstructured",
        allow_dense_layers: bool = False,
    ) -> None:
        self.target, self.t0, self.t_end, self.every = target, t0, t_end, max(1, every)
        self.scope, self.distribution, self.min_layer_density = scope, distribution, min_layer_density
        self.pattern, self.allow_dense_layers = pattern, allow_dense_layers

    def is_pruning_step(self, it: int) -> bool:
        return it == self.t_end or (self.t0 < it < self.t_end and (it - self.t0) % self.every == 0)

    def update(
        self, it: int, model: nn.Module, grads: Mapping[str, torch.Tensor] | None
    ) -> MaskUpdate | None:
        if not self.is_pruning_step(it):
            return None
        current = get_mask(model)
        weights = prunable_parameters(model)
        scores = {n: w.detach().abs() for n, w in weights.items()}
        new = select(
            scores,
            cubic_density(it, self.target, self.t0, self.t_end),
            scope=self.scope,
            distribution=self.distribution,
            current={n: t.to(scores[n].device) for n, t in current.items()},
            min_layer_density=self.min_layer_density,
            pattern=self.pattern,
            allow_dense_layers=self.allow_dense_layers,
            descent=True,  # the steps above N/M walk down to the pattern (no effect without one)
        )
        return {n: t for n, t in new.items() if not torch.equal(t.cpu(), current[n])}


@register_strategy(
    "gmp",
    description="gradual magnitude pruning: prune the smallest weights on a cubic schedule while training",
)
class GMP(MovingMask):
    """Gradual magnitude pruning (Zhu & Gupta, "To prune, or not to prune", ICLR-W 2018; arXiv 1710.01878).

    Knobs (``--arg``): ``start`` and ``end``, the fractions of the training budget where pruning starts
    (density 1) and reaches ``--density``; ``every``, steps between pruning events (Δt; the paper uses
    100-1000 on its larger runs). Defaults: prune from 10% to 75% of the budget, leaving the last quarter
    to recover at the final density, every 100 steps or 1/20 of the pruning span if that is shorter.
    ``retrain`` (default true): also retrain the final mask from init (level 2, the ticket).
    """

    kind = "gradual"
    accepts_pattern = True  # every step selects under the pattern (GMPSchedule)
    knobs: dict[str, Any] = {**MovingMask.knobs, "start": 0.1, "end": 0.75, "every": 0}  # type: ignore[dict-item]
    default_scope = "layerwise"  # the paper prunes each layer to the target sparsity
    citation = "Zhu & Gupta, arXiv:1710.01878 (2017)"

    def validate(self, hp: RunHparams) -> None:
        super().validate(hp)
        k = self.parse_knobs(dict(hp.method_args))
        start, end, every = float(k.get("start", 0.1)), float(k.get("end", 0.75)), int(k.get("every", 0))
        if not (math.isfinite(start) and math.isfinite(end) and 0.0 <= start < end <= 1.0):
            raise ConfigError(
                f"gmp needs 0 <= start < end <= 1 (fractions of the budget), got start={start:g}, end={end:g}"
            )
        if every < 0:
            raise ConfigError(
                f"gmp's every (steps between pruning events) must be >= 0 (0: auto), got {every}"
            )

    def schedule(self, run: RunContext) -> GMPSchedule:
        hp = run.hp
        k = self.parse_knobs(dict(hp.method_args))
        budget = budget_iterations(run)
        t0 = int(round(float(k.get("start", 0.1)) * budget))
        t_end = max(t0 + 1, int(round(float(k.get("end", 0.75)) * budget)))
        every = int(k.get("every", 0)) or max(1, min(100, (t_end - t0) // 20))
        return GMPSchedule(
            hp.pruning.density,
            t0,
            t_end,
            every,
            scope=hp.pruning.scope or self.default_scope,
            distribution=hp.pruning.distribution,
            min_layer_density=hp.pruning.min_layer_density,
            pattern=hp.pruning.pattern,
            allow_dense_layers=hp.pruning.allow_dense_layers,
        )

    def settled_at(self, schedule: MaskSchedule) -> int:
        assert isinstance(schedule, GMPSchedule)
        return schedule.t_end

    def describe(self, schedule: MaskSchedule) -> dict[str, Any]:
        assert isinstance(schedule, GMPSchedule)
        return {"t0": schedule.t0, "t_end": schedule.t_end, "every": schedule.every}

    def search_space(
        self, trial: Trial, hp: RunHparams, *, density: tuple[float, float] | None = None
    ) -> RunHparams:
        hp = suggest_density(trial, suggest_lr(trial, hp), density)
        start = float(trial.suggest_float("start", 0.0, 0.4))
        end = float(trial.suggest_float("end", start + 0.1, 0.95))
        args = {**dict(hp.method_args), "start": start, "end": end}
        return hp.replace(method_args=tuple(sorted(args.items())))
