"""Training-step time of every masked path beside the dense step, on one device, ratios from one run.

Issue 12's benchmark. Models (density 0.2, a random layerwise mask): LeNet-300-100 batch 60, Conv-6 batch
60, VGG-16-BN batch 128, ResNet-20 batch 128 (``--quick``: the first two, fewer steps). One step = forward,
cross-entropy, zero_grad, backward, ticketsearch's optimizer step (SGD, lr 0.1, momentum 0.9, weight decay
5e-4): what ``train`` runs. Modes:

* ``dense``            — the plain model (every ratio is to this step);
* ``torch_prune``      — ``torch.nn.utils.prune.custom_from_mask`` on the dense model;
* ``reference``        — our reference backend: ``W ⊙ M`` in every forward (the oracle);
* ``inplace``          — our default backend: pruned weights held at zero, ``grad ⊙ mask`` in the update;
* ``triton``, ``triton_bits`` — the Triton masked linears (bool / bit-packed mask; CUDA only);
* ``sm_reference``     — the reference edge-popup layer: a full sort of |scores| per layer and forward;
* ``sm_fast``          — the supermask kernel ``kernel=fast`` resolves to here (compiled on CPU, torch on
  CUDA), ``sm_triton`` — the fused Triton supermask kernel (CUDA only);
* ``graph_dense``, ``graph_inplace``, ``graph_inplace_bf16`` — the same step captured whole in a CUDA graph
  by :class:`ticketsearch.training.graphs.GraphStep` (what ``train`` replays on CUDA; the batch gathered
  in-graph through a static index), the last under ``--precision bf16`` autocast (graphs are CUDA only:
  on CPU they are listed as skipped); ``inplace_bf16`` — the eager ``inplace`` step under bf16 autocast;
* ``population``       — one step of K masked members stacked (:mod:`ticketsearch.training.population`),
  compared with K sequential ``inplace`` steps (LeNet-300-100, and Conv-6 on CUDA).

"fastest" is the quickest of ``inplace``/``triton``/``triton_bits`` (masked) and of the ``sm_*`` kernels
other than the reference (supermask). Timing: every mode's step is sampled round-robin (one step of each in
turn, in a fresh random order) after a warm-up, so the machine's drift and the cache evictions of
the big modes hit all alike; per step CUDA events on a GPU, perf_counter
on a CPU; the median over ``rounds × repeats`` (≥ 50) steps. Not measured here (out of this script's
scope): open_lth end to end (``openlth_speed``; ``benchmarks/gpu_check.sh`` times a find with and without
``--graph``).

Results: ``benchmarks/results/speed/<variant>.{json,md}``, the variant ``cpu`` or ``cuda`` by default
(``--variant`` to name it). From the repository root:

    python -m benchmarks.speed --quick --device cpu      # LeNet + Conv-6, 60 steps per mode
    python -m benchmarks.speed --device cuda             # all four models, K = 128 population
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as tprune

from ticketsearch.core import select
from ticketsearch.core.hparams import TrainingHparams
from ticketsearch.models import create_model
from ticketsearch.sparse import apply_mask, mask_pairs, masked_layers, prunable_parameters
from ticketsearch.sparse.kernels import MASKED, TOPK, find_kernel, resolve_topk
from ticketsearch.sparse.supermask import to_supermask
from ticketsearch.training.graphs import GraphStep
from ticketsearch.training.optim import make_optimizer

from ._common import paired_ratios
from ._writer import ResultWriter, add_output_args, md_table

MODELS: dict[str, tuple[tuple[int, ...], int]] = {  # input shape, batch
    "lenet_300_100": ((1, 28, 28), 60),
    "conv6": ((3, 32, 32), 60),
    "vgg16": ((3, 32, 32), 128),
    "resnet20": ((3, 32, 32), 128),
}
QUICK_MODELS = ("lenet_300_100", "conv6")
POPULATION_MODELS = {
    "cuda": ("lenet_300_100", "conv6"),
    "cpu": ("lenet_300_100",),
}  # Conv-6 × K: minutes on CPU
DENSITY = 0.2
HP = TrainingHparams(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4)
MASKED_FAST = ("inplace", "triton", "triton_bits")


def _mask(model: nn.Module, seed: int = 0) -> Any:
    g = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(p.shape, generator=g) for n, p in prunable_parameters(model).items()}
    return select(scores, DENSITY, scope="layerwise")


def _weight_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, fold_masks: bool
) -> Callable[[], None]:
    opt = make_optimizer(model.parameters(), HP)
    if fold_masks:
        opt.set_grad_masks({id(p): m for p, m in mask_pairs(model)})

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _graph_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, hp: TrainingHparams
) -> tuple[Callable[[], None] | None, str | None]:
    """The step ``train`` replays on CUDA (masks folded into the update), captured; or why it could not be."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, hp)
    opt.set_grad_masks({id(p): m for p, m in mask_pairs(model)})
    data = argparse.Namespace(x_train=x, y_train=y)
    loss_acc = torch.zeros((), dtype=torch.float64, device=x.device)
    gs = GraphStep(model, data, hp, opt, params, loss_acc, lambda: None)
    idx = torch.arange(x.shape[0], device=x.device)
    if not gs.capture(idx):
        return None, gs.failure

    def step() -> None:
        gs(idx, hp.lr)

    return step, None


