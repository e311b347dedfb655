"""The scorer contract: a method scores every prunable weight (higher = keep); ``core.select`` makes the mask.

Small ABC in Optuna's style: one abstract method, documented for implementers. Third-party scorers register
through the entry-point group ``ticketsearch.scorers`` (the entry point names a Scorer subclass, or any class
with a ``score`` method of the same signature). The helpers below are shared by the built-ins so that every
data-driven method uses the same loss, the same batch weighting and the same "never touch the caller's
model" discipline.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import ConfigError
from ..core.hparams import RunHparams, coerce_knob
from ..core.registry import BrokenEntry, Registry

__all__ = [
    "Scorer",
    "ScoringContext",
    "SCORERS",
    "ScorerRegistry",
    "register_scorer",
    "Batch",
    "method_arg",
    "require_batches",
    "scoring_copy",
    "loss_gradients",
    "input_shape_of",
    "note_cost",
    "cost_counter",
]

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class ScoringContext:
    """What a scorer may need beyond a few batches: learned scorers train on the full data set."""

    data: Any = None  # ticketsearch.data.Dataset
    seed: int = 0
    log: Callable[[dict[str, Any]], None] | None = None
    progress: bool | str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)


class Scorer(ABC):
    """Base class of ticket-finding methods that score weights.

    Implementers override :meth:`score`. Contract (checked by ``ticketsearch.testing.ScorerConformance``):
    return one finite tensor per prunable parameter (names and shapes of
    ``ticketsearch.sparse.prunable_parameters(model)``), be deterministic under ``torch.manual_seed``, and
    leave the model's weights, buffers and gradients untouched (work on a copy if you must change them, see
    :func:`scoring_copy`). Never build a mask: ``core.select`` does, so every method is compared under the
    same selection rule. Weights already pruned (zero, with a mask attached) are excluded by the selection,
    whatever their score.

    ``data_free`` scorers ignore batches. ``default_rounds`` > 1 makes the scorer iterative by default
    (SynFlow: 100); any scorer can be run iteratively with ``--rounds`` (see
    :func:`ticketsearch.scorers.iterative.find_mask`). ``default_scope`` is the selection the method's paper
    uses (``global`` for SNIP, GraSP and SynFlow), so ``find --method snip`` reproduces SNIP without extra
    flags. ``knobs`` declares the ``--arg key=value`` knobs with their defaults (read them with
    :func:`method_arg`); an undeclared key is then refused in one line. ``None`` (a plugin that declares
    nothing) accepts any key. :meth:`check_hparams` checks the knobs' values (ranges, combinations); a
    method calls it before any file exists, so a bad value is one line and nothing is left behind.

    ``revives`` (FORCE): the scorer runs its ``--rounds`` itself, because between its rounds a pruned weight
    may come back; ``find_mask`` then calls it once (with the resolved rounds in ``hparams.pruning.rounds``)
    and makes only the final selection. Every other scorer's rounds are driven by ``find_mask``, which never
    revives.

    Methods that are not "score once, select" (IMP, learned supermasks) are strategies in
    :mod:`ticketsearch.methods`; a scorer becomes a method through ``methods.OneShot``.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "oneshot"
    data_free: ClassVar[bool] = False
    default_rounds: ClassVar[int] = 1
    default_scope: ClassVar[str] = "layerwise"
    knobs: ClassVar[dict[str, Any] | None] = None
    citation: ClassVar[str] = ""
    revives: ClassVar[bool] = False

    @classmethod
    def check_hparams(cls, hparams: RunHparams) -> None:
        """Raise a ConfigError naming a bad knob value and what is allowed; the default accepts all.

        Called before the run directory is created (and may be called again from :meth:`score`): read the
        knobs with :func:`method_arg`, look at nothing but ``hparams``.
        """
        return None

    @classmethod
    def search_space(cls, trial: Any, hparams: RunHparams) -> dict[str, Any]:
        """The scorer's own ``--arg`` knobs worth tuning, drawn from an Optuna ``trial`` (``ticketsearch
        study``): name → value, each a declared knob. The method adds them to the shared space (lr, density,
        scoring batches, rounds). Only the scorer knows which of its knobs matter and over what range;
        the default tunes none."""
        return {}

    @abstractmethod
    def score(
        self,
        model: nn.Module,
        batches: Sequence[Batch],
        *,
        hparams: RunHparams,
        context: ScoringContext | None = None,
    ) -> dict[str, torch.Tensor]:
        """Scores for every prunable weight of ``model`` (higher = keep)."""


class ScorerRegistry(Registry[type[Scorer]]):
    """The scorer registry: also accepts duck-typed plugin classes, and names them after their entry.

    A plugin entry point that is not a class with a ``score`` method is recorded as broken (with the reason)
    instead of taking the registry down at the first lookup.
    """

    def add(self, name: str, obj: Any, *, description: str | None = None, source: str = "built-in") -> None:
        if not (isinstance(obj, type) and callable(getattr(obj, "score", None))):
            msg = f"{obj!r} is not a scorer class (a ticketsearch.scorers.Scorer subclass with a score() method)"
            if source == "built-in":
                raise TypeError(f"method '{name}': {msg}")
            self._broken[name] = BrokenEntry(name, source, f"TypeError: {msg}")
            return
        if not getattr(obj, "name", ""):
            obj.name = name
        super().add(name, obj, description=description, source=source)


SCORERS: ScorerRegistry = ScorerRegistry("method", entry_point_group="ticketsearch.scorers")


def register_scorer(name: str, *, description: str | None = None):
    """Class decorator registering a built-in scorer under ``name`` (a taken name raises)."""

    def deco(cls: type[Scorer]) -> type[Scorer]:
        cls.name = name
        SCORERS.add(name, cls, description=description)
        return cls

    return deco


