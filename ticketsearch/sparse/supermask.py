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

Kernels (``kernel=``): ``fast`` (default) and ``reference``. The reference is the straightforward
algorithm, per layer and per forward: a full stable sort of ``|s|``, then ``W ⊙ M`` through autograd; it is the
oracle in tests and the baseline in ``benchmarks/supermask_speed.py``. ``fast`` computes the same masks
exactly (bitwise the same selection), for all layers at once:

* ``|s|`` of every layer is written into one chunk-padded buffer (chunks of 64; padding holds −1);
* each group (a layer, or all layers for ``global``) keeps a band ``[lo, hi)`` around last step's k-th value,
  warm-started and widened/narrowed from how far the k-th value moved; two float compares with per-chunk
  sums count the weights above ``hi`` and above ``lo``;
* only the few chunks that hold band elements are gathered; a small stable sort picks the ``k − count(≥hi)``
  largest band elements (lowest index first among equals) and sets them in the ``≥ hi`` mask;
* if the k-th value left the band (or on the first step) the band is re-centred with ``kthvalue``;
* ``W ⊙ M`` for every layer is one ``_foreach_mul``, and so is the straight-through backward, inside one
  autograd Function per step (masks are computed once per forward and shared by forward and backward).

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
SUPERMASK_KERNELS = ("fast", "reference")
WEIGHT_INITS = ("signed_constant", "kaiming_normal")


