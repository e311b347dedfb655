"""RigL and SET (methods/dst.py): the drop-and-grow rule worked by hand, and the counts it keeps in training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from nets import one_thread  # noqa: F401  (autouse fixture)

from ticketsearch.core.hparams import TrainingHparams
from ticketsearch.core.mask import Mask
from ticketsearch.data import load_dataset
from ticketsearch.methods.dst import DropGrow, cosine_fraction
from ticketsearch.models import create_model
from ticketsearch.sparse import MaskedLinear, apply_mask, get_mask, prunable_parameters
from ticketsearch.training import train


def test_cosine_fraction_by_hand():
    assert cosine_fraction(0, 0.3, 100) == pytest.approx(0.3)
    assert cosine_fraction(50, 0.3, 100) == pytest.approx(0.15)
    assert cosine_fraction(25, 0.3, 100) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert cosine_fraction(100, 0.3, 100) == 0.0 and cosine_fraction(150, 0.3, 100) == 0.0


class One(nn.Module):
    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.fc = MaskedLinear(n_in, n_out, bias=False)

    def forward(self, x):
        return self.fc(x)


def _layer(weights, mask) -> nn.Module:
    m = One(len(weights[0]), len(weights))
    with torch.no_grad():
        m.fc.weight.copy_(torch.tensor(weights))
    apply_mask(m, {"fc.weight": torch.tensor(mask)})
    return m


def test_rigl_drops_the_smallest_kept_and_grows_the_largest_gradients():
    # 6 kept of 10; at it = 50 of T_end = 100 with α = 2/3: f = 1/3, so 2 dropped and 2 grown
    w = [[0.9, -0.1, 0.0, 0.5, 0.0], [0.0, -0.3, 0.2, 0.0, 0.7]]
    m = [[1, 1, 0, 1, 0], [0, 1, 1, 0, 1]]
    model = _layer(w, [[bool(v) for v in r] for r in m])
    g = torch.tensor([[0.0, 5.0, 0.4, 0.0, 9.0], [3.0, 0.0, 0.0, -0.6, 0.0]])
    sched = DropGrow(every=50, alpha=2 / 3, t_end=100, grow="gradient", seed=0)
    assert sched.needs_grads(50) and not sched.needs_grads(49) and not sched.needs_grads(100)
    new = sched.update(50, model, {"fc.weight": g})["fc.weight"]
    # drop |w| smallest among kept: -0.1 (0,1) and 0.2 (1,2); grow |g| largest among the rest (the two
    # just dropped included): 9.0 (0,4) and 5.0 (0,1): (0,1) was dropped and comes straight back
    want = torch.tensor([[1, 1, 0, 1, 1], [0, 1, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(new, want)
    assert int(new.sum()) == 6
    assert sched.update(49, model, {"fc.weight": g}) is None  # not an update step


def test_set_grows_at_random_from_the_seed_and_the_step():
    w = torch.arange(1.0, 41.0).reshape(4, 10)
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[:, :5] = True
    a = DropGrow(every=10, alpha=0.6, t_end=100, grow="random", seed=3)
    out = [a.update(10, _layer(w.tolist(), mask.tolist()), None)["fc.weight"] for _ in range(2)]
    assert torch.equal(out[0], out[1])  # a pure function of (seed, step): resumes the same
    other = DropGrow(every=10, alpha=0.6, t_end=100, grow="random", seed=4).update(
        10, _layer(w.tolist(), mask.tolist()), None
    )["fc.weight"]
    k = round(cosine_fraction(10, 0.6, 100) * 20)  # 20 kept
    for new in (out[0], other):
        assert int(new.sum()) == 20
        # only the k smallest kept may leave (|w| grows with the index): every other kept weight stays
        smallest = torch.zeros_like(mask)
        kept_idx = mask.flatten().nonzero().flatten()
        order = torch.sort(w.flatten()[kept_idx], stable=True).indices[:k]
        smallest.view(-1)[kept_idx[order]] = True
        assert not bool((mask & ~smallest & ~new).any())
        assert int((new & ~mask).sum()) <= k and int((new & ~(mask & ~smallest)).sum()) == k
    assert not torch.equal(out[0], other)


@pytest.mark.parametrize("grow", ["gradient", "random"])
def test_counts_hold_and_the_mask_moves_in_training(grow):
    data = load_dataset("digits", seed=0, device=torch.device("cpu"))
    torch.manual_seed(0)
    model = create_model("mlp_digits", tuple(data.input_shape), int(data.num_classes))
    g = torch.Generator().manual_seed(1)
    start = {n: torch.rand(p.shape, generator=g) < 0.2 for n, p in prunable_parameters(model).items()}
    apply_mask(model, start)
    sched = DropGrow(every=5, alpha=0.3, t_end=30, grow=grow, seed=0)
    seen = []

    class Watch(DropGrow):
        def update(self, it, m, grads):
            out = sched.update(it, m, grads)
            seen.append((it, Mask(dict(get_mask(m))).layer_counts()))
            return out

        def needs_grads(self, it):
            return sched.needs_grads(it)

    train(model, data, TrainingHparams(budget="40it", eval_every="20it", batch_size=32), seed=0,
          schedule=Watch(5, 0.3, 30, grow, 0))  # fmt: skip
    counts = {n: int(t.sum()) for n, t in start.items()}
    assert all(c == counts for _, c in seen)
    final = get_mask(model)
    assert any(not torch.equal(final[n], start[n]) for n in start)
    for n, p in prunable_parameters(model).items():
        assert bool((p.detach()[~final[n]] == 0).all())
