"""Soft-masked layers: trained weights times a trained, temperature-sharpened sigmoid mask.

Continuous sparsification (Savarese et al. 2020, "Winning the Lottery with Continuous Sparsification";
lolemacs/continuous-sparsification) trains, for every prunable weight ``w``, a mask parameter ``s`` beside
it; the layer computes with

    w_eff = w ⊙ σ(β·s) / σ(s0)

where ``β`` (the temperature) is raised during training so σ(β·s) tends to the step 1[s > 0], and the
factor 1/σ(s0) makes a layer at its initial mask (s = s0 everywhere, β = 1) compute with ``w`` itself. The
objective adds λ·Σ σ(β·s)/σ(s0) over every soft-masked weight (the L1 norm of the mask, a relaxation of
L0). Its gradient is added inside the layer's backward (:class:`_SoftMaskFn`), exactly what autograd of
the extra loss term gives, so the training loop needs no extra term and the reported training loss is the
task loss alone.

:func:`attach_soft_masks` converts a model's masked layers in place (a mask parameter ``cs_scores`` per
layer, which the model's ``state_dict`` and so every checkpoint holds); :func:`strip_soft_masks` turns
them back into plain masked layers. The state the layers share (β, λ, s0) is one
:class:`SoftMaskController`, set by the method per step from the iteration alone, so a resumed run
computes the same.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import ConfigError, DivergenceError
from .layers import MaskedConv2d, MaskedLayer, MaskedLinear, masked_layers, param_name

__all__ = [
    "SoftMaskController",
    "SoftMaskedLinear",
    "SoftMaskedConv2d",
    "attach_soft_masks",
    "strip_soft_masks",
    "soft_mask_controller",
    "soft_scores",
]

SCORES = "cs_scores"  # the mask parameter's attribute (and state_dict key suffix)


class _SoftMaskFn(torch.autograd.Function):
    """w ⊙ σ(β s)·c with c = 1/σ(s0); backward adds λ·∂(Σ σ(β s)·c)/∂s, the L1 penalty's gradient."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, scores: torch.Tensor, beta: float, scale: float, l1: float):
        sig = torch.sigmoid(scores * beta)
        ctx.save_for_backward(weight, sig)
        ctx.beta, ctx.scale, ctx.l1 = beta, scale, l1
        return weight * (sig * scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        weight, sig = ctx.saved_tensors
        dm_ds = sig * (1.0 - sig) * (ctx.beta * ctx.scale)  # ∂(σ(β s)·c)/∂s
        g_w = grad * (sig * ctx.scale) if ctx.needs_input_grad[0] else None
        g_s = None
        if ctx.needs_input_grad[1]:
            g_s = grad * weight
            if ctx.l1:
                g_s = g_s + ctx.l1
            g_s = g_s * dm_ds
        return g_w, g_s, None, None, None


class SoftMaskController:
    """What every soft-masked layer of a model shares: ``beta`` (the temperature, set per step by the
    method), ``l1`` (λ), ``s0`` (the mask parameters' initial value, which fixes the scale 1/σ(s0)) and
    ``hard`` (evaluate with the step mask 1[s > 0] instead of σ(β s): the limit β → ∞)."""

    def __init__(self, *, s0: float, l1: float) -> None:
        if not math.isfinite(s0):
            raise ConfigError(f"the soft mask's initial value s0 must be finite, got {s0}")
        if not (l1 >= 0 and math.isfinite(l1)):
            raise ConfigError(f"the L1 penalty λ must be a finite number ≥ 0, got {l1}")
        self.s0, self.l1 = float(s0), float(l1)
        self.scale = 1.0 / (1.0 / (1.0 + math.exp(-self.s0)))
        self.beta = 1.0
        self.hard = False

    def weight(self, layer: MaskedLayer) -> torch.Tensor:
        s: torch.Tensor = getattr(layer, SCORES)
        if self.hard:
            return layer.weight * ((s > 0).to(layer.weight.dtype) * self.scale)
        l1 = self.l1 if torch.is_grad_enabled() and layer.training else 0.0  # type: ignore[attr-defined]
        return _SoftMaskFn.apply(layer.weight, s, self.beta, self.scale, l1)


class SoftMaskedLinear(MaskedLinear):
    """A MaskedLinear computing with ``weight ⊙ σ(β·cs_scores)/σ(s0)``."""

    cs_scores: nn.Parameter
    _soft: SoftMaskController

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._soft.weight(self), self.bias)


class SoftMaskedConv2d(MaskedConv2d):
    """A MaskedConv2d computing with ``weight ⊙ σ(β·cs_scores)/σ(s0)``."""

    cs_scores: nn.Parameter
    _soft: SoftMaskController

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self._soft.weight(self), self.bias)


_TO_SOFT: dict[type, type] = {MaskedLinear: SoftMaskedLinear, MaskedConv2d: SoftMaskedConv2d}
_FROM_SOFT = {v: k for k, v in _TO_SOFT.items()}


def attach_soft_masks(model: nn.Module, controller: SoftMaskController) -> SoftMaskController:
    """Give every masked layer of ``model`` a mask parameter initialised to ``controller.s0`` (in place).

    The layers must carry no hard mask yet (or an all-ones one): the soft mask is the only mask while it
    trains, and a weight a hard mask held at zero would get no gradient for its score.
    """
    for name, layer in masked_layers(model):
        if type(layer) not in _TO_SOFT:
            raise ConfigError(f"layer {name!r} ({type(layer).__name__}) cannot take a soft mask")
        m = layer.weight_mask
        if m is not None and not bool(m.all()):
            raise ConfigError(
                f"layer {name!r} already has weights pruned; a soft mask starts from all of them"
            )
        layer.set_mask(None)
        layer.register_parameter(  # type: ignore[attr-defined]  # MaskedLayer mixes into nn.Module
            SCORES, nn.Parameter(torch.full_like(layer.weight, controller.s0, requires_grad=True))
        )
        layer.__class__ = _TO_SOFT[type(layer)]
        layer._soft = controller  # type: ignore[attr-defined]
    if not any(True for _ in soft_layers(model)):
        raise ConfigError("the model has no prunable (masked) layers to put a soft mask on")
    return controller


def soft_layers(model: nn.Module) -> list[tuple[str, SoftMaskedLinear | SoftMaskedConv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (SoftMaskedLinear, SoftMaskedConv2d))]


def soft_mask_controller(model: nn.Module) -> SoftMaskController:
    for _, layer in soft_layers(model):
        return layer._soft
    raise ConfigError("the model has no soft-masked layers")


def soft_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    """The mask parameters by the name of the weight they mask (a Mask's keys), detached."""
    return {param_name(n): getattr(m, SCORES).detach() for n, m in soft_layers(model)}


def check_soft_scores_finite(model: nn.Module) -> None:
    bad = [n for n, s in soft_scores(model).items() if not bool(torch.isfinite(s).all())]
    if bad:
        raise DivergenceError(f"soft-mask scores became NaN/inf in {', '.join(bad)}; lower the lr or λ")


def strip_soft_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Turn the soft-masked layers back into plain masked layers (in place) and return their scores."""
    out = soft_scores(model)
    for _, layer in soft_layers(model):
        del layer._parameters[SCORES]
        del layer._soft
        layer.__class__ = _FROM_SOFT[type(layer)]
    return out
