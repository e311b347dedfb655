"""Optimizers and learning-rate schedules.

The schedule is a pure function of the iteration (warm-up, then constant/step/cosine), set on the
optimizer before each step: nothing to checkpoint beyond the iteration, so resumed runs are bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, cast

import torch

from ..core.errors import ConfigError
from ..core.hparams import OPTIMIZERS, SCHEDULES, TrainingHparams, to_iterations

__all__ = ["OPTIMIZERS", "SCHEDULES", "NO_DECAY", "Optimizer", "make_optimizer", "LRSchedule"]

# a parameter with this attribute set True is left out of weight decay (a soft mask's scores)
NO_DECAY = "_ticketsearch_no_decay"


class Optimizer:
    """SGD / Adam / AdamW over a flat list of parameters, with fused ``_foreach`` updates.

    Why not ``torch.optim``: constructing one imports ``torch._dynamo`` (≈1-1.5 s of start-up on a 2-core
    machine, a fifth of a whole 2-epoch MNIST run), and its CPU path loops tensor by tensor. The update
    rules are PyTorch's own (same formulas and defaults; ``tests/test_optim.py`` checks them against
    ``torch.optim``), and every update of a weight whose gradient and value are zero is exactly zero, which
    keeps pruned weights at 0. The learning rate lives in ``param_groups[0]["lr"]`` like torch's.
    """

    def __init__(
        self,
        params: list[torch.nn.Parameter],
        kind: str,
        *,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        no_decay: Iterable[torch.nn.Parameter] = (),
    ) -> None:
        self.params = params
        # parameters weight decay must not touch (a soft mask's scores: the penalty on them is the method's)
        skip = {id(p) for p in no_decay}
        self._decayed: list[int] | None = (
            [i for i, p in enumerate(params) if id(p) not in skip] if skip else None
        )
        self.kind = kind
        self.param_groups: list[dict[str, Any]] = [{"lr": lr, "params": params}]
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self.betas, self.eps = betas, eps
        self.steps = 0
        self.buffers: dict[str, list[torch.Tensor]] = {}
        self.grad_masks: list[torch.Tensor | None] = [None] * len(params)

    def _decay_subset(self, *lists: list[torch.Tensor]) -> tuple[list[torch.Tensor], ...]:
        """The entries of ``lists`` (aligned with :attr:`params`) that weight decay applies to."""
        if self._decayed is None:
            return lists
        return tuple([xs[i] for i in self._decayed] for xs in lists)

    def set_grad_masks(self, masks: dict[int, torch.Tensor]) -> None:
        """Masks (0/1, the parameter's dtype) keyed by ``id(param)``: the update uses ``grad ⊙ mask``.

        Fused into the update instead of a separate pass over the gradients: for SGD the multiply rides
        along the ``addcmul`` that applies the step, which is what keeps a fixed mask nearly free.
        """
        self.grad_masks = [masks.get(id(p)) for p in self.params]

    @torch.no_grad()
    def mask_state(self, masks: dict[int, torch.Tensor]) -> None:
        """Zero the state (momentum, Adam's moments) of entries a mask change pruned; ``masks`` (0/1, the
        parameter's dtype) keyed by ``id(param)``. A pruned weight's buffer would otherwise keep moving it,
        and a weight regrown later would start from stale moments instead of fresh (zero) state.
        """
        idx = [(i, masks[id(p)]) for i, p in enumerate(self.params) if id(p) in masks]
        for bufs in self.buffers.values():
            if idx:
                torch._foreach_mul_([bufs[i] for i, _ in idx], [m for _, m in idx])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        ps = [p for p in self.params if p.grad is not None]
        if len(ps) != len(self.params):  # rare (unused parameters): give them zero gradients
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            ps = self.params
        grads = cast(list[torch.Tensor], [p.grad for p in ps])  # every p.grad is set above
        lr = self.param_groups[0]["lr"]
        self.steps += 1
        masked = [(i, m) for i, m in enumerate(self.grad_masks) if m is not None]
        if self.kind == "sgd" and not self.nesterov and masked:
            self._sgd_masked(ps, grads, lr)
            return
        if masked:
            torch._foreach_mul_([grads[i] for i, _ in masked], [m for _, m in masked])
        if self.kind == "sgd":
            self._sgd(ps, grads, lr)
        else:
            self._adam(ps, grads, lr)

    def _sgd_masked(self, ps, grads, lr: float) -> None:
        """SGD (momentum, L2 weight decay) with ``grad ⊙ mask`` folded into the update's ``addcmul``.

        Same rule as :meth:`_sgd`: d = g⊙m + wd·p; buf = μ·buf + d; p -= lr·buf (or lr·d without momentum).
        Unmasked parameters get the mask 1 implicitly (a plain ``add``).
        """
        ms = self.grad_masks
        mi = [i for i, m in enumerate(ms) if m is not None]
        ui = [i for i, m in enumerate(ms) if m is None]
        pm, gm, mm = [ps[i] for i in mi], [grads[i] for i in mi], [m for m in ms if m is not None]
        pu, gu = [ps[i] for i in ui], [grads[i] for i in ui]
        wd = self.weight_decay
        if not self.momentum:
            if wd:
                torch._foreach_mul_(self._decay_subset(ps)[0], 1.0 - lr * wd)
            torch._foreach_addcmul_(pm, gm, mm, value=-lr)
            if pu:
                torch._foreach_add_(pu, gu, alpha=-lr)
            return
        if "momentum" not in self.buffers:
            buf = [torch.zeros_like(p) for p in ps]
            self.buffers["momentum"] = buf
        else:
            buf = self.buffers["momentum"]
            torch._foreach_mul_(buf, self.momentum)
        torch._foreach_addcmul_([buf[i] for i in mi], gm, mm)
        if ui:
            torch._foreach_add_([buf[i] for i in ui], gu)
        if wd:
            torch._foreach_add_(*self._decay_subset(buf, ps), alpha=wd)
        torch._foreach_add_(ps, buf, alpha=-lr)

    def _with_decay(self, grads: list[torch.Tensor], ps: list[torch.Tensor]) -> list[torch.Tensor]:
        """``grads + wd·p`` (L2 decay through the gradient) for the parameters decay applies to."""
        if self._decayed is None:
            return list(torch._foreach_add(grads, ps, alpha=self.weight_decay))
        out = list(grads)
        for i in self._decayed:
            out[i] = grads[i] + self.weight_decay * ps[i]
        return out

    def _sgd(self, ps, grads, lr: float) -> None:
        if self.weight_decay:
            grads = self._with_decay(grads, ps)
        if self.momentum:
            if "momentum" not in self.buffers:
                self.buffers["momentum"] = [g.detach().clone() for g in grads]
            else:
                torch._foreach_mul_(self.buffers["momentum"], self.momentum)
                torch._foreach_add_(self.buffers["momentum"], grads)
            buf = self.buffers["momentum"]
            grads = torch._foreach_add(grads, buf, alpha=self.momentum) if self.nesterov else buf
        torch._foreach_add_(ps, grads, alpha=-lr)

    def _adam(self, ps, grads, lr: float) -> None:
        b1, b2 = self.betas
        if self.kind == "adamw" and self.weight_decay:
            torch._foreach_mul_(self._decay_subset(ps)[0], 1.0 - lr * self.weight_decay)
        elif self.weight_decay:
            grads = self._with_decay(grads, ps)
        if "exp_avg" not in self.buffers:
            self.buffers["exp_avg"] = [torch.zeros_like(p) for p in ps]
            self.buffers["exp_avg_sq"] = [torch.zeros_like(p) for p in ps]
        m, v = self.buffers["exp_avg"], self.buffers["exp_avg_sq"]
        torch._foreach_lerp_(m, grads, 1.0 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - b2)
        bc1 = 1.0 - b1**self.steps
        bc2_sqrt = math.sqrt(1.0 - b2**self.steps)
        # sqrt(max(v, tiny)) instead of sqrt(v): CPU sqrt takes a slow path on zeros (6× slower), and the
        # second moment of every pruned weight is exactly 0. The result is unchanged: sqrt(tiny)/bc2 < 4e-18
        # is below half an ulp of eps (1e-8), so denom = sqrt(v)/bc2 + eps rounds to the same float32.
        denom = torch._foreach_maximum(v, torch.finfo(v[0].dtype).tiny)
        torch._foreach_sqrt_(denom)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(ps, m, denom, value=-lr / bc1)

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "steps": self.steps,
            "lr": self.param_groups[0]["lr"],
            "buffers": {k: [t.detach().clone() for t in v] for k, v in self.buffers.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.kind:
            raise ConfigError(
                f"checkpoint was written by optimizer '{state.get('kind')}', this run uses '{self.kind}'"
            )
        self.steps = int(state["steps"])
        self.param_groups[0]["lr"] = state["lr"]
        self.buffers = {
            k: [t.to(device=p.device, dtype=p.dtype).clone() for t, p in zip(v, self.params)]
            for k, v in state["buffers"].items()
        }


def make_optimizer(params: Iterable[torch.nn.Parameter], hp: TrainingHparams) -> Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: the model has no parameters that require gradients")
    if hp.lr <= 0 or not math.isfinite(hp.lr):
        raise ConfigError(f"lr must be a positive number, got {hp.lr}")
    if hp.weight_decay < 0:
        raise ConfigError(f"weight_decay must be ≥ 0, got {hp.weight_decay}")
    if hp.momentum < 0 or hp.momentum >= 1:
        raise ConfigError(f"momentum must be in [0, 1), got {hp.momentum}")
    if hp.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer '{hp.optimizer}' (choose from: {', '.join(OPTIMIZERS)})")
    return Optimizer(
        params,
        hp.optimizer,
        lr=hp.lr,
        momentum=hp.momentum if hp.optimizer == "sgd" else 0.0,
        nesterov=hp.nesterov and hp.momentum > 0,
        weight_decay=hp.weight_decay,
        no_decay=[p for p in params if getattr(p, NO_DECAY, False)],
    )


class LRSchedule:
    """lr(iteration) = base × warm-up factor × schedule factor."""

    def __init__(self, hp: TrainingHparams, steps_per_epoch: int, total: int) -> None:
        if hp.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule '{hp.schedule}' (choose from: {', '.join(SCHEDULES)})")
        self.base = hp.lr
        self.kind = hp.schedule
        self.total = max(1, total)
        self.warmup = to_iterations(hp.warmup, steps_per_epoch, name="warmup")
        self.gamma = hp.gamma
        self.milestones = sorted(
            to_iterations(m, steps_per_epoch, name="milestone") for m in hp.milestones.split(",") if m.strip()
        )

    def __call__(self, it: int) -> float:
        factor = 1.0
        if self.warmup > 0 and it < self.warmup:
            factor = (it + 1) / self.warmup
        if self.kind == "step":
            factor *= self.gamma ** sum(1 for m in self.milestones if it >= m)
        elif self.kind == "cosine":
            start = self.warmup
            span = max(1, self.total - start)
            t = min(max(it - start, 0), span) / span
            factor *= 0.5 * (1.0 + math.cos(math.pi * t))
        return self.base * factor
