"""Cost of a fixed mask per training step on CPU: dense step vs each way of enforcing the mask.

Measured in one run, interleaved, on LeNet-300-100 at batch 60 (the paper) and 128 (open_lth's MNIST
recipe). Target from issue 3: masked step ≤ 1.05× the dense step. Compared: our ``inplace`` backend
(dense forward, one fused multiply of the gradients), the ``reference`` backend (W ⊙ M every forward),
in-place weight masking after the step, and torch.nn.utils.prune.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as tprune
from common import interleaved_medians, md_table, write_results

from ticketsearch.core import select
from ticketsearch.models import create_model
from ticketsearch.sparse import apply_mask, enforce_mask, grad_masker, masked_layers, prunable_parameters


def make_step(model: nn.Module, x, y, mode: str):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    mask_grads = grad_masker(model)  # what the training loop uses

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if mode == "inplace":
            mask_grads()
        opt.step()
        if mode == "weight_mul_after_step":
            enforce_mask(model)

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median over rounds is reported")
    args = ap.parse_args()
    torch.manual_seed(0)
    results = []
    for bs in (60, 128):
        base = create_model("lenet_300_100", (1, 28, 28), 10)
        g = torch.Generator().manual_seed(0)
        mask = select({n: torch.rand(p.shape, generator=g) for n, p in prunable_parameters(base).items()}, 0.2, scope="layerwise")
        x, y = torch.randn(bs, 1, 28, 28), torch.randint(0, 10, (bs,))
        models = {"dense": copy.deepcopy(base)}
        for mode in ("inplace", "reference", "weight_mul_after_step"):
            m = copy.deepcopy(base)
            apply_mask(m, mask, backend="reference" if mode == "reference" else "inplace")
            if mode == "weight_mul_after_step":
                for _, layer in masked_layers(m):
                    layer.backend = "none"  # forward dense, no gradient masking: weights re-zeroed after step
            models[mode] = m
        tp = copy.deepcopy(base)
        for name, layer in masked_layers(tp):
            tprune.custom_from_mask(layer, "weight", mask[f"{name}.weight"])
        models["torch_prune"] = tp
        steps = {k: make_step(m, x, y, k) for k, m in models.items()}
        med = interleaved_medians(steps, rounds=args.rounds, repeats=args.repeats)
        for k in steps:
            results.append({"batch": bs, "mode": k, "step_ms": med[k], "ratio_vs_dense": med[k] / med["dense"]})
    rows = [[r["batch"], r["mode"], f"{r['step_ms']:.3f}", f"{r['ratio_vs_dense']:.3f}"] for r in results]
    md = "# Masking overhead per training step (CPU, LeNet-300-100, SGD, density 0.2)\n\n"
    md += md_table(["batch", "mode", "step ms (median)", "× dense"], rows)
    md += "\n\nTarget: inplace ≤ 1.05× dense. `inplace` is ticketsearch's default backend.\n"
    write_results("masking_overhead", {"results": results}, md)
    print(md)


if __name__ == "__main__":
    main()
