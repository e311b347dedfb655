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
from ..core.hparams import (
    LEGACY_PRUNING_FIELDS,
    PruningHparams,
    RunHparams,
    TrainingHparams,
    coerce_knob,
    parse_duration,
)
from ..core.mask import Mask
from ..core.pattern import parse_pattern
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
    "nearest_ticket",
    "dense_hparams",
    "SmallestSearch",
    "OwnHparam",
    "own_hparams",
]

# what every method reads: the target and the selection rule's guard
SHARED_FIELDS = (
    "method",
    "density",
    "min_layer_density",
    "allow_empty_layers",
    "pattern",
    "allow_dense_layers",
)


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


def nearest_ticket(rows: Sequence[Any], density: float) -> Any:
    """The one rule for "the ticket at density d": among the ticket levels (level > 0; a run with only a
    level 0 answers with it), the one whose density is nearest ``density`` on a log scale, the later level
    on a tie (a moving-mask method's level 2, its mask retrained from init, over level 1 at the same
    density). A method with one ticket level answers with it whatever ``density`` is; IMP's levels are
    geometric, so one run serves every density asked of it. ``rows``: :class:`LevelRow` s or their dicts."""
    import math

    def level(r: Any) -> int:
        return int(r.level if isinstance(r, LevelRow) else r.get("level", 1))

    cands = [r for r in rows if level(r) > 0] or list(rows)
    if not cands:
        raise ValueError("no level to choose a ticket from")
    return min(
        reversed(cands), key=lambda r: abs(math.log(max(float(r["density"]), 1e-300)) - math.log(density))
    )


def nearest_level(rows: Sequence[Any], density: float) -> Any:
    """The level answering ``density`` (:func:`nearest_ticket`; kept for scripts that import it)."""
    return nearest_ticket(rows, density)


# IMP at density 1 is its level 0 alone: the dense network every comparison is made against
DENSE_METHOD = "imp"


def dense_hparams(hp: RunHparams) -> RunHparams:
    """The run whose level 0 is the dense network trained as ``hp.training`` says (IMP asked for density 1
    prunes nothing): bench's dense cells, the transfer matrix's dense rows and ``smallest``'s reference."""
    return hp.replace(pruning=PruningHparams(method=DENSE_METHOD, density=1.0), method_args=())


class SmallestSearch(Protocol):
    """What ``ticketsearch smallest`` hands :meth:`Method.smallest`: the search's settings and its steps.

    A probe is one density tried on every seed (mean validation accuracy decides, through ``accept``);
    every run is an ordinary cached run, so asking twice costs nothing.
    """

    hp: RunHparams  # the method's hparams as the user gave them
    seeds: list[int]
    min_density: float
    max_density: float  # 1, or N/M under an N:M --pattern: no density above it is asked for
    precision: float  # bisect until good / bad <= 1 + precision
    max_probes: int
    out_dir: Path | None  # where probe masks may be written (None: nowhere)

    def runs(self, hp: RunHparams) -> list[Any]:
        """``run_find(hp)`` for every seed: one run summary (``.run_dir``, ``.rows``) per seed."""
        ...

    def train_masks(self, mask_paths: Sequence[Path]) -> list[Any]:
        """Train the mask of each seed (``train --mask``, from the init its sidecar names): a row per seed."""
        ...

    def probe(self, rows: Sequence[Any], density: float, source: str) -> Any:
        """A probe from one ticket row per seed."""
        ...

    def accept(self, probe: Any) -> bool:
        """Within tolerance of the dense network (validation accuracy)."""
        ...

    def bisect(self, evaluate: Any, *, good: float, bad: float) -> tuple[float, list[Any]]:
        """Bisect on log-density between an accepted and a rejected density; (last accepted, probes)."""
        ...

    def bisect_densities(self) -> tuple[Any, list[Any], str]:
        """The default walk: bisect on log-density between dense (``max_density`` under N:M, tried first)
        and ``min_density``, one fresh run per density; returns (answer probe or None, probes, note)."""
        ...

    def load_state(self, path: Path) -> dict[str, torch.Tensor]: ...


