"""Masks that move during training (training/schedule.py): what the loop owes a method that changes masks.

Oracles: a pruned weight must stay exactly zero through later steps (it would not if the optimizer kept
its momentum or the clip masks were stale), a regrown weight's first SGD step is exactly -lr·g (fresh
state), the dense gradients handed to a schedule equal autograd's gradient of an unmasked copy with the same
effective weights on the same batch, and a run resumed from any of its checkpoints ends bit-identical to an
uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import io
from collections.abc import Mapping
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from nets import one_thread  # noqa: F401  (autouse fixture)

from ticketsearch.core.hparams import TrainingHparams
from ticketsearch.data import Batcher, load_dataset
from ticketsearch.models import create_model
from ticketsearch.sparse import apply_mask, get_mask, masked_layers, prunable_parameters, set_backend
from ticketsearch.training import MaskSchedule, StopTraining, TrainState, train
from ticketsearch.training.distributed import SINGLE
from ticketsearch.training.graphs import eager_reason


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", seed=0, device=torch.device("cpu"))


def _model(data, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("mlp_digits", tuple(data.input_shape), int(data.num_classes))


def _hp(**kw: Any) -> TrainingHparams:
    base = dict(budget="24it", eval_every="6it", batch_size=32, lr=0.05, optimizer="sgd", momentum=0.9)
    return TrainingHparams(**{**base, **kw})


def _random_masks(model: nn.Module, density: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < density for n, p in prunable_parameters(model).items()}


class Scripted(MaskSchedule):
    """Returns fixed masks at fixed boundaries and records what it saw (the test's probe)."""

    def __init__(self, at: dict[int, dict[str, torch.Tensor]], grads_at: tuple[int, ...] = ()) -> None:
        self.at, self.grads_at = at, set(grads_at)
        self.seen: dict[int, dict[str, Any]] = {}
        self.calls = 0

    def needs_grads(self, it: int) -> bool:
        return it in self.grads_at

    def update(self, it, model, grads):
        self.calls += 1
        self.seen[it] = {
            "weights": {n: p.detach().clone() for n, p in prunable_parameters(model).items()},
            "state": copy.deepcopy(model.state_dict()),
            "masks": dict(get_mask(model)),
            "grads": None if grads is None else {n: g.clone() for n, g in grads.items()},
        }
        return self.at.get(it)

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.calls = int(state["calls"])


def _pruned_are_zero(model: nn.Module) -> None:
    masks = get_mask(model)
    for n, p in prunable_parameters(model).items():
        assert bool((p.detach()[~masks[n]] == 0).all()), f"{n}: a pruned weight moved"


@pytest.mark.parametrize(
    "opt,clip,precision",
    [
        ("sgd", 0.0, "fp32"),
        ("sgd", 0.5, "fp32"),
        ("adam", 0.0, "fp32"),
        ("adamw", 0.5, "fp32"),
        ("adam", 0.0, "bf16"),
    ],
    ids=str,
)
def test_a_pruned_weight_stays_exactly_zero_after_a_change(data, opt, clip, precision):
    """Pruning at boundary 5 after 5 steps of momentum: the state of the newly pruned weights must be zeroed
    and the gradient (and clip) masks rebuilt, or those weights move again at step 6."""
    model = _model(data)
    masks = _random_masks(model, 0.4, 1)
    sched = Scripted({5: masks})
    lr = 0.01 if opt != "sgd" else 0.05
    hp = _hp(optimizer=opt, grad_clip=clip, lr=lr, weight_decay=1e-3, precision=precision)
    res = train(model, data, hp, seed=0, schedule=sched)
    assert res.iterations == 24 and res.mask_changes == 1
    got = get_mask(model)
    assert all(torch.equal(got[n], masks[n]) for n in masks)
    _pruned_are_zero(model)
    kept_moved = any(
        bool((p.detach()[masks[n]] != sched.seen[6]["weights"][n][masks[n]]).any())
        for n, p in prunable_parameters(model).items()
    )
    assert kept_moved  # the kept weights did train after the change


def test_a_regrown_weight_starts_at_zero_with_fresh_state(data):
    """Prune at 4, regrow at 8; with SGD + momentum, the regrown weight after its first step (step 9) is
    exactly -lr·g, g its dense gradient of that step (stale momentum would add μ·buf)."""
    model = _model(data)
    full = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in prunable_parameters(model).items()}
    sparse = _random_masks(model, 0.5, 2)
    lr = 0.05
    sched = Scripted({4: sparse, 8: full}, grads_at=(9,))
    train(model, data, _hp(lr=lr), seed=0, schedule=sched)
    for n in full:
        regrown = ~sparse[n]
        assert bool((sched.seen[8]["weights"][n][regrown] == 0).all())  # pruned until 8: exactly zero
        w9 = sched.seen[9]["weights"][n][regrown]
        g9 = sched.seen[9]["grads"][n][regrown]
        assert torch.equal(w9, -lr * g9), n


