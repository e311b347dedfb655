"""GraSP: keep the weights whose removal would most reduce gradient flow (w ⊙ Hg)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import ConfigError
from ..core.hparams import RunHparams
from ..sparse import prunable_parameters
from .base import (
    Batch,
    Scorer,
    ScoringContext,
    iter_chunks,
    loss_gradients,
    method_arg,
    note_cost,
    register_scorer,
    require_batches,
    scoring_copy,
)

__all__ = ["GraSP", "hessian_gradient_product"]


def hessian_gradient_product(
    model: nn.Module,
    params: Sequence[torch.Tensor],
    batches: Sequence[Batch],
    *,
    temperature: float = 200.0,
    chunk_size: int = 0,
    grad: Sequence[torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(H g, g) for the mean cross-entropy of ``logits / temperature`` over every example of ``batches``.

    g is computed first, without a graph; then, chunk by chunk, the chunk's gradient is built with
    ``create_graph=True``, dotted with the fixed g and differentiated again, so only one chunk's double
    graph is alive at a time (memory bounded by ``chunk_size`` examples, 0 = one batch). Chunks are
    weighted by size: the result does not depend on the chunking.
    """
    params = list(params)
    g = (
        list(grad)
        if grad is not None
        else loss_gradients(model, params, batches, temperature=temperature, chunk_size=chunk_size)
    )
    g = [t.detach() for t in g]
    total = sum(int(x.shape[0]) for x, _ in batches)
    hg = [torch.zeros_like(p) for p in params]
    device = params[0].device
    for x, y in iter_chunks(batches, chunk_size):
        x, y = x.to(device), y.to(device)
        out = model(x.to(params[0].dtype) if x.is_floating_point() else x)
        loss = F.cross_entropy(out / temperature, y) * (x.shape[0] / total)
        gc = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        z = sum((gi * gg).sum() for gi, gg in zip(gc, g) if gi is not None)
        if not isinstance(z, torch.Tensor) or not z.requires_grad:
            continue  # the loss is linear in every weight here: H g = 0 for this chunk
        for acc, h in zip(hg, torch.autograd.grad(z, params, allow_unused=True)):
            if h is not None:
                acc.add_(h)
        note_cost("hessian_vector_products")
    return hg, g


@register_scorer("grasp", description="GraSP: w ⊙ Hg, keeps gradient flow (Wang et al., ICLR 2020)")
class GraSP(Scorer):
    """Gradient Signal Preservation: Wang, Zhang & Grosse, "Picking Winning Tickets Before Training by
    Preserving Gradient Flow", ICLR 2020.

    The paper scores S(−w) = −w ⊙ Hg (H the Hessian of the loss, g its gradient) and *removes* the weights
    with the highest S: removing them reduces the gradient norm least, or even increases it. As a keep-score
    (higher = keep) this scorer therefore returns **+w ⊙ Hg**; the official code (alecwangcq/GraSP) does the
    same thing by pruning the top of −w ⊙ Hg. Scores can be negative; pruned weights score 0 and are
    excluded by the selection, never revived.

    As in the official code the logits are divided by a temperature T (default 200) for both the gradient
    and the Hessian-gradient pass, which keeps the softmax away from saturation so Hg is informative.
    Computed in train mode on a copy of the model.

    Knobs (``--arg``): ``temperature`` (T, default 200), ``chunk_size`` (examples per double-backward pass,
    default 0 = a whole batch; lower it to bound memory).
    """

    citation = "Wang, Zhang & Grosse, ICLR 2020"
    default_scope = "global"  # one threshold over all layers, as the paper and its code
    knobs = {"temperature": 200.0, "chunk_size": 0}

    def score(
        self,
        model: nn.Module,
        batches: Sequence[Batch],
        *,
        hparams: RunHparams,
        context: ScoringContext | None = None,
    ) -> dict[str, torch.Tensor]:
        data = require_batches(batches, self.name or "grasp")
        temperature = method_arg(hparams, "temperature", 200.0, float)
        if not temperature > 0:
            raise ConfigError(f"grasp temperature must be > 0, got {temperature}")
        chunk = method_arg(hparams, "chunk_size", 0, int)
        if chunk < 0:
            raise ConfigError(f"grasp chunk_size must be ≥ 0, got {chunk}")
        work = scoring_copy(model, train=True)
        params = prunable_parameters(work)
        hg, _ = hessian_gradient_product(
            work, list(params.values()), data, temperature=temperature, chunk_size=chunk
        )
        return {n: p.detach() * h for (n, p), h in zip(params.items(), hg)}
