"""Fine-tune an exported ticket on CPU, training only its kept weights, and write a new ticket.

Why a different layer than training's masked layers: those hold the dense weight and mask its gradient,
so the optimizer keeps dense state (Adam: two more dense copies) — fine on a workstation, not on a small
device. Here each prunable layer becomes :class:`KeptWeights`: its only trainable weight storage is a 1-D
parameter of the kept values (plus their flat indices as a buffer); the forward scatters them into a
zero weight and runs the layer's own op. The optimizer therefore sees parameters of exactly the kept size
(plus biases and BatchNorm, trained dense), and a pruned weight cannot become nonzero: it has no storage.
The dense weight exists only transiently inside each forward/backward.

The loop is deliberately small: the batches of :class:`ticketsearch.data.Batcher` (a pure function of
seed and iteration), ticketsearch's own SGD/Adam/AdamW (``make_optimizer``) and learning-rate schedule,
cross-entropy with optional label smoothing and gradient clipping, and test accuracy before and after.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import ConfigError, DivergenceError
from ..core.hparams import TrainingHparams, to_iterations
from .ticket import ExportResult, Ticket, export_ticket, read_ticket

__all__ = ["KeptWeights", "kept_model", "dense_state", "train_steps", "finetune", "FinetuneResult"]


class KeptWeights(nn.Module):
    """A Linear/Conv2d whose weight is stored as its kept values only (1-D ``kept`` + flat ``index``)."""

    index: torch.Tensor

    def __init__(self, layer: nn.Module, mask: torch.Tensor) -> None:
        super().__init__()
        w = cast(torch.Tensor, layer.weight).detach()
        self.shape = tuple(w.shape)
        self.numel = w.numel()
        index = mask.reshape(-1).nonzero().squeeze(1).to(w.device)
        self.kept = nn.Parameter(w.reshape(-1)[index].clone())
        self.register_buffer("index", index)
        layer.register_parameter("weight", None)  # the dense weight is gone; the op gets it per call
        self.inner = layer

    def weight(self) -> torch.Tensor:
        """The zero-filled dense weight (differentiable w.r.t. ``kept`` only)."""
        return self.kept.new_zeros(self.numel).scatter(0, self.index, self.kept).reshape(self.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight()
        inner = self.inner
        own_op = getattr(inner, "dense_forward", None)  # the masked layers: their op with ``w`` in place
        if own_op is not None:
            return cast(torch.Tensor, own_op(x, w))
        if isinstance(inner, nn.Conv2d):
            return inner._conv_forward(x, w, inner.bias)
        return F.linear(x, w, cast(torch.Tensor | None, inner.bias))


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def kept_model(ticket: Ticket) -> nn.Module:
    """The ticket's architecture with every prunable layer replaced by :class:`KeptWeights`."""
    model = ticket.build()
    for pname, mask in ticket.masks.items():
        mod_name = pname.rsplit(".", 1)[0] if "." in pname else ""
        layer = model.get_submodule(mod_name)
        _set_module(model, mod_name, KeptWeights(layer, mask))
    return model


@torch.no_grad()
def dense_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A :func:`kept_model`'s state under the architecture's own names, pruned weights exactly zero."""
    out: dict[str, torch.Tensor] = {}
    kept_prefixes = {n: m for n, m in model.named_modules() if isinstance(m, KeptWeights)}
    for name, t in model.state_dict().items():
        owner = next((n for n in kept_prefixes if name.startswith(f"{n}.")), None)
        if owner is None:
            out[name] = t.detach().clone()
            continue
        rest = name[len(owner) + 1 :]
        if rest.startswith("inner."):
            out[f"{owner}.{rest[len('inner.') :]}"] = t.detach().clone()
    for n, m in kept_prefixes.items():
        out[f"{n}.weight"] = m.weight().detach().clone()
    return out


@dataclass
class FinetuneResult:
    """What :func:`finetune` did: the new ticket, accuracy before/after, cost and optimizer-state size."""

    export: ExportResult | None
    iterations: int
    steps_per_epoch: int
    train_seconds: float
    test_acc_before: float
    test_acc_after: float
    kept_weights: int  # prunable weights trained (the ticket's kept count)
    trainable_numel: int  # kept weights + dense non-prunable parameters (biases, BatchNorm)
    optimizer_state_numel: int  # numbers the optimizer holds (Adam: 2 × trainable_numel)
    losses: list[float] = field(default_factory=list)

    @property
    def seconds_per_epoch(self) -> float:
        return self.train_seconds / self.iterations * self.steps_per_epoch if self.iterations else 0.0


def train_steps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    hp: TrainingHparams,
    *,
    seed: int = 0,
    iterations: int | None = None,
    grad_masks: Mapping[int, torch.Tensor] | None = None,
) -> tuple[Any, list[float], int, int]:
    """Train ``model`` on ``(x, y)`` for ``hp.budget`` (or ``iterations``) steps.

    Returns (optimizer, loss per step, iterations, steps per epoch). ``grad_masks`` (``id(param)`` → 0/1
    mask) is for the dense masked baseline the benchmark compares with.
    """
    from ..data import Batcher
    from ..training.optim import LRSchedule, make_optimizer

    batcher = Batcher(x, y, hp.batch_size, seed=seed)
    total = iterations if iterations is not None else to_iterations(hp.budget, len(batcher), name="budget")
    opt = make_optimizer(model.parameters(), hp)
    if grad_masks:
        opt.set_grad_masks(dict(grad_masks))
    schedule = LRSchedule(hp, len(batcher), total)
    params = [p for p in model.parameters() if p.requires_grad]
    losses: list[float] = []
    model.train()
    for it in range(total):
        opt.param_groups[0]["lr"] = schedule(it)
        xb, yb = batcher.batch(it)
        loss = F.cross_entropy(model(xb), yb, label_smoothing=hp.label_smoothing)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DivergenceError(
                f"fine-tuning diverged: loss {value} at iteration {it}; lower --lr (now {hp.lr})"
            )
        losses.append(value)
        opt.zero_grad()
        loss.backward()
        if hp.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, hp.grad_clip)
        opt.step()
    model.eval()
    return opt, losses, total, len(batcher)


def default_hparams(model: str) -> TrainingHparams:
    """The model's training recipe, for one epoch (fine-tuning, not training from scratch)."""
    from ..models import training_recipe

    return replace(training_recipe(model), budget="1ep", schedule="constant", warmup="0it", milestones="")


