"""Continuous sparsification (methods/cs.py, sparse/soft.py) against hand-worked cases and autograd."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from clitools import assert_one_line_error, nothing_left, run_cli
from nets import one_thread  # noqa: F401  (autouse fixture)
from safetensors.torch import load_file

from ticketsearch.methods.cs import cs_temperature, next_round_scores
from ticketsearch.sparse import MaskedLinear, sparsify
from ticketsearch.sparse.soft import (
    SoftMaskController,
    _SoftMaskFn,
    attach_soft_masks,
    soft_scores,
    strip_soft_masks,
)
from ticketsearch.training.optim import NO_DECAY, Optimizer


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_one_weight_by_hand():
    # w = 2, s = 0, β = 1, s0 = 0: c = 1/σ(0) = 2, w_eff = 2·σ(0)·2 = 2 (a fresh soft mask changes nothing)
    w = torch.tensor([2.0], requires_grad=True)
    s = torch.tensor([0.0], requires_grad=True)
    out = _SoftMaskFn.apply(w, s, 1.0, 2.0, 0.5)
    assert out.item() == pytest.approx(2.0)
    out.backward(torch.tensor([3.0]))
    # ∂/∂w = g·σ(βs)·c = 3·0.5·2 = 3; ∂/∂s = (g·w + λ)·β·c·σ(1 − σ) = (6 + 0.5)·1·2·0.25 = 3.25
    assert w.grad.item() == pytest.approx(3.0)
    assert s.grad.item() == pytest.approx(3.25)


@pytest.mark.parametrize("beta", [1.0, 7.5, 200.0])
def test_gradient_is_autograd_of_loss_plus_l1_penalty(beta):
    torch.manual_seed(0)
    w = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    s = (0.05 * torch.randn(5, 7, dtype=torch.float64)).requires_grad_()
    x = torch.randn(3, 7, dtype=torch.float64)
    s0, lam = -0.05, 1e-3
    c = 1.0 / _sig(s0)

    out = torch.nn.functional.linear(x, _SoftMaskFn.apply(w, s, beta, c, lam))
    (out**2).sum().backward()
    got = (w.grad.clone(), s.grad.clone())

    w2, s2 = w.detach().clone().requires_grad_(), s.detach().clone().requires_grad_()
    m = torch.sigmoid(beta * s2) * c
    loss = (torch.nn.functional.linear(x, w2 * m) ** 2).sum() + lam * m.sum()
    loss.backward()
    torch.testing.assert_close(got[0], w2.grad)
    torch.testing.assert_close(got[1], s2.grad)


def test_temperature_rises_once_per_epoch_to_final():
    # 10 steps, 3 per epoch: 4 epochs, β = 8^(e/3) in epoch e
    betas = [cs_temperature(it, 8.0, 10, 3) for it in range(10)]
    assert betas == pytest.approx([1, 1, 1, 2, 2, 2, 4, 4, 4, 8])
    # a round shorter than two epochs rises step by step: 5 steps → 16^(it/4)
    assert [cs_temperature(it, 16.0, 5, 100) for it in range(5)] == pytest.approx([1, 2, 4, 8, 16])


def test_between_rounds_closed_masks_stay_closed_open_ones_restart_at_s0():
    s = torch.tensor([-0.1, 0.0, 0.0004, 0.05, 1.0])
    assert next_round_scores(s, 200.0, 0.0).tolist() == pytest.approx([-20.0, 0.0, 0.0, 0.0, 0.0])
    assert next_round_scores(s, 200.0, 0.05).tolist() == pytest.approx([-20.0, 0.0, 0.05, 0.05, 0.05])


def test_attach_and_strip_keep_the_model_and_its_state_keys():
    torch.manual_seed(0)
    model = sparsify(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    x = torch.randn(6, 4)
    dense = model(x)
    ctrl = attach_soft_masks(model, SoftMaskController(s0=0.3, l1=0.0))
    # at β = 1 and s = s0 everywhere, σ(s0)/σ(s0) = 1: the soft model computes the dense one
    torch.testing.assert_close(model(x), dense)
    assert set(soft_scores(model)) == {"0.weight", "2.weight"}
    assert any(k.endswith("cs_scores") for k in model.state_dict())
    ctrl.hard = True  # 1[s > 0]·c: every mask open, ×1/σ(0.3)
    torch.testing.assert_close(
        model[0](x), torch.nn.functional.linear(x, model[0].weight / _sig(0.3), model[0].bias)
    )
    strip_soft_masks(model)
    assert type(model[0]) is MaskedLinear
    assert not any(k.endswith("cs_scores") for k in model.state_dict())


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_weight_decay_skips_parameters_marked_no_decay(kind):
    # the oracle: torch.optim with a second parameter group at weight_decay 0
    torch.manual_seed(0)
    a, b = torch.randn(4), torch.randn(4)
    pa, pb = nn.Parameter(a.clone()), nn.Parameter(b.clone())
    setattr(pb, NO_DECAY, True)
    qa, qb = nn.Parameter(a.clone()), nn.Parameter(b.clone())
    wd, lr = 0.1, 0.05
    from ticketsearch.core.hparams import TrainingHparams
    from ticketsearch.training.optim import make_optimizer

    ours = make_optimizer(
        [pa, pb],
        TrainingHparams(optimizer=kind, lr=lr, weight_decay=wd, momentum=0.9 if kind == "sgd" else 0.0),
    )
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
    extra = {"momentum": 0.9} if kind == "sgd" else {}
    ref = cls([{"params": [qa]}, {"params": [qb], "weight_decay": 0.0}], lr=lr, weight_decay=wd, **extra)
    for _ in range(3):
        g = torch.randn(2, 4)
        for p, q, gi in ((pa, qa, g[0]), (pb, qb, g[1])):
            p.grad, q.grad = gi.clone(), gi.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(pa.detach(), qa.detach())
    torch.testing.assert_close(pb.detach(), qb.detach())
    assert isinstance(ours, Optimizer)


# -- the method end to end (digits, short budgets) ---------------------------------------------------------
# cs on digits with a short budget (the method's own knobs come after)
CS = ("find", "--method", "cs", "--dataset", "digits", "--budget", "60it")


def _find(capsys, tmp_path: Path, *args: str) -> Path:
    r = run_cli(capsys, *CS, "--root", str(tmp_path), "--eval-every", "30it", *args)
    assert r.returncode == 0, r.stderr
    (run,) = list(tmp_path.glob("cs_*/replicate_0"))
    return run


def _scores(path: Path) -> dict[str, torch.Tensor]:
    return {
        k[: -len(".cs_scores")] + ".weight": v
        for k, v in load_file(str(path)).items()
        if k.endswith("cs_scores")
    }


def test_rounds_carry_min_beta_s_s0_and_the_ticket_is_exact(capsys, tmp_path):
    # lr so small that nothing moves within round 2: its scores are round 1's under min(β s, s0)
    run = _find(
        capsys,
        tmp_path,
        "--density",
        "0.1",
        "--lr",
        "1e-9",
        "--arg",
        "rounds=2",
        "--arg",
        "s0=0.01",
        "--arg",
        "final_temp=50",
    )
    s1 = _scores(run / "level_1/round_1/model_final.safetensors")
    s2 = _scores(run / "level_1/round_2/model_final.safetensors")
    for n in s1:
        torch.testing.assert_close(s2[n], torch.clamp(50.0 * s1[n], max=0.01), atol=1e-6, rtol=0)
    mask = load_file(str(run / "level_2/mask.safetensors"))
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    assert kept == round(0.1 * total)  # select=topk: exactly --density (global top-k of s)
    res1 = json.loads((run / "level_1/result.json").read_text())
    assert [r["round"] for r in res1["cs"]["rounds"]] == [1, 2]
    assert res1["cs"]["emergent_density"] == pytest.approx(
        sum(int((s > 0).sum()) for s in s2.values()) / total
    )


def test_threshold_ticket_is_the_emergent_mask_and_level_1_is_the_hardened_net(capsys, tmp_path):
    run = _find(capsys, tmp_path, "--arg", "rounds=1", "--arg", "select=threshold", "--arg", "s0=0.0")
    final = load_file(str(run / "level_1/round_1/model_final.safetensors"))
    mask = load_file(str(run / "level_1/mask.safetensors"))
    level1 = load_file(str(run / "level_1/model_final.safetensors"))
    for name, m in mask.items():
        s = final[name[: -len("weight")] + "cs_scores"]
        assert torch.equal(m.bool(), s > 0)
        # w/σ(s0) on the kept weights (σ(0) = 1/2), exactly zero elsewhere
        torch.testing.assert_close(level1[name], final[name] * 2.0 * m.float())


def test_ticket_trains_from_the_rewind_point_of_round_one(capsys, tmp_path):
    run = _find(capsys, tmp_path, "--density", "0.2", "--rewind-iter", "7", "--arg", "rounds=1")
    rewind = load_file(str(run / "rewind.safetensors"))
    init = load_file(str(run / "init.safetensors"))
    assert set(rewind) == set(init)  # the plain model's weights, no mask parameters
    assert any(not torch.equal(rewind[k], init[k]) for k in init)  # 7 steps of round 1 moved them
    meta = json.loads((run / "level_2/mask.json").read_text())
    assert "rewind (iteration 7)" in json.dumps(meta)


@pytest.mark.parametrize(
    "arg,needle",
    [
        (("--arg", "l1=-1"), "l1"),
        (("--arg", "rounds=0"), "rounds"),
        (("--arg", "select=emergent"), "select"),
        (("--arg", "final_temp=0.5"), "final_temp"),
        (("--arg", "s0=nan"), "s0"),
        (("--rewind-iter", "60"), "rewind"),
    ],
)
def test_bad_knobs_are_one_line_before_any_file(capsys, tmp_path, arg, needle):
    r = run_cli(capsys, *CS, "--root", str(tmp_path), *arg)
    assert_one_line_error(r, needle)
    assert not nothing_left(tmp_path)
