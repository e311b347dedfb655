"""The ticket file: a safetensors file whose JSON header says how to read every tensor in it.

Why safetensors plus a JSON header: loading a ticket someone sent you must never run code (no pickle, no
torch.load), and the file must stay readable by stock tools. The header lives in the safetensors metadata
under :data:`HEADER_KEY`; it names the model, input shape, class count, dtype, per-layer shape, encoding,
kept count and density, the source run, and a sha256 checksum. Each stored tensor ("blob") is either a typed
array (codec ``raw``) or the compressed bytes of one (``zlib``/``lzma``/``lzma0``, see :mod:`.codecs`),
with its decoded dtype and shape in the header so decompression is bounded.

The checksum covers the header (without the checksum itself) and every tensor's name, dtype, shape and
bytes, so any accidental edit — a flipped bit, a truncated copy, a hand-edited header — is caught before
anything is decoded. A checksum only proves integrity, not honesty (anyone can recompute it), so the reader
also checks every claim of the header against the decoded data (see :mod:`.ticket`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import DataError
from ..core.io import atomic_write
from . import codecs

__all__ = [
    "FILE_FORMAT",
    "HEADER_KEY",
    "DTYPES",
    "pack_blob",
    "unpack_blob",
    "checksum",
    "write_container",
    "read_container",
]

FILE_FORMAT = "ticketsearch-ticket/1"
HEADER_KEY = "ticketsearch_ticket"
# the only dtypes a ticket may declare (numpy names); anything else is refused before decoding
DTYPES = {
    name: np.dtype(name)
    for name in (
        "bool",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "int32",
        "int64",
        "float16",
        "float32",
        "float64",
    )
}
MAX_HEADER_BYTES = 64 << 20


def np_dtype(name: Any, *, what: str) -> np.dtype:
    if not isinstance(name, str) or name not in DTYPES:
        raise DataError(f"{what}: dtype {name!r} is not one a ticket may hold ({', '.join(DTYPES)})")
    return DTYPES[name]


def pack_blob(arr: np.ndarray, *, compress: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """``arr`` as stored (typed, or compressed bytes when that is smaller) and its header record."""
    arr = np.asarray(arr, order="C")
    rec: dict[str, Any] = {"dtype": arr.dtype.name, "shape": list(arr.shape), "codec": "raw"}
    if compress and arr.size:
        codec, data = codecs.best(arr.tobytes())
        if codec != "raw":
            rec["codec"] = codec
            stored = np.frombuffer(data, dtype=np.uint8).copy()
            rec["stored_bytes"] = int(stored.size)
            return stored, rec
    rec["stored_bytes"] = int(arr.nbytes)
    return arr, rec


def _shape(rec: Mapping[str, Any], what: str) -> tuple[int, ...]:
    shape = rec.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise DataError(f"{what}: the header's shape {shape!r} is not a list of non-negative integers")
    if math.prod(shape) > 1 << 34:
        raise DataError(f"{what}: the header's shape {shape} is implausibly large")
    return tuple(shape)


def unpack_blob(stored: np.ndarray, rec: Any, *, what: str) -> np.ndarray:
    """The array a blob record describes, decoded from ``stored``; every mismatch is a DataError."""
    if not isinstance(rec, dict):
        raise DataError(f"{what}: the header has no valid record for it")
    dtype = np_dtype(rec.get("dtype"), what=what)
    shape = _shape(rec, what)
    codec = rec.get("codec")
    if codec == "raw":
        if stored.dtype != dtype or tuple(stored.shape) != shape:
            raise DataError(
                f"{what}: the file holds {stored.dtype.name}{list(stored.shape)}, the header says "
                f"{dtype.name}{list(shape)}"
            )
        return stored
    if codec not in codecs.CODECS:
        raise DataError(f"{what}: unknown codec {codec!r} (known: {', '.join(codecs.CODECS)})")
    if stored.dtype != np.uint8 or stored.ndim != 1:
        raise DataError(f"{what}: compressed data must be a 1-D uint8 tensor, got {stored.dtype.name}")
    size = math.prod(shape) * dtype.itemsize
    data = codecs.decompress(stored.tobytes(), codec, size, what=what)
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _canonical(header: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in header.items() if k != "sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def checksum(header: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> str:
    """sha256 of the canonical header (minus its ``sha256`` field) and every tensor, in name order."""
    h = hashlib.sha256()
    h.update(_canonical(header))
    for name in sorted(tensors):
        t = np.asarray(tensors[name], order="C")
        h.update(b"\0" + name.encode("utf-8") + b"\0" + t.dtype.str.encode() + repr(t.shape).encode())
        h.update(t.tobytes())
    return h.hexdigest()


def write_container(path: str | Path, header: dict[str, Any], tensors: Mapping[str, np.ndarray]) -> Path:
    """Write ``tensors`` with ``header`` (its ``sha256`` filled in here) atomically to ``path``."""
    from safetensors.numpy import save_file

    header = {**header, "format": FILE_FORMAT}
    header["sha256"] = checksum(header, tensors)
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False)
    arrays = {n: np.asarray(t, order="C") for n, t in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata={HEADER_KEY: text}))


def read_container(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Header and raw stored tensors of a ticket file, checksum verified; never executes anything."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise DataError(f"ticket file '{p}' does not exist" if not p.exists() else f"'{p}' is not a file")
    try:
        with open(p, "rb") as f:
            head = f.read(8)
        if len(head) == 8 and int.from_bytes(head, "little") > MAX_HEADER_BYTES:
            raise DataError(f"ticket file '{p}' declares a {int.from_bytes(head, 'little')}-byte header")
        with safe_open(str(p), framework="np") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open is not a dict)
    except DataError:
        raise
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"ticket file '{p}' is not a complete safetensors file (truncated or corrupt: {text})"
        ) from None
    header_text = meta.get(HEADER_KEY)
    if header_text is None:
        raise DataError(
            f"'{p}' is a safetensors file but not a ticket (no '{HEADER_KEY}' header); "
            "write one with `ticketsearch export`"
        )
    try:
        header = json.loads(header_text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DataError(f"ticket file '{p}': its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise DataError(f"ticket file '{p}': its header is not a JSON object")
    if header.get("format") != FILE_FORMAT:
        raise DataError(
            f"ticket file '{p}' has format {header.get('format')!r}; this version reads {FILE_FORMAT!r}"
        )
    want = header.get("sha256")
    try:
        got = checksum(header, tensors)
    except (TypeError, ValueError) as exc:
        raise DataError(f"ticket file '{p}': its header cannot be checked ({exc})") from None
    if not isinstance(want, str) or want != got:
        raise DataError(
            f"ticket file '{p}' fails its checksum (header says sha256 {str(want)[:16]}..., the content "
            f"hashes to {got[:16]}...): the file was modified or damaged; export it again"
        )
    return header, tensors
