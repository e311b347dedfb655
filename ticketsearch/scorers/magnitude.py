"""Magnitude at initialisation: the simplest baseline every pruning-at-init method must beat."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..core.hparams import RunHparams
from ..sparse import prunable_parameters
from .base import Batch, Scorer, ScoringContext, register_scorer

__all__ = ["Magnitude"]


@register_scorer("magnitude", description="|w| at initialisation (baseline; data-free)")
class Magnitude(Scorer):
    """Keep the largest |w| of the network as it is now (at init for one-shot use).

    The baseline of Frankle, Dziugaite, Roy & Carbin, "Pruning Neural Networks at Initialization: Why Are We
    Missing the Mark?" (ICLR 2021) and of ShrinkBench (Blalock et al., MLSys 2020); with trained weights it
    is the criterion of Han et al. (NeurIPS 2015) and of IMP. It ignores the data, so any data-driven method
    that does not beat it has not used the data.
    """

    data_free = True
    citation = "Frankle et al., ICLR 2021 (magnitude at init baseline); Han et al., NeurIPS 2015"
    default_scope = "global"  # the baseline of SynFlow and Frankle et al. 2021 ranks all layers together
    knobs: dict = {}

    def score(
        self,
        model: nn.Module,
        batches: Sequence[Batch],
        *,
        hparams: RunHparams,
        context: ScoringContext | None = None,
    ) -> dict[str, torch.Tensor]:
        return {n: p.detach().abs().clone() for n, p in prunable_parameters(model).items()}
