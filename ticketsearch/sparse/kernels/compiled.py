"""``compiled`` top-k: the C++ kernel in ``csrc/topk.cpp`` (CPU, float32), built on first use.

Built with the system compiler through ``torch.utils.cpp_extension.load`` (g++ and ninja; about a minute,
once per machine and source version: the build is cached under ``~/.cache/torch_extensions`` in a folder
named after the source's hash). ``TICKETSEARCH_NO_EXT=1`` disables it. Without a compiler the ``torch``
kernel runs instead under ``kernel=fast``; ``kernel=compiled`` then fails with the reason.

Per group (a layer, or all layers for ``global``) a band ``[lo, hi)`` is guessed around last step's k-th
value (warm start plus drift, width learned from how far the value moved); ONE parallel pass over ``s`` and
``W`` writes ``W ⊙ [|s| ≥ hi]``, counts ``|s| ≥ hi`` and collects the band; ``nth_element`` in the band finds
the k-th of the stable order and the chosen band weights are set. A missed band is widened twice, then
resolved with ``nth_element`` over the layer. Backward is one fused pass ``sign(s)·g·W``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...core.errors import DivergenceError
from ._cpp import CppExtension
from .base import TOPK, Kernel, topk_layout

__all__ = ["RECORDS", "SOURCE", "cpu_extension", "CompiledTopK", "TOPK_KERNEL"]

SOURCE = Path(__file__).resolve().parent / "csrc" / "topk.cpp"


def _ext_name(flags: Sequence[str]) -> str:
    """Named after the source's hash: an edited kernel gets its own build folder, never a stale build (one
    flag set, so the flags need not be in the name; leaving them out keeps existing builds)."""
    import hashlib

    return "ticketsearch_supermask_" + hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:10]


_EXT = CppExtension(
    SOURCE, name=_ext_name, flag_sets=[["-O3"]], label="supermask", fallback="the PyTorch kernel"
)


def cpu_extension(*, build: bool = True) -> Any:
    """The compiled CPU kernel, or None (no compiler, disabled by TICKETSEARCH_NO_EXT=1, or not built yet
    with ``build=False``)."""
    return _EXT.load(build=build)


class CompiledTopK:
    """The same exact selection as :class:`ExactTopK`, in the compiled CPU kernel (float32, CPU)."""

    def __init__(
        self, shapes: Sequence[Sequence[int]], groups: Sequence[int], ks: Sequence[int], ext: Any
    ) -> None:
        self.ext = ext
        layout = topk_layout(shapes, groups, ks)
        self.groups, self.ks = layout.groups, layout.ks
        self.G = len(self.ks)
        self.offsets = []
        seen: dict[int, int] = {}
        for g, n in zip(self.groups, layout.sizes):
            self.offsets.append(seen.get(g, 0))
            seen[g] = seen.get(g, 0) + n
        self.t: list[float | None] = [None] * self.G
        self.drift = [0.0] * self.G
        self.width = [0.0] * self.G
        self.stats = {"calls": 0, "band_hits": 0, "clean": 0, "retries": 0, "fallbacks": 0, "band_elems": 0}

    def _bounds(self) -> tuple[list[float], list[float]]:
        lo, hi = [], []
        for g in range(self.G):
            t = self.t[g]
            if t is None:
                lo.append(-1.0)
                hi.append(-1.0)  # empty band → exact fallback
            else:
                c = t + self.drift[g]
                lo.append(max(c - self.width[g], -0.5))
                hi.append(
                    max(c + self.width[g], -0.5)
                    if self.width[g] > 0
                    else math.nextafter(max(c, -0.5), math.inf)
                )
        return lo, hi

    def forward(self, scores: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        s = [x if x.is_contiguous() else x.contiguous() for x in scores]
        w = [x if x.is_contiguous() else x.contiguous() for x in weights]
        lo, hi = self._bounds()
        self.stats["calls"] += 1
        # a missed band is widened towards the k-th value twice, then resolved exactly
        for attempt in range(3):
            out = self.ext.sm_forward(s, w, self.groups, self.ks, lo, hi, attempt == 2)
            rows = out[0].tolist()
            missed = [g for g, r in enumerate(rows) if r[3] in (4.0, 5.0)]
            if not missed:
                break
            self.stats["retries"] += 1
            for g in missed:
                span = max(hi[g] - lo[g], 1e-6 * abs(hi[g]), 1e-30)
                if rows[g][3] == 4.0:
                    lo[g], hi[g] = hi[g], hi[g] + 4.0 * span
                else:
                    lo[g], hi[g] = max(lo[g] - 4.0 * span, -0.5), lo[g]
                self.width[g] = max(self.width[g], 2.0 * span)
        for g, (v, _j, band_n, status) in enumerate(rows):
            if status < 0:
                raise DivergenceError("supermask scores became NaN: the score training diverged; lower --lr")
            if status == 3:
                continue
            prev = self.t[g]
            if status == 2:
                self.stats["fallbacks"] += 1
                miss = abs(v - (prev + self.drift[g])) if prev is not None else 0.0
                self.width[g] = max(2.0 * self.width[g], 3.0 * miss)
                self.t[g], self.drift[g] = v, 0.0
                continue
            self.stats["band_hits" if status == 0 else "clean"] += 1
            self.stats["band_elems"] += int(band_n)
            assert prev is not None
            err = abs(v - (prev + self.drift[g]))
            self.drift[g] = 0.5 * self.drift[g] + 0.5 * (v - prev)
            target = 4.0 * err + 1e-7 * abs(v)
            width = self.width[g]
            self.width[g] = max(target, 0.9 * width) if width > 0 else target
            self.t[g] = v
        return out[1:]

    def backward(self, grads, weights, scores) -> list[torch.Tensor]:
        return self.ext.sm_backward(list(grads), list(weights), [x.contiguous() for x in scores])


def _make(
    shapes: Sequence[Sequence[int]],
    groups: Sequence[int],
    ks: Sequence[int],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> CompiledTopK:
    ext = cpu_extension(build=True)
    if ext is None:
        raise RuntimeError(f"the compiled supermask kernel is unavailable ({_EXT.error or 'not built'})")
    return CompiledTopK(shapes, groups, ks, ext)


def _probe(build: bool) -> str | None:
    if cpu_extension(build=build) is not None:
        return None
    return _EXT.error or "not built yet (kernel=compiled builds it once, about a minute)"


TOPK_KERNEL = Kernel(
    name="compiled",
    op=TOPK,
    description="exact top-k in a compiled C++ CPU kernel: one fused parallel pass, nth_element in the band",
    devices=("cpu",),
    dtypes=(torch.float32,),
    priority=30,
    auto=True,
    probe=_probe,
    selector=_make,
)

RECORDS: tuple[Kernel, ...] = (TOPK_KERNEL,)
