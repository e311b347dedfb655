"""The one training loop: weights (dense or masked) and learned scores (supermasks) all train here.

Data stays on the training device as tensors and batches are a pure function of (seed, iteration) (see
:class:`ticketsearch.data.Batcher`), so resuming from a checkpoint replays exactly the same steps. As in the
lottery-ticket paper we record the early-stopping iteration (minimum validation loss) and the test accuracy
there, next to the final accuracy.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import ConfigError, DivergenceError
from ..core.hparams import PRECISIONS, TrainingHparams, to_iterations
from ..sparse import (
    apply_mask,
    dense_gradients,
    get_mask,
    grad_masker,
    mask_gradients,
    mask_pairs,
    masked_layers,
    param_name,
)
from .distributed import SINGLE, World
from .graphs import GraphStep, eager_reason, precision_context
from .optim import LRSchedule, Optimizer, make_optimizer
from .schedule import MaskSchedule, MaskUpdate

__all__ = [
    "train",
    "evaluate",
    "TrainResult",
    "TrainState",
    "StopTraining",
    "progress_bar",
    "time_split",
]

# seconds this process spent in training steps and in evaluations, summed over every train() call: the
# benchmark suite reads it around each cell to state how much of its wall time was anything else (start-up,
# data, scoring, writing). On CUDA a step is timed as launched (no synchronisation is added for the clock).
_CLOCK = {"steps": 0.0, "eval": 0.0}


def time_split() -> dict[str, float]:
    """A copy of this process's running totals: ``steps`` (forward, backward, optimizer), ``eval``, and
    ``build``: compiling a kernel on its first use on this machine (cached after), which a suite's timing
    states apart instead of charging it to the suite."""
    from ..sparse.kernels._cpp import build_seconds

    return {**_CLOCK, "build": build_seconds()}


class StopTraining(Exception):  # noqa: N818  (a signal, not an error)
    """Raised by an ``on_step`` hook to end training before the budget (early-bird's stopping rule): the
    loop evaluates where it stopped and returns normally."""


@dataclass
class TrainState:
    """What a checkpoint holds; only tensors, numbers, strings, lists and dicts (loads with weights_only).

    With a mask schedule it also holds the current masks (a model's state_dict does not: masks are
    non-persistent buffers) and the schedule's own state, so a resumed run continues from the masks it had.
    """

    iteration: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    history: list[dict[str, Any]]
    best: dict[str, Any]
    passes: dict[str, int]
    elapsed: float
    masks: dict[str, torch.Tensor] | None = None
    method: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dict(
            iteration=self.iteration,
            model=self.model,
            optimizer=self.optimizer,
            history=self.history,
            best=self.best,
            passes=self.passes,
            elapsed=self.elapsed,
        )
        if self.masks is not None or self.method is not None:  # fixed-mask checkpoints stay as they were
            out.update(masks=self.masks, method=self.method)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**d)


@dataclass
class TrainResult:
    iterations: int
    final: dict[str, float]
    best: dict[str, Any]  # early-stop point: iteration, val_loss, val_acc, test_acc, test_loss
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_time: float = 0.0
    passes: dict[str, int] = field(default_factory=dict)  # forward/backward passes over batches
    graph: bool = False  # the steps replayed a captured CUDA graph (see training.graphs)
    eager_reason: str | None = None  # why not, when they did not
    mask_changes: int = 0  # boundaries at which a mask schedule changed the masks (this call only)


def _noop() -> None:
    return None


class _MaskMover:
    """Applies a :class:`MaskSchedule`'s decisions to the model, the optimizer and the gradient masking."""

    def __init__(self, model: nn.Module, opt: Optimizer, world: World, clip: bool) -> None:
        self.model, self.opt, self.world, self.clip = model, opt, world, clip
        self.layers = {param_name(n): layer for n, layer in masked_layers(model)}
        self.changes = 0
        self.mask_grads: Callable[[], None] = _noop
        self.refresh()

    def refresh(self) -> None:
        """Gradient masks from the current masks: before the clip's norm, or folded into the update."""
        if self.clip:
            self.mask_grads = grad_masker(self.model)
            self.opt.set_grad_masks({})
        else:
            self.opt.set_grad_masks({id(p): m for p, m in mask_pairs(self.model)})
            self.mask_grads = _noop

    def dense_grads(self) -> dict[str, torch.Tensor]:
        return {
            n: (
                layer.weight.grad.detach().clone()
                if layer.weight.grad is not None
                else torch.zeros_like(layer.weight)
            )
            for n, layer in self.layers.items()
        }

    def apply(self, new: MaskUpdate | None) -> None:
        if self.world.active:  # rank 0's decision on every rank (each rank called the schedule too)
            mine = None if not new else {n: t.detach().to("cpu", torch.bool) for n, t in new.items()}
            new = self.world.broadcast(mine)
        if not new:
            return
        unknown = sorted(set(new) - set(self.layers))
        if unknown:
            raise ValueError(
                f"mask schedule returned masks for {', '.join(unknown)}, which are not prunable weights of "
                f"this model (prunable: {', '.join(self.layers)})"
            )
        for name, mask in new.items():
            self.layers[name].set_mask(mask)  # zeroes the weights it prunes
        # state of pruned weights to zero: every masked layer (a regrown weight's state is zero already)
        self.opt.mask_state(
            {
                id(layer.weight): layer.mask_float()
                for layer in self.layers.values()
                if layer.weight_mask is not None
            }
        )
        self.refresh()
        self.changes += 1


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 2048,
    *,
    world: World | None = None,
    precision: str = "fp32",
) -> dict[str, float]:
    """Mean loss and accuracy, in eval mode; the caller's train/eval mode is restored.

    In a torchrun ``world`` each rank evaluates its slice of the rows and the sums are all-reduced, so
    every rank gets the same numbers as one process (within float64 rounding of the loss sum).
    Sums stay on the device: one host synchronisation per evaluation, none per batch. ``precision``
    "bf16" evaluates under the same autocast the run trained with.
    """
    world = world or SINGLE
    n = x.shape[0]
    if n == 0:
        return {"loss": float("nan"), "acc": float("nan")}
    if world.active:
        rows = world.shard(n)
        x, y = x[rows], y[rows]
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, x.shape[0], batch_size):
        # no graph: an evaluation never backpropagates (no_grad, not inference_mode, so a layer that caches
        # a tensor here can still use it in a later training step)
        with torch.no_grad(), precision_context(precision, x.device):
            out = model(x[i : i + batch_size])
        yb = y[i : i + batch_size]
        loss_sum += F.cross_entropy(out.float(), yb, reduction="sum").double()
        correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    if world.active:  # one all-reduce: counts below 2**53 are exact in float64
        sums = world.all_reduce_(torch.stack([loss_sum, correct.double()]))
        loss_sum, correct = sums[0], sums[1]
    return {"loss": float(loss_sum) / n, "acc": float(correct) / n}


