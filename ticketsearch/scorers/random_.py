"""Random scores: the control that tells a method's structure apart from its layerwise densities."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..core.hparams import RunHparams
from ..sparse import masked_layers
from .base import Batch, Scorer, ScoringContext, register_scorer

__all__ = ["RandomScorer"]


@register_scorer("random", description="uniform random scores (control baseline; data-free)")
class RandomScorer(Scorer):
    """I.i.d. uniform scores: random pruning with the selection rule's layerwise densities.

    The control of Frankle et al., ICLR 2021 ("Pruning Neural Networks at Initialization: Why Are We Missing
    the Mark?") and Liu et al., ICLR 2022 ("The Unreasonable Effectiveness of Random Pruning"). With a
    :class:`ScoringContext` the draws come from a generator seeded by ``context.seed`` (reproducible whatever
    else used the global RNG); without one they come from the global RNG (``torch.manual_seed``). Weights
    already pruned score 0, below every live weight, so iterative rounds only shrink the mask.
    """

    data_free = True
    citation = "Frankle et al., ICLR 2021; Liu et al., ICLR 2022"
    knobs: dict = {}

    def score(
        self,
        model: nn.Module,
        batches: Sequence[Batch],
        *,
        hparams: RunHparams,
        context: ScoringContext | None = None,
    ) -> dict[str, torch.Tensor]:
        gen = None
        if context is not None:
            gen = torch.Generator().manual_seed(int(context.seed) * 1_000_003 + 17)
        out = {}
        for name, layer in masked_layers(model):
            w = layer.weight
            s = torch.rand(tuple(w.shape), generator=gen, dtype=torch.float64)
            # strictly positive for live weights, so pruned ones (0) rank last
            s = s.clamp_min(torch.finfo(torch.float64).tiny).to(w.device)
            if layer.weight_mask is not None:
                s = s * layer.weight_mask.to(device=w.device, dtype=s.dtype)
            out[f"{name}.weight" if name else "weight"] = s
        return out
