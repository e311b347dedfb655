"""FORCE against a hand-derived oracle: a two-layer linear softmax net whose gradients are written out in
closed form (no autograd), the exponential schedule and a top-k over *all* weights at every step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from ticketsearch.core.errors import ConfigError
from ticketsearch.core.hparams import PruningHparams, RunHparams
from ticketsearch.core.mask import Mask
from ticketsearch.methods import get_method
from ticketsearch.scorers import SCORERS, find_mask
from ticketsearch.sparse import MaskedLinear, apply_mask, prunable_shapes


def _hp(method: str = "force", args: dict | None = None, **pruning) -> RunHparams:
    return RunHparams(
        pruning=PruningHparams(method=method, **pruning), method_args=tuple(sorted((args or {}).items()))
    )


def _net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(MaskedLinear(6, 5, bias=False), MaskedLinear(5, 3, bias=False)).double()


def _batch(seed: int, n: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 6, generator=g, dtype=torch.float64), torch.arange(n) % 3)]


def _closed_form_grads(w1, w2, x, y):
    """Backprop of mean cross-entropy through z = (x w1ᵀ) w2ᵀ, by hand."""
    h = x @ w1.T
    z = h @ w2.T
    p = torch.softmax(z, dim=1)
    dz = (p - torch.nn.functional.one_hot(y, 3).double()) / x.shape[0]
    return (dz @ w2).T @ x, dz.T @ h  # dL/dw1, dL/dw2


def _top_k(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    flat = torch.cat([s.flatten() for s in scores])
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.sort(flat, descending=True, stable=True).indices[:k]] = True  # ties: lower index first
    out, o = [], 0
    for s in scores:
        out.append(keep[o : o + s.numel()].reshape(s.shape))
        o += s.numel()
    return out


def _oracle(net, batch, density: float, steps: int) -> list[list[torch.Tensor]]:
    """Every step's mask: saliency |w ⊙ g(w ⊙ m)| for all weights, top-k of all, density^(t/T)."""
    w = [net[0].weight.detach().clone(), net[1].weight.detach().clone()]
    total = sum(t.numel() for t in w)
    x, y = batch[0]
    masks = [torch.ones_like(t, dtype=torch.bool) for t in w]
    history = []
    for t in range(1, steps + 1):
        g1, g2 = _closed_form_grads(w[0] * masks[0], w[1] * masks[1], x, y)
        sal = [(w[0] * g1).abs(), (w[1] * g2).abs()]
        d = density ** (t / steps)
        masks = _top_k(sal, math.floor(d * total + 0.5))
        history.append(masks)
    return history


@pytest.mark.parametrize("seed", [1, 3, 5])
def test_matches_the_hand_derived_oracle_and_revives(seed):
    net, batch = _net(seed), _batch(seed + 10)
    density, steps = 0.1, 10
    history = _oracle(net, batch, density, steps)
    mask, cost = find_mask(SCORERS.get("force")(), net, batch, _hp(density=density, rounds=steps))
    assert torch.equal(mask["0.weight"], history[-1][0]) and torch.equal(mask["1.weight"], history[-1][1])
    assert mask.metadata["rounds"] == steps and cost["rounds"] == steps
    # the point of FORCE: some weight pruned at an earlier step is kept at a later one (Iter-SNIP cannot)
    revived = any(
        bool((later[i] & ~earlier[i]).any())
        for a, earlier in enumerate(history)
        for later in history[a + 1 :]
        for i in range(2)
    )
    assert revived, "this case was built to revive weights; without revival it tests nothing beyond Iter-SNIP"


def test_iter_snip_is_another_mask():
    # the same schedule and saliency without revival (snip --rounds T) ends elsewhere on this case
    net, batch = _net(1), _batch(11)
    force, _ = find_mask(SCORERS.get("force")(), net, batch, _hp(density=0.1, rounds=10))
    iter_snip, _ = find_mask(SCORERS.get("snip")(), net, batch, _hp("snip", density=0.1, rounds=10))
    assert force.num_kept == iter_snip.num_kept
    assert not force.equals(iter_snip)


def test_one_step_is_snip():
    net, batch = _net(3), _batch(4)
    force, _ = find_mask(SCORERS.get("force")(), net, batch, _hp(density=0.2, rounds=1))
    snip, _ = find_mask(SCORERS.get("snip")(), net, batch, _hp("snip", density=0.2))
    assert force.equals(snip)


def test_default_is_sixty_exponential_steps():
    net, batch = _net(1), _batch(2)
    default, _ = find_mask(SCORERS.get("force")(), net, batch, _hp(density=0.1))
    assert default.metadata["rounds"] == 60
    method = get_method("force")  # iterative, global: as `list methods` shows it
    assert method.kind == "iterative" and method.canonical(_hp()).pruning.scope == "global"
    oracle = _oracle(net, batch, 0.1, 60)[-1]
    assert torch.equal(default["0.weight"], oracle[0]) and torch.equal(default["1.weight"], oracle[1])


def test_a_callers_mask_is_never_revived_but_forces_own_steps_are():
    net, batch = _net(2), _batch(5)
    g = torch.Generator().manual_seed(0)
    old = Mask({n: torch.rand(s, generator=g) < 0.7 for n, s in prunable_shapes(net).items()})
    apply_mask(net, old)
    mask, _ = find_mask(SCORERS.get("force")(), net, batch, _hp(density=0.2, rounds=5))
    assert mask.is_subset_of(old)


def test_bad_chunk_size():
    with pytest.raises(ConfigError, match="chunk_size"):
        SCORERS.get("force").check_hparams(_hp(args={"chunk_size": -1}))


def test_knob_values_are_refused_before_any_file_exists(tmp_path):
    from ticketsearch.experiments.runner import RunOptions, prepare

    with pytest.raises(ConfigError, match="force chunk_size"):
        prepare(_hp(args={"chunk_size": -3}), RunOptions(root=str(tmp_path / "runs")))
    assert not (tmp_path / "runs").exists()
