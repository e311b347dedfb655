"""Weight initialisation shared by every model (``ModelHparams.init``).

``kaiming_normal`` (default, as open_lth): He et al. 2015 normal, fan_in, ReLU gain, for every Linear/Conv2d
weight. ``kaiming_uniform``: the uniform variant. ``signed_constant``: each weight is ±gain/sqrt(fan_in) with a
random sign (Ramanujan et al. 2020, edge-popup's "signed Kaiming constant"). For these three, biases are set to
zero and affine BatchNorm to weight 1, bias 0 (open_lth keeps PyTorch's default biases and draws BN weights
uniformly; we prefer a fully explicit, RNG-light init). ``default`` keeps PyTorch's own initialisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..core.errors import ConfigError
from ..core.hparams import INITS
from ..sparse.layers import enforce_mask

__all__ = ["INITS", "init_weights"]


@torch.no_grad()
def init_weights(model: nn.Module, init: str = "kaiming_normal") -> nn.Module:
    """(Re)initialise ``model`` in place, in module order (deterministic under ``torch.manual_seed``).

    Pruned weights of layers that already carry a mask stay at zero.
    """
    if init not in INITS:
        raise ConfigError(f"unknown init '{init}' (choose from: {', '.join(INITS)})")
    if init == "default":
        return model
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            w = module.weight
            if init == "kaiming_normal":
                nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")
            elif init == "kaiming_uniform":
                nn.init.kaiming_uniform_(w, mode="fan_in", nonlinearity="relu")
            else:  # signed_constant
                fan_in = nn.init._calculate_correct_fan(w, "fan_in")
                std = nn.init.calculate_gain("relu") / math.sqrt(fan_in)
                nn.init.normal_(w)
                w.copy_(torch.where(w >= 0, std, -std))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    enforce_mask(model)  # a model that already carries a mask keeps its pruned weights at zero
    return model
