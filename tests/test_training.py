"""Training loop: schedules by hand, early-stop bookkeeping, resume from a checkpoint, divergence."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ticketsearch.core import DivergenceError
from ticketsearch.core.errors import ConfigError
from ticketsearch.core.hparams import TrainingHparams
from ticketsearch.data import load_dataset
from ticketsearch.models import create_model
from ticketsearch.training import LRSchedule, TrainState, train


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _model(seed=0):
    torch.manual_seed(seed)
    return create_model("mlp_digits", (1, 8, 8), 10)


def test_schedules_by_hand():
    hp = TrainingHparams(lr=1.0, schedule="cosine", warmup="10it", budget="110it")
    s = LRSchedule(hp, steps_per_epoch=10, total=110)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s(110) == pytest.approx(0.0)
    st = LRSchedule(TrainingHparams(lr=1.0, schedule="step", milestones="2ep,30it", gamma=0.1), 10, 100)
    assert [st(i) for i in (0, 19, 20, 29, 30)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    with pytest.raises(ConfigError, match="schedule"):
        LRSchedule(TrainingHparams(schedule="linear"), 10, 10)


def test_early_stop_is_min_val_loss(digits):
    hp = TrainingHparams(optimizer="adam", lr=3e-3, batch_size=32, budget="6ep", eval_every="1ep")
    res = train(_model(), digits, hp, seed=0, progress=False)
    best = min(res.history, key=lambda r: r["val_loss"])
    assert res.best["iteration"] == best["iteration"] and res.best["test_acc"] == best["test_acc"]
    assert res.final["iteration"] == res.iterations == 6 * math.ceil(digits.train_size / 32)
    assert res.passes == {"forward": res.iterations, "backward": res.iterations}


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw"])
def test_resume_from_checkpoint_is_bitwise(digits, opt):
    hp = TrainingHparams(
        optimizer=opt,
        lr=0.01,
        momentum=0.9,
        weight_decay=1e-3,
        batch_size=32,
        budget="4ep",
        schedule="cosine",
    )
    full = _model()
    ref = train(full, digits, hp, seed=3, progress=False)
    saved: list[TrainState] = []
    part = _model()
    train(part, digits, hp, seed=3, progress=False, save_checkpoint=saved.append, stop_at=2 * 41)
    assert saved and saved[-1].iteration == 82
    steps = []
    resumed = _model(seed=99)  # different weights: the checkpoint must overwrite them
    res = train(
        resumed,
        digits,
        hp,
        seed=3,
        progress=False,
        start=saved[-1],
        after_step=lambda it, m: steps.append(it),
    )
    assert steps[0] == 83 and len(steps) == ref.iterations - 82
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert res.history == ref.history


def test_nan_loss_stops_with_one_line(digits):
    hp = TrainingHparams(optimizer="sgd", lr=1e12, batch_size=32, budget="2ep")
    with pytest.raises(DivergenceError, match="diverged"):
        train(_model(), digits, hp, seed=0, progress=False)


def test_bad_training_values(digits):
    with pytest.raises(ConfigError, match="optimizer"):
        train(_model(), digits, TrainingHparams(optimizer="rmsprop"), seed=0, progress=False)
    with pytest.raises(ConfigError, match="budget"):
        train(_model(), digits, TrainingHparams(budget="10 epochs"), seed=0, progress=False)


def test_no_eval_start_trains_the_same_weights_and_drops_only_the_first_evaluation(digits):
    """Skipping the evaluation at iteration 0 saves work, never changes training: the same weights bit
    for bit and the same history less its first entry (an evaluation draws no random numbers)."""
    hp = TrainingHparams(optimizer="sgd", lr=0.05, batch_size=32, budget="3ep", eval_every="1ep")
    with_start, without = _model(), _model()
    a = train(with_start, digits, hp, seed=1, progress=False)
    b = train(without, digits, dataclasses.replace(hp, eval_start=False), seed=1, progress=False)
    for p, q in zip(with_start.parameters(), without.parameters()):
        assert torch.equal(p, q)
    assert a.history[0]["iteration"] == 0 and b.history == a.history[1:]
    assert b.final == a.final
    # a training of no steps still reports its one evaluation
    none = train(
        _model(), digits, dataclasses.replace(hp, eval_start=False), seed=1, progress=False, stop_at=0
    )
    assert [r["iteration"] for r in none.history] == [0]


def test_eval_start_is_hashed_only_when_off():
    from ticketsearch.core.hparams import RunHparams

    base = RunHparams()
    assert "eval_start" not in base.to_dict()["training"]
    off = base.replace(training=dataclasses.replace(base.training, eval_start=False))
    assert off.to_dict()["training"]["eval_start"] is False and off.hash() != base.hash()
    assert RunHparams.from_dict(off.to_dict()) == off
    with pytest.raises(ConfigError, match="eval_start"):
        TrainingHparams(eval_start="no").validate()  # type: ignore[arg-type]
