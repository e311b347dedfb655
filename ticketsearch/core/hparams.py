"""Hyperparameters as frozen dataclasses → CLI flags → a stable hash that names the run directory.

From open_lth: one dataclass per concern, every field a flag, and a hash over every field that changes the
result (not over where results go or which device runs them). Durations are strings with a unit, ``"2ep"``
or ``"500it"``, so a budget reads the same in flags, records and docs.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError

__all__ = [
    "ModelHparams",
    "DatasetHparams",
    "TrainingHparams",
    "PruningHparams",
    "RunHparams",
    "parse_duration",
    "to_iterations",
    "stable_hash",
    "add_dataclass_arguments",
    "dataclass_from_args",
]

_DURATION = re.compile(r"^\s*(\d+)\s*(ep|it)\s*$")


def parse_duration(text: str, *, name: str = "duration") -> tuple[int, str]:
    """``"2ep"`` → (2, "ep"); ``"500it"`` → (500, "it")."""
    m = _DURATION.match(str(text))
    if not m:
        raise ConfigError(f"{name} must look like '10ep' or '500it', got {text!r}")
    return int(m.group(1)), m.group(2)


def to_iterations(text: str, steps_per_epoch: int, *, name: str = "duration") -> int:
    n, unit = parse_duration(text, name=name)
    return n * steps_per_epoch if unit == "ep" else n


@dataclass(frozen=True)
class ModelHparams:
    """Which network, and how its weights are initialised."""

    model: str = "auto"  # "auto": the dataset's default model
    init: str = "kaiming_normal"


@dataclass(frozen=True)
class DatasetHparams:
    """Which data, and how much of the training set is held out for validation (early stopping)."""

    dataset: str = "digits"
    val_size: float = -1.0  # <0: the dataset's default; <1: a fraction; ≥1: a count


@dataclass(frozen=True)
class TrainingHparams:
    """How the weights (or, for supermasks, the scores) are trained."""

    optimizer: str = "adam"  # sgd | adam | adamw
    lr: float = 1.2e-3
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    batch_size: int = 60
    budget: str = "10ep"  # "Nep" or "Nit"
    schedule: str = "constant"  # constant | step | cosine
    warmup: str = "0it"
    milestones: str = ""  # step schedule: comma-separated durations, e.g. "30ep,60ep"
    gamma: float = 0.1
    eval_every: str = "1ep"
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # 0 = off


@dataclass(frozen=True)
class PruningHparams:
    """How the ticket is found: method, target density, rounds, selection rule, rewind point."""

    method: str = "imp"
    density: float = 0.2  # fraction of weights KEPT (sparsity = 1 - density)
    rounds: int = 0  # 0 = method default (IMP: enough levels to reach density; scorers: 1; synflow: 100)
    rate: float = 0.2  # IMP: fraction of the remaining weights pruned per round
    output_rate: float = 0.1  # IMP: the output layer's rate (paper: half the hidden rate); <0: same as rate
    scope: str = "layerwise"  # layerwise | global
    distribution: str = "uniform"  # one-shot layerwise: uniform | erk
    min_layer_density: float = 0.0
    rewind: str = "0it"  # IMP: weights reset to this point of the dense run; 0it = reset to init
    score_batches: int = 1  # data-driven scorers: number of batches of real data
    score_batch_size: int = 0  # 0 = training batch size


@dataclass(frozen=True)
class RunHparams:
    """Everything that determines a result. ``method_args`` holds the method's own knobs."""

    model: ModelHparams = field(default_factory=ModelHparams)
    dataset: DatasetHparams = field(default_factory=DatasetHparams)
    training: TrainingHparams = field(default_factory=TrainingHparams)
    pruning: PruningHparams = field(default_factory=PruningHparams)
    method_args: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["method_args"] = dict(self.method_args)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunHparams:
        return cls(
            model=ModelHparams(**d.get("model", {})),
            dataset=DatasetHparams(**d.get("dataset", {})),
            training=TrainingHparams(**d.get("training", {})),
            pruning=PruningHparams(**d.get("pruning", {})),
            method_args=tuple(sorted(dict(d.get("method_args", {})).items())),
        )

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.method_args)

    def hash(self) -> str:
        return stable_hash(self.to_dict())

    def replace(self, **changes: Any) -> RunHparams:
        return dataclasses.replace(self, **changes)


def stable_hash(obj: Any, length: int = 12) -> str:
    """sha256 of canonical JSON: the same in every process and Python version (no ``hash()`` salt)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


# -- dataclass <-> argparse -------------------------------------------------------------------------------
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    return hints.get(f.name, str)


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    skip: tuple[str, ...] = (),
    help_overrides: dict[str, str] | None = None,
) -> None:
    """One flag per field, default None so "not given" can be told apart and filled from presets."""
    help_overrides = help_overrides or {}
    for f in fields(cls):
        if f.name in skip:
            continue
        typ = _field_type(cls, f)
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = help_overrides.get(f.name, f"(default: {default})")
        if help_text is None:
            help_text = f"(default: {default})"
        if typ is bool:
            parser.add_argument(
                _flag(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            conv = typ if typ in (int, float) else str
            parser.add_argument(
                _flag(f.name), dest=f.name, type=conv, default=None, metavar=f.name.upper(), help=help_text
            )


def dataclass_from_args(cls: type, ns: argparse.Namespace | dict[str, Any], base: Any = None) -> Any:
    """Build ``cls`` from parsed flags; fields not given keep ``base``'s value (or the default)."""
    values = vars(ns) if isinstance(ns, argparse.Namespace) else dict(ns)
    changes = {f.name: values[f.name] for f in fields(cls) if values.get(f.name) is not None}
    return dataclasses.replace(base if base is not None else cls(), **changes)
