"""Supermask layers: frozen weights, trained per-weight scores, the forward uses the weights the scores keep.

Three mask rules, all set up by :func:`to_supermask` on a model's masked layers (in place), each a
:class:`SupermaskVariant` (:class:`EdgePopupVariant`, :class:`BernoulliVariant`, :class:`GemMinerVariant`)
that owns its initial scores, effective weight, keep-scores and mask; the :class:`SupermaskController`
caches and selects, and a fourth rule is a subclass plus a line in :data:`SUPERMASK_VARIANTS`:

``edge_popup`` (Ramanujan et al. 2020, "What's hidden in a randomly weighted neural network?")
    Each layer keeps exactly ``k`` weights: the ``k`` largest ``|scores|`` (per layer, or over all layers with
    ``scope="global"``), ties broken towards the lower flat index exactly as :func:`ticketsearch.core.select`
    does, so the mask used in training is the Mask the run records. The gradient is straight-through:
    the top-k indicator is treated as the identity on ``|s|``, so ``∂L/∂s = sign(s) ⊙ ∂L/∂W_eff ⊙ W``
    (the reference code passes ``scores.abs()`` through its straight-through ``GetSubnet``; for positive
    scores this is the textbook ``∂L/∂W_eff ⊙ W``). Every score gets gradient, pruned or not.
``bernoulli`` (Zhou et al. 2019, "Deconstructing lottery tickets")
    Keep probabilities ``p = sigmoid(s / temperature)``. Training forward, by the controller's
    ``train_mask``: ``"sample"`` draws ``m ~ Bernoulli(p)`` each forward with a straight-through estimator
    (``∂m/∂p := 1``); ``"round"`` is Zhou's ``--round_mask``: a random half of the entries is clamped to the
    rounded mask ``[p > 0.5]`` (no gradient), the other half is ``p`` itself. Eval forward, by ``eval_mask``:
    ``"expected"`` multiplies the weights by ``p``; ``"binary"`` by the mode ``[s > 0]`` (what Zhou's code
    evaluates with ``--round_mask``, and the Mask ``supermask-bernoulli`` records by default).
    ``rescale`` is Zhou's dynamic weight rescaling: weights × (layer size / number of kept weights).

``gem_miner`` (Sreenivasan et al. 2022, "Rare Gems: Finding Lottery Tickets at Initialization")
    Scores are keep values in [0, 1], drawn U[0, 1] (the authors' ``score_init=unif``); the mask is
    ``1[s > 0.5]`` (their ``hc_quantized`` with ``quantize_threshold=0.5``) times the layer's attached mask
    (the weights the method has frozen out, :class:`ticketsearch.methods.learned.GemMinerSchedule`), with a
    straight-through gradient ``∂L/∂s = ∂L/∂W_eff ⊙ W`` (a frozen weight is zero, so its score gets none)
    plus ``2λ s``, the gradient of the L2 penalty ``λ‖s‖²`` (their ``get_regularization_loss``, ``L2``).
    :meth:`GemMinerVariant.project` clamps the scores to [0, 1] and zeroes those of frozen weights, before
    every step (their trainer clamps before every forward).

Kernels (``kernel=``): the ``topk`` kernels of :mod:`ticketsearch.sparse.kernels`, all computing bitwise the
same selection. ``reference`` is the oracle: per layer and per forward, a full stable sort of ``|s|``, then
``W ⊙ M`` through autograd (also the baseline of ``benchmarks/supermask_speed.py``). The others (``compiled``:
C++ on CPU float32, built on first use; ``torch``: PyTorch ops, any device) compute every layer's ``W ⊙ M``
once per forward inside one autograd Function (:class:`_EdgePopupFn`), warm-starting the k-th value from
the last step. ``fast`` (default) picks the best kernel ready for the scores' device and dtype without
waiting for a compiler: ``compiled`` on CPU float32 once built, else ``torch``. ``triton`` (CUDA, or CPU under
``TRITON_INTERPRET=1``) is fused: a selector with ``fused = True`` gets each layer's forward
(:meth:`SupermaskController.linear`: the mask is built inside the matmul from the scores and a per-layer
cut, ``W ⊙ M`` never formed). A new kernel is one module plus a registry entry in
:mod:`ticketsearch.sparse.kernels`, and ``fast`` considers it by its priority.

Patterns (``pattern=``, ``N:M`` or ``block:RxC``): edge-popup's forward keeps what
:func:`ticketsearch.core.select` keeps of ``|s|`` under the pattern (N:M: every group's N best, then the
top-k within them at a density below N/M; blocks: whole blocks by the sum of their ``|s|``), with the
same straight-through gradient; so the mask the scores train under is, by construction, the Mask the run
records. Every ``kernel=`` then runs this one path (:meth:`SupermaskController.pattern_masks`: one
``core.select`` per forward, cached until the scores change, ``W ⊙ M`` through autograd), and the backend
reads ``pattern``: the top-k kernels select without groups, so none of them is asked to agree with it.

Frozen state: weights, biases and any other non-score parameter get ``requires_grad=False``; BatchNorm should
be non-affine as in the paper (:func:`make_bn_nonaffine`). Running statistics of BatchNorm still update in
train mode, as in edge-popup: they are statistics of the data, not trained weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, TypeAlias, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import ConfigError, DivergenceError
from ..core.mask import Mask, exact_count
from ..core.pattern import parse_pattern
from ..core.select import check_density, check_selection, layer_densities, select
from .kernels import FAST, TOPK, CompiledTopK, ExactTopK, TopKSelector, cpu_extension, kernels, resolve_topk
from .kernels.reference import TOPK_KERNEL as _REFERENCE
from .kernels.reference import straight_through_topk
from .layers import MaskedConv2d, MaskedLayer, MaskedLinear, masked_layers, param_name

__all__ = [
    "SUPERMASK_KINDS",
    "SUPERMASK_VARIANTS",
    "SupermaskVariant",
    "EdgePopupVariant",
    "BernoulliVariant",
    "GemMinerVariant",
    "SUPERMASK_KERNELS",
    "WEIGHT_INITS",
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

# the `kernel=` values: `fast`, then the registered top-k kernels by priority (compiled, torch, reference)
SUPERMASK_KERNELS: tuple[str, ...] = (FAST, *(k.name for k in kernels(TOPK)))
WEIGHT_INITS = ("signed_constant", "kaiming_normal")


# -- autograd ---------------------------------------------------------------------------------------------
class _EdgePopupFn(torch.autograd.Function):
    """All layers at once: forward W_eff = W ⊙ topk(|s|); backward ∂L/∂s = sign(s) ⊙ ∂L/∂W_eff ⊙ W."""

    @staticmethod
    def forward(ctx, ctrl: SupermaskController, *scores: torch.Tensor):
        weights = ctrl.weights()
        sel = ctrl.selector
        out = sel.forward(scores, weights)
        ctx.sel = sel
        ctx.save_for_backward(*weights, *scores)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        saved = ctx.saved_tensors
        n = len(saved) // 2
        return (None, *ctx.sel.backward(grads, saved[:n], saved[n:]))


class _StraightThroughMask(torch.autograd.Function):
    """Forward: a mask chosen outside autograd (``core.select`` under a pattern); backward: the gradient
    passed straight through to ``|s|`` (edge-popup's ``GetSubnet`` with a given selection)."""

    @staticmethod
    def forward(ctx, abs_scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mask.to(abs_scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


# -- layers -----------------------------------------------------------------------------------------------
class SupermaskLinear(MaskedLinear):
    """A MaskedLinear whose weight is frozen and whose forward uses the supermask of its ``scores``."""

    scores: nn.Parameter
    _supermask: SupermaskController
    _supermask_index: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._supermask.linear(self, x)


class SupermaskConv2d(MaskedConv2d):
    """A MaskedConv2d whose weight is frozen and whose forward uses the supermask of its ``scores``."""

    scores: nn.Parameter
    _supermask: SupermaskController
    _supermask_index: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self._supermask.weight(self), self.bias)


# a SupermaskController's layers, once to_supermask has swapped their classes
SupermaskLayer: TypeAlias = "SupermaskLinear | SupermaskConv2d"

_TO_SM = {MaskedLinear: SupermaskLinear, MaskedConv2d: SupermaskConv2d}
_FROM_SM = {v: k for k, v in _TO_SM.items()}


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


# -- the variants: one class per mask rule ------------------------------------------------------------------
class SupermaskVariant:
    """One supermask rule: how its scores start, what a layer's effective weight is, what "keep" means in
    its scores and which Mask it stands for. The :class:`SupermaskController` only caches and selects; a
    new variant is a subclass plus a line in :data:`SUPERMASK_VARIANTS`.
    """

    name: ClassVar[str] = ""

    def __init__(self, *, rescale: bool = False, generator: torch.Generator | None = None) -> None:
        self.rescale = rescale
        self.generator = generator

    def init_scores(self, draw: torch.Tensor, *, init_logit: float = 0.0) -> torch.Tensor:
        """The initial scores from edge-popup's Kaiming-uniform draw U(±scale/√fan_in)."""
        return draw

    def from_uniform(self, u: torch.Tensor, bound: float, *, init_logit: float = 0.0) -> torch.Tensor:
        """The initial scores from ``u`` ~ U[0, 1): by default :meth:`init_scores` of the Kaiming-uniform
        draw ``(2u − 1)·bound`` (a variant whose scores live in [0, 1] takes ``u`` itself)."""
        return self.init_scores((2.0 * u - 1.0) * bound, init_logit=init_logit)

    def weight(self, ctrl: SupermaskController, layer: SupermaskLayer) -> torch.Tensor:
        """The layer's effective weight in this forward (training or evaluation)."""
        raise NotImplementedError

    def linear(self, ctrl: SupermaskController, layer: SupermaskLinear, x: torch.Tensor) -> torch.Tensor:
        """A supermask Linear's output (a variant with a fused kernel overrides this)."""
        return F.linear(x, self.weight(ctrl, layer), layer.bias)

    def keep_scores(self, ctrl: SupermaskController) -> dict[str, torch.Tensor]:
        """Higher = keep, keyed like ``prunable_parameters``: what ``core.select`` ranks."""
        raise NotImplementedError

    def current_mask(self, ctrl: SupermaskController) -> Mask:
        """The mask the forward stands for now."""
        raise NotImplementedError

    def backend(self, ctrl: SupermaskController) -> str:
        """What actually computes the forward (recorded in the result)."""
        return self.name


class EdgePopupVariant(SupermaskVariant):
    """Edge-popup: exactly the top-k weights by |score| (the controller's selection, with its kernels and
    cache), straight-through gradient to the scores; keep-scores |s|."""

    name = "edge_popup"

    def weight(self, ctrl: SupermaskController, layer: SupermaskLayer) -> torch.Tensor:
        return ctrl.topk_weight(layer)

    def linear(self, ctrl: SupermaskController, layer: SupermaskLinear, x: torch.Tensor) -> torch.Tensor:
        return ctrl.topk_linear(layer, x)

    @torch.no_grad()
    def keep_scores(self, ctrl: SupermaskController) -> dict[str, torch.Tensor]:
        return {n: m.scores.detach().abs() for n, m in zip(ctrl.names, ctrl.layers)}

    def current_mask(self, ctrl: SupermaskController) -> Mask:
        return ctrl.topk_mask()

    def backend(self, ctrl: SupermaskController) -> str:
        return ctrl.topk_backend()


class BernoulliVariant(SupermaskVariant):
    """Zhou et al.'s keep probabilities p = sigmoid(s / temperature) (see the module docstring).

    State: ``train_mask`` (``"sample"`` or ``"round"``), ``eval_mask`` (``"expected"`` or ``"binary"``),
    ``temperature``, ``rescale``; ``run_learned`` sets them from the method's knobs.
    """

    name = "bernoulli"

    def __init__(self, *, rescale: bool = False, generator: torch.Generator | None = None) -> None:
        super().__init__(rescale=rescale, generator=generator)
        self.train_mask = "sample"
        self.eval_mask = "expected"
        self.temperature = 1.0
        self._device_generators: dict[torch.device, torch.Generator] = {}

    def init_scores(self, draw: torch.Tensor, *, init_logit: float = 0.0) -> torch.Tensor:
        return draw + init_logit  # sigmoid(init_logit) is the initial keep probability

    def weight(self, ctrl: SupermaskController, layer: SupermaskLayer) -> torch.Tensor:
        s = layer.scores
        p = torch.sigmoid(s / self.temperature)
        w = layer.weight
        if layer.training and torch.is_grad_enabled():
            if self.train_mask == "round":  # Zhou's --round_mask: half clamped to round(p), half p
                with torch.no_grad():
                    half = torch.full_like(p, 0.5)
                    clamp = torch.bernoulli(half, generator=self._generator_for(p.device))
                    hard = (s.detach() > 0).to(p.dtype)
                m = clamp * hard + (1.0 - clamp) * p
                kept = m.detach().sum()
            else:
                with torch.no_grad():
                    sample = torch.bernoulli(p.detach(), generator=self._generator_for(p.device))
                m = sample + (p - p.detach())  # value: exactly the sample; gradient: straight through to p
                kept = sample.sum()
        elif self.eval_mask == "binary":
            m = (s.detach() > 0).to(p.dtype)
            kept = m.sum()
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

    @torch.no_grad()
    def keep_scores(self, ctrl: SupermaskController) -> dict[str, torch.Tensor]:
        t = self.temperature
        return {n: torch.sigmoid(m.scores.detach() / t).clone() for n, m in zip(ctrl.names, ctrl.layers)}

    @torch.no_grad()
    def current_mask(self, ctrl: SupermaskController) -> Mask:
        """sigmoid(s) > 0.5: the mode of the sampled mask."""
        return Mask({n: m.scores.detach() > 0 for n, m in zip(ctrl.names, ctrl.layers)})


class _GemMinerFn(torch.autograd.Function):
    """Forward ``W ⊙ 1[s > threshold]``; backward ``∂L/∂s = ∂L/∂W_eff ⊙ W + 2λ s`` (straight through the
    step function, plus the L2 penalty's gradient, so the loop needs no extra loss term)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, weight: torch.Tensor, threshold: float, l2: float):
        ctx.save_for_backward(scores, weight)
        ctx.l2 = l2
        return weight * (scores > threshold).to(weight.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        scores, weight = ctx.saved_tensors
        g = grad * weight
        if ctx.l2:
            g = g + (2.0 * ctx.l2) * scores
        return g, None, None, None


class GemMinerVariant(SupermaskVariant):
    """Gem-Miner's scores in [0, 1] and mask ``1[s > 0.5]`` (see the module docstring).

    State: ``l2`` (λ of the penalty λ‖s‖², added to the scores' gradient in every training forward) and
    ``threshold`` (0.5); ``run_learned`` sets ``l2`` from the method's knob. The frozen weights are the
    layer's attached mask (``weight_mask``), which the training loop saves with every checkpoint.
    """

    name = "gem_miner"

    def __init__(self, *, rescale: bool = False, generator: torch.Generator | None = None) -> None:
        super().__init__(rescale=rescale, generator=generator)
        self.l2 = 0.0
        self.threshold = 0.5

    def from_uniform(self, u: torch.Tensor, bound: float, *, init_logit: float = 0.0) -> torch.Tensor:
        return u  # the authors' score_init=unif: U[0, 1], half the weights start above the threshold

    @staticmethod
    def _active(layer: SupermaskLayer) -> torch.Tensor | None:
        return None if layer.weight_mask is None else layer.mask_float()

    def weight(self, ctrl: SupermaskController, layer: SupermaskLayer) -> torch.Tensor:
        s = layer.scores
        w: torch.Tensor = layer.weight
        active = self._active(layer)
        if active is not None:  # frozen weights are zero already (set_mask); explicit for any other path
            w = w * active
        if layer.training and torch.is_grad_enabled():
            return _GemMinerFn.apply(s, w, self.threshold, self.l2)
        return w * (s.detach() > self.threshold).to(w.dtype)

    @torch.no_grad()
    def keep_scores(self, ctrl: SupermaskController) -> dict[str, torch.Tensor]:
        """Clamped scores; a frozen weight ranks below every live one (−1), however its score ties."""
        out = {}
        for n, m in zip(ctrl.names, ctrl.layers):
            k = m.scores.detach().clamp(0.0, 1.0)
            if m.weight_mask is not None:
                k = torch.where(m.weight_mask, k, torch.full_like(k, -1.0))
            out[n] = k
        return out

    @torch.no_grad()
    def current_mask(self, ctrl: SupermaskController) -> Mask:
        """``s > 0.5`` among the weights not frozen: what the forward uses."""
        out = {}
        for n, m in zip(ctrl.names, ctrl.layers):
            keep = m.scores.detach() > self.threshold
            if m.weight_mask is not None:
                keep = keep & m.weight_mask
            out[n] = keep
        return Mask(out)

    @torch.no_grad()
    def project(self, ctrl: SupermaskController) -> None:
        """Scores back into [0, 1]; a frozen weight's score to exactly 0 (it never comes back)."""
        for m in ctrl.layers:
            m.scores.clamp_(0.0, 1.0)
            if m.weight_mask is not None:
                m.scores.mul_(m.mask_float())


# the variants by name (``to_supermask(kind=...)``): a new one is a class and a line here
SUPERMASK_VARIANTS: dict[str, type[SupermaskVariant]] = {
    EdgePopupVariant.name: EdgePopupVariant,
    BernoulliVariant.name: BernoulliVariant,
    GemMinerVariant.name: GemMinerVariant,
}
SUPERMASK_KINDS = tuple(SUPERMASK_VARIANTS)


class SupermaskController:
    """Shared by a model's supermask layers: caches and selects; its :class:`SupermaskVariant` owns the
    rule (scores, effective weight, keep-scores, mask). The top-k selection (kernels, the per-forward cache,
    the fused Linear) lives here for the variants that select by |score|."""

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
        pattern: str = "unstructured",
        allow_dense_layers: bool = False,
        min_layer_density: float = 0.0,
    ) -> None:
        # to_supermask swaps the layers' classes to SupermaskLinear/Conv2d right after building this
        self.layers = cast("list[SupermaskLayer]", [m for _, m in layers])
        self.names = [param_name(n) for n, _ in layers]
        if kind not in SUPERMASK_VARIANTS:
            raise ConfigError(
                f"unknown supermask kind '{kind}' (choose from: {', '.join(SUPERMASK_VARIANTS)})"
            )
        self.kind = kind
        self.variant = SUPERMASK_VARIANTS[kind](rescale=rescale, generator=generator)
        self.kernel = kernel
        self.density = density
        self.scope = scope
        self.distribution = distribution
        self.generator = generator
        shapes = {n: tuple(m.weight.shape) for n, m in zip(self.names, self.layers)}
        self.groups, self.ks = topk_counts(shapes, density, scope=scope, distribution=distribution)
        # under a pattern the top-k is core.select's (see the module docstring); its refusals come now
        self.pattern = parse_pattern(pattern)
        self.allow_dense_layers = allow_dense_layers
        self.min_layer_density = min_layer_density
        if self.pattern.structured:
            check_selection(
                shapes,
                density,
                scope=scope,
                distribution=distribution,
                min_layer_density=min_layer_density,
                pattern=self.pattern,
                allow_dense_layers=allow_dense_layers,
            )
        self._pattern_cache: list[torch.Tensor] | None = None
        self._pattern_key: Any = None
        for i, m in enumerate(self.layers):
            m._supermask_index = i
        self._selector: TopKSelector | None = None
        self._selector_kernel = ""
        self._selector_key: Any = None
        self._cache: list[torch.Tensor] | None = None
        self._cache_key: Any = None
        self._consumed: list[bool] = []

    # the Bernoulli variant's state, read and set here by callers that hold the controller
    @property
    def train_mask(self) -> str:
        return cast(str, getattr(self.variant, "train_mask", ""))

    @train_mask.setter
    def train_mask(self, value: str) -> None:
        self.variant.train_mask = value  # type: ignore[attr-defined]

    @property
    def eval_mask(self) -> str:
        return cast(str, getattr(self.variant, "eval_mask", ""))

    @eval_mask.setter
    def eval_mask(self, value: str) -> None:
        self.variant.eval_mask = value  # type: ignore[attr-defined]

    @property
    def temperature(self) -> float:
        return cast(float, getattr(self.variant, "temperature", 1.0))

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.variant.temperature = value  # type: ignore[attr-defined]

    @property
    def rescale(self) -> bool:
        return self.variant.rescale

    # the selector lives on the scores' device and is rebuilt (and its kernel re-resolved) if they move
    @property
    def selector(self) -> TopKSelector:
        s0 = self.layers[0].scores
        key = (s0.device, s0.dtype)
        if self._selector is None or self._selector_key != key:
            shapes = [tuple(m.weight.shape) for m in self.layers]
            kernel = resolve_topk(self.kernel, s0.device, s0.dtype)
            self._selector = kernel.selector(shapes, self.groups, self.ks, device=s0.device, dtype=s0.dtype)  # type: ignore[misc]
            self._selector_kernel = kernel.name
            self._selector_key = key
        return self._selector

    @property
    def backend(self) -> str:
        """What actually runs: the resolved top-k kernel's name ('compiled', 'torch', 'reference', ...) or
        the variant's own ('bernoulli')."""
        return self.variant.backend(self)

    def topk_backend(self) -> str:
        if self.pattern.structured:
            return "pattern"
        if self.kernel == _REFERENCE.name:
            return _REFERENCE.name
        self.selector  # noqa: B018  (resolves the kernel for the scores' device and dtype)
        return self._selector_kernel

    def weights(self) -> list[torch.Tensor]:
        return [m.weight.detach() for m in self.layers]

    def scores(self) -> list[nn.Parameter]:
        return [m.scores for m in self.layers]

    def _fused(self) -> Any:
        """The selector if it builds masks inside its own per-layer kernels (``fused = True``), else None."""
        if self.kernel == _REFERENCE.name or self.pattern.structured:
            return None
        sel = self.selector
        return sel if getattr(sel, "fused", False) else None

    def linear(self, layer: SupermaskLinear, x: torch.Tensor) -> torch.Tensor:
        """A supermask Linear's output, by the variant's rule."""
        return self.variant.linear(self, layer, x)

    def weight(self, layer: SupermaskLayer) -> torch.Tensor:
        """A layer's effective weight, by the variant's rule."""
        return self.variant.weight(self, layer)

    def topk_linear(self, layer: SupermaskLinear, x: torch.Tensor) -> torch.Tensor:
        """The top-k selection's Linear: the fused kernel where the selector has one (``W ⊙ M`` never
        formed), else ``F.linear`` on :meth:`topk_weight`."""
        sel = self._fused()
        if sel is not None:
            return sel.linear(layer._supermask_index, x, layer.weight, self.scores(), layer.bias)
        return F.linear(x, self.topk_weight(layer), layer.bias)

    def topk_weight(self, layer: SupermaskLayer) -> torch.Tensor:
        """``W ⊙ topk(|s|)`` with the straight-through gradient: the reference per layer, a fused kernel
        per layer, or every layer at once per forward (cached until the scores change)."""
        i = layer._supermask_index
        if self.pattern.structured:  # core.select's mask under the pattern, straight through to |s|
            return layer.weight * _StraightThroughMask.apply(layer.scores.abs(), self.pattern_masks()[i])
        if self.kernel == _REFERENCE.name:  # the oracle: per layer, through autograd, nothing cached
            return self._reference(i)
        fused = self._fused()
        if fused is not None:  # per layer, through the kernel's own autograd Function
            return fused.weight(i, layer.weight, self.scores())
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

    @torch.no_grad()
    def pattern_selection(self) -> Mask:
        """``core.select`` of ``|s|`` under the pattern, with the run's density, scope, distribution, floor
        and dense layers: the one rule the forward and the recorded Mask share."""
        scores = {n: m.scores.detach().abs() for n, m in zip(self.names, self.layers)}
        return select(
            scores,
            self.density,
            scope=self.scope,
            distribution=self.distribution,
            min_layer_density=self.min_layer_density,
            pattern=self.pattern,
            allow_dense_layers=self.allow_dense_layers,
        )

    def pattern_masks(self) -> list[torch.Tensor]:
        """Every layer's mask under the pattern, recomputed only when the scores changed (an optimizer
        step, a load): one selection per training step, shared by the layers' forwards."""
        scores = self.scores()
        key = (tuple(s._version for s in scores), tuple(s.data_ptr() for s in scores))
        if self._pattern_cache is None or key != self._pattern_key:
            mask = self.pattern_selection()
            self._pattern_cache = [mask[n] for n in self.names]
            self._pattern_key = key
        return self._pattern_cache

    def _reference(self, i: int) -> torch.Tensor:
        layer = self.layers[i]
        if self.scope == "global":
            all_abs = torch.cat([m.scores.abs().reshape(-1) for m in self.layers])
            mask = straight_through_topk(all_abs, self.ks[0])
            off = sum(m.weight.numel() for m in self.layers[:i])
            sub = mask[off : off + layer.weight.numel()].view_as(layer.weight)
            return layer.weight * sub
        return layer.weight * straight_through_topk(layer.scores.abs(), self.ks[i])

    # -- masks as the library knows them ------------------------------------------------------------
    def keep_scores(self) -> dict[str, torch.Tensor]:
        return self.variant.keep_scores(self)

    def current_mask(self) -> Mask:
        """The mask the forward uses now (edge-popup: exact top-k by the reference rule; Bernoulli:
        sigmoid(s) > 0.5, the mode of the sampled mask; Gem-Miner: s > 0.5 among the weights not frozen)."""
        return self.variant.current_mask(self)

    @torch.no_grad()
    def topk_mask(self) -> Mask:
        """The exact top-k of |s| per group, by the reference rule (a stable sort, lower index on ties);
        under a pattern, :meth:`pattern_selection`."""
        if self.pattern.structured:
            return self.pattern_selection()
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
    probability; 0 → 0.5): each variant's :meth:`SupermaskVariant.init_scores`.
    """
    if kind not in SUPERMASK_VARIANTS:
        raise ConfigError(f"unknown supermask kind '{kind}' (choose from: {', '.join(SUPERMASK_VARIANTS)})")
    variant = SUPERMASK_VARIANTS[kind]()
    out = []
    for _, m in model_layers:
        w = m.weight
        bound = scale / math.sqrt(_fan_in(w))
        u = torch.rand(w.shape, generator=generator, dtype=torch.float32).to(device=w.device, dtype=w.dtype)
        out.append(variant.from_uniform(u, bound, init_logit=init_logit))
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
    pattern: str = "unstructured",
    allow_dense_layers: bool = False,
    min_layer_density: float = 0.0,
) -> SupermaskController:
    """Put ``model`` in supermask mode in place: frozen parameters, a ``scores`` Parameter per masked layer.

    ``density`` is the fraction of weights KEPT (edge-popup's k). Layers must carry no mask. Undo with
    :func:`strip_supermask`. ``pattern`` (with ``allow_dense_layers`` and ``min_layer_density``, as
    ``core.select`` reads them): edge-popup's top-k under the pattern (see the module docstring).
    """
    if kind not in SUPERMASK_KINDS:
        raise ConfigError(f"unknown supermask kind '{kind}' (choose from: {', '.join(SUPERMASK_KINDS)})")
    if kernel != FAST and kernel not in {k.name for k in kernels(TOPK)}:
        names = ", ".join([FAST, *(k.name for k in kernels(TOPK))])
        raise ConfigError(f"unknown supermask kernel '{kernel}' (choose from: {names})")
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
        pattern=pattern,
        allow_dense_layers=allow_dense_layers,
        min_layer_density=min_layer_density,
    )
    for (name, m), s in zip(layers, scores):
        if tuple(s.shape) != tuple(m.weight.shape):
            raise ConfigError(
                f"scores for '{name}' have shape {list(s.shape)}, weight has {list(m.weight.shape)}"
            )
        m.__class__ = _TO_SM[type(m)]
        m.scores = nn.Parameter(s.detach().clone().to(device=m.weight.device, dtype=m.weight.dtype))  # type: ignore[attr-defined]
        m._supermask = ctrl  # type: ignore[attr-defined]
    # nn.Module's stubbed __setattr__ takes only Tensor | Module; a plain attribute is fine at runtime
    model._supermask_frozen = frozen  # type: ignore[assignment]
    model._supermask_controller = ctrl  # type: ignore[assignment]
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
    """Higher = keep: |scores| (edge-popup), sigmoid(scores) (Bernoulli) or the clamped scores with frozen
    weights at −1 (Gem-Miner); ready for ``core.select``."""
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
        m.__class__ = _FROM_SM[type(m)]  # type: ignore[assignment]  # back to the masked base class
    frozen = getattr(model, "_supermask_frozen", {})
    for n, p in model.named_parameters():
        p.requires_grad_(frozen.get(n, True))
    del model._supermask_frozen
    del model._supermask_controller
    return out
