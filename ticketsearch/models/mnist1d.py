"""``cnn_mnist1d``: the MNIST-1D CNN baseline of Greydanus (2020), with 1-D convs as (1, k) Conv2d."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..sparse.layers import MaskedConv2d, MaskedLinear
from .registry import check_input_shape, register_model, shape_error

__all__ = ["CNN1D", "cnn_mnist1d"]


def _conv_len(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


class CNN1D(nn.Module):
    """Three 1-D convs (ReLU after each) and a linear output layer, as Greydanus' ``ConvBase``.

    conv1: C→25, kernel 5, stride 2, padding 1; conv2 and conv3: 25→25, kernel 3, stride 2, padding 1;
    then Linear(25·L3, classes). Our masked layers are 2-D only, so each Conv1d(k) is a MaskedConv2d with
    kernel (1, k), stride (1, 2), padding (0, 1) on the input reshaped from (N, C, L) to (N, C, 1, L); the
    arithmetic is identical, and weights have shape (out, in, 1, k). On (1, 40): lengths 40→19→10→5, a
    125→classes linear layer, 5,210 parameters with 10 classes (as the reference's ``linear_in=125``).
    Module names ``conv1``, ``conv2``, ``conv3``, output ``fc``.
    """

    output_layer = "fc"
    description = "MNIST-1D CNN (Greydanus 2020): 3 strided 1-D convs of 25 channels + linear"
    input_shapes = "(L,) or (C, L) sequences with L >= 3"
    default_dataset = "mnist1d"
    MIN_LEN = 3

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, channels: int = 25, *, name: str = "cnn_mnist1d"
    ) -> None:
        super().__init__()
        shape = check_input_shape(name, input_shape)
        if len(shape) not in (1, 2) or shape[-1] < self.MIN_LEN:
            raise shape_error(name, shape, self.input_shapes)
        c, n = (1, shape[0]) if len(shape) == 1 else shape
        self.input_shape = shape
        self.num_classes = num_classes
        self.in_channels = c
        self.conv1 = MaskedConv2d(c, channels, kernel_size=(1, 5), stride=(1, 2), padding=(0, 1))
        self.conv2 = MaskedConv2d(channels, channels, kernel_size=(1, 3), stride=(1, 2), padding=(0, 1))
        self.conv3 = MaskedConv2d(channels, channels, kernel_size=(1, 3), stride=(1, 2), padding=(0, 1))
        n = _conv_len(_conv_len(_conv_len(n, 5, 2, 1), 3, 2, 1), 3, 2, 1)
        self.fc = MaskedLinear(channels * n, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.in_channels, 1, x.shape[-1])
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.fc(x.flatten(1))


@register_model(
    "cnn_mnist1d",
    description=CNN1D.description,
    input_shapes=CNN1D.input_shapes,
    example_input_shape=(1, 40),
    default_dataset="mnist1d",
    paper="Greydanus 2020, Scaling down deep learning (arXiv:2011.14439)",
)
def cnn_mnist1d(input_shape: tuple[int, ...], num_classes: int, channels: int = 25) -> CNN1D:
    """MNIST-1D CNN: Conv1d(C,25,k5,s2,p1)-ReLU-Conv1d(25,25,k3,s2,p1)-ReLU-Conv1d(25,25,k3,s2,p1)-ReLU-Linear.

    1-D convs are MaskedConv2d with (1, k) kernels on (N, C, 1, L); 5,210 parameters on (1, 40), 10 classes.
    """
    return CNN1D(input_shape, num_classes, channels)
