"""``csr`` encoding: compressed sparse rows over the weight seen as (out, in·kh·kw), narrowest unsigned ints.

Why: at low density the positions of the kept weights cost fewer bits than a bitmask. The row pointers
are stored delta-coded, as ``row_counts`` (kept weights per row: ``indptr`` is their running sum, and
counts are small numbers that compress far better than the growing pointers), and ``indices`` (columns);
each uses the narrowest unsigned type that holds its largest value (uint8/16/32/64). Columns are stored either as they are (``absolute``) or as gaps to the previous kept
column of the same row (``delta``: the first of a row is its column), whichever compresses smaller; gaps
of a random 5%-dense layer are small geometric numbers, which LZMA codes within a few percent of the
mask's entropy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.errors import DataError
from .container import pack_blob, unpack_blob

__all__ = ["encode_index", "decode_index", "narrowest_uint", "as_rows"]


def narrowest_uint(max_value: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds ``max_value``."""
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"{max_value} does not fit in 64 bits")


def as_rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols) of a weight of ``shape`` viewed as a matrix: rows are output units."""
    if len(shape) == 0:
        return 1, 1
    rows = int(shape[0])
    cols = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    return rows, cols


def _gaps(cols: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    gaps = cols.astype(np.int64).copy()
    if cols.size:
        gaps[1:] -= cols[:-1]
        starts = indptr[:-1][np.diff(indptr) > 0]
        gaps[starts] = cols[starts]
    return gaps


def encode_index(mask: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """CSR row counts and ``indices`` of ``mask`` (columns absolute or delta-coded, whichever is smaller)."""
    rows, cols = as_rows(tuple(mask.shape))
    m2 = mask.reshape(rows, cols)
    counts = m2.sum(axis=1, dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    col = np.nonzero(m2)[1].astype(np.int64)
    top_count = int(counts.max()) if counts.size else 0
    rc_stored, rc_rec = pack_blob(counts.astype(narrowest_uint(top_count)), compress=True)
    best: tuple[np.ndarray, dict[str, Any], str] | None = None
    for coding, values in (("absolute", col), ("delta", _gaps(col, indptr))):
        top = int(values.max()) if values.size else 0
        stored, rec = pack_blob(values.astype(narrowest_uint(top)), compress=True)
        if best is None or rec["stored_bytes"] < best[1]["stored_bytes"]:
            best = (stored, rec, coding)
    assert best is not None
    return (
        {"row_counts": rc_stored, "indices": best[0]},
        {"index_coding": best[2], "blobs": {"row_counts": rc_rec, "indices": best[1]}},
    )


def decode_index(
    stored: dict[str, np.ndarray], rec: dict[str, Any], shape: tuple[int, ...], *, what: str
) -> np.ndarray:
    """The flat bool mask, after checking the CSR structure (monotone rows, columns in range, no repeats)."""
    rows, cols = as_rows(shape)
    blobs = rec["blobs"]
    counts = unpack_blob(stored["row_counts"], blobs.get("row_counts"), what=f"{what} row counts")
    idx = unpack_blob(stored["indices"], blobs.get("indices"), what=f"{what} indices")
    for arr, name in ((counts, "row counts"), (idx, "indices")):
        if arr.dtype.kind != "u" or arr.ndim != 1:
            raise DataError(f"{what}: CSR {name} must be a 1-D unsigned integer array, got {arr.dtype.name}")
    if counts.shape != (rows,) or (counts.size and int(counts.max()) > cols):
        raise DataError(f"{what}: CSR row counts must be {rows} numbers of at most {cols} (the row length)")
    indptr = np.concatenate([[0], np.cumsum(counts.astype(np.int64))])
    idx = idx.astype(np.int64)
    if indptr[-1] != idx.size:
        raise DataError(f"{what}: CSR row counts add up to {indptr[-1]}, the file stores {idx.size} columns")
    if idx.size and int(idx.max()) >= cols:  # a column, or a gap between two, is always below the row length
        raise DataError(f"{what}: a CSR column index is outside the layer's {cols} columns")
    coding = rec.get("index_coding")
    if coding == "delta":
        starts = indptr[:-1][np.diff(indptr) > 0]
        is_start = np.zeros(idx.size, dtype=bool)
        is_start[starts] = True
        if idx.size and (idx[~is_start] == 0).any():
            raise DataError(f"{what}: a CSR column gap of 0 repeats a column")
        cum = np.cumsum(idx)
        base = np.zeros(idx.size, dtype=np.int64)
        base[starts] = cum[starts] - idx[starts]  # the running sum before each row
        row_base = np.maximum.accumulate(np.where(is_start, base, 0)) if idx.size else base
        col = cum - row_base
    elif coding == "absolute":
        col = idx
        row_of = np.repeat(np.arange(rows), np.diff(indptr))
        same_row = row_of[1:] == row_of[:-1]
        if (np.diff(col)[same_row] <= 0).any():
            raise DataError(f"{what}: CSR columns are not strictly increasing within a row")
    else:
        raise DataError(f"{what}: unknown CSR index coding {coding!r} (known: absolute, delta)")
    if col.size and (col.min() < 0 or col.max() >= cols):
        raise DataError(f"{what}: a CSR column index is outside the layer's {cols} columns")
    row_of = np.repeat(np.arange(rows, dtype=np.int64), np.diff(indptr))
    mask = np.zeros(rows * cols, dtype=bool)
    mask[row_of * cols + col] = True
    if int(mask.sum()) != idx.size:
        raise DataError(f"{what}: CSR indices repeat a position")
    return mask
