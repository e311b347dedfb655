"""Gem-Miner (Sreenivasan et al. 2022): the variant's mask, gradient and clamp on a tiny layer worked by
hand, the freezing schedule's counts computed by hand, and the method end to end."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from nets import one_thread  # noqa: F401  (autouse fixture)

from ticketsearch.core.errors import ConfigError
from ticketsearch.methods.learned import GemMinerKnobs, GemMinerSchedule, freeze_points, knobs_from_args
from ticketsearch.sparse import MaskedLinear, get_mask, masked_layers
from ticketsearch.sparse.supermask import (
    SUPERMASK_VARIANTS,
    GemMinerVariant,
    init_scores,
    to_supermask,
)


def _tiny(w: list[list[float]]) -> nn.Module:
    lin = MaskedLinear(len(w[0]), len(w), bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w))
    return nn.Sequential(lin)


def test_registered():
    assert SUPERMASK_VARIANTS["gem_miner"] is GemMinerVariant


def test_straight_through_gradient_and_l2_by_hand():
    # W = [1, -2, 3], s = [0.2, 0.7, 0.5], x = [1, 1, 2]: the mask 1[s > 0.5] = [0, 1, 0] (0.5 is not kept),
    # so y = -2 · 1 = -2. With L = y, ∂L/∂W_eff = x; straight through, ∂L/∂s = x ⊙ W = [1, -2, 6], plus the
    # penalty's 2λs with λ = 0.1: [0.04, 0.14, 0.10]
    model = _tiny([[1.0, -2.0, 3.0]])
    ctrl = to_supermask(model, density=1.0, kind="gem_miner", scores=[torch.tensor([[0.2, 0.7, 0.5]])])
    ctrl.variant.l2 = 0.1  # type: ignore[attr-defined]
    model.train()
    y = model(torch.tensor([[1.0, 1.0, 2.0]]))
    assert y.item() == pytest.approx(-2.0)
    y.sum().backward()
    s = ctrl.layers[0].scores
    assert s.grad is not None
    assert torch.allclose(s.grad, torch.tensor([[1.04, -1.86, 6.10]]))
    with torch.no_grad():  # evaluation: the same hard mask, no gradient path
        model.eval()
        assert model(torch.tensor([[1.0, 1.0, 2.0]])).item() == pytest.approx(-2.0)
    assert ctrl.current_mask()["0.weight"].tolist() == [[False, True, False]]


def test_clamp_and_frozen_scores_by_hand():
    model = _tiny([[1.0, 1.0, 1.0, 1.0]])
    ctrl = to_supermask(model, density=1.0, kind="gem_miner", scores=[torch.tensor([[-0.3, 1.4, 0.6, 0.9]])])
    layer = ctrl.layers[0]
    layer.set_mask(torch.tensor([[True, True, True, False]]))  # the last weight is frozen
    ctrl.variant.project(ctrl)  # type: ignore[attr-defined]
    assert layer.scores.detach().tolist() == [[0.0, 1.0, 0.6000000238418579, 0.0]]
    # a frozen weight ranks below every live one, even one whose score is 0
    keep = ctrl.keep_scores()["0.weight"]
    assert keep.tolist()[0][3] == -1.0 and keep.tolist()[0][0] == 0.0
    # the frozen weight contributes nothing, whatever its score
    with torch.no_grad():
        layer.scores[0, 3] = 1.0
    model.eval()
    assert model(torch.ones(1, 4)).item() == pytest.approx(2.0)  # weights 1 and 2 (scores 1.0, 0.6)


def test_scores_start_uniform_in_unit_interval():
    model = _tiny([[1.0] * 50] * 40)
    g = torch.Generator().manual_seed(3)
    (s,) = init_scores(list(masked_layers(model)), kind="gem_miner", generator=g)
    expected = torch.rand((40, 50), generator=torch.Generator().manual_seed(3))  # the authors' U[0, 1]
    assert torch.equal(s, expected)


def test_freeze_points_by_hand():
    # the authors freeze after epochs T, 2T, … below E: floor((E - 1) / T) times, then train on
    assert freeze_points(10, 4) == [4, 8]
    assert freeze_points(12, 4) == [4, 8]  # not at 12: the last live scores get a period to settle
    assert freeze_points(13, 4) == [4, 8, 12]
    assert freeze_points(300, 5) == list(range(5, 300, 5)) and len(freeze_points(300, 5)) == 59
    assert freeze_points(3, 5) == [3]  # a period as long as training: one freeze, at the end
    with pytest.raises(ConfigError):
        freeze_points(10, 0)


def test_freeze_counts_by_hand_and_never_unfrozen():
    # 64 weights, density 1/8, 3 freezes: 64 · (1/8)^(1/3) = 32, 64 · (1/8)^(2/3) = 16, then exactly 8
    model = _tiny([[1.0] * 16] * 4)
    scores = torch.arange(64, dtype=torch.float32).reshape(4, 16) / 64.0
    ctrl = to_supermask(model, density=0.125, kind="gem_miner", scores=[scores])
    sched = GemMinerSchedule(0.125, [4, 8, 10], scope="global")
    layer = ctrl.layers[0]
    first = sched.update(0, model, None)
    assert first is not None and bool(first["0.weight"].all())  # boundary 0: every weight live
    layer.set_mask(first["0.weight"])
    assert sched.update(3, model, None) is None  # not a freeze point
    m1 = sched.update(4, model, None)
    assert m1 is not None
    live = m1["0.weight"].reshape(-1)
    assert int(live.sum()) == 32 and bool(live[32:].all())  # the 32 lowest scores froze
    layer.set_mask(m1["0.weight"])
    # the adversary: frozen weights now hold the highest scores, live ones low ones; nothing comes back
    with torch.no_grad():
        layer.scores.copy_(torch.where(layer.weight_mask, 0.1 + scores / 10, torch.ones_like(scores)))
    m2 = sched.update(8, model, None)
    assert m2 is not None
    live2 = m2["0.weight"].reshape(-1)
    assert int(live2.sum()) == 16 and bool(live2[48:].all()) and not bool(live2[:48].any())
    layer.set_mask(m2["0.weight"])
    m3 = sched.update(10, model, None)
    assert m3 is not None
    live3 = m3["0.weight"].reshape(-1)
    assert int(live3.sum()) == 8 and bool(live3[56:].all())
    assert get_mask(model)["0.weight"].sum() == 16  # update only decides; the loop applies


def test_knobs_validate():
    assert knobs_from_args({"every": "20it", "l2": "0"}, GemMinerKnobs) == GemMinerKnobs(every="20it", l2=0.0)
    for bad in ({"every": "0it"}, {"every": "x"}, {"l2": "-1"}, {"select": "mode"}, {"l2": "inf"}):
        with pytest.raises(ConfigError):
            knobs_from_args(bad, GemMinerKnobs)


def test_find_gem_miner_ticket_at_init_then_trained(tmp_path, capsys):
    from ticketsearch.cli import main

    rc = main(
        ["find", "--method", "gem-miner", "--dataset", "digits", "--density", "0.1", "--budget", "30it",
         "--arg", "every=10it", "--eval-every", "10it", "--root", str(tmp_path), "--no-progress", "--json"]
    )  # fmt: skip
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["level"] for r in rows] == [1, 2]
    one, two = rows
    assert one["weights_trained"] is False and one["freeze_points"] == [10, 20]
    # the default records the final binary mask (live and s > 0.5): at most the target, and level 2 trains it
    assert one["select"] == "threshold" and one["density"] == pytest.approx(one["threshold_density"])
    assert 0 < one["density"] <= 0.1 + 2e-4 and two["density"] == one["density"]
    assert two["untrained_test_acc"] == one["untrained_test_acc"]
    assert two["cost_to_find"]["forward"] == 30  # finding the mask cost the 30 score-training steps


def test_search_space_draws_valid_knobs():
    optuna = pytest.importorskip("optuna")
    from ticketsearch.core.hparams import PruningHparams, RunHparams
    from ticketsearch.methods import get_method

    m = get_method("gem-miner")
    base = RunHparams(training=m.recipe("mlp_digits", "digits"), pruning=PruningHparams(method="gem-miner"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for pareto in (False, True):
        trial = study.ask()
        hp = m.search_space(trial, base, density=(0.01, 0.9) if pareto else None)
        assert set(trial.params) == {"lr", "l2"} | ({"density"} if pareto else set())
        knobs = knobs_from_args(hp.args, GemMinerKnobs)  # validates what was drawn
        assert isinstance(knobs, GemMinerKnobs) and knobs.l2 == pytest.approx(trial.params["l2"])
        assert 7e-7 <= knobs.l2 <= 7e-5 and hp.training.lr == pytest.approx(trial.params["lr"])
        m.validate(hp)
        study.tell(trial, 0.5)


def test_topk_mask_without_retraining(tmp_path, capsys):
    from ticketsearch.cli import main

    rc = main(
        ["find", "--method", "gem-miner", "--dataset", "digits", "--density", "0.8", "--budget", "20it",
         "--arg", "every=5it", "--arg", "select=topk", "--arg", "retrain=false",
         "--root", str(tmp_path), "--no-progress", "--json"]
    )  # fmt: skip
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["level"] for r in rows] == [1]
    (one,) = rows
    # every live weight: exactly the target, beyond the rounded mask (U[0, 1] scores: freezing the lowest 20%
    # leaves those in (0.2, 0.5] live, about 3/8 of them, which 20 steps do not all lift over 0.5)
    assert one["select"] == "topk" and one["density"] == pytest.approx(0.8, abs=2e-4)
    assert one["threshold_density"] < one["density"]


def test_early_stopping_point_comes_after_the_last_freeze(tmp_path, capsys):
    # density 0.05 in two freezes (at 20 and 40): the validation loss is lowest before the first one, at
    # a denser network than the one recorded (iteration 15 here), so the record must not take it
    from ticketsearch.cli import main

    rc = main(
        ["find", "--method", "gem-miner", "--dataset", "digits", "--density", "0.05", "--budget", "60it",
         "--eval-every", "5it", "--arg", "every=20it", "--arg", "retrain=false",
         "--root", str(tmp_path), "--no-progress", "--json"]
    )  # fmt: skip
    assert rc == 0
    (one,) = json.loads(capsys.readouterr().out)["rows"]
    assert one["freeze_points"] == [20, 40]
    assert one["es_iteration"] >= 40
    history = [
        json.loads(line) for line in (tmp_path.glob("*/replicate_0/level_1/metrics.jsonl")).__next__().open()
    ]
    evals = [r for r in history if "val_loss" in r]
    assert min(evals, key=lambda r: r["val_loss"])["iteration"] < 20  # what an unfiltered record would take


def test_live_counts_track_the_authors_rule():
    # the authors (utils/net_utils.py get_prune_rate and prune, BottomK): p = 1 - exp(log(target) / n) and
    # each freeze prunes ceil(p · live); here the j-th freeze keeps exact_count(density^(j/n)) of all N
    import math

    from ticketsearch.core.mask import exact_count

    n_all, density, n = 10_000, 0.05, 59  # 300 epochs, iter_period 5: floor(299 / 5) = 59 freezes
    sched = GemMinerSchedule(density, freeze_points(300, 5))
    assert len(sched.points) == n
    p = 1 - math.exp(math.log(density) / n)
    theirs = n_all
    for j in range(1, n + 1):
        theirs -= math.ceil(p * theirs)
        ours = exact_count(sched.target(j), n_all)
        assert theirs <= ours <= theirs + j  # their ceil loses at most one weight more per freeze
    assert ours == 500 and theirs < 500  # the target exactly, where theirs overshoots
