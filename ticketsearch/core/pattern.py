"""Sparsity patterns a mask may be asked to obey: ``unstructured``, ``N:M`` and ``block:RxC``.

Every pattern is defined on the 2-D *row view* of a weight: ``[out, prod(rest)]``, i.e. a Conv2d weight
``[out, in, kh, kw]`` is seen as the row-major flattening ``[out, in*kh*kw]`` (a Linear weight is already
``[out, in]``; a 1-D tensor is one row). This is the matrix that ``torch.sparse.to_sparse_semi_structured``
takes for a convolution lowered to a GEMM, so the "input dimension" of a pattern is the *flattened* input
dimension, with ``kw`` varying fastest.

- ``N:M``: in every group of ``M`` consecutive weights of a row, at most ``N`` are kept. The row length
  must be a multiple of ``M``.
- ``block:RxC``: the row view is tiled by ``R×C`` blocks; each block is kept whole or pruned whole. Both
  ``out`` and the flattened input must be multiples of ``R`` and ``C``.

This module holds only the parsing, the row view and the verifier; :mod:`.select` does the choosing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .errors import ConfigError, MaskMismatchError

__all__ = ["Pattern", "parse_pattern", "check_pattern", "row_view_shape", "unfit_layers", "PATTERN_FORMS"]

PATTERN_FORMS = "unstructured, N:M (e.g. 2:4, 1:4, 4:8; 1 ≤ N ≤ M ≤ 64) or block:RxC (e.g. block:4x4)"
_NM = re.compile(r"^(\d+):(\d+)$")
_BLOCK = re.compile(r"^block:(\d+)x(\d+)$")
_MAX = 64  # a bound that keeps the groups hardware-shaped and a typo (2:4000) refused


@dataclass(frozen=True)
class Pattern:
    """A parsed pattern; ``str()`` gives its canonical spelling (what the hash and the sidecar store)."""

    kind: str  # "unstructured" | "nm" | "block"
    n: int = 0
    m: int = 0
    r: int = 0
    c: int = 0

    def __str__(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"block:{self.r}x{self.c}"
        return "unstructured"

    @property
    def structured(self) -> bool:
        return self.kind != "unstructured"

    @property
    def max_density(self) -> float:
        """The largest density the pattern allows (N/M for N:M, 1 otherwise)."""
        return self.n / self.m if self.kind == "nm" else 1.0

    def fits(self, shape: Sequence[int]) -> bool:
        """Whether a weight of ``shape`` can hold the pattern (its row view tiles exactly)."""
        rows, cols = row_view_shape(shape)
        if self.kind == "nm":
            return cols % self.m == 0
        if self.kind == "block":
            return rows % self.r == 0 and cols % self.c == 0
        return True

    def need(self) -> str:
        """What ``fits`` asks, in words, for error messages."""
        if self.kind == "nm":
            return f"the flattened input dimension must be a multiple of {self.m}"
        if self.kind == "block":
            return f"the output dimension must be a multiple of {self.r} and the flattened input of {self.c}"
        return "nothing"


def parse_pattern(text: str | Pattern) -> Pattern:
    """``"2:4"`` → Pattern("nm", n=2, m=4); ``"block:2x2"`` → Pattern("block", r=2, c=2).

    A bad value raises a one-line ConfigError naming it and the allowed forms.
    """
    if isinstance(text, Pattern):
        return text
    raw = str(text).strip().lower()
    if raw in ("", "unstructured"):
        return Pattern("unstructured")
    bad = f"unknown pattern {text!r} (allowed: {PATTERN_FORMS})"
    m = _NM.match(raw)
    if m:
        n, mm = int(m.group(1)), int(m.group(2))
        if not 1 <= n <= mm <= _MAX:
            raise ConfigError(bad)
        if n == mm:
            raise ConfigError(f"pattern {text!r} keeps every weight (N = M); use N < M, or unstructured")
        return Pattern("nm", n=n, m=mm)
    b = _BLOCK.match(raw)
    if b:
        r, c = int(b.group(1)), int(b.group(2))
        if not (1 <= r <= _MAX and 1 <= c <= _MAX) or r * c == 1:
            raise ConfigError(bad if r * c != 1 else f"pattern {text!r} is unstructured; say unstructured")
        return Pattern("block", r=r, c=c)
    raise ConfigError(bad)


def row_view_shape(shape: Sequence[int]) -> tuple[int, int]:
    """``[out, *rest]`` → ``(out, prod(rest))``; a 1-D tensor is one row, a 0-D one a single weight."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], math.prod(shape[1:])


def unfit_layers(shapes: Mapping[str, Sequence[int]], pattern: Pattern) -> list[str]:
    """Layers whose shape cannot hold ``pattern``, in the order given."""
    return [n for n, s in shapes.items() if not pattern.fits(s)]


def check_pattern(
    mask: Mapping[str, torch.Tensor], pattern: str | Pattern, *, dense_layers: Iterable[str] = ()
) -> None:
    """Raise MaskMismatchError (one line, naming the layer and the first offending group or block) unless
    every layer of ``mask`` obeys ``pattern``. Layers in ``dense_layers`` were exempted when the mask was
    made (their shape cannot hold the pattern) and are not checked; any other unfit layer is an error.
    """
    pat = parse_pattern(pattern)
    if not pat.structured:
        return
    exempt = set(dense_layers)
    for name, t in mask.items():
        if name in exempt and pat.fits(t.shape):  # an exemption is for a shape that cannot hold it, only
            raise MaskMismatchError(
                f"layer '{name}' of shape {list(t.shape)} is listed as dense, but its shape holds pattern {pat}"
            )
        if name in exempt:
            continue
        if not pat.fits(t.shape):
            raise MaskMismatchError(
                f"layer '{name}' of shape {list(t.shape)} cannot hold pattern {pat}: {pat.need()}"
            )
        rows, cols = row_view_shape(t.shape)
        v = t.detach().reshape(rows, cols).to(torch.int64).cpu()
        if pat.kind == "nm":
            per_group = v.reshape(rows, cols // pat.m, pat.m).sum(-1)
            over = torch.nonzero(per_group > pat.n)
            if over.numel():
                i, g = (int(x) for x in over[0])
                raise MaskMismatchError(
                    f"layer '{name}' breaks pattern {pat}: row {i}, columns {g * pat.m}..{g * pat.m + pat.m - 1}"
                    f" keep {int(per_group[i, g])} of {pat.m}"
                )
        else:
            blocks = v.reshape(rows // pat.r, pat.r, cols // pat.c, pat.c).sum(dim=(1, 3))
            partial = torch.nonzero((blocks > 0) & (blocks < pat.r * pat.c))
            if partial.numel():
                i, j = (int(x) for x in partial[0])
                raise MaskMismatchError(
                    f"layer '{name}' breaks pattern {pat}: block at row {i * pat.r}, column {j * pat.c} keeps "
                    f"{int(blocks[i, j])} of {pat.r * pat.c} weights (a block is kept whole or pruned whole)"
                )
