"""``triton`` top-k: edge-popup with the mask built inside the matmul, from scores and a per-layer cut.

Per step and group (a layer, or all layers for ``global``), :meth:`TritonTopK.cuts` finds the k-th largest
``|s|`` ``t`` (``torch.kthvalue`` on CPU; on CUDA ``torch.topk`` of the smaller side, a multi-block radix
select: no full sort either way) and the cut ``c`` among the ties at ``t`` (the index of the ``need``-th tie,
from one cumulative count), all on the device: no step waits for the host. Weight ``i`` is kept iff
``|s_i| > t`` or ``(|s_i| == t and i < c)``: exactly the first ``k`` of a stable descending sort, ties to the
lower flat index, so the selection is bitwise the reference's (:class:`~.reference.ReferenceTopK`).

Linear layers then run :func:`supermask_linear`: Triton matmuls that load the score tile with the weight
tile and mask it in registers (forward and ``∂x``), and return the straight-through score gradient
``∂L/∂s = (∂L/∂W_eff ⊙ W) ⊙ sign(s)`` from the ``gᵀx`` tile (the reference's sign/abs convention and order),
so ``W ⊙ M`` is never materialised. Convolutions get ``W ⊙ M`` from one elementwise Triton kernel feeding
cuDNN, and the same gradient. The :class:`~.base.TopKSelector` interface (``forward``/``backward``) is
there too, so the registry's oracle tests cover the selection; :class:`ticketsearch.sparse.supermask.
SupermaskController` uses the fused path when a selector has ``fused = True``.

NaN scores are not kept (the reference's sort would keep them first); the training loop's divergence check
(:func:`ticketsearch.sparse.supermask.check_scores_finite`) stops such a run anyway.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .base import TOPK, Kernel, topk_layout
from .triton_masked import INTERPRET, triton_probe

__all__ = ["RECORDS", "TritonTopK", "TOPK_KERNEL", "kth_largest", "supermask_linear", "supermask_weight"]

_JIT: dict[str, Any] = {}
_EW = 1024  # elementwise block


def _jit() -> dict[str, Any]:
    if not _JIT:
        import triton

        from . import _jit_supermask as j

        _JIT.update(fwd=j.fwd, bwd_x=j.bwd_x, bwd_s=j.bwd_s, weff=j.weff, cdiv=triton.cdiv)
    return _JIT


def kth_largest(a: torch.Tensor, k: int, *, method: str = "auto") -> torch.Tensor:
    """The ``k``-th largest value of the flat ``a`` (1 ≤ k ≤ n) as a 0-d tensor on ``a``'s device.

    ``kthvalue``: one selection (CPU's is linear time). ``topk``: ``torch.topk`` of the smaller side and its
    extreme (CUDA's topk is a multi-block radix select, where kthvalue runs one block per slice). Both exact;
    ``auto`` takes ``topk`` on CUDA.
    """
    n = a.numel()
    if method == "auto":
        method = "topk" if a.is_cuda else "kthvalue"
    if method == "kthvalue":
        return torch.kthvalue(a, n - k + 1).values
    if k <= n - k + 1:
        return torch.topk(a, k, largest=True, sorted=False).values.min()
    return torch.topk(a, n - k + 1, largest=False, sorted=False).values.max()


class TritonTopK:
    """Per-layer cuts ``(t, c)`` for edge-popup's exact top-k, and the kernels that use them."""

    fused = True  # the controller calls linear()/weight() per layer instead of forward() for all

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
        self.groups, self.ks, self.shapes, self.sizes = layout.groups, layout.ks, layout.shapes, layout.sizes
        self.members = layout.members
        self.device = torch.device(device)
        self.dtype = dtype
        self._key: Any = None
        self._cuts: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.stats = {"calls": 0, "cuts": 0}

    @torch.no_grad()
    def cuts(self, scores: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(t, c)`` per tensor (1-element device tensors), recomputed only when a score tensor changed."""
        if len(scores) != len(self.sizes):
            raise ValueError(f"expected {len(self.sizes)} score tensors, got {len(scores)}")
        self.stats["calls"] += 1
        key = tuple((s.data_ptr(), s._version) for s in scores)
        if key == self._key:
            return self._cuts
        self.stats["cuts"] += 1
        out: list[tuple[torch.Tensor, torch.Tensor]] = [None] * len(scores)  # type: ignore[list-item]
        for g, idx in enumerate(self.members):
            parts = [scores[t].detach().abs().reshape(-1) for t in idx]
            a = parts[0] if len(parts) == 1 else torch.cat(parts)
            k = self.ks[g]
            if k == 0:  # nothing kept: no value is above +inf, and no tie is below index 0
                t = torch.full((), math.inf, device=a.device, dtype=a.dtype)
                c = torch.zeros((), device=a.device, dtype=torch.int64)
            else:
                t = kth_largest(a, k)
                need = k - (a > t).sum()  # ≥ 1: fewer than k values lie above the k-th largest
                c = torch.searchsorted(torch.cumsum(a == t, 0), need.reshape(1)).reshape(()) + 1
            off = 0
            for i in idx:
                n = self.sizes[i]
                out[i] = (t.reshape(1), (c - off).clamp(0, n).reshape(1))
                off += n
        self._key, self._cuts = key, out
        return out

    # -- the TopKSelector interface (all layers at once; what the oracle tests call) ---------------------
    @torch.no_grad()
    def select(self, scores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Float 0/1 masks (for inspection and tests: the kernels never form them)."""
        ones = [torch.ones_like(s) for s in scores]
        return self.forward(scores, ones)

    @torch.no_grad()
    def forward(self, scores: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        cuts = self.cuts(scores)
        return [_weff(w, s, t, c) for w, s, (t, c) in zip(weights, scores, cuts)]

    def backward(
        self, grads: Sequence[torch.Tensor], weights: Sequence[torch.Tensor], scores: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        gs = torch._foreach_mul(list(grads), list(weights))  # (g ⊙ W) ⊙ sign(s): the reference's order
        torch._foreach_mul_(gs, torch._foreach_sign([s.detach() for s in scores]))
        return list(gs)

    # -- the fused path (per layer, through autograd) ---------------------------------------------------
    def linear(
        self,
        i: int,
        x: torch.Tensor,
        weight: torch.Tensor,
        scores: Sequence[torch.Tensor],
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """``F.linear(x, W ⊙ topk(|s|), bias)`` for layer ``i`` of ``scores``, with the straight-through
        gradient to ``scores[i]``."""
        t, c = self.cuts(scores)[i]
        return supermask_linear(x, weight, scores[i], bias, t, c)

    def weight(self, i: int, weight: torch.Tensor, scores: Sequence[torch.Tensor]) -> torch.Tensor:
        """``W ⊙ topk(|s|)`` of layer ``i`` (convolutions), with the straight-through gradient."""
        t, c = self.cuts(scores)[i]
        return supermask_weight(weight, scores[i], t, c)


def _weff(w: torch.Tensor, s: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    j = _jit()
    w_ = w.detach().contiguous()
    out = torch.empty_like(w_)
    n = w_.numel()
    j["weff"][(j["cdiv"](n, _EW),)](w_, s.detach().contiguous(), t, c, out, n, B=_EW)
    return out


class _WeightFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, scores: torch.Tensor, t: torch.Tensor, c: torch.Tensor):
        ctx.save_for_backward(weight, scores)
        return _weff(weight, scores, t, c)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        weight, scores = ctx.saved_tensors
        return None, g * weight * torch.sign(scores), None, None


def supermask_weight(
    weight: torch.Tensor, scores: torch.Tensor, t: torch.Tensor, c: torch.Tensor
) -> torch.Tensor:
    """``W ⊙ M`` with ``M`` from the cut ``(t, c)``; gradient ``(g ⊙ W) ⊙ sign(s)`` to the scores only (the
    weights of a supermask are frozen)."""
    return _WeightFn.apply(weight, scores, t, c)


class _LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        scores: torch.Tensor,
        bias: torch.Tensor | None,
        t: torch.Tensor,
        c: torch.Tensor,
    ) -> torch.Tensor:
        j = _jit()
        cdiv = j["cdiv"]
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).contiguous().float()
        w = weight.detach().contiguous().float()
        s = scores.detach().contiguous().float()
        M, K = x2.shape
        N = w.shape[0]
        y = torch.empty((M, N), device=x.device, dtype=torch.float32)
        b = bias.detach().contiguous().float() if bias is not None else w  # unused without HAS_BIAS
        j["fwd"][lambda m: (cdiv(M, m["BM"]), cdiv(N, m["BN"]))](
            x2, w, s, t, c, b, y, M, N, K, HAS_BIAS=bias is not None
        )
        ctx.save_for_backward(x2, w, s, t, c)
        ctx.meta = (bias is not None, lead, x.dtype, scores.dtype)
        return y.to(x.dtype).reshape(*lead, N)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        j = _jit()
        cdiv = j["cdiv"]
        x2, w, s, t, c = ctx.saved_tensors
        has_bias, lead, x_dtype, s_dtype = ctx.meta
        M, K = x2.shape
        N = w.shape[0]
        g2 = g.reshape(-1, N).contiguous().float()
        gx = gs = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.empty((M, K), device=g.device, dtype=torch.float32)
            j["bwd_x"][lambda m: (cdiv(M, m["BM"]), cdiv(K, m["BK"]))](g2, w, s, t, c, gx, M, N, K)
            gx = gx.to(x_dtype).reshape(*lead, K)
        if ctx.needs_input_grad[2]:
            gs = torch.empty((N, K), device=g.device, dtype=torch.float32)
            j["bwd_s"][lambda m: (cdiv(N, m["BN"]), cdiv(K, m["BK"]))](g2, x2, w, s, gs, M, N, K)
            gs = gs.to(s_dtype)
        if has_bias and ctx.needs_input_grad[3]:
            gb = g2.sum(0)
        return gx, None, gs, gb, None, None


def supermask_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    scores: torch.Tensor,
    bias: torch.Tensor | None,
    t: torch.Tensor,
    c: torch.Tensor,
) -> torch.Tensor:
    """``F.linear(x, W ⊙ M, bias)`` with ``M`` from the cut ``(t, c)`` built inside the matmul; gradients to
    ``x``, ``scores`` (straight through) and ``bias``, none to the frozen ``weight``."""
    return _LinearFn.apply(x, weight, scores, bias, t, c)


TOPK_KERNEL = Kernel(
    name="triton",
    op=TOPK,
    description="per-layer cut (k-th |s| and tie index) on the device; mask built inside Triton matmuls",
    devices=("cuda", "cpu") if INTERPRET else ("cuda",),
    dtypes=(torch.float32,),
    priority=-1,  # not picked by `fast` until GPU measurements say it is the fastest
    probe=triton_probe,
    selector=TritonTopK,
)

RECORDS: tuple[Kernel, ...] = (TOPK_KERNEL,)
