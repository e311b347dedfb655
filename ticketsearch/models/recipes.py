"""Default training recipes, so ``find --dataset mnist`` trains the way the papers did without 20 flags.

Keyed by model (the recipe belongs to the architecture, as in open_lth's default hparams); the dataset only
picks the default model. Flags given by the user always win.
"""

from __future__ import annotations

import dataclasses

from ..core.hparams import TrainingHparams

__all__ = ["training_recipe", "RECIPES"]

RECIPES: dict[str, TrainingHparams] = {
    # Frankle & Carbin 2019: Adam 1.2e-3, batch 60, 50K iterations
    "lenet_300_100": TrainingHparams(
        optimizer="adam", lr=1.2e-3, batch_size=60, budget="50000it", eval_every="1000it"
    ),
    # SNIP (Lee et al. 2019): SGD momentum 0.9, batch 100, wd 5e-4
    "lenet5": TrainingHparams(
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        batch_size=100,
        budget="20ep",
        schedule="step",
        milestones="10ep,15ep",
    ),
    # Frankle & Carbin 2019, Conv-2/4/6 on CIFAR-10: Adam 2e-4 / 3e-4 / 3e-4, batch 60
    "conv2": TrainingHparams(optimizer="adam", lr=2e-4, batch_size=60, budget="20000it", eval_every="1000it"),
    "conv4": TrainingHparams(optimizer="adam", lr=3e-4, batch_size=60, budget="25000it", eval_every="1000it"),
    "conv6": TrainingHparams(optimizer="adam", lr=3e-4, batch_size=60, budget="30000it", eval_every="1000it"),
    # open_lth cifar_resnet_20 / cifar_vgg_16
    "resnet20": TrainingHparams(
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=128,
        budget="160ep",
        schedule="step",
        milestones="80ep,120ep",
        warmup="0it",
    ),
    "vgg16": TrainingHparams(
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=128,
        budget="160ep",
        schedule="step",
        milestones="80ep,120ep",
        warmup="0it",
    ),
    # embedded default: seconds on a laptop CPU
    "mlp_digits": TrainingHparams(optimizer="adam", lr=3e-3, batch_size=32, budget="20ep", eval_every="1ep"),
    # Greydanus 2020 (MNIST-1D): Adam 1e-2, batch 100, 6000 steps
    "mlp_mnist1d": TrainingHparams(
        optimizer="adam", lr=1e-2, batch_size=100, budget="6000it", eval_every="500it"
    ),
    "cnn_mnist1d": TrainingHparams(
        optimizer="adam", lr=1e-2, batch_size=100, budget="6000it", eval_every="500it"
    ),
    # a small ViT: AdamW with linear warm-up and cosine decay, as ViTs are trained (Dosovitskiy et al. 2021;
    # timm), short enough for two CPU cores (see docs/guides/models.md for the accuracy and time measured)
    "vit_mnist": TrainingHparams(
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.05,
        batch_size=128,
        budget="3000it",
        schedule="cosine",
        warmup="100it",
        eval_every="500it",
    ),
}


def training_recipe(model: str, **overrides: object) -> TrainingHparams:
    """How ``model``'s weights are trained when no flag says otherwise (unknown models: the defaults)."""
    base = RECIPES.get(model, TrainingHparams())
    return dataclasses.replace(base, **overrides) if overrides else base
