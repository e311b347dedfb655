"""``triton_bits``: the Triton masked linear with the mask bit-packed, 32 columns to an int32 word.

The same matmul kernels as :mod:`.triton_masked` (``BITS=True``): each program loads the mask words of its
weight tile and shifts the bits out next to the weights, so the mask costs an eighth of the bool layout's
memory traffic (a bit per weight instead of a byte). The packed mask is built once per mask and device and
cached on the layer (:meth:`MaskedLayer.derived_mask`), so a training step never repacks it.

Layout: row ``n`` holds ``ceil(K/32)`` words; column ``k`` is bit ``k % 32`` (least significant first) of
word ``k // 32``; bits past ``K`` are zero. Convolutions run cuDNN on ``W ⊙ M``, as in :mod:`.triton_masked`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .base import MASKED, Kernel
from .triton_masked import DTYPES, INTERPRET, masked_linear_packed, triton_probe

if TYPE_CHECKING:
    from ..layers import MaskedLayer

__all__ = ["RECORDS", "TRITON_BITS_KERNEL", "pack_bits", "unpack_bits"]


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """An ``[N, K]`` bool mask as int32 words ``[N, ceil(K/32)]`` (bit ``k % 32`` of word ``k // 32``)."""
    if mask.dim() != 2:
        raise ValueError(f"pack_bits takes a 2-d mask, got shape {list(mask.shape)}")
    n, k = mask.shape
    kw = (k + 31) // 32
    padded = torch.zeros((n, kw * 32), dtype=torch.int64, device=mask.device)
    padded[:, :k] = mask.to(torch.int64)
    shifts = torch.arange(32, dtype=torch.int64, device=mask.device)
    words = (padded.view(n, kw, 32) << shifts).sum(-1)  # in [0, 2^32): exact in int64
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # the same bits, as int32


def unpack_bits(packed: torch.Tensor, k: int) -> torch.Tensor:
    """The bool ``[N, k]`` mask of :func:`pack_bits`' output (for tests and inspection)."""
    shifts = torch.arange(32, dtype=torch.int64, device=packed.device)
    bits = (packed.to(torch.int64).unsqueeze(-1) >> shifts) & 1
    return bits.reshape(packed.shape[0], -1)[:, :k].bool()


def masked_forward(layer: MaskedLayer, x: torch.Tensor) -> torch.Tensor:
    assert layer.weight_mask is not None
    if isinstance(layer, torch.nn.Linear):
        packed = layer.derived_mask("bits32", pack_bits)
        return masked_linear_packed(x, layer.weight, packed, layer.bias)
    return layer.dense_forward(x, layer.weight * layer.mask_float())


TRITON_BITS_KERNEL = Kernel(
    name="triton_bits",
    op=MASKED,
    description="Triton matmuls that unpack a bit-packed mask (int32 words) beside each weight tile",
    devices=("cuda", "cpu") if INTERPRET else ("cuda",),
    dtypes=DTYPES,
    priority=-2,  # after `triton`: the bool layout is the simpler one; the speed benchmark compares them
    probe=triton_probe,
    forward=masked_forward,
)

RECORDS: tuple[Kernel, ...] = (TRITON_BITS_KERNEL,)
