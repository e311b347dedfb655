"""A population of K masked members equals K separate runs of the training loop: the same per-step
losses and final weights (float32 tolerance), pruned weights exactly zero. The oracle is
``ticketsearch.training.loop.train`` on each member alone (same data, seed, hyperparameters)."""

from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from nets import masked_net, one_thread, random_mask  # noqa: F401  (autouse fixture)

from ticketsearch.core.errors import ConfigError
from ticketsearch.core.hparams import TrainingHparams
from ticketsearch.sparse import apply_mask, prunable_parameters
from ticketsearch.training.loop import train
from ticketsearch.training.population import Population, train_population


def _separately(models, data, hp, seeds):
    """Each member through the one training loop, evaluating every step to record every step's loss."""
    out = []
    for m, seed in zip(models, seeds):
        m = copy.deepcopy(m)
        res = train(m, data, dataclasses.replace(hp, eval_every="1it"), seed=seed, progress=False)
        losses = [rec["train_loss"] for rec in res.history[1:]]  # history[0]: before the first step
        out.append((losses, m.state_dict(), res.final))
    return out


def _compare(models, data, hp, seeds, *, atol=1e-5):
    pop = train_population(models, data, hp, seeds=seeds)
    alone = _separately(models, data, hp, seeds)
    for i, (losses, state, final) in enumerate(alone):
        assert len(losses) == pop.iterations
        torch.testing.assert_close(
            pop.losses[i].double(), torch.tensor(losses, dtype=torch.float64), rtol=1e-5, atol=atol
        )
        for name, t in state.items():
            torch.testing.assert_close(
                pop.states[i][name], t, rtol=1e-4, atol=atol, msg=f"member {i}: {name}"
            )
        for name in prunable_parameters(models[i]):
            mask = models[i].get_submodule(name.rsplit(".", 1)[0]).weight_mask
            if mask is not None:  # pruned weights: exactly zero, as in the separate run
                assert torch.count_nonzero(pop.states[i][name][~mask]) == 0
        assert pop.final["acc"][i] == pytest.approx(final["test_acc"], abs=1e-6)
    return pop


def test_mlp_members_with_different_masks_inits_and_seeds_equal_separate_runs():
    from ticketsearch.data import load_dataset
    from ticketsearch.models import create_model

    data = load_dataset("digits", seed=0)
    models = []
    for i, density in enumerate((1.0, 0.3, 0.05)):
        torch.manual_seed(10 + i)  # a different init per member
        m = create_model("mlp_digits", tuple(data.input_shape), int(data.num_classes))
        if density < 1.0:
            apply_mask(m, random_mask(m, density, seed=i))
        models.append(m)
    hp = TrainingHparams(
        optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3, batch_size=60, budget="25it"
    )
    _compare(models, data, hp, seeds=[0, 1, 2])


def test_bn_conv_members_with_adam_and_clipping_equal_separate_runs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(150, 1, 6, 6, generator=g)
    y = torch.randint(0, 3, (150,), generator=g)
    data = SimpleNamespace(
        x_train=x[:100], y_train=y[:100], x_val=x[100:120], y_val=y[100:120], x_test=x[120:], y_test=y[120:]
    )
    models = []
    for i in range(2):
        torch.manual_seed(i)
        m = masked_net()
        apply_mask(m, random_mask(m, 0.4, seed=5 + i))
        models.append(m)
    hp = TrainingHparams(
        optimizer="adam", lr=3e-3, batch_size=32, budget="12it", grad_clip=0.5, schedule="cosine"
    )
    _compare(models, data, hp, seeds=[3, 4], atol=2e-5)


def test_members_must_share_an_architecture_and_have_one_seed_each():
    a, b = masked_net(), nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ConfigError, match="share one architecture"):
        Population.from_models([a, b])
    data = SimpleNamespace(x_train=torch.zeros(4, 1, 6, 6), y_train=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError, match="one seed per member"):
        train_population([a, copy.deepcopy(a)], data, TrainingHparams(budget="1it"), seeds=[0])
