"""Masked layers: names, masks, the reference (W ⊙ M) spec, bad input.

Every backend against the reference, under training with each optimizer: test_kernels.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from nets import masked_net, random_mask

from ticketsearch.core import ConfigError, MaskMismatchError
from ticketsearch.sparse import (
    MaskedLinear,
    apply_mask,
    get_mask,
    output_parameter,
    prunable_parameters,
    set_backend,
    sparsify,
)


def test_prunable_excludes_bias_and_norm():
    names = list(prunable_parameters(masked_net()))
    assert names == ["0.weight", "4.weight", "6.weight"]
    assert output_parameter(masked_net()) == "6.weight"


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
    model = masked_net()
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
    mask = random_mask(model, 0.5)
    apply_mask(model, mask)
    assert get_mask(model).equals(mask)
    with pytest.raises(ConfigError, match="unknown sparse backend"):
        set_backend(model, "nope")


def test_state_dict_is_dense_layout():
    model = masked_net()
    keys = set(model.state_dict())
    apply_mask(model, random_mask(model))
    assert set(model.state_dict()) == keys  # masks are not persistent buffers