def progress_bar(
    total: int,
    *,
    initial: int = 0,
    enabled: bool | str = "auto",
    desc: str = "",
    unit: str = "it",
    leave: bool = False,
) -> Any:
    """The one progress bar of long work (training steps, suite cells, study trials): tqdm on stderr, or
    ``None`` when disabled (``"auto"``: only when stderr is a terminal, so logs and pipes stay clean)."""
    if enabled == "auto":
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)


def train(
    model: nn.Module,
    data: Any,
    hp: TrainingHparams,
    *,
    seed: int,
    start: TrainState | None = None,
    checkpoint_every: int = 1,
    save_checkpoint: Callable[[TrainState], None] | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
    after_step: Callable[[int, nn.Module], None] | None = None,
    progress: bool | str = "auto",
    desc: str = "train",
    stop_at: int | None = None,
    world: World | None = None,
    graph: bool = False,
    schedule: MaskSchedule | None = None,
) -> TrainResult:
    """Train ``model`` (already on the data's device) on ``data`` (a :class:`ticketsearch.data.Dataset`).

    ``on_step(it, model)`` runs before step ``it`` (IMP saves its rewind point there); ``after_step`` after
    it (learned scorers use it). Checkpoints every ``checkpoint_every`` iterations go to ``save_checkpoint``;
    ``start`` resumes from one. ``stop_at`` ends early at that iteration (tests of resume).
    Raises DivergenceError on a NaN/inf loss.

    ``world`` (torchrun): the model trains under DistributedDataParallel, each rank on its slice of the
    global batch ``hp.batch_size`` (which must divide by the world size); the loss of a slice is its sum
    over the global batch's size, times the world size, so DDP's average of gradients is the gradient of
    the mean loss over the global batch: what one process optimises. Evaluations and the reported
    training loss are all-reduced; hooks and ``save_checkpoint`` run on every rank (the caller makes
    storage rank-0-only); a ``StopTraining`` from any rank stops every rank at the same step.

    ``hp.precision`` "bf16": forward and loss under bf16 autocast (training and evaluation); weights,
    gradients and optimizer state stay fp32, so the masks stay exact. ``graph`` (CUDA): replay each step
    as a captured CUDA graph where :func:`ticketsearch.training.graphs.eager_reason` allows it (not under
    torchrun, not with ``on_step``/``after_step`` hooks); the result says which ran.

    ``schedule`` (see :mod:`ticketsearch.training.schedule`): a method that moves masks during training;
    the loop applies its changes at step boundaries (weights, optimizer state, gradient masks), checkpoints
    its state and the masks, and restores both on resume. ``None`` (fixed masks) costs nothing.
    """
    from ..data import Batcher

    world = world or SINGLE
    if hp.batch_size <= 0:
        raise ConfigError(f"batch_size must be a positive integer, got {hp.batch_size}")
    if hp.precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {hp.precision!r} (choose from: {', '.join(PRECISIONS)})")
    world.check_batch_size(hp.batch_size)
    batcher = Batcher(data.x_train, data.y_train, hp.batch_size, seed=seed)
    spe = batcher.steps_per_epoch
    total = to_iterations(hp.budget, spe, name="budget")
    if total <= 0:
        raise ConfigError(f"budget must be at least one iteration, got {hp.budget!r}")
    eval_every = to_iterations(hp.eval_every, spe, name="eval_every") or total
    lr_at = LRSchedule(hp, spe, total)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, hp)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    passes = {"forward": 0, "backward": 0}
    it = 0
    elapsed = 0.0
    if start is not None:
        if start.masks is not None:  # a schedule's masks as they were at the checkpoint
            apply_mask(model, {n: t.to(data.x_train.device) for n, t in start.masks.items()})
        if schedule is not None and start.method is not None:
            schedule.load_state_dict(start.method)
        model.load_state_dict(start.model)
        opt.load_state_dict(start.optimizer)
        it, history, best, passes, elapsed = (
            start.iteration,
            list(start.history),
            dict(start.best),
            dict(start.passes),
            start.elapsed,
        )
    has_val = data.x_val.shape[0] > 0

    def do_eval(at: int, train_loss: float | None) -> None:
        nonlocal best
        t_eval = time.perf_counter()
        rec: dict[str, Any] = {"iteration": at, "epoch": at / spe, "train_loss": train_loss}
        if has_val:
            v = evaluate(model, data.x_val, data.y_val, world=world, precision=hp.precision)
            rec.update(val_loss=v["loss"], val_acc=v["acc"])
        t = evaluate(model, data.x_test, data.y_test, world=world, precision=hp.precision)
        rec.update(test_loss=t["loss"], test_acc=t["acc"], lr=lr_at(max(at - 1, 0)))
        history.append(rec)
        key = rec["val_loss"] if has_val else rec["test_loss"]
        if not best or (math.isfinite(key) and key < best["_key"]):
            best = {"_key": key, **rec}
        _CLOCK["eval"] += time.perf_counter() - t_eval
        if log is not None:
            log(rec)

    # the optimizer folds grad ⊙ mask into its update, unless the gradient norm is clipped (the norm must
    # not count pruned weights), then grads are masked first; a schedule's mover rebuilds both on a change
    mover: _MaskMover | None = None
    if schedule is not None:
        mover = _MaskMover(model, opt, world, hp.grad_clip > 0)
        mask_grads = mover.mask_grads
    elif hp.grad_clip > 0:
        mask_grads = grad_masker(model)
    else:
        opt.set_grad_masks({id(p): m for p, m in mask_pairs(model)})
        mask_grads = _noop
    model.train()
    net = world.wrap(model)  # after the resumed state is loaded: DDP starts every rank from rank 0's
    bar = progress_bar(total, initial=it, enabled=progress, desc=desc)
    t0 = time.perf_counter()
    loss_acc = torch.zeros((), dtype=torch.float64, device=data.x_train.device)
    n_acc = 0
    end = total if stop_at is None else min(total, stop_at)
    if it == 0 and not history:
        if schedule is not None and mover is not None:
            mover.apply(schedule.update(0, model, None))
            mask_grads = mover.mask_grads
        if hp.eval_start or end == 0:  # a training of no steps still reports its one evaluation
            do_eval(0, None)  # before any step: no training loss yet (JSON has no NaN)
    device = data.x_train.device
    hooks = on_step is not None or after_step is not None
    why = eager_reason(model, device, enabled=graph, world=world, hooks=hooks, schedule=schedule is not None)
    step: GraphStep | None = None
    if why is None and it < end:
        step = GraphStep(model, data, hp, opt, params, loss_acc, mask_grads)
        if not step.capture(batcher.indices(it)):
            why = step.failure
            if device.type == "cuda":  # a failed capture: the plain eager step, not the uncaptured body
                step = None
            # (off CUDA the body only runs uncaptured when a test forces this path: it is the oracle check
            # of the device-scalar update against the eager optimizer, tests/test_precision.py)
    autocast = precision_context(hp.precision, device)  # reusable: a nullcontext or an autocast
    stopped = False
    try:
        with world.guard():  # a lost rank (dead, hung past the timeout) ends the run in one line
            while it < end:
                if on_step is not None:
                    stop = False
                    try:
                        on_step(it, model)
                    except StopTraining:
                        stop = True
                    if world.any(stop):  # every rank stops at the same step, or none does
                        stopped = True
                        break
                t_step = time.perf_counter()
                lr = lr_at(it)
                for g in opt.param_groups:
                    g["lr"] = lr
                want_grads = schedule is not None and schedule.needs_grads(it + 1)
                dense = dense_gradients(model) if want_grads else contextlib.nullcontext()
                grads: dict[str, torch.Tensor] | None = None
                with dense:  # a schedule that reads dense gradients gets them for this step
                    if (
                        step is not None
                    ):  # graph-captured (or, for an odd-sized batch, the same step uncaptured)
                        step(batcher.indices(it), lr)
                    elif world.active:
                        idx = batcher.indices(it)
                        mine = idx[world.shard(idx.numel())]
                        with autocast:
                            out = net(data.x_train[mine])
                        loss_sum = F.cross_entropy(
                            out.float(),
                            data.y_train[mine],
                            label_smoothing=hp.label_smoothing,
                            reduction="sum",
                        )
                        loss = loss_sum * (world.size / idx.numel())  # DDP divides by world.size again
                        loss_acc += loss_sum.detach() / idx.numel()  # this rank's share of the global mean
                    else:
                        xb, yb = batcher.batch(it)
                        with autocast:
                            out = model(xb)
                        loss = F.cross_entropy(out.float(), yb, label_smoothing=hp.label_smoothing)
                        loss_acc += loss.detach()
                    if step is None:
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        if want_grads:
                            assert mover is not None
                            grads = mover.dense_grads()  # before any masking: what a regrowth rule reads
                            mask_gradients(model)  # every layer is grad-masked inside dense_gradients
                        mask_grads()
                        if hp.grad_clip > 0:
                            torch.nn.utils.clip_grad_norm_(params, hp.grad_clip)
                        opt.step()
                passes["forward"] += 1
                passes["backward"] += 1
                n_acc += 1
                it += 1
                _CLOCK["steps"] += time.perf_counter() - t_step
                if after_step is not None:
                    after_step(it, model)
                if schedule is not None:
                    assert mover is not None
                    stop = False
                    try:
                        mover.apply(schedule.update(it, model, grads))
                    except StopTraining:
                        stop = True
                    mask_grads = mover.mask_grads
                    if world.any(stop):
                        stopped = True
                        break
                if bar is not None:
                    bar.update(1)
                if it % eval_every == 0 or it == total:
                    world.all_reduce_(loss_acc)  # the global batch's mean loss, the same on every rank
                    train_loss = float(loss_acc) / max(n_acc, 1)
                    if not math.isfinite(train_loss):
                        raise DivergenceError(
                            f"training diverged: loss is {train_loss} at iteration {it} (lr={lr:g}); "
                            "lower --lr or check the data"
                        )
                    loss_acc.zero_()
                    n_acc = 0
                    do_eval(it, train_loss)
                    if bar is not None:
                        bar.set_postfix(test_acc=f"{history[-1]['test_acc']:.4f}")
                if (
                    save_checkpoint is not None
                    and it < total
                    and it % eval_every == 0
                    and (it // eval_every) % max(checkpoint_every, 1) == 0
                ):
                    # checkpoints fall on eval points, where the running train-loss accumulator is empty
                    save_checkpoint(
                        TrainState(
                            it,
                            {k: v.detach().clone() for k, v in model.state_dict().items()},
                            opt.state_dict(),
                            history,
                            best,
                            passes,
                            elapsed + time.perf_counter() - t0,
                            masks=None if schedule is None else dict(get_mask(model)),
                            method=None if schedule is None else schedule.state_dict(),
                        )
                    )
            if stopped and (not history or history[-1]["iteration"] != it):
                if n_acc:
                    world.all_reduce_(loss_acc)
                do_eval(it, float(loss_acc) / n_acc if n_acc else None)
    finally:
        if bar is not None:
            bar.close()
    elapsed += time.perf_counter() - t0
    final = dict(history[-1]) if history else {}
    best_out = {k: v for k, v in best.items() if k != "_key"}
    return TrainResult(
        iterations=it,
        final=final,
        best=best_out,
        history=history,
        wall_time=elapsed,
        passes=passes,
        graph=step is not None and step.captured,
        eager_reason=why,
        mask_changes=mover.changes if mover is not None else 0,
    )