# -- exact top-k, warm-started ----------------------------------------------------------------------------
class ExactTopK:
    """Exact top-k masks of ``|scores|`` for groups of tensors, fast when scores move a little per call.

    ``shapes``: one per tensor; ``groups``: the group of each tensor (groups must be contiguous runs, e.g.
    ``[0, 1, 2]`` for layerwise or ``[0, 0, 0]`` for global); ``ks``: weights kept per group. :meth:`select`
    returns float 0/1 masks (views of an internal buffer, valid until the next call) equal to a stable
    descending sort's first ``k`` of each group's concatenated ``|scores|``.
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
        if len(shapes) != len(groups):
            raise ValueError("one group id per tensor")
        if list(groups) != sorted(groups) or (groups and list(range(groups[-1] + 1)) != sorted(set(groups))):
            raise ValueError("groups must be contiguous runs numbered 0, 1, ...")
        ch = self.CHUNK
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.sizes = [math.prod(s) for s in self.shapes]
        nchunks = [max(1, -(-n // ch)) for n in self.sizes]
        self.offsets = [ch * sum(nchunks[:i]) for i in range(len(nchunks))]
        total_chunks = sum(nchunks)
        self.G = (groups[-1] + 1) if groups else 0
        self.ks = [int(k) for k in ks]
        if len(self.ks) != self.G:
            raise ValueError("one k per group")
        self.group_n = [0] * self.G
        self.group_chunks = [[total_chunks, 0] for _ in range(self.G)]
        chunk_group = []
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
        self.A = torch.full((total_chunks, ch), -1.0, device=device, dtype=dtype)  # |s|, padding −1
        self.M = torch.zeros((total_chunks, ch), device=device, dtype=dtype)  # the mask (≥ hi, plus band picks)
        self.S = torch.zeros((total_chunks, ch), device=device, dtype=dtype)  # scratch (≥ lo)
        self.chunk_group = torch.tensor(chunk_group, device=device, dtype=torch.long)
        flatA, flatM = self.A.view(-1), self.M.view(-1)
        self.a_views = [flatA[o : o + n].view(s) for o, n, s in zip(self.offsets, self.sizes, self.shapes)]
        self.m_views = [flatM[o : o + n].view(s) for o, n, s in zip(self.offsets, self.sizes, self.shapes)]
        # trivial groups: keep nothing (hi = +inf) or everything (hi = −0.5: all |s| ≥ 0 > −0.5 > padding)
        self.active = [0 < self.ks[g] < self.group_n[g] for g in range(self.G)]
        # warm-start state per group: last k-th value, its drift, the band half-width; None = cold
        self.t: list[float | None] = [None] * self.G
        self.drift = [0.0] * self.G
        self.width = [0.0] * self.G
        self.stats = {"calls": 0, "band_hits": 0, "refits": 0, "band_elems": 0}

    # -- helpers ------------------------------------------------------------------------------------
    def _kth_value(self, g: int) -> float:
        c0, c1 = self.group_chunks[g]
        vals = self.A[c0:c1].reshape(-1)  # padding (−1) never reaches the top k
        return float(vals.kthvalue(vals.numel() - self.ks[g] + 1).values)

    def _bounds(self, g: int) -> tuple[float, float]:
        if not self.active[g]:
            return (-0.5, -0.5) if self.ks[g] == self.group_n[g] else (math.inf, math.inf)
        t = self.t[g]
        assert t is not None
        c = t + self.drift[g]
        w = self.width[g]
        return max(c - w, -0.5), max(c + w, -0.5)

    @torch.no_grad()
    def select(self, scores: Sequence[torch.Tensor], names: Sequence[str] | None = None) -> list[torch.Tensor]:
        if len(scores) != len(self.sizes):
            raise ValueError(f"expected {len(self.sizes)} score tensors, got {len(scores)}")
        for s, a in zip(scores, self.a_views):
            torch.abs(s.detach(), out=a)
        self.stats["calls"] += 1
        cold = [g for g in range(self.G) if self.active[g] and self.t[g] is None]
        if cold:
            self._check_finite(scores, names)
            for g in cold:
                self.t[g], self.drift[g], self.width[g] = self._kth_value(g), 0.0, 0.0
        bounds = [self._bounds(g) for g in range(self.G)]
        for attempt in range(self.MAX_TRIES + 1):
            failed = self._pass(bounds, names, scores)
            if not failed:
                return self.m_views
            self.stats["refits"] += 1
            for g, above in failed:
                lo, hi = bounds[g]
                span = max(hi - lo, 1e-7 * abs(hi), 1e-30)
                if attempt + 1 < self.MAX_TRIES:  # widen towards the side the k-th value went to
                    bounds[g] = (hi, hi + 4.0 * span) if above else (max(lo - 4.0 * span, -0.5), lo)
                else:  # give up guessing: the exact value, a band holding only its ties
                    v = self._kth_value(g)
                    bounds[g] = (v, v)
                self.width[g] = max(self.width[g], 2.0 * span)
        raise RuntimeError("supermask top-k did not converge (a bug: please report it)")  # pragma: no cover

    def _check_finite(self, scores: Sequence[torch.Tensor], names: Sequence[str] | None) -> None:
        total = self.A.sum()
        if not bool(torch.isfinite(total)):
            self._raise_nonfinite(scores, names)

    @staticmethod
    def _raise_nonfinite(scores: Sequence[torch.Tensor], names: Sequence[str] | None) -> None:
        for i, s in enumerate(scores):
            if not bool(torch.isfinite(s.detach()).all()):
                what = "NaN" if bool(torch.isnan(s.detach()).any()) else "infinite"
                name = names[i] if names is not None else f"#{i}"
                raise DivergenceError(
                    f"supermask scores became {what} in layer '{name}': the score training diverged; "
                    "lower --lr (or the score init scale)"
                )
        raise DivergenceError("supermask scores became NaN or infinite; lower --lr")  # pragma: no cover

    def _pass(self, bounds: list[tuple[float, float]], names, scores) -> list[tuple[int, bool]]:
        """One compare pass; returns (group, k-th value is above the band) for every group that missed."""
        G = self.G
        lohi = torch.tensor(bounds, dtype=self.dtype, device=self.device).T.contiguous()  # (2, G)
        lohi[1] = torch.maximum(lohi[1], torch.nextafter(lohi[0], torch.full_like(lohi[0], math.inf)))
        bounds[:] = [tuple(b) for b in lohi.T.tolist()]
        per_chunk = lohi[:, self.chunk_group]  # (2, C)
        t_lo, t_hi = per_chunk[0].unsqueeze(1), per_chunk[1].unsqueeze(1)
        torch.ge(self.A, t_hi, out=self.M)
        torch.ge(self.A, t_lo, out=self.S)
        c_hi = self.M.sum(1)
        c_lo = self.S.sum(1)
        counts = torch.zeros((2, G), dtype=torch.float64, device=self.device)
        counts.index_add_(1, self.chunk_group, torch.stack([c_hi, c_lo]).to(torch.float64))
        flat = torch.cat([counts.view(-1), self.A.sum().view(1).to(torch.float64)]).tolist()
        if not math.isfinite(flat[-1]):
            self._raise_nonfinite(scores, names)
        n_hi, n_lo = flat[:G], flat[G : 2 * G]
        failed, band_groups, clean, need = [], [], [], [0] * G
        for g in range(G):
            if not self.active[g]:
                continue
            k = self.ks[g]
            if int(n_hi[g]) == k:  # a clean cut at hi (no tie crosses it)
                clean.append(g)
            elif int(n_hi[g]) < k <= int(n_lo[g]):
                band_groups.append(g)
                need[g] = k - int(n_hi[g])
            else:
                failed.append((g, int(n_hi[g]) > k))
        if failed:
            return failed
        for g in clean:
            self._update(g, bounds[g][1])
        if band_groups:
            self._pick_band(band_groups, need, per_chunk, c_hi, c_lo, bounds)
        return []

    def _pick_band(self, band_groups, need, per_chunk, c_hi, c_lo, bounds) -> None:
        ch = self.CHUNK
        need_t = torch.tensor(need, device=self.device, dtype=torch.long)
        chunk_need = need_t[self.chunk_group]
        ids = torch.nonzero((c_lo > c_hi) & (chunk_need > 0)).view(-1)
        a = self.A[ids]
        inband = (a >= per_chunk[0, ids].unsqueeze(1)) & (a < per_chunk[1, ids].unsqueeze(1))
        pos = torch.nonzero(inband)
        rows, cols = pos[:, 0], pos[:, 1]
        vals = a[rows, cols]
        flat_idx = ids[rows] * ch + cols  # ascending (row-major over ascending chunk ids)
        grp = self.chunk_group[ids[rows]]
        # order: group ascending, then value descending, then flat index ascending (stable sorts)
        o1 = torch.sort(vals, descending=True, stable=True).indices
        o2 = torch.sort(grp[o1], stable=True).indices
        order = o1[o2]
        g_sorted = grp[order]
        per_group = torch.bincount(g_sorted, minlength=self.G)
        starts = torch.cumsum(per_group, 0) - per_group
        rank = torch.arange(order.numel(), device=self.device) - starts[g_sorted]
        r = need_t[g_sorted]
        chosen = rank < r
        self.M.view(-1)[flat_idx[order[chosen]]] = 1.0
        last = rank == (r - 1)
        kth = torch.full((self.G,), math.nan, dtype=torch.float64, device=self.device)
        kth[g_sorted[last]] = vals[order[last]].to(torch.float64)
        kth_l = kth.tolist()
        self.stats["band_hits"] += 1
        self.stats["band_elems"] += int(order.numel())
        for g in band_groups:
            self._update(g, kth_l[g])

    def _update(self, g: int, v: float) -> None:
        """Learn where the k-th value will be next call and how wide the band must be."""
        prev = self.t[g]
        assert prev is not None
        predicted = prev + self.drift[g]
        err = abs(v - predicted)
        step = v - prev
        self.drift[g] = 0.5 * self.drift[g] + 0.5 * step
        # a band ~3× the typical miss, shrinking slowly when the k-th value moves less
        target = 3.0 * err + 1e-7 * abs(v)
        w = self.width[g]
        self.width[g] = max(target, 0.8 * w) if w > 0 else target
        self.t[g] = v


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
        masks = ctrl.selector.select(scores, ctrl.names)
        weights = ctrl.weights()
        out = torch._foreach_mul(weights, masks)
        signs = torch._foreach_sign([s.detach() for s in scores])
        ctx.save_for_backward(*weights, *signs)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):  # type: ignore[override]
        saved = ctx.saved_tensors
        n = len(saved) // 2
        gs = torch._foreach_mul(list(grads), list(saved[:n]))
        torch._foreach_mul_(gs, list(saved[n:]))
        return (None, *gs)


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
    shapes: dict[str, tuple[int, ...]], density: float, *, scope: str = "layerwise", distribution: str = "uniform"
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
        self._selector: ExactTopK | None = None
        self._cache: list[torch.Tensor] | None = None
        self._cache_key: Any = None
        self._consumed: list[bool] = []
        self._device_generators: dict[torch.device, torch.Generator] = {}

    # the selector lives on the scores' device and is rebuilt if they move
    @property
    def selector(self) -> ExactTopK:
        s0 = self.layers[0].scores
        if self._selector is None or self._selector.device != s0.device or self._selector.dtype != s0.dtype:
            self._selector = ExactTopK(
                [tuple(m.weight.shape) for m in self.layers], self.groups, self.ks, device=s0.device, dtype=s0.dtype
            )
        return self._selector

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
                masks = self.selector.select([s.detach() for s in scores], self.names)
                self._cache = torch._foreach_mul(self.weights(), masks)
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
            m = sample + p - p.detach()  # value: the sample; gradient: straight through to p
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
        """The mask the forward uses now (edge-popup: exact top-k; Bernoulli: sigmoid(s) > 0.5)."""
        if self.kind == "bernoulli":
            return Mask({n: torch.sigmoid(m.scores) > 0.5 for n, m in zip(self.names, self.layers)})
        masks = self.selector.select([m.scores.detach() for m in self.layers], self.names)
        return Mask({n: mk.detach().clone().bool() for n, mk in zip(self.names, masks)})


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
        raise ConfigError(f"unknown supermask kernel '{kernel}' (choose from: {', '.join(SUPERMASK_KERNELS)})")
    density = check_density(density)
    layers = list(masked_layers(model))
    if not layers:
        raise ConfigError(f"model {type(model).__name__} has no prunable (Linear/Conv2d) layers for a supermask")
    if is_supermask(model):
        raise ConfigError("model is already in supermask mode")
    for name, m in layers:
        if type(m) not in _TO_SM:
            raise ConfigError(f"layer '{name}' ({type(m).__name__}) cannot become a supermask layer")
        if m.weight_mask is not None:
            raise ConfigError(f"layer '{name}' already carries a mask; supermasks start from a dense net")
    if scores is None:
        scores = init_scores(layers, kind=kind, scale=score_init_scale, init_logit=init_logit, generator=generator)
    if len(scores) != len(layers):
        raise ConfigError(f"got {len(scores)} score tensors for {len(layers)} layers")
    frozen = {}
    for n, p in model.named_parameters():
        frozen[n] = p.requires_grad
        p.requires_grad_(False)
    ctrl = SupermaskController(
        layers, kind=kind, kernel=kernel, density=density, scope=scope, distribution=distribution,
        rescale=rescale, generator=generator,
    )
    for (name, m), s in zip(layers, scores):
        if tuple(s.shape) != tuple(m.weight.shape):
            raise ConfigError(f"scores for '{name}' have shape {list(s.shape)}, weight has {list(m.weight.shape)}")
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
    if not math.isfinite(float(torch.stack(norms).sum())):
        ExactTopK._raise_nonfinite(list(ctrl.scores()), ctrl.names)


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