def finetune(
    ticket_path: str | Path,
    dataset: Any,
    *,
    out: str | Path | None,
    hparams: TrainingHparams | None = None,
    seed: int = 0,
    data_root: str | None = None,
    download: bool = False,
    val_size: float | None = None,
    resize: int = 0,
    format: str | None = None,
    dtype: str | None = None,
) -> FinetuneResult:
    """Train the kept weights of the ticket at ``ticket_path`` on ``dataset`` (a name, or a loaded
    :class:`ticketsearch.data.Dataset`) on CPU and write the result to ``out`` (same mask; ``format`` and
    ``dtype`` default to the source ticket's). ``out=None`` trains without writing (benchmarks).

    ``hparams`` default: the model's recipe for one epoch at a constant learning rate.
    """
    from ..core.hparams import check_seed
    from ..data import Dataset, load_dataset
    from ..training.loop import evaluate

    seed = check_seed(seed)
    ticket = read_ticket(ticket_path)
    hp = hparams if hparams is not None else default_hparams(ticket.model_name)
    hp.validate()
    if format == "onnx":
        raise ConfigError("--format onnx: finetune writes safetensors tickets (bitmask, csr, dense, auto)")
    if isinstance(dataset, Dataset):
        data = dataset
    else:
        data = load_dataset(
            str(dataset), root=data_root, seed=seed, val_size=val_size, download=download, resize=resize
        )
    if tuple(data.input_shape) != ticket.input_shape:
        hint = ""
        if len(data.input_shape) == 3 and len(ticket.input_shape) == 3:
            hint = f"; load it with --resize {ticket.input_shape[1]}"
        raise ConfigError(
            f"dataset '{data.name}' has inputs of shape {list(data.input_shape)}, the ticket's model "
            f"'{ticket.model_name}' takes {list(ticket.input_shape)}{hint}"
        )
    if int(data.num_classes) != ticket.num_classes:
        raise ConfigError(
            f"dataset '{data.name}' has {data.num_classes} classes, the ticket's model has "
            f"{ticket.num_classes} outputs"
        )
    data = data.to("cpu")
    model = kept_model(ticket)
    before = evaluate(model, data.x_test, data.y_test)["acc"]
    t0 = time.perf_counter()
    opt, losses, iterations, spe = train_steps(model, data.x_train, data.y_train, hp, seed=seed)
    seconds = time.perf_counter() - t0
    after = evaluate(model, data.x_test, data.y_test)["acc"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    state_numel = sum(t.numel() for bufs in opt.buffers.values() for t in bufs)
    result = FinetuneResult(
        export=None,
        iterations=iterations,
        steps_per_epoch=spe,
        train_seconds=seconds,
        test_acc_before=before,
        test_acc_after=after,
        kept_weights=ticket.num_kept,
        trainable_numel=trainable,
        optimizer_state_numel=state_numel,
        losses=losses,
    )
    if out is not None:
        src = ticket.header
        result.export = export_ticket(
            dense_state(model),
            ticket.mask(),
            format=format or str(src.get("encoding")),
            dtype=dtype or ticket.dtype,
            out=out,
            metadata={
                "model": ticket.model_name,
                "input_shape": list(ticket.input_shape),
                "num_classes": ticket.num_classes,
                "dataset": data.name,
                "source": {
                    "finetuned_from": str(Path(ticket_path).resolve()),
                    "finetuned_from_sha256": src.get("sha256"),
                    "original_source": src.get("source"),
                },
                "finetune": {
                    "hparams": asdict(hp),
                    "seed": seed,
                    "iterations": iterations,
                    "test_acc_before": before,
                    "test_acc_after": after,
                },
            },
        )
    return result
