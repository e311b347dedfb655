"""Byte codecs for index data: raw, zlib and two LZMA2 settings; the smallest wins per blob.

Why several: a packed bitmask at 5% density holds about 0.29 bits of information per weight but takes 1 bit
raw. zlib's byte-wise Huffman coding cannot go below 1/8 bit per weight and stays ~30% above the entropy;
LZMA2's adaptive binary range coder gets within 2-11% of it (``lc=0`` — no literal context — suits packed
bits, the default ``lc=3`` suits byte-sized index gaps). Which one wins depends on the density and the
encoding, so every index blob is compressed with each and the smallest is kept (ties: the earlier codec,
raw first, so a blob that does not compress costs nothing to read).

Decompression is bounded: the caller passes the exact decoded size from the header, the decompressor never
produces more than that (a crafted "zip bomb" cannot exhaust memory), and anything but exactly that size
is a one-line :class:`DataError`.
"""

from __future__ import annotations

import lzma
import zlib

from ..core.errors import DataError

__all__ = ["CODECS", "compress", "best", "decompress"]

# LZMA in the .lzma ("alone") container: a 13-byte header that records lc/lp/pb and the dictionary size, so
# the dictionary can be sized to the data (a 64 MiB preset-9 dictionary only costs time and memory here)
_LZMA_OPTIONS = {"lzma": {}, "lzma0": {"lc": 0, "lp": 0, "pb": 0}}
_PRESET = 9 | lzma.PRESET_EXTREME
_MEMLIMIT = 1 << 27  # a crafted header cannot make the decoder allocate more than 128 MiB
CODECS = ("raw", "zlib", "lzma", "lzma0")


def _lzma_filters(codec: str, size: int) -> list[dict[str, int]]:
    dict_size = max(4096, 1 << max(0, size - 1).bit_length())
    return [{"id": lzma.FILTER_LZMA1, "preset": _PRESET, "dict_size": dict_size, **_LZMA_OPTIONS[codec]}]


def compress(data: bytes, codec: str) -> bytes:
    """``data`` encoded with ``codec`` (one of :data:`CODECS`)."""
    if codec == "raw":
        return bytes(data)
    if codec == "zlib":
        return zlib.compress(data, 9)
    if codec in _LZMA_OPTIONS:
        return lzma.compress(data, format=lzma.FORMAT_ALONE, filters=_lzma_filters(codec, len(data)))
    raise ValueError(f"unknown codec {codec!r}")


def best(data: bytes, codecs: tuple[str, ...] = CODECS) -> tuple[str, bytes]:
    """The codec giving the fewest bytes for ``data``, and those bytes."""
    choice, out = "raw", bytes(data)
    if len(data) < 32:  # every compressed stream has a few bytes of overhead
        return choice, out
    for codec in codecs:
        if codec == "raw":
            continue
        enc = compress(data, codec)
        if len(enc) < len(out):
            choice, out = codec, enc
    return choice, out


def decompress(data: bytes, codec: str, size: int, *, what: str) -> bytes:
    """Decode exactly ``size`` bytes of ``codec`` data; anything else is a DataError naming ``what``."""
    if codec == "raw":
        out = bytes(data)
    elif codec == "zlib":
        try:
            d = zlib.decompressobj()
            out = d.decompress(data, size + 1)
            ok = d.eof and not d.unconsumed_tail
        except zlib.error as exc:
            raise DataError(f"{what}: corrupt zlib data ({exc})") from None
        if not ok:
            raise DataError(f"{what}: the zlib stream is truncated or longer than the {size} bytes declared")
    elif codec in _LZMA_OPTIONS:
        try:
            d2 = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE, memlimit=_MEMLIMIT)
            out = d2.decompress(data, size + 1)
            ok = d2.eof and not d2.unused_data
        except lzma.LZMAError as exc:
            raise DataError(f"{what}: corrupt LZMA data ({exc})") from None
        if not ok:
            raise DataError(f"{what}: the LZMA stream is truncated or longer than the {size} bytes declared")
    else:
        raise DataError(f"{what}: unknown codec {codec!r} (known: {', '.join(CODECS)})")
    if len(out) != size:
        raise DataError(f"{what}: decodes to {len(out)} bytes, the header declares {size}")
    return out
