"""IMP's pruning rule against hand-computed counts and magnitudes."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ticketsearch.core import ConfigError, Mask
from ticketsearch.sparse import MaskedLinear, apply_mask, prunable_shapes
from ticketsearch.training.imp import PruneRule, levels_for_density, prune, reset_to


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        MaskedLinear(20, 30), nn.ReLU(), MaskedLinear(30, 10), nn.ReLU(), MaskedLinear(10, 5)
    )


def test_layerwise_rates_prune_fraction_of_remaining():
    model = _mlp()
    hp = PruneRule(rate=0.2, output_rate=0.1, scope="layerwise")
    mask = Mask.ones(prunable_shapes(model))
    expected = {"0.weight": 600, "2.weight": 300, "4.weight": 50}
    for _ in range(4):
        new = prune(hp, model, mask)
        # hand rule: keep = remaining − round_half_up(rate × remaining); output layer at 10%
        expected = {n: c - int(((0.1 if n == "4.weight" else 0.2) * c) + 0.5) for n, c in expected.items()}
        assert new.layer_counts() == expected
        assert new.is_subset_of(mask)  # masks only shrink
        mask = new
        apply_mask(model, mask)


def test_prunes_smallest_trained_magnitudes():
    lin = nn.Sequential(MaskedLinear(5, 1, bias=False), nn.ReLU(), MaskedLinear(1, 1, bias=False))
    with torch.no_grad():
        lin[0].weight.copy_(torch.tensor([[0.5, -0.1, 2.0, -3.0, 0.05]]))
    hp = PruneRule(rate=0.4, output_rate=-1, scope="layerwise")
    m = prune(hp, lin, Mask.ones(prunable_shapes(lin)))
    assert m["0.weight"].tolist() == [[True, False, True, True, False]]


def test_global_scope_prunes_across_layers():
    model = nn.Sequential(MaskedLinear(2, 2, bias=False), MaskedLinear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        model[1].weight.copy_(torch.tensor([[0.1, 0.2], [5.0, 6.0]]))
    hp = PruneRule(rate=0.25, output_rate=-1, scope="global")
    m = prune(hp, model, Mask.ones(prunable_shapes(model)))
    assert m.num_kept == 6
    assert m["1.weight"].tolist() == [[False, False], [True, True]]


def test_levels_for_density_matches_paper_schedule():
    shapes = {"a": (300, 784), "b": (100, 300), "c": (10, 100)}
    hp = PruneRule(rate=0.2, output_rate=0.1)
    # 0.8^7 = 0.2097 > 0.2 ≥ 0.8^8 (the output layer barely moves the total)
    assert levels_for_density(hp, shapes, "c", 0.2) == 8
    with pytest.raises(ConfigError):
        levels_for_density(PruneRule(rate=1.5), shapes, "c", 0.2)


def test_reset_restores_stored_tensors_bitwise():
    model = _mlp()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    mask = Mask.ones(prunable_shapes(model))
    reset_to(model, init, mask)
    for k, v in model.state_dict().items():
        assert torch.equal(v, init[k])
