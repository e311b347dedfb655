"""Gradual magnitude pruning (methods/gmp.py) against Zhu & Gupta's schedule, worked by hand."""

from __future__ import annotations

import json

import pytest
import torch
from nets import one_thread  # noqa: F401  (autouse fixture)

from ticketsearch.core.hparams import TrainingHparams
from ticketsearch.core.mask import exact_count
from ticketsearch.data import load_dataset
from ticketsearch.methods.gmp import GMPSchedule, cubic_density
from ticketsearch.models import create_model
from ticketsearch.sparse import get_mask, prunable_parameters
from ticketsearch.training import train


def test_cubic_density_by_hand():
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n Δt))^3 with s_i = 0, s_f = 0.9, t0 = 10, n Δt = 20
    assert cubic_density(0, 0.1, 10, 30) == 1.0
    assert cubic_density(10, 0.1, 10, 30) == 1.0
    assert cubic_density(20, 0.1, 10, 30) == pytest.approx(0.1 + 0.9 * 0.5**3)  # 0.2125
    assert cubic_density(25, 0.1, 10, 30) == pytest.approx(0.1 + 0.9 * 0.25**3)
    assert cubic_density(30, 0.1, 10, 30) == 0.1
    assert cubic_density(99, 0.1, 10, 30) == 0.1


class Recording(GMPSchedule):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.before: dict[int, dict] = {}
        self.after: dict[int, dict] = {}

    def update(self, it, model, grads):
        self.before[it] = {
            "w": {n: p.detach().clone() for n, p in prunable_parameters(model).items()},
            "m": dict(get_mask(model)),
        }
        new = super().update(it, model, grads)
        self.after[it] = new
        return new


def test_prunes_on_schedule_by_magnitude_among_the_kept_and_never_revives():
    data = load_dataset("digits", seed=0, device=torch.device("cpu"))
    torch.manual_seed(0)
    model = create_model("mlp_digits", tuple(data.input_shape), int(data.num_classes))
    sched = Recording(0.1, 4, 24, 5, scope="layerwise", distribution="uniform")
    train(
        model, data, TrainingHparams(budget="30it", eval_every="10it", batch_size=32), seed=0, schedule=sched
    )
    # pruning events: t0 + kΔt strictly inside (t0, t_end), and t_end itself
    assert sorted(it for it, new in sched.after.items() if new) == [9, 14, 19, 24]
    prev = None
    for it in sorted(sched.before):
        if it not in (9, 14, 19, 24):
            continue
        before = sched.before[it]
        now = {**before["m"], **{n: t.cpu() for n, t in sched.after[it].items()}}
        d = cubic_density(it, 0.1, 4, 24)
        for n, w in before["w"].items():
            k = exact_count(d, w.numel())
            assert int(now[n].sum()) == k, (it, n)
            assert not bool((now[n] & ~before["m"][n]).any()), f"{n} revived at {it}"
            # the oracle: the k largest |w| among the weights kept before this step (ties: lower index)
            flat = w.abs().flatten().double()
            flat[~before["m"][n].flatten()] = -1.0
            keep = torch.zeros(w.numel(), dtype=torch.bool)
            keep[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
            assert torch.equal(now[n].flatten(), keep), (it, n)
        prev = now
    assert prev is not None
    final = get_mask(model)
    assert all(torch.equal(final[n], prev[n]) for n in final)  # nothing moves after t_end
    for n, p in prunable_parameters(model).items():
        assert bool((p.detach()[~final[n]] == 0).all())


def test_find_gmp_reports_both_levels_and_its_cost(tmp_path, capsys):
    from ticketsearch.cli import main

    rc = main(
        ["find", "--method", "gmp", "--dataset", "digits", "--density", "0.1", "--budget", "40it",
         "--eval-every", "10it", "--root", str(tmp_path), "--no-progress", "--json"]
    )  # fmt: skip
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["level"] for r in rows] == [1, 2]
    assert all(r["density"] == pytest.approx(0.1, abs=2e-4) for r in rows)
    assert rows[0]["gmp"] == {"t0": 4, "t_end": 30, "every": 1}
    assert rows[0]["es_iteration"] >= 30  # the early-stopping point is taken at the final density
    cost = rows[1]["cost_to_find"]
    assert (cost["forward"], cost["backward"]) == (40, 40) and cost["wall_time"] == rows[0]["wall_time"]