@pytest.mark.parametrize("backend", ["inplace", "reference"])
def test_dense_gradients_are_autograds_of_the_effective_weights(data, backend):
    """The gradients handed to a schedule, pruned entries included, equal the gradient of the same loss
    through a plain (unmasked) copy of the model holding W ⊙ M, on the same batch."""
    model = _model(data)
    set_backend(model, backend)
    masks = _random_masks(model, 0.3, 3)
    apply_mask(model, masks)
    sched = Scripted({}, grads_at=(3,))
    hp = _hp()
    train(model, data, hp, seed=5, schedule=sched)
    before = sched.seen[2]  # the weights step 3 started from
    oracle = _model(data)  # no mask attached: its layers run the plain dense op
    oracle.load_state_dict(before["state"])
    with torch.no_grad():
        for n, p in prunable_parameters(oracle).items():
            p.mul_(masks[n].to(p.dtype))
    xb, yb = Batcher(data.x_train, data.y_train, hp.batch_size, seed=5).batch(2)
    F.cross_entropy(oracle(xb), yb).backward()
    got = sched.seen[3]["grads"]
    for n, p in prunable_parameters(oracle).items():
        assert p.grad is not None
        assert bool((p.grad[~masks[n]] != 0).any()), "pruned entries should have gradients"
        torch.testing.assert_close(got[n], p.grad, rtol=1e-5, atol=1e-7)
    assert {layer.backend for _, layer in masked_layers(model)} == {backend}  # restored after the step
    _pruned_are_zero(model)


def test_resume_from_any_checkpoint_is_bit_identical(data):
    """Checkpoints (through torch.save / weights_only load, as on disk) at every evaluation; resuming from
    each ends with the masks, weights and history of the uninterrupted run."""
    hp = _hp(optimizer="adam", lr=0.01)

    def schedule() -> Scripted:
        m = _model(data)
        return Scripted(
            {3: _random_masks(m, 0.6, 4), 9: _random_masks(m, 0.3, 5), 15: _random_masks(m, 0.2, 6)}
        )

    saved: list[bytes] = []

    def save(st: TrainState) -> None:
        buf = io.BytesIO()
        torch.save(st.to_dict(), buf)
        saved.append(buf.getvalue())

    ref = _model(data)
    ref_sched = schedule()
    full = train(ref, data, hp, seed=0, schedule=ref_sched, save_checkpoint=save)
    assert len(saved) == 3  # at 6, 12, 18 (not at the end)
    for blob in saved:
        st = TrainState.from_dict(torch.load(io.BytesIO(blob), weights_only=True))
        assert st.masks is not None and st.method == {"calls": st.iteration + 1}
        model = _model(data, seed=99)  # another init: everything must come from the checkpoint
        sched = schedule()
        res = train(model, data, hp, seed=0, schedule=sched, start=st)
        assert sched.calls == ref_sched.calls  # restored, then advanced in step
        for (k, a), (_, b) in zip(ref.state_dict().items(), model.state_dict().items()):
            assert torch.equal(a, b), k
        assert all(torch.equal(get_mask(ref)[n], get_mask(model)[n]) for n in get_mask(ref))
        assert res.history == full.history


def test_a_schedule_may_stop_training(data):
    class Stop(MaskSchedule):
        def update(self, it, model, grads):
            if it == 7:
                raise StopTraining
            return None

    res = train(_model(data), data, _hp(), seed=0, schedule=Stop())
    assert res.iterations == 7 and res.history[-1]["iteration"] == 7


def test_fixed_masks_write_the_checkpoints_they_always_wrote(data):
    saved: list[dict] = []
    train(_model(data), data, _hp(), seed=0, save_checkpoint=lambda st: saved.append(st.to_dict()))
    assert saved and all("masks" not in d and "method" not in d for d in saved)


def test_unknown_layer_from_a_schedule_is_named(data):
    class Bad(MaskSchedule):
        def update(self, it, model, grads):
            return {"nope.weight": torch.ones(3, dtype=torch.bool)} if it == 1 else None

    with pytest.raises(ValueError, match="nope.weight"):
        train(_model(data), data, _hp(), seed=0, schedule=Bad())


def test_graphs_step_eagerly_under_a_schedule_and_say_why(data):
    model = _model(data)
    why = eager_reason(model, torch.device("cuda"), enabled=True, world=SINGLE, hooks=False, schedule=True)
    assert why is not None and "mask schedule" in why
    assert dataclasses.fields(TrainState)[-1].name == "method"
