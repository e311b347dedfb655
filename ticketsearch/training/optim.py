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

__all__ = ["OPTIMIZERS", "SCHEDULES", "make_optimizer", "LRSchedule"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")


def make_optimizer(params: Iterable[torch.nn.Parameter], hp: TrainingHparams) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: the model has no parameters that require gradients")
    if hp.lr <= 0 or not math.isfinite(hp.lr):
        raise ConfigError(f"lr must be a positive number, got {hp.lr}")
    if hp.weight_decay < 0:
        raise ConfigError(f"weight_decay must be ≥ 0, got {hp.weight_decay}")
    if hp.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, nesterov=hp.nesterov and hp.momentum > 0
        )
    if hp.optimizer == "adam":
        return torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
    if hp.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
    raise ConfigError(f"unknown optimizer '{hp.optimizer}' (choose from: {', '.join(OPTIMIZERS)})")


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
