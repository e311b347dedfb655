"""ProsPr against oracles that share no code with it: central finite differences of an unrolled loss written
out by hand (full meta-gradient), the first-order closed form, and SNIP at K = 0."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ticketsearch.core.errors import ConfigError
from ticketsearch.core.hparams import PruningHparams, RunHparams
from ticketsearch.core.mask import Mask, exact_count
from ticketsearch.scorers import SCORERS, find_mask
from ticketsearch.sparse import MaskedLinear, apply_mask, prunable_shapes


def _hp(args: dict | None = None, **pruning) -> RunHparams:
    return RunHparams(
        pruning=PruningHparams(method="prospr", **pruning), method_args=tuple(sorted((args or {}).items()))
    )


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(MaskedLinear(4, 3), nn.Tanh(), MaskedLinear(3, 3)).double()


def _batches(n: int = 2, size: int = 5, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (size,), generator=g))
        for _ in range(n)
    ]


def _forward(w1, b1, w2, b2, x):
    return torch.tanh(x @ w1.T + b1) @ w2.T + b2


def _unrolled_loss(net, c1, c2, batches, *, steps, lr, momentum=0.0):
    """L(w_K; D_K) with w_0 = (c ⊙ W, b), written out with plain tensors (the oracle)."""
    params = [
        net[0].weight.detach() * c1,
        net[0].bias.detach(),
        net[2].weight.detach() * c2,
        net[2].bias.detach(),
    ]
    bufs = None
    for k in range(steps):
        leaf = [p.detach().requires_grad_(True) for p in params]
        x, y = batches[k % len(batches)]
        grads = torch.autograd.grad(F.cross_entropy(_forward(*leaf, x), y), leaf)
        bufs = list(grads) if bufs is None else [b * momentum + g for b, g in zip(bufs, grads)]
        params = [p - lr * b for p, b in zip(params, bufs)]
    x, y = batches[steps % len(batches)]
    return F.cross_entropy(_forward(*params, x), y)


def _finite_difference_scores(net, batches, *, steps, lr, momentum=0.0, eps=1e-6):
    ones = [
        torch.ones_like(net[0].weight, dtype=torch.float64),
        torch.ones_like(net[2].weight, dtype=torch.float64),
    ]
    out = []
    for which in range(2):
        g = torch.zeros_like(ones[which])
        for i in range(g.numel()):
            hi = [c.clone() for c in ones]
            lo = [c.clone() for c in ones]
            hi[which].view(-1)[i] += eps
            lo[which].view(-1)[i] -= eps
            f_hi = _unrolled_loss(net, *hi, batches, steps=steps, lr=lr, momentum=momentum)
            f_lo = _unrolled_loss(net, *lo, batches, steps=steps, lr=lr, momentum=momentum)
            g.view(-1)[i] = (f_hi - f_lo) / (2 * eps)
        out.append(g.abs())
    return {"0.weight": out[0], "2.weight": out[1]}


def _score(net, batches, **args):
    return SCORERS.get("prospr")().score(net, batches, hparams=_hp(args))


@pytest.mark.parametrize(
    "steps,lr,momentum,n_batches",
    [(3, 0.1, 0.0, 1), (3, 0.5, 0.0, 4), (2, 0.3, 0.9, 3)],
    ids=["defaults-one-batch", "fresh-batches", "momentum"],
)
def test_full_meta_gradient_matches_finite_differences(steps, lr, momentum, n_batches):
    net, batches = _net(), _batches(n_batches)
    got = _score(net, batches, steps=steps, lr=lr, momentum=momentum)
    want = _finite_difference_scores(net, batches, steps=steps, lr=lr, momentum=momentum)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-6, atol=1e-8)
    # the second-order terms matter here: the first-order approximation is measurably different
    fo = _score(net, batches, steps=steps, lr=lr, momentum=momentum, first_order=True)
    assert max(float((fo[n] - want[n]).abs().max()) for n in want) > 1e-4


def test_defaults_are_the_authors_cli_defaults():
    net, batches = _net(), _batches(1)
    torch.testing.assert_close(_score(net, batches), _score(net, batches, steps=3, lr=0.1, momentum=0.0))
    assert SCORERS.get("prospr").default_scope == "global"


def test_first_order_is_the_gradient_at_w_k_times_the_init():
    # no graph through the inner steps: w_K = c ⊙ w_0 − lr Σ g_k (constants), so ∂L(w_K)/∂c = ∇L(w_K) ⊙ w_0
    net, batches = _net(2), _batches(3)
    steps, lr = 3, 0.2
    params = [p.detach().clone() for p in (net[0].weight, net[0].bias, net[2].weight, net[2].bias)]
    for k in range(steps):
        leaf = [p.requires_grad_(True) for p in params]
        x, y = batches[k]
        grads = torch.autograd.grad(F.cross_entropy(_forward(*leaf, x), y), leaf)
        params = [(p - lr * g).detach() for p, g in zip(leaf, grads)]
    leaf = [p.requires_grad_(True) for p in params]
    x, y = batches[steps % 3]
    g_k = torch.autograd.grad(F.cross_entropy(_forward(*leaf, x), y), leaf)
    got = _score(net, batches, steps=steps, lr=lr, first_order=True)
    torch.testing.assert_close(got["0.weight"], (g_k[0] * net[0].weight.detach()).abs())
    torch.testing.assert_close(got["2.weight"], (g_k[2] * net[2].weight.detach()).abs())


def test_zero_steps_is_snip():
    net, batches = _net(3), _batches(1)
    snip = SCORERS.get("snip")().score(net, batches, hparams=_hp())
    got = _score(net, batches, steps=0)
    for n in snip:
        torch.testing.assert_close(got[n], snip[n])


def test_pruned_weights_stay_pruned_through_the_inner_steps():
    # the oracle: the same unrolled loss with the pruned weights' gates at 0 and their updates masked
    net, batches = _net(4), _batches(2)
    g = torch.Generator().manual_seed(0)
    mask = Mask({n: torch.rand(s, generator=g) < 0.6 for n, s in prunable_shapes(net).items()})
    apply_mask(net, mask)
    got = _score(net, batches, steps=2, lr=0.3)
    m1, m2 = (mask[n].double() for n in ("0.weight", "2.weight"))

    def loss(c1, c2):
        b1, b2 = (b.detach().clone().requires_grad_(True) for b in (net[0].bias, net[2].bias))
        params = [net[0].weight.detach() * c1 * m1, b1, net[2].weight.detach() * c2 * m2, b2]
        for k in range(2):  # the full second-order graph: create_graph through every step
            x, y = batches[k]
            gs = torch.autograd.grad(F.cross_entropy(_forward(*params, x), y), params, create_graph=True)
            gs = [gs[0] * m1, gs[1], gs[2] * m2, gs[3]]
            params = [p - 0.3 * gg for p, gg in zip(params, gs)]
            assert bool((params[0][~mask["0.weight"]] == 0).all())
        return F.cross_entropy(_forward(*params, batches[0][0]), batches[0][1])

    c1 = torch.ones_like(m1, requires_grad=True)
    c2 = torch.ones_like(m2, requires_grad=True)
    # autograd of the oracle's loss (a different graph from the scorer's functional_call)
    want = torch.autograd.grad(loss(c1, c2), [c1, c2])
    torch.testing.assert_close(got["0.weight"], want[0].abs())
    torch.testing.assert_close(got["2.weight"], want[1].abs())
    assert bool((got["0.weight"][~mask["0.weight"]] == 0).all())


def test_find_mask_keeps_the_global_top_k():
    net, batches = _net(5), _batches(1)
    scores = _score(net, batches)
    mask, cost = find_mask(SCORERS.get("prospr")(), net, batches, _hp(density=0.3, scope="global"))
    flat = torch.cat([scores[n].flatten() for n in scores])
    kept = torch.cat([mask[n].flatten() for n in scores])
    k = exact_count(0.3, flat.numel())
    assert int(kept.sum()) == k
    assert float(flat[kept].min()) >= float(flat[~kept].max())
    assert cost["inner_steps"] == 3


@pytest.mark.parametrize(
    "args,needle",
    [({"steps": -1}, "steps"), ({"lr": 0.0}, "lr"), ({"lr": -1.0}, "lr"), ({"momentum": 1.0}, "momentum")],
)
def test_bad_knob_values(args, needle):
    with pytest.raises(ConfigError, match=needle):
        SCORERS.get("prospr").check_hparams(_hp(args))


def test_knob_values_are_refused_before_any_file_exists(tmp_path):
    from ticketsearch.experiments.runner import RunOptions, prepare

    with pytest.raises(ConfigError, match="prospr lr"):
        prepare(_hp({"lr": -1.0}), RunOptions(root=str(tmp_path / "runs")))
    assert not (tmp_path / "runs").exists()
