"""Masked layers and the kernel backend switch (reference PyTorch path; Triton when available)."""

from .layers import (
    BACKENDS,
    MaskedConv2d,
    MaskedLayer,
    MaskedLinear,
    apply_mask,
    enforce_mask,
    get_mask,
    grad_masker,
    mask_gradients,
    masked_layers,
    output_parameter,
    prunable_parameters,
    prunable_shapes,
    register_backend,
    set_backend,
    sparsify,
)

__all__ = [
    "BACKENDS",
    "MaskedConv2d",
    "MaskedLayer",
    "MaskedLinear",
    "apply_mask",
    "enforce_mask",
    "get_mask",
    "grad_masker",
    "mask_gradients",
    "masked_layers",
    "output_parameter",
    "prunable_parameters",
    "prunable_shapes",
    "register_backend",
    "set_backend",
    "sparsify",
]
