"""Supermask layers: frozen weights, trained per-weight scores, the forward uses the top-k weights by score.

Two mask rules, both set up by :func:`to_supermask` on a model's masked layers (in place):

``edge_popup`` (Ramanujan et al. 2020, "What's hidden in a randomly weighted neural network?")
    Each layer keeps exactly ``k`` weights: the ``k`` largest ``|scores|`` (per layer, or over all layers with
    ``scope="global"``), ties broken towards the lower flat index exactly as :func:`ticketsearch.core.select`
    does, so the mask used in training is the Mask the run records. The gradient is straight-through:
    the top-k indicator is treated as the identity on ``|s|``, so ``∂L/∂s = sign(s) ⊙ ∂L/∂W_eff ⊙ W``
    (the reference code passes ``scores.abs()`` through its straight-through ``GetSubnet``; for positive
    scores this is the textbook ``∂L/∂W_eff ⊙ W``). Every score gets gradient, pruned or not.
``bernoulli`` (Zhou et al. 2019, "Deconstructing lottery tickets")
    In training a mask ``m ~ Bernoulli(sigmoid(s))`` is sampled each forward, with a straight-through
    estimator (``∂m/∂p := 1``); in eval mode the expected mask ``sigmoid(s)`` multiplies the weights.
    ``rescale`` is Zhou's dynamic weight rescaling: weights × (layer size / number of kept weights).

Kernels (``kernel=``), all computing bitwise the same selection:

``reference``
    The straightforward algorithm, per layer and per forward: a full stable sort of ``|s|``, then ``W ⊙ M``
    through autograd. The oracle in tests and the baseline in ``benchmarks/supermask_speed.py``.
``compiled`` (CPU, float32)
    A small C++ kernel built on first use with the system compiler (``torch.utils.cpp_extension``, about a
    minute once, cached in ``~/.cache/torch_extensions``; ``TICKETSEARCH_NO_EXT=1`` disables it). Per group
    (a layer, or all layers for ``global``) a band ``[lo, hi)`` is guessed around last step's k-th value
    (warm start plus drift, width learned from how far the value moved); ONE parallel pass over ``s`` and
    ``W`` writes ``W ⊙ [|s| ≥ hi]``, counts ``|s| ≥ hi`` and collects the band; ``nth_element`` in the band
    finds the k-th of the stable order and the chosen band weights are set. A missed band is widened
    twice, then resolved with ``nth_element`` over the layer. Backward is one fused pass
    ``sign(s)·g·W``. Masks are computed once per forward, inside one autograd Function for all layers.
``torch``
    The same idea in PyTorch ops (for devices/dtypes the compiled kernel does not cover): ``|s|`` of all
    layers in one chunk-padded buffer, one broadcast compare against ``(lo, hi)`` with per-chunk counts,
    the band gathered from the few chunks holding it, one stable sort on it; ``_foreach_mul`` for
    ``W ⊙ M`` and for the backward.
``fast`` (default)
    ``compiled`` on CPU float32 when the kernel is already built (``kernel=compiled`` builds it once; the
    test suite builds it too), else ``torch``. A fused GPU kernel can join here.

Frozen state: weights, biases and any other non-score parameter get ``requires_grad=False``; BatchNorm should
be non-affine as in the paper (:func:`make_bn_nonaffine`). Running statistics of BatchNorm still update in
train mode, as in edge-popup: they are statistics of the data, not trained weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import ConfigError, DivergenceError
from ..core.mask import Mask, exact_count
from ..core.select import check_density, layer_densities
from .layers import MaskedConv2d, MaskedLayer, MaskedLinear, masked_layers

__all__ = [
    "SUPERMASK_KINDS",
    "SUPERMASK_KERNELS",
    "SupermaskLinear",
    "SupermaskConv2d",
    "SupermaskController",
    "ExactTopK",
    "CompiledTopK",
    "cpu_extension",
    "to_supermask",
    "strip_supermask",
    "is_supermask",
    "supermask_controller",
    "raw_scores",
    "keep_scores",
    "current_mask",
    "check_scores_finite",
    "make_bn_nonaffine",
    "init_frozen_weights",
    "init_scores",
    "topk_counts",
]

SUPERMASK_KINDS = ("edge_popup", "bernoulli")
SUPERMASK_KERNELS = ("fast", "compiled", "torch", "reference")
WEIGHT_INITS = ("signed_constant", "kaiming_normal")


# -- exact top-k, warm-started ----------------------------------------------------------------------------
class ExactTopK:
    """Exact top-k masks of ``|scores|`` for groups of tensors, fast when scores move a little per call.

    ``shapes``: one per tensor; ``groups``: the group of each tensor (groups must be contiguous runs, e.g.
    ``[0, 1, 2]`` for layerwise or ``[0, 0, 0]`` for global); ``ks``: weights kept per group. :meth:`select`
    returns float 0/1 masks (views of an internal buffer, valid until the next call) equal to a stable
    descending sort's first ``k`` of each group's concatenated ``|scores|``: ties go to the lower index.
    NaN scores are never kept; :func:`check_scores_finite` is the divergence check.
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
        groups = list(groups)
        if len(shapes) != len(groups):
            raise ValueError("one group id per tensor")
        if groups != sorted(groups) or (groups and list(range(groups[-1] + 1)) != sorted(set(groups))):
            raise ValueError("groups must be contiguous runs numbered 0, 1, ...")
        ch = self.CHUNK
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.sizes = [math.prod(s) for s in self.shapes]
        nchunks = [max(1, -(-n // ch)) for n in self.sizes]
        self.offsets = [ch * sum(nchunks[:i]) for i in range(len(nchunks))]
        C = sum(nchunks)
        self.G = (groups[-1] + 1) if groups else 0
        self.ks = [int(k) for k in ks]
        if len(self.ks) != self.G:
            raise ValueError("one k per group")
        self.group_n = [0] * self.G
        self.group_chunks = [[C, 0] for _ in range(self.G)]
        chunk_group: list[int] = []
        start = 0
        for g, n, c in zip(groups, self.sizes, nchunks):
            self.group_n[g] += n
            self.group_chunks[g][0] = min(self.group_chunks[g][0], start)
            self.group_chunks[g][1] = max(self.group_chunks[g][1], start + c)
            chunk_group += [g] * c
            start += c
        for g in range(self.G):
            if not 0 <= self.ks[g] <= self.group_n[g]:
                raise ValueError(f"group {g}: cannot keep {self.ks[g]} of {self.group_n[g]}")
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


# -- compiled CPU kernel (optional) -------------------------------------------------------------------------
# One pass counts |s| above the band and collects the band, nth_element picks the k-th (stable order), one
# pass writes W ⊙ M, one pass the straight-through gradient. Built on first use with the system C++ compiler
# (about a minute, cached under ~/.cache/torch_extensions); without a compiler the pure-PyTorch kernel runs.
_CPP_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {
struct Item { float a; int64_t i; };
inline bool before(const Item& x, const Item& y) { return x.a > y.a || (x.a == y.a && x.i < y.i); }
constexpr int64_t BLOCK = 32;
constexpr int64_t GRAIN = 16384;

// y = w where |s| > v (bitwise select, branch-free), else 0
void write_above(const float* s, const float* w, float* y, int64_t m, float v) {
  at::parallel_for(0, m, GRAIN, [=](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float a = std::fabs(s[i]);
      uint32_t wb;
      std::memcpy(&wb, w + i, 4);
      wb &= -(uint32_t)(a > v);
      std::memcpy(y + i, &wb, 4);
    }
  });
}
}  // namespace

// Exact stable top-k of |s| per group (groups: contiguous runs of tensors), fused with W_eff = W * mask.
// lo/hi: a guessed band around each group's k-th value. One pass (parallel) writes y = W * (|s| >= hi),
// counts |s| >= hi and collects the band [lo, hi); nth_element in the band picks the k-th of the stable
// descending order (value desc, index asc) and the chosen band elements are set in y.
// Returns [info (G, 4) doubles: v, j, band size, status; y_0, y_1, ...]. status: 0 band hit, 1 clean cut at
// hi, 2 exact (band missed, resolved by nth_element over the group), 3 trivial (k = 0 or n), 4/5 band missed
// with the k-th above/below it (only when exact = false: outputs then invalid), -1 NaN seen.
std::vector<at::Tensor> sm_forward(std::vector<at::Tensor> scores, std::vector<at::Tensor> weights,
                                   std::vector<int64_t> group_of, std::vector<int64_t> ks,
                                   std::vector<double> lo, std::vector<double> hi, bool exact) {
  const int64_t G = (int64_t)ks.size();
  const int64_t T = (int64_t)scores.size();
  auto info = at::zeros({G, 4}, at::kDouble);
  double* o = info.data_ptr<double>();
  std::vector<at::Tensor> result;
  result.reserve(T + 1);
  result.push_back(info);
  std::vector<float*> ys(T);
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(scores[t].is_contiguous() && weights[t].is_contiguous(), "supermask: tensors must be contiguous");
    TORCH_CHECK(scores[t].scalar_type() == at::kFloat && weights[t].scalar_type() == at::kFloat, "supermask: float32 only");
    result.push_back(at::empty_like(weights[t]));
    ys[t] = result.back().data_ptr<float>();
  }
  const int nthreads = at::get_num_threads();
  std::vector<std::vector<Item>> bands(nthreads);
  std::vector<int64_t> hi_counts(nthreads), nan_counts(nthreads);
  std::vector<Item> band;
  int64_t t0 = 0;
  for (int64_t g = 0; g < G; ++g) {
    int64_t t1 = t0, n = 0;
    while (t1 < T && group_of[t1] == g) { n += scores[t1].numel(); ++t1; }
    const int64_t k = ks[g];
    double* og = o + 4 * g;
    if (k <= 0 || k >= n) {
      og[0] = k <= 0 ? std::numeric_limits<double>::infinity() : -1.0;
      og[1] = -1; og[3] = 3;
      for (int64_t t = t0; t < t1; ++t)
        write_above(scores[t].data_ptr<float>(), weights[t].data_ptr<float>(), ys[t], scores[t].numel(), (float)og[0]);
      t0 = t1;
      continue;
    }
    const float flo = (float)lo[g];
    const float fhi = (float)hi[g];
    for (auto& b : bands) b.clear();
    std::fill(hi_counts.begin(), hi_counts.end(), 0);
    std::fill(nan_counts.begin(), nan_counts.end(), 0);
    int64_t off = 0;
    for (int64_t t = t0; t < t1; ++t) {
      const float* p = scores[t].data_ptr<float>();
      const float* w = weights[t].data_ptr<float>();
      float* y = ys[t];
      const int64_t m = scores[t].numel();
      const int64_t nblocks = (m + BLOCK - 1) / BLOCK;
      const int64_t toff = off;
      at::parallel_for(0, nblocks, GRAIN / BLOCK, [&, p, w, y, m, toff, flo, fhi](int64_t bb, int64_t be) {
        const int tid = at::get_thread_num();
        std::vector<Item>& mine = bands[tid];
        int64_t c_hi_total = 0, c_nan_total = 0;
        for (int64_t blk = bb; blk < be; ++blk) {
          const int64_t b = blk * BLOCK, e = std::min(m, b + BLOCK);
          int32_t c_hi = 0, c_band = 0, c_nan = 0;
          for (int64_t i = b; i < e; ++i) {
            const float a = std::fabs(p[i]);
            const uint32_t keep = -(uint32_t)(a >= fhi);
            uint32_t wb;
            std::memcpy(&wb, w + i, 4);
            wb &= keep;
            std::memcpy(y + i, &wb, 4);
            c_hi += (a >= fhi);
            c_band += (a >= flo) & (a < fhi);
            c_nan += (a != a);
          }
          c_hi_total += c_hi;
          c_nan_total += c_nan;
          if (c_band) {  // branch-free compaction of the block's band elements
            Item q[BLOCK];
            int64_t c = 0;
            for (int64_t i = b; i < e; ++i) {
              const float a = std::fabs(p[i]);
              q[c] = {a, toff + i};
              c += (a >= flo) & (a < fhi);
            }
            mine.insert(mine.end(), q, q + c);
          }
        }
        hi_counts[tid] += c_hi_total;
        nan_counts[tid] += c_nan_total;
      });
      off += m;
    }
    int64_t count_hi = 0, nan_count = 0;
    band.clear();
    for (int th = 0; th < nthreads; ++th) {
      count_hi += hi_counts[th];
      nan_count += nan_counts[th];
      band.insert(band.end(), bands[th].begin(), bands[th].end());
    }
    og[2] = (double)band.size();
    if (nan_count) { og[3] = -1; t0 = t1; continue; }
    if (count_hi == k) {  // clean cut: y already holds W * (|s| >= hi)
      og[0] = std::nextafter(fhi, -std::numeric_limits<float>::infinity());
      og[1] = -1; og[3] = 1; t0 = t1;
      continue;
    }
    if (count_hi < k && k <= count_hi + (int64_t)band.size()) {
      const int64_t r = k - count_hi;
      std::nth_element(band.begin(), band.begin() + (r - 1), band.end(), before);
      og[0] = band[r - 1].a; og[1] = (double)band[r - 1].i; og[3] = 0;
      // set the r chosen band elements (they precede the k-th in the stable order)
      for (int64_t q = 0; q < r; ++q) {
        int64_t idx = band[q].i, t = t0;
        while (idx >= scores[t].numel()) { idx -= scores[t].numel(); ++t; }
        ys[t][idx] = weights[t].data_ptr<float>()[idx];
      }
      t0 = t1;
      continue;
    }
    if (!exact) { og[3] = count_hi > k ? 4 : 5; t0 = t1; continue; }
    // the band missed: exact k-th over the whole group, then rewrite the outputs
    std::vector<Item> all;
    all.reserve(n);
    off = 0;
    for (int64_t t = t0; t < t1; ++t) {
      const float* p = scores[t].data_ptr<float>();
      const int64_t m = scores[t].numel();
      for (int64_t i = 0; i < m; ++i) all.push_back({std::fabs(p[i]), off + i});
      off += m;
    }
    std::nth_element(all.begin(), all.begin() + (k - 1), all.end(), before);
    const Item kth = all[k - 1];
    og[0] = kth.a; og[1] = (double)kth.i; og[3] = 2;
    for (int64_t t = t0; t < t1; ++t)
      write_above(scores[t].data_ptr<float>(), weights[t].data_ptr<float>(), ys[t], scores[t].numel(), kth.a);
    for (int64_t q = 0; q < k; ++q) {
      if (all[q].a == kth.a) {  // ties at the k-th value up to its index
        int64_t idx = all[q].i, t = t0;
        while (idx >= scores[t].numel()) { idx -= scores[t].numel(); ++t; }
        ys[t][idx] = weights[t].data_ptr<float>()[idx];
      }
    }
    t0 = t1;
  }
  return result;
}

// straight-through backward: dL/ds = dL/dW_eff * W * sign(s)
std::vector<at::Tensor> sm_backward(std::vector<at::Tensor> grads, std::vector<at::Tensor> weights,
                                    std::vector<at::Tensor> scores) {
  std::vector<at::Tensor> outs;
  outs.reserve(grads.size());
  for (size_t t = 0; t < grads.size(); ++t) {
    auto g = grads[t].contiguous();
    auto out = at::empty_like(weights[t]);
    const float* gp = g.data_ptr<float>();
    const float* w = weights[t].data_ptr<float>();
    const float* s = scores[t].data_ptr<float>();
    float* y = out.data_ptr<float>();
    const int64_t m = g.numel();
    at::parallel_for(0, m, GRAIN, [=](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const float sg = (float)(s[i] > 0.0f) - (float)(s[i] < 0.0f);
        y[i] = gp[i] * w[i] * sg;
      }
    });
    outs.push_back(out);
  }
  return outs;
}
"""

_EXT: Any = None
_EXT_ERROR: str | None = None


def _ext_name() -> str:
    import hashlib

    return "ticketsearch_supermask_" + hashlib.sha256(_CPP_SOURCE.encode()).hexdigest()[:10]


def cpu_extension(*, build: bool = True) -> Any:
    """The compiled CPU kernel, or None (no compiler, disabled by TICKETSEARCH_NO_EXT=1, or not built yet
    with ``build=False``)."""
    global _EXT, _EXT_ERROR
    if _EXT is not None or _EXT_ERROR is not None:
        return _EXT
    import os

    if os.environ.get("TICKETSEARCH_NO_EXT", "") not in ("", "0"):
        _EXT_ERROR = "disabled by TICKETSEARCH_NO_EXT"
        return None
    try:
        import logging

        # silence the module's import-time warning about CUDA before importing it
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        from torch.utils import cpp_extension

        name = _ext_name()
        d = cpp_extension._get_build_directory(name, verbose=False)
        built = any(f.startswith(name) and f.endswith(".so") for f in os.listdir(d))
        if not built:
            if not build:
                return None
            import sys

            print(
                "ticketsearch: building the supermask CPU kernel (once per machine, about a minute; "
                "TICKETSEARCH_NO_EXT=1 skips it)",
                file=sys.stderr,
                flush=True,
            )
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        _EXT = cpp_extension.load_inline(
            name=name,
            cpp_sources=[_CPP_SOURCE],
            functions=["sm_forward", "sm_backward"],
            extra_cflags=["-O3"],
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, ...: the PyTorch kernel is used
        _EXT_ERROR = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        import warnings

        warnings.warn(
            f"supermask: compiled CPU kernel unavailable ({_EXT_ERROR}); using the PyTorch kernel",
            stacklevel=2,
        )
        _EXT = None
    return _EXT


class CompiledTopK:
    """The same exact selection as :class:`ExactTopK`, in the compiled CPU kernel (float32, CPU)."""

    def __init__(
        self, shapes: Sequence[Sequence[int]], groups: Sequence[int], ks: Sequence[int], ext: Any
    ) -> None:
        self.ext = ext
        self.groups = [int(g) for g in groups]
        self.ks = [int(k) for k in ks]
        self.G = len(self.ks)
        sizes = [math.prod(tuple(s)) for s in shapes]
        self.offsets = []
        seen: dict[int, int] = {}
        for g, n in zip(self.groups, sizes):
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


def _straight_through_reference(abs_scores: torch.Tensor, k: int) -> torch.Tensor:
    return _GetSubnet.apply(abs_scores, k)


class _GetSubnet(torch.autograd.Function):
    """The reference: a full stable sort per call; the gradient passes straight through."""

    @staticmethod
    def forward(ctx, abs_scores: torch.Tensor, k: int) -> torch.Tensor:  # type: ignore[override]
        flat = abs_scores.detach().reshape(-1)
        out = torch.zeros_like(flat)
        if k > 0:
            idx = torch.sort(flat, descending=True, stable=True).indices[:k]
            out[idx] = 1.0
        return out.view_as(abs_scores)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None


class _EdgePopupFn(torch.autograd.Function):
    """All layers at once: forward W_eff = W ⊙ topk(|s|); backward ∂L/∂s = sign(s) ⊙ ∂L/∂W_eff ⊙ W."""

    @staticmethod
    def forward(ctx, ctrl: SupermaskController, *scores: torch.Tensor):  # type: ignore[override]
        weights = ctrl.weights()
        sel = ctrl.selector
        out = sel.forward(scores, weights)
        ctx.sel = sel
        ctx.save_for_backward(*weights, *scores)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):  # type: ignore[override]
        saved = ctx.saved_tensors
        n = len(saved) // 2
        return (None, *ctx.sel.backward(grads, saved[:n], saved[n:]))


# -- layers -----------------------------------------------------------------------------------------------
class SupermaskLinear(MaskedLinear):
    """A MaskedLinear whose weight is frozen and whose forward uses the supermask of its ``scores``."""

    scores: nn.Parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._supermask.weight(self), self.bias)


class SupermaskConv2d(MaskedConv2d):
    """A MaskedConv2d whose weight is frozen and whose forward uses the supermask of its ``scores``."""

    scores: nn.Parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self._supermask.weight(self), self.bias)


_TO_SM = {MaskedLinear: SupermaskLinear, MaskedConv2d: SupermaskConv2d}
_FROM_SM = {v: k for k, v in _TO_SM.items()}


def _pname(module_name: str) -> str:
    return f"{module_name}.weight" if module_name else "weight"


def topk_counts(
    shapes: dict[str, tuple[int, ...]],
    density: float,
    *,
    scope: str = "layerwise",
    distribution: str = "uniform",
) -> tuple[list[int], list[int]]:
    """(group of each layer, k of each group) for ``density``, with the counts :func:`core.select` uses."""
    density = check_density(density)
    names = list(shapes)
    sizes = [math.prod(shapes[n]) for n in names]
    if scope == "global":
        return [0] * len(names), [exact_count(density, sum(sizes))]
    if scope != "layerwise":
        raise ConfigError(f"unknown selection scope '{scope}' (choose from: global, layerwise)")
    dens = layer_densities(shapes, density, distribution)
    return list(range(len(names))), [exact_count(dens[n], s) for n, s in zip(names, sizes)]


class SupermaskController:
    """Shared by a model's supermask layers: computes every layer's effective weight once per forward."""

    def __init__(
        self,
        layers: list[tuple[str, MaskedLayer]],
        *,
        kind: str,
        kernel: str,
        density: float,
        scope: str,
        distribution: str,
        rescale: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.layers = [m for _, m in layers]
        self.names = [_pname(n) for n, _ in layers]
        self.kind = kind
        self.kernel = kernel
        self.density = density
        self.scope = scope
        self.distribution = distribution
        self.rescale = rescale
        self.generator = generator
        shapes = {n: tuple(m.weight.shape) for n, m in zip(self.names, self.layers)}
        self.groups, self.ks = topk_counts(shapes, density, scope=scope, distribution=distribution)
        for i, m in enumerate(self.layers):
            m._supermask_index = i  # type: ignore[attr-defined]
        self._selector: ExactTopK | CompiledTopK | None = None
        self._selector_key: Any = None
        self._cache: list[torch.Tensor] | None = None
        self._cache_key: Any = None
        self._consumed: list[bool] = []
        self._device_generators: dict[torch.device, torch.Generator] = {}

    # the selector lives on the scores' device and is rebuilt if they move
    @property
    def selector(self) -> ExactTopK | CompiledTopK:
        s0 = self.layers[0].scores
        key = (s0.device, s0.dtype)
        if self._selector is None or self._selector_key != key:
            shapes = [tuple(m.weight.shape) for m in self.layers]
            use_ext = self.kernel == "compiled" or (
                self.kernel == "fast" and s0.device.type == "cpu" and s0.dtype == torch.float32
            )
            # `fast` uses the compiled kernel only once built (`kernel=compiled` builds it): a first run
            # never waits a minute for a compiler
            ext = cpu_extension(build=self.kernel == "compiled") if use_ext else None
            if self.kernel == "compiled" and (
                ext is None or s0.device.type != "cpu" or s0.dtype != torch.float32
            ):
                raise ConfigError(
                    f"supermask kernel 'compiled' needs float32 CPU tensors and a C++ compiler ({_EXT_ERROR or 'not built'})"
                )
            if ext is not None:
                self._selector = CompiledTopK(shapes, self.groups, self.ks, ext)
            else:
                self._selector = ExactTopK(shapes, self.groups, self.ks, device=s0.device, dtype=s0.dtype)
            self._selector_key = key
        return self._selector

    @property
    def backend(self) -> str:
        """What actually runs: 'reference', 'compiled', 'torch' or 'bernoulli'."""
        if self.kind == "bernoulli":
            return "bernoulli"
        if self.kernel == "reference":
            return "reference"
        return "compiled" if isinstance(self.selector, CompiledTopK) else "torch"

    def weights(self) -> list[torch.Tensor]:
        return [m.weight.detach() for m in self.layers]

    def scores(self) -> list[nn.Parameter]:
        return [m.scores for m in self.layers]

    def weight(self, layer: MaskedLayer) -> torch.Tensor:
        i = layer._supermask_index  # type: ignore[attr-defined]
        if self.kind == "bernoulli":
            return self._bernoulli(layer)
        if self.kernel == "reference":
            return self._reference(i)
        grad = torch.is_grad_enabled()
        key = (grad, tuple(s._version for s in self.scores()), tuple(s.data_ptr() for s in self.scores()))
        if self._cache is None or key != self._cache_key or (grad and self._consumed[i]):
            scores = self.scores()
            if grad:
                self._cache = list(_EdgePopupFn.apply(self, *scores))
            else:
                self._cache = self.selector.forward([s.detach() for s in scores], self.weights())
            self._cache_key = key
            self._consumed = [False] * len(self.layers)
        self._consumed[i] = True
        return self._cache[i]

    def _reference(self, i: int) -> torch.Tensor:
        layer = self.layers[i]
        if self.scope == "global":
            all_abs = torch.cat([m.scores.abs().reshape(-1) for m in self.layers])
            mask = _straight_through_reference(all_abs, self.ks[0])
            off = sum(m.weight.numel() for m in self.layers[:i])
            sub = mask[off : off + layer.weight.numel()].view_as(layer.weight)
            return layer.weight * sub
        return layer.weight * _straight_through_reference(layer.scores.abs(), self.ks[i])

    def _bernoulli(self, layer: MaskedLayer) -> torch.Tensor:
        p = torch.sigmoid(layer.scores)
        w = layer.weight
        if layer.training and torch.is_grad_enabled():
            with torch.no_grad():
                sample = torch.bernoulli(p.detach(), generator=self._generator_for(p.device))
            m = sample + (p - p.detach())  # value: exactly the sample; gradient: straight through to p
            kept = sample.sum()
        else:
            m = p
            kept = p.detach().sum()
        out = w * m
        if self.rescale:
            out = out * (w.numel() / kept.clamp(min=1.0))
        return out

    def _generator_for(self, device: torch.device) -> torch.Generator | None:
        g = self.generator
        if g is None or g.device == device:
            return g
        if device not in self._device_generators:  # seeded from the CPU generator: still deterministic
            seed = int(torch.randint(0, 2**62, (1,), generator=g))
            self._device_generators[device] = torch.Generator(device=device).manual_seed(seed)
        return self._device_generators[device]

    # -- masks as the library knows them ------------------------------------------------------------
    @torch.no_grad()
    def keep_scores(self) -> dict[str, torch.Tensor]:
        if self.kind == "bernoulli":
            return {n: torch.sigmoid(m.scores.detach()).clone() for n, m in zip(self.names, self.layers)}
        return {n: m.scores.detach().abs() for n, m in zip(self.names, self.layers)}

    @torch.no_grad()
    def current_mask(self) -> Mask:
        """The mask the forward uses now (edge-popup: exact top-k by the reference rule; Bernoulli:
        sigmoid(s) > 0.5, the mode of the sampled mask)."""
        if self.kind == "bernoulli":
            return Mask({n: torch.sigmoid(m.scores) > 0.5 for n, m in zip(self.names, self.layers)})
        out = {}
        for g in sorted(set(self.groups)):
            idx = [i for i, gg in enumerate(self.groups) if gg == g]
            flat = torch.cat([self.layers[i].scores.detach().abs().reshape(-1) for i in idx])
            keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
            keep[torch.sort(flat, descending=True, stable=True).indices[: self.ks[g]]] = True
            off = 0
            for i in idx:
                n = self.layers[i].weight.numel()
                out[self.names[i]] = keep[off : off + n].view(self.layers[i].weight.shape).clone()
                off += n
        return Mask({n: out[n] for n in self.names})


# -- conversion -------------------------------------------------------------------------------------------
def _fan_in(w: torch.Tensor) -> int:
    return int(w.shape[1] * (math.prod(w.shape[2:]) if w.dim() > 2 else 1))


@torch.no_grad()
def init_scores(
    model_layers: list[tuple[str, MaskedLayer]],
    *,
    kind: str = "edge_popup",
    scale: float = 1.0,
    init_logit: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Scores as edge-popup initialises them: Kaiming uniform with a=√5, i.e. U(−1/√fan_in, 1/√fan_in), × scale.

    Bernoulli scores are the same draw shifted by ``init_logit`` (sigmoid(init_logit) is the initial keep
    probability; 0 → 0.5).
    """
    out = []
    for _, m in model_layers:
        w = m.weight
        bound = scale / math.sqrt(_fan_in(w))
        u = torch.rand(w.shape, generator=generator, dtype=torch.float32).to(device=w.device, dtype=w.dtype)
        s = (2.0 * u - 1.0) * bound
        if kind == "bernoulli":
            s = s + init_logit
        out.append(s)
    return out


