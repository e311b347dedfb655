"""The method contract: a strategy that turns a run context into ticket levels.

open_lth splits "how to prune" (``Strategy``) from "where results go" (the runner); so do we. A
:class:`Method` knows its algorithm (score once, prune level after level, learn scores) and declares what it
reads: which fields of :class:`~ticketsearch.core.hparams.PruningHparams` and which ``--arg`` knobs. The
runner (``ticketsearch.experiments``) owns persistence, resume, locking and controls and hands the method a
:class:`RunContext`. Because each method declares its fields, a field it ignores never enters its run's
hash: an IMP ``rate`` does not rename a SNIP run.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
import torch.nn as nn

from ..core.errors import ConfigError, UnknownNameError
from ..core.hparams import PruningHparams, RunHparams, TrainingHparams, coerce_knob, parse_duration
from ..core.mask import Mask
from ..core.registry import Registry
from ..training.schedule import MaskSchedule

if TYPE_CHECKING:  # optuna is imported only by `ticketsearch study`, never by the library
    from optuna.trial import Trial

__all__ = [
    "Method",
    "LevelRow",
    "RunContext",
    "LevelStore",
    "METHOD_STRATEGIES",
    "register_strategy",
    "get_method",
    "method_names",
    "MethodInfo",
    "list_methods",
    "SHARED_FIELDS",
    "suggest_lr",
    "suggest_density",
    "suggest_duration",
    "steps_per_epoch",
    "nearest_level",
]

# what every method reads: the target and the selection rule's guard
SHARED_FIELDS = ("method", "density", "min_layer_density", "allow_empty_layers")


# -- what a method hands back ---------------------------------------------------------------------------
@dataclass
class LevelRow(Mapping[str, Any]):
    """One ticket level as the CLI prints it and ``--json`` writes it.

    Typed fields for what every reader uses; ``result`` is the level's ``result.json`` as written. The
    Mapping view (``row["test_acc"]``) is the flat JSON record, so scripts that read rows as dicts keep
    working.
    """

    level: int
    density: float
    mask: str
    result: dict[str, Any] = field(default_factory=dict)
    controls: dict[str, dict[str, Any]] = field(default_factory=dict)
    then_train: dict[str, Any] | None = None

    @property
    def test_acc(self) -> float | None:
        return self.result.get("test_acc")

    @property
    def es_iteration(self) -> int | None:
        return self.result.get("es_iteration")

    @property
    def es_test_acc(self) -> float | None:
        return self.result.get("es_test_acc")

    @property
    def weights_trained(self) -> bool:
        return self.result.get("weights_trained", True) is not False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"level": self.level, "density": self.density, "mask": self.mask, **self.result}
        if self.controls:
            out["controls"] = self.controls
        if self.then_train is not None:
            out["then_train"] = self.then_train
        return out

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


# -- what the runner hands a method ---------------------------------------------------------------------
class LevelStore(Protocol):
    """One level directory (see ``ticketsearch.experiments.rundir.LevelDir``)."""

    path: Path

    @property
    def mask_path(self) -> Path: ...

    @property
    def final_path(self) -> Path: ...

    def done(self) -> bool: ...

    def has_mask(self) -> bool: ...

    def result(self) -> dict[str, Any]: ...

    def write_result(self, result: dict[str, Any]) -> None: ...

    def save_mask(self, mask: Mask, **metadata: Any) -> Path: ...

    def load_mask(self) -> Mask: ...

    def load_checkpoint(self) -> dict[str, Any] | None: ...

    def save_checkpoint(self, state: dict[str, Any]) -> None: ...

    def reset_metrics(self, history: list[dict[str, Any]]) -> None: ...

    def log(self, record: dict[str, Any]) -> None: ...

    def sub(self, name: str) -> LevelStore: ...


class RunContext(Protocol):
    """What a method may use of the run: data, the model at init, level storage and the shared steps.

    ``model`` is built from the replicate seed and holds the stored init (bit for bit on resume);
    ``init_state`` is that init. ``train_level`` trains whatever requires gradients and checkpoints into
    the level (a ``schedule``, :class:`~ticketsearch.training.MaskSchedule`, moves the masks while it
    trains: the loop applies each change and checkpoints the schedule's state with the masks); ``finish_level`` writes the final weights and ``result.json`` (last, so a level with a
    result is finished); ``run_controls`` trains the requested controls beside a level. Under torchrun the
    storage calls run on rank 0 and answer every rank, and ``shared_mask`` hands every rank rank 0's mask:
    a method that reads and writes only through these, and shares each mask it computes, may declare
    ``distributed = True``.
    """

    hp: RunHparams
    seed: int
    device: torch.device
    data: Any
    model: nn.Module
    init_state: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]
    progress: bool | str
    then_train: bool
    then_train_hp: TrainingHparams | None
    baseline: bool

    def level(self, k: int) -> LevelStore: ...

    def replicate_path(self) -> Path: ...

    def mask_metadata(self, **extra: Any) -> dict[str, Any]: ...

    def save_state(self, path: Path, state: Mapping[str, torch.Tensor], *, keep: bool = False) -> Path: ...

    def load_state(self, path: Path) -> dict[str, torch.Tensor]: ...

    def shared_mask(self, mask: Mask) -> Mask: ...

    def build_model(self, seed: int) -> nn.Module: ...

    def train_level(
        self,
        level: LevelStore,
        model: nn.Module,
        hp: TrainingHparams | None = None,
        *,
        desc: str,
        on_step: Any = None,
        schedule: MaskSchedule | None = None,
    ) -> Any: ...

    def finish_level(self, level: LevelStore, model: nn.Module, res: Any, **extra: Any) -> dict[str, Any]: ...

    def then_train_level(
        self, level: LevelStore, start: Mapping[str, torch.Tensor], mask: Mask, hp: TrainingHparams | None
    ) -> dict[str, Any]: ...

    def run_controls(
        self, k: int, level: LevelStore, mask: Mask, start_state: dict[str, torch.Tensor]
    ) -> dict[str, dict[str, Any]]: ...


def steps_per_epoch(run: RunContext) -> int:
    """Training iterations per epoch of the run's data at its batch size (what ``Nep`` durations mean)."""
    n = int(run.data.x_train.shape[0])
    return max(1, -(-n // run.hp.training.batch_size))


def nearest_level(rows: Sequence[Any], density: float) -> Any:
    """The pruned level whose density is nearest ``density`` on a log scale (IMP's levels are geometric,
    so one run serves every density asked of it)."""
    import math

    cands = [r for r in rows if r["density"] < 1.0] or list(rows)
    return min(cands, key=lambda r: abs(math.log(r["density"]) - math.log(density)))


# -- the strategy -----------------------------------------------------------------------------------------
class Method(ABC):
    """A ticket-finding strategy. Subclasses declare:

    ``kind`` (``oneshot``, ``iterative``, ``learned``), ``fields`` (the PruningHparams fields it reads
    besides :data:`SHARED_FIELDS`), ``knobs`` (``--arg`` name → default; ``None``: accepts any key, for
    plugin scorers that declare nothing), ``default_scope`` (the selection its paper uses) and
    ``citation``. They implement :meth:`run_levels`. Everything a method checks before the first file is
    written goes in :meth:`validate`. ``distributed``: the method runs under torchrun (see
    :class:`RunContext`); one that touches files itself or keeps per-rank state must not say so.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "oneshot"
    fields: ClassVar[tuple[str, ...]] = ()
    knobs: ClassVar[dict[str, Any] | None] = {}
    default_scope: ClassVar[str] = "layerwise"
    citation: ClassVar[str] = ""
    distributed: ClassVar[bool] = False
    source: str = "built-in"
    description: str = ""  # the registry's line for it (``list methods``)

    # -- hparams ---------------------------------------------------------------------------------------
    def canonical(self, hp: RunHparams) -> RunHparams:
        """``hp`` with what this method ignores reset to defaults and its knobs typed: the run's identity.

        ``scope`` "" becomes the method's default, so ``--scope global`` for SNIP names the same run as
        no flag.
        """
        keep = set(SHARED_FIELDS) | set(self.fields)
        default = PruningHparams(method=hp.pruning.method)
        changes = {
            f.name: getattr(hp.pruning, f.name) for f in dataclasses.fields(PruningHparams) if f.name in keep
        }
        pruning = dataclasses.replace(default, **changes)
        if "scope" in keep:
            pruning = dataclasses.replace(pruning, scope=pruning.scope or self.default_scope)
        knobs = self.parse_knobs(hp.args)
        if self.knobs is not None:  # a knob at its default is the same run as no knob
            knobs = {k: v for k, v in knobs.items() if v != self.knobs[k]}
        return hp.replace(pruning=pruning, method_args=tuple(sorted(knobs.items())))

    def parse_knobs(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """``--arg`` values converted like their defaults; an undeclared key is a one-line error."""
        if self.knobs is None:
            return dict(args)
        unknown = sorted(k for k in args if k not in self.knobs)
        if unknown:
            allowed = ", ".join(sorted(self.knobs)) or "none"
            raise ConfigError(
                f"unknown method argument {', '.join(repr(k) for k in unknown)} for method '{self.name}' "
                f"(allowed: {allowed})"
            )
        return {k: coerce_knob(k, v, self.knobs[k]) for k, v in args.items()}

    def identity(self, hp: RunHparams) -> str:
        """The hash naming the run of canonical ``hp``: everything that changes a result of a level."""
        return hp.hash()

    def ignored_fields(self) -> tuple[str, ...]:
        """PruningHparams fields a flag may set that this method does not read (the CLI refuses them)."""
        keep = set(SHARED_FIELDS) | set(self.fields)
        return tuple(f.name for f in dataclasses.fields(PruningHparams) if f.name not in keep)

    def validate(self, hp: RunHparams) -> None:
        """Check everything that can be checked without data or a model (called before any file exists)."""
        hp.validate()

    def recipe(self, model: str, dataset: str) -> TrainingHparams | None:
        """The recipe when no training flag is given; ``None``: the model's own recipe."""
        return None

    def search_space(
        self, trial: Trial, hp: RunHparams, *, density: tuple[float, float] | None = None
    ) -> RunHparams:
        """``hp`` with this method's tunable values drawn from an Optuna ``trial`` (``ticketsearch study``).

        The space lives here, beside the algorithm, because only the method knows which of its values
        matter and over what range. Name each parameter after the hparams field it sets (``lr``,
        ``rate``, ``rewind``, ...): a flag given to ``study`` pins the parameter of that name. ``density``
        is the (low, high) range when the study searches the density too (``--pareto``); ``None`` keeps
        ``hp``'s density unless the density is the method's own knob (edge-popup's k).
        """
        raise ConfigError(
            f"method '{self.name}' declares no search space (a Method's search_space(trial, hp)); "
            "tune it with `find` and fixed values instead"
        )

    # -- the algorithm ---------------------------------------------------------------------------------
    @abstractmethod
    def run_levels(self, run: RunContext) -> list[LevelRow]:
        """Find (and train) the ticket level by level, resuming finished levels from ``run``'s storage."""


# -- the registry -----------------------------------------------------------------------------------------
METHOD_STRATEGIES: Registry[type[Method]] = Registry("method", entry_point_group="ticketsearch.methods")


def register_strategy(name: str, *, description: str | None = None):
    """Class decorator: a built-in strategy under ``name`` (a taken name raises)."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHOD_STRATEGIES.add(name, cls, description=description)
        return cls

    return deco


def _scorers() -> Any:
    from ..scorers import SCORERS

    # a scorer plugin must not take a strategy's name: reserve them before plugins load
    SCORERS.reserve(METHOD_STRATEGIES.names())
    return SCORERS


def method_names() -> list[str]:
    return sorted(set(METHOD_STRATEGIES.names()) | set(_scorers().names()))


def get_method(name: str) -> Method:
    """The method called ``name``: a strategy, or a scorer wrapped in :class:`~.oneshot.OneShot`."""
    from .oneshot import OneShot

    if name in METHOD_STRATEGIES:
        entry = METHOD_STRATEGIES.entry(name)
        method = entry.obj()
        method.source, method.description = entry.source, entry.description
        return method
    scorers = _scorers()
    if name in scorers:
        entry = scorers.entry(name)
        method = OneShot(entry.obj, source=entry.source)
        method.description = entry.description
        return method
    broken = {b.name: b for b in [*METHOD_STRATEGIES.broken(), *scorers.broken()]}
    if name in broken:
        b = broken[name]
        raise UnknownNameError(f"method '{name}' from {b.source} failed to load: {b.error}")
    import difflib

    known = method_names()
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise UnknownNameError(f"unknown method '{name}'{hint} (choose from: {', '.join(known)})")


@dataclass(frozen=True)
class MethodInfo:
    name: str
    kind: str
    scope: str
    source: str
    description: str
    error: str = ""


def list_methods() -> list[MethodInfo]:
    """Every method (strategies and scorers, built-in and plugins), then the plugins that failed to load."""
    rows = []
    for name in method_names():
        m = get_method(name)
        rows.append(MethodInfo(name, m.kind, m.default_scope, m.source, m.description))
    for b in [*METHOD_STRATEGIES.broken(), *_scorers().broken()]:
        rows.append(MethodInfo(b.name, "BROKEN", "-", b.source, "", b.error))
    return rows


# -- search-space helpers (``Method.search_space``) ---------------------------------------------------------
def suggest_lr(trial: Trial, hp: RunHparams, *, factor: float = 10.0) -> RunHparams:
    """The training (or score) learning rate, log-uniform within ``factor`` of the recipe's: recipes are
    good starting points, and a decade either way covers what the papers report."""
    base = hp.training.lr
    lr = trial.suggest_float("lr", base / factor, base * factor, log=True)
    return hp.replace(training=dataclasses.replace(hp.training, lr=float(lr)))


def suggest_density(trial: Trial, hp: RunHparams, density: tuple[float, float] | None) -> RunHparams:
    """The density, log-uniform in ``density`` = (low, high); ``None``: ``hp``'s density stays."""
    if density is None:
        return hp
    d = trial.suggest_float("density", density[0], density[1], log=True)
    return hp.replace(pruning=dataclasses.replace(hp.pruning, density=float(d)))


def suggest_duration(
    trial: Trial, name: str, budget: str, low: float, high: float, *, minimum: int = 0
) -> str:
    """A duration between fractions ``low`` and ``high`` of ``budget``, in the budget's unit (``2ep``,
    ``500it``), so the space reads like the flags; at least ``minimum`` of that unit."""
    n, unit = parse_duration(budget, name="budget")
    lo = max(minimum, round(n * low))
    value = trial.suggest_int(name, lo, max(lo, round(n * high)))
    if isinstance(value, str):  # a pinned flag comes back as given
        return value
    return f"{value}{unit}" if value else "0it"  # zero as the default spells it: the same run, the same hash