def _eager_bf16_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = make_optimizer(model.parameters(), HP)
    opt.set_grad_masks({id(p): m for p, m in mask_pairs(model)})

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def build_steps(
    name: str, device: torch.device, population: int
) -> tuple[dict[str, Callable[[], None]], dict[str, Any]]:
    shape, batch = MODELS[name]
    torch.manual_seed(0)
    base = create_model(name, shape, 10).to(device)
    mask = _mask(base)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *shape, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    steps: dict[str, Callable[[], None]] = {}
    info: dict[str, Any] = {"batch": batch, "params": sum(p.numel() for p in base.parameters())}

    steps["dense"] = _weight_step(copy.deepcopy(base), x, y, fold_masks=False)
    pruned = copy.deepcopy(base)
    for lname, layer in masked_layers(pruned):
        tprune.custom_from_mask(layer, "weight", mask[f"{lname}.weight"].to(device))
    steps["torch_prune"] = _weight_step(pruned, x, y, fold_masks=False)
    for backend in ("reference", "inplace", "triton", "triton_bits"):
        k = find_kernel(MASKED, backend)
        if k is None or (backend.startswith("triton") and device.type != "cuda"):
            continue  # Triton's interpreter on CPU is a correctness tool, not a speed path
        if not k.supports(device, torch.float32) or not k.available(build=False):
            info.setdefault("skipped", {})[backend] = k.unavailable_reason(build=False) or "unsupported here"
            continue
        m = apply_mask(copy.deepcopy(base), mask, backend=backend)
        steps[backend] = _weight_step(m, x, y, fold_masks=True)

    graph_modes = {
        "graph_dense": (copy.deepcopy(base), HP),
        "graph_inplace": (apply_mask(copy.deepcopy(base), mask, backend="inplace"), HP),
        "graph_inplace_bf16": (
            apply_mask(copy.deepcopy(base), mask, backend="inplace"),
            dataclasses.replace(HP, precision="bf16"),
        ),
    }
    for mode, (gm, ghp) in graph_modes.items():
        if device.type != "cuda":
            info.setdefault("skipped", {})[mode] = "CUDA graphs are CUDA-only"
            continue
        gstep, why = _graph_step(gm, x, y, ghp)
        if gstep is None:
            info.setdefault("skipped", {})[mode] = why
            continue
        steps[mode] = gstep
    steps["inplace_bf16"] = _eager_bf16_step(apply_mask(copy.deepcopy(base), mask, backend="inplace"), x, y)

    sm_kernels = {"sm_reference": "reference", "sm_fast": "fast"}
    if device.type == "cuda":
        sm_kernels["sm_triton"] = "triton"
    info["sm_fast_kernel"] = resolve_topk("fast", device, torch.float32).name
    for mode, kernel in sm_kernels.items():
        if kernel == "triton":
            k = find_kernel(TOPK, "triton")
            if k is None or not k.available(build=False):
                info.setdefault("skipped", {})[mode] = "triton unavailable"
                continue
        torch.manual_seed(0)
        sm = create_model(name, shape, 10).to(device)
        to_supermask(sm, density=DENSITY, kernel=kernel, generator=torch.Generator().manual_seed(0))
        steps[mode] = _weight_step(sm, x, y, fold_masks=False)  # the scores are what requires grad

    if population > 0 and name in POPULATION_MODELS[device.type]:
        from ticketsearch.training.population import PopulationTrainer

        members = []
        for i in range(population):
            torch.manual_seed(100 + i)
            m = create_model(name, shape, 10).to(device)
            members.append(apply_mask(m, _mask(m, seed=100 + i)))
        trainer = PopulationTrainer(members, HP)
        del members
        xs = torch.randn(population, batch, *shape, generator=g).to(device)
        ys = torch.randint(0, 10, (population, batch), generator=g).to(device)

        def pop_step() -> None:
            trainer.step(xs, ys, HP.lr)

        steps["population"] = pop_step
        info["population_k"] = population
    return steps, info


