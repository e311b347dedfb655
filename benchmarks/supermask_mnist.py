"""Supermasks with weights that are never trained: LeNet-300-100 on MNIST by default, any dataset/model by flag.

Edge-popup (Ramanujan et al. 2020) at density (fraction kept) 0.1, 0.3, 0.5, 0.7 and the Bernoulli supermask
(Zhou et al. 2019), each for ``--seeds`` seeds: signed Kaiming constant weights scaled for the density
(edge-popup's scale_fan), scores trained for ``--epochs`` epochs (edge-popup: SGD 0.1, momentum 0.9, wd 5e-4,
cosine, batch 128; Bernoulli: Adam 0.1, cosine, batch 128). The accuracy is the test accuracy of the
untrained weights under the final Mask (``core.select`` of the learned scores), i.e. the supermask's own.

Paper figures beside ours (MNIST only): Zhou et al. 2019 report 86% for a mask-only FC net on MNIST and
95.3% for a learned supermask; targets here: edge-popup ≥ 97.5% for k = 30–70%, ≥ 97.0% at k = 10%, Bernoulli
≥ 97.0%. Other datasets have no targets.

``--dataset`` (default mnist) and ``--model`` (default: the dataset's default model) pick the task; the
epochs default to the supermask recipe's budget for the dataset (``methods.learned_recipe``:
10 on MNIST-like data). ``--dense-baseline`` also trains a fresh dense copy of the model's weights with the
model's paper recipe (``models.training_recipe``) per seed and reports its final test
accuracy beside the supermasks.

From the repository root:

    python -m benchmarks.supermask_mnist                 # 2 seeds, 10 epochs (~10 min on 2 CPU cores)
    python -m benchmarks.supermask_mnist --seeds 1 --epochs 2
    python -m benchmarks.supermask_mnist --dataset fashion_mnist --dense-baseline --densities 0.1,0.3,0.5
    python -m benchmarks.supermask_mnist --dataset mnist1d --model cnn_mnist1d --data-root /tmp/ts_data \\
        --dense-baseline

Data: the IDX files in ``<repo>/../shared/datasets/{mnist,fashion-mnist}`` (``--data-root`` to change;
MNIST-1D is generated into it, so give a writable one). Results:
``benchmarks/results/supermask_mnist/<variant>.{json,md}``, the variant named ``<dataset>``, then
``_<model>`` for a non-default model and ``_<N>ep`` for epochs other than the recipe's (``mnist``,
``fashion_mnist``, ``mnist1d_cnn_mnist1d_300ep``); ``--variant`` to name it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time

import torch

from ticketsearch.core.hparams import PruningHparams, RunHparams
from ticketsearch.data import get_dataset_spec, load_dataset
from ticketsearch.methods import learned_recipe, run_learned
from ticketsearch.models import create_model
from ticketsearch.models import training_recipe as dense_training
from ticketsearch.training import train

from ._common import SHARED_DATA
from ._writer import ResultWriter, add_output_args

TARGETS = {
    ("supermask", 0.1): 0.970,
    ("supermask", 0.3): 0.975,
    ("supermask", 0.5): 0.975,
    ("supermask", 0.7): 0.975,
}
DATASET_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "mnist1d": "MNIST-1D"}
MODEL_NAMES = {
    "lenet_300_100": "LeNet-300-100",
    "mlp_mnist1d": "MLP 100-100",
    "cnn_mnist1d": "CNN (Greydanus 2020)",
}


def _recipe(hp) -> str:
    parts = [f"{hp.optimizer.upper() if hp.optimizer == 'sgd' else hp.optimizer.capitalize()} lr {hp.lr:g}"]
    if hp.momentum and hp.optimizer == "sgd":
        parts.append(f"momentum {hp.momentum:g}")
    if hp.weight_decay:
        parts.append(f"wd {hp.weight_decay:g}")
    parts.append(f"batch {hp.batch_size}")
    parts.append(hp.budget)
    if hp.schedule and hp.schedule != "constant":
        parts.append(str(hp.schedule))
    return ", ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--model", default=None, help="default: the dataset's default model")
    ap.add_argument(
        "--epochs", type=int, default=None, help="default: the supermask recipe's (10 on MNIST-like)"
    )
    ap.add_argument(
        "--dense-baseline", action="store_true", help="also train the dense weights (paper recipe)"
    )
    ap.add_argument("--densities", default="0.1,0.3,0.5,0.7")
    ap.add_argument("--bernoulli-density", type=float, default=0.5)
    ap.add_argument("--no-bernoulli", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared 2-core machine")
    ap.add_argument("--data-root", default=str(SHARED_DATA))
    add_output_args(ap, "result name (default: <dataset>[_<model>][_<N>ep], see the module docstring)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dataset = args.dataset
    default_model = get_dataset_spec(dataset).default_model
    model_name = args.model or default_model
    recipe_budget = learned_recipe(dataset, "supermask").budget
    recipe_epochs = int(recipe_budget[:-2]) if recipe_budget.endswith("ep") else None
    if args.epochs is None:
        if recipe_epochs is None:
            raise SystemExit(f"recipe budget {recipe_budget!r} is not in epochs; pass --epochs")
        args.epochs = recipe_epochs
    variant = args.variant or (
        dataset
        + ("" if model_name == default_model else f"_{model_name}")
        + ("" if args.epochs == recipe_epochs else f"_{args.epochs}ep")
    )
    out = ResultWriter("supermask_mnist", variant, results_dir=args.results_dir, force_dirty=args.force_dirty)
    is_mnist = dataset == "mnist"
    dense_hp = dense_training(model_name)
    configs = [("supermask", float(d)) for d in args.densities.split(",") if d]
    if not args.no_bernoulli:
        configs.append(("supermask-bernoulli", args.bernoulli_density))
    rows = []
    for seed in range(args.seeds):
        data = load_dataset(dataset, root=args.data_root, seed=seed)
        if args.dense_baseline:
            torch.manual_seed(seed)
            model = create_model(model_name, data.input_shape, data.num_classes)
            t0 = time.perf_counter()
            res = train(model, data, dense_hp, seed=seed, progress=False, desc="dense")
            row = {
                "method": "dense",
                "density": 1.0,
                "seed": seed,
                "test_acc": res.final["test_acc"],
                "best_val_acc": res.best.get("val_acc"),
                "best_test_acc": res.best.get("test_acc"),
                "iterations": res.iterations,
                "wall_time": time.perf_counter() - t0,
            }
            rows.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            out.write_partial(rows)
        for method, density in configs:
            torch.manual_seed(seed)
            model = create_model(model_name, data.input_shape, data.num_classes)
            training = dataclasses.replace(learned_recipe(dataset, method), budget=f"{args.epochs}ep")
            hp = RunHparams(training=training, pruning=PruningHparams(method=method, density=density))
            t0 = time.perf_counter()
            res = run_learned(method, model, data, hp, seed=seed, progress=False)
            m = res.metrics
            row = {
                "method": method,
                "density": density,
                "seed": seed,
                "test_acc": m["supermask_test_acc"],
                "expected_mask_test_acc": m.get("expected_mask_test_acc"),
                "learned_density": m.get("learned_density"),
                "mask_density": m["density"],  # the recorded Mask's (Bernoulli: learned, s > 0)
                "best_val_acc": m["supermask_best"].get("val_acc"),
                "wall_time": time.perf_counter() - t0,
                "kernel": m["kernel"],
            }
            rows.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            out.write_partial(rows)
    summary = []
    all_configs = ([("dense", 1.0)] if args.dense_baseline else []) + configs
    for method, density in all_configs:
        rs = [r for r in rows if r["method"] == method and r["density"] == density]
        accs = [r["test_acc"] for r in rs]
        ent = {
            "method": method,
            "density": density,
            "n": len(rs),
            "mean": statistics.mean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "min": min(accs),
            "target": (
                TARGETS.get((method, density), 0.970 if method == "supermask-bernoulli" else None)
                if is_mnist
                else None
            ),
            "wall_time_mean": statistics.mean(r["wall_time"] for r in rs),
        }
        if method == "supermask-bernoulli":
            ent["expected_mask_mean"] = statistics.mean(r["expected_mask_test_acc"] for r in rs)
            ent["learned_density_mean"] = statistics.mean(r["learned_density"] for r in rs)
            ent["mask_density_mean"] = statistics.mean(r["mask_density"] for r in rs)
        if method == "dense":
            ent["best_test_mean"] = statistics.mean(r["best_test_acc"] for r in rs)
        summary.append(ent)
    n_val = int(data.x_val.shape[0])
    n_train_all = n_val + int(data.x_train.shape[0])
    meta = {
        "model": model_name,
        "dataset": f"{dataset} ({n_val} validation images held out of the {n_train_all})",
        "epochs": args.epochs,
        "seeds": args.seeds,
        "weights": "signed Kaiming constant, fan_in scaled by density (scale_fan), never trained",
        "edge_popup_training": "SGD lr 0.1 momentum 0.9 wd 5e-4 cosine batch 128",
        "bernoulli_training": "Adam lr 0.1 cosine batch 128",
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
    }
    if args.dense_baseline:
        meta["dense_training"] = dataclasses.asdict(dense_hp)
    if is_mnist:
        meta["paper"] = {
            "zhou2019_mask_only_fc": 0.86,
            "zhou2019_learned_supermask": 0.953,
            "note": "Zhou et al. 2019 (Deconstructing lottery tickets), MNIST FC; figures as quoted in issue 5",
        }
    ds_title = DATASET_NAMES.get(dataset, dataset)
    model_title = MODEL_NAMES.get(model_name, model_name)
    intro = (
        f"{args.epochs} epochs, {args.seeds} seed(s), test accuracy of the untrained weights under the final Mask "
        "(mean ± std over seeds)."
    )
    if is_mnist:
        intro += " Paper: Zhou et al. 2019 — 86% mask-only FC, 95.3% learned supermask."
    else:
        intro += " No paper figures or targets for this dataset (Zhou et al. 2019's are for MNIST)."
    if args.dense_baseline:
        intro += (
            f" The dense row trains the weights themselves ({_recipe(dense_hp)}) and shows the final test "
            "accuracy; the learned-scores recipe is edge-popup's "
            f"({_recipe(dataclasses.replace(learned_recipe(dataset, 'supermask'), budget=f'{args.epochs}ep'))})."
        )
    lines = [
        f"# Supermasks on {ds_title}, {model_title}, untrained weights",
        "",
        intro,
        "",
        "| method | density (kept) | test acc | min | target | extra |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in summary:
        extra = ""
        if s["method"] == "supermask-bernoulli":
            extra = (
                f"expected mask {s['expected_mask_mean']:.2%}, mean keep probability "
                f"{s['learned_density_mean']:.3f}, recorded Mask density {s['mask_density_mean']:.3f}"
            )
        elif s["method"] == "dense":
            extra = f"weights trained; early-stop (best val) point {s['best_test_mean']:.2%}"
        tgt = f"≥ {s['target']:.1%}" if s["target"] else "-"
        lines.append(
            f"| {s['method']} | {s['density']:.2f} | {s['mean']:.2%} ± {s['std']:.2%} | {s['min']:.2%} | {tgt} | {extra} |"
        )
    sm_rows = [r for r in rows if r["method"] != "dense"]
    sm_wall = statistics.mean(r["wall_time"] for r in sm_rows)
    wall = f"Wall time per run: {sm_wall:.{0 if sm_wall >= 10 else 1}f} s"
    if args.dense_baseline:
        dense_wall = statistics.mean(r["wall_time"] for r in rows if r["method"] == "dense")
        wall += f" (dense baseline: {dense_wall:.{0 if dense_wall >= 10 else 1}f} s)"
    lines += ["", f"{wall} ({args.threads} thread)."]
    out.write({"meta": meta, "summary": summary, "runs": rows}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