# -- the strategy -----------------------------------------------------------------------------------------
class Method(ABC):
    """A ticket-finding strategy. Subclasses declare:

    ``kind`` (a display label for ``list methods``: ``oneshot``, ``iterative``, ``learned``, ...; nothing
    decides anything by it), ``fields`` (the PruningHparams fields it reads besides
    :data:`SHARED_FIELDS`), ``knobs`` (``--arg`` name → default; ``None``: accepts any key, for plugin
    scorers that declare nothing), ``default_scope`` (the selection its paper uses) and ``citation``. They
    implement :meth:`run_levels`. Everything a method checks before the first file is written goes in
    :meth:`validate`. ``distributed``: the method runs under torchrun (see :class:`RunContext`); one that
    touches files itself or keeps per-rank state must not say so.

    Capabilities answer what other packages ask of a method, so none of them compares a name or a kind:
    ``trains_weights`` (the ticket's reported accuracy is of trained weights; False for a supermask, whose
    weights stay at init), ``accepts_controls`` (``--controls``), ``accepts_then_train``
    (``--then-train``), ``sanity_checks`` (which of Frankle et al. 2021's checks ``bench`` runs),
    ``levels_serve_densities`` (one run's levels answer every density down to its own), and the hooks
    :meth:`ticket_for`, :meth:`dense_baseline`, :meth:`inverted` and :meth:`smallest`.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "oneshot"
    fields: ClassVar[tuple[str, ...]] = ()
    hparams_cls: ClassVar[type | None] = None
    """The method's own hyperparameters: a frozen dataclass, one field per value (with its default and
    ``metadata={"help": ...}``, which becomes the flag's help; ``"flag"``: another flag name; ``"duration"``:
    a bare number means iterations), and an optional ``validate()``. Each field is a ``find`` flag, is set by
    name in bench suites and studies, and enters this method's run identity only."""
    knobs: ClassVar[dict[str, Any] | None] = {}
    default_scope: ClassVar[str] = "layerwise"
    default_distribution: ClassVar[str] = "uniform"
    """The layerwise densities when ``--distribution`` is not given (RigL and SET: the paper's ERK)."""
    citation: ClassVar[str] = ""
    distributed: ClassVar[bool] = False
    source: str = "built-in"
    description: str = ""  # the registry's line for it (``list methods``)

    # -- capabilities: what other packages ask ----------------------------------------------------------
    trains_weights: ClassVar[bool] = True
    """The ticket's weights are trained by the run; False: its accuracy is of the weights at init (a
    supermask), so a transfer first evaluates them untrained."""
    accepts_controls: ClassVar[bool] = True
    """``--controls`` (reinit, random mask) compare something: they retrain the ticket's weights."""
    accepts_then_train: ClassVar[bool] = False
    """``--then-train`` means something: the ticket's weights were never trained, so train them after."""
    sanity_checks: ClassVar[tuple[str, ...]] = ()
    """Frankle et al. 2021's checks that ``bench`` runs for this method: ``reinit`` and ``shuffle`` (the
    controls), ``invert`` (the ranking turned upside down, :meth:`inverted`). Empty: none apply (IMP is
    the reference they are measured against; a supermask's weights are untrained)."""
    accepts_pattern: ClassVar[bool] = False
    """Its masks are made under ``--pattern`` (N:M, blocks): every selection it does passes the pattern to
    ``core.select``. False: a pattern other than unstructured is refused in one line by :meth:`validate`."""
    find_cost_includes_training: ClassVar[bool] = False
    """A ticket's ``cost_to_find`` already counts the training that produced its reported accuracy (IMP:
    every level through the ticket's own); False: the ticket's own training comes on top of it, which is
    how ``bench`` adds up a cell's whole cost."""
    levels_serve_densities: ClassVar[bool] = False
    """One run's levels answer every density down to the one it ran to (IMP): a caller asking several
    densities runs once at the lowest and takes :meth:`ticket_for` each."""

    def ticket_for(self, rows: Sequence[Any], density: float) -> Any:
        """The row that is this method's ticket at ``density``: :func:`nearest_ticket`, the one rule
        every package uses (override only if a level other than the nearest is the ticket)."""
        return nearest_ticket(rows, density)

    def default_pruning(self, **values: Any) -> PruningHparams:
        """This method's :class:`PruningHparams` at its own defaults (``default_distribution``), under
        ``values``: what a command, suite or matrix starts from before the user's values. (The dataclass's
        own defaults stay those of every run named so far.)"""
        return PruningHparams(**{"method": self.name, "distribution": self.default_distribution, **values})

    def dense_baseline(self, hp: RunHparams, weights: TrainingHparams | None = None) -> RunHparams:
        """The run whose level 0 is the dense network this method's tickets are compared with: weights
        trained as ``hp.training`` says. ``weights`` is for methods whose ``hp.training`` trains something
        else (a supermask's scores): how the dense network trains its weights instead."""
        return dense_hparams(hp)

    def inverted(self, hp: RunHparams) -> RunHparams:
        """``hp`` with the ranking inverted (the ``invert`` sanity check); only for methods listing it."""
        raise ConfigError(
            f"method '{self.name}' has no inverted ranking (its sanity_checks do not list invert)"
        )

    def smallest(self, search: SmallestSearch) -> tuple[Any, list[Any], str]:
        """How ``ticketsearch smallest`` walks this method: by default a bisection on log-density between
        the dense network and ``search.min_density``, one run per density; returns (the answer probe or
        None, every probe, a note)."""
        return search.bisect_densities()

    # -- hparams ---------------------------------------------------------------------------------------
    def own_fields(self) -> tuple[str, ...]:
        """The names of this method's own hyperparameters (the fields of ``hparams_cls``)."""
        return tuple(f.name for f in dataclasses.fields(self.hparams_cls)) if self.hparams_cls else ()

    def own(self, hp: RunHparams) -> Any:
        """This method's own hyperparameters in ``hp`` as its ``hparams_cls`` (defaults for what is not
        set; values of other methods' fields ignored), or None when it declares none."""
        if self.hparams_cls is None:
            return None
        names = set(self.own_fields())
        return self.hparams_cls(**{k: v for k, v in hp.method_hparams if k in names})

    def with_hparams(self, hp: RunHparams, **values: Any) -> RunHparams:
        """``hp`` with values set by name, each where it lives: a shared ``PruningHparams`` field or one of
        this method's own. How bench suites, studies and flags set a value without knowing which it is; a
        name that is neither is a one-line error naming what is allowed."""
        shared = {f.name for f in dataclasses.fields(PruningHparams)} - {"method"}
        own_names = self.own_fields()
        unknown = sorted(k for k in values if k not in shared and k not in own_names)
        if unknown:
            allowed = ", ".join(sorted(shared | set(own_names)))
            raise ConfigError(
                f"unknown hyperparameter {', '.join(repr(k) for k in unknown)} for method '{self.name}' "
                f"(allowed: {allowed})"
            )
        pruning = dataclasses.replace(hp.pruning, **{k: v for k, v in values.items() if k in shared})
        own = {**dict(hp.method_hparams), **{k: v for k, v in values.items() if k in own_names}}
        return hp.replace(pruning=pruning, method_hparams=tuple(sorted(own.items())))

    def canonical(self, hp: RunHparams) -> RunHparams:
        """``hp`` with what this method ignores reset to defaults and its knobs typed: the run's identity.

        ``scope`` "" becomes the method's default, so ``--scope global`` for SNIP names the same run as
        no flag. An own hyperparameter is kept only where leaving it out would hash differently (a value
        other than its default; for a field that used to be shared, other than the old shared default,
        which ``RunHparams.to_dict`` writes for it): a field added later at its default renames no run.
        """
        keep = set(SHARED_FIELDS) | set(self.fields)
        default = PruningHparams(method=hp.pruning.method)
        changes = {
            f.name: getattr(hp.pruning, f.name) for f in dataclasses.fields(PruningHparams) if f.name in keep
        }
        pruning = dataclasses.replace(default, **changes)
        if "scope" in keep:
            pruning = dataclasses.replace(pruning, scope=pruning.scope or self.default_scope)
        pat = parse_pattern(pruning.pattern)  # "2:4" and " 2:4" name one run; dense layers need a pattern
        pruning = dataclasses.replace(
            pruning, pattern=str(pat), allow_dense_layers=pruning.allow_dense_layers and pat.structured
        )
        knobs = self.parse_knobs(hp.args)
        if self.knobs is not None:  # a knob at its default is the same run as no knob
            knobs = {k: v for k, v in knobs.items() if v != self.knobs[k]}
        own: dict[str, Any] = {}
        if self.hparams_cls is not None:
            values, defaults = self.own(hp), self.hparams_cls()
            for name in self.own_fields():
                v = getattr(values, name)
                if v != LEGACY_PRUNING_FIELDS.get(name, getattr(defaults, name)):
                    own[name] = v
        return hp.replace(
            pruning=pruning,
            method_args=tuple(sorted(knobs.items())),
            method_hparams=tuple(sorted(own.items())),
        )

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
        """PruningHparams fields a flag may set that this method does not read (the CLI refuses them, and
        other methods' own hyperparameters)."""
        keep = set(SHARED_FIELDS) | set(self.fields)
        return tuple(f.name for f in dataclasses.fields(PruningHparams) if f.name not in keep)

    def validate(self, hp: RunHparams) -> None:
        """Check everything that can be checked without data or a model (called before any file exists)."""
        hp.validate()
        if parse_pattern(hp.pruning.pattern).structured and not self.accepts_pattern:
            raise ConfigError(
                f"method '{self.name}' does not support --pattern {hp.pruning.pattern} (its masks are not "
                "made by core.select under a pattern); leave --pattern unstructured"
            )
        own = self.own(hp)
        if own is not None and callable(getattr(own, "validate", None)):
            own.validate()

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
        # an entry-point class was never decorated (and may inherit a built-in's name): it is the name it
        # was registered under, so messages and records say which method they are about
        method.name = name  # type: ignore[misc]
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
class OwnHparam:
    """One method-declared hyperparameter as the CLI sees it: its flag, type, default, help and the
    methods that declare it (a name several methods declare, like ``rewind``, is one flag)."""

    name: str
    flag: str
    type: Any
    default: Any
    help: str
    duration: bool
    methods: tuple[str, ...]

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def rewind_field() -> Any:
    """The ``rewind`` hyperparameter IMP and early-bird both declare: one ``--rewind-iter`` flag, so its
    default and help are written once (each dataclass needs a field object of its own)."""
    return dataclasses.field(
        default="0it",
        metadata={
            "help": "IMP, early-bird and cs: rewind kept weights to this point of the first training (0 = reset to "
            "init), e.g. 500 or 1ep (a bare number means iterations)",
            "flag": "--rewind-iter",
            "duration": True,
        },
    )


def own_hparams() -> dict[str, OwnHparam]:
    """Every strategy's own hyperparameters by name (built-ins and plugins), first declaration's flag,
    type and help."""
    import typing

    out: dict[str, OwnHparam] = {}
    for name in METHOD_STRATEGIES.names():
        cls = METHOD_STRATEGIES.get(name)
        hcls = getattr(cls, "hparams_cls", None)
        if hcls is None:
            continue
        hints = typing.get_type_hints(hcls)
        for f in dataclasses.fields(hcls):
            if f.name in out:
                prev = out[f.name]
                out[f.name] = dataclasses.replace(prev, methods=(*prev.methods, name))
                continue
            out[f.name] = OwnHparam(
                name=f.name,
                flag=str(f.metadata.get("flag") or "--" + f.name.replace("_", "-")),
                type=hints.get(f.name, str),
                default=f.default,
                help=str(f.metadata.get("help") or f"(default: {f.default})"),
                duration=bool(f.metadata.get("duration")),
                methods=(name,),
            )
    return out


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
