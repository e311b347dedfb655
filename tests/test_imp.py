"""IMP's pruning rule against hand-computed counts and magnitudes."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ticketsearch.core import ConfigError, Mask, check_pattern
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


# -- IMP under a pattern: hand-worked levels ------------------------------------------------------------------
_W = torch.tensor(
    [
        [0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.05],
        [0.5, 0.4, 0.35, 0.01, 0.95, 0.02, 0.03, 0.04],
    ]
)


def _two_layers() -> nn.Module:
    """A 2x8 layer that fits 2:4 and a 1x2 output layer that cannot (its input is not a multiple of 4)."""
    model = nn.Sequential(MaskedLinear(8, 2, bias=False), MaskedLinear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(_W)
        model[1].weight.copy_(torch.tensor([[1.0, -1.0]]))
    return model


def _levels(hp: PruneRule, model: nn.Module, n: int) -> list[Mask]:
    mask, out = Mask.ones(prunable_shapes(model)), []
    for _ in range(n):
        mask = prune(hp, model, mask)  # the same trained weights every level: the rule alone
        out.append(mask)
    return out


def test_imp_two_four_walks_each_group_down_to_n_then_prunes_within() -> None:
    hp = PruneRule(rate=0.25, output_rate=-1, scope="layerwise", pattern="2:4", allow_dense_layers=True)
    l1, l2, l3, l4 = _levels(hp, _two_layers(), 4)
    # level 1: 16 - 4 = 12 above the floor of 8: every group's 2 best (.9 .8 | .3 .2 | .5 .4 | .95 .04),
    # then the best 4 others (.7 .6 .35 .1); plain IMP would keep .05 over .04 and leave a group with 1
    assert l1["0.weight"].int().tolist() == [[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 1, 0, 0, 1]]
    # level 2: 12 - 3 = 9: the same 8, then the best other survivor (.7)
    assert l2["0.weight"].int().tolist() == [[1, 1, 1, 0, 0, 1, 1, 0], [1, 1, 0, 0, 1, 0, 0, 1]]
    # level 3: 9 - 2 = 7 would jump below N/M: it stops at exactly 8, two of every four
    assert l3["0.weight"].int().tolist() == [[1, 1, 0, 0, 0, 1, 1, 0], [1, 1, 0, 0, 1, 0, 0, 1]]
    # level 4: 8 - 2 = 6 within the pattern: .2 and .04 go
    assert l4["0.weight"].int().tolist() == [[1, 1, 0, 0, 0, 0, 1, 0], [1, 1, 0, 0, 1, 0, 0, 0]]
    for m in (l1, l2, l3, l4):  # the unfit output layer stays whole
        assert m["1.weight"].all()
    assert [("pattern" in m.metadata) for m in (l1, l2, l3, l4)] == [False, False, True, True]
    assert l3.metadata["dense_layers"] == ["1.weight"]
    check_pattern(l4, "2:4", dense_layers=["1.weight"])
    shapes = prunable_shapes(_two_layers())
    assert levels_for_density(hp, shapes, "1.weight", 0.5) == 3  # 12, 9, 8 of 16: the dense layer not counted
    assert levels_for_density(hp, shapes, "1.weight", 0.4) == 4


def test_imp_refuses_an_unfit_layer_by_name() -> None:
    hp = PruneRule(rate=0.25, output_rate=-1, pattern="2:4")
    with pytest.raises(ConfigError, match=r"1.weight \[1, 2\].*--allow-dense-layers"):
        prune(hp, _two_layers(), Mask.ones(prunable_shapes(_two_layers())))


def test_imp_global_one_four_floors_every_group() -> None:
    # forward never runs: two parallel 1x4 layers, the second the output layer
    model = nn.Sequential(MaskedLinear(4, 1, bias=False), MaskedLinear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
        model[1].weight.copy_(torch.tensor([[0.5, 0.6, 0.7, 0.8]]))
    hp = PruneRule(rate=0.5, output_rate=-1, scope="global", pattern="1:4")
    l1, l2 = _levels(hp, model, 2)
    # level 1 keeps 4 of 8: each group's best (4, .8) first, then 3 and 2 (plain IMP: 4 3 2 1, b emptied)
    assert l1["0.weight"].tolist() == [[True, True, True, False]]
    assert l1["1.weight"].tolist() == [[False, False, False, True]]
    # level 2 keeps 2 = the pool's floor: one of every four
    assert l2["0.weight"].tolist() == [[True, False, False, False]]
    assert l2["1.weight"].tolist() == [[False, False, False, True]]
    assert "pattern" not in l1.metadata and l2.metadata["pattern"] == "1:4"
    assert levels_for_density(hp, prunable_shapes(model), "1.weight", 0.25) == 2


def test_imp_blocks_prune_whole_blocks_level_by_level() -> None:
    model = nn.Sequential(MaskedLinear(8, 2, bias=False), MaskedLinear(8, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(_W)
        model[1].weight.copy_(_W.flip(1))
    hp = PruneRule(rate=0.25, output_rate=-1, scope="layerwise", pattern="block:2x2")
    l1, l2 = _levels(hp, model, 2)
    # 2x2 block sums of _W: 2.6, 1.66, 1.27, .42; rate .25 of 4 blocks = 1, then of 3 = round(.75) = 1
    assert l1["0.weight"].int().tolist() == [[1, 1, 1, 1, 1, 1, 0, 0]] * 2
    assert l2["0.weight"].int().tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]] * 2
    assert l2["1.weight"].int().tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]] * 2  # the mirror image
    assert l1.metadata["pattern"] == l2.metadata["pattern"] == "block:2x2"
