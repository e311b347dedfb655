"""Flag groups shared by subcommands, and flags → RunHparams (model recipe, then method recipe, then flags)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.hparams import (
    DatasetHparams,
    PruningHparams,
    RunHparams,
    TrainingHparams,
    add_dataclass_arguments,
    dataclass_from_args,
    parse_duration,
)

__all__ = [
    "add_run_flags",
    "add_model_flags",
    "add_training_flags",
    "add_pruning_flags",
    "resolve_hparams",
    "own_hparam_values",
    "run_options",
    "parse_kv",
    "add_db_wait_flag",
    "db_wait_of",
]

TRAIN_HELP = {
    "optimizer": "sgd | adam | adamw",
    "lr": "learning rate",
    "momentum": "SGD momentum",
    "nesterov": "SGD Nesterov momentum",
    "weight_decay": "L2 (sgd, adam) or decoupled (adamw) weight decay",
    "batch_size": "training batch size",
    "budget": "training length per level, e.g. 10ep or 5000it",
    "schedule": "constant | step | cosine",
    "warmup": "linear warm-up length, e.g. 1ep",
    "milestones": "step schedule milestones, e.g. 80ep,120ep",
    "gamma": "step schedule factor",
    "eval_every": "evaluate (and checkpoint) every, e.g. 1ep or 1000it",
    "label_smoothing": "cross-entropy label smoothing, in [0, 1)",
    "grad_clip": "clip the gradient norm (0: off)",
    "precision": "fp32 | bf16: bf16 autocasts forward and loss (weights and optimizer state stay fp32); "
    "part of the run's hash when not fp32",
    "eval_start": "evaluate before the first step (the init's accuracy opens the history); --no-eval-start "
    "saves one evaluation per training and is part of the run's hash",
}
PRUNE_HELP = {
    "density": "fraction of weights KEPT, in (0, 1] (sparsity = 1 - density); default 0.2",
    "rounds": "IMP: number of pruning levels (0: as many as reach --density); scorers: iterative rounds "
    "with an exponential schedule (0: the method's default, e.g. 100 for synflow)",
    "scope": "layerwise | global top-k selection (default: the method's paper; see `list methods`)",
    "distribution": "layerwise densities of one-shot and learned methods: uniform | erk | smart-ratio",
    "min_layer_density": "guard: every layer keeps at least this fraction (default 0: no guard)",
    "score_batches": "data-driven scorers: batches of real data used for scoring (default 1)",
    "score_batch_size": "data-driven scorers: batch size for scoring (0: training batch size)",
    "allow_empty_layers": "accept a mask that keeps no weight of some layer (a disconnected network)",
    "pattern": "unstructured | N:M (at most N of every M weights along a row's flattened input, e.g. 2:4; "
    "density at most N/M) | block:RxC (whole RxC blocks); part of the run's hash when not unstructured",
    "allow_dense_layers": "keep a layer whose shape cannot hold --pattern whole instead of refusing the run",
}


def add_run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help="replicate seed in [0, 2^63-1]: init, data order, validation split",
    )
    g.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    g.add_argument(
        "--backend",
        default="auto",
        help="how masked layers apply their mask: auto | inplace | reference | triton | triton_bits "
        "(default auto: inplace; triton stays opt-in on CUDA until the GPU tests have passed on a GPU; "
        "the chosen one is recorded in each result, not in the run's hash)",
    )
    g.add_argument(
        "--graph",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="on CUDA, replay each training step as one captured CUDA graph (opt-in until the GPU tests "
        "have run on a GPU; results equal eager steps within fp32 tolerance, so not part of the run's hash; "
        "each result records which ran)",
    )
    g.add_argument("--root", default="runs", help="results root (default: ./runs)")
    g.add_argument(
        "--data-root", default=None, help="where datasets live (default: $TICKETSEARCH_DATA, else ./data)"
    )
    g.add_argument(
        "--download",
        action="store_true",
        help="download missing MNIST/Fashion-MNIST files (needs torchvision)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--json", action="store_true", help="print the result rows as JSON instead of a table")
    add_rerun_stale_flag(g)


RERUN_STALE_HELP = (
    "recompute finished levels made by other code (another commit, uncommitted changes, or before results "
    "recorded their code); without it they are reused, and reports list them"
)


def add_rerun_stale_flag(g: Any) -> None:
    """``--rerun-stale``, one name for every command that reuses cached runs."""
    g.add_argument("--rerun-stale", action="store_true", help=RERUN_STALE_HELP)


def add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument(
        "--model", default=None, help="model name (default: the dataset's default; see `list models`)"
    )
    g.add_argument(
        "--init",
        default=None,
        help="weight init: kaiming_normal (default) | kaiming_uniform | signed_constant | default (PyTorch's)",
    )
    g.add_argument("--dataset", default=None, help="dataset name (default: digits; see `list datasets`)")
    g.add_argument(
        "--val-size", type=float, default=None, help="held-out validation: a fraction (<1) or a whole count"
    )
    g.add_argument(
        "--resize",
        type=int,
        default=None,
        help="resample images to N×N (e.g. 28: digits at MNIST's size; 8: MNIST at digits'); part of the hash",
    )


def add_training_flags(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group(
        "training (every default comes from the model's recipe: see the docs' 'Training recipes')"
    )
    add_dataclass_arguments(t, TrainingHparams, help_overrides=TRAIN_HELP)


def add_pruning_flags(p: argparse.ArgumentParser) -> None:
    q = p.add_argument_group("pruning")
    add_dataclass_arguments(q, PruningHparams, skip=("method", "density"), help_overrides=PRUNE_HELP)
    q.add_argument("--density", type=float, default=None, help=PRUNE_HELP["density"])
    q.add_argument("--sparsity", type=float, default=None, help="fraction of weights REMOVED (= 1 - density)")
    q.add_argument(
        "--arg", action="append", default=[], metavar="KEY=VALUE", help="a method's own knob (repeatable)"
    )
    from ..methods import own_hparams

    m = p.add_argument_group("methods' own hyperparameters (each applies to the methods its help names)")
    for h in own_hparams().values():  # each method's declared fields, help text from beside the field
        if h.type is bool:
            m.add_argument(
                h.flag, dest=h.dest, action=argparse.BooleanOptionalAction, default=None, help=h.help
            )
        else:
            conv = h.type if h.type in (int, float) and not h.duration else str
            m.add_argument(h.flag, dest=h.dest, type=conv, default=None, metavar=h.name.upper(), help=h.help)


def own_hparam_values(ns: argparse.Namespace | dict[str, Any]) -> dict[str, Any]:
    """The methods' own hyperparameters given as flags, by field name (durations: a bare number means
    iterations, checked here so the message names the flag)."""
    from ..methods import own_hparams

    values = vars(ns) if isinstance(ns, argparse.Namespace) else ns
    out: dict[str, Any] = {}
    for h in own_hparams().values():
        v = values.get(h.dest)
        if v is None:
            continue
        if h.duration:
            text = str(v).strip()
            v = f"{text}it" if text.isdigit() else text
            parse_duration(v, name=h.flag)
        out[h.name] = v
    return out


def add_db_wait_flag(g: Any, *, needs: str = "") -> None:
    """``--db-wait SECONDS``: how long a command waits for a shared database that went away."""
    g.add_argument(
        "--db-wait",
        default=None,
        metavar="SECONDS",
        help=f"{needs}how long every storage call waits for a database that went away (a restart, a "
        "dropped connection, a locked SQLite file) before the command stops with one line, to be rerun; "
        "training carries on meanwhile (default 300; 0: do not wait)",
    )


def db_wait_of(ns: argparse.Namespace) -> float:
    """The ``--db-wait`` flag as seconds (default 300), or a one-line error naming the bad value."""
    from ..studies.storage import DB_WAIT, check_db_wait

    value = getattr(ns, "db_wait", None)
    return DB_WAIT if value is None else check_db_wait(value)


def parse_kv(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are JSON when they parse (numbers, true/false), else strings."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"--arg expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _default_model(dataset: str) -> str:
    from ..data import DATASETS

    return DATASETS.entry(dataset).obj.default_model  # type: ignore[attr-defined]


def resolve_hparams(ns: argparse.Namespace, *, method: str | None = None) -> RunHparams:
    """Flags → RunHparams: dataset default model, then the model's (or method's) recipe, then the flags.

    ``method=None``: no pruning flags (``train --mask``). A pruning flag the method does not read is
    refused: silently ignoring ``--rate`` for SNIP would let a user think it changed something.
    """
    from ..data import DATASETS
    from ..models import MODELS, model_hparams, training_recipe

    dataset = ns.dataset or "digits"
    DATASETS.entry(dataset)  # unknown dataset → one line with a suggestion
    model = ns.model or _default_model(dataset)
    MODELS.entry(model)
    model_hp = model_hparams(model, ns.init)
    data_hp = DatasetHparams(
        dataset=dataset,
        val_size=ns.val_size if ns.val_size is not None else -1.0,
        resize=ns.resize if ns.resize is not None else 0,
    )
    strategy = None
    if method is not None:
        from ..methods import get_method

        strategy = get_method(method)
    base = strategy.recipe(model, dataset) if strategy is not None else None
    training = dataclass_from_args(TrainingHparams, ns, base or training_recipe(model))
    for name in ("budget", "warmup", "eval_every"):
        parse_duration(getattr(training, name), name=f"--{name.replace('_', '-')}")
    if strategy is None:
        return RunHparams(
            model=model_hp, dataset=data_hp, training=training, pruning=PruningHparams(method="train")
        )
    if ns.density is not None and ns.sparsity is not None:
        raise ConfigError("give --density or --sparsity, not both")
    values = vars(ns).copy()
    if ns.sparsity is not None:
        if not 0.0 <= ns.sparsity < 1.0:
            raise ConfigError(f"--sparsity must be in [0, 1), got {ns.sparsity}")
        values["density"] = 1.0 - ns.sparsity
    from ..core.select import check_density
    from ..methods import own_hparams

    if values.get("density") is not None:
        check_density(values["density"], name="--density")
    own = own_hparam_values(values)
    flags = {name: "--" + name.replace("_", "-") for name in strategy.ignored_fields()}
    flags.update({h.name: h.flag for h in own_hparams().values() if h.name not in strategy.own_fields()})
    for name, flag in flags.items():
        given = own.get(name) if name in own_hparams() else values.get(name)
        if given is not None and name != "method":
            raise ConfigError(
                f"{flag} does not apply to method '{method}' ({strategy.kind}); drop it "
                "(see `ticketsearch find --help`)"
            )
    prune = dataclass_from_args(PruningHparams, values, strategy.default_pruning(method=method))
    args = parse_kv(ns.arg)
    hp = RunHparams(
        model=model_hp,
        dataset=data_hp,
        training=training,
        pruning=prune,
        method_args=tuple(sorted(args.items())),
    )
    return strategy.with_hparams(hp, **own)


def run_options(ns: argparse.Namespace, **extra: Any) -> Any:
    from ..experiments.runner import RunOptions

    return RunOptions(
        root=Path(ns.root),
        data_root=ns.data_root,
        download=ns.download,
        device=ns.device,
        backend=getattr(ns, "backend", "auto"),
        graph=bool(getattr(ns, "graph", False)),
        progress=False if ns.no_progress else "auto",
        rerun_stale=bool(getattr(ns, "rerun_stale", False)),
        **extra,
    )
