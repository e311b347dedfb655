"""``bsr`` encoding: a ``block:RxC`` layer as its kept blocks — block coordinates plus dense R×C values.

Why: a mask made under ``--pattern block:RxC`` keeps whole blocks of the row view ``(out, in·kh·kw)``
(:mod:`ticketsearch.core.pattern`), so one index locates R·C weights. The block coordinates are the CSR of
the block mask (:mod:`.csr`: per block row the count of kept blocks, then their block columns, absolute or
delta-coded, narrowest unsigned ints, compressed when smaller); ``values`` holds each kept block's R×C
weights, row-major inside the block, blocks in that CSR order — the layout the block-sparse inference
kernel reads (:mod:`ticketsearch.sparse.kernels.compiled_structured`).

A mask with a partly kept block cannot be written (:func:`encode` refuses it in one line).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.errors import DataError
from . import csr
from .container import pack_blob, unpack_blob
from .csr import as_rows

__all__ = ["encode", "decode", "check_block"]


def check_block(block: Any, rows: int, cols: int, *, what: str) -> tuple[int, int]:
    """(r, c) when ``block`` is ``[r, c]`` tiling a ``rows × cols`` row view; DataError otherwise."""
    ok = (
        isinstance(block, list)
        and len(block) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 64 for v in block)
    )
    if not ok:
        raise DataError(
            f"{what}: a block size must be [R, C] with 1 <= R, C <= 64, the header says {block!r}"
        )
    r, c = int(block[0]), int(block[1])
    if rows % r or cols % c:
        raise DataError(f"{what}: {r}x{c} blocks do not tile its {rows}x{cols} row view")
    return r, c


def _blocks(a: np.ndarray, rows: int, cols: int, r: int, c: int) -> np.ndarray:
    """(rows/r, cols/c, r, c) view of a (rows, cols) array."""
    return a.reshape(rows // r, r, cols // c, c).transpose(0, 2, 1, 3)


def encode(
    weight: np.ndarray, mask: np.ndarray, r: int, c: int, *, what: str = "layer"
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Blobs and header record of one layer whose ``mask`` keeps whole ``r×c`` blocks; a partly kept block
    is a :class:`DataError` naming it."""
    rows, cols = as_rows(tuple(mask.shape))
    r, c = check_block([r, c], rows, cols, what=what)
    mb = _blocks(mask.reshape(rows, cols).astype(bool), rows, cols, r, c)
    count = mb.sum(axis=(2, 3))
    partial = (count > 0) & (count < r * c)
    if partial.any():
        i, j = (int(v) for v in np.argwhere(partial)[0])
        raise DataError(
            f"{what} breaks pattern block:{r}x{c}: block at row {i * r}, column {j * c} keeps "
            f"{int(count[i, j])} of {r * c} weights (a block is kept whole or pruned whole)"
        )
    kept = count > 0
    blobs, rec = csr.encode_index(kept)
    rec["block"] = [r, c]
    vals = _blocks(weight.reshape(rows, cols), rows, cols, r, c)[kept]  # (blocks, r, c), row-major order
    blobs["values"], rec["blobs"]["values"] = pack_blob(np.ascontiguousarray(vals), compress=False)
    return blobs, rec


def decode(
    stored: dict[str, np.ndarray], rec: dict[str, Any], shape: tuple[int, ...], *, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """(flat bool mask, kept values in row-major order of the weight) after checking the block layout."""
    rows, cols = as_rows(shape)
    r, c = check_block(rec.get("block"), rows, cols, what=what)
    kept = csr.decode_index(stored, rec, (rows // r, cols // c), what=f"{what} blocks").reshape(
        rows // r, cols // c
    )
    nb = int(kept.sum())
    vals = unpack_blob(stored["values"], rec["blobs"].get("values"), what=f"{what} values")
    if vals.ndim != 3 or tuple(vals.shape) != (nb, r, c):
        raise DataError(
            f"{what}: the block values must be {[nb, r, c]} ({nb} kept blocks of {r}x{c}), the file holds "
            f"{list(vals.shape)}"
        )
    mask = np.repeat(np.repeat(kept, r, axis=0), c, axis=1)
    full = np.zeros((rows // r, cols // c, r, c), dtype=vals.dtype)
    full[kept] = vals
    dense = full.transpose(0, 2, 1, 3).reshape(rows, cols)
    return mask.reshape(-1), dense.reshape(-1)[mask.reshape(-1)]
