"""Benchmark suites as data: datasets × models × method variants × densities × seeds, on equal terms.

A suite is a JSON (or TOML) document; the built-in ones ship in ``ticketsearch/bench/suites/``. Every
name in it is checked before any training (an unknown method, model or dataset fails in one line naming
it). A method entry is a name (``"snip"``) or a variant::

    {"name": "imp-rewind", "method": "imp", "pruning": {"rewind": "1ep"}}
    {"name": "supermask", "method": "supermask", "then_train": true}
    {"name": "imp", "method": "imp", "controls": ["reinit"]}
    {"name": "supermask-300ep", "method": "supermask", "training": {"budget": "300ep"}}
    {"name": "bernoulli", "method": "supermask-bernoulli", "densities": [0.5], "metrics": ["learned_density"]}
    {"name": "snip-1:4", "method": "snip", "pruning": {"pattern": "1:4"}, "densities": [0.25, 0.1]}

``pruning`` sets shared fields (``pattern``, ``scope``, ...) and the method's own by name.

A variant's optional fields let one suite hold a grid that a one-off script used to: ``densities`` (its own,
instead of the suite's), ``training`` (overrides of the recipe it trains with: the weights', or a learned
method's scores'), ``controls`` (the runner's controls beside each ticket, asked of any method that
``accepts_controls``, with or without ``sanity``) and ``metrics`` (fields of the ticket's result kept in
each cell's record). An N:M variant cannot be asked for more than N/M: a suite that does is refused in one
line, naming the variant, before anything runs or is queued. At their defaults the optional fields are left
out of :meth:`Suite.saved`, so a suite written before they existed keeps its queue name (``bench
--storage``) and its saved form.

Every variant of a method with scores also gets the sanity checks of Frankle et al. 2021 when the suite
asks for them (``"sanity": true``): the ticket's mask on a fresh init (``reinit``), the mask shuffled
within each layer (``shuffle``) and, for one-shot scorers, the inverted ranking (``invert``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, DataError
from ..core.hparams import RunHparams, TrainingHparams, check_seed
from ..core.pattern import parse_pattern
from ..core.select import check_density

__all__ = [
    "Suite",
    "DatasetEntry",
    "Variant",
    "Anchor",
    "SmallestSpec",
    "load_suite",
    "list_suites",
    "suite_from_dict",
    "suite_from_saved",
    "SUITES_DIR",
    "VARIANT_CONTROLS",
    "EVALUATE",
]

SUITES_DIR = Path(__file__).parent / "suites"


@dataclass(frozen=True)
class DatasetEntry:
    dataset: str
    model: str
    training: dict[str, Any] = field(default_factory=dict)  # overrides of the model's recipe (weights)
    score_budget: str = ""  # learned methods: their score recipe's budget ("" = the recipe's)
    resize: int = 0
    requires: str = ""  # a sentence shown when the data is missing (CIFAR-10)


# a suite's ``evaluate``: each recipe's own schedule, or once at the end of every training
EVALUATE = ("", "end")

# a variant's ``controls`` (the names ``find --controls`` takes) -> the sanity check its record holds them as
VARIANT_CONTROLS = {"reinit": "reinit", "random_mask": "shuffle"}


@dataclass(frozen=True)
class Variant:
    name: str
    method: str
    pruning: dict[str, Any] = field(default_factory=dict)
    args: dict[str, Any] = field(default_factory=dict)
    then_train: bool = False
    # added later: at their defaults they are not in Suite.saved (queue names and suite.json stay as they were)
    densities: tuple[float, ...] = ()  # this variant's own densities; () = the suite's
    training: dict[str, Any] = field(default_factory=dict)  # overrides of the recipe it trains with
    controls: tuple[str, ...] = ()  # controls beside each ticket (VARIANT_CONTROLS), besides any sanity
    metrics: tuple[str, ...] = ()  # result fields of the ticket kept in each cell's record


_LATER_VARIANT_FIELDS = ("densities", "training", "controls", "metrics")


@dataclass(frozen=True)
class Anchor:
    """A published number the suite can be held against."""

    dataset: str
    variant: str
    density: float
    accuracy: float
    source: str


@dataclass(frozen=True)
class SmallestSpec:
    """The suite's "how small can it get" section (``ticketsearch.smallest`` per dataset and variant)."""

    variants: tuple[str, ...] = ()
    tolerance: float = 0.5
    min_density: float = 1e-3
    precision: float = 0.1


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    datasets: tuple[DatasetEntry, ...]
    variants: tuple[Variant, ...]
    densities: tuple[float, ...]
    seeds: tuple[int, ...]
    sanity: bool = False
    anchors: tuple[Anchor, ...] = ()
    smallest: SmallestSpec | None = None
    # when every training of the suite is evaluated: "" = as its recipe says (from iteration 0, every
    # eval_every), "end" = once, when it ends (the suite reads only trained accuracies, so an early-stopping
    # point and the init's accuracy are not computed). Added later: left out of the saved form when "".
    evaluate: str = ""

    def densities_of(self, variant: Variant) -> tuple[float, ...]:
        """The densities a variant's cells ask: its own, else the suite's."""
        return variant.densities or self.densities

    def saved(self) -> dict[str, Any]:
        """The suite as saved and hashed (a queue's spec, ``suite.json``): a variant field added later is
        left out while it holds its default, so every suite written before it existed keeps its spec hash
        and its saved form."""
        d = dataclasses.asdict(self)
        for v in d["variants"]:
            for name in _LATER_VARIANT_FIELDS:
                if not v[name]:  # every later field's default is empty
                    del v[name]
        if not d["evaluate"]:
            del d["evaluate"]
        return d

    def validate(self) -> None:
        """Every name and value, before any training."""
        from ..data import DATASETS
        from ..methods import get_method
        from ..models import MODELS

        if not self.datasets or not self.variants or not self.densities or not self.seeds:
            raise ConfigError(f"suite '{self.name}' needs datasets, methods, densities and seeds")
        if self.evaluate not in EVALUATE:
            raise ConfigError(
                f"suite '{self.name}': unknown evaluate {self.evaluate!r} (choose from: "
                f"{', '.join(repr(e) for e in EVALUATE)})"
            )
        for d in self.datasets:
            DATASETS.entry(d.dataset)
            MODELS.entry(d.model)
            _training(d.training, f"suite '{self.name}' dataset '{d.dataset}'").validate()
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ConfigError(f"suite '{self.name}' names a method variant twice: {names}")
        for p in self.densities:
            check_density(p, name="suite density")
        for v in self.variants:
            dens = self.densities_of(v)
            for p in v.densities:
                check_density(p, name=f"density of suite method {v.name!r}")
            method = get_method(v.method)  # its values by name: shared fields or the method's own
            base = RunHparams(pruning=method.default_pruning(method=v.method, density=min(dens)))
            hp = method.with_hparams(base, **v.pruning)
            pat = parse_pattern(hp.pruning.pattern)
            over = [p for p in dens if p > pat.max_density + 1e-12]
            if over:  # a density sweep stops at N/M: say so before anything is queued
                raise ConfigError(
                    f"suite '{self.name}': method {v.name!r} asks density {over[0]:g}, above what pattern {pat} "
                    f'keeps ({pat.max_density:g}); give it its own "densities" (≤ {pat.max_density:g})'
                )
            hp.pruning.validate()
            if pat.structured:  # the method's own refusals of a pattern (none, or a knob that cannot keep it)
                method.validate(method.canonical(hp.replace(method_args=tuple(sorted(v.args.items())))))
            own = method.own(hp)
            if own is not None and callable(getattr(own, "validate", None)):
                own.validate()
            method.parse_knobs(v.args)
            _check_variant_extras(self.name, v, method)
            if (
                pat.structured
                and self.smallest is not None
                and v.name in self.smallest.variants
                and self.smallest.min_density >= pat.max_density
            ):
                raise ConfigError(
                    f"suite '{self.name}': smallest min_density {self.smallest.min_density:g} is not below "
                    f"{pat.max_density:g}, the most pattern {pat} of method {v.name!r} keeps"
                )
        for s in self.seeds:
            check_seed(s)
        if self.smallest is not None:
            from ..smallest import check_tolerance

            check_tolerance(self.smallest.tolerance)
            unknown = [v for v in self.smallest.variants if v not in names]
            if unknown:
                raise ConfigError(
                    f"suite '{self.name}': smallest names unknown method(s) {unknown} (choose from: {names})"
                )

    def with_overrides(
        self, *, methods: list[str] | None = None, seeds: int | None = None, datasets: list[str] | None = None
    ) -> Suite:
        """The suite cut to some of its methods or datasets (``dataset`` or ``dataset/model``; a suite is
        resumable, so running it in parts fills the same records), or with another number of seeds."""
        entries = self.datasets
        if datasets:
            names = {n for d in self.datasets for n in (d.dataset, f"{d.dataset}/{d.model}")}
            unknown = [d for d in datasets if d not in names]
            if unknown:
                raise ConfigError(
                    f"suite '{self.name}' has no dataset {', '.join(map(repr, unknown))} "
                    f"(choose from: {', '.join(sorted(names))})"
                )
            entries = tuple(d for d in self.datasets if {d.dataset, f"{d.dataset}/{d.model}"} & set(datasets))
        variants = self.variants
        if methods:
            known = {v.name for v in self.variants}
            unknown = [m for m in methods if m not in known]
            if unknown:
                raise ConfigError(
                    f"suite '{self.name}' has no method {', '.join(map(repr, unknown))} "
                    f"(choose from: {', '.join(sorted(known))})"
                )
            variants = tuple(v for v in self.variants if v.name in methods)
        seed_list = self.seeds if seeds is None else tuple(range(seeds))
        if seeds is not None and seeds < 1:
            raise ConfigError(f"--seeds must be ≥ 1, got {seeds}")
        return dataclasses.replace(
            self,
            datasets=entries,
            variants=variants,
            seeds=seed_list,
            smallest=self.smallest
            if self.smallest is None
            else dataclasses.replace(
                self.smallest,
                variants=tuple(v for v in self.smallest.variants if v in {x.name for x in variants}),
            ),
        )


