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
import math
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
    "LEGACY_PRUNING_FIELDS",
    "parse_duration",
    "to_iterations",
    "stable_hash",
    "training_identity",
    "LATER_TRAINING_DEFAULTS",
    "add_dataclass_arguments",
    "dataclass_from_args",
    "coerce_knob",
    "check_seed",
    "MAX_SEED",
    "PRECISIONS",
]

# float32 is what the optimizers compute in: a value that is finite in Python but not in float32 (lr 1e39)
# would turn every weight into inf at the first step, so it is refused up front.
_FLOAT32_MAX = 3.4028234663852886e38
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit integer

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

    def validate(self) -> None:
        from_choices("init", self.init, INITS)


@dataclass(frozen=True)
class DatasetHparams:
    """Which data, and how much of the training set is held out for validation (early stopping)."""

    dataset: str = "digits"
    val_size: float = -1.0  # <0: the dataset's default; <1: a fraction; ≥1: a count
    resize: int = 0  # images resampled to resize × resize (0: native), so tickets move between image sizes

    def validate(self) -> None:
        v = finite("val_size", self.val_size)
        if v >= 1 and v != int(v):
            raise ConfigError(
                f"val_size must be a fraction in (0, 1) or a whole count, got {self.val_size!r}"
            )
        if isinstance(self.resize, bool) or not isinstance(self.resize, int) or not 0 <= self.resize <= 1024:
            raise ConfigError(
                f"resize must be a whole number in [0, 1024] (0: native size), got {self.resize!r}"
            )


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
    # fp32 | bf16 (autocast of forward + loss; weights and optimizer state stay fp32). It changes results,
    # so it is hashed, but only when not fp32: runs named before the field existed keep their names.
    precision: str = "fp32"
    # evaluate before the first step, so the history opens with the init's accuracy. False saves one
    # evaluation per training where only trained accuracies are read (bench suites: a third of the quick
    # suite's evaluation time); the weights train identically, but the history differs, so it is hashed,
    # only when False (as precision).
    eval_start: bool = True

    def validate(self) -> None:
        """Every value checked before anything is written: a bad one must not leave a started run dir."""
        if not isinstance(self.eval_start, bool):
            raise ConfigError(f"eval_start must be true or false, got {self.eval_start!r}")
        from_choices("optimizer", self.optimizer, OPTIMIZERS)
        from_choices("precision", self.precision, PRECISIONS)
        from_choices("schedule", self.schedule, SCHEDULES)
        if not finite("lr", self.lr) > 0:
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= finite("momentum", self.momentum) < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if finite("weight_decay", self.weight_decay) < 0:
            raise ConfigError(f"weight_decay must be ≥ 0, got {self.weight_decay}")
        if not finite("gamma", self.gamma) > 0:
            raise ConfigError(f"gamma must be a positive number, got {self.gamma}")
        if not 0 <= finite("label_smoothing", self.label_smoothing) < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if finite("grad_clip", self.grad_clip) < 0:
            raise ConfigError(f"grad_clip must be ≥ 0 (0: off), got {self.grad_clip}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if parse_duration(self.budget, name="budget")[0] < 1:
            raise ConfigError(f"budget must be at least one iteration, got {self.budget!r}")
        parse_duration(self.warmup, name="warmup")
        if parse_duration(self.eval_every, name="eval_every")[0] < 1:
            raise ConfigError(f"eval_every must be at least one iteration, got {self.eval_every!r}")
        for m in self.milestones.split(","):
            if m.strip():
                parse_duration(m, name="milestone")


@dataclass(frozen=True)
class PruningHparams:
    """What every method's run is asked: method, target density, and the selection rule.

    A method's own hyperparameters (IMP's rate and rewind point, early-bird's stopping rule, ...) are not
    here: each method declares them in its own dataclass (``Method.hparams_cls``) and they travel in
    :attr:`RunHparams.method_hparams`.
    """

    method: str = "imp"
    density: float = 0.2  # fraction of weights KEPT (sparsity = 1 - density)
    rounds: int = 0  # 0 = method default (IMP: enough levels to reach density; scorers: 1; synflow: 100)
    scope: str = ""  # layerwise | global; "" = the method's own default (SNIP/GraSP/SynFlow: global)
    distribution: str = "uniform"  # one-shot layerwise: uniform | erk | smart-ratio
    min_layer_density: float = 0.0
    score_batches: int = 1  # data-driven scorers: number of batches of real data
    score_batch_size: int = 0  # 0 = training batch size
    allow_empty_layers: bool = False  # a mask that keeps nothing of a layer is an error unless asked for
    # unstructured | N:M | block:RxC (core.pattern). It changes the mask, so it is hashed, but only when not
    # the default (as TrainingHparams.precision): every run named before the field existed keeps its name.
    pattern: str = "unstructured"
    allow_dense_layers: bool = False  # a layer whose shape cannot hold the pattern is kept whole, not refused

    def validate(self) -> None:
        """The values every method shares; a method checks the meaning of its own on top."""
        from .pattern import parse_pattern
        from .select import DISTRIBUTIONS, SCOPES, check_density

        check_density(self.density)
        pat = parse_pattern(self.pattern)
        if self.density > pat.max_density + 1e-12:
            raise ConfigError(
                f"density {self.density:g} is above what pattern {pat} keeps ({pat.max_density:g}); "
                f"use --density {pat.max_density:g} or lower"
            )
        if not isinstance(self.allow_dense_layers, bool):
            raise ConfigError(f"allow_dense_layers must be true or false, got {self.allow_dense_layers!r}")
        if self.scope:
            from_choices("scope", self.scope, SCOPES)
        from_choices("distribution", self.distribution, DISTRIBUTIONS)
        if not 0 <= finite("min_layer_density", self.min_layer_density) <= 1:
            raise ConfigError(f"min_layer_density must be in [0, 1], got {self.min_layer_density}")
        for name in ("rounds", "score_batches", "score_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be a whole number ≥ 0, got {v!r}")
        if self.score_batches < 1:
            raise ConfigError(f"score_batches must be ≥ 1, got {self.score_batches}")


# Fields that lived in PruningHparams until IMP and early-bird declared their own. Every run directory is
# named by a hash of ``to_dict()``, which therefore still writes each of them in the "pruning" section, at
# the method's value or (a method that does not declare it) the old default: every run named before keeps
# its name, and hparams.json reads as before. A method's other own fields go in a "method_hparams" section,
# written only when not empty, so no run named before gains a key.
LEGACY_PRUNING_FIELDS: dict[str, Any] = {
    "rate": 0.2,
    "output_rate": 0.1,
    "rewind": "0it",
    "retrain": "reset",
    "eb_every": "1ep",
    "eb_eps": 0.1,
}


@dataclass(frozen=True)
class RunHparams:
    """Everything that determines a result. ``method_args`` holds the method's ``--arg`` knobs;
    ``method_hparams`` its declared hyperparameters (``Method.hparams_cls``), as sorted (name, value)
    pairs, so this module needs no method to hold them."""

    model: ModelHparams = field(default_factory=ModelHparams)
    dataset: DatasetHparams = field(default_factory=DatasetHparams)
    training: TrainingHparams = field(default_factory=TrainingHparams)
    pruning: PruningHparams = field(default_factory=PruningHparams)
    method_args: tuple[tuple[str, Any], ...] = ()
    method_hparams: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["method_args"] = dict(self.method_args)
        own = dict(d.pop("method_hparams"))
        for name, default in LEGACY_PRUNING_FIELDS.items():  # where they always were (see above)
            d["pruning"][name] = own.pop(name, default)
        if own:
            d["method_hparams"] = own
        d["training"] = training_identity(d["training"])
        for name, default in PATTERN_DEFAULTS.items():  # likewise for the pattern (see PruningHparams)
            if d["pruning"].get(name) == default:
                del d["pruning"][name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunHparams:
        pruning = dict(d.get("pruning", {}))
        own = dict(d.get("method_hparams", {}))
        for name, default in LEGACY_PRUNING_FIELDS.items():
            if name in pruning:
                value = pruning.pop(name)
                if value != default:  # at the old default: what to_dict writes for an absent value
                    own.setdefault(name, value)
        return cls(
            model=ModelHparams(**d.get("model", {})),
            dataset=DatasetHparams(**d.get("dataset", {})),
            training=TrainingHparams(**d.get("training", {})),
            pruning=PruningHparams(**pruning),
            method_args=tuple(sorted(dict(d.get("method_args", {})).items())),
            method_hparams=tuple(sorted(own.items())),
        )

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.method_args)

    @property
    def own(self) -> dict[str, Any]:
        """The method's declared hyperparameters that were set (``Method.own`` fills the defaults)."""
        return dict(self.method_hparams)

    def hash(self) -> str:
        return stable_hash(self.to_dict())

    def replace(self, **changes: Any) -> RunHparams:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        self.model.validate()
        self.dataset.validate()
        self.training.validate()
        self.pruning.validate()


# PruningHparams fields left out of the hash at their default, so runs named before them keep their names
PATTERN_DEFAULTS: dict[str, Any] = {"pattern": "unstructured", "allow_dense_layers": False}

# the vocabularies the training code implements; checked here so a bad value fails before any file exists
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")
INITS = ("kaiming_normal", "kaiming_uniform", "signed_constant", "default")
RETRAIN_MODES = ("reset", "rewind", "finetune", "lr-rewind")
PRECISIONS = ("fp32", "bf16")


def from_choices(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r} (choose from: {', '.join(choices)})")
    return value


def finite(name: str, value: Any) -> float:
    """A float32-finite number: nan, inf and values that overflow float32 (1e39) are refused by name."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(v) or abs(v) > _FLOAT32_MAX:
        raise ConfigError(f"{name} must be a finite number (float32 range, |x| ≤ 3.4e38), got {value!r}")
    return v


def check_seed(seed: Any) -> int:
    """Seeds are whole numbers in [0, 2^63 - 1]: what torch.manual_seed and the run directory names take."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be a whole number in [0, 2^63 - 1], got {seed!r}")
    return seed


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def coerce_knob(name: str, value: Any, default: Any, cast: Any = None) -> Any:
    """A method knob (``--arg name=value``) converted like its default; the one parser every method uses.

    Booleans accept true/false/yes/no/on/off/1/0; integers refuse fractions; floats must be finite.
    """
    kind = cast or (type(default) if default is not None else None)
    if kind is None:
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        low = str(value).strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ConfigError(f"method argument {name}={value!r} is not a boolean (true/false)")
    try:
        if kind is int:
            f = float(value)
            if isinstance(value, bool) or f != int(f):
                raise ValueError
            return int(f)
        if kind is float:
            return finite(f"method argument {name}", value)
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"method argument {name}={value!r} is not a valid {kind.__name__}") from None


# TrainingHparams fields added after runs were named: at these defaults they stay out of every hash, so no
# run named before a field existed is renamed
LATER_TRAINING_DEFAULTS: dict[str, Any] = {"precision": "fp32", "eval_start": True}


def training_identity(d: dict[str, Any]) -> dict[str, Any]:
    """``asdict(TrainingHparams)`` as it enters a hash: the later fields left out at their defaults."""
    return {
        k: v for k, v in d.items() if not (k in LATER_TRAINING_DEFAULTS and v == LATER_TRAINING_DEFAULTS[k])
    }


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
