"""Models supplied by torchvision when it is installed (the ``vision`` extra); torchvision is imported only
when such a model is built, never at import time."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from ..core.errors import ConfigError
from ..sparse.layers import sparsify
from .registry import check_input_shape, register_model, shape_error

__all__ = ["resnet18", "torchvision_available"]


def torchvision_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


@register_model(
    "resnet18",
    input_shapes="(C, H, W) with H, W >= 8 (needs torchvision)",
    example_input_shape=(3, 32, 32),
    description="ResNet-18 from torchvision with a CIFAR stem (3x3 conv, no max-pool); needs the vision extra",
    default_dataset="cifar10",
    paper="He et al. 2016",
)
def resnet18(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """torchvision's ResNet-18, stem adapted to small images as is usual for CIFAR, layers made maskable."""
    shape = check_input_shape("resnet18", input_shape)
    if len(shape) != 3 or shape[1] < 8 or shape[2] < 8:
        raise shape_error("resnet18", shape, "(C, H, W) with H, W >= 8")
    try:
        import torchvision
    except ImportError:
        raise ConfigError("model 'resnet18' needs torchvision: pip install 'ticketsearch[vision]'") from None
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    sparsify(model)
    model.output_layer = "fc"  # type: ignore[assignment]
    model.default_dataset = "cifar10"  # type: ignore[assignment]
    return model
