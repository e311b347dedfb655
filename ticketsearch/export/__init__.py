"""Tickets for small devices: export a ticket to a compact file, load it as a fast CPU model, fine-tune it.

- :func:`export_ticket` writes the kept weights of a ticket in one of :data:`FORMATS` — ``bitmask``,
  ``csr``, ``dense``, ``auto`` (per layer the smaller of bitmask and CSR) as safetensors with a JSON
  header, or ``onnx`` — with fp32 or fp16 values;
- :func:`read_ticket` verifies and decodes a ticket file (checksum, every header claim, shapes against the
  rebuilt architecture; it never executes code);
- :func:`load_ticket` turns it into an inference model whose Linear and stride-1 Conv2d layers run dense,
  ``torch.sparse`` CSR (Linear) or the compiled sparse kernel, whichever measured faster than dense;
- :func:`finetune` trains only the kept weights (optimizer state the size of the kept weights) and writes
  a new ticket.

Importing this package imports no optional dependency; ONNX export imports ``onnx`` (and uses
``onnxruntime`` to verify) only when asked for.
"""

from __future__ import annotations

from .finetune import FinetuneResult, KeptWeights, finetune, kept_model
from .inference import POLICIES, SparseConv2d, SparseLinear, load_ticket, path_summary
from .onnx_ import verify_onnx
from .ticket import FORMATS, VALUE_DTYPES, ExportResult, Ticket, export_ticket, read_ticket

__all__ = [
    "FORMATS",
    "VALUE_DTYPES",
    "POLICIES",
    "ExportResult",
    "FinetuneResult",
    "KeptWeights",
    "SparseConv2d",
    "SparseLinear",
    "Ticket",
    "export_ticket",
    "finetune",
    "kept_model",
    "load_ticket",
    "path_summary",
    "read_ticket",
    "verify_onnx",
]
