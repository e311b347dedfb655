"""Our fused optimizers against torch.optim (the oracle), and the zero-preserving property."""

from __future__ import annotations

import pytest
import torch

from ticketsearch.core.hparams import TrainingHparams
from ticketsearch.training.optim import make_optimizer

CASES = [
    ("sgd", dict(momentum=0.0, weight_decay=0.0), lambda p: torch.optim.SGD(p, lr=0.05)),
    (
        "sgd",
        dict(momentum=0.9, weight_decay=5e-4),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
    ),
    (
        "sgd",
        dict(momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    ),
    ("adam", dict(weight_decay=0.0), lambda p: torch.optim.Adam(p, lr=0.05)),
    ("adam", dict(weight_decay=1e-2), lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=1e-2)),
    ("adamw", dict(weight_decay=0.1), lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1)),
]


@pytest.mark.parametrize("kind,kw,ref", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_matches_torch_optim(kind, kw, ref):
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    b = [torch.nn.Parameter(t.detach().clone()) for t in a]
    ours = make_optimizer(a, TrainingHparams(optimizer=kind, lr=0.05, **kw))
    theirs = ref(b)
    for step in range(25):
        g = [torch.randn_like(p) for p in a]
        if step == 12:  # a checkpoint round trip mid-way changes nothing
            state = ours.state_dict()
            ours = make_optimizer(a, TrainingHparams(optimizer=kind, lr=0.05, **kw))
            ours.load_state_dict(state)
        for p, q, gi in zip(a, b, g):
            p.grad, q.grad = gi.clone(), gi.clone()
        ours.step()
        theirs.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_zero_weight_with_zero_grad_stays_exactly_zero(kind):
    p = torch.nn.Parameter(torch.tensor([0.0, 1.0, -2.0]))
    opt = make_optimizer([p], TrainingHparams(optimizer=kind, lr=0.1, momentum=0.9, weight_decay=0.1))
    for _ in range(10):
        p.grad = torch.tensor([0.0, 0.3, -0.2])
        opt.step()
    assert p[0].item() == 0.0 and p[1].item() != 1.0


@pytest.mark.parametrize(
    "kind,kw,ref",
    [c for c in CASES]
    + [
        (
            "sgd",
            dict(momentum=0.0, weight_decay=1e-2),
            lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=1e-2),
        )
    ],
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)] + ["sgd-wd-no-momentum"],
)
def test_fused_grad_masks_match_masking_first(kind, kw, ref):
    """The fused path (masks folded into the update) equals torch.optim fed pre-masked gradients; pruned
    weights (zero, with masked gradients) stay exactly zero; unmasked parameters update as usual."""
    torch.manual_seed(1)
    mask = (torch.rand(6, 4) < 0.3).float()
    w0 = torch.randn(6, 4) * mask
    a = [torch.nn.Parameter(w0.clone()), torch.nn.Parameter(torch.randn(4))]
    b = [torch.nn.Parameter(t.detach().clone()) for t in a]
    ours = make_optimizer(a, TrainingHparams(optimizer=kind, lr=0.05, **kw))
    ours.set_grad_masks({id(a[0]): mask})
    theirs = ref(b)
    for _ in range(20):
        g = [torch.randn_like(p) for p in a]
        a[0].grad, a[1].grad = g[0].clone(), g[1].clone()
        b[0].grad, b[1].grad = g[0] * mask, g[1].clone()
        ours.step()
        theirs.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(a[0].detach()[mask == 0]) == 0
