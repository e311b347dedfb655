"""``nm`` encoding: an N:M layer as its kept values plus, per group of M inputs, N small in-group indices.

Why: a mask made under ``--pattern N:M`` keeps at most N of every M consecutive weights of a row (the row
view ``(out, in·kh·kw)`` of :mod:`ticketsearch.core.pattern`), so a kept weight's position is its group
(implied by the order) plus an index below M: 2 bits for M ≤ 4, a byte otherwise, instead of a bitmask's
M bits per group or CSR's column numbers. This is also the layout the N:M inference kernel reads
(:mod:`ticketsearch.sparse.kernels.compiled_structured`).

Blobs: ``indices`` — per row, per group, N slots, each its in-group index; the kept positions of a group
ascending in its first slots; a group keeping fewer than N (a density below N/M) fills its remaining slots
with index 0. Stored as uint8, or four 2-bit indices per byte (little bit order) for M ≤ 4, then
compressed when that is smaller. ``slot_kept`` — only when some group keeps fewer than N: one bit per slot
(packed, compressed), set for the slots that hold a kept weight. ``values`` — the kept values in the
row-major order of their positions, as every other encoding stores them.

Decoding checks every claim: indices below M, strictly ascending among a group's kept slots, the kept
slots first in their group, unused slots at index 0, padding bits zero, and exactly one value per kept
slot. A group keeping more than N cannot be written at all (:func:`encode` refuses it in one line).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.errors import DataError
from .container import pack_blob, unpack_blob
from .csr import as_rows

__all__ = ["encode", "decode", "index_bits", "check_nm"]


def index_bits(m: int) -> int:
    """Bits per stored in-group index: 2 for M ≤ 4 (packed four per byte), else 8 (uint8)."""
    return 2 if m <= 4 else 8


def check_nm(n: Any, m: Any, cols: int, *, what: str) -> tuple[int, int]:
    """(n, m) when they describe an N:M layout of rows of ``cols`` inputs; DataError otherwise."""
    ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (n, m)) and 1 <= n < m <= 64
    if not ok:
        raise DataError(f"{what}: N:M needs integers 1 <= N < M <= 64, the header says {n!r}:{m!r}")
    if cols % m:
        raise DataError(f"{what}: rows of {cols} inputs cannot hold {n}:{m} (not a multiple of {m})")
    return int(n), int(m)


def encode(
    weight: np.ndarray, mask: np.ndarray, n: int, m: int, *, what: str = "layer"
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Blobs and header record of one layer whose ``mask`` keeps at most ``n`` of every ``m`` inputs.

    A group keeping more than ``n`` is a :class:`DataError` naming the row and the columns: the mask does
    not obey the pattern it claims.
    """
    rows, cols = as_rows(tuple(mask.shape))
    n, m = check_nm(n, m, cols, what=what)
    groups = cols // m
    g = mask.reshape(rows, groups, m).astype(bool)
    count = g.sum(-1)
    if count.size and int(count.max()) > n:
        i, j = (int(v) for v in np.argwhere(count > n)[0])
        raise DataError(
            f"{what} breaks pattern {n}:{m}: row {i}, columns {j * m}..{j * m + m - 1} keep {int(count[i, j])} "
            f"of {m}"
        )
    order = np.argsort(~g, axis=-1, kind="stable")[..., :n]  # kept positions first, ascending
    kept = np.take_along_axis(g, order, -1)
    idx = np.where(kept, order, 0).astype(np.uint8).reshape(-1)
    bits = index_bits(m)
    if bits == 2:
        pad = (-idx.size) % 4
        q = np.concatenate([idx, np.zeros(pad, np.uint8)]).reshape(-1, 4)
        idx = (q[:, 0] | (q[:, 1] << 2) | (q[:, 2] << 4) | (q[:, 3] << 6)).astype(np.uint8)
    blobs: dict[str, np.ndarray] = {}
    rec: dict[str, Any] = {"n": n, "m": m, "index_bits": bits, "blobs": {}}
    blobs["indices"], rec["blobs"]["indices"] = pack_blob(idx, compress=True)
    if not kept.all():
        slot_bits = np.packbits(kept.reshape(-1).astype(np.uint8), bitorder="little")
        blobs["slot_kept"], rec["blobs"]["slot_kept"] = pack_blob(slot_bits, compress=True)
    flat = mask.reshape(-1).astype(bool)
    blobs["values"], rec["blobs"]["values"] = pack_blob(weight.reshape(-1)[flat], compress=False)
    return blobs, rec


def decode(
    stored: dict[str, np.ndarray], rec: dict[str, Any], shape: tuple[int, ...], *, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """(flat bool mask, kept values in row-major order) after checking every claim of the layout."""
    rows, cols = as_rows(shape)
    n, m = check_nm(rec.get("n"), rec.get("m"), cols, what=what)
    bits = rec.get("index_bits")
    if bits != index_bits(m):
        raise DataError(f"{what}: {n}:{m} stores {index_bits(m)}-bit indices, the header says {bits!r}")
    slots = rows * (cols // m) * n
    raw = unpack_blob(stored["indices"], rec["blobs"].get("indices"), what=f"{what} indices")
    want = (slots + 3) // 4 if bits == 2 else slots
    if raw.dtype != np.uint8 or raw.shape != (want,):
        raise DataError(
            f"{what}: the N:M indices must be {want} uint8 bytes, the file holds {raw.dtype.name}{list(raw.shape)}"
        )
    if bits == 2:
        idx = np.stack([(raw >> s) & 3 for s in (0, 2, 4, 6)], axis=-1).reshape(-1)
        if idx[slots:].any():
            raise DataError(f"{what}: the packed N:M indices have bits set past the layer's {slots} slots")
        idx = idx[:slots]
    else:
        idx = raw
    if "slot_kept" in stored:
        sk = unpack_blob(stored["slot_kept"], rec["blobs"].get("slot_kept"), what=f"{what} kept slots")
        if sk.dtype != np.uint8 or sk.shape != ((slots + 7) // 8,):
            raise DataError(f"{what}: the kept-slot bits must be {(slots + 7) // 8} uint8 bytes")
        flags = np.unpackbits(sk, bitorder="little")
        if flags[slots:].any():
            raise DataError(f"{what}: the kept-slot bits have bits set past the layer's {slots} slots")
        kept = flags[:slots].astype(bool)
    else:
        kept = np.ones(slots, dtype=bool)
    idx3 = idx.reshape(rows, cols // m, n).astype(np.int64)
    k3 = kept.reshape(rows, cols // m, n)
    if (idx3 >= m).any():
        raise DataError(f"{what}: an N:M in-group index is not below M = {m}")
    if (idx3[~k3] != 0).any():
        raise DataError(f"{what}: an unused N:M slot holds a nonzero index")
    if n > 1:
        if (k3[..., 1:] & ~k3[..., :-1]).any():
            raise DataError(f"{what}: a group's kept N:M slots are not its first slots")
        both = k3[..., 1:] & k3[..., :-1]
        if (np.diff(idx3, axis=-1)[both] <= 0).any():
            raise DataError(f"{what}: a group's N:M indices are not strictly ascending")
    mask = np.zeros((rows, cols // m, m), dtype=bool)
    r, g, s = np.nonzero(k3)
    mask[r, g, idx3[r, g, s]] = True
    values = unpack_blob(stored["values"], rec["blobs"].get("values"), what=f"{what} values")
    return mask.reshape(-1), values
