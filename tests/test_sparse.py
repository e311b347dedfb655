"""Masked layers: the inplace backend matches the reference (W ⊙ M) path, pruned weights stay exactly 0."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ticketsearch.core import ConfigError, MaskMismatchError, select
from ticketsearch.sparse import (
    MaskedConv2d,
    MaskedLinear,
    apply_mask,
    get_mask,
    mask_gradients,
    output_parameter,
    prunable_parameters,
    set_backend,
    sparsify,
)


def _net() -> nn.Module:
    return nn.Sequential(
        MaskedConv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        MaskedLinear(4 * 6 * 6, 10),
        nn.ReLU(),
        MaskedLinear(10, 3),
    )


def _random_mask(model, density=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return select(
        {n: torch.rand(p.shape, generator=g) for n, p in prunable_parameters(model).items()}, density
    )


def test_prunable_excludes_bias_and_norm():
    names = list(prunable_parameters(_net()))
    assert names == ["0.weight", "4.weight", "6.weight"]
    assert output_parameter(_net()) == "6.weight"


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    ],
    ids=["sgd_momentum_wd", "sgd_nesterov_wd", "adam_wd", "adamw_wd"],
)
def test_pruned_weights_stay_exactly_zero(make_opt):
    torch.manual_seed(0)
    model = _net()
    mask = _random_mask(model)
    apply_mask(model, mask)
    opt = make_opt(model.parameters())
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))
    for _ in range(5):
        for n, p in prunable_parameters(model).items():
            assert torch.count_nonzero(p.detach()[~mask[n]]) == 0
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        mask_gradients(model)
        opt.step()
    for n, p in prunable_parameters(model).items():
        assert torch.count_nonzero(p.detach()[~mask[n]]) == 0
        assert torch.count_nonzero(p.detach()[mask[n]]) == int(mask[n].sum())  # kept weights do train


def test_inplace_matches_reference_training():
    torch.manual_seed(1)
    a = _net()
    mask = _random_mask(a, 0.5, seed=3)
    b = copy.deepcopy(a)
    apply_mask(a, mask, backend="inplace")
    apply_mask(b, mask, backend="reference")
    oa, ob = (
        torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9),
        torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9),
    )
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    for _ in range(3):
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            mask_gradients(m)
            o.step()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, msg=n)


def test_reference_forward_ignores_pruned_values():
    torch.manual_seed(0)
    lin = MaskedLinear(4, 2)
    apply_mask(lin, {"weight": torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1]]).bool()}, backend="reference")
    with torch.no_grad():
        lin.weight[0, 1] = 123.0  # garbage under the mask
    x = torch.randn(3, 4)
    expected = x @ (lin.weight * lin.weight_mask).t() + lin.bias
    torch.testing.assert_close(lin(x), expected)


def test_mask_mismatch_message_names_layer():
    model = _net()
    with pytest.raises(MaskMismatchError, match="'4.weight' has shape"):
        apply_mask(
            model,
            {
                "0.weight": torch.ones(4, 1, 3, 3, dtype=torch.bool),
                "4.weight": torch.ones(10, 3, dtype=torch.bool),
                "6.weight": torch.ones(3, 10, dtype=torch.bool),
            },
        )


def test_sparsify_third_party_model_and_get_mask():
    model = sparsify(nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)))
    assert isinstance(model[0], MaskedLinear)
    mask = _random_mask(model, 0.5)
    apply_mask(model, mask)
    assert get_mask(model).equals(mask)
    with pytest.raises(ConfigError, match="unknown sparse backend"):
        set_backend(model, "nope")


def test_state_dict_is_dense_layout():
    model = _net()
    keys = set(model.state_dict())
    apply_mask(model, _random_mask(model))
    assert set(model.state_dict()) == keys  # masks are not persistent buffers
