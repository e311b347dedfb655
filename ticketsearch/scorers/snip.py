"""SNIP: connection sensitivity |g ⊙ w| at initialisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..core.hparams import RunHparams
from ..sparse import prunable_parameters
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

__all__ = ["SNIP"]


@register_scorer("snip", description="SNIP: |g ⊙ w| from the loss on real batches (Lee et al., ICLR 2019)")
class SNIP(Scorer):
    """Connection sensitivity: Lee, Ajanthan & Torr, "SNIP: Single-shot Network Pruning based on Connection
    Sensitivity", ICLR 2019.

    The score |∂L/∂c ⊙ 1| of a multiplicative gate c on each weight equals |g ⊙ w|: how much the loss would
    move if the connection were removed, to first order. The gradient is that of the mean cross-entropy
    over every example of ``batches`` (``--score-batches``), computed in train mode on a copy so the
    caller's BatchNorm statistics do not move. The paper's normalisation by the sum of scores is a positive
    constant and does not change the ranking, so it is left out.

    Knobs (``--arg``): ``chunk_size`` (examples per forward pass, 0 = a whole batch).
    """

    citation = "Lee, Ajanthan & Torr, ICLR 2019"
    default_scope = "global"  # one top-k over all layers, as the paper and its code
    knobs = {"chunk_size": 0}

    def score(
        self,
        model: nn.Module,
        batches: Sequence[Batch],
        *,
        hparams: RunHparams,
        context: ScoringContext | None = None,
    ) -> dict[str, torch.Tensor]:
        data = require_batches(batches, self.name or "snip")
        work = scoring_copy(model, train=True)
        params = prunable_parameters(work)
        grads = loss_gradients(
            work, list(params.values()), data, chunk_size=method_arg(hparams, "chunk_size", 0)
        )
        return {n: (g * p.detach()).abs() for (n, p), g in zip(params.items(), grads)}
