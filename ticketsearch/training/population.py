"""Populations: K masked copies of one architecture trained in one batched pass.

Small networks (LeNet-300-100 at batch 60) leave a GPU idle: a step is a few dozen tiny kernel launches.
Stacking the K members' parameters along a new leading dimension and running the model once through
``torch.func.vmap(functional_call)`` turns every layer into one batched matmul (or grouped convolution) for
all K members, so K tickets (different masks, inits or batch orders) train for about the launches of one.

Each member computes exactly what its own run of :func:`ticketsearch.training.loop.train` computes (same
data, same ``seed``: same batches, same lr schedule, same optimizer): the members never interact, because

- the loss is the sum of the members' mean losses, so member ``i``'s slice of every gradient is its own;
- the optimizer (:mod:`.optim`) is elementwise, so one update of the stacked tensors is K separate updates;
- masks are the ``inplace`` rule, stacked: pruned weights start at zero and their gradients are masked;
- gradient clipping, the one cross-element rule, uses each member's own norm.

Results agree with separate runs to float32 rounding (batched matmuls sum in another order), which
``tests/test_population.py`` checks for losses and final weights. Not yet wired into IMP replicates or the
benchmark suite's seeds (``--population K``); :func:`train_population` is the building block for that.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import ConfigError, DivergenceError
from ..core.hparams import TrainingHparams, to_iterations
from ..sparse import masked_layers, param_name
from .optim import LRSchedule, make_optimizer

__all__ = ["Population", "PopulationResult", "PopulationTrainer", "train_population"]


class Population:
    """The stacked state of K members of one architecture, and their batched forward.

    Built from K models (:meth:`from_models`) that share an architecture; each may carry its own mask
    (``apply_mask``). ``params``/``buffers``: name → ``[K, ...]`` tensors; ``masks``: weight name →
    ``[K, ...]`` 0/1 float (all ones where a member has no mask).
    """

    def __init__(
        self,
        template: nn.Module,
        params: dict[str, torch.Tensor],
        buffers: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        trainable: set[str],
    ) -> None:
        self.template = template
        self.params = params
        self.buffers = buffers
        self.masks = masks
        self.trainable = trainable
        self.size = next(iter(params.values())).shape[0]

    @classmethod
    def from_models(cls, models: Sequence[nn.Module]) -> Population:
        if not models:
            raise ConfigError("a population needs at least one member")
        if any(getattr(m, "_supermask_controller", None) is not None for m in models):
            raise ConfigError("populations of supermasks are not supported yet (train them one by one)")
        names = [tuple(n for n, _ in m.named_parameters()) for m in models]
        shapes = [tuple(tuple(p.shape) for p in m.parameters()) for m in models]
        if len(set(names)) != 1 or len(set(shapes)) != 1:
            raise ConfigError(
                "population members must share one architecture (same parameter names and shapes)"
            )
        template = copy.deepcopy(models[0])
        for _, layer in masked_layers(template):
            layer.set_mask(None)  # the stacked masks below enforce each member's own
        member_params = [dict(m.named_parameters()) for m in models]
        trainable = {n for n, p in member_params[0].items() if p.requires_grad}
        params = {
            n: torch.stack([mp[n].detach() for mp in member_params]).requires_grad_(n in trainable)
            for n in member_params[0]
        }
        member_buffers = [dict(m.named_buffers()) for m in models]
        buffers = {n: torch.stack([mb[n].detach() for mb in member_buffers]) for n in member_buffers[0]}
        masks: dict[str, torch.Tensor] = {}
        layer_lists = [dict(masked_layers(m)) for m in models]
        for name in layer_lists[0]:
            per = []
            for layers in layer_lists:
                layer = layers[name]
                m = layer.weight_mask
                per.append(
                    torch.ones_like(layer.weight.detach()) if m is None else m.to(layer.weight.dtype).detach()
                )
            if any(layers[name].weight_mask is not None for layers in layer_lists):
                masks[param_name(name)] = torch.stack(per)
        with torch.no_grad():
            for n, m in masks.items():
                params[n].mul_(m)  # pruned weights are exactly zero, as apply_mask leaves them
        return cls(template, params, buffers, masks, trainable)

    def forward(self, x: torch.Tensor, *, shared_input: bool = False) -> torch.Tensor:
        """Outputs ``[K, B, ...]``: member ``i`` on ``x[i]`` (or every member on ``x`` if ``shared_input``)."""
        from torch.func import functional_call, vmap

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
            return functional_call(self.template, (p, b), (xb,))

        return vmap(one, in_dims=(0, 0, None if shared_input else 0))(self.params, self.buffers, x)

    def losses(self, x: torch.Tensor, y: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
        """Each member's mean cross-entropy on its own batch: ``[K]``."""
        out = self.forward(x)
        k, b = out.shape[0], out.shape[1]
        per = F.cross_entropy(
            out.reshape(k * b, -1), y.reshape(k * b), label_smoothing=label_smoothing, reduction="none"
        )
        return per.view(k, b).mean(1)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> dict[str, list[float]]:
        """Every member's loss and accuracy on the shared ``(x, y)``, in eval mode (as ``loop.evaluate``)."""
        was = self.template.training
        self.template.eval()
        k = self.size
        loss = torch.zeros(k, dtype=torch.float64, device=x.device)
        correct = torch.zeros(k, dtype=torch.float64, device=x.device)
        try:
            for i in range(0, x.shape[0], batch_size):
                out = self.forward(x[i : i + batch_size], shared_input=True)
                yb = y[i : i + batch_size]
                ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.repeat(k), reduction="none").view(
                    k, -1
                )
                loss += ce.sum(1).double()
                correct += (out.argmax(-1) == yb).sum(1).double()
        finally:
            self.template.train(was)
        n = max(int(x.shape[0]), 1)
        return {"loss": (loss / n).tolist(), "acc": (correct / n).tolist()}

    def state(self, i: int) -> dict[str, torch.Tensor]:
        """Member ``i``'s ``state_dict`` (parameters and buffers), detached copies."""
        out = {n: p[i].detach().clone() for n, p in self.params.items()}
        out.update({n: b[i].detach().clone() for n, b in self.buffers.items()})
        return out


