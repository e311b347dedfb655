"""The model registry: ``@register_model``, ``list_models``, ``create_model`` and ``describe``.

timm's pattern (a decorator, pattern listing, tests parametrized over the registry) on top of
:class:`ticketsearch.core.registry.Registry`. Every builder has the signature
``builder(input_shape, num_classes, **kwargs) -> nn.Module``: ``input_shape`` is one sample's shape
without the batch dimension, e.g. ``(1, 28, 28)``, ``(1, 8, 8)``, ``(3, 32, 32)`` or ``(1, 40)``, taken from the
dataset, and a builder that cannot handle a shape raises a one-line :class:`ConfigError`.

Third-party models register through the entry-point group ``ticketsearch.models``; the entry point may name a
:class:`ModelSpec`, a plain builder callable, or a :class:`ModelSource`: a family of models named
``<source>:<argument>`` (``hf:vit,hidden_size=32``), whose argument the source turns into a
:class:`ModelSpec` when the name is looked up. A source is how models that are described rather than
enumerated (any Hugging Face config) get a name that every command, run hash and mask file can carry.
"""

from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from ..core.errors import ConfigError, UnknownNameError
from ..core.hparams import ModelHparams
from ..core.registry import Entry, Registry, _first_doc_line
from ..sparse.layers import prunable_parameters
from .init import INITS, init_weights