@torch.no_grad()
def init_frozen_weights(
    model: nn.Module,
    init: str = "signed_constant",
    *,
    density: float = 1.0,
    scale_fan: bool = True,
    generator: torch.Generator | None = None,
) -> None:
    """Re-draw every masked layer's weight for a supermask, in module order, from ``generator``.

    ``signed_constant``: ±√2/√fan_in with a random sign (edge-popup's signed Kaiming constant);
    ``kaiming_normal``: N(0, 2/fan_in). With ``scale_fan`` fan_in is multiplied by ``density`` (edge-popup's
    ``scale_fan``: the kept weights then have the variance of a dense Kaiming layer). Biases are untouched.
    """
    if init not in WEIGHT_INITS:
        raise ConfigError(f"unknown supermask weight init '{init}' (choose from: {', '.join(WEIGHT_INITS)})")
    for _, m in masked_layers(model):
        w = m.weight
        fan = _fan_in(w) * (density if scale_fan else 1.0)
        std = math.sqrt(2.0) / math.sqrt(fan)
        z = torch.randn(w.shape, generator=generator, dtype=torch.float32)
        if init == "signed_constant":
            z = torch.where(z >= 0, std, -std)
        else:
            z = z * std
        w.copy_(z.to(device=w.device, dtype=w.dtype))


