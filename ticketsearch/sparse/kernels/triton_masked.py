"""Masked linear layers in Triton: the matmul loads each weight tile together with its mask tile.

Forward ``y = x (W ⊙ M)ᵀ + b`` and backward ``∂x = g (W ⊙ M)`` mask the weight inside the matmul, so
``W ⊙ M`` is never materialised; ``∂W = (gᵀ x) ⊙ M`` is masked in the same kernel that computes it, so
pruned weights get exactly zero gradient. The mask comes in one of two layouts (``BITS``): the layer's bool
tensor viewed as bytes (no copy; this module's ``triton`` kernel), or bit-packed int32 words, 32 columns a
word, unpacked next to the weight tile (:mod:`.triton_bits`: an eighth of the mask traffic). Matmuls
accumulate in float32 with IEEE precision (no TF32), so results match the reference kernel to float32
rounding; float16/bfloat16 tensors are computed in float32 and cast back. Convolutions keep cuDNN on
``W ⊙ M`` (one multiply per step feeding the fastest conv).

Tiles are autotuned per ``(N, K)`` on the GPU; the interpreter gets one 32-wide configuration through the
same autotuner, so CI runs the code path the GPU runs. Runs on CUDA; with ``TRITON_INTERPRET=1`` Triton's
interpreter runs the same kernels on CPU, which is how CI tests them without a GPU. Triton is imported
lazily: a machine without it only loses these kernels.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from .base import MASKED, Kernel

if TYPE_CHECKING:
    from ..layers import MaskedLayer

__all__ = ["RECORDS", "TRITON_KERNEL", "masked_linear", "masked_linear_packed", "triton_probe", "INTERPRET"]

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_JIT: dict[str, Any] = {}


def triton_probe(build: bool) -> str | None:
    """Why a Triton kernel cannot run here (None: it can); shared by every ``triton*`` kernel module."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"triton cannot be imported ({type(exc).__name__}: {exc})"
    if not INTERPRET and not torch.cuda.is_available():
        return "needs CUDA (or TRITON_INTERPRET=1 to run the kernels in Triton's interpreter on CPU)"
    return None


def _kernels() -> dict[str, Any]:
    """The jitted kernels (:mod:`._jit_masked`), imported on first use: importing this module never
    imports triton."""
    if not _JIT:
        import triton

        from . import _jit_masked as j

        _JIT.update(fwd=j.fwd, bwd_x=j.bwd_x, bwd_w=j.bwd_w, cdiv=triton.cdiv)
    return _JIT


class _MaskedLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        mask: torch.Tensor,
        bias: torch.Tensor | None,
        bits: bool,
    ) -> torch.Tensor:
        k = _kernels()
        cdiv = k["cdiv"]
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).contiguous().float()
        w = weight.contiguous().float()
        M, K = x2.shape
        N = w.shape[0]
        KW = mask.shape[-1] if bits else K
        y = torch.empty((M, N), device=x.device, dtype=torch.float32)
        b = bias.contiguous().float() if bias is not None else w  # unused without HAS_BIAS
        k["fwd"][lambda c: (cdiv(M, c["BM"]), cdiv(N, c["BN"]))](
            x2, w, mask, b, y, M, N, K, KW, HAS_BIAS=bias is not None, BITS=bits
        )
        ctx.save_for_backward(x2, w, mask)
        ctx.meta = (bias is not None, bits, lead, x.dtype, weight.dtype, KW)
        return y.to(x.dtype).reshape(*lead, N)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        k = _kernels()
        cdiv = k["cdiv"]
        x2, w, mask = ctx.saved_tensors
        has_bias, bits, lead, x_dtype, w_dtype, KW = ctx.meta
        M, K = x2.shape
        N = w.shape[0]
        g2 = g.reshape(-1, N).contiguous().float()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.empty((M, K), device=g.device, dtype=torch.float32)
            k["bwd_x"][lambda c: (cdiv(M, c["BM"]), cdiv(K, c["BK"]))](
                g2, w, mask, gx, M, N, K, KW, BITS=bits
            )
            gx = gx.to(x_dtype).reshape(*lead, K)
        if ctx.needs_input_grad[1]:
            gw = torch.empty((N, K), device=g.device, dtype=torch.float32)
            k["bwd_w"][lambda c: (cdiv(N, c["BN"]), cdiv(K, c["BK"]))](
                g2, x2, mask, gw, M, N, K, KW, BITS=bits
            )
            gw = gw.to(w_dtype)
        if has_bias and ctx.needs_input_grad[3]:
            gb = g2.sum(0).to(w_dtype)
        return gx, gw, None, gb, None


def masked_linear(
    x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(x, weight ⊙ mask, bias)`` with the bool mask applied inside the Triton matmuls."""
    return _MaskedLinearFn.apply(x, weight, mask.contiguous().view(torch.uint8), bias, False)


def masked_linear_packed(
    x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(x, weight ⊙ mask, bias)`` with ``packed = pack_bits(mask)`` (int32 words, see
    :func:`.triton_bits.pack_bits`) unpacked inside the Triton matmuls."""
    if packed.dtype != torch.int32 or packed.dim() != 2 or packed.shape[0] != weight.shape[0]:
        raise ValueError(
            f"packed mask must be int32 [{weight.shape[0]}, ceil(K/32)], got {packed.dtype} {list(packed.shape)}"
        )
    if packed.shape[1] != (weight.shape[1] + 31) // 32:
        raise ValueError(f"packed mask has {packed.shape[1]} words per row for {weight.shape[1]} columns")
    return _MaskedLinearFn.apply(x, weight, packed.contiguous(), bias, True)


def masked_forward(layer: MaskedLayer, x: torch.Tensor) -> torch.Tensor:
    assert layer.weight_mask is not None
    if isinstance(layer, torch.nn.Linear):
        return masked_linear(x, layer.weight, layer.weight_mask, layer.bias)
    # convolutions: cuDNN on W ⊙ M (the cheapest correct path measured; see the module docstring)
    return layer.dense_forward(x, layer.weight * layer.mask_float())


TRITON_KERNEL = Kernel(
    name="triton",
    op=MASKED,
    description="Triton matmuls that load each weight tile with its bool mask tile (∂W masked in-kernel)",
    devices=("cuda", "cpu") if INTERPRET else ("cuda",),
    dtypes=DTYPES,
    priority=-1,  # listed after the default and the oracle: optional, and only where Triton runs
    probe=triton_probe,
    forward=masked_forward,
)

RECORDS: tuple[Kernel, ...] = (TRITON_KERNEL,)
