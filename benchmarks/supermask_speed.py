"""Supermask training-step time vs the dense training step of the same model, on CPU.

One training step = forward, cross-entropy, zero_grad, backward, SGD step (lr 0.1, momentum 0.9, wd 5e-4):
for ``dense`` on the weights, for the supermask variants on the scores (weights frozen). Variants:

* ``dense``      — the plain model, no mask;
* ``reference``  — the straightforward edge-popup layer: a full stable sort of each layer's |scores| every
  forward, then ``W * mask`` through autograd (the spec; what the reference code does);
* ``torch``      — ticketsearch's pure-PyTorch fast kernel (warm-started band + chunk compaction);
* ``compiled``   — ticketsearch's compiled CPU kernel (the default ``fast`` kernel on CPU when it builds).

All variants run in one process, interleaved round by round (the machine's load drifts), after a warm-up;
each number is the median over rounds of the mean step time within a round. Ratios are to ``dense`` from
the same run. Results: ``benchmarks/results/supermask_speed/<variant>.{json,md}``, the variant named
after the threads (``1thread``, ``2threads``), prefixed by the models unless both run
(``lenet_300_100_2threads``) and suffixed by a batch or density other than 60 / 0.5 (``_b128``, ``_d0.1``);
``--variant`` to name it. From the repository root:

    python -m benchmarks.supermask_speed                # LeNet-300-100 and Conv-6, batch 60, 2 threads
    python -m benchmarks.supermask_speed --threads 1 --rounds 40
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from ticketsearch.models import create_model
from ticketsearch.sparse.supermask import cpu_extension, supermask_controller, to_supermask

from ._common import paired_ratios
from ._writer import ResultWriter, add_output_args

MODELS = {"lenet_300_100": (1, 28, 28), "conv6": (3, 32, 32)}
DEFAULTS = {"models": "lenet_300_100,conv6", "batch": 60, "density": 0.5}


def variant_name(models: str, threads: int, batch: int, density: float) -> str:
    name = f"{threads}thread" + ("s" if threads != 1 else "")
    if models != DEFAULTS["models"]:
        name = "+".join(m for m in models.split(",") if m) + "_" + name
    if batch != DEFAULTS["batch"]:
        name += f"_b{batch}"
    if density != DEFAULTS["density"]:
        name += f"_d{density:g}"
    return name


def make(name: str, variant: str, density: float):
    torch.manual_seed(0)
    model = create_model(name, MODELS[name], 10)
    if variant != "dense":
        to_supermask(model, density=density, kernel=variant, generator=torch.Generator().manual_seed(0))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    return model, opt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=DEFAULTS["models"])
    ap.add_argument("--batch", type=int, default=DEFAULTS["batch"])
    ap.add_argument("--density", type=float, default=DEFAULTS["density"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=0, help="0: 30 for LeNet, 6 for Conv-6")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--variants", default="dense,reference,torch,compiled")
    add_output_args(ap, "result name (default: from --threads, --models, --batch, --density)")
    args = ap.parse_args()
    variant = args.variant or variant_name(args.models, args.threads, args.batch, args.density)
    out = ResultWriter("supermask_speed", variant, results_dir=args.results_dir, force_dirty=args.force_dirty)
    torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    if "compiled" in variants and cpu_extension() is None:
        print("compiled kernel unavailable: skipping it", file=sys.stderr)
        variants.remove("compiled")
    results = {}
    load_before = os.getloadavg()
    for name in args.models.split(","):
        shape = MODELS[name]
        g = torch.Generator().manual_seed(0)
        n_batches = 20
        X = torch.randn(n_batches * args.batch, *shape, generator=g)
        Y = torch.randint(0, 10, (n_batches * args.batch,), generator=g)
        runs = {v: make(name, v, args.density) for v in variants}
        it = dict.fromkeys(variants, 0)

        def step(v: str, runs=runs, it=it, X=X, Y=Y, n_batches=n_batches) -> None:
            model, opt = runs[v]
            i = it[v] % n_batches
            it[v] += 1
            xb, yb = X[i * args.batch : (i + 1) * args.batch], Y[i * args.batch : (i + 1) * args.batch]
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        conv = name != "lenet_300_100"
        for v in variants:
            for _ in range(args.warmup if not conv else max(3, args.warmup // 5)):
                step(v)
        rounds = args.rounds or (6 if conv else 30)
        per_round = {v: (2 if conv else (3 if v == "reference" else 10)) for v in variants}
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(rounds):
            for v in variants:
                t0 = time.perf_counter()
                for _ in range(per_round[v]):
                    step(v)
                times[v].append((time.perf_counter() - t0) / per_round[v] * 1e3)
        med = {v: statistics.median(ts) for v, ts in times.items()}
        paired = paired_ratios(times, "dense", rounds=rounds) if "dense" in times else {}
        rec = {
            v: {
                "median_ms": med[v],
                "min_ms": min(times[v]),
                # the median over rounds of each round's time over dense's in the same round
                "ratio_to_dense": paired[v]["median"] if paired else None,
                "ratio_quartiles": [paired[v]["q1"], paired[v]["q3"]] if paired else None,
                "ratio_of_medians": med[v] / med["dense"] if "dense" in med else None,
                "rounds": len(times[v]),
                "steps_per_round": per_round[v],
            }
            for v in variants
        }
        for v in variants:
            if v in ("torch", "compiled"):
                rec[v]["selector_stats"] = dict(supermask_controller(runs[v][0]).selector.stats)
        results[name] = rec
        print(
            name,
            {v: f"{r['median_ms']:.3f} ms ({r['ratio_to_dense']:.2f}x)" for v, r in rec.items()},
            flush=True,
        )
    meta = {
        "batch": args.batch,
        "density": args.density,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "optimizer": "SGD lr 0.1 momentum 0.9 wd 5e-4",
        "target": "supermask step <= 1.3x the dense step",
    }
    lines = [
        "# Supermask training step vs dense step (CPU)",
        "",
        f"batch {args.batch}, density {args.density}, {args.threads} thread(s), torch {torch.__version__}, "
        f"load average before/after {load_before[0]:.1f}/{meta['loadavg_after'][0]:.1f} "
        "(the machine was shared with other jobs)",
        "",
        "`× dense`: the median over rounds of each round's step time over the dense step's in the same round "
        "[quartiles]; the ratio of the overall medians beside it.",
        "",
        "| model | variant | median step (ms) | × dense (paired) | ratio of medians |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, rec in results.items():
        for v, r in rec.items():
            q1, q3 = r["ratio_quartiles"]
            lines.append(
                f"| {name} | {v} | {r['median_ms']:.3f} | {r['ratio_to_dense']:.2f}× [{q1:.2f}, {q3:.2f}] "
                f"| {r['ratio_of_medians']:.2f}× |"
            )
    lines += ["", "Target: supermask step ≤ 1.3× the dense step. `reference` = full sort per forward."]
    out.write({"meta": meta, "results": results}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
