"""Pareto studies of SNIP and IMP on MNIST LeNet-300-100: the accuracy–density front each method reaches
when Optuna tunes it (``ticketsearch study --pareto``), against the method's defaults.

Each method gets a multi-objective study (NSGA-II: validation accuracy up, density down, density searched
log-uniformly in ``--density-range``) over its own declared search space: SNIP the training lr and how many
real batches it scores on; IMP the training lr, the rate pruned per level and the rewind point. Every
trial trains with the same CPU budget (``--budget`` iterations, Adam, batch 60, F&C's recipe), one seed.
The front is compared on **test** accuracy (never used to choose) with each method's defaults (the recipe's
lr, SNIP on one batch, IMP at 20% per level and reset to init) at a few densities.

From the repository root:

    python -m benchmarks.pareto_mnist                        # 24 trials per method, 1000 it (~40 min, 2 cores)
    python -m benchmarks.pareto_mnist --n-trials 6 --budget 300it

The studies live in ``benchmarks/runs/pareto_mnist/studies.db`` (rerunning resumes them; runs are cached);
results: ``benchmarks/results/pareto_mnist/<variant>.{json,md}`` and ``<variant>_front.png``; the variant
is ``<N>trials_<budget>``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ._writer import REPO, ResultWriter, add_output_args, md_table

METHODS = ("snip", "imp")
CHECK_DENSITIES = (0.2, 0.05, 0.02)


def _base(method: str, budget: str):
    from ticketsearch.core.hparams import DatasetHparams, ModelHparams, PruningHparams, RunHparams
    from ticketsearch.models import training_recipe

    training = dataclasses.replace(training_recipe("lenet_300_100"), budget=budget, eval_every=budget)
    return RunHparams(
        model=ModelHparams("lenet_300_100"),
        dataset=DatasetHparams("mnist"),
        training=training,
        pruning=PruningHparams(method=method, density=0.05),
    )


def defaults(method: str, budget: str, root: Path, data_root: str | None) -> list[dict[str, Any]]:
    """The method's defaults at each check density: validation and test accuracy of the ticket there."""
    from ticketsearch.experiments.runner import RunOptions, run_find
    from ticketsearch.methods import nearest_level

    opts = RunOptions(root=root, data_root=data_root, device="cpu", progress=False)
    out = []
    if method == "imp":  # one IMP run down to the smallest density serves every check density
        hp = _base(method, budget)
        hp = hp.replace(pruning=dataclasses.replace(hp.pruning, density=min(CHECK_DENSITIES)))
        rows = run_find(hp, seed=0, opts=opts).rows
        picked = [nearest_level(rows, d) for d in CHECK_DENSITIES]
    else:
        picked = []
        for d in CHECK_DENSITIES:
            hp = _base(method, budget)
            hp = hp.replace(pruning=dataclasses.replace(hp.pruning, density=d))
            picked.append(run_find(hp, seed=0, opts=opts).rows[-1])
    for d, row in zip(CHECK_DENSITIES, picked):
        out.append(
            {"target": d, "density": row["density"], "val_acc": row["val_acc"], "test_acc": row["test_acc"]}
        )
    return out


