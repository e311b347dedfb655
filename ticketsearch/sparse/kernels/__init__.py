"""Every kernel of the sparse layers, in one registry and one vocabulary.

Three ops. ``masked``: how a fixed-mask layer enforces its mask (``set_backend``, ``apply_mask(backend=)``).
``topk``: how a supermask picks its exact top-k of ``|scores|`` and forms ``W ⊙ M`` (``to_supermask(kernel=)``).
``spmm``: sparse inference of an exported ticket (``load_ticket`` picks it per layer when it measures faster).
Every kernel of an op computes the same thing as that op's ``reference`` kernel, bitwise for the selection;
``tests/test_kernels.py`` checks each registered kernel against it on every device it supports here.

=========  ===============  ==============================================================  ===================
op         name             what                                                            module
=========  ===============  ==============================================================  ===================
masked     inplace          pruned weights held at zero, gradients zeroed (default)         :mod:`.torch_`
masked     reference        ``W ⊙ M`` in every forward: the oracle                          :mod:`.reference`
topk       compiled         C++ CPU kernel, float32, built on first use                     :mod:`.compiled`
topk       torch            PyTorch ops, any device/dtype                                   :mod:`.torch_`
topk       reference        a stable sort per layer and forward: the oracle                 :mod:`.reference`
masked     triton           Triton matmuls loading mask bytes with each weight tile          :mod:`.triton_masked`
masked     triton_bits      the same with the mask bit-packed in int32 words                :mod:`.triton_bits`
topk       triton           per-layer cut on the device, mask built inside Triton matmuls   :mod:`.triton_supermask`
spmm       compiled         C++ CPU CSR linear / linear chain / stride-1 conv, fp32          :mod:`.compiled_spmm`
spmm       nm               C++ CPU N:M linear (kept values + uint8 indices), fp32          :mod:`.compiled_structured`
spmm       bsr              C++ CPU block-sparse (BSR) linear, fp32                         :mod:`.compiled_structured`
spmm       semi_structured  2:4 linear on CUDA sparse tensor cores, fp16/bf16               :mod:`.semi_structured`
=========  ===============  ==============================================================  ===================

``kernel=fast`` (the default) is not a kernel: it picks the highest-priority ``auto`` top-k kernel that
supports the tensors and is ready without a build (``compiled`` on CPU float32 once built, else ``torch``).

A new kernel is one module plus a registry entry: write ``kernels/<name>.py`` with the implementation and
its :class:`Kernel` record(s) in a module-level ``RECORDS`` tuple (op, devices/dtypes, a ``probe`` saying
why it cannot run here, e.g. an optional import that failed; import such dependencies lazily so that
importing the module never fails), and add the module's name to ``_MODULES`` below. The oracle tests then
cover it on every device it supports, and skip it with the probe's reason where it cannot run.
"""

from __future__ import annotations

import importlib

from .base import (
    FAST,
    KERNELS,
    MASKED,
    OPS,
    TOPK,
    Kernel,
    KernelRegistry,
    TopKSelector,
    find_kernel,
    kernels,
    resolve_topk,
)
from .compiled import CompiledTopK, cpu_extension
from .reference import ReferenceTopK
from .torch_ import ExactTopK

__all__ = [
    "FAST",
    "KERNELS",
    "MASKED",
    "OPS",
    "TOPK",
    "Kernel",
    "KernelRegistry",
    "TopKSelector",
    "find_kernel",
    "kernels",
    "resolve_topk",
    "ExactTopK",
    "CompiledTopK",
    "ReferenceTopK",
    "cpu_extension",
]

# one entry per kernel module, in registration order (within a priority, listings keep this order)
_MODULES = (
    "torch_",
    "reference",
    "compiled",
    "triton_masked",
    "triton_bits",
    "triton_supermask",
    "compiled_spmm",
    "compiled_structured",
    "semi_structured",
)

for _module in _MODULES:
    for _kernel in importlib.import_module(f"{__name__}.{_module}").RECORDS:
        KERNELS.register_kernel(_kernel)
