"""Masked linear layers in Triton: the matmul loads each weight tile together with its mask tile.

Forward ``y = x (W ⊙ M)ᵀ + b`` and backward ``∂x = g (W ⊙ M)`` mask the weight inside the matmul, so
``W ⊙ M`` is never materialised; ``∂W = (gᵀ x) ⊙ M`` is masked in the same kernel that computes it, so
pruned weights get exactly zero gradient. The mask is the layer's bool tensor viewed as bytes (no copy).
Matmuls accumulate in float32 with IEEE precision (no TF32), so results match the reference kernel to
float32 rounding. Convolutions keep cuDNN on ``W ⊙ M`` (one multiply per step feeding the fastest conv).

Runs on CUDA; with ``TRITON_INTERPRET=1`` Triton's interpreter runs the same kernels on CPU, which is how
CI tests them without a GPU. Triton is imported lazily: a machine without it only loses this kernel.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from .base import MASKED, Kernel

if TYPE_CHECKING:
    from ..layers import MaskedLayer

__all__ = ["RECORDS", "TRITON_KERNEL", "masked_linear"]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_JIT: dict[str, Any] = {}


def _probe(build: bool) -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"triton cannot be imported ({type(exc).__name__}: {exc})"
    if not _INTERPRET and not torch.cuda.is_available():
        return "needs CUDA (or TRITON_INTERPRET=1 to run the kernels in Triton's interpreter on CPU)"
    return None


def _kernels() -> dict[str, Any]:
    """The jitted kernels, defined on first use (importing this module never imports triton)."""
    if _JIT:
        return _JIT
    import triton
    import triton.language as tl

    @triton.jit
    def fwd(
        x, w, m, b, y, M, N, K, HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr
    ):
        # y[M, N] = x[M, K] @ (w ⊙ m)[N, K]ᵀ (+ b); all row-major contiguous
        rm = tl.program_id(0) * BM + tl.arange(0, BM)
        rn = tl.program_id(1) * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            kk = k0 + rk
            a = tl.load(
                x + rm[:, None] * K + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0
            )
            wmask = (rn[:, None] < N) & (kk[None, :] < K)
            wt = tl.load(w + rn[:, None] * K + kk[None, :], mask=wmask, other=0.0)
            keep = tl.load(m + rn[:, None] * K + kk[None, :], mask=wmask, other=0)
            wt = tl.where(keep != 0, wt, 0.0)
            acc += tl.dot(a, tl.trans(wt), input_precision="ieee")
        if HAS_BIAS:
            acc += tl.load(b + rn, mask=rn < N, other=0.0)[None, :]
        tl.store(y + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))

    @triton.jit
    def bwd_x(g, w, m, gx, M, N, K, BM: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr):
        # gx[M, K] = g[M, N] @ (w ⊙ m)[N, K]
        rm = tl.program_id(0) * BM + tl.arange(0, BM)
        rk = tl.program_id(1) * BK + tl.arange(0, BK)
        rn = tl.arange(0, BN)
        acc = tl.zeros((BM, BK), dtype=tl.float32)
        for n0 in range(0, N, BN):
            nn_ = n0 + rn
            gt = tl.load(
                g + rm[:, None] * N + nn_[None, :], mask=(rm[:, None] < M) & (nn_[None, :] < N), other=0.0
            )
            wmask = (nn_[:, None] < N) & (rk[None, :] < K)
            wt = tl.load(w + nn_[:, None] * K + rk[None, :], mask=wmask, other=0.0)
            keep = tl.load(m + nn_[:, None] * K + rk[None, :], mask=wmask, other=0)
            wt = tl.where(keep != 0, wt, 0.0)
            acc += tl.dot(gt, wt, input_precision="ieee")
        tl.store(gx + rm[:, None] * K + rk[None, :], acc, mask=(rm[:, None] < M) & (rk[None, :] < K))

    @triton.jit
    def bwd_w(g, x, m, gw, M, N, K, BN: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr):
        # gw[N, K] = (g[M, N]ᵀ @ x[M, K]) ⊙ m: pruned weights get exactly zero, in the same kernel
        rn = tl.program_id(0) * BN + tl.arange(0, BN)
        rk = tl.program_id(1) * BK + tl.arange(0, BK)
        rm = tl.arange(0, BM)
        acc = tl.zeros((BN, BK), dtype=tl.float32)
        for m0 in range(0, M, BM):
            mm = m0 + rm
            gt = tl.load(
                g + mm[:, None] * N + rn[None, :], mask=(mm[:, None] < M) & (rn[None, :] < N), other=0.0
            )
            xt = tl.load(
                x + mm[:, None] * K + rk[None, :], mask=(mm[:, None] < M) & (rk[None, :] < K), other=0.0
            )
            acc += tl.dot(tl.trans(gt), xt, input_precision="ieee")
        out = (rn[:, None] < N) & (rk[None, :] < K)
        keep = tl.load(m + rn[:, None] * K + rk[None, :], mask=out, other=0)
        acc = tl.where(keep != 0, acc, 0.0)
        tl.store(gw + rn[:, None] * K + rk[None, :], acc, mask=out)

    _JIT.update(fwd=fwd, bwd_x=bwd_x, bwd_w=bwd_w, cdiv=triton.cdiv)
    return _JIT


_B = 32  # tile edge (tl.dot needs ≥ 16); autotuned tiles are for the GPU measurements


class _MaskedLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        k = _kernels()
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).contiguous().float()
        w = weight.contiguous().float()
        M, K = x2.shape
        N = w.shape[0]
        y = torch.empty((M, N), device=x.device, dtype=torch.float32)
        b = bias.contiguous().float() if bias is not None else w  # unused without HAS_BIAS
        k["fwd"][(k["cdiv"](M, _B), k["cdiv"](N, _B))](
            x2, w, mask, b, y, M, N, K, HAS_BIAS=bias is not None, BM=_B, BN=_B, BK=_B
        )
        ctx.save_for_backward(x2, w, mask)
        ctx.has_bias = bias is not None
        ctx.lead = lead
        return y.to(x.dtype).reshape(*lead, N)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        k = _kernels()
        x2, w, mask = ctx.saved_tensors
        M, K = x2.shape
        N = w.shape[0]
        g2 = g.reshape(-1, N).contiguous().float()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.empty((M, K), device=g.device, dtype=torch.float32)
            k["bwd_x"][(k["cdiv"](M, _B), k["cdiv"](K, _B))](g2, w, mask, gx, M, N, K, BM=_B, BK=_B, BN=_B)
            gx = gx.reshape(*ctx.lead, K)
        if ctx.needs_input_grad[1]:
            gw = torch.empty((N, K), device=g.device, dtype=torch.float32)
            k["bwd_w"][(k["cdiv"](N, _B), k["cdiv"](K, _B))](g2, x2, mask, gw, M, N, K, BN=_B, BK=_B, BM=_B)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            gb = g2.sum(0)
        return gx, gw, None, gb


def masked_linear(
    x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(x, weight ⊙ mask, bias)`` with the mask applied inside the Triton matmuls."""
    return _MaskedLinearFn.apply(x, weight, mask.contiguous().view(torch.uint8), bias)


def masked_forward(layer: MaskedLayer, x: torch.Tensor) -> torch.Tensor:
    assert layer.weight_mask is not None
    if isinstance(layer, torch.nn.Linear):
        return masked_linear(x, layer.weight, layer.weight_mask, layer.bias)
    # convolutions: cuDNN on W ⊙ M (the cheapest correct path measured; see the module docstring)
    return layer.dense_forward(x, layer.weight * layer.weight_mask.to(layer.weight.dtype))


TRITON_KERNEL = Kernel(
    name="triton",
    op=MASKED,
    description="Triton matmuls that load each weight tile with its mask tile (∂W masked in-kernel)",
    devices=("cuda", "cpu") if _INTERPRET else ("cuda",),
    dtypes=(torch.float32,),
    priority=-1,  # listed after the default and the oracle: optional, and only where Triton runs
    probe=_probe,
    forward=masked_forward,
)

RECORDS: tuple[Kernel, ...] = (TRITON_KERNEL,)
