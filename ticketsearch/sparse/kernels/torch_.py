"""Pure-PyTorch fast paths, for every device and dtype: ``inplace`` fixed masks and the ``torch`` top-k.

``inplace`` (``masked``, the default backend)
    Pruned weights are kept at exact zero and their gradients are zeroed after each backward pass (one fused
    ``_foreach_mul_`` over all layers), so the forward is the dense op and a fixed mask costs only that
    multiply per step. Exactness under SGD (momentum, weight decay), Adam and AdamW follows from zero
    weights + zero gradients + fresh optimizer state: every update of a pruned weight is exactly 0.
``torch`` (``topk``)
    :class:`ExactTopK`: ``|s|`` of all layers in one chunk-padded buffer, one broadcast compare against a band
    ``(lo, hi)`` guessed around last call's k-th value with per-chunk counts, the band gathered from the few
    chunks holding it, one stable sort on it; ``_foreach_mul`` for ``W ⊙ M`` and for the backward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ...core.errors import DivergenceError
from .base import MASKED, TOPK, Kernel, topk_layout

__all__ = ["RECORDS", "ExactTopK", "INPLACE_KERNEL", "TOPK_KERNEL"]


# -- exact top-k, warm-started ----------------------------------------------------------------------------
class ExactTopK:
    """Exact top-k masks of ``|scores|`` for groups of tensors, fast when scores move a little per call.

    ``shapes``: one per tensor; ``groups``: the group of each tensor (groups must be contiguous runs, e.g.
    ``[0, 1, 2]`` for layerwise or ``[0, 0, 0]`` for global); ``ks``: weights kept per group. :meth:`select`
    returns float 0/1 masks (views of an internal buffer, valid until the next call) equal to a stable
    descending sort's first ``k`` of each group's concatenated ``|scores|``: ties go to the lower index.
    NaN scores are never kept; :func:`ticketsearch.sparse.supermask.check_scores_finite` is the divergence
    check.
    """

    CHUNK = 64
    MAX_TRIES = 3  # band widenings before falling back to kthvalue

    def __init__(
        self,
        shapes: Sequence[Sequence[int]],
        groups: Sequence[int],
        ks: Sequence[int],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        layout = topk_layout(shapes, groups, ks)
        ch = self.CHUNK
        self.shapes, self.sizes = layout.shapes, layout.sizes
        self.ks, self.group_n = layout.ks, layout.group_n
        nchunks = [max(1, -(-n // ch)) for n in self.sizes]
        self.offsets = [ch * sum(nchunks[:i]) for i in range(len(nchunks))]
        C = sum(nchunks)
        self.G = len(self.ks)
        self.group_chunks = [[C, 0] for _ in range(self.G)]
        chunk_group: list[int] = []
        start = 0
        for g, c in zip(layout.groups, nchunks):
            self.group_chunks[g][0] = min(self.group_chunks[g][0], start)
            self.group_chunks[g][1] = max(self.group_chunks[g][1], start + c)
            chunk_group += [g] * c
            start += c
        self.device = torch.device(device)
        self.dtype = dtype
        self.A = torch.full((C, ch), -1.0, device=device, dtype=dtype)  # |s|; padding −1 is never kept
        # OUT[0]: |s| ≥ lo; OUT[1]: |s| ≥ hi, then the band picks: the mask
        self.OUT = torch.zeros((2, C, ch), device=device, dtype=dtype)
        self.chunk_group = torch.tensor(chunk_group, device=device, dtype=torch.long)
        # (C, G): per-chunk counts → per-group counts in one matmul
        self.onehot = F.one_hot(self.chunk_group, self.G).to(torch.float64)
        flatA, flatM = self.A.view(-1), self.OUT[1].view(-1)
        self.a_views = [flatA[o : o + n].view(s) for o, n, s in zip(self.offsets, self.sizes, self.shapes)]
        self.m_views = [flatM[o : o + n].view(s) for o, n, s in zip(self.offsets, self.sizes, self.shapes)]
        # trivial groups keep nothing (bounds +inf) or everything (bounds −0.5: every |s| ≥ 0 > −0.5 > padding)
        self.active = [0 < self.ks[g] < self.group_n[g] for g in range(self.G)]
        self._fixed = {
            g: ((-0.5, -0.5) if self.ks[g] == self.group_n[g] else (math.inf, math.inf))
            for g in range(self.G)
            if not self.active[g]
        }
        # warm start per group: centre (last k-th value estimate), drift per call, band half-width
        self.t: list[float | None] = [None] * self.G
        self.drift = [0.0] * self.G
        self.width = [0.0] * self.G
        self.stats = {"calls": 0, "band_picks": 0, "refits": 0, "kthvalue": 0, "band_elems": 0}

    def forward(self, scores: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return list(torch._foreach_mul(list(weights), self.select(scores)))

    def backward(self, grads, weights, scores) -> list[torch.Tensor]:
        gs = torch._foreach_mul(list(grads), list(weights))
        torch._foreach_mul_(gs, torch._foreach_sign([s.detach() for s in scores]))
        return list(gs)

    def _kth_value(self, g: int) -> float:
        self.stats["kthvalue"] += 1
        c0, c1 = self.group_chunks[g]
        vals = self.A[c0:c1].reshape(-1)  # padding (−1) never reaches the top k
        v = float(vals.kthvalue(vals.numel() - self.ks[g] + 1).values)
        if math.isnan(v):
            raise DivergenceError("supermask scores became NaN: the score training diverged; lower --lr")
        return v

    def _guess(self, g: int) -> tuple[float, float]:
        if not self.active[g]:
            return self._fixed[g]
        t = self.t[g]
        assert t is not None
        c, w = t + self.drift[g], self.width[g]
        return max(c - w, -0.5), max(c + w, -0.5)

    @torch.no_grad()
    def select(self, scores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(scores) != len(self.sizes):
            raise ValueError(f"expected {len(self.sizes)} score tensors, got {len(scores)}")
        for s, a in zip(scores, self.a_views):
            torch.abs(s.detach(), out=a)
        self.stats["calls"] += 1
        for g in range(self.G):
            if self.active[g] and self.t[g] is None:  # cold start: the exact value
                self.t[g], self.drift[g], self.width[g] = self._kth_value(g), 0.0, 0.0
        bounds = [self._guess(g) for g in range(self.G)]
        for attempt in range(self.MAX_TRIES + 1):
            failed = self._pass(bounds)
            if not failed:
                return self.m_views
            self.stats["refits"] += 1
            for g, above in failed:
                lo, hi = bounds[g]
                span = max(hi - lo, 1e-6 * abs(hi), 1e-30)
                if attempt + 1 < self.MAX_TRIES:  # widen towards the side the k-th value went to
                    bounds[g] = (hi, hi + 4.0 * span) if above else (max(lo - 4.0 * span, -0.5), lo)
                else:  # stop guessing: the exact value, a band holding only its ties
                    v = self._kth_value(g)
                    bounds[g] = (v, v)
                self.width[g] = max(self.width[g], 2.0 * span)
        raise RuntimeError("supermask top-k did not converge (a bug: please report it)")  # pragma: no cover

    def _pass(self, bounds: list[tuple[float, float]]) -> list[tuple[int, bool]]:
        """One compare pass; returns (group, k-th value above the band) for each group that missed."""
        G = self.G
        bt = torch.tensor(bounds, dtype=self.dtype).T.contiguous()  # (2, G), rounded to the scores' dtype
        bt[1] = torch.maximum(bt[1], torch.nextafter(bt[0], torch.full_like(bt[0], math.inf)))  # hi > lo
        bounds[:] = [tuple(b) for b in bt.T.tolist()]
        per_chunk = bt.to(self.device)[:, self.chunk_group].unsqueeze(2)  # (2, C, 1)
        torch.ge(self.A.unsqueeze(0), per_chunk, out=self.OUT)
        cs = self.OUT.sum(2)  # (2, C): per-chunk counts (exact in float)
        counts = (cs.to(torch.float64) @ self.onehot).tolist()
        n_lo, n_hi = counts[0], counts[1]
        failed, need, band = [], [0] * G, 0
        for g in range(G):
            if not self.active[g]:
                continue
            k, lo_c, hi_c = self.ks[g], int(n_lo[g]), int(n_hi[g])
            if hi_c == k:  # a clean cut at hi: no tie crosses it
                need[g] = 0
            elif hi_c < k <= lo_c:
                need[g] = k - hi_c
                band += 1
            else:
                failed.append((g, hi_c > k))
        if failed:
            return failed
        if band:
            self._pick_band(cs, need)
        for g in range(G):
            if self.active[g]:
                lo, hi = bounds[g]
                inside = n_lo[g] - n_hi[g]
                # estimate of the k-th value: interpolate inside the band (exact enough for a warm start)
                v = hi if need[g] == 0 else hi - (need[g] - 0.5) / max(inside, 1.0) * (hi - lo)
                self._update(g, v)
        return []

    def _pick_band(self, cs: torch.Tensor, need: list[int]) -> None:
        ch = self.CHUNK
        ids = torch.nonzero(cs[0] > cs[1]).view(-1)  # chunks holding band elements
        pos = torch.nonzero(self.OUT[0, ids] - self.OUT[1, ids])
        rows = ids[pos[:, 0]]
        flat = rows * ch + pos[:, 1]  # ascending
        vals = self.A.view(-1)[flat]
        grp = self.chunk_group[rows]
        # group ascending, value descending, index ascending: |s| ≥ 0 so its float bits sort like its value
        bits = vals.view(torch.int32) if vals.dtype == torch.float32 else None
        if bits is not None:
            key = grp * (1 << 32) - bits.to(torch.int64)
            order = torch.sort(key, stable=True).indices
        else:
            o1 = torch.sort(vals, descending=True, stable=True).indices
            order = o1[torch.sort(grp[o1], stable=True).indices]
        gs = grp[order]
        starts = torch.cumsum(torch.bincount(gs, minlength=self.G), 0)
        rank = (
            torch.arange(order.numel(), device=self.device)
            - (starts - torch.bincount(gs, minlength=self.G))[gs]
        )
        need_t = torch.tensor(need, dtype=torch.long).to(self.device)
        self.OUT[1].view(-1)[flat[order[rank < need_t[gs]]]] = 1.0
        self.stats["band_picks"] += 1
        self.stats["band_elems"] += int(order.numel())

    def _update(self, g: int, v: float) -> None:
        """Learn where the k-th value will be next call and how wide the band must be."""
        prev = self.t[g]
        assert prev is not None
        err = abs(v - (prev + self.drift[g]))
        self.drift[g] = 0.5 * self.drift[g] + 0.5 * (v - prev)
        target = 3.0 * err + 1e-7 * abs(v)  # ~3× the last miss; shrink slowly when the value moves less
        w = self.width[g]
        self.width[g] = max(target, 0.8 * w) if w > 0 else target
        self.t[g] = v


INPLACE_KERNEL = Kernel(
    name="inplace",
    op=MASKED,
    description="pruned weights held at exact zero, their gradients zeroed after backward; dense forward",
    priority=20,
    masks_gradients=True,
)

TOPK_KERNEL = Kernel(
    name="torch",
    op=TOPK,
    description="exact top-k in PyTorch ops: a warm-started band, one compare pass, a sort of the band",
    priority=20,
    auto=True,
    selector=ExactTopK,
)

RECORDS: tuple[Kernel, ...] = (INPLACE_KERNEL, TOPK_KERNEL)
