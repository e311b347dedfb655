"""Cost of a fixed mask per training step on CPU: the dense step vs each way of enforcing the mask.

Measured in one run, interleaved round-robin, on LeNet-300-100 at batch 60 (the paper) and 128 (open_lth's
MNIST recipe), with ticketsearch's optimizers (what `train` runs). Target from issue 3: masked step ≤ 1.05×
the dense step (in-place weight masking measured 1.07×, torch.nn.utils.prune 1.30×). Compared:

- ``fused``: ticketsearch's default (``inplace`` backend, dense forward; ``grad ⊙ mask`` folded into the
  optimizer update);
- ``grad_mask_pass``: the same with a separate fused multiply of the gradients before the step;
- ``weight_mul_after_step``: dense forward, weights re-zeroed after every step;
- ``reference``: ``W ⊙ M`` in every forward (the oracle backend);
- ``torch_prune``: ``torch.nn.utils.prune.custom_from_mask``.

Results: ``benchmarks/results/masking_overhead/default.{json,md}`` (``--variant`` to name another). From
the repository root:

    python -m benchmarks.masking_overhead                       # 5 rounds × 200 steps per mode
    python -m benchmarks.masking_overhead --rounds 3 --repeats 100   # what make bench runs
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as tprune

from ticketsearch.core import select
from ticketsearch.core.hparams import TrainingHparams
from ticketsearch.models import create_model
from ticketsearch.sparse import (
    apply_mask,
    enforce_mask,
    grad_masker,
    mask_pairs,
    masked_layers,
    prunable_parameters,
)
from ticketsearch.training.optim import make_optimizer

from ._common import fmt_ratio, interleaved_samples, paired_ratios
from ._writer import ResultWriter, add_output_args, md_table

MODES = ("dense", "fused", "grad_mask_pass", "weight_mul_after_step", "reference", "torch_prune")


def make_step(model: nn.Module, x, y, mode: str, hp: TrainingHparams):
    opt = make_optimizer(model.parameters(), hp)
    masker = grad_masker(model) if mode == "grad_mask_pass" else None
    if mode == "fused":
        opt.set_grad_masks({id(p): m for p, m in mask_pairs(model)})

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if masker is not None:
            masker()
        opt.step()
        if mode == "weight_mul_after_step":
            enforce_mask(model)

    return step


def build(base: nn.Module, mask, mode: str) -> nn.Module:
    m = copy.deepcopy(base)
    if mode == "dense":
        return m
    if mode == "torch_prune":
        for name, layer in masked_layers(m):
            tprune.custom_from_mask(layer, "weight", mask[f"{name}.weight"])
        return m
    apply_mask(m, mask, backend="reference" if mode == "reference" else "inplace")
    if mode == "weight_mul_after_step":
        for _, layer in masked_layers(m):
            layer.backend = "none"  # dense forward, no gradient masking: weights re-zeroed after the step
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    add_output_args(ap, "result name (default: default)")
    args = ap.parse_args()
    out = ResultWriter(
        "masking_overhead",
        args.variant or "default",
        results_dir=args.results_dir,
        force_dirty=args.force_dirty,
    )
    torch.manual_seed(0)
    results = []
    recipes = {
        "sgd 0.1 (open_lth)": TrainingHparams(optimizer="sgd", lr=0.1),
        "adam 1.2e-3 (paper)": TrainingHparams(optimizer="adam", lr=1.2e-3),
    }
    for bs in (60, 128):
        for rname, hp in recipes.items():
            base = create_model("lenet_300_100", (1, 28, 28), 10)
            g = torch.Generator().manual_seed(0)
            mask = select(
                {n: torch.rand(p.shape, generator=g) for n, p in prunable_parameters(base).items()},
                0.2,
                scope="layerwise",
            )
            x, y = torch.randn(bs, 1, 28, 28), torch.randint(0, 10, (bs,))
            steps = {k: make_step(build(base, mask, k), x, y, k, hp) for k in MODES}
            samples = interleaved_samples(steps, rounds=args.rounds, repeats=args.repeats)
            paired = paired_ratios(samples, "dense", rounds=args.rounds)
            med = {k: statistics.median(v) for k, v in samples.items()}
            for k in MODES:
                results.append(
                    {
                        "batch": bs,
                        "optimizer": rname,
                        "mode": k,
                        "step_ms": med[k],
                        "ratio_vs_dense": paired[k]["median"],
                        "ratio_quartiles": [paired[k]["q1"], paired[k]["q3"]],
                        "ratio_of_medians": med[k] / med["dense"],
                    }
                )
    rows = [
        [
            r["batch"],
            r["optimizer"],
            r["mode"],
            f"{r['step_ms']:.3f}",
            fmt_ratio(
                {"median": r["ratio_vs_dense"], "q1": r["ratio_quartiles"][0], "q3": r["ratio_quartiles"][1]}
            ),
            f"{r['ratio_of_medians']:.3f}×",
        ]
        for r in results
    ]
    md = "# Masking overhead per training step (CPU, LeNet-300-100, density 0.2)\n\n"
    md += (
        f"{args.rounds} rounds × {args.repeats} steps per mode, sampled round-robin in one run. `× dense`: the "
        "median over rounds of each round's median step time over dense's in the same round [quartiles]; "
        "the ratio of the overall medians beside it.\n\n"
    )
    md += md_table(
        ["batch", "optimizer", "mode", "step ms (median)", "× dense (paired)", "ratio of medians"], rows
    )
    md += "\n\nTarget: ≤ 1.05× dense. `fused` is what ticketsearch's training loop runs.\n"
    out.write({"results": results}, md)
    print(md)


if __name__ == "__main__":
    main()
