"""``conv2``, ``conv4``, ``conv6``: the VGG-like CIFAR-10 nets of Frankle & Carbin (2019), Figure 2."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..sparse.layers import MaskedConv2d, MaskedLinear
from .registry import check_input_shape, register_model, shape_error

__all__ = ["ConvNet", "conv2", "conv4", "conv6", "CONV_PLANS"]

# integers: 3×3 conv (padding 1) + ReLU with that many filters; "M": 2×2 max pool
CONV_PLANS: dict[str, list[int | str]] = {
    "conv2": [64, 64, "M"],
    "conv4": [64, 64, "M", 128, 128, "M"],
    "conv6": [64, 64, "M", 128, 128, "M", 256, 256, "M"],
}


class ConvNet(nn.Module):
    """3×3 convs (padding 1) with ReLU and 2×2 max pools per ``plan``, then fc 256-ReLU-256-ReLU-classes.

    Module names: convs ``convs.<i>``, hidden fcs ``fc_layers.0``/``fc_layers.1``, output ``fc``. Any
    (C, H, W) with H, W ≥ 2^(number of pools) works; the first fc takes the flattened feature map.
    """

    output_layer = "fc"
    default_dataset = "cifar10"

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        plan: Sequence[int | str],
        fc: Sequence[int] = (256, 256),
        *,
        name: str = "convnet",
    ) -> None:
        super().__init__()
        shape = check_input_shape(name, input_shape)
        pools = sum(1 for p in plan if p == "M")
        self.input_shapes = f"(C, H, W) with H, W >= {2**pools}"
        if len(shape) != 3 or min(shape[1:]) < 2**pools:
            raise shape_error(name, shape, self.input_shapes)
        c, h, w = shape
        self.input_shape = shape
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        for spec in plan:
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            else:
                layers += [MaskedConv2d(c, int(spec), kernel_size=3, padding=1), nn.ReLU()]
                c = int(spec)
        self.convs = nn.Sequential(*layers)
        widths = [c * h * w, *fc]
        self.fc_layers = nn.ModuleList(MaskedLinear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.fc = MaskedLinear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x).flatten(1)
        for layer in self.fc_layers:
            x = F.relu(layer(x))
        return self.fc(x)


_PAPER = "Frankle & Carbin 2019, The Lottery Ticket Hypothesis (arXiv:1803.03635), Figure 2"


@register_model(
    "conv2",
    description="Conv-2 (Frankle & Carbin 2019): 64,64,pool, fc 256,256; 4.3M params on CIFAR-10",
    input_shapes="(C, H, W) with H, W >= 2",
    example_input_shape=(3, 32, 32),
    default_dataset="cifar10",
    paper=_PAPER,
)
def conv2(input_shape: tuple[int, ...], num_classes: int) -> ConvNet:
    """Conv-2: conv3×3 64, conv3×3 64, maxpool 2, fc 256, fc 256, fc classes (ReLU everywhere but the output).

    On (3, 32, 32) with 10 classes: 4,301,642 parameters (the paper's 4.3M).
    """
    return ConvNet(input_shape, num_classes, CONV_PLANS["conv2"], name="conv2")


@register_model(
    "conv4",
    description="Conv-4 (Frankle & Carbin 2019): 64,64,pool,128,128,pool, fc 256,256; 2.4M params",
    input_shapes="(C, H, W) with H, W >= 4",
    example_input_shape=(3, 32, 32),
    default_dataset="cifar10",
    paper=_PAPER,
)
def conv4(input_shape: tuple[int, ...], num_classes: int) -> ConvNet:
    """Conv-4: 64, 64, pool, 128, 128, pool (3×3 convs, padding 1), fc 256, fc 256, fc classes.

    On (3, 32, 32) with 10 classes: 2,425,930 parameters (the paper's 2.4M).
    """
    return ConvNet(input_shape, num_classes, CONV_PLANS["conv4"], name="conv4")


@register_model(
    "conv6",
    description="Conv-6 (Frankle & Carbin 2019): 64,64,pool,128,128,pool,256,256,pool, fc 256,256",
    input_shapes="(C, H, W) with H, W >= 8",
    example_input_shape=(3, 32, 32),
    default_dataset="cifar10",
    paper=_PAPER,
)
def conv6(input_shape: tuple[int, ...], num_classes: int) -> ConvNet:
    """Conv-6: 64, 64, pool, 128, 128, pool, 256, 256, pool (3×3 convs), fc 256, fc 256, fc classes.

    On (3, 32, 32) with 10 classes: 2,262,602 parameters (1.15M conv + 1.12M fc). The paper's table says
    1.7M; the architecture it states gives 2.26M, which is what we build.
    """
    return ConvNet(input_shape, num_classes, CONV_PLANS["conv6"], name="conv6")
