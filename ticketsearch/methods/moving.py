"""The shared level structure of methods whose mask moves while the weights train (gmp, rigl, set).

Such a method finds its mask during one training run, so it yields two results worth comparing with the
lottery-ticket methods:

- level 1, the network trained while its mask moved: the method's own claim (a trained sparse network for
  the cost of one training);
- level 2, the final mask retrained from the original init: the lottery-ticket reading of the same mask, on
  the same footing as IMP's tickets; this is the run's ticket at the target density. ``--arg retrain=false``
  stops after level 1; both name the same run, so one level 1 serves both.

A subclass says how the mask starts (:meth:`MovingMask.start_mask`) and moves (:meth:`MovingMask.schedule`);
everything else (storage, resume, checkpoints with the schedule's state, controls beside the ticket) is here
and in the runner.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, ClassVar

import torch

from ..core.hparams import RunHparams, to_iterations
from ..core.mask import Mask
from ..core.select import check_empty_layers, check_selection, claim_pattern
from ..sparse import get_mask
from ..training.imp import reset_to
from ..training.loop import TrainResult
from ..training.schedule import MaskSchedule
from .base import LevelRow, LevelStore, Method, RunContext, steps_per_epoch

__all__ = ["MovingMask", "budget_iterations"]


def budget_iterations(run: RunContext) -> int:
    """The run's training budget in iterations (what a schedule's fractions of the budget refer to)."""
    return to_iterations(run.hp.training.budget, steps_per_epoch(run), name="budget")


def _best_after(result: TrainResult, settled: int) -> TrainResult:
    """The early-stopping point among evaluations from ``settled`` on: an earlier minimum of the validation
    loss belongs to another (denser) network than the one the method returns."""
    final = [r for r in result.history if r["iteration"] >= settled] or result.history[-1:]
    key = "val_loss" if "val_loss" in final[0] else "test_loss"
    best = min(final, key=lambda r: r[key] if math.isfinite(r[key]) else math.inf)
    return dataclasses.replace(result, best=dict(best))


class MovingMask(Method):
    """Base of a method whose mask moves during one training (level 1), then retrained from init (level 2).

    Subclasses set ``name``/``kind``/``citation``, extend ``knobs`` (keep ``retrain``), and implement
    :meth:`schedule` (:meth:`start_mask` defaults to dense), or override :meth:`search` (and
    :meth:`ticket_start` when the ticket rewinds) for a search that is not one training under a schedule.
    """

    knobs: ClassVar[dict[str, Any] | None] = {"retrain": True}
    fields = ("scope", "distribution")
    distributed = True  # storage only through the run context; the loop applies rank 0's masks everywhere
    # the ticket (level 2, its mask retrained from init) beside the same mask on a fresh init and a shuffled
    # mask: whether the moving mask found more than a layerwise density
    sanity_checks = ("reinit", "shuffle")

    def schedule(self, run: RunContext) -> MaskSchedule:
        """The mask schedule of this run (a pure function of the run's hparams and seed), which the default
        :meth:`search` trains under; a subclass implements this or overrides :meth:`search`."""
        raise NotImplementedError(f"{type(self).__name__} implements neither schedule() nor search()")

    def start_mask(self, run: RunContext) -> Mask:
        """The mask training starts from (before the schedule's first move)."""
        return Mask.ones(run.shapes)

    def settled_at(self, schedule: MaskSchedule) -> int:
        """The iteration from which the mask has its final density (early stopping is chosen from there)."""
        return 0

    def describe(self, schedule: MaskSchedule) -> dict[str, Any]:
        """What level 1's ``result.json`` records of the schedule (under the method's name)."""
        return {}

    def identity(self, hp: RunHparams) -> str:
        """Without ``retrain``: it only says whether level 2 follows, never what level 1 is."""
        return hp.replace(method_args=tuple((k, v) for k, v in hp.method_args if k != "retrain")).hash()

    def search(self, run: RunContext, moved: LevelStore) -> tuple[Mask, dict[str, Any]]:
        """Level 1: find the mask while the weights train, store it in ``moved`` and return it with the
        level's result (which records what finding it cost: ``wall_time`` and ``passes``). The default
        trains once under :meth:`schedule`; a method that searches otherwise (several rounds, a soft
        mask) overrides this and keeps the rest of the level structure."""
        p = run.hp.pruning
        scope = p.scope or self.default_scope
        dense = self.check_target_selection(run)
        sched = self.schedule(run)
        model = run.model
        reset_to(model, run.init_state, self.start_mask(run))  # a resumed level: its checkpoint's masks
        trained = run.train_level(moved, model, desc=f"{self.name} ({p.density:.1%})", schedule=sched)
        result = _best_after(trained, self.settled_at(sched))
        mask = claim_pattern(get_mask(model), p.pattern, dense, strict=False)  # the sidecar's claim, checked
        check_empty_layers(mask, allow=p.allow_empty_layers, scope=scope)
        moved.save_mask(mask, **run.mask_metadata(level=1))
        extra = {self.name: self.describe(sched)} if self.describe(sched) else {}
        return mask, run.finish_level(moved, model, result, density=mask.density, **extra)

    def check_target_selection(self, run: RunContext) -> list[str]:
        """Refuse, before anything trains, what the final selection under ``--pattern`` would refuse (an
        unfit layer, a layer's density above N/M); returns the layers kept dense."""
        p = run.hp.pruning
        return check_selection(
            run.shapes,
            p.density,
            scope=p.scope or self.default_scope,
            distribution=p.distribution,
            min_layer_density=p.min_layer_density,
            pattern=p.pattern,
            allow_dense_layers=p.allow_dense_layers,
        )

    def ticket_start(self, run: RunContext) -> dict[str, torch.Tensor]:
        """The weights the ticket (level 2) and its controls train from: the original init by default;
        a method that rewinds returns its rewind point (available once :meth:`search` has run)."""
        return run.init_state

    def ticket_start_name(self, run: RunContext) -> str:
        """What :meth:`ticket_start` is, as level 2's mask sidecar records it (``retrained_from``)."""
        return "init"

    def run_levels(self, run: RunContext) -> list[LevelRow]:
        from .oneshot import dense_baseline

        rows = [dense_baseline(run)] if run.baseline else []
        moved, ticket = run.level(1), run.level(2)
        if moved.done():
            res1 = moved.result()
            mask = moved.load_mask()
        else:
            mask, res1 = self.search(run, moved)
        rows.append(LevelRow(1, mask.density, str(moved.mask_path), res1))
        if not self.parse_knobs(dict(run.hp.method_args)).get("retrain", True):
            return rows
        structure = {k: mask.metadata[k] for k in ("pattern", "dense_layers") if k in mask.metadata}
        mask = Mask({n: t.to(run.device) for n, t in mask.items()}, structure)
        start = self.ticket_start(run)
        if ticket.done():
            res2 = ticket.result()
        else:
            model = copy.deepcopy(run.model)
            reset_to(model, start, mask)
            ticket.save_mask(mask, **run.mask_metadata(level=2, retrained_from=self.ticket_start_name(run)))
            result = run.train_level(ticket, model, desc=f"{self.name} ticket ({mask.density:.1%})")
            cost = {
                "wall_time": res1["wall_time"],
                "forward": res1["passes"]["forward"],
                "backward": res1["passes"]["backward"],
            }
            res2 = run.finish_level(ticket, model, result, density=mask.density, cost_to_find=cost)
        row = LevelRow(2, mask.density, str(ticket.mask_path), res2)
        row.controls = run.run_controls(2, ticket, mask, start)
        rows.append(row)
        return rows