def interleaved(
    steps: dict[str, Callable[[], None]],
    *,
    rounds: int,
    repeats: int,
    warmup: int,
    cuda: bool,
    round_s: float = 0.0,
) -> dict[str, dict[str, float]]:
    """Median/p10/p90 ms per step of each mode, sampled round-robin in random orders (CUDA events on a
    GPU)."""
    keys = list(steps)
    for _ in range(warmup):
        for k in keys:
            steps[k]()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()  # one step of every mode: how many fit in a round of `round_s` seconds
    for k in keys:
        steps[k]()
    if cuda:
        torch.cuda.synchronize()
    repeats = min(max(repeats, int(round_s / max(time.perf_counter() - t0, 1e-6))), 10 * repeats)
    samples: dict[str, list[float]] = {k: [] for k in keys}
    rng = random.Random(0)
    for _ in range(rounds):
        events: list[tuple[str, Any, Any]] = []
        for _ in range(repeats):
            # a fresh order every time: a mode that always ran right after a big one (the population
            # evicts the caches) would pay for it in every sample of a fixed rotation
            for k in rng.sample(keys, len(keys)):
                if cuda:
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    e0.record()
                    steps[k]()
                    e1.record()
                    events.append((k, e0, e1))
                else:
                    t0 = time.perf_counter()
                    steps[k]()
                    samples[k].append((time.perf_counter() - t0) * 1e3)
        if cuda:
            torch.cuda.synchronize()
            for k, e0, e1 in events:
                samples[k].append(e0.elapsed_time(e1))
    # every mode took `repeats` samples in each round: the rounds pair them (a slow spell divides out)
    paired = paired_ratios(samples, "dense", rounds=rounds) if "dense" in samples else {}
    out = {}
    for k, v in samples.items():
        s = sorted(v)
        out[k] = {"median_ms": statistics.median(v), "p10_ms": s[len(s) // 10], "p90_ms": s[9 * len(s) // 10]}
        if paired:
            out[k].update(
                ratio_paired=paired[k]["median"], ratio_q1=paired[k]["q1"], ratio_q3=paired[k]["q3"]
            )
    return out


def summarise(name: str, timing: dict[str, dict[str, float]], info: dict[str, Any]) -> dict[str, Any]:
    dense = timing["dense"]["median_ms"]
    # the median of paired per-round ratios where the mode was sampled beside dense, else (a mode timed
    # apart) the ratio of the medians
    ratios = {k: v.get("ratio_paired", v["median_ms"] / dense) for k, v in timing.items()}
    fast = [k for k in MASKED_FAST if k in timing]
    best = min(fast, key=lambda k: timing[k]["median_ms"])
    sm = [k for k in timing if k.startswith("sm_") and k != "sm_reference"]
    sm_best = min(sm, key=lambda k: timing[k]["median_ms"]) if sm else None
    out: dict[str, Any] = {
        "model": name,
        **info,
        "timing": timing,
        "ratio_vs_dense": ratios,
        "fastest_masked": best,
        "fastest_masked_ratio": ratios[best],
        "fastest_supermask": sm_best,
        "fastest_supermask_ratio": ratios[sm_best] if sm_best else None,
        "graph_ratio": ratios.get("graph_inplace"),  # the whole masked step as a graph, × dense eager
    }
    if "population" in timing and "inplace" in timing:
        k = info["population_k"]
        out["population_throughput_vs_sequential"] = (
            k * info["population_inplace_ms"] / timing["population"]["median_ms"]
        )
    return out


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    md = f"# Training-step time per path ({meta['device_name']}, density {DENSITY})\n\n"
    md += (
        f"Median ms per step over {meta['rounds']} rounds of ≥ {meta['repeats']} steps per mode (more for fast "
        f"models, to fill ~{meta['round_seconds']:g} s a round) after {meta['warmup']} warm-up rounds, every "
        f"mode sampled round-robin in one run ({meta['clock']}); the population is timed apart, beside "
        f"`inplace` (its big step evicts the caches of whatever runs next); torch "
        f"{meta['torch']}. Ratios are to the dense step of the same run: the median over rounds of each "
        "round's median over dense's in the same round [quartiles], where a mode ran in dense's rounds (the "
        "population, timed apart, is a ratio of medians).\n\n"
    )
    if meta["device"] == "cpu":
        md += (
            f"CPU: {meta['threads']} torch thread(s); 1-minute load average {meta['load_average_start']:.1f} at the "
            f"start, {meta['load_average_end']:.1f} at the end (a shared machine: p10–p90 shows the noise; sampling "
            "every mode in a fresh random order each time keeps the ratios fair).\n\n"
        )
    modes = []
    for r in results:
        modes += [k for k in r["timing"] if k not in modes]
    rows = []
    for r in results:
        for k in modes:
            if k not in r["timing"]:
                continue
            t = r["timing"][k]
            note = ""
            if k == "sm_fast":
                note = f"kernel `{r['sm_fast_kernel']}`"
            if k == "population":
                note = f"K = {r['population_k']}: {r['population_throughput_vs_sequential']:.1f}× the throughput of K sequential `inplace` steps"
            rows.append(
                [
                    f"{r['model']} b{r['batch']}",
                    k,
                    f"{t['median_ms']:.3f}",
                    f"{t['p10_ms']:.3f}–{t['p90_ms']:.3f}",
                    f"{r['ratio_vs_dense'][k]:.3f}"
                    + (f" [{t['ratio_q1']:.3f}, {t['ratio_q3']:.3f}]" if "ratio_q1" in t else ""),
                    note,
                ]
            )
    md += md_table(["model", "mode", "ms/step (median)", "p10–p90", "× dense", "note"], rows)
    md += "\n\n## Against issue 12's targets\n\n"
    trows = []
    for r in results:
        trows.append(
            [
                f"{r['model']} b{r['batch']}",
                f"{r['fastest_masked']} {r['fastest_masked_ratio']:.3f}× (≤ 1.00×)",
                f"{r['ratio_vs_dense'].get('torch_prune', float('nan')):.3f}×",
                f"{r['fastest_supermask']} {r['fastest_supermask_ratio']:.3f}× (≤ 1.10×); reference {r['ratio_vs_dense']['sm_reference']:.2f}×"
                if r["fastest_supermask"]
                else "-",
                f"{r['population_throughput_vs_sequential']:.1f}× (K = {r['population_k']})"
                if "population_throughput_vs_sequential" in r
                else "-",
                f"{r['graph_ratio']:.3f}×" + (" (≤ 0.12×)" if r["model"] == "lenet_300_100" else "")
                if r.get("graph_ratio") is not None
                else "- (" + str(r.get("skipped", {}).get("graph_inplace", "not run")) + ")",
            ]
        )
    md += md_table(
        [
            "model",
            "fastest masked step",
            "torch prune",
            "fastest supermask step",
            "population throughput",
            "masked step as a CUDA graph",
        ],
        trows,
    )
    md += (
        "\n\nThe issue's targets are GPU figures (H100/H200): masked ≤ 1.00× dense, supermask ≤ 1.10×, a "
        "K = 128 population ≥ 150× K sequential steps. CPU figures are there so the CPU path does not "
        "regress (masked ≤ 1.05×, supermask 1.29× on LeNet before this issue). The whole masked step as a "
        "CUDA graph (`graph_inplace`) targets ≤ 0.12× the dense eager step on LeNet-300-100 (a hand-made "
        "graph gave 0.146×); graphs are CUDA-only, so a CPU run lists them as skipped.\n"
    )
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--quick", action="store_true", help="LeNet-300-100 and Conv-6 only, fewer steps")
    ap.add_argument("--models", default=None, help="comma-separated subset of " + ", ".join(MODELS))
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 5; quick 3)")
    ap.add_argument(
        "--repeats", type=int, default=None, help="steps per mode per round, at least (default 20)"
    )
    ap.add_argument(
        "--round-seconds",
        type=float,
        default=4.0,
        help="more repeats for fast models, up to 10× --repeats, to fill a round of this many seconds",
    )
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps per mode (default 10; quick 5)")
    ap.add_argument("--population", type=int, default=None, help="K (default 128 on CUDA, 8 on CPU; 0: off)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: torch's)")
    add_output_args(ap, "result name (default: cpu or cuda)")
    args = ap.parse_args()
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:  # true float32, as the kernels compute (and what the reference is compared in)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    names = args.models.split(",") if args.models else list(QUICK_MODELS if args.quick else MODELS)
    for n in names:
        if n not in MODELS:
            raise SystemExit(f"error: unknown model '{n}' (choose from: {', '.join(MODELS)})")
    rounds = args.rounds or (3 if args.quick else 5)
    repeats = args.repeats or 20
    warmup = args.warmup if args.warmup is not None else (5 if args.quick else 10)
    if rounds * repeats < 50:
        raise SystemExit(f"error: --rounds × --repeats = {rounds * repeats}; the median needs ≥ 50 steps")
    population = args.population if args.population is not None else (128 if cuda else 8)
    out = ResultWriter(
        "speed", args.variant or device.type, results_dir=args.results_dir, force_dirty=args.force_dirty
    )
    meta = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else "CPU",
        "torch": torch.__version__,
        "clock": "CUDA events" if cuda else "perf_counter",
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "rounds": rounds,
        "repeats": repeats,
        "warmup": warmup,
        "round_seconds": args.round_seconds,
        "density": DENSITY,
        "optimizer": "sgd lr 0.1 momentum 0.9 wd 5e-4",
        "load_average_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    results = []
    for name in names:
        t0 = time.perf_counter()
        steps, info = build_steps(name, device, population)
        pop = steps.pop("population", None)
        kw = dict(rounds=rounds, repeats=repeats, warmup=warmup, cuda=cuda, round_s=args.round_seconds)
        timing = interleaved(steps, **kw)
        if pop is not None:  # apart: its step evicts the caches of whatever runs next
            pair = interleaved({"inplace": steps["inplace"], "population": pop}, **kw)
            timing["population"] = pair["population"]
            info["population_inplace_ms"] = pair["inplace"]["median_ms"]
        results.append(summarise(name, timing, info))
        r = results[-1]
        print(
            f"{name}: fastest masked {r['fastest_masked']} {r['fastest_masked_ratio']:.3f}x, "
            f"supermask {r['fastest_supermask']} {r['fastest_supermask_ratio']:.3f}x "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        del steps
        if cuda:
            torch.cuda.empty_cache()
    meta["load_average_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    md = markdown(results, meta)
    out.write({"meta": meta, "results": results}, md)
    print(md)


if __name__ == "__main__":
    main()
