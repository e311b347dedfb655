"""Optimizers and learning-rate schedules.

The schedule is a pure function of the iteration (warm-up, then constant/step/cosine), set on the
optimizer before each step: nothing to checkpoint beyond the iteration, so resumed runs are bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ..core.errors import ConfigError
from ..core.hparams import TrainingHparams, to_iterations

__all__ = ["OPTIMIZERS", "SCHEDULES", "Optimizer", "make_optimizer", "LRSchedule"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")


class Optimizer:
    """SGD / Adam / AdamW over a flat list of parameters, with fused ``_foreach`` updates.

    Why not ``torch.optim``: constructing one imports ``torch._dynamo`` (≈1-1.5 s of start-up on a 2-core
    machine, a fifth of a whole 2-epoch MNIST run), and its CPU path loops tensor by tensor. The update
    rules are PyTorch's own (same formulas and defaults; ``tests/test_optim.py`` checks them against
    ``torch.optim``), and every update of a weight whose gradient and value are zero is exactly zero, which
    keeps pruned weights at 0. The learning rate lives in ``param_groups[0]["lr"]`` like torch's.
    """

    def __init__(self, params: list[torch.nn.Parameter], kind: str, *, lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params = params
        self.kind = kind
        self.param_groups = [{"lr": lr, "params": params}]
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self.betas, self.eps = betas, eps
        self.steps = 0
        self.buffers: dict[str, list[torch.Tensor]] = {}

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
        grads = [p.grad for p in ps]
        lr = self.param_groups[0]["lr"]
        self.steps += 1
        if self.kind == "sgd":
            self._sgd(ps, grads, lr)
        else:
            self._adam(ps, grads, lr)

    def _sgd(self, ps, grads, lr: float) -> None:
        if self.weight_decay:
            grads = torch._foreach_add(grads, ps, alpha=self.weight_decay)
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
            torch._foreach_mul_(ps, 1.0 - lr * self.weight_decay)
        elif self.weight_decay:
            grads = torch._foreach_add(grads, ps, alpha=self.weight_decay)
        if "exp_avg" not in self.buffers:
            self.buffers["exp_avg"] = [torch.zeros_like(p) for p in ps]
            self.buffers["exp_avg_sq"] = [torch.zeros_like(p) for p in ps]
        m, v = self.buffers["exp_avg"], self.buffers["exp_avg_sq"]
        torch._foreach_lerp_(m, grads, 1.0 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - b2)
        bc1 = 1.0 - b1**self.steps
        bc2_sqrt = math.sqrt(1.0 - b2**self.steps)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(ps, m, denom, value=-lr / bc1)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "steps": self.steps, "lr": self.param_groups[0]["lr"],
                "buffers": {k: [t.detach().clone() for t in v] for k, v in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.kind:
            raise ConfigError(f"checkpoint was written by optimizer '{state.get('kind')}', this run uses '{self.kind}'")
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
        params, hp.optimizer, lr=hp.lr, momentum=hp.momentum if hp.optimizer == "sgd" else 0.0,
        nesterov=hp.nesterov and hp.momentum > 0, weight_decay=hp.weight_decay,
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
