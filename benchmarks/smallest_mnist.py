"""Smallest tickets on LeNet-300-100 / MNIST, and early-bird against IMP at 20%.

For each method, ``ticketsearch.smallest`` finds the lowest density whose ticket stays within
``--tolerance`` points of validation accuracy of the dense network (mean over ``--seeds``), with its cost.
Methods: IMP reset, IMP lr-rewind, SNIP (global), SynFlow (global, 100 rounds), edge-popup. Then
early-bird at density 0.2 beside IMP's level nearest 20% (same budget, same seeds): accuracy and the
fraction of one dense training early-bird spent finding its mask.

Weights train with Frankle & Carbin's recipe (Adam 1.2e-3, batch 60) for ``--budget`` iterations per run
(the paper: 50,000); supermask scores with their own recipe (10 epochs). Runs are cached under
``benchmarks/runs/``; a killed benchmark resumes.

    python -m benchmarks.smallest_mnist [--seeds 2] [--budget 5000it] [--methods imp,imp-lr-rewind,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

from ._common import data_root
from ._writer import REPO, ResultWriter, add_output_args, md_table

METHODS = {
    "imp": dict(method="imp"),
    "imp-lr-rewind": dict(method="imp", retrain="lr-rewind"),
    "snip": dict(method="snip"),
    "synflow": dict(method="synflow"),
    "supermask": dict(method="supermask"),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--budget", default="5000it", help="training iterations per run (weights)")
    ap.add_argument("--tolerance", type=float, default=0.5)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--min-density", type=float, default=1e-3)
    ap.add_argument("--precision", type=float, default=0.1)
    ap.add_argument("--data-root", default=data_root())
    ap.add_argument("--root", type=Path, default=REPO / "benchmarks" / "runs" / "smallest_mnist")
    add_output_args(ap, "default: lenet_<budget>_<seeds>seeds")
    args = ap.parse_args(argv)

    from ticketsearch.core.hparams import DatasetHparams, ModelHparams, PruningHparams, RunHparams
    from ticketsearch.experiments.runner import RunOptions, run_find
    from ticketsearch.models import training_recipe
    from ticketsearch.smallest import smallest

    variant = args.variant or f"lenet_{args.budget}_{args.seeds}seeds"
    out = ResultWriter("smallest_mnist", variant, results_dir=args.results_dir, force_dirty=args.force_dirty)
    training = dataclasses.replace(training_recipe("lenet_300_100"), budget=args.budget, eval_every="1000it")
    seeds = list(range(args.seeds))
    opts = RunOptions(root=args.root, data_root=args.data_root, device="cpu", progress=False)

    def hp(**pruning: Any) -> RunHparams:
        from ticketsearch.methods import get_method

        # supermasks train scores with their own recipe (SGD 0.1, 10 epochs on MNIST), never the weights'
        method = get_method(pruning.pop("method"))
        scores = method.recipe("lenet_300_100", "mnist")
        base = RunHparams(
            model=ModelHparams(model="lenet_300_100"),
            dataset=DatasetHparams(dataset="mnist"),
            training=scores or training,
            pruning=PruningHparams(method=method.name),
        )
        return method.with_hparams(base, **pruning)  # shared fields or the method's own (retrain, eb_every)

    results: dict[str, Any] = {}
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        t0 = time.perf_counter()
        r = smallest(
            hp(**METHODS[name]),
            seeds=seeds,
            tolerance=args.tolerance,
            opts=opts,
            min_density=args.min_density,
            precision=args.precision,
            out_dir=args.root / f"report_{name}",
            dense_training=training,  # supermasks: the same dense reference as every other method
        )
        results[name] = {**r.to_dict(), "wall_s": time.perf_counter() - t0}
        a = r.answer
        print(name, "answer", None if a is None else round(a.kept, 5), r.note, flush=True)
        out.write_partial(results)

    # early-bird at 20% beside IMP's level nearest 20%
    eb_rows, imp_rows = [], []
    for s in seeds:
        # a mask every 100 iterations: 50 draws over a 5000-iteration budget (the paper: one per epoch of 160)
        eb = run_find(hp(method="early-bird", density=0.2, eb_every="100it"), seed=s, opts=opts).rows
        eb_rows.append({"seed": s, "search": dict(eb[0]), "ticket": dict(eb[1])})
        imp = run_find(hp(method="imp", density=0.2), seed=s, opts=opts).rows
        imp_rows.append(dict(min(imp[1:], key=lambda row: abs(row["density"] - 0.2))))
    early_bird = {
        "density": statistics.fmean(r["ticket"]["density"] for r in eb_rows),
        "test_acc": [r["ticket"]["test_acc"] for r in eb_rows],
        "val_acc": [r["ticket"]["val_acc"] for r in eb_rows],
        "fraction_of_dense_training": [r["search"]["eb_fraction_of_training"] for r in eb_rows],
        "stop_iteration": [r["search"]["eb_iteration"] for r in eb_rows],
        "imp_density": statistics.fmean(r["density"] for r in imp_rows),
        "imp_test_acc": [r["test_acc"] for r in imp_rows],
        "imp_val_acc": [r["val_acc"] for r in imp_rows],
    }
    out.write(
        {"setup": vars(args) | {"root": str(args.root)}, "smallest": results, "early_bird": early_bird},
        _markdown(args, results, early_bird),
    )


def _ms(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.fmean(xs):.2f} ± {100 * sd:.2f}"


def _markdown(args: argparse.Namespace, results: dict[str, Any], eb: dict[str, Any]) -> str:
    rows = []
    for name, r in results.items():
        a, d, c = r["answer"], r["dense"], r["cost"]
        rows.append(
            [
                name,
                f"{100 * d['val_mean']:.2f} / {100 * d['test_mean']:.2f}",
                "none" if a is None else f"**{100 * a['kept']:.2f}%**",
                "-" if a is None else f"{100 * a['val_mean']:.2f} ± {100 * a['val_std']:.2f}",
                "-" if a is None else f"{100 * a['test_mean']:.2f} ± {100 * a['test_std']:.2f}",
                f"{c['runs']} runs, {c['iterations']:,} it, {c['wall_time']:.0f} s",
                r["note"] or "",
            ]
        )
    lines = [
        "# Smallest tickets: LeNet-300-100 on MNIST",
        "",
        f"Lowest density within {args.tolerance} points of the dense network's validation accuracy (mean of "
        f"{args.seeds} seeds; test reported, never used to choose). Weights: Adam 1.2e-3, batch 60, "
        f"{args.budget} per run; supermask scores: their recipe. Bisection precision {args.precision}.",
        "",
        md_table(
            [
                "method",
                "dense val / test (%)",
                "smallest density",
                "val acc (%)",
                "test acc (%)",
                "cost",
                "note",
            ],
            rows,
        ),
        "",
        "## Early-bird at 20% vs IMP",
        "",
        md_table(
            ["", "density", "val acc (%)", "test acc (%)", "cost to find"],
            [
                [
                    "early-bird",
                    f"{100 * eb['density']:.1f}%",
                    _ms(eb["val_acc"]),
                    _ms(eb["test_acc"]),
                    f"{100 * statistics.fmean(eb['fraction_of_dense_training']):.1f}% of one dense training "
                    f"(stopped at {eb['stop_iteration']})",
                ],
                [
                    "IMP (nearest level)",
                    f"{100 * eb['imp_density']:.1f}%",
                    _ms(eb["imp_val_acc"]),
                    _ms(eb["imp_test_acc"]),
                    "one dense training per level",
                ],
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
