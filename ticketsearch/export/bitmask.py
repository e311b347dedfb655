"""``bitmask`` encoding: one bit per weight (packed, little bit order), compressed when that is smaller.

Why: its size does not depend on where the kept weights are, 1 bit per weight before compression; LZMA
brings it near the entropy of the mask (about 0.29 bits per weight at 5% density, 0.08 at 1%). Best from
roughly 10% density up; below that the delta-coded CSR of :mod:`.csr` is usually smaller.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.errors import DataError
from .container import pack_blob, unpack_blob

__all__ = ["encode_index", "decode_index"]


def encode_index(mask: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The packed (and possibly compressed) bitmask of ``mask``, as blobs and the layer's header fields."""
    bits = np.packbits(mask.reshape(-1).astype(np.uint8), bitorder="little")
    stored, rec = pack_blob(bits, compress=True)
    return {"bitmask": stored}, {"blobs": {"bitmask": rec}}


def decode_index(
    stored: dict[str, np.ndarray], rec: dict[str, Any], shape: tuple[int, ...], *, what: str
) -> np.ndarray:
    """The flat bool mask; padding bits must be zero and the bit count must fit ``shape``."""
    n = int(np.prod(shape, dtype=np.int64))
    bits = unpack_blob(stored["bitmask"], rec["blobs"].get("bitmask"), what=f"{what} bitmask")
    if bits.dtype != np.uint8 or bits.shape != ((n + 7) // 8,):
        raise DataError(
            f"{what}: the bitmask holds {bits.size} bytes, a layer of shape {list(shape)} needs {(n + 7) // 8}"
        )
    flat = np.unpackbits(bits, bitorder="little")
    if flat[n:].any():
        raise DataError(f"{what}: the bitmask has bits set past the layer's {n} weights")
    return flat[:n].astype(bool)
