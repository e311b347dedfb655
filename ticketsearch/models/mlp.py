"""Fully connected nets: ``lenet_300_100``, ``mlp_digits``, ``mlp_mnist1d``.

All three are :class:`MLP`: the input is flattened (any sample shape works), then
``Linear(in, h1)-ReLU-...-Linear(h_k, classes)`` with masked layers. Module names: hidden layers
``layers.0``, ``layers.1``, ...; the output layer ``fc``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..sparse.layers import MaskedLinear
from .registry import check_input_shape, register_model

__all__ = ["MLP", "lenet_300_100", "mlp_digits", "mlp_mnist1d"]


class MLP(nn.Module):
    """Flatten → [MaskedLinear → ReLU] per hidden width → MaskedLinear(classes)."""

    output_layer = "fc"
    description = "fully connected ReLU net on the flattened input"
    input_shapes = "any shape (flattened)"
    default_dataset: str | None = None

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int], *, name: str = "mlp"
    ) -> None:
        super().__init__()
        self.input_shape = check_input_shape(name, input_shape)
        self.num_classes = num_classes
        widths = [math.prod(self.input_shape), *hidden]
        self.layers = nn.ModuleList(MaskedLinear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.fc = MaskedLinear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.fc(x)


def _mlp(name: str, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int], dataset: str) -> MLP:
    model = MLP(input_shape, num_classes, hidden, name=name)
    model.default_dataset = dataset
    return model


@register_model(
    "lenet_300_100",
    description="LeNet-300-100 MLP (LeCun 1998; Frankle & Carbin 2019), 266k weights on MNIST",
    input_shapes="any shape (flattened); designed for (1, 28, 28)",
    example_input_shape=(1, 28, 28),
    default_dataset="mnist",
    paper="LeCun et al. 1998; Frankle & Carbin 2019 (arXiv:1803.03635)",
)
def lenet_300_100(input_shape: tuple[int, ...], num_classes: int) -> MLP:
    """LeNet-300-100: Linear(in, 300)-ReLU-Linear(300, 100)-ReLU-Linear(100, classes).

    The fully connected LeNet of LeCun et al. (1998) as used for MNIST by Frankle & Carbin (2019): on
    (1, 28, 28) with 10 classes it has 266,610 parameters (784·300+300 + 300·100+100 + 100·10+10).
    """
    return _mlp("lenet_300_100", input_shape, num_classes, (300, 100), "mnist")


@register_model(
    "mlp_digits",
    description="small MLP 64-128-64 for sklearn digits (trains in seconds)",
    input_shapes="any shape (flattened); designed for (1, 8, 8)",
    example_input_shape=(1, 8, 8),
    default_dataset="digits",
)
def mlp_digits(input_shape: tuple[int, ...], num_classes: int) -> MLP:
    """Small MLP for sklearn digits: Linear(in, 128)-ReLU-Linear(128, 64)-ReLU-Linear(64, classes).

    On (1, 8, 8) with 10 classes: 64·128+128 + 128·64+64 + 64·10+10 = 17,226 parameters.
    """
    return _mlp("mlp_digits", input_shape, num_classes, (128, 64), "digits")


@register_model(
    "mlp_mnist1d",
    description="MNIST-1D MLP baseline 100-100 (Greydanus 2020)",
    input_shapes="any shape (flattened); designed for (1, 40)",
    example_input_shape=(1, 40),
    default_dataset="mnist1d",
    paper="Greydanus 2020, Scaling down deep learning (arXiv:2011.14439)",
)
def mlp_mnist1d(input_shape: tuple[int, ...], num_classes: int) -> MLP:
    """MNIST-1D MLP: Linear(in, 100)-ReLU-Linear(100, 100)-ReLU-Linear(100, classes).

    The MLP baseline of Greydanus (2020), hidden size 100; on (1, 40) with 10 classes it has
    40·100+100 + 100·100+100 + 100·10+10 = 15,210 parameters.
    """
    return _mlp("mlp_mnist1d", input_shape, num_classes, (100, 100), "mnist1d")