def make_bn_nonaffine(model: nn.Module) -> int:
    """Turn every affine BatchNorm into a non-affine one in place (edge-popup's NonAffineBatchNorm).

    Returns how many were converted. Running statistics are kept.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            module.affine = False
            module.weight = None  # type: ignore[assignment]
            module.bias = None  # type: ignore[assignment]
            count += 1
    return count


def to_supermask(
    model: nn.Module,
    *,
    density: float,
    kind: str = "edge_popup",
    scope: str = "layerwise",
    distribution: str = "uniform",
    kernel: str = "fast",
    scores: Sequence[torch.Tensor] | None = None,
    score_init_scale: float = 1.0,
    init_logit: float = 0.0,
    rescale: bool = False,
    generator: torch.Generator | None = None,
) -> SupermaskController:
    """Put ``model`` in supermask mode in place: frozen parameters, a ``scores`` Parameter per masked layer.

    ``density`` is the fraction of weights KEPT (edge-popup's k). Layers must carry no mask. Undo with
    :func:`strip_supermask`.
    """
    if kind not in SUPERMASK_KINDS:
        raise ConfigError(f"unknown supermask kind '{kind}' (choose from: {', '.join(SUPERMASK_KINDS)})")
    if kernel not in SUPERMASK_KERNELS:
        raise ConfigError(
            f"unknown supermask kernel '{kernel}' (choose from: {', '.join(SUPERMASK_KERNELS)})"
        )
    density = check_density(density)
    layers = list(masked_layers(model))
    if not layers:
        raise ConfigError(
            f"model {type(model).__name__} has no prunable (Linear/Conv2d) layers for a supermask"
        )
    if is_supermask(model):
        raise ConfigError("model is already in supermask mode")
    for name, m in layers:
        if type(m) not in _TO_SM:
            raise ConfigError(f"layer '{name}' ({type(m).__name__}) cannot become a supermask layer")
        if m.weight_mask is not None:
            raise ConfigError(f"layer '{name}' already carries a mask; supermasks start from a dense net")
    if scores is None:
        scores = init_scores(
            layers, kind=kind, scale=score_init_scale, init_logit=init_logit, generator=generator
        )
    if len(scores) != len(layers):
        raise ConfigError(f"got {len(scores)} score tensors for {len(layers)} layers")
    frozen = {}
    for n, p in model.named_parameters():
        frozen[n] = p.requires_grad
        p.requires_grad_(False)
    ctrl = SupermaskController(
        layers,
        kind=kind,
        kernel=kernel,
        density=density,
        scope=scope,
        distribution=distribution,
        rescale=rescale,
        generator=generator,
    )
    for (name, m), s in zip(layers, scores):
        if tuple(s.shape) != tuple(m.weight.shape):
            raise ConfigError(
                f"scores for '{name}' have shape {list(s.shape)}, weight has {list(m.weight.shape)}"
            )
        m.__class__ = _TO_SM[type(m)]
        m.scores = nn.Parameter(s.detach().clone().to(device=m.weight.device, dtype=m.weight.dtype))
        m._supermask = ctrl  # type: ignore[attr-defined]
    model._supermask_frozen = frozen  # type: ignore[attr-defined]
    model._supermask_controller = ctrl  # type: ignore[attr-defined]
    return ctrl


def is_supermask(model: nn.Module) -> bool:
    return getattr(model, "_supermask_controller", None) is not None


def supermask_controller(model: nn.Module) -> SupermaskController:
    ctrl = getattr(model, "_supermask_controller", None)
    if ctrl is None:
        raise ConfigError("model is not in supermask mode (call to_supermask first)")
    return ctrl


def raw_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained scores keyed like ``prunable_parameters(model)`` (signed, as stored)."""
    ctrl = supermask_controller(model)
    return {n: m.scores.detach().clone() for n, m in zip(ctrl.names, ctrl.layers)}


def keep_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    """Higher = keep: |scores| (edge-popup) or sigmoid(scores) (Bernoulli); ready for ``core.select``."""
    return supermask_controller(model).keep_scores()


def current_mask(model: nn.Module) -> Mask:
    return supermask_controller(model).current_mask()


@torch.no_grad()
def check_scores_finite(model: nn.Module) -> None:
    """Raise DivergenceError naming the first layer whose scores hold NaN or inf (one fused norm per call)."""
    ctrl = supermask_controller(model)
    norms = torch._foreach_norm([s.detach() for s in ctrl.scores()], 1)
    if math.isfinite(float(torch.stack(norms).sum())):
        return
    for name, s in zip(ctrl.names, ctrl.scores()):
        if not bool(torch.isfinite(s.detach()).all()):
            what = "NaN" if bool(torch.isnan(s.detach()).any()) else "infinite"
            raise DivergenceError(
                f"supermask scores became {what} in layer '{name}': the score training diverged; "
                "lower --lr (or --arg score_init_scale)"
            )


def strip_supermask(model: nn.Module) -> dict[str, torch.Tensor]:
    """Back to plain masked layers (weights untouched, no mask attached); returns the raw scores."""
    ctrl = supermask_controller(model)
    out = raw_scores(model)
    for m in ctrl.layers:
        del m.scores
        del m._supermask
        del m._supermask_index
        m.__class__ = _FROM_SM[type(m)]
    frozen = getattr(model, "_supermask_frozen", {})
    for n, p in model.named_parameters():
        p.requires_grad_(frozen.get(n, True))
    del model._supermask_frozen
    del model._supermask_controller
    return out