# -- helpers for implementers ---------------------------------------------------------------------------
def method_arg(hparams: RunHparams, key: str, default: Any, cast: Callable[[Any], Any] | None = None) -> Any:
    """A method knob from ``--arg key=value``, converted like ``default``; a bad value is a ConfigError."""
    args = hparams.args
    if key not in args:
        return default
    return coerce_knob(key, args[key], default, cast)


def require_batches(batches: Sequence[Batch], method: str) -> list[Batch]:
    """Data-driven scorers need real data; say so instead of failing on an empty sum."""
    out = list(batches or [])
    if not out:
        raise ConfigError(
            f"method '{method}' scores weights on real data but got no batches (--score-batches ≥ 1)"
        )
    for i, b in enumerate(out):
        if not (isinstance(b, (tuple, list)) and len(b) == 2):
            raise ConfigError(f"method '{method}': batch {i} is not an (inputs, labels) pair")
    return out


def scoring_copy(
    model: nn.Module, *, train: bool | None = None, dtype: torch.dtype | None = None
) -> nn.Module:
    """A deep copy to score on: forward passes in train mode update BatchNorm statistics, and some methods
    change weights (SynFlow's abs); the caller's model must come back bitwise identical.

    ``train=None`` keeps the model's mode. Gradients held by the original are not copied.
    """
    grads = {}
    for n, p in model.named_parameters():  # deepcopy would copy .grad too: do not carry it over
        if p.grad is not None:
            grads[n] = p.grad
            p.grad = None
    try:
        work = copy.deepcopy(model)
    finally:
        for n, p in model.named_parameters():
            if n in grads:
                p.grad = grads[n]
    if dtype is not None:
        work = work.to(dtype)
    if train is not None:
        work.train(train)
    return work


def loss_gradients(
    model: nn.Module,
    params: Sequence[torch.Tensor],
    batches: Sequence[Batch],
    *,
    temperature: float = 1.0,
    chunk_size: int = 0,
) -> list[torch.Tensor]:
    """Gradient of the mean cross-entropy over *all* examples of ``batches`` with respect to ``params``.

    Batches (and chunks of ``chunk_size`` examples, 0 = whole batches) are weighted by their size, so the
    result is the same however the data is split; memory is bounded by one chunk. ``temperature`` divides
    the logits (GraSP uses 200). Uses ``autograd.grad``: no ``.grad`` is left on the model.
    """
    device = params[0].device
    total = sum(int(x.shape[0]) for x, _ in batches)
    acc = [torch.zeros_like(p) for p in params]
    for x, y in iter_chunks(batches, chunk_size):
        x, y = x.to(device), y.to(device)
        out = model(x.to(params[0].dtype) if x.is_floating_point() else x)
        loss = F.cross_entropy(out / temperature, y) * (x.shape[0] / total)
        for a, g in zip(acc, torch.autograd.grad(loss, list(params), allow_unused=True)):
            if g is not None:
                a.add_(g)
    return acc


def iter_chunks(batches: Sequence[Batch], chunk_size: int) -> Iterator[Batch]:
    for x, y in batches:
        if chunk_size and chunk_size > 0 and x.shape[0] > chunk_size:
            for i in range(0, x.shape[0], chunk_size):
                yield x[i : i + chunk_size], y[i : i + chunk_size]
        else:
            yield x, y


def input_shape_of(
    model: nn.Module, batches: Sequence[Batch], context: ScoringContext | None
) -> tuple[int, ...]:
    """The shape of one example, for data-free scorers that build their own input."""
    if batches:
        return tuple(int(s) for s in batches[0][0].shape[1:])
    data = getattr(context, "data", None)
    shape = getattr(data, "input_shape", None) or getattr(model, "input_shape", None)
    if shape:
        return tuple(int(s) for s in shape)
    raise ConfigError(
        f"cannot tell the input shape of {type(model).__name__}: pass one batch, a ScoringContext with data, "
        "or set model.input_shape"
    )


# -- cost accounting --------------------------------------------------------------------------------------
_COST: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar(
    "ticketsearch_scoring_cost", default=None
)


def note_cost(key: str, n: int = 1) -> None:
    """Report work the automatic pass counter cannot see (e.g. Hessian-vector products); no-op outside it."""
    cost = _COST.get()
    if cost is not None:
        cost[key] = cost.get(key, 0) + int(n)


@contextlib.contextmanager
def cost_counter(model: nn.Module | None = None) -> Iterator[dict[str, int]]:
    """Count forward passes, examples and backward passes through ``model`` (and deep copies made of it
    while counting: the hooks travel with ``copy.deepcopy``), plus whatever scorers report by
    :func:`note_cost`. The hooks are removed on exit; pass a model you own (a copy), never the caller's.
    """
    cost: dict[str, int] = {"forward_passes": 0, "backward_passes": 0, "examples_forward": 0}
    token = _COST.set(cost)
    handles = []
    if model is not None:

        def pre(_mod: nn.Module, args: tuple[Any, ...]) -> None:
            c = _COST.get()
            if c is None:
                return
            c["forward_passes"] = c.get("forward_passes", 0) + 1
            if args and isinstance(args[0], torch.Tensor) and args[0].dim() > 0:
                c["examples_forward"] = c.get("examples_forward", 0) + int(args[0].shape[0])

        def post(_mod: nn.Module, _args: tuple[Any, ...], out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.requires_grad:

                def on_grad(g: torch.Tensor) -> None:
                    c = _COST.get()
                    if c is not None:
                        c["backward_passes"] = c.get("backward_passes", 0) + 1

                out.register_hook(on_grad)

        handles = [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]
    try:
        yield cost
    finally:
        for h in handles:
            h.remove()
        _COST.reset(token)
