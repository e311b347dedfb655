"""An Optuna study of edge-popup's k and score learning rate on digits, against the recipe's defaults.

Edge-popup (``find --method supermask``) declares its search space beside its code: k (the kept fraction,
log-uniform in [0.05, 0.9]) and the learning rate of the scores (log-uniform within a decade of the
recipe's 0.1). ``ticketsearch study`` runs ``--n-trials`` trials (TPE, median pruner on the validation
accuracy at every epoch) on the digits MLP with the supermask recipe (SGD, momentum 0.9, cosine, batch 128,
30 epochs), each an ordinary run directory, scored by validation accuracy. The best trial is then checked
where it was not chosen: its k and lr, and the recipe's defaults (lr 0.1 at k = 0.3, 0.5 and 0.7), are
each run on ``--check-seeds`` fresh seeds and their **test** accuracy compared (mean ± std).

From the repository root:

    python -m benchmarks.study_supermask_digits                  # 30 trials + checks, a few minutes on 2 cores
    python -m benchmarks.study_supermask_digits --n-trials 8 --check-seeds 2

The study lives in ``benchmarks/runs/study_supermask_digits/studies.db`` (rerunning resumes it; runs are
cached); results: ``benchmarks/results/study_supermask_digits/<variant>.{json,md}`` with the study's plots
beside them as ``<variant>_<plot>.png``; the variant is ``<N>trials`` (``--variant`` to name it).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path

from ._writer import REPO, ResultWriter, add_output_args, md_table

DEFAULT_KS = (0.3, 0.5, 0.7)


def _hparams(k: float, lr: float | None = None):
    from ticketsearch.core.hparams import DatasetHparams, ModelHparams, PruningHparams, RunHparams
    from ticketsearch.methods import learned_recipe

    recipe = learned_recipe("digits", "supermask")
    training = recipe if lr is None else dataclasses.replace(recipe, lr=lr)
    return RunHparams(
        model=ModelHparams("mlp_digits"),
        dataset=DatasetHparams("digits"),
        training=training,
        pruning=PruningHparams(method="supermask", density=k),
    )


def _check(hp, seeds: list[int], root: Path) -> dict:
    """Test (and validation) accuracy of ``hp`` on each seed: fresh weights, split and data order."""
    from ticketsearch.experiments.runner import RunOptions, run_find

    opts = RunOptions(root=root, device="cpu", progress=False)
    rows = [run_find(hp, seed=s, opts=opts).rows[-1] for s in seeds]
    test = [float(r["test_acc"]) for r in rows]
    val = [float(r["val_acc"]) for r in rows]
    return {
        "k": hp.pruning.density,
        "lr": hp.training.lr,
        "seeds": seeds,
        "test_acc": test,
        "val_acc": val,
        "test_mean": statistics.mean(test),
        "test_std": statistics.stdev(test) if len(test) > 1 else 0.0,
        "val_mean": statistics.mean(val),
    }


def _pct(row: dict) -> str:
    return f"{100 * row['test_mean']:.2f} ± {100 * row['test_std']:.2f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-trials", type=int, default=30)
    ap.add_argument("--check-seeds", type=int, default=3, help="fresh seeds for the best and the defaults")
    ap.add_argument("--root", type=Path, default=REPO / "benchmarks" / "runs" / "study_supermask_digits")
    add_output_args(ap, "result name (default: <N>trials)")
    args = ap.parse_args()
    variant = args.variant or f"{args.n_trials}trials"
    out = ResultWriter(
        "study_supermask_digits", variant, results_dir=args.results_dir, force_dirty=args.force_dirty
    )

    import torch

    from ticketsearch.core.io import atomic_write_bytes
    from ticketsearch.experiments.runner import RunOptions
    from ticketsearch.studies import StudySpec, run_study, trial_record, write_report
    from ticketsearch.studies.report import best_trials, format_best

    torch.set_num_threads(1)
    base = _hparams(0.5)
    spec = StudySpec(hp=base, n_trials=args.n_trials, seed=0, pruner="median")
    opts = RunOptions(root=args.root, device="cpu", progress=False)
    outcome = run_study(spec, opts, study_name=f"supermask_digits_{variant}", progress=False)
    study = outcome.study
    report_dir = args.root / f"report_{variant}"
    report = write_report(study, report_dir)
    best = best_trials(study)[0]
    seeds = list(range(100, 100 + args.check_seeds))  # not the study's seed 0: checked where not chosen
    tuned = _check(_hparams(best.user_attrs["density"], best.params["lr"]), seeds, args.root)
    defaults = [_check(_hparams(k), seeds, args.root) for k in DEFAULT_KS]
    best_default = max(defaults, key=lambda r: r["val_mean"])

    records = [trial_record(t) for t in study.get_trials(deepcopy=False)]
    states = {s: sum(r["state"] == s for r in records) for s in ("COMPLETE", "PRUNED", "FAIL")}
    top = best_trials(study, k=8)
    trial_rows = [
        [
            t.number,
            f"{t.user_attrs['density']:.3f}",
            f"{t.params['lr']:.4g}",
            f"{100 * t.values[0]:.2f}%",
            f"{100 * t.user_attrs['test_acc']:.2f}%",
        ]
        for t in top
    ]
    check_rows = [[f"tuned (trial {best.number})", f"{tuned['k']:.3f}", f"{tuned['lr']:.4g}", _pct(tuned)]]
    check_rows += [[f"recipe, k = {r['k']}", r["k"], r["lr"], _pct(r)] for r in defaults]
    gain = 100 * (tuned["test_mean"] - best_default["test_mean"])
    k_complete = sorted(r["density"] for r in records if r["state"] == "COMPLETE" and r["density"])
    good = [t for t in study.get_trials(deepcopy=False) if t.values and t.values[0] >= best.values[0] - 0.02]
    good_k = sorted(t.user_attrs["density"] for t in good)
    good_lr = sorted(t.params["lr"] for t in good)
    from ticketsearch.data import load_dataset

    trial_s = sum(r["duration_s"] or 0.0 for r in records)
    complete_s = sum(r["duration_s"] or 0.0 for r in records if r["state"] == "COMPLETE")

    n_val = int(load_dataset("digits", seed=0, device="cpu").x_val.shape[0])
    noise = 100 * max(tuned["test_std"], best_default["test_std"])  # points, like gain
    verdict = (
        "within the seed-to-seed spread: on digits the recipe's defaults are as good as the tuned values"
        if abs(gain) <= noise
        else ("better than" if gain > 0 else "worse than") + " the defaults by more than the seed spread"
    )
    findings = [
        f"{states['COMPLETE']} trials complete, {states['PRUNED']} pruned by the median rule, {states['FAIL']} "
        f"failed; k tried from {k_complete[0]:.3f} to {k_complete[-1]:.3f}; {trial_s:.0f} s of trials "
        f"(the {states['COMPLETE']} complete ones {complete_s:.0f} s).",
        f"Best on validation: trial {best.number}, k = {best.user_attrs['density']:.3f}, lr = "
        f"{best.params['lr']:.4g} (val {100 * best.values[0]:.2f}%). Trials within 2 points of it have "
        f"k in [{good_k[0]:.3f}, {good_k[-1]:.3f}] and lr in [{good_lr[0]:.3g}, {good_lr[-1]:.3g}].",
        f"On {len(seeds)} fresh seeds (test accuracy): tuned {_pct(tuned)}; the recipe's lr 0.1 at the best "
        f"default k ({best_default['k']}) {_pct(best_default)}: {gain:+.2f} points, {verdict}.",
        f"The objective is one seed's validation accuracy on {n_val} samples (one sample = "
        f"{100 / n_val:.2f} points), so the best of {args.n_trials} trials is an optimistic pick: its val "
        f"{100 * best.values[0]:.2f}% against its test {100 * best.user_attrs['test_acc']:.2f}%.",
    ]
    figures = [f for f in report["files"] if f.endswith(".png")]
    for f in figures:
        atomic_write_bytes(out.dir / f"{variant}_{f}", (report_dir / f).read_bytes())
    md = [
        f"# Optuna study: edge-popup k and score lr on digits ({args.n_trials} trials)",
        "",
        __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        "## Findings",
        "",
        *[f"- {line}" for line in findings],
        "",
        "## Best trials (validation accuracy, study seed 0)",
        "",
        md_table(["trial", "k", "lr", "val acc", "test acc"], trial_rows),
        "",
        f"## Tuned vs the recipe's defaults, seeds {seeds[0]}–{seeds[-1]} (test accuracy, mean ± std)",
        "",
        md_table(["setting", "k", "lr", "test acc"], check_rows),
        "",
        "## Plots",
        "",
        *[f"![{f}]({variant}_{f})" for f in figures],
        *([""] + [f"- not drawn: {s}" for s in report["skipped"]] if report["skipped"] else []),
        "",
        "```",
        format_best(study),
        "```",
    ]
    out.write(
        {
            "study": outcome.name,
            "n_trials": args.n_trials,
            "states": states,
            "trials": records,
            "best": trial_record(best),
            "check_seeds": seeds,
            "tuned": tuned,
            "defaults": defaults,
            "gain_points_vs_best_default": gain,
            "findings": findings,
            "figures": [f"{variant}_{f}" for f in figures],
        },
        "\n".join(md),
    )
    print("\n".join(findings))


if __name__ == "__main__":
    main()
