"""The oracle of both ops: obviously correct and slow on purpose.

``masked``: ``W ⊙ M`` is materialised in every forward, so autograd alone keeps pruned weights out of the
output and their gradients at zero. ``topk``: a full stable sort of ``|s|`` per group and per call; the
supermask controller runs it per layer through autograd (:class:`GetSubnet`), and :class:`ReferenceTopK`
is the same rule behind the selector interface every other top-k kernel is tested against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .base import MASKED, TOPK, Kernel, topk_layout

if TYPE_CHECKING:
    from ..layers import MaskedLayer

__all__ = [
    "RECORDS",
    "masked_forward",
    "topk_mask",
    "GetSubnet",
    "straight_through_topk",
    "ReferenceTopK",
    "MASKED_KERNEL",
    "TOPK_KERNEL",
]


def masked_forward(layer: MaskedLayer, x: torch.Tensor) -> torch.Tensor:
    assert layer.weight_mask is not None
    return layer.dense_forward(x, layer.weight * layer.weight_mask.to(layer.weight.dtype))


def topk_mask(flat_abs: torch.Tensor, k: int) -> torch.Tensor:
    """0/1 of ``flat_abs``'s dtype: the first ``k`` of a stable descending sort (ties to the lower index)."""
    out = torch.zeros_like(flat_abs)
    if k > 0:
        out[torch.sort(flat_abs, descending=True, stable=True).indices[:k]] = 1.0
    return out


class GetSubnet(torch.autograd.Function):
    """Top-k of ``|s|`` with the gradient passed straight through (edge-popup's ``GetSubnet``)."""

    @staticmethod
    def forward(ctx, abs_scores: torch.Tensor, k: int) -> torch.Tensor:
        return topk_mask(abs_scores.detach().reshape(-1), k).view_as(abs_scores)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def straight_through_topk(abs_scores: torch.Tensor, k: int) -> torch.Tensor:
    return GetSubnet.apply(abs_scores, k)


class ReferenceTopK:
    """The reference rule behind the :class:`~.base.TopKSelector` interface (no state between calls)."""

    def __init__(
        self,
        shapes: Sequence[Sequence[int]],
        groups: Sequence[int],
        ks: Sequence[int],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        layout = topk_layout(shapes, groups, ks)
        self.groups, self.ks, self.sizes = layout.groups, layout.ks, layout.sizes
        self.stats = {"calls": 0}

    @torch.no_grad()
    def select(self, scores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Float 0/1 masks, one per tensor."""
        self.stats["calls"] += 1
        out: list[torch.Tensor] = [torch.empty(0)] * len(self.sizes)
        for g, k in enumerate(self.ks):
            idx = [t for t, gg in enumerate(self.groups) if gg == g]
            flat = topk_mask(torch.cat([scores[t].detach().abs().reshape(-1) for t in idx]), k)
            off = 0
            for t in idx:
                out[t] = flat[off : off + self.sizes[t]].view_as(scores[t])
                off += self.sizes[t]
        return out

    def forward(self, scores: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [w * m for w, m in zip(weights, self.select(scores))]

    def backward(
        self, grads: Sequence[torch.Tensor], weights: Sequence[torch.Tensor], scores: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        # (g ⊙ W) ⊙ sign(s): the order autograd uses through W ⊙ M and |s|, so results are bitwise equal
        return [g * w * torch.sign(s.detach()) for g, w, s in zip(grads, weights, scores)]


MASKED_KERNEL = Kernel(
    name="reference",
    op=MASKED,
    description="W ⊙ M in every forward: the spec and the oracle, slow on purpose",
    priority=0,
    forward=masked_forward,
)

TOPK_KERNEL = Kernel(
    name="reference",
    op=TOPK,
    description="a full stable sort of |s| per layer and forward, W ⊙ M through autograd: the oracle",
    priority=0,
    selector=ReferenceTopK,
)

RECORDS: tuple[Kernel, ...] = (MASKED_KERNEL, TOPK_KERNEL)