def _training(values: dict[str, Any], where: str) -> TrainingHparams:
    """Training overrides as hparams (on the dataclass defaults, to check them): an unknown key is one line
    naming the allowed ones, not a TypeError."""
    allowed = {f.name for f in dataclasses.fields(TrainingHparams)}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown training key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )
    return dataclasses.replace(TrainingHparams(), **values)


def _check_variant_extras(suite: str, v: Variant, method: Any) -> None:
    """A variant's optional fields (its densities' repeats, training, controls, metrics), by the method's
    capabilities; each density itself is checked first, in :meth:`Suite.validate`."""
    where = f"suite '{suite}' method '{v.name}'"
    if len(set(v.densities)) != len(v.densities):
        raise ConfigError(f"{where} lists a density twice: {list(v.densities)}")
    _training(v.training, where).validate()
    unknown = [c for c in v.controls if c not in VARIANT_CONTROLS]
    if unknown:
        raise ConfigError(
            f"{where}: unknown control(s) {', '.join(map(repr, unknown))} "
            f"(choose from: {', '.join(VARIANT_CONTROLS)})"
        )
    if v.controls and not method.accepts_controls:
        raise ConfigError(
            f"{where}: controls do not apply to method '{method.name}' (its ticket is learned on untrained "
            "weights, which a control would retrain); drop its controls"
        )
    if not all(isinstance(m, str) and m for m in v.metrics):
        raise ConfigError(f"{where}: metrics are names of result fields, got {list(v.metrics)!r}")


