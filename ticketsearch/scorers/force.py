"""FORCE: iterative connection sensitivity at init in which pruned weights may come back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from ..core.errors import ConfigError
from ..core.hparams import RunHparams
from ..core.mask import Mask
from ..core.select import check_density, select
from ..sparse import get_mask, masked_layers, prunable_parameters
from .base import (
    Batch,
    Scorer,
    ScoringContext,
    loss_gradients,
    method_arg,
    register_scorer,
    require_batches,
    scoring_copy,
)
from .iterative import density_schedule, scope_of

__all__ = ["FORCE", "force_saliency"]


def force_saliency(
    model: nn.Module,
    init: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor] | None,
    batches: Sequence[Batch],
    *,
    chunk_size: int = 0,
) -> dict[str, torch.Tensor]:
    """|w ⊙ ∂L/∂w evaluated at w ⊙ m|, for every weight, pruned ones included (FORCE's saliency).

    ``model`` is a scoring copy whose layers carry no mask (its forward uses its weights as they are);
    ``init`` holds the dense weights w, ``mask`` the current m (``None``: dense, i.e. SNIP). The gradient
    is taken at the pruned network but multiplied by the *dense* weight, so a weight pruned earlier can
    score high again: that is what lets FORCE revive it.
    """
    params = prunable_parameters(model)
    with torch.no_grad():
        for n, p in params.items():
            w = init[n]
            p.copy_(w if mask is None else w * mask[n].to(device=w.device, dtype=w.dtype))
    grads = loss_gradients(model, list(params.values()), batches, chunk_size=chunk_size)
    return {n: (g * init[n]).abs() for n, g in zip(params, grads)}


@register_scorer(
    "force",
    description="FORCE: iterative |g ⊙ w| at the pruned net, pruned weights may revive (de Jorge et al., ICLR 2021)",
)
class FORCE(Scorer):
    """Foresight connection sensitivity: de Jorge, Sanyal, Behl, Torr, Rogez & Dokania, "Progressive
    Skeletonization: Trimming more fat from a network at initialization", ICLR 2021 (code: naver/force,
    ``pruning/pruning_algos.py``, ``prune_method=3``).

    SNIP ranks weights by how much removing each alone would move the loss of the *dense* net; at extreme
    sparsity what matters is the loss of the *pruned* net. FORCE therefore prunes progressively: at each of
    T steps (``--rounds``, default 60, the number the authors' README runs; their exponential schedule,
    density^(t/T)) it computes |w ⊙ ∂L/∂w| with the gradient taken at the current pruned network w ⊙ m but
    for every weight, the ones pruned so far included, and keeps the top-k over all of them. A weight pruned
    at one step may come back at the next (Iter-SNIP, ``snip --rounds T``, never revives).

    The selection of every step is ``core.select`` with the run's scope and distribution (FORCE's own is
    global), given only the mask the *caller* attached (never revived) as ``current``; the last step's
    selection is made by :func:`ticketsearch.scorers.find_mask`, which runs this scorer once for all T
    steps (``revives``). The gradient is that of the mean cross-entropy over ``--score-batches`` batches
    (the authors' default: 1), the same batches at every step (their loader draws a new random batch per
    step), in train mode on a copy. With T = 1 FORCE is SNIP.

    Knobs (``--arg``): ``chunk_size`` (examples per forward pass, 0 = a whole batch).
    """

    citation = "de Jorge et al., ICLR 2021"
    default_scope = "global"  # get_mask() in their code: one threshold over all layers
    default_rounds = 60
    revives = True
    knobs = {"chunk_size": 0}

    @classmethod
    def check_hparams(cls, hparams: RunHparams) -> None:
        """Knob values, checked before any file exists."""
        if method_arg(hparams, "chunk_size", 0, int) < 0:
            raise ConfigError(
                f"force chunk_size must be ≥ 0 (0: a whole batch), got {dict(hparams.args)['chunk_size']}"
            )

    def score(
        self,
        model: nn.Module,
        batches: Sequence[Batch],
        *,
        hparams: RunHparams,
        context: ScoringContext | None = None,
    ) -> dict[str, torch.Tensor]:
        self.check_hparams(hparams)
        data = require_batches(batches, self.name or "force")
        p = hparams.pruning
        density = check_density(p.density)
        steps = int(p.rounds) or self.default_rounds
        if steps < 1:
            raise ConfigError(f"force needs ≥ 1 step (--rounds), got {steps}")
        chunk = method_arg(hparams, "chunk_size", 0, int)
        work = scoring_copy(model, train=True)
        # the caller's own pruning (a mask already attached) is never revived; FORCE's own steps are
        base: Mask | None = None
        if any(layer.weight_mask is not None for _, layer in masked_layers(work)):
            base = get_mask(work)
        for _, layer in masked_layers(work):
            layer.set_mask(None)  # plain forward: the gradient reaches pruned weights too
        init = {n: w.detach().clone() for n, w in prunable_parameters(work).items()}
        start = base.density if base is not None else 1.0
        if density > start + 1e-12:
            raise ConfigError(
                f"the model is already pruned to density {start:.4g}; cannot prune it to {density:.4g}"
            )
        mask: Mapping[str, torch.Tensor] | None = base
        scores = force_saliency(work, init, mask, data, chunk_size=chunk)
        for d in density_schedule(density, steps, start)[:-1]:  # the last step is the caller's select
            mask = select(
                scores,
                d,
                scope=scope_of(self, p.scope),
                distribution=p.distribution,
                current=base,  # not the previous step's mask: FORCE revives its own pruned weights
                min_layer_density=p.min_layer_density,
            )
            scores = force_saliency(work, init, mask, data, chunk_size=chunk)
        return scores
