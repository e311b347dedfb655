"""``dense`` encoding: the zero-filled weight as it is, plus its bitmask — the baseline the others beat.

Why the bitmask too: a kept weight can be exactly zero (or round to zero in fp16), so zeros alone do not
say which weights the ticket keeps; the compressed bitmask costs ~1% of the weights at 5% density.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.errors import DataError
from . import bitmask
from .container import pack_blob, unpack_blob

__all__ = ["encode", "decode"]


def encode(weight: np.ndarray, mask: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The zero-filled weight (uncompressed, typed) and the mask's bitmask."""
    tensors, rec = bitmask.encode_index(mask)
    stored, wrec = pack_blob(np.where(mask, weight, np.zeros((), weight.dtype)), compress=False)
    tensors["weight"] = stored
    rec["blobs"]["weight"] = wrec
    return tensors, rec


def decode(
    stored: dict[str, np.ndarray], rec: dict[str, Any], shape: tuple[int, ...], *, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """(flat mask, kept values in row-major order); pruned positions of the weight must be zero."""
    mask = bitmask.decode_index(stored, rec, shape, what=what)
    w = unpack_blob(stored["weight"], rec["blobs"].get("weight"), what=f"{what} weight")
    if tuple(w.shape) != tuple(shape):
        raise DataError(f"{what}: the dense weight has shape {list(w.shape)}, the layer {list(shape)}")
    flat = w.reshape(-1)
    if (flat[~mask] != 0).any():
        raise DataError(f"{what}: the dense weight has nonzero values where the mask prunes")
    return mask, flat[mask]
