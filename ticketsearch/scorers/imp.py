"""Registry entry for iterative magnitude pruning; the algorithm lives in ``training.imp``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..core.errors import ConfigError
from ..core.hparams import RunHparams
from .base import Batch, Scorer, ScoringContext, register_method

__all__ = ["IMP"]


@register_method(
    "imp", description="iterative magnitude pruning: train, prune p% of the remaining, reset or rewind"
)
class IMP(Scorer):
    """Iterative magnitude pruning with reset to init or rewind (Frankle & Carbin, ICLR 2019;
    Frankle et al., ICML 2020 "Linear mode connectivity and the lottery ticket hypothesis").

    Not a score-at-init method: it scores by the magnitude of *trained* weights, level after level, so it
    is run by the experiment runner, not through :meth:`score`.
    """

    kind = "imp"

    def score(
        self,
        model: nn.Module,
        batches: Sequence[Batch],
        *,
        hparams: RunHparams,
        context: ScoringContext | None = None,
    ) -> dict[str, torch.Tensor]:
        raise ConfigError("IMP needs trained weights; run it with `ticketsearch find --method imp`")
