"""``lenet5``: the Caffe LeNet-5 used by SNIP (Lee et al. 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..sparse.layers import MaskedConv2d, MaskedLinear
from .registry import check_input_shape, register_model, shape_error

__all__ = ["LeNet5", "lenet5"]


class LeNet5(nn.Module):
    """Caffe LeNet-5: conv 20@5×5 → maxpool 2 → conv 50@5×5 → maxpool 2 → fc 500 → fc classes.

    No padding; ReLU after each conv and after fc 500 (Caffe's prototxt has ReLU only after the first fc;
    SNIP's TensorFlow code applies ReLU after the convs too, which we follow). Module names ``conv1``,
    ``conv2``, ``fc1``, output ``fc``. On (1, 28, 28) with 10 classes: 24→12→8→4 spatially, 431,080
    parameters (20·25+20 + 50·20·25+50 + 800·500+500 + 500·10+10).
    """

    output_layer = "fc"
    description = "Caffe LeNet-5 (SNIP, Lee et al. 2019): conv20-pool-conv50-pool-fc500-fc"
    input_shapes = "(C, H, W) with H, W >= 16"
    default_dataset = "mnist"
    MIN_SIZE = 16

    def __init__(self, input_shape: Sequence[int], num_classes: int, *, name: str = "lenet5") -> None:
        super().__init__()
        shape = check_input_shape(name, input_shape)
        if len(shape) != 3 or min(shape[1:]) < self.MIN_SIZE:
            raise shape_error(name, shape, self.input_shapes)
        c, h, w = shape
        self.input_shape = shape
        self.num_classes = num_classes
        self.conv1 = MaskedConv2d(c, 20, kernel_size=5)
        self.conv2 = MaskedConv2d(20, 50, kernel_size=5)
        oh, ow = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        self.fc1 = MaskedLinear(50 * oh * ow, 500)
        self.fc = MaskedLinear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc(x)


@register_model(
    "lenet5",
    description=LeNet5.description,
    input_shapes=LeNet5.input_shapes,
    example_input_shape=(1, 28, 28),
    default_dataset="mnist",
    paper="LeCun et al. 1998 (Caffe variant); Lee et al. 2019, SNIP (arXiv:1810.02340)",
)
def lenet5(input_shape: tuple[int, ...], num_classes: int) -> LeNet5:
    """Caffe LeNet-5 as in SNIP: conv 20@5×5, pool, conv 50@5×5, pool, fc 500, fc classes (ReLU after each)."""
    return LeNet5(input_shape, num_classes)