def _plot(fronts: dict[str, list[Any]], all_trials: dict[str, list[Any]], checks: dict) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"snip": "tab:blue", "imp": "black"}
    for m, ts in all_trials.items():
        done = [t for t in ts if t.values is not None]
        ax.scatter(
            [100 * t.values[1] for t in done],
            [100 * t.user_attrs["test_acc"] for t in done],
            s=12,
            alpha=0.3,
            color=colors[m],
        )
        f = fronts[m]
        ax.plot(
            [100 * t.values[1] for t in f],
            [100 * t.user_attrs["test_acc"] for t in f],
            marker="o",
            color=colors[m],
            label=f"{m}: tuned front",
        )
        c = checks[m]
        ax.plot(
            [100 * r["density"] for r in c],
            [100 * r["test_acc"] for r in c],
            marker="s",
            ls="--",
            color=colors[m],
            alpha=0.7,
            label=f"{m}: defaults",
        )
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator([50, 20, 10, 5, 2, 1]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}%"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.invert_xaxis()
    ax.set_xlabel("weights kept (%, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("MNIST LeNet-300-100: tuned Pareto fronts (val-chosen) vs defaults")
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-trials", type=int, default=24)
    ap.add_argument("--budget", default="1000it", help="training iterations of every ticket (and IMP level)")
    ap.add_argument("--density-range", default="0.01,0.5")
    ap.add_argument("--root", type=Path, default=REPO / "benchmarks" / "runs" / "pareto_mnist")
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "datasets"))
    add_output_args(ap, "result name (default: <N>trials_<budget>)")
    args = ap.parse_args()
    variant = args.variant or f"{args.n_trials}trials_{args.budget}"
    out = ResultWriter("pareto_mnist", variant, results_dir=args.results_dir, force_dirty=args.force_dirty)

    import torch

    from ticketsearch.core.io import atomic_write_bytes
    from ticketsearch.experiments.runner import RunOptions
    from ticketsearch.studies import StudySpec, best_trials, run_study, trial_record

    torch.set_num_threads(1)
    lo, hi = (float(x) for x in args.density_range.split(","))
    opts = RunOptions(root=args.root, data_root=args.data_root, device="cpu", progress=False)
    studies, fronts, checks, records = {}, {}, {}, {}
    for m in METHODS:
        spec = StudySpec(
            hp=_base(m, args.budget), n_trials=args.n_trials, pareto=True, density_range=(lo, hi)
        )
        spec = dataclasses.replace(spec, pruner="none")
        outcome = run_study(spec, opts, study_name=f"pareto_{m}_mnist_{variant}", progress=False)
        trials = outcome.study.get_trials(deepcopy=False)
        studies[m] = trials
        fronts[m] = sorted(best_trials(outcome.study, pareto=True), key=lambda t: t.values[1])
        checks[m] = defaults(m, args.budget, args.root, args.data_root)
        records[m] = [trial_record(t) for t in trials]

    def _row(m: str, t: Any) -> list[Any]:
        params = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()
        )
        return [
            m,
            t.number,
            f"{100 * t.values[1]:.2f}%",
            f"{100 * t.values[0]:.2f}%",
            f"{100 * t.user_attrs['test_acc']:.2f}%",
            params,
        ]

    front_rows = [_row(m, t) for m in METHODS for t in fronts[m]]
    check_rows = [
        [m, f"{100 * r['target']:g}%", f"{100 * r['density']:.2f}%", f"{100 * r['val_acc']:.2f}%",
         f"{100 * r['test_acc']:.2f}%"]
        for m in METHODS
        for r in checks[m]
    ]  # fmt: skip

    def best_near(m: str, d: float) -> Any:
        """The front's most accurate trial at or below density ``d`` × 1.25 (None if the front has none)."""
        near = [t for t in fronts[m] if t.values[1] <= d * 1.25]
        return max(near, key=lambda t: t.values[0]) if near else None

    findings = []
    for d in CHECK_DENSITIES:
        parts = []
        for m in METHODS:
            t = best_near(m, d)
            default = next(r for r in checks[m] if r["target"] == d)
            if t is None:
                parts.append(f"{m}: no front point ≤ {100 * d * 1.25:.3g}%")
                continue
            parts.append(
                f"{m} front {100 * t.user_attrs['test_acc']:.2f}% at {100 * t.values[1]:.2f}% "
                f"(defaults {100 * default['test_acc']:.2f}% at {100 * default['density']:.2f}%)"
            )
        findings.append(f"Best tuned ticket keeping at most {125 * d:g}%: " + "; ".join(parts) + ".")
    durations = {m: sum(r["duration_s"] or 0.0 for r in records[m]) for m in METHODS}
    findings.append(
        "Trial time: " + ", ".join(f"{m} {durations[m] / 60:.1f} min" for m in METHODS)
        + f" for {args.n_trials} trials each (IMP trains every level of a trial; SNIP one ticket)."
    )  # fmt: skip

    png_name = f"{variant}_front.png"
    out.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out.dir / png_name, _plot(fronts, studies, checks))
    out.write(
        {
            "config": {
                "n_trials": args.n_trials,
                "budget": args.budget,
                "density_range": [lo, hi],
                "check_densities": list(CHECK_DENSITIES),
                "recipe": dataclasses.asdict(_base("snip", args.budget).training),
            },
            "trials": records,
            "defaults": checks,
            "front": {m: [t.number for t in fronts[m]] for m in METHODS},
            "figures": [png_name],
        },
        "\n".join(
            [
                "# Pareto studies: SNIP vs IMP on MNIST LeNet-300-100",
                "",
                f"{args.n_trials} NSGA-II trials per method (validation accuracy up, density down, density in "
                f"[{lo:g}, {hi:g}] log-uniform), {args.budget} Adam iterations per training (F&C's recipe), seed 0. "
                "Fronts are chosen on validation; test accuracy is reported beside it.",
                "",
                f"![fronts]({png_name})",
                "",
                "## Findings",
                "",
                *[f"- {f}" for f in findings],
                "",
                "## The fronts",
                "",
                md_table(["method", "trial", "density", "val acc", "test acc", "parameters"], front_rows),
                "",
                "## Defaults at fixed densities",
                "",
                md_table(["method", "target", "kept", "val acc", "test acc"], check_rows),
            ]
        ),
    )


if __name__ == "__main__":
    main()
