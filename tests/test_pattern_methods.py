"""--pattern for the methods that select during or across training: each method's own step worked by hand
on a tiny layer (GMP's step above N/M, RigL's drop and grow, Gem-Miner's freeze, edge-popup's forward and
gradient), then every method end to end: its final mask obeys the pattern (by independent counts and by
core.pattern's checker) at exactly the density asked."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from clitools import assert_one_line_error, nothing_left, run_cli
from nets import one_thread  # noqa: F401  (autouse fixture)

from ticketsearch.core.mask import Mask, exact_count
from ticketsearch.core.pattern import check_pattern
from ticketsearch.core.select import select
from ticketsearch.methods.dst import DropGrow
from ticketsearch.methods.gmp import GMPSchedule
from ticketsearch.methods.learned import GemMinerSchedule
from ticketsearch.sparse import MaskedLinear, apply_mask, get_mask
from ticketsearch.sparse.supermask import SUPERMASK_KERNELS, to_supermask


def _b(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def _layer(w: list[list[float]]) -> nn.Module:
    lin = MaskedLinear(len(w[0]), len(w), bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w))
    return nn.Sequential(lin)


# -- GMP: a step above N/M keeps every group's N best, the step that reaches N/M keeps exactly N ------------
def test_gmp_steps_walk_down_to_two_four_by_hand() -> None:
    model = _layer([[0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.05]])
    # cubic density from 1 at t0 = 0 to 0.25 at t_end = 4: step 1 keeps 0.25 + 0.75 · (3/4)³ = 0.566 → 5
    sched = GMPSchedule(0.25, 0, 4, 1, scope="layerwise", distribution="uniform", pattern="2:4")
    apply_mask(model, Mask.ones({"0.weight": (1, 8)}))
    step1 = sched.update(1, model, None)
    assert step1 is not None
    # the groups' 2 best (.9 .8 | .3 .2), then the best other (.7); plain top-5 keeps all of group 0
    assert step1["0.weight"].int().tolist() == [[1, 1, 1, 0, 0, 1, 1, 0]]
    apply_mask(model, Mask(step1))
    # step 3 keeps 0.25 + 0.75/64 = 0.2617 → round-half-up(2.09) = 2: below N/M, the best 2 within 2:4
    step3 = sched.update(3, model, None)
    assert step3 is not None and step3["0.weight"].int().tolist() == [[1, 1, 0, 0, 0, 0, 0, 0]]
    apply_mask(model, Mask(step3))
    assert sched.update(4, model, None) == {}  # the target, already reached: nothing moves
    check_pattern(get_mask(model), "2:4")


# -- RigL / SET: drop by |w|, grow only where a group has room -------------------------------------------------
def test_rigl_grows_only_into_groups_with_room() -> None:
    model = _layer([[0.0, 0.9, 0.0, 0.8, 0.0, 0.7, 0.0, 0.6]])
    apply_mask(model, Mask({"0.weight": _b([[0, 1, 0, 1, 0, 1, 0, 1]])}))  # 2:4 at density 1/2
    # α = 1, T_end = 2, step 1: f = ½ (1 + cos(π/2)) = ½ → drop 2 of the 4 kept: .6 and .7, both in group 1
    sched = DropGrow(1, 1.0, 2, "gradient", seed=0, pattern="2:4")
    grads = {"0.weight": torch.tensor([[5.0, 0.0, 4.0, 0.0, 3.0, 1.0, 2.0, 0.5]])}
    new = sched.update(1, model, grads)
    assert new is not None
    # group 0 is full (.9 .8): no room; group 1 regrows its 2 best gradients, 3 and 2 (plain RigL: 5 and 4,
    # three kept in group 0)
    assert new["0.weight"].int().tolist() == [[0, 1, 0, 1, 1, 0, 1, 0]]
    check_pattern(Mask(new), "2:4")
    plain = DropGrow(1, 1.0, 2, "gradient", seed=0).update(1, model, grads)
    assert plain is not None and plain["0.weight"].int().tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]]


def test_set_blocks_move_whole_blocks() -> None:
    model = _layer([[0.9, 0.9, 0.0, 0.0, 0.1, 0.1, 0.0, 0.0], [0.9, 0.9, 0.0, 0.0, 0.1, 0.1, 0.0, 0.0]])
    apply_mask(model, Mask({"0.weight": _b([[1, 1, 0, 0, 1, 1, 0, 0]] * 2)}))
    new = DropGrow(1, 1.0, 2, "random", seed=3, pattern="block:2x2").update(1, model, None)
    assert new is not None
    m = new["0.weight"]
    # ½ of the 2 kept blocks: the .1 block goes, one empty block (random) comes; the .9 block stays
    assert int(m.sum()) == 8 and bool(m[:, :2].all()) and not bool(m[:, 4:6].any())
    check_pattern(Mask(new), "block:2x2")


# -- Gem-Miner: a freeze above N/M floors each group among the live weights -----------------------------------
def test_gem_miner_freezes_walk_down_to_the_pattern() -> None:
    model = _layer([[1.0] * 8])
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.05]])
    ctrl = to_supermask(model, density=0.25, kind="gem_miner", scores=[scores])
    sched = GemMinerSchedule(0.25, [1, 2], scope="global", pattern="2:4")
    layer = ctrl.layers[0]
    layer.set_mask(sched.update(0, model, None)["0.weight"])  # type: ignore[index]
    # freeze 1 of 2 keeps 0.25^(1/2) = 1/2 of 8 = 4: exactly N of every M, the groups' 2 best
    m1 = sched.update(1, model, None)
    assert m1 is not None and m1["0.weight"].int().tolist() == [[1, 1, 0, 0, 0, 1, 1, 0]]
    layer.set_mask(m1["0.weight"])
    m2 = sched.update(2, model, None)  # 2 of 8: the best two live (.9 .8)
    assert m2 is not None and m2["0.weight"].int().tolist() == [[1, 1, 0, 0, 0, 0, 0, 0]]


# -- edge-popup: the forward is core.select's mask under the pattern, the gradient straight through ----------
@pytest.mark.parametrize("kernel", SUPERMASK_KERNELS)
def test_edge_popup_forward_and_gradient_under_two_four(kernel: str) -> None:
    model = _layer([[1.0, -2.0, 3.0, 4.0, 1.0, 1.0, 1.0, 1.0]])
    s = torch.tensor([[0.1, -0.9, 0.5, 0.2, 0.3, -0.4, 0.6, 0.7]])
    ctrl = to_supermask(model, density=0.5, kernel=kernel, pattern="2:4", scores=[s])
    assert ctrl.backend == "pattern"
    # |s| per group of 4: {.9 .5} and {.7 .6}: W_eff = [0, -2, 3, 0, 0, 0, 1, 1]; x = 1..8
    x = torch.arange(1.0, 9.0).reshape(1, 8)
    model.train()
    y = model(x)
    assert y.item() == pytest.approx(-2 * 2 + 3 * 3 + 7 + 8)
    y.sum().backward()
    grad = ctrl.layers[0].scores.grad
    assert grad is not None  # straight through: x ⊙ W ⊙ sign(s), every score, kept or not
    assert torch.allclose(grad, x * model[0].weight.detach() * torch.sign(s))
    mask = ctrl.current_mask()
    assert mask["0.weight"].int().tolist() == [[0, 1, 1, 0, 0, 0, 1, 1]]
    assert torch.equal(mask["0.weight"], select({"0.weight": s.abs()}, 0.5, pattern="2:4")["0.weight"])


def test_edge_popup_below_n_over_m_is_topk_within_the_groups() -> None:
    s = torch.tensor([[0.1, -0.9, 0.5, 0.2, 0.3, -0.4, 0.6, 0.7]])
    ctrl = to_supermask(_layer([[1.0] * 8]), density=0.25, pattern="2:4", scores=[s])
    assert ctrl.current_mask()["0.weight"].int().tolist() == [[0, 1, 0, 0, 0, 0, 0, 1]]  # .9 and .7


# -- every method end to end ------------------------------------------------------------------------------------
_FIND = ["find", "--dataset", "digits", "--no-progress", "--device", "cpu", "--json"]
METHOD_RUNS = {
    "imp": ["--budget", "2it", "--rate", "0.5", "--output-rate", "-1"],  # 1/2 = 2:4, then 1/4
    "early-bird": ["--budget", "6it", "--eb-every", "2it"],
    "gmp": ["--budget", "8it", "--arg", "every=1"],
    "rigl": ["--budget", "8it", "--arg", "every=2", "--distribution", "uniform"],  # ERK: fc above 1/2
    "set": ["--budget", "8it", "--arg", "every=2", "--scope", "global"],
    "supermask": ["--budget", "3it"],
    "supermask-bernoulli": ["--budget", "3it", "--arg", "select=topk"],
    "gem-miner": ["--budget", "6it", "--arg", "every=2it", "--arg", "select=topk"],
    "cs": ["--budget", "3it", "--arg", "rounds=2"],  # select=topk (its default) under the pattern
}


def _obeys(t: torch.Tensor, pattern: str) -> bool:
    """Independent of core.pattern: no group of 4 along a row keeps more than N / every 2x2 tile whole."""
    if pattern in ("2:4", "1:4"):
        return int(t.reshape(t.shape[0], -1, 4).sum(-1).max()) <= int(pattern[0])
    tiles = t.reshape(t.shape[0] // 2, 2, -1, 2).sum(dim=(1, 3))
    return bool(((tiles == 0) | (tiles == 4)).all())


@pytest.mark.parametrize("method", sorted(METHOD_RUNS))
def test_every_method_ends_on_the_pattern_at_the_exact_density(tmp_path, capsys, method: str) -> None:
    root = tmp_path / "runs"
    pattern = "block:2x2" if method in ("set", "supermask") else "2:4"
    r = run_cli(
        capsys, *_FIND, *METHOD_RUNS[method], "--method", method, "--pattern", pattern,
        "--density", "0.25", "--root", str(root),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    last = rows[-1]
    shapes = {"layers.0.weight": 128 * 64, "layers.1.weight": 64 * 128, "fc.weight": 10 * 64}
    if pattern == "2:4" or method == "supermask":  # layerwise (uniform) or global: the same exact count
        assert last["density"] == pytest.approx(sum(exact_count(0.25, n) for n in shapes.values()) / 17024)
    assert last["density"] == pytest.approx(0.25, abs=1e-12)  # every count above is a quarter exactly
    for row in rows:
        if row["level"] == 0:
            continue
        m = Mask.load(row["mask"])  # verifies the sidecar's claim
        if row is last or m.density <= 0.5 + 1e-12:
            assert m.metadata["pattern"] == pattern, row
            check_pattern(m, pattern)
            assert all(_obeys(t, pattern) for t in m.values())


def test_imp_levels_above_n_over_m_are_not_its_tickets(tmp_path, capsys) -> None:
    from ticketsearch.methods import get_method

    root = tmp_path / "runs"
    r = run_cli(
        capsys, *_FIND, "--method", "imp", "--budget", "2it", "--rate", "0.3", "--output-rate", "-1",
        "--pattern", "1:4", "--density", "0.2", "--root", str(root),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    # 1 → .7 → .49 → .343 → .25 (stopped at N/M instead of .2401) → .175
    assert [round(row["density"], 4) for row in rows] == [1.0, 0.7, 0.49, 0.343, 0.25, 0.175]
    assert [row.get("pattern") for row in rows] == [None, None, None, None, "1:4", "1:4"]
    imp = get_method("imp")
    assert imp.ticket_for(rows, 0.3)["level"] == 4  # the nearest level that obeys 1:4, not .343
    assert imp.ticket_for(rows, 0.2)["level"] == 5


@pytest.mark.parametrize(
    "method,extra,needles",
    [
        ("supermask-bernoulli", [], ["select=threshold", "pattern 2:4", "--arg select=topk"]),
        ("gem-miner", ["--pattern", "block:2x2"], ["select=threshold", "block:2x2", "--arg select=topk"]),
        ("rigl", ["--distribution", "erk"], ["2:4 keeps at most 0.5 of a layer"]),
        ("gmp", ["--density", "0.6"], ["above what pattern 2:4 keeps"]),
        ("cs", ["--arg", "select=threshold"], ["select=threshold", "emergent", "2:4", "select=topk"]),
        ("cs", ["--density", "0.6"], ["above what pattern 2:4 keeps"]),
    ],
)
def test_a_pattern_a_method_cannot_meet_is_one_line_and_writes_nothing(
    tmp_path, capsys, method, extra, needles
):
    root = tmp_path / "runs"
    args = [*_FIND, "--budget", "2it", "--method", method, "--pattern", "2:4", "--density", "0.45"]
    r = run_cli(capsys, *args, *extra, "--root", str(root))
    assert_one_line_error(r, *needles)
    assert nothing_left(root) == []


def test_every_built_in_strategy_that_accepts_a_pattern_is_run_here() -> None:
    from ticketsearch.methods import METHOD_STRATEGIES, get_method

    accepting = {
        e.name
        for e in METHOD_STRATEGIES.entries()
        if e.source == "built-in" and get_method(e.name).accepts_pattern
    }
    assert accepting <= set(METHOD_RUNS)  # the one-shot scorers: tests/test_pattern.py


def test_a_method_that_declares_no_pattern_refuses_one_in_one_line() -> None:
    from ticketsearch.core.errors import ConfigError
    from ticketsearch.core.hparams import PruningHparams, RunHparams
    from ticketsearch.methods.base import Method

    class Fixed(Method):  # a plugin that never said its masks obey a pattern
        name = "fixed"

        def run_levels(self, run):  # pragma: no cover - never reached
            raise AssertionError

    hp = RunHparams(pruning=PruningHparams(method="fixed", pattern="2:4", density=0.5))
    with pytest.raises(ConfigError, match="method 'fixed' does not support --pattern 2:4") as e:
        Fixed().validate(hp)
    assert "\n" not in str(e.value)
