"""``nm`` and ``bsr`` spmm: C++ CPU kernels (``csrc/structured.cpp``) for N:M and block-sparse Linear layers.

Why kernels of their own: a matvec with an *unstructured* sparse weight gathers one input per kept weight,
and a gather costs several times a contiguous load, so unstructured CSR only beats the dense matvec at low
density. A structured weight avoids the gather. N:M (``2:4``: at most 2 kept in every 4 consecutive
inputs): sixteen kept weights of a row always come from one fixed window of (16/N)·M inputs, which sits in
a few vector registers, so each weight's input is picked by a register permute; the kernel reads the kept
values plus one byte of index each — half the dense weight's bytes and a bit more at 2:4. Block ``R×C``:
each kept block is a small dense matrix; one multiply-add per weight with contiguous loads, one index per
block.

Float32 on the CPU. Built on first use with the same machinery as :mod:`.compiled_spmm` (``_cpp.py``:
``-march=native``, then without; cached per source hash, flags and CPU; ``TICKETSEARCH_NO_EXT=1``
disables it). Without the extension the ``nm`` path does not exist (torch has no N:M format on the CPU)
and ``bsr`` runs torch's own BSR tensors (:func:`bsr_linear` falls back to them): ``load_ticket`` times
whatever exists against dense and keeps dense unless it wins by its margin.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ._cpp import CppExtension
from .base import SPMM, Kernel
from .compiled_spmm import _cpu_tag

__all__ = [
    "RECORDS",
    "SOURCE",
    "NM_KERNEL",
    "BSR_KERNEL",
    "NmWeight",
    "BsrWeight",
    "structured_extension",
    "structured_unavailable_reason",
    "to_nm",
    "to_bsr",
    "nm_linear",
    "bsr_linear",
    "TorchBsrLinear",
]

SOURCE = Path(__file__).resolve().parent / "csrc" / "structured.cpp"
_FLAG_SETS = (["-O3", "-march=native"], ["-O3"])


def _ext_name(flags: Sequence[str]) -> str:
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(" ".join(flags).encode())
    if "-march=native" in flags:
        h.update(_cpu_tag().encode())
    return "ticketsearch_structured_" + h.hexdigest()[:10]


_EXT = CppExtension(
    SOURCE,
    name=_ext_name,
    flag_sets=_FLAG_SETS,
    label="structured sparse inference",
    fallback="dense, CSR and torch BSR paths",
)


def structured_extension(*, build: bool = True) -> Any:
    """The compiled module, or None (disabled, no compiler, or not built yet with ``build=False``)."""
    return _EXT.load(build=build)


def structured_unavailable_reason(*, build: bool = True) -> str | None:
    if structured_extension(build=build) is not None:
        return None
    return (
        _EXT.error or "not built yet (the first load_ticket of a structured ticket builds it, about a minute)"
    )


def _ext() -> Any:
    ext = structured_extension(build=True)
    if ext is None:
        reason = structured_unavailable_reason(build=False)
        raise RuntimeError(f"the compiled structured sparse kernel is unavailable ({reason})")
    return ext


# -- N:M ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NmWeight:
    """An N:M weight as slots: per output row and group of ``m`` inputs, ``n`` values (fp32) and in-group
    indices (uint8), ascending; a group keeping fewer than ``n`` pads with value 0 at index 0."""

    vals: torch.Tensor  # (out, in / m * n) float32
    idx: torch.Tensor  # (out, in / m * n) uint8
    n: int
    m: int
    in_features: int

    @property
    def out_features(self) -> int:
        return int(self.vals.shape[0])


def to_nm(weight: torch.Tensor, n: int, m: int) -> NmWeight:
    """The nonzero entries of a Linear weight (out, in) as :class:`NmWeight`.

    Raises ValueError (one line) when ``in`` is not a multiple of ``m`` or a group holds more than ``n``
    nonzeros. Built from the zero-filled weight, not the mask: a kept weight that is exactly 0 becomes a
    padding slot, which computes the same thing.
    """
    if weight.dim() != 2:
        raise ValueError(f"an N:M Linear weight is 2-D, got shape {list(weight.shape)}")
    rows, cols = (int(d) for d in weight.shape)
    if not 1 <= n < m <= 255 or cols % m:
        raise ValueError(f"pattern {n}:{m} does not fit a weight with {cols} inputs (need a multiple of {m})")
    g = weight.detach().to(torch.float32).reshape(rows, cols // m, m)
    nz = g != 0
    count = nz.sum(-1)
    if rows and cols and int(count.max()) > n:
        i, j = (int(v) for v in torch.nonzero(count > n)[0])
        raise ValueError(
            f"the weight breaks {n}:{m}: row {i}, inputs {j * m}..{j * m + m - 1} hold {int(count[i, j])} nonzeros"
        )
    # the kept positions first (ascending), then the padding: a stable sort on "pruned"
    order = torch.argsort((~nz).to(torch.int8), dim=-1, stable=True)[..., :n]
    valid = torch.gather(nz, -1, order)
    idx = torch.where(valid, order, torch.zeros_like(order))
    vals = torch.where(valid, torch.gather(g, -1, order), torch.zeros((), dtype=torch.float32))
    return NmWeight(
        vals.reshape(rows, -1).contiguous(), idx.reshape(rows, -1).to(torch.uint8).contiguous(), n, m, cols
    )


def nm_dense(w: NmWeight) -> torch.Tensor:
    """The zero-filled (out, in) weight of ``w`` (the oracle's view of the slots)."""
    rows, S = w.vals.shape
    groups = w.in_features // w.m
    dense = torch.zeros(rows, groups, w.m, dtype=w.vals.dtype, device=w.vals.device)
    src = w.vals.reshape(rows, groups, w.n)
    dense.scatter_add_(-1, w.idx.reshape(rows, groups, w.n).long(), src)
    return dense.reshape(rows, w.in_features)


def nm_linear(w: NmWeight, bias: torch.Tensor | None, relu: bool = False) -> Any:
    """The compiled N:M Linear: an object whose ``forward(x)`` is ``F.linear(x, W, bias)`` (then ReLU) for
    x of shape (B, in_features), float32 on the CPU. Needs the extension (RuntimeError otherwise)."""
    _check_bias(bias, w.out_features)
    return _ext().NmLinear(w.vals, w.idx, _bias(bias), w.n, w.m, w.in_features, bool(relu))


# -- blocks ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BsrWeight:
    """A block-sparse weight: per block row, the kept blocks' columns (int32) and dense ``r×c`` values."""

    rowptr: torch.Tensor  # (out / r + 1,) int32
    cols: torch.Tensor  # (blocks,) int32, block columns
    vals: torch.Tensor  # (blocks, r, c) float32
    r: int
    c: int
    in_features: int

    @property
    def out_features(self) -> int:
        return (int(self.rowptr.numel()) - 1) * self.r

    @property
    def blocks(self) -> int:
        return int(self.cols.numel())


def to_bsr(weight: torch.Tensor, r: int, c: int) -> BsrWeight:
    """The blocks of a Linear weight (out, in) holding any nonzero, as :class:`BsrWeight` (a pruned block is
    all zero; a kept block may hold zeros). ValueError when the shape is not a multiple of ``r×c``."""
    if weight.dim() != 2:
        raise ValueError(f"a block-sparse Linear weight is 2-D, got shape {list(weight.shape)}")
    rows, cols = (int(d) for d in weight.shape)
    if r < 1 or c < 1 or rows % r or cols % c:
        raise ValueError(f"blocks of {r}x{c} do not tile a {rows}x{cols} weight")
    blocks = weight.detach().to(torch.float32).reshape(rows // r, r, cols // c, c).transpose(1, 2)
    kept = (blocks != 0).flatten(2).any(-1)  # (rows / r, cols / c)
    counts = kept.sum(1, dtype=torch.int64)
    rowptr = torch.zeros(rows // r + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=rowptr[1:])
    bcol = kept.nonzero()[:, 1]
    return BsrWeight(
        rowptr.to(torch.int32),
        bcol.to(torch.int32).contiguous(),
        blocks[kept].contiguous(),
        r,
        c,
        cols,
    )


def bsr_dense(w: BsrWeight) -> torch.Tensor:
    """The zero-filled (out, in) weight of ``w``."""
    brows, bcols = w.rowptr.numel() - 1, w.in_features // w.c
    dense = torch.zeros(brows, bcols, w.r, w.c, dtype=w.vals.dtype)
    brow = torch.repeat_interleave(torch.arange(brows), w.rowptr.diff().long())
    dense[brow, w.cols.long()] = w.vals
    return dense.transpose(1, 2).reshape(brows * w.r, w.in_features)


class TorchBsrLinear:
    """The pure-PyTorch block-sparse Linear: ``torch.sparse`` BSR, what :func:`bsr_linear` falls back to
    without the extension (slower than the kernel; timed against dense like every path). Its blocks are
    gcd(r, c) squares (MKL's BSR takes square blocks only; an r×c block is whole squares of that size)."""

    def __init__(self, w: BsrWeight, bias: torch.Tensor | None, relu: bool) -> None:
        side = math.gcd(w.r, w.c)
        with warnings.catch_warnings():  # "sparse BSR support is in beta": the ops we use are tested
            warnings.simplefilter("ignore")
            self.weight = bsr_dense(w).to_sparse_bsr((side, side))
        self.bias = None if bias is None else bias.detach().to(torch.float32).contiguous()
        self.relu = bool(relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y = F.linear(x, self.weight, self.bias)
        return torch.relu_(y) if self.relu else y


def bsr_linear(w: BsrWeight, bias: torch.Tensor | None, relu: bool = False) -> Any:
    """The block-sparse Linear: an object whose ``forward(x)`` is ``F.linear(x, W, bias)`` (then ReLU) —
    the compiled kernel when it builds here, else :class:`TorchBsrLinear`."""
    _check_bias(bias, w.out_features)
    ext = structured_extension(build=True)
    if ext is None:
        return TorchBsrLinear(w, bias, relu)
    return ext.BsrLinear(w.rowptr, w.cols, w.vals, _bias(bias), w.r, w.c, w.in_features, bool(relu))


def _check_bias(bias: torch.Tensor | None, rows: int) -> None:
    if bias is not None and (bias.dtype != torch.float32 or tuple(bias.shape) != (rows,)):
        raise ValueError(f"a bias must be float32 of shape ({rows},), got {bias.dtype} {tuple(bias.shape)}")


def _bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else bias.detach().contiguous()


def _probe(build: bool) -> str | None:
    return structured_unavailable_reason(build=build)


NM_KERNEL = Kernel(
    name="nm",
    op=SPMM,
    description="C++ CPU N:M Linear (kept values + uint8 in-group indices, register-permute matvec), fp32",
    devices=("cpu",),
    dtypes=(torch.float32,),
    priority=20,
    auto=True,
    probe=_probe,
)
BSR_KERNEL = Kernel(
    name="bsr",
    op=SPMM,
    description="C++ CPU block-sparse (BSR) Linear, fp32; torch's BSR tensors without the extension",
    devices=("cpu",),
    dtypes=(torch.float32,),
    priority=20,
    auto=True,
    probe=_probe,
)

RECORDS: tuple[Kernel, ...] = (NM_KERNEL, BSR_KERNEL)