__all__ = [
    "MODELS",
    "ModelSpec",
    "ModelRow",
    "ModelSource",
    "register_model",
    "register_model_source",
    "list_models",
    "get_model_spec",
    "create_model",
    "describe",
    "check_input_shape",
    "shape_error",
]

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its builder plus what ``ticketsearch list models`` shows.

    ``input_shapes`` is a human-readable statement of the shapes the builder accepts (e.g.
    ``"(C, H, W), H, W >= 8"``); ``example_input_shape`` is one shape it accepts (used by ``describe`` and the
    registry-wide tests); ``default_dataset`` names the data set the architecture was designed for.
    """

    name: str
    builder: Builder
    description: str
    input_shapes: str
    example_input_shape: tuple[int, ...]
    default_dataset: str | None = None
    paper: str = ""
    # the --init a run gets when none is asked ("" = the project's, ModelHparams().init): an architecture
    # whose own init trains better (a ViT's) says so here, and only its runs are named with it
    default_init: str = ""

    def __call__(self, input_shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> nn.Module:
        return self.builder(input_shape, num_classes, **kwargs)


@dataclass(frozen=True)
class ModelSource:
    """A family of models named ``<name>:<argument>``; ``resolve(argument)`` gives the :class:`ModelSpec`.

    Why a source and not one entry per model: some models are described, not enumerated (a Hugging Face
    config, a size), and the name is all that travels (run hashes, mask metadata, ``export``, ``transfer``
    rebuild a model from its name alone), so the name must say everything that builds it. ``resolve``
    must be cheap and never import a heavy dependency (do that in the spec's builder) and raise a one-line
    :class:`ConfigError` for an argument it cannot read. ``usage`` is how ``list models`` shows the family,
    e.g. ``"hf:<model_type>[,key=value...] | hf:<config.json>"``.
    """

    name: str
    resolve: Callable[[str], ModelSpec]
    description: str
    usage: str


class ModelRegistry(Registry[ModelSpec | Builder | ModelSource]):
    """The model :class:`Registry`, plus names ``<source>:<argument>`` resolved by a :class:`ModelSource`.

    A registered name is looked up first (a plugin may register a name containing ``:``); otherwise the
    part before the first ``:`` must name a source. Resolved names are not listed (``names()`` lists the
    sources themselves), and each lookup resolves afresh: resolution is cheap, and a cache could hide an
    edited config file.
    """

    def entry(self, name: str) -> Entry[ModelSpec | Builder | ModelSource]:
        prefix, sep, argument = name.partition(":") if isinstance(name, str) else ("", "", "")
        if sep and name not in self:
            source = super().entry(prefix) if prefix in self else None
            if source is None or not isinstance(source.obj, ModelSource):
                sources = [e.name for e in self.entries() if isinstance(e.obj, ModelSource)]
                known = f" (model sources: {', '.join(s + ':...' for s in sources)})" if sources else ""
                raise UnknownNameError(f"unknown model source '{prefix}' in model name '{name}'{known}")
            if not argument:
                raise ConfigError(f"model '{name}': say which model, as {source.obj.usage}")
            spec = source.obj.resolve(argument)
            return Entry(name, spec, spec.description, source.source)
        entry = super().entry(name)
        if isinstance(entry.obj, ModelSource):
            raise ConfigError(f"model '{name}' is a family of models: name one as {entry.obj.usage}")
        return entry


MODELS = ModelRegistry("model", entry_point_group="ticketsearch.models")


def register_model(
    name: str,
    *,
    input_shapes: str,
    example_input_shape: tuple[int, ...],
    description: str | None = None,
    default_dataset: str | None = None,
    paper: str = "",
    default_init: str = "",
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(input_shape, num_classes, **kwargs)`` under ``name``.

    Raises ``ValueError`` if the name is taken. ``description`` defaults to the builder's first doc line.
    Returns the builder unchanged, so it stays directly callable.
    """

    def deco(builder: Builder) -> Builder:
        desc = description if description is not None else _first_doc_line(builder)
        spec = ModelSpec(
            name=name,
            builder=builder,
            description=desc,
            input_shapes=input_shapes,
            example_input_shape=tuple(example_input_shape),
            default_dataset=default_dataset,
            paper=paper,
            default_init=default_init,
        )
        MODELS.add(name, spec, description=desc)
        return builder

    return deco


def register_model_source(source: ModelSource) -> ModelSource:
    """Register a :class:`ModelSource` under ``source.name`` (a taken name raises ``ValueError``).

    A plugin does the same with an entry point in group ``ticketsearch.models`` naming a ModelSource.
    """
    MODELS.add(source.name, source, description=source.description)
    return source


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` is a shell glob (``"conv*"``)."""
    return MODELS.names(pattern)


def get_model_spec(name: str) -> ModelSpec | None:
    """The :class:`ModelSpec` of ``name`` (``None`` for a plugin registered as a bare callable).

    ``name`` may be a source's ``<source>:<argument>``; naming the source alone is a ConfigError.
    """
    obj = MODELS.get(name)
    return obj if isinstance(obj, ModelSpec) else None


def model_hparams(name: str, init: str | None = None) -> ModelHparams:
    """The model section of a run: ``init`` as asked, else the model's own default init, else the
    project's. Every place that builds a run (commands, bench suites, transfer matrices, the conformance
    suite) asks here, so a model's default reaches all of them without a branch on its name."""
    if init:
        return ModelHparams(model=name, init=init)
    try:
        spec = get_model_spec(name)
    except ConfigError:  # "auto", an unknown name: validated where the model is built
        spec = None
    return ModelHparams(
        model=name, init=(spec.default_init if spec is not None else "") or ModelHparams().init
    )


# -- shape checks -----------------------------------------------------------------------------------
def shape_error(model: str, input_shape: Sequence[int], supports: str) -> ConfigError:
    """The one-line error a builder raises for a shape it cannot take."""
    return ConfigError(
        f"model '{model}' cannot take input shape {tuple(input_shape)}: it supports {supports}"
    )


def check_input_shape(model: str, input_shape: Sequence[int]) -> tuple[int, ...]:
    """Normalise ``input_shape`` to a non-empty tuple of positive ints, or raise a ConfigError."""
    try:
        shape = tuple(operator.index(d) for d in input_shape)
        ok = len(shape) > 0 and all(d > 0 for d in shape)
    except TypeError:
        ok = False
    if not ok:
        raise ConfigError(
            f"model '{model}': input shape must be a non-empty tuple of positive ints (one sample, no batch "
            f"dimension), got {input_shape!r}"
        )
    return shape


def _check_num_classes(model: str, num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"model '{model}': num_classes must be a positive int, got {num_classes!r}")
    return num_classes


def _check_kwargs(name: str, builder: Builder, kwargs: dict[str, Any]) -> None:
    try:
        sig = inspect.signature(builder)
    except (TypeError, ValueError):  # builtins / C callables: let the call itself complain
        return
    params = list(sig.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    allowed = [p.name for p in params[2:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        opts = ", ".join(allowed) if allowed else "none"
        raise ConfigError(
            f"model '{name}' has no option {', '.join(map(repr, unknown))} (options: {opts}, init)"
        )


# -- creation ---------------------------------------------------------------------------------------
def create_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    init: str = "kaiming_normal",
    **kwargs: Any,
) -> nn.Module:
    """Build the registered model ``name`` for samples of ``input_shape`` and ``num_classes`` outputs.

    ``init`` is one of :data:`ticketsearch.models.INITS` and is applied after the builder (``"default"``
    keeps PyTorch's initialisation). Creation draws only from the global torch RNG, so it is deterministic
    under ``torch.manual_seed`` (seeding is the caller's job). Unknown names raise ``UnknownNameError`` with
    the closest name; bad shapes, classes or options raise ``ConfigError``.
    """
    obj = MODELS.get(name)
    shape = check_input_shape(name, input_shape)
    classes = _check_num_classes(name, num_classes)
    if init not in INITS:
        raise ConfigError(f"model '{name}': unknown init '{init}' (choose from: {', '.join(INITS)})")
    builder = obj.builder if isinstance(obj, ModelSpec) else obj
    _check_kwargs(name, builder, kwargs)
    model = builder(shape, classes, **kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model builder '{name}' returned {type(model).__name__}, expected an nn.Module")
    init_weights(model, init)
    if not hasattr(model, "model_name"):
        model.model_name = name
    return model


class ModelRow(NamedTuple):
    """One row of ``ticketsearch list models``."""

    name: str
    description: str
    input_shapes: str
    prunable_params: int | None  # for example_input_shape and 10 classes; None when unknown
    example_input_shape: tuple[int, ...] | None
    default_dataset: str | None
    source: str


def _count_prunable(spec: ModelSpec, num_classes: int = 10) -> int | None:
    """Prunable weights of the model built on the meta device: no memory, no init, RNG untouched."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = spec.builder(spec.example_input_shape, num_classes)
        return sum(math.prod(p.shape) for p in prunable_parameters(model).values())
    except Exception:  # a describe() row must never fail because one builder is odd on meta
        return None


def describe(pattern: str | None = None) -> list[ModelRow]:
    """Rows (name, description, input shapes, #prunable weights, ...) for every registered model."""
    rows = []
    wanted = set(MODELS.names(pattern))
    for entry in MODELS.entries():
        if entry.name not in wanted:
            continue
        spec = entry.obj
        if isinstance(spec, ModelSource):
            rows.append(
                ModelRow(spec.usage, entry.description, "see the source", None, None, None, entry.source)
            )
        elif isinstance(spec, ModelSpec):
            rows.append(
                ModelRow(
                    entry.name,
                    entry.description,
                    spec.input_shapes,
                    _count_prunable(spec),
                    spec.example_input_shape,
                    spec.default_dataset,
                    entry.source,
                )
            )
        else:
            rows.append(ModelRow(entry.name, entry.description, "?", None, None, None, entry.source))
    return rows
