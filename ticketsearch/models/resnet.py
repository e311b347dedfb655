"""``resnet20``: the CIFAR ResNet of He et al. (2016) as built by open_lth (``cifar_resnet_20``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import ConfigError
from ..sparse.layers import MaskedConv2d, MaskedLinear
from .registry import check_input_shape, register_model, shape_error

__all__ = ["BasicBlock", "CifarResNet", "resnet20"]


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN + shortcut, then ReLU. Convs have no bias.

    The shortcut is the identity, or (when the block downsamples or widens) a 1×1 conv with stride 2 + BN,
    as in open_lth (He et al.'s option B projection rather than option A zero padding).
    """

    def __init__(self, c_in: int, c_out: int, *, downsample: bool = False, affine_bn: bool = True) -> None:
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = MaskedConv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out, affine=affine_bn)
        self.conv2 = MaskedConv2d(c_out, c_out, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, affine=affine_bn)
        self.shortcut: nn.Module
        if downsample or c_in != c_out:
            self.shortcut = nn.Sequential(
                MaskedConv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out, affine=affine_bn),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv3×3(width)-BN-ReLU, three stages of ``blocks`` BasicBlocks (widths w, 2w, 4w; the first block
    of stages 2 and 3 has stride 2), global average pool, fc classes. Depth = 6·blocks + 2.

    Module names: ``conv``, ``bn``, ``blocks.<i>.conv1`` ..., ``blocks.<i>.shortcut.0``, output ``fc``.
    """

    output_layer = "fc"
    default_dataset = "cifar10"
    input_shapes = "(C, H, W) with H, W >= 8"
    MIN_SIZE = 8

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        blocks: int = 3,
        width: int = 16,
        affine_bn: bool = True,
        name: str = "resnet",
    ) -> None:
        super().__init__()
        shape = check_input_shape(name, input_shape)
        if len(shape) != 3 or min(shape[1:]) < self.MIN_SIZE:
            raise shape_error(name, shape, self.input_shapes)
        if blocks < 1 or width < 1:
            raise ConfigError(
                f"model '{name}': blocks and width must be >= 1, got blocks={blocks}, width={width}"
            )
        self.input_shape = shape
        self.num_classes = num_classes
        self.conv = MaskedConv2d(shape[0], width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width, affine=affine_bn)
        layers = []
        c = width
        for stage, filters in enumerate((width, 2 * width, 4 * width)):
            for i in range(blocks):
                layers.append(BasicBlock(c, filters, downsample=stage > 0 and i == 0, affine_bn=affine_bn))
                c = filters
        self.blocks = nn.Sequential(*layers)
        self.fc = MaskedLinear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.conv(x)))
        out = self.blocks(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


@register_model(
    "resnet20",
    description="ResNet-20 for CIFAR (He et al. 2016; open_lth cifar_resnet_20), 0.27M params",
    input_shapes=CifarResNet.input_shapes,
    example_input_shape=(3, 32, 32),
    default_dataset="cifar10",
    paper="He et al. 2016, Deep Residual Learning (arXiv:1512.03385), CIFAR variant as in open_lth",
)
def resnet20(
    input_shape: tuple[int, ...], num_classes: int, affine_bn: bool = True, width: int = 16
) -> CifarResNet:
    """ResNet-20: conv 16, 3×3 BasicBlocks at widths 16/32/64 (1×1 conv + BN projection shortcuts), fc.

    As open_lth's ``cifar_resnet_20`` (``width`` is its optional W): 272,474 parameters on (3, 32, 32) with
    10 classes. ``affine_bn=False`` gives non-affine BatchNorm (for learned supermasks).
    """
    return CifarResNet(input_shape, num_classes, blocks=3, width=width, affine_bn=affine_bn, name="resnet20")
