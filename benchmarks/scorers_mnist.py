"""Pruning at init on MNIST, LeNet-300-100: SNIP's own setup, with GraSP, SynFlow, magnitude and random beside it.

Reproduces the LeNet-300-100 rows of Lee et al. (SNIP, ICLR 2019): one batch of 100 real examples to score,
global selection, then SGD (momentum 0.9, lr 0.1, batch 100, weight decay 5e-4) at 95% and 98% sparsity
(paper: 1.6% and 2.4% test error), and Adam (lr 1e-3) at 90% sparsity (paper, Table 3: 1.9 ± 0.1%). Every
method is scored and selected by the same code (``find_mask`` → ``core.select``) and trained with the same
budget, several seeds each (ShrinkBench's rule); the cost to find each ticket (wall time, forward/backward
passes) is recorded next to the error.

The paper trains 250k iterations with a step schedule; the default here is a few epochs (``--epochs``) so
the whole grid runs in minutes on a CPU, which makes the errors higher than the paper's: the markdown says
which budget produced it. Results go to ``benchmarks/results/scorers_mnist/<epochs>ep_<schedule>.{json,md}``
(e.g. ``40ep_step``; ``--variant`` to name it). From the repository root:

    python -m benchmarks.scorers_mnist                    # default budget (3 epochs, 3 seeds): 3ep_constant
    python -m benchmarks.scorers_mnist --epochs 40 --schedule step --jobs 15   # the committed 40ep_step
    python -m benchmarks.scorers_mnist --epochs 20 --device cuda
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from typing import Any

import torch

from ticketsearch.core.hparams import ModelHparams, PruningHparams, RunHparams, TrainingHparams
from ticketsearch.data import Batcher, load_dataset
from ticketsearch.models import create_model
from ticketsearch.scorers import SCORERS, ScoringContext, find_mask, first_collapse_density
from ticketsearch.sparse import apply_mask
from ticketsearch.training import train

from ._common import SHARED_DATA
from ._writer import ResultWriter, add_output_args

DEFAULT_ROOT = SHARED_DATA
PAPER = {  # Lee et al. 2019, LeNet-300-100 on MNIST: test error (%)
    ("sgd", 0.05): "1.6",
    ("sgd", 0.02): "2.4",
    ("adam", 0.10): "1.9 ± 0.1",
}
METHOD_ORDER = ["snip", "grasp", "synflow", "magnitude", "random"]


def training_hparams(optimizer: str, epochs: int, schedule: str = "constant") -> TrainingHparams:
    """SNIP's recipes; ``step`` decays the lr ×0.1 at half and three quarters of the budget (as the paper
    decays it every 25k of 250k iterations, compressed to the budget)."""
    sched: dict[str, Any] = {"schedule": "constant"}
    if schedule == "step":
        spe = 600  # 60k training images / batch 100
        marks = sorted({max(1, epochs * spe // 2), max(1, epochs * spe * 3 // 4)})
        sched = {"schedule": "step", "milestones": ",".join(f"{m}it" for m in marks), "gamma": 0.1}
    common = dict(batch_size=100, budget=f"{epochs}ep", eval_every=f"{epochs}ep", **sched)
    if optimizer == "sgd":
        return TrainingHparams(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, **common)
    return TrainingHparams(optimizer="adam", lr=1e-3, **common)


def one_run(
    method: str, density: float, optimizer: str, seed: int, data: Any, args: argparse.Namespace
) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = create_model("lenet_300_100", data.input_shape, data.num_classes).to(args.device)
    scorer = SCORERS.get(method)()
    hp = RunHparams(
        model=ModelHparams(model="lenet_300_100"),
        training=training_hparams(optimizer, args.epochs, args.schedule),
        pruning=PruningHparams(
            method=method, density=density, scope="global", score_batches=1, score_batch_size=100
        ),
    )
    xb, yb = Batcher(data.x_train, data.y_train, 100, seed=seed + 7).batch(0)
    batches = [] if scorer.data_free else [(xb, yb)]
    torch.manual_seed(seed)
    mask, cost = find_mask(
        scorer, model, batches, hp, context=ScoringContext(data=data, seed=seed, progress=False)
    )
    apply_mask(model, mask)
    res = train(model, data, hp.training, seed=seed, progress=False, desc=f"{method} {density}")
    acc = res.final["test_acc"]
    return {
        "method": method,
        "density": density,
        "optimizer": optimizer,
        "seed": seed,
        "test_error": 100.0 * (1.0 - acc),
        "kept": mask.num_kept,
        "layer_density": mask.layer_density(),
        "empty_layers": mask.metadata.get("empty_layers", []),
        "cost_to_find": cost,
        "train_wall_time": res.wall_time,
        "iterations": res.iterations,
    }


_WORKER: dict[str, Any] = {}


def _init_worker(args: argparse.Namespace) -> None:
    """One CPU thread per worker process: many small models train faster side by side than threaded."""
    torch.set_num_threads(1)
    _WORKER["args"] = args
    _WORKER["data"] = load_dataset("mnist", root=args.data_root, seed=0, val_size=0, device=args.device)


def _worker_run(method: str, density: float, optimizer: str, seed: int) -> dict[str, Any]:
    return one_run(method, density, optimizer, seed, _WORKER["data"], _WORKER["args"])


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    keys = sorted({(r["optimizer"], r["density"]) for r in runs}, key=lambda k: (k[0] != "sgd", -k[1]))
    for opt, dens in keys:
        for m in METHOD_ORDER + sorted({r["method"] for r in runs} - set(METHOD_ORDER)):
            rs = [r for r in runs if r["method"] == m and r["optimizer"] == opt and r["density"] == dens]
            if not rs:
                continue
            errs = [r["test_error"] for r in rs]
            out.append(
                {
                    "optimizer": opt,
                    "density": dens,
                    "sparsity": 1 - dens,
                    "method": m,
                    "n": len(rs),
                    "test_error_mean": statistics.fmean(errs),
                    "test_error_std": statistics.stdev(errs) if len(errs) > 1 else 0.0,
                    "paper_snip": PAPER.get((opt, dens)) if m == "snip" else None,
                    "find_seconds": statistics.fmean(r["cost_to_find"]["wall_time"] for r in rs),
                    "find_forward": rs[0]["cost_to_find"].get("forward_passes", 0),
                    "find_backward": rs[0]["cost_to_find"].get("backward_passes", 0),
                    "rounds": rs[0]["cost_to_find"].get("rounds", 1),
                }
            )
    return out


def markdown(summary: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Pruning at initialisation: LeNet-300-100 on MNIST (SNIP's setup)",
        "",
        f"Budget: **{meta['epochs']} epochs** per run ({meta['iterations']} iterations of batch 100, "
        f"{'lr ×0.1 at 1/2 and 3/4 of the budget' if meta.get('schedule') == 'step' else 'constant lr'}); "
        f"{meta['seeds']} seeds; scored on one batch of 100 training images; global selection. The SNIP paper "
        "trains 250k iterations, so errors here are an upper bound on what the same tickets reach with its budget.",
        f"SGD: momentum 0.9, lr 0.1, weight decay 5e-4. Adam: lr 1e-3. Device: {meta['device']} "
        f"({meta['platform']}, torch {meta['torch']}, {meta['jobs']} parallel job(s)), "
        f"{meta['wall_minutes']:.1f} min in all.",
        "",
        "| optimizer | sparsity | method | test error % (mean ± std) | SNIP paper | find: s | find: fwd/bwd passes | rounds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['optimizer']} | {100 * s['sparsity']:.0f}% | {s['method']} | "
            f"{s['test_error_mean']:.2f} ± {s['test_error_std']:.2f} (n={s['n']}) | {s['paper_snip'] or ''} | "
            f"{s['find_seconds']:.2f} | {s['find_forward']}/{s['find_backward']} | {s['rounds']} |"
        )
    if meta.get("collapse"):
        lines += [
            "",
            "Layer collapse (global, single shot unless stated): largest density at which a layer is emptied",
            "(None: no layer emptied down to the smallest density tried, "
            f"{min(meta['collapse_densities']):g}).",
            "",
        ]
        for m, d in meta["collapse"].items():
            lines.append(f"- {m}: {d}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--epochs", type=int, default=3, help="training epochs per run (default 3: minutes on CPU)"
    )
    ap.add_argument(
        "--schedule",
        choices=["constant", "step"],
        default="constant",
        help="lr schedule: constant, or step (×0.1 at 1/2 and 3/4 of the budget)",
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHOD_ORDER))
    ap.add_argument(
        "--sgd-densities", default="0.05,0.02", help="densities trained with SGD (SNIP: 95%%, 98%% sparsity)"
    )
    ap.add_argument(
        "--adam-densities", default="0.1", help="densities trained with Adam (SNIP: 90%% sparsity)"
    )
    ap.add_argument("--data-root", default=str(DEFAULT_ROOT))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument(
        "--jobs", type=int, default=1, help="runs in parallel, one process and one CPU thread each"
    )
    add_output_args(ap, "result name (default: <epochs>ep_<schedule>)")
    ap.add_argument("--no-collapse", action="store_true", help="skip the layer-collapse record")
    args = ap.parse_args(argv)
    out = ResultWriter(
        "scorers_mnist",
        args.variant or f"{args.epochs}ep_{args.schedule}",
        results_dir=args.results_dir,
        force_dirty=args.force_dirty,
    )
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = load_dataset("mnist", root=args.data_root, seed=0, val_size=0, device=args.device)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    grid = [("sgd", float(d)) for d in args.sgd_densities.split(",") if d] + [
        ("adam", float(d)) for d in args.adam_densities.split(",") if d
    ]
    jobs = [(m, dens, opt, seed) for seed in range(args.seeds) for opt, dens in grid for m in methods]
    runs = []

    def report(r: dict[str, Any]) -> None:
        runs.append(r)
        print(
            f"seed {r['seed']} {r['optimizer']:4s} density {r['density']:<5g} {r['method']:10s} "
            f"error {r['test_error']:.2f}% (find {r['cost_to_find']['wall_time']:.2f}s, "
            f"train {r['train_wall_time']:.1f}s)",
            flush=True,
        )

    if args.jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(
            args.jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(args,)
        ) as ex:
            futures = [ex.submit(_worker_run, *j) for j in jobs]
            for f in as_completed(futures):
                report(f.result())
        runs.sort(key=lambda r: (r["seed"], r["optimizer"], -r["density"], r["method"]))
    else:
        for j in jobs:
            report(one_run(*j, data, args))
    collapse: dict[str, Any] = {}
    cdens = [0.01, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4]
    if not args.no_collapse:
        torch.manual_seed(0)
        model = create_model("lenet_300_100", data.input_shape, data.num_classes).to(args.device)
        xb, yb = Batcher(data.x_train, data.y_train, 100, seed=7).batch(0)
        hp = RunHparams(pruning=PruningHparams(scope="global"))
        for m in methods:
            collapse[m] = first_collapse_density(SCORERS.get(m)(), model, [(xb, yb)], hp, cdens)
        if "synflow" in methods:
            collapse["synflow (100 rounds)"] = first_collapse_density(
                SCORERS.get("synflow")(), model, [(xb, yb)], hp, cdens, rounds=100
            )
    spe = math.ceil(data.train_size / 100)
    meta = {
        "epochs": args.epochs,
        "schedule": args.schedule,
        "iterations": args.epochs * spe,
        "seeds": args.seeds,
        "device": str(args.device),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "jobs": args.jobs,
        "wall_minutes": (time.perf_counter() - t0) / 60,
        "collapse": collapse,
        "collapse_densities": cdens,
        "paper": {f"{k[0]}@{k[1]}": v for k, v in PAPER.items()},
    }
    summary = summarize(runs)
    md = markdown(summary, meta)
    out.write({"meta": meta, "summary": summary, "runs": runs}, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
