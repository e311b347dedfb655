"""``compiled`` spmm: C++ CPU kernels (``csrc/spmm.cpp``) for inference with a fixed pruned weight.

Why a kernel of our own: at batch 1 a LeNet-300-100 layer at 5% density is ~12k multiply-adds, a few
microseconds of arithmetic, and ``torch.sparse`` CSR spends about as much again in dispatch and format
checks per call; a whole chain of layers in one call pays that once per network. Convolutions have no
sparse path in PyTorch at all on CPU; :func:`conv2d` runs a stride-1 zero-padded convolution directly from
the CSR filter (one contiguous multiply-add over the padded plane per kept weight), which beats oneDNN's
dense convolution when few enough weights are kept.

Float32 on the CPU only. Built on first use with ``torch.utils.cpp_extension.load`` (g++ and ninja, about
a minute once per machine; cached under ``~/.cache/torch_extensions`` in a folder named after the source,
the flags and the CPU, so an edited kernel or another CPU never loads a stale build). It is compiled for
the building CPU (``-march=native``) and, if that fails, again without it. ``TICKETSEARCH_NO_EXT=1``
disables it; without a compiler :func:`spmm_extension` returns None and callers keep their PyTorch path.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._cpp import CppExtension
from .base import SPMM, Kernel

__all__ = [
    "RECORDS",
    "SOURCE",
    "SPMM_KERNEL",
    "CsrWeight",
    "spmm_extension",
    "spmm_unavailable_reason",
    "to_csr",
    "linear",
    "linear_chain",
    "conv2d",
    "conv_supported",
]

SOURCE = Path(__file__).resolve().parent / "csrc" / "spmm.cpp"
_FLAG_SETS = (["-O3", "-march=native"], ["-O3"])


def _cpu_tag() -> str:
    """What ``-march=native`` depends on: the machine and its instruction-set flags."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return platform.machine() + flags


def _ext_name(flags: Sequence[str]) -> str:
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(" ".join(flags).encode())
    if "-march=native" in flags:
        h.update(_cpu_tag().encode())
    return "ticketsearch_spmm_" + h.hexdigest()[:10]


_EXT = CppExtension(
    SOURCE, name=_ext_name, flag_sets=_FLAG_SETS, label="sparse inference", fallback="PyTorch paths"
)


def spmm_extension(*, build: bool = True) -> Any:
    """The compiled module, or None (disabled, no compiler, or not built yet with ``build=False``)."""
    return _EXT.load(build=build)


def spmm_unavailable_reason(*, build: bool = True) -> str | None:
    if spmm_extension(build=build) is not None:
        return None
    return _EXT.error or "not built yet (the first load_ticket builds it, about a minute)"


@dataclass(frozen=True)
class CsrWeight:
    """A pruned weight in the kernel's layout: CSR over output rows, int32 indices, fp32 values.

    ``in_features``: the row length (for a convolution C·kh·kw, the flat (c, dy, dx) filter index).
    """

    rowptr: torch.Tensor
    cols: torch.Tensor
    vals: torch.Tensor
    in_features: int

    @property
    def nnz(self) -> int:
        return int(self.vals.numel())


def to_csr(weight: torch.Tensor) -> CsrWeight:
    """The kept (nonzero) entries of a Linear (out, in) or Conv2d (out, C, kh, kw) weight, row-major."""
    w = weight.detach().to(torch.float32).reshape(weight.shape[0], -1).contiguous()
    keep = w != 0
    counts = keep.sum(1, dtype=torch.int64)
    rowptr = torch.zeros(w.shape[0] + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=rowptr[1:])
    if int(rowptr[-1]) >= 2**31 or w.shape[1] >= 2**31:
        raise ValueError("a weight this large needs 64-bit indices, which the compiled kernel does not take")
    cols = keep.nonzero()[:, 1]
    return CsrWeight(
        rowptr.to(torch.int32), cols.to(torch.int32).contiguous(), w[keep].contiguous(), int(w.shape[1])
    )


def _ext() -> Any:
    ext = spmm_extension(build=True)
    if ext is None:
        raise RuntimeError(
            f"the compiled spmm kernel is unavailable ({spmm_unavailable_reason(build=False)})"
        )
    return ext


def linear_chain(
    ws: Sequence[CsrWeight], biases: Sequence[torch.Tensor | None], relus: Sequence[bool]
) -> Any:
    """Linear layers applied in turn (ReLU after layer l where ``relus[l]``) as one compiled object whose
    ``forward(x)`` runs them all in one call (x: (B, in_features of the first))."""
    for w, b in zip(ws, biases):
        if b is not None and (b.dtype != torch.float32 or b.shape != (w.rowptr.numel() - 1,)):
            raise ValueError(
                f"a bias must be float32 of shape ({w.rowptr.numel() - 1},), got {tuple(b.shape)}"
            )
    return _ext().CsrChain(
        [w.rowptr for w in ws],
        [w.cols for w in ws],
        [w.vals for w in ws],
        [None if b is None else b.contiguous() for b in biases],
        [w.in_features for w in ws],
        [bool(r) for r in relus],
    )


def linear(w: CsrWeight, bias: torch.Tensor | None, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """``F.linear(x, W, bias)`` (then ReLU if ``relu``) for x of shape (B, in_features); builds the layer
    object each call (hold a :func:`linear_chain` to run one repeatedly)."""
    return linear_chain([w], [bias], [relu]).forward(x)


def conv_supported(conv: torch.nn.Conv2d) -> bool:
    """Whether :func:`conv2d` computes this layer: stride 1, dilation 1, one group, numeric zero padding."""
    return (
        tuple(conv.stride) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def conv2d(
    w: CsrWeight,
    bias: torch.Tensor | None,
    x: torch.Tensor,
    *,
    in_channels: int,
    kernel_size: tuple[int, int],
    padding: tuple[int, int],
    relu: bool = False,
) -> torch.Tensor:
    """``F.conv2d(x, W, bias, stride=1, padding=padding)`` (then ReLU) for x of shape (B, C, H, W)."""
    kh, kw = kernel_size
    ph, pw = padding
    return _ext().csr_conv2d(w.rowptr, w.cols, w.vals, bias, in_channels, kh, kw, ph, pw, x, relu)


def _probe(build: bool) -> str | None:
    return spmm_unavailable_reason(build=build)


SPMM_KERNEL = Kernel(
    name="compiled",
    op=SPMM,
    description="C++ CPU kernels for a fixed CSR weight: linear, a chain of linears, stride-1 conv2d",
    devices=("cpu",),
    dtypes=(torch.float32,),
    priority=30,
    auto=True,
    probe=_probe,
)

RECORDS: tuple[Kernel, ...] = (SPMM_KERNEL,)
