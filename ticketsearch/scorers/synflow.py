"""SynFlow: data-free, iterative conservation of synaptic saliency (avoids layer collapse)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..core.errors import ConfigError
from ..core.hparams import RunHparams
from ..sparse import prunable_parameters
from .base import Batch, Scorer, ScoringContext, input_shape_of, method_arg, register_scorer, scoring_copy

__all__ = ["SynFlow"]


@register_scorer(
    "synflow", description="SynFlow: data-free path-norm saliency, 100 rounds (Tanaka et al., NeurIPS 2020)"
)
class SynFlow(Scorer):
    """Iterative Synaptic Flow Pruning: Tanaka, Kunin, Yamins & Ganguli, "Pruning neural networks without
    any data by iteratively conserving synaptic flow", NeurIPS 2020.

    On a copy of the network with every parameter and buffer made positive (|·|) and BatchNorm in eval
    mode, the all-ones input gives R = Σ outputs, the l1 path norm; the score of a weight is
    |∂R/∂w ⊙ w|, the total weight of the input→output paths through it. Because the score is conserved
    layer by layer, pruning it *iteratively* (``default_rounds`` = 100, exponential schedule, see
    ``find_mask``) never disconnects a layer before the network must be. Computed in float64 (``--arg
    dtype=float32`` to change): deep networks under- or overflow the path norm in float32.
    """

    data_free = True
    default_rounds = 100
    citation = "Tanaka, Kunin, Yamins & Ganguli, NeurIPS 2020"
    default_scope = "global"  # the paper's (and its code's) global masking
    knobs = {"dtype": "float64"}

    def score(
        self,
        model: nn.Module,
        batches: Sequence[Batch],
        *,
        hparams: RunHparams,
        context: ScoringContext | None = None,
    ) -> dict[str, torch.Tensor]:
        dtype = {"float64": torch.float64, "float32": torch.float32}.get(
            method_arg(hparams, "dtype", "float64")
        )
        if dtype is None:
            raise ConfigError("synflow dtype must be float64 or float32")
        shape = input_shape_of(model, batches, context)
        work = scoring_copy(model, train=False, dtype=dtype)
        with torch.no_grad():
            for t in list(work.parameters()) + list(work.buffers()):
                if t.is_floating_point():
                    t.abs_()
        params = prunable_parameters(work)
        device = next(iter(params.values())).device
        x = torch.ones((1, *shape), dtype=dtype, device=device)
        r = work(x).sum()
        grads = torch.autograd.grad(r, list(params.values()), allow_unused=True)
        return {
            n: (g * p.detach()).abs() if g is not None else torch.zeros_like(p)
            for (n, p), g in zip(params.items(), grads)
        }
