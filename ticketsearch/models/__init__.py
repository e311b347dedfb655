"""Model registry and the built-in models (every Linear/Conv2d is a masked layer).

Built-ins: ``lenet_300_100``, ``lenet5``, ``conv2``, ``conv4``, ``conv6``, ``vgg16``, ``resnet20``,
``mlp_digits``, ``mlp_mnist1d``, ``cnn_mnist1d``, ``vit_mnist``; the source ``hf:`` builds any Hugging Face
``transformers`` model from a config (the ``hf`` extra; no weights). Each model names its output layer in ``model.output_layer``
(always ``"fc"`` for the built-ins). torchvision and transformers are never imported here.

>>> from ticketsearch.models import create_model, list_models
>>> model = create_model("lenet_300_100", (1, 28, 28), 10)
"""

from __future__ import annotations

from . import conv, hf, lenet, mlp, mnist1d, resnet, torchvision_models, vgg, vit  # noqa: F401  (registers the built-ins)
from .conv import ConvNet
from .init import INITS, init_weights
from .lenet import LeNet5
from .mlp import MLP
from .mnist1d import CNN1D
from .recipes import RECIPES, training_recipe
from .registry import (
    MODELS,
    ModelRow,
    ModelSource,
    ModelSpec,
    check_input_shape,
    create_model,
    describe,
    get_model_spec,
    list_models,
    model_hparams,
    register_model,
    register_model_source,
    shape_error,
)
from .resnet import CifarResNet
from .vgg import VGG
from .vit import ViT

__all__ = [
    "MODELS",
    "ModelSpec",
    "ModelRow",
    "ModelSource",
    "register_model",
    "register_model_source",
    "list_models",
    "get_model_spec",
    "model_hparams",
    "create_model",
    "describe",
    "check_input_shape",
    "shape_error",
    "INITS",
    "RECIPES",
    "training_recipe",
    "init_weights",
    "MLP",
    "LeNet5",
    "ConvNet",
    "VGG",
    "CifarResNet",
    "CNN1D",
    "ViT",
]