@dataclass
class PopulationResult:
    losses: torch.Tensor  # [K, iterations]: each member's training loss at every step
    states: list[dict[str, torch.Tensor]]  # each member's final state_dict
    iterations: int
    wall_time: float
    final: dict[str, list[float]] = field(default_factory=dict)  # test loss/acc per member at the end


def _clip_per_member(grads: list[torch.Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` applied to each member's own gradients (slice ``i`` of every tensor)."""
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)  # [K]
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))


class PopulationTrainer:
    """One optimizer over a population's stacked parameters, and its training step.

    What the training loop does per step, for all members at once: set the lr, forward, the summed loss,
    backward, masks (folded into the update, or applied first when clipping), per-member clipping, the
    optimizer step. :func:`train_population` drives it; ``benchmarks/speed.py`` times :meth:`step`.
    """

    def __init__(self, models: Sequence[nn.Module], hp: TrainingHparams) -> None:
        self.hp = hp
        self.pop = Population.from_models(models)
        pop = self.pop
        names = [n for n in pop.params if n in pop.trainable]
        self.params = [nn.Parameter(pop.params[n], requires_grad=True) for n in names]
        for n, p in zip(names, self.params):
            pop.params[n] = p
        self.opt = make_optimizer(self.params, hp)
        self.masks = {id(p): pop.masks[n] for n, p in zip(names, self.params) if n in pop.masks}
        if hp.grad_clip <= 0:
            self.opt.set_grad_masks(self.masks)  # folded into the update, as the loop does
        pop.template.train()

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
        """One step on member batches ``x[i], y[i]``; returns the members' losses ``[K]`` (detached)."""
        for g in self.opt.param_groups:
            g["lr"] = lr
        loss = self.pop.losses(x, y, label_smoothing=self.hp.label_smoothing)
        self.opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        if self.hp.grad_clip > 0:
            grads = []
            for p in self.params:
                assert p.grad is not None
                if id(p) in self.masks:
                    p.grad.mul_(self.masks[id(p)])
                grads.append(p.grad)
            _clip_per_member(grads, self.hp.grad_clip)
        self.opt.step()
        return loss.detach()


def train_population(
    models: Sequence[nn.Module],
    data: Any,
    hp: TrainingHparams,
    *,
    seeds: Sequence[int],
    evaluate_at_end: bool = True,
) -> PopulationResult:
    """Train ``models`` (K members, their masks attached) as one population on ``data`` with ``hp``.

    Member ``i`` sees the batches of ``seeds[i]`` (:class:`ticketsearch.data.Batcher`), as
    ``train(models[i], data, hp, seed=seeds[i])`` would; the models themselves are not modified (read
    the members' final weights from the result). No evaluation during training, checkpoints or early-stop
    records: this is the step engine a population runner builds on.
    """
    from ..data import Batcher

    if len(seeds) != len(models):
        raise ConfigError(f"one seed per member: got {len(seeds)} seeds for {len(models)} models")
    if hp.batch_size <= 0:
        raise ConfigError(f"batch_size must be a positive integer, got {hp.batch_size}")
    trainer = PopulationTrainer(models, hp)
    pop = trainer.pop
    batchers = [Batcher(data.x_train, data.y_train, hp.batch_size, seed=s) for s in seeds]
    spe = batchers[0].steps_per_epoch
    total = to_iterations(hp.budget, spe, name="budget")
    if total <= 0:
        raise ConfigError(f"budget must be at least one iteration, got {hp.budget!r}")
    schedule = LRSchedule(hp, spe, total)
    losses = torch.empty((pop.size, total), dtype=torch.float32, device=data.x_train.device)
    t0 = time.perf_counter()
    for it in range(total):
        idx = torch.stack([b.indices(it) for b in batchers])  # [K, B]: one gather for all members
        losses[:, it] = trainer.step(data.x_train[idx], data.y_train[idx], schedule(it))
    wall = time.perf_counter() - t0
    bad = [i for i, ok in enumerate(torch.isfinite(losses).all(1).tolist()) if not ok]
    if bad:
        raise DivergenceError(
            f"population members {bad} diverged (non-finite training loss); lower --lr or check the data"
        )
    final = pop.evaluate(data.x_test, data.y_test) if evaluate_at_end else {}
    return PopulationResult(
        losses=losses,
        states=[pop.state(i) for i in range(pop.size)],
        iterations=total,
        wall_time=wall,
        final=final,
    )
