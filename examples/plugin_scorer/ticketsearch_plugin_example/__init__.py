"""A third-party scorer in one file: ticketsearch finds it through the ``ticketsearch.scorers`` entry point."""

from __future__ import annotations

import torch

from ticketsearch.scorers import Scorer, loss_gradients, require_batches, scoring_copy
from ticketsearch.sparse import prunable_parameters

__all__ = ["FisherScorer"]


class FisherScorer(Scorer):
    """Fisher pruning: ½ w² Σ_b g_b², the loss increase of removing a weight under the empirical Fisher.

    Theis, Korshunova, Tejani & Huszár, "Faster gaze prediction with dense networks and Fisher pruning",
    2018. Unlike SNIP (|w ⊙ mean g|) the squared gradients of separate batches add up, so weights whose
    gradient changes sign between batches still count.
    """

    kind = "oneshot"
    citation = "Theis et al., 2018"

    def score(self, model, batches, *, hparams, context=None) -> dict[str, torch.Tensor]:
        data = require_batches(batches, "fisher")
        work = scoring_copy(model, train=True)  # never touch the caller's weights or BatchNorm statistics
        params = prunable_parameters(work)
        fisher = [torch.zeros_like(p) for p in params.values()]
        for batch in data:
            for f, g in zip(fisher, loss_gradients(work, list(params.values()), [batch])):
                f.add_(g.square())
        return {n: 0.5 * p.detach().square() * f for (n, p), f in zip(params.items(), fisher)}
