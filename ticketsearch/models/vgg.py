"""``vgg16``: open_lth's ``cifar_vgg_16`` (VGG-16 with BatchNorm for CIFAR-10, one fc layer)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..sparse.layers import MaskedConv2d, MaskedLinear
from .registry import check_input_shape, register_model, shape_error

__all__ = ["VGG", "ConvBN", "vgg16", "VGG_PLANS"]

VGG_PLANS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
}


class ConvBN(nn.Module):
    """conv 3×3 (padding 1, with bias, as open_lth) → BatchNorm2d → ReLU."""

    def __init__(self, c_in: int, c_out: int, *, affine_bn: bool = True) -> None:
        super().__init__()
        self.conv = MaskedConv2d(c_in, c_out, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(c_out, affine=affine_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class VGG(nn.Module):
    """CIFAR VGG as in open_lth: ConvBN modules and 2×2 max pools per ``plan``, global average pool, one fc.

    open_lth applies AvgPool2d(2) to the 2×2 map a 32×32 input leaves after four pools; we average over the
    whole map, which is the same on 32×32 and also works for 16×16 (1×1 map). Module names:
    ``layers.<i>.conv``/``layers.<i>.bn``, output ``fc``.
    """

    output_layer = "fc"
    default_dataset = "cifar10"

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        plan: Sequence[int | str],
        *,
        affine_bn: bool = True,
        name: str = "vgg",
    ) -> None:
        super().__init__()
        shape = check_input_shape(name, input_shape)
        pools = sum(1 for p in plan if p == "M")
        self.input_shapes = f"(C, H, W) with H, W >= {2**pools}"
        if len(shape) != 3 or min(shape[1:]) < 2**pools:
            raise shape_error(name, shape, self.input_shapes)
        c = shape[0]
        self.input_shape = shape
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        for spec in plan:
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(ConvBN(c, int(spec), affine_bn=affine_bn))
                c = int(spec)
        self.layers = nn.Sequential(*layers)
        self.fc = MaskedLinear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


@register_model(
    "vgg16",
    description="VGG-16 with BatchNorm for CIFAR (open_lth cifar_vgg_16), one fc 512→classes",
    input_shapes="(C, H, W) with H, W >= 16",
    example_input_shape=(3, 32, 32),
    default_dataset="cifar10",
    paper="Simonyan & Zisserman 2015; CIFAR variant of open_lth / Frankle et al. 2020 (arXiv:1912.05671)",
)
def vgg16(input_shape: tuple[int, ...], num_classes: int, affine_bn: bool = True) -> VGG:
    """VGG-16 (CIFAR): [64,64,M,128,128,M,256×3,M,512×3,M,512×3] of conv3×3+BN+ReLU, avg pool, fc classes.

    As open_lth's ``cifar_vgg_16``: no pool after the last block, convs with biases, BatchNorm after every
    conv (``affine_bn=False`` gives non-affine BN, e.g. for learned supermasks). 14,728,266 parameters on
    (3, 32, 32) with 10 classes, of which 14,715,584 prunable conv/fc weights.
    """
    return VGG(input_shape, num_classes, VGG_PLANS["vgg16"], affine_bn=affine_bn, name="vgg16")
