"""Command line: ``python -m ticketsearch {find,train,list} ...``.

Errors the user can fix print one line (``error: ...``) and exit with code 2; an interrupted run says how
to resume it (rerun the same command: finished levels are kept, the level in progress resumes).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .core.errors import ConfigError, TicketsearchError
from .core.hparams import (
    DatasetHparams,
    ModelHparams,
    PruningHparams,
    RunHparams,
    TrainingHparams,
    add_dataclass_arguments,
    dataclass_from_args,
    parse_duration,
)

__all__ = ["main", "build_parser"]

_TRAIN_HELP = {
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
    "label_smoothing": "cross-entropy label smoothing",
    "grad_clip": "clip the gradient norm (0: off)",
}
_PRUNE_HELP = {
    "density": "fraction of weights KEPT, in (0, 1] (sparsity = 1 - density); default 0.2",
    "rounds": "IMP: number of pruning levels (0: as many as reach --density); scorers: iterative rounds "
    "with an exponential schedule (0: the method's default, e.g. 100 for synflow)",
    "rate": "IMP: fraction of the remaining weights pruned per level (default 0.2)",
    "output_rate": "IMP: the output layer's rate (default 0.1; negative: same as --rate)",
    "scope": "layerwise | global top-k selection (default layerwise)",
    "distribution": "one-shot layerwise densities: uniform | erk",
    "min_layer_density": "guard: every layer keeps at least this fraction (default 0: no guard)",
    "rewind": "IMP: rewind kept weights to this point of the dense run (0 = reset to init), e.g. 500 or 1ep",
    "score_batches": "data-driven scorers: batches of real data used for scoring (default 1)",
    "score_batch_size": "data-driven scorers: batch size for scoring (0: training batch size)",
}


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="replicate seed: init, data order, validation split")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
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


def _add_hparams(p: argparse.ArgumentParser, *, pruning: bool) -> None:
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
    g.add_argument("--val-size", type=float, default=None, help="held-out validation: fraction (<1) or count")
    t = p.add_argument_group(
        "training (every default comes from the model's recipe: see README, 'Training recipes')"
    )
    add_dataclass_arguments(t, TrainingHparams, help_overrides=_TRAIN_HELP)
    if pruning:
        q = p.add_argument_group("pruning")
        add_dataclass_arguments(
            q, PruningHparams, skip=("method", "density", "rewind"), help_overrides=_PRUNE_HELP
        )
        q.add_argument("--density", type=float, default=None, help=_PRUNE_HELP["density"])
        q.add_argument(
            "--sparsity", type=float, default=None, help="fraction of weights REMOVED (= 1 - density)"
        )
        q.add_argument(
            "--rewind-iter",
            dest="rewind_iter",
            default=None,
            help=_PRUNE_HELP["rewind"] + " (a bare number means iterations)",
        )
        q.add_argument(
            "--arg", action="append", default=[], metavar="KEY=VALUE", help="a method's own knob (repeatable)"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ticketsearch",
        description="Find winning lottery tickets: IMP, saliency scorers (SNIP, GraSP, SynFlow, ...) and learned supermasks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{find,train,list}")

    f = sub.add_parser(
        "find",
        help="find a ticket and train it",
        description="Find a ticket with --method, train it from its init, write a resumable run directory "
        "root/<method>_<hash>/replicate_<seed>/level_<k>/, and print one row per level.",
    )
    f.add_argument(
        "--method",
        default="imp",
        help="imp | snip | grasp | synflow | magnitude | random | supermask | ... (see `list methods`)",
    )
    _add_hparams(f, pruning=True)
    f.add_argument("--controls", default="", help="comma-separated controls per level: reinit, random_mask")
    f.add_argument(
        "--then-train",
        action="store_true",
        help="learned supermasks: also train the kept weights from their init",
    )
    f.add_argument(
        "--baseline", action="store_true", help="one-shot/learned methods: also train the dense network"
    )
    _add_common(f)

    t = sub.add_parser(
        "train",
        help="train a given ticket (mask file) from its init",
        description="Train the weights kept by a mask file.",
    )
    t.add_argument("--mask", required=True, help="a mask.safetensors written by `find`")
    t.add_argument(
        "--init-from",
        dest="init_from",
        default="source",
        choices=("source", "fresh"),
        help="the mask's own init, or a fresh one (drawn from a seed derived from --seed, so never the ticket's own)",
    )
    _add_hparams(t, pruning=False)
    _add_common(t)

    ls = sub.add_parser("list", help="list methods, models or datasets")
    ls.add_argument("what", choices=("methods", "models", "datasets"))
    return parser


def _parse_kv(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--arg expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _default_model(dataset: str) -> str:
    from .data import DATASETS

    return DATASETS.entry(dataset).obj.default_model  # type: ignore[attr-defined]


def resolve_hparams(ns: argparse.Namespace, *, pruning: bool, method: str = "imp") -> RunHparams:
    """Flags → RunHparams: dataset default model, then the model's (or method's) recipe, then the flags."""
    from .data import DATASETS

    dataset = ns.dataset or "digits"
    DATASETS.entry(dataset)  # unknown dataset → one line with a suggestion
    model = ns.model or _default_model(dataset)
    from .models import MODELS

    MODELS.entry(model)
    model_hp = ModelHparams(model=model, init=ns.init or ModelHparams().init)
    data_hp = DatasetHparams(dataset=dataset, val_size=ns.val_size if ns.val_size is not None else -1.0)
    base = _method_training(method, model, dataset) if pruning else None
    if base is None:
        from .experiments.presets import default_training

        base = default_training(model)
    training = dataclass_from_args(TrainingHparams, ns, base)
    for name in ("budget", "warmup", "eval_every"):
        parse_duration(getattr(training, name), name=f"--{name.replace('_', '-')}")
    if not pruning:
        return RunHparams(
            model=model_hp, dataset=data_hp, training=training, pruning=PruningHparams(method="train")
        )
    if ns.density is not None and ns.sparsity is not None:
        raise ConfigError("give --density or --sparsity, not both")
    values = vars(ns).copy()
    if ns.sparsity is not None:
        values["density"] = 1.0 - ns.sparsity
        if not 0.0 <= ns.sparsity < 1.0:
            raise ConfigError(f"--sparsity must be in [0, 1), got {ns.sparsity}")
    if ns.rewind_iter is not None:
        r = str(ns.rewind_iter).strip()
        values["rewind"] = f"{r}it" if r.isdigit() else r
        parse_duration(values["rewind"], name="--rewind-iter")
    from .core.select import check_density

    if values.get("density") is not None:
        check_density(values["density"], name="--density")
    prune = dataclass_from_args(PruningHparams, values, PruningHparams(method=method))
    args = _parse_kv(ns.arg)
    return RunHparams(
        model=model_hp,
        dataset=data_hp,
        training=training,
        pruning=prune,
        method_args=tuple(sorted(args.items())),
    )


def _method_training(method: str, model: str, dataset: str) -> TrainingHparams | None:
    """Learned methods train scores, not weights: they bring their own recipe."""
    from .scorers import METHODS

    cls = METHODS.get(method)
    fn = getattr(cls, "default_training", None)
    if cls.kind == "learned" and callable(fn):
        return fn(dataset)
    return None


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _short_path(p: str) -> str:
    """Relative to the working directory when below it: tables stay pasteable."""
    try:
        return str(Path(p).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def format_table(rows: list[dict[str, Any]], *, method: str) -> str:
    """One row per level: density, test accuracy (final and at early stop), early-stop iteration, mask."""
    head = ["level", "density", "test acc", "es iter", "es test acc"]
    extra_cols = []
    if any("controls" in r for r in rows):
        extra_cols = sorted({c for r in rows for c in r.get("controls", {})})
        head += [f"{c} acc" for c in extra_cols]
    if any("then_train" in r for r in rows):
        head.append("then-train acc")
    head.append("mask")
    lines = []
    for r in rows:
        cells = [
            str(r["level"]),
            f"{r['density']:.4f}",
            _fmt(r.get("test_acc"), ".4f"),
            _fmt(r.get("es_iteration"), "d"),
            _fmt(r.get("es_test_acc"), ".4f"),
        ]
        for c in extra_cols:
            cells.append(_fmt(r.get("controls", {}).get(c, {}).get("test_acc"), ".4f"))
        if "then-train acc" in head:
            cells.append(_fmt(r.get("then_train", {}).get("test_acc"), ".4f"))
        cells.append(_short_path(r["mask"]))
        lines.append(cells)
    widths = [max(len(h), *(len(row[i]) for row in lines)) if lines else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in lines]
    if method not in ("imp",) and rows and rows[-1].get("weights_trained") is False:
        out.append("(supermask: test acc is with the untrained weights)")
    return "\n".join(out)


def _opts(ns: argparse.Namespace, **extra: Any):
    from .experiments.runner import RunOptions

    return RunOptions(
        root=Path(ns.root),
        data_root=ns.data_root,
        download=ns.download,
        device=ns.device,
        progress=False if ns.no_progress else "auto",
        **extra,
    )


def _emit(summary: Any, ns: argparse.Namespace, method: str) -> None:
    if ns.json:
        print(
            json.dumps(
                {"run_dir": str(summary.run_dir), "seed": summary.seed, "rows": summary.rows},
                indent=2,
                default=str,
            )
        )
    else:
        print(f"run: {summary.run_dir}/replicate_{summary.seed}")
        print(format_table(summary.rows, method=method))


def _cmd_find(ns: argparse.Namespace) -> int:
    from .experiments.runner import run_find
    from .scorers import METHODS

    METHODS.entry(ns.method)
    hp = resolve_hparams(ns, pruning=True, method=ns.method)
    controls = tuple(c.strip() for c in ns.controls.split(",") if c.strip())
    summary = run_find(
        hp, seed=ns.seed, opts=_opts(ns, controls=controls, then_train=ns.then_train, baseline=ns.baseline)
    )
    _emit(summary, ns, ns.method)
    return 0


def _cmd_train(ns: argparse.Namespace) -> int:
    from .core.mask import Mask
    from .experiments.runner import train_mask

    meta = Mask.load(ns.mask).metadata
    ns.model = ns.model or meta.get("model")
    ns.dataset = ns.dataset or meta.get("dataset")
    hp = resolve_hparams(ns, pruning=False)
    summary = train_mask(Path(ns.mask), hp, seed=ns.seed, init=ns.init_from, opts=_opts(ns))
    _emit(summary, ns, "train")
    return 0


def _cmd_list(ns: argparse.Namespace) -> int:
    if ns.what == "methods":
        from .scorers import METHODS

        rows = [(e.name, getattr(e.obj, "kind", "?"), e.source, e.description) for e in METHODS.entries()]
        print(f"{'method':<22} {'kind':<8} {'source':<24} description")
        for name, kind, source, desc in rows:
            print(f"{name:<22} {kind:<8} {source:<24} {desc}")
        for b in METHODS.broken():
            print(f"{b.name:<22} {'BROKEN':<8} {b.source:<24} {b.error}")
    elif ns.what == "models":
        from .models import MODELS

        for e in MODELS.entries():
            print(f"{e.name:<16} {e.description}")
    else:
        from .data import DATASETS

        for e in DATASETS.entries():
            dm = getattr(e.obj, "default_model", "")
            print(f"{e.name:<15} {('model: ' + dm) if dm else '':<24} {e.description}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 2
    try:
        return {"find": _cmd_find, "train": _cmd_train, "list": _cmd_list}[ns.command](ns)
    except TicketsearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ticketsearch list methods | head`: the reader left, nothing to report
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume (finished levels are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
