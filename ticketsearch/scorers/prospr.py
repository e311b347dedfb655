"""ProsPr: the saliency of each weight's mask through a few unrolled SGD steps (meta-gradients)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from ..core.errors import ConfigError
from ..core.hparams import RunHparams
from ..sparse import masked_layers, param_name
from .base import (
    Batch,
    Scorer,
    ScoringContext,
    method_arg,
    note_cost,
    register_scorer,
    require_batches,
    scoring_copy,
)

__all__ = ["ProsPr", "meta_gradients"]


def _loss(model: nn.Module, params: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
    x, y = batch
    dtype = next(iter(params.values())).dtype
    device = next(iter(params.values())).device
    x, y = x.to(device), y.to(device)
    out = functional_call(model, params, (x.to(dtype) if x.is_floating_point() else x,))
    return F.cross_entropy(out, y)


def meta_gradients(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    steps: int,
    lr: float,
    momentum: float = 0.0,
    first_order: bool = False,
) -> dict[str, torch.Tensor]:
    """∂L(w_K; D_K)/∂c at c = 1, for a gate c on every prunable weight.

    ``model`` is a scoring copy (its masks, if any, are read here and kept fixed). w_0 = c ⊙ m ⊙ w_init;
    step k (0 ≤ k < K) is SGD on the mean cross-entropy of ``batches[k % n]`` applied to *every* parameter
    (biases and BatchNorm too, as the authors' ``functional_sgd``), with ``momentum`` (their buffer: the
    first gradient, then ``momentum·buf + g``); pruned weights (m = 0) stay at zero. The meta-loss is that
    of w_K on ``batches[K % n]``. ``first_order``: the inner gradients are constants (no graph through them),
    so the result is ∂L(w_K)/∂w_K ⊙ m ⊙ w_init. The full version keeps K double-backward graphs alive:
    memory grows with K.
    """
    layers = {param_name(n): layer for n, layer in masked_layers(model)}
    masks = {
        n: (layer.weight_mask.to(layer.weight.dtype) if layer.weight_mask is not None else None)
        for n, layer in layers.items()
    }
    for layer in layers.values():
        layer.set_mask(None)  # plain forward through the weights functional_call hands it
    names = [n for n, p in model.named_parameters() if p.requires_grad or n in layers]
    base = dict(model.named_parameters())
    gates = {n: torch.ones_like(base[n], requires_grad=True) for n in layers}
    fast: dict[str, torch.Tensor] = {}
    for n in names:
        p = base[n].detach()
        if n in layers:
            m = masks[n]
            fast[n] = p * gates[n] if m is None else p * m * gates[n]
        else:
            fast[n] = p.clone().requires_grad_(True)
    bufs: dict[str, torch.Tensor] = {}
    for k in range(steps):
        if first_order:  # gradients at w_k as constants: no graph through the inner steps
            leaf = {n: t.detach().requires_grad_(True) for n, t in fast.items()}
            loss = _loss(model, leaf, batches[k % len(batches)])
            grads = torch.autograd.grad(loss, list(leaf.values()), allow_unused=True)
        else:
            loss = _loss(model, fast, batches[k % len(batches)])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True, allow_unused=True)
        note_cost("inner_steps")
        new: dict[str, torch.Tensor] = {}
        for (n, t), g in zip(fast.items(), grads):
            if g is None:  # a parameter the loss does not reach: it does not move
                g = torch.zeros_like(t)
            m = masks.get(n)
            if m is not None:
                g = g * m  # a pruned weight stays pruned through the inner steps
            if momentum:
                g = bufs[n] * momentum + g if n in bufs else g
                bufs[n] = g
            new[n] = t - lr * g
        fast = new
    meta = _loss(model, fast, batches[steps % len(batches)])
    out = torch.autograd.grad(meta, list(gates.values()), allow_unused=True)
    return {n: (g.detach() if g is not None else torch.zeros_like(gates[n])) for n, g in zip(gates, out)}


@register_scorer(
    "prospr",
    description="ProsPr: |∂L/∂mask| through 3 unrolled SGD steps, meta-gradients (Alizadeh et al., ICLR 2022)",
)
class ProsPr(Scorer):
    """Prospect Pruning: Alizadeh, Tailor, Zintgraf, van Amersfoort, Farquhar, Lane & Gal, "Prospect
    Pruning: Finding Trainable Weights at Initialization using Meta-Gradients", ICLR 2022 (code:
    mil-ad/prospr, ``prospr/prospr.py``).

    SNIP asks what removing a weight does to the loss *now*; the network will be trained, so ProsPr asks
    what it does to the loss after training has started. Masks c = 1 multiply the initial weights, K SGD
    steps (``steps``, default 3) of the masked network are unrolled keeping the graph, and the score is
    |∂L(w_K)/∂c| on the next batch (see :func:`meta_gradients`): one-shot, one global top-k (the authors'
    ``keep_mask_from_scores`` over all layers concatenated).

    Defaults are the authors' CLI defaults (``cli.py``): ``steps=3``, inner ``lr=0.1``, ``momentum=0``, full
    second-order meta-gradients (``first_order=true``: the first-order approximation, their
    ``--meta-grads-mode first_order``). Batches: step k uses ``batches[k mod n]`` and the meta-loss
    ``batches[K mod n]``, n = ``--score-batches``. With the default n = 1 every step and the meta-loss use
    one batch, as the authors' CLI does (``--new-data-in-inner`` defaults to False); ``--score-batches
    4`` gives every step and the meta-loss a batch of their own (the paper's Algorithm 1, their
    ``new_data_in_inner=True``). The loss is the mean cross-entropy, in train mode on a copy (their
    ``net.train()``). ``steps=0`` is SNIP.

    Knobs (``--arg``): ``steps``, ``lr``, ``momentum``, ``first_order``.
    """

    citation = "Alizadeh et al., ICLR 2022"
    default_scope = "global"  # keep_mask_from_scores(torch.cat(all scores)) in their code
    knobs = {"steps": 3, "lr": 0.1, "momentum": 0.0, "first_order": False}

    @classmethod
    def check_hparams(cls, hparams: RunHparams) -> None:
        """Knob values, checked before any file exists."""
        steps = method_arg(hparams, "steps", 3, int)
        if steps < 0:
            raise ConfigError(f"prospr steps must be ≥ 0 (inner SGD steps; 0 = SNIP), got {steps}")
        lr = method_arg(hparams, "lr", 0.1, float)
        if not (lr > 0 and math.isfinite(lr)):
            raise ConfigError(f"prospr lr must be a positive number (the inner SGD steps' lr), got {lr}")
        momentum = method_arg(hparams, "momentum", 0.0, float)
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"prospr momentum must be in [0, 1), got {momentum}")
        method_arg(hparams, "first_order", False, bool)

    @classmethod
    def search_space(cls, trial: Any, hparams: RunHparams) -> dict[str, Any]:
        """How far ahead to look (``steps``, 1-10 around the paper's 3) and the inner lr (trial parameter
        ``inner_lr``: ``lr`` is the ticket's training lr in the same trial)."""
        return {
            "steps": int(trial.suggest_int("steps", 1, 10)),
            "lr": float(trial.suggest_float("inner_lr", 1e-3, 1.0, log=True)),
        }

    def score(
        self,
        model: nn.Module,
        batches: Sequence[Batch],
        *,
        hparams: RunHparams,
        context: ScoringContext | None = None,
    ) -> dict[str, torch.Tensor]:
        self.check_hparams(hparams)
        data = require_batches(batches, self.name or "prospr")
        work = scoring_copy(model, train=True)
        grads = meta_gradients(
            work,
            data,
            steps=method_arg(hparams, "steps", 3, int),
            lr=method_arg(hparams, "lr", 0.1, float),
            momentum=method_arg(hparams, "momentum", 0.0, float),
            first_order=method_arg(hparams, "first_order", False, bool),
        )
        return {n: g.abs() for n, g in grads.items()}
