"""CUDA paths against the CPU reference: masked training, the runner end to end, learned supermasks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from nets import digits_hparams

from ticketsearch.core import select
from ticketsearch.core.hparams import (
    TrainingHparams,
)
from ticketsearch.models import create_model
from ticketsearch.sparse import apply_mask, grad_masker, prunable_parameters
from ticketsearch.training.optim import make_optimizer

pytestmark = pytest.mark.gpu  # TF32 off for every test: tests/gpu/conftest.py


def _lenet5_pair():
    torch.manual_seed(0)
    cpu = create_model("lenet5", (1, 28, 28), 10)
    g = torch.Generator().manual_seed(0)
    mask = select(
        {n: torch.rand(p.shape, generator=g) for n, p in prunable_parameters(cpu).items()},
        0.1,
        scope="layerwise",
    )
    gpu = copy.deepcopy(cpu).cuda()
    apply_mask(cpu, mask)
    apply_mask(gpu, mask)
    return cpu, gpu, mask


def test_masked_forward_backward_on_cuda_matches_cpu():
    cpu, gpu, mask = _lenet5_pair()
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    for model, dev in ((cpu, "cpu"), (gpu, "cuda")):
        F.cross_entropy(model(x.to(dev)), y.to(dev)).backward()
        grad_masker(model)()
    for (n, a), b in zip(prunable_parameters(cpu).items(), prunable_parameters(gpu).values()):
        assert torch.count_nonzero(b.grad[~mask[n].cuda()]) == 0
        torch.testing.assert_close(a.grad, b.grad.cpu(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw"])
def test_optimizer_steps_on_cuda_match_cpu(opt):
    """Same gradients fed to both (Adam's first steps are ≈ lr·sign(g), so CPU/GPU gradient noise on
    near-zero gradients would flip whole updates: the optimizer is compared on identical inputs)."""
    cpu, gpu, mask = _lenet5_pair()
    hp = TrainingHparams(optimizer=opt, lr=0.01, momentum=0.9, weight_decay=1e-3)
    oc, og = make_optimizer(cpu.parameters(), hp), make_optimizer(gpu.parameters(), hp)
    mc, mg = grad_masker(cpu), grad_masker(gpu)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    for _ in range(5):
        oc.zero_grad()
        og.zero_grad()
        F.cross_entropy(cpu(x), y).backward()
        for a, b in zip(cpu.parameters(), gpu.parameters()):
            b.grad = a.grad.cuda()
        mc()
        mg()
        oc.step()
        og.step()
    for (n, a), b in zip(prunable_parameters(cpu).items(), prunable_parameters(gpu).values()):
        assert torch.count_nonzero(b.detach()[~mask[n].cuda()]) == 0
        torch.testing.assert_close(a, b.cpu(), rtol=1e-5, atol=1e-6)


def test_runner_end_to_end_on_cuda(tmp_path):
    from ticketsearch.core import Mask
    from ticketsearch.experiments.runner import RunOptions, run_find

    hp = digits_hparams(training=dict(optimizer="adam", lr=3e-3, batch_size=32, budget="10ep"), rounds=2)
    s = run_find(hp, seed=0, opts=RunOptions(root=tmp_path, device="cuda", progress=False))
    assert s.rows[-1]["test_acc"] > 0.9
    masks = [Mask.load(r["mask"]) for r in s.rows]
    assert masks[2].is_subset_of(masks[1]) and masks[1].is_subset_of(masks[0])


def test_supermask_on_cuda(tmp_path):
    from ticketsearch.experiments.runner import RunOptions, run_find

    sgd = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine")
    hp = digits_hparams("supermask", training=dict(sgd, batch_size=64, budget="10ep"), density=0.5)
    s = run_find(hp, seed=0, opts=RunOptions(root=tmp_path, device="cuda", progress=False))
    assert s.rows[-1]["density"] == pytest.approx(0.5, abs=1e-3)
    assert s.rows[-1]["test_acc"] > 0.6
