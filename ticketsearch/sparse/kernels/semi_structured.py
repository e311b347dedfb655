"""``semi_structured`` spmm: a 2:4 Linear on CUDA through ``torch.sparse.to_sparse_semi_structured``.

Why: NVIDIA GPUs since Ampere multiply a 2:4 sparse fp16/bf16 matrix on their sparse tensor cores
(cuSPARSELt, or CUTLASS where cuSPARSELt is missing), reading half the weights; PyTorch exposes it as a
tensor subclass that ``F.linear`` dispatches on. ``load_ticket(device="cuda", dtype=torch.float16)``
converts each Linear whose ticket layer obeys 2:4 with :func:`to_semi_structured`; a layer the library
cannot take (its shape is below or not a multiple of the minimum tile, or the GPU has no sparse tensor
cores) stays dense, with the reason from :func:`semi_structured_unsupported`.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import SPMM, Kernel

__all__ = ["RECORDS", "SEMI_STRUCTURED_KERNEL", "DTYPES", "semi_structured_unsupported", "to_semi_structured"]

DTYPES = (torch.float16, torch.bfloat16)


def _device_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return f"torch {torch.__version__} has no to_sparse_semi_structured"
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return f"{torch.cuda.get_device_name()} has no sparse tensor cores (compute capability < 8.0)"
    return None


def _subclass() -> Any:
    """cuSPARSELt where this torch build has it, else CUTLASS (what torch itself would pick if told)."""
    sparse = torch.sparse
    cusparselt = getattr(torch.backends, "cusparselt", None)
    if cusparselt is not None and cusparselt.is_available():
        return sparse.SparseSemiStructuredTensorCUSPARSELT
    return sparse.SparseSemiStructuredTensorCUTLASS


def semi_structured_unsupported(weight: torch.Tensor) -> str | None:
    """Why ``weight`` (a 2-D CUDA fp16/bf16 Linear weight obeying 2:4) cannot be converted, or None."""
    reason = _device_reason()
    if reason is not None:
        return reason
    if weight.dim() != 2 or weight.device.type != "cuda":
        return "a 2-D CUDA weight is needed"
    if weight.dtype not in DTYPES:
        return f"{str(weight.dtype).removeprefix('torch.')} (fp16 or bf16 is needed)"
    cfg = _subclass()._DTYPE_SHAPE_CONSTRAINTS[weight.dtype]
    rows, cols = (int(d) for d in weight.shape)
    r, c = int(cfg.sparse_min_rows), int(cfg.sparse_min_cols)
    if rows < r or rows % r or cols < c or cols % c:
        return f"shape {rows}x{cols} is not a multiple of the {r}x{c} tile"
    return None


def to_semi_structured(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as a semi-structured sparse tensor (its zeros must form 2:4: at most 2 nonzeros in every
    4 consecutive inputs of a row, which the caller has checked — the conversion keeps 2 of every 4 and
    does not check). RuntimeError with the reason when it cannot be converted."""
    reason = semi_structured_unsupported(weight)
    if reason is not None:
        raise RuntimeError(f"cannot convert to a 2:4 semi-structured tensor: {reason}")
    out: torch.Tensor = _subclass().from_dense(weight.detach().contiguous())
    return out


def _probe(build: bool) -> str | None:
    return _device_reason()


SEMI_STRUCTURED_KERNEL = Kernel(
    name="semi_structured",
    op=SPMM,
    description="2:4 Linear on CUDA sparse tensor cores (torch.sparse.to_sparse_semi_structured), fp16/bf16",
    devices=("cuda",),
    dtypes=DTYPES,
    priority=10,
    auto=True,
    probe=_probe,
)

RECORDS: tuple[Kernel, ...] = (SEMI_STRUCTURED_KERNEL,)
