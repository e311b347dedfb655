"""Small networks shared by the sparse, kernel and supermask tests, and the small digits run the end-to-end
tests share (one place, so the suites test the same nets and the same run)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ticketsearch.core.hparams import (
    DatasetHparams,
    ModelHparams,
    PruningHparams,
    RunHparams,
    TrainingHparams,
)
from ticketsearch.core.select import select
from ticketsearch.sparse import MaskedConv2d, MaskedLinear, prunable_parameters


@pytest.fixture(autouse=True)
def one_thread():
    # 2-core machines shared with other jobs: OpenMP spinning makes 2 threads up to 100× slower here
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class MLP(nn.Module):
    def __init__(self, sizes=(20, 16, 12, 5)):
        super().__init__()
        self.layers = nn.ModuleList(MaskedLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x):
        x = x.flatten(1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class BNConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = MaskedConv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = MaskedLinear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


def masked_net() -> nn.Module:
    """Conv + BatchNorm + two masked Linear layers on 6×6 inputs. The conv has no bias: before BatchNorm
    its true gradient is zero, and Adam would turn the rounding noise of any non-bitwise kernel into full
    steps, so the kernel comparisons would test noise."""
    return nn.Sequential(
        MaskedConv2d(1, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        MaskedLinear(4 * 6 * 6, 10),
        nn.ReLU(),
        MaskedLinear(10, 3),
    )


def random_mask(model, density=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return select(
        {n: torch.rand(p.shape, generator=g) for n, p in prunable_parameters(model).items()}, density
    )


def digits_hparams(
    method: str = "imp", *, training: dict[str, Any] | None = None, **pruning: Any
) -> RunHparams:
    """``mlp_digits`` on ``digits``: the end-to-end run that takes seconds on a CPU. ``training`` holds the
    TrainingHparams fields and ``pruning`` the values that differ from the defaults, by name: PruningHparams
    fields or the method's own hyperparameters (IMP's ``rate``, early-bird's ``eb_every``, ...)."""
    return with_pruning(
        RunHparams(
            model=ModelHparams(model="mlp_digits"),
            dataset=DatasetHparams(dataset="digits"),
            training=TrainingHparams(**(training or {})),
            pruning=PruningHparams(method=method),
        ),
        **pruning,
    )


def with_pruning(hp: RunHparams, **values: Any) -> RunHparams:
    """``hp`` with values set by name: a PruningHparams field in ``pruning``, anything else (a method's own
    hyperparameter, whichever method declares it) in ``method_hparams``."""
    import dataclasses

    shared = {f.name for f in dataclasses.fields(PruningHparams)}
    own = {**hp.own, **{k: v for k, v in values.items() if k not in shared}}
    return hp.replace(
        pruning=dataclasses.replace(hp.pruning, **{k: v for k, v in values.items() if k in shared}),
        method_hparams=tuple(sorted(own.items())),
    )
