"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"): the mask moves while the
weights train, written only against the public mask-schedule hook (:class:`ticketsearch.training.MaskSchedule`).

Sparsity follows the cubic schedule s_t = s_f + (s_i − s_f)(1 − (t − t0)/(nΔt))³ from s_i = 0 (dense) at
t0 to the target s_f at t0 + nΔt, pruning the smallest-magnitude weights every Δt steps. Pruned weights are
never revived: each pruning step ranks only the weights still kept. The run has two levels:

- level 1, the network GMP trained while pruning (the paper's result: a trained sparse net, found for the
  cost of one training);
- level 2, GMP's final mask retrained from the original init: the lottery-ticket reading of the same mask,
  comparable with IMP's tickets (this row is the run's ticket at the target density).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..core.errors import ConfigError
from ..core.hparams import RunHparams, to_iterations
from ..core.mask import Mask
from ..core.select import check_empty_layers, select
from ..sparse import get_mask, prunable_parameters
from ..training.imp import reset_to
from ..training.loop import TrainResult
from ..training.schedule import MaskSchedule, MaskUpdate
from .base import (
    LevelRow,
    Method,
    RunContext,
    register_strategy,
    steps_per_epoch,
    suggest_density,
    suggest_lr,
)

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
    ) -> None:
        self.target, self.t0, self.t_end, self.every = target, t0, t_end, max(1, every)
        self.scope, self.distribution, self.min_layer_density = scope, distribution, min_layer_density

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
        )
        return {n: t for n, t in new.items() if not torch.equal(t.cpu(), current[n])}


def _best_after(result: TrainResult, t_end: int) -> TrainResult:
    """The early-stopping point among evaluations at the final density (from ``t_end`` on): an earlier
    minimum of the validation loss belongs to a denser network than the one GMP returns."""
    final = [r for r in result.history if r["iteration"] >= t_end] or result.history[-1:]
    key = "val_loss" if "val_loss" in final[0] else "test_loss"
    best = min(final, key=lambda r: r[key] if math.isfinite(r[key]) else math.inf)
    return dataclasses.replace(result, best=dict(best))


@register_strategy(
    "gmp",
    description="gradual magnitude pruning: prune the smallest weights on a cubic schedule while training",
)
class GMP(Method):
    """Gradual magnitude pruning (Zhu & Gupta, "To prune, or not to prune", ICLR-W 2018; arXiv 1710.01878).

    Knobs (``--arg``): ``start`` and ``end``, the fractions of the training budget where pruning starts
    (density 1) and reaches ``--density``; ``every``, steps between pruning events (Δt; the paper uses
    100-1000 on its larger runs). Defaults: prune from 10% to 75% of the budget, leaving the last quarter
    to recover at the final density, every 100 steps or 1/20 of the pruning span if that is shorter.
    ``retrain`` (default true): also retrain the final mask from init (level 2, the ticket); false stops
    after level 1. Both name the same run, so one level 1 serves both.
    """

    kind = "gradual"
    fields = ("scope", "distribution")
    knobs: dict[str, Any] = {"start": 0.1, "end": 0.75, "every": 0, "retrain": True}
    default_scope = "layerwise"  # the paper prunes each layer to the target sparsity
    citation = "Zhu & Gupta, arXiv:1710.01878 (2017)"
    distributed = True  # all storage through the run context; the loop applies rank 0's masks on every rank

    def identity(self, hp: RunHparams) -> str:
        """Without ``retrain``: it only says whether level 2 follows, never what level 1 is."""
        return hp.replace(method_args=tuple((k, v) for k, v in hp.method_args if k != "retrain")).hash()

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
        budget = to_iterations(hp.training.budget, steps_per_epoch(run), name="budget")
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
        )

    def search_space(
        self, trial: Trial, hp: RunHparams, *, density: tuple[float, float] | None = None
    ) -> RunHparams:
        hp = suggest_density(trial, suggest_lr(trial, hp), density)
        start = float(trial.suggest_float("start", 0.0, 0.4))
        end = float(trial.suggest_float("end", start + 0.1, 0.95))
        args = {**dict(hp.method_args), "start": start, "end": end}
        return hp.replace(method_args=tuple(sorted(args.items())))

    def run_levels(self, run: RunContext) -> list[LevelRow]:
        from .oneshot import dense_baseline

        p = run.hp.pruning
        sched = self.schedule(run)
        rows = [dense_baseline(run)] if run.baseline else []
        pruned, ticket = run.level(1), run.level(2)
        if pruned.done():
            res1 = pruned.result()
            mask = pruned.load_mask()
        else:
            model = run.model
            reset_to(model, run.init_state, Mask.ones(run.shapes))
            result = _best_after(
                run.train_level(pruned, model, desc=f"gmp (to {p.density:.1%})", schedule=sched), sched.t_end
            )
            mask = get_mask(model)
            check_empty_layers(mask, allow=p.allow_empty_layers, scope=p.scope or self.default_scope)
            pruned.save_mask(mask, **run.mask_metadata(level=1))
            res1 = run.finish_level(
                pruned,
                model,
                result,
                density=mask.density,
                gmp={"t0": sched.t0, "t_end": sched.t_end, "every": sched.every},
            )
        rows.append(LevelRow(1, mask.density, str(pruned.mask_path), res1))
        if not self.parse_knobs(dict(run.hp.method_args)).get("retrain", True):
            return rows
        mask = Mask({n: t.to(run.device) for n, t in mask.items()}, {})
        if ticket.done():
            res2 = ticket.result()
        else:
            model = copy.deepcopy(run.model)
            reset_to(model, run.init_state, mask)
            ticket.save_mask(mask, **run.mask_metadata(level=2, retrained_from="init"))
            result = run.train_level(ticket, model, desc=f"gmp ticket ({mask.density:.1%})")
            cost = {"forward": res1["passes"]["forward"], "backward": res1["passes"]["backward"]}
            res2 = run.finish_level(ticket, model, result, density=mask.density, cost_to_find=cost)
        row = LevelRow(2, mask.density, str(ticket.mask_path), res2)
        row.controls = run.run_controls(2, ticket, mask, run.init_state)
        rows.append(row)
        return rows
