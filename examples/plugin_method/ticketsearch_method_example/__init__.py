"""A third-party method whose mask moves while the weights train: drop the smallest kept weights and regrow
as many at random, every ``every`` steps, at constant density (the prune-and-regrow step of SET, Mocanu et
al., Nature Communications 2018, without its other parts).

Everything a moving-mask method needs from ticketsearch is public:

- :class:`ticketsearch.training.MaskSchedule`: the loop calls ``update(it, model, grads)`` at every step
  boundary; the schedule returns the new masks (or ``None``) and the loop applies them: pruned weights to
  zero, their optimizer state zeroed, regrown weights start at zero, gradient masks rebuilt, evaluation and
  checkpoints follow. Its ``state_dict`` is saved in every checkpoint with the masks;
- ``run.train_level(level, model, desc=..., schedule=...)`` trains inside the runner (resume, metrics,
  checkpoints, precision, devices), ``run.finish_level`` writes the result;
- :func:`ticketsearch.core.select.select` makes the initial mask under the same rule as every method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from ticketsearch.core.errors import ConfigError
from ticketsearch.core.hparams import RunHparams
from ticketsearch.core.select import select
from ticketsearch.methods import LevelRow, Method, RunContext
from ticketsearch.sparse import get_mask, prunable_parameters
from ticketsearch.training import MaskSchedule
from ticketsearch.training.imp import reset_to

__all__ = ["PruneRegrow", "DropAndRegrow"]


class DropAndRegrow(MaskSchedule):
    """Every ``every`` steps, per layer: drop ``fraction`` of the kept weights with the smallest |w|, regrow
    as many among the weights that were pruned before this step, uniformly at random."""

    def __init__(self, every: int, fraction: float, seed: int) -> None:
        self.every, self.fraction = every, fraction
        self.gen = torch.Generator().manual_seed(seed)  # the random regrowth: its state is resumable

    def update(
        self, it: int, model: nn.Module, grads: Mapping[str, torch.Tensor] | None
    ) -> dict[str, torch.Tensor] | None:
        if it == 0 or it % self.every:
            return None
        masks = get_mask(model)
        new = {}
        for name, w in prunable_parameters(model).items():
            keep = masks[name].flatten().clone()
            kept, pruned = keep.nonzero().flatten(), (~keep).nonzero().flatten()
            k = min(int(self.fraction * kept.numel()), pruned.numel())
            if k == 0:
                continue
            mags = w.detach().abs().flatten().cpu()[kept]
            drop = kept[torch.sort(mags, stable=True).indices[:k]]  # smallest first; ties: lower index
            grow = pruned[torch.randperm(pruned.numel(), generator=self.gen)[:k]]
            keep[drop] = False
            keep[grow] = True
            new[name] = keep.reshape(w.shape)
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.gen.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.gen.set_state(state["generator"])


class PruneRegrow(Method):
    """Drop by magnitude, regrow at random, at constant density (SET's move; Mocanu et al. 2018).

    Starts from a random mask at ``--density`` (per layer, or ERK with ``--distribution erk``) and trains it
    while moving ``fraction`` of each layer's weights every ``every`` steps (``--arg every=100
    --arg fraction=0.3``). The ticket is the final mask with its trained weights.
    """

    kind = "dynamic"
    fields = ("scope", "distribution")
    knobs = {"every": 100, "fraction": 0.3}
    default_scope = "layerwise"
    citation = "Mocanu et al., Nature Communications 2018"

    def validate(self, hp: RunHparams) -> None:
        super().validate(hp)
        k = self.parse_knobs(dict(hp.method_args))
        if int(k.get("every", 100)) < 1:
            raise ConfigError(f"every must be a positive number of steps, got {k['every']}")
        if not 0.0 <= float(k.get("fraction", 0.3)) <= 1.0:
            raise ConfigError(f"fraction must be in [0, 1], got {k['fraction']}")

    def run_levels(self, run: RunContext) -> list[LevelRow]:
        hp, p = run.hp, run.hp.pruning
        k = self.parse_knobs(dict(hp.method_args))
        level = run.level(1)
        if level.done():
            return [LevelRow(1, level.load_mask().density, str(level.mask_path), level.result())]
        g = torch.Generator().manual_seed(run.seed)
        scores = {n: torch.rand(s, generator=g) for n, s in run.shapes.items()}
        start = select(scores, p.density, scope=p.scope or self.default_scope, distribution=p.distribution)
        reset_to(run.model, run.init_state, start)  # a resumed level replaces it with its checkpoint's masks
        schedule = DropAndRegrow(int(k.get("every", 100)), float(k.get("fraction", 0.3)), seed=run.seed + 1)
        result = run.train_level(level, run.model, desc="prune-regrow", schedule=schedule)
        mask = get_mask(run.model)
        level.save_mask(mask, **run.mask_metadata(level=1))
        res = run.finish_level(level, run.model, result, density=mask.density)
        return [LevelRow(1, mask.density, str(level.mask_path), res)]