def _listed(value: Any, key: str) -> tuple[Any, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"suite method key '{key}' must be a list, got {value!r}")
    return tuple(value)


def _variant(entry: Any) -> Variant:
    if isinstance(entry, str):
        return Variant(name=entry, method=entry)
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"a suite method is a name or an object with a 'name', got {entry!r}")
    allowed = {"name", "method", "pruning", "args", "then_train", *_LATER_VARIANT_FIELDS}
    extra = sorted(set(entry) - allowed)
    if extra:
        raise ConfigError(
            f"unknown key(s) {', '.join(extra)} in suite method {entry['name']!r} (allowed: {', '.join(sorted(allowed))})"
        )
    return Variant(
        name=str(entry["name"]),
        method=str(entry.get("method", entry["name"])),
        pruning=dict(entry.get("pruning", {})),
        args=dict(entry.get("args", {})),
        then_train=bool(entry.get("then_train", False)),
        densities=tuple(float(x) for x in _listed(entry.get("densities", ()), "densities")),
        training=dict(entry.get("training", {})),
        controls=tuple(str(x) for x in _listed(entry.get("controls", ()), "controls")),
        metrics=tuple(str(x) for x in _listed(entry.get("metrics", ()), "metrics")),
    )


def suite_from_dict(d: dict[str, Any], *, source: str) -> Suite:
    if not isinstance(d, dict):
        raise ConfigError(f"suite {source} must be an object, got {type(d).__name__}")
    try:
        seeds = d.get("seeds", 1)
        seed_list = tuple(range(int(seeds))) if isinstance(seeds, int) else tuple(int(s) for s in seeds)
        return Suite(
            name=str(d.get("name", Path(source).stem)),
            description=str(d.get("description", "")),
            datasets=tuple(DatasetEntry(**e) for e in d["datasets"]),
            variants=tuple(_variant(e) for e in d["methods"]),
            densities=tuple(float(x) for x in d["densities"]),
            seeds=seed_list,
            sanity=bool(d.get("sanity", False)),
            anchors=tuple(Anchor(**a) for a in d.get("anchors", [])),
            smallest=_smallest(d.get("smallest")),
            evaluate=str(d.get("evaluate", "")),
        )
    except KeyError as exc:
        raise ConfigError(f"suite {source} is missing {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"suite {source} is malformed: {exc}") from None


def suite_from_saved(d: dict[str, Any], *, source: str = "suite.json") -> Suite:
    """The suite back from its saved dataclass form (``suite.json``, a queue's study): that form holds
    ``variants``, where a spec file holds ``methods``."""
    d = dict(d)
    keys = ("name", "method", "pruning", "args", "then_train", *_LATER_VARIANT_FIELDS)
    d["methods"] = [{k: v[k] for k in keys if k in v} for v in d.pop("variants")]
    d["seeds"] = list(d["seeds"])
    return suite_from_dict(d, source=source)


def _smallest(d: Any) -> SmallestSpec | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise ConfigError(f"suite 'smallest' must be an object, got {d!r}")
    d = dict(d)
    d["variants"] = tuple(d.get("variants", ()))
    return SmallestSpec(**d)


def load_suite(name_or_path: str) -> Suite:
    """A built-in suite by name, or a JSON/TOML spec file."""
    p = Path(name_or_path).expanduser()
    if p.suffix in (".json", ".toml") or p.exists():
        if not p.is_file():
            raise DataError(f"suite file '{p}' does not exist")
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:
                raise ConfigError("TOML suites need Python ≥ 3.11; write the suite as JSON") from None
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"suite file '{p}' is not valid TOML: {exc}") from None
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"suite file '{p}' is not valid JSON: {exc}") from None
        return suite_from_dict(data, source=str(p))
    path = SUITES_DIR / f"{name_or_path}.json"
    if not path.is_file():
        import difflib

        known = list_suites()
        close = difflib.get_close_matches(name_or_path, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"unknown suite '{name_or_path}'{hint} (choose from: {', '.join(known)}, or a .json/.toml file)"
        )
    return suite_from_dict(json.loads(path.read_text(encoding="utf-8")), source=path.name)


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.json"))
