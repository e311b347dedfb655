"""Scorers against closed forms, brute force and independent autograd; the iterative driver; bad input."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ticketsearch.core.errors import ConfigError, MaskMismatchError, UnknownNameError
from ticketsearch.core.hparams import PruningHparams, RunHparams
from ticketsearch.core.mask import Mask, exact_count
from ticketsearch.core.select import select
from ticketsearch.scorers import (
    SCORERS,
    Scorer,
    ScoringContext,
    density_schedule,
    find_mask,
    first_collapse_density,
    hessian_gradient_product,
    register_scorer,
)
from ticketsearch.sparse import (
    MaskedConv2d,
    MaskedLinear,
    apply_mask,
    get_mask,
    prunable_parameters,
    prunable_shapes,
)


def hp(method: str = "snip", args: dict | None = None, **pruning) -> RunHparams:
    pruning.setdefault("scope", "global")
    return RunHparams(
        pruning=PruningHparams(method=method, **pruning), method_args=tuple(sorted((args or {}).items()))
    )


def linear2(d_in=4, d_hidden=3, d_out=2, seed=0, dtype=torch.float64) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        MaskedLinear(d_in, d_hidden, bias=False), MaskedLinear(d_hidden, d_out, bias=False)
    ).to(dtype)


def batches_for(d_in, n_classes, sizes=(5, 3), seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, d_in, generator=g, dtype=dtype), torch.randint(0, n_classes, (n,), generator=g))
        for n in sizes
    ]


def score(name: str, model, batches, **kw):
    return SCORERS.get(name)().score(model, batches, hparams=hp(name, **kw))


# -- closed forms ------------------------------------------------------------------------------------------
def test_snip_matches_hand_gradient_of_linear_net() -> None:
    model = linear2()
    w1, w2 = model[0].weight.detach(), model[1].weight.detach()
    batches = batches_for(4, 2)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    n = x.shape[0]
    # mean cross-entropy over all 8 examples: dL/dz = (softmax(z) - onehot) / n
    h = x @ w1.T
    z = h @ w2.T
    p = torch.exp(z - z.max(1, keepdim=True).values)
    p = p / p.sum(1, keepdim=True)
    delta = (p - torch.eye(2, dtype=x.dtype)[y]) / n
    g2 = delta.T @ h  # (2, 3)
    g1 = (delta @ w2).T @ x  # (3, 4) = W2^T delta^T x
    s = score("snip", model, batches)
    torch.testing.assert_close(s["1.weight"], (g2 * w2).abs(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s["0.weight"], (g1 * w1).abs(), rtol=1e-10, atol=1e-12)
    # the split into batches does not matter, only the examples
    s_one = score("snip", model, [(x, y)])
    for k in s:
        torch.testing.assert_close(s[k], s_one[k], rtol=1e-10, atol=1e-14)


def test_magnitude_is_abs_weight() -> None:
    model = linear2()
    s = score("magnitude", model, [])
    for n, p in prunable_parameters(model).items():
        assert torch.equal(s[n], p.detach().abs())


# -- GraSP ------------------------------------------------------------------------------------------------
def tanh_mlp(seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(MaskedLinear(5, 4), nn.Tanh(), MaskedLinear(4, 3)).double()


def functional_loss(model, names, batches, temperature):
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])

    def f(*ws):
        params = dict(model.named_parameters())
        params.update(dict(zip(names, ws)))
        out = torch.func.functional_call(model, params, (x,))
        return F.cross_entropy(out / temperature, y)

    return f


@pytest.mark.parametrize("temperature", [1.0, 200.0])
def test_grasp_hg_matches_autograd_hvp_and_finite_differences(temperature: float) -> None:
    model = tanh_mlp()
    batches = batches_for(5, 3, sizes=(6, 4))
    params = prunable_parameters(model)
    names = list(params)
    hg, g = hessian_gradient_product(model, list(params.values()), batches, temperature=temperature)
    f = functional_loss(model, names, batches, temperature)
    ws = tuple(p.detach() for p in params.values())
    _, hvp = torch.autograd.functional.hvp(f, ws, v=tuple(g))
    for a, b in zip(hg, hvp):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-14)

    def grad_at(shift: float):
        wsd = [(w + shift * gi).requires_grad_() for w, gi in zip(ws, g)]
        return torch.autograd.grad(f(*wsd), wsd)

    eps = 1e-3 / max(float(torch.cat([t.flatten() for t in g]).norm()), 1e-30)
    fd = [(a - b) / (2 * eps) for a, b in zip(grad_at(eps), grad_at(-eps))]
    scale = max(float(t.abs().max()) for t in hg)
    for a, b in zip(hg, fd):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)


def test_grasp_chunked_equals_unchunked() -> None:
    model = tanh_mlp()
    batches = batches_for(5, 3, sizes=(7, 5))
    whole = score("grasp", model, batches)
    for chunk in (1, 3):
        chunked = score("grasp", model, batches, args={"chunk_size": chunk})
        for k in whole:
            torch.testing.assert_close(chunked[k], whole[k], rtol=1e-9, atol=1e-16)


def test_grasp_score_is_plus_w_hg() -> None:
    model = tanh_mlp(seed=3)
    batches = batches_for(5, 3)
    params = prunable_parameters(model)
    f = functional_loss(model, list(params), batches, 200.0)
    ws = tuple(p.detach() for p in params.values())
    wsg = [w.clone().requires_grad_() for w in ws]
    g = torch.autograd.grad(f(*wsg), wsg)
    _, hvp = torch.autograd.functional.hvp(f, ws, v=g)
    s = score("grasp", model, batches)
    for (n, w), h in zip(params.items(), hvp):
        torch.testing.assert_close(s[n], w.detach() * h, rtol=1e-8, atol=1e-16)


def test_grasp_sign_on_a_case_worked_by_hand() -> None:
    """One input x = 1, two logits z = (a, b) = (2, 1), label 0, T = 1.

    g = dL/dz = (p1 - 1, p2) = p2 (-1, 1);  H = diag(p) - p p^T = p1 p2 [[1, -1], [-1, 1]]
    Hg = 2 p1 p2^2 (-1, 1) =: c (-1, 1), so w ⊙ Hg = (-2c, +c).
    GraSP removes the highest -w ⊙ Hg, i.e. keeps b (score +c) and prunes a (-2c). Removing a raises the
    gradient norm (what GraSP allows); removing b would lower it.
    """
    model = nn.Sequential(MaskedLinear(1, 2, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[2.0], [1.0]], dtype=torch.float64))
    batches = [(torch.ones(1, 1, dtype=torch.float64), torch.tensor([0]))]
    p1 = 1 / (1 + math.exp(-1.0))
    p2 = 1 - p1
    c = 2 * p1 * p2**2
    s = score("grasp", model, batches, args={"temperature": 1.0})["0.weight"]
    torch.testing.assert_close(s, torch.tensor([[-2 * c], [c]], dtype=torch.float64), rtol=1e-10, atol=0)
    mask = select({"0.weight": s}, 0.5)
    assert mask["0.weight"].flatten().tolist() == [False, True]

    def grad_norm_sq(w):
        z = torch.tensor(w, dtype=torch.float64)
        g = torch.softmax(z, 0) - torch.tensor([1.0, 0.0], dtype=torch.float64)
        return float((g**2).sum())

    assert grad_norm_sq([0.0, 1.0]) > grad_norm_sq([2.0, 1.0]) > grad_norm_sq([2.0, 0.0])


# -- SynFlow ----------------------------------------------------------------------------------------------
def test_synflow_equals_brute_force_path_sums() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        MaskedLinear(3, 2, bias=False),
        nn.ReLU(),
        MaskedLinear(2, 2, bias=False),
        nn.ReLU(),
        MaskedLinear(2, 1, bias=False),
    )
    w1, w2, w3 = (m.weight.detach().double().abs() for m in (model[0], model[2], model[4]))
    expected = {"0.weight": torch.zeros(2, 3), "2.weight": torch.zeros(2, 2), "4.weight": torch.zeros(1, 2)}
    expected = {k: v.double() for k, v in expected.items()}
    for i, j, k in itertools.product(range(3), range(2), range(2)):  # input i -> h1 j -> h2 k -> out 0
        path = float(w1[j, i] * w2[k, j] * w3[0, k])
        expected["0.weight"][j, i] += path
        expected["2.weight"][k, j] += path
        expected["4.weight"][0, k] += path
    s = score("synflow", model, [(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long))])
    for n in expected:
        assert s[n].dtype == torch.float64
        torch.testing.assert_close(s[n], expected[n], rtol=1e-12, atol=0)
    assert model[0].weight.dtype == torch.float32  # the copy was made double, not the model


def test_synflow_needs_no_data_but_an_input_shape() -> None:
    model = nn.Sequential(MaskedLinear(3, 2), nn.ReLU(), MaskedLinear(2, 2))
    with pytest.raises(ConfigError, match="input shape"):
        score("synflow", model, [])
    model.input_shape = (3,)
    assert set(score("synflow", model, [])) == {"0.weight", "2.weight"}
    ctx = ScoringContext(data=type("D", (), {"input_shape": (3,)})())
    del model.input_shape
    s = SCORERS.get("synflow")().score(model, [], hparams=hp("synflow"), context=ctx)
    assert set(s) == {"0.weight", "2.weight"}


def test_synflow_iterative_hits_density_exactly_and_masks_nest() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), MaskedLinear(16, 12), nn.ReLU(), MaskedLinear(12, 8), nn.ReLU(), MaskedLinear(8, 3)
    )
    total = sum(math.prod(s) for s in prunable_shapes(model).values())
    seen: list[Mask] = []

    class Spy(SCORERS.get("synflow")):  # type: ignore[misc, valid-type]
        def score(self, model, batches, **kw):
            seen.append(get_mask(model))
            return super().score(model, batches, **kw)

    batches = [(torch.zeros(1, 1, 4, 4), torch.zeros(1, dtype=torch.long))]
    mask, cost = find_mask(Spy(), model, batches, hp("synflow", density=0.037))
    assert cost["rounds"] == 100 and len(seen) == 100 and mask.metadata["rounds"] == 100
    assert mask.num_kept == exact_count(0.037, total)
    for a, b in zip(seen[1:], seen[2:]):
        assert b.is_subset_of(a)
    assert mask.is_subset_of(seen[-1])
    sched = density_schedule(0.037, 100)
    assert sched[-1] == 0.037 and all(a > b for a, b in zip(sched, sched[1:]))
    torch.testing.assert_close(torch.tensor(sched[49]), torch.tensor(0.037**0.5))


def test_iterative_rounds_never_revive_pruned_weights() -> None:
    """A scorer that scores pruned weights highest still cannot bring them back."""

    class Reviver(Scorer):
        name = "reviver"

        def score(self, model, batches, *, hparams, context=None):
            out = {}
            for n, m in get_mask(model).items():
                out[n] = (~m).double() * 10 + torch.rand(m.shape, dtype=torch.float64)
            return out

    model = linear2(8, 6, 4)
    torch.manual_seed(0)
    mask, _ = find_mask(Reviver(), model, [], hp("reviver", density=0.1, rounds=4))
    assert mask.num_kept == exact_count(0.1, 8 * 6 + 6 * 4)
    assert get_mask(model).num_kept == 8 * 6 + 6 * 4  # the caller's model has no mask


def test_layer_collapse_synflow_keeps_every_layer_on_lenet() -> None:
    """Tanaka et al.'s claim: iterative SynFlow (100 rounds) never disconnects the net; single shot does."""
    models = pytest.importorskip("ticketsearch.models")
    torch.manual_seed(0)
    net = models.create_model("lenet_300_100", (1, 28, 28), 10)
    total = sum(math.prod(s) for s in prunable_shapes(net).values())
    d = 1e-4  # keeps 27 of 266,200 weights
    assert exact_count(d, total) >= len(prunable_shapes(net))
    batches = _mnist_or_noise_batches()
    mask, _ = find_mask(SCORERS.get("synflow")(), net, batches, hp("synflow", density=d))
    assert all(c > 0 for c in mask.layer_counts().values()), mask.layer_counts()
    dens = [0.1, 0.05, 0.02, 0.01, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4]
    collapse = {}
    for name in ("snip", "magnitude", "grasp", "random"):
        collapse[name] = first_collapse_density(SCORERS.get(name)(), net, batches, hp(name), dens)
        print(
            f"single-shot {name} (global) first empties a layer of lenet_300_100 at density {collapse[name]}"
        )
    assert collapse["magnitude"] is not None and collapse["magnitude"] >= d


def _mnist_or_noise_batches():
    root = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    try:
        from ticketsearch.data import load_dataset

        data = load_dataset("mnist", root=root, seed=0)
        return [(data.x_train[:100], data.y_train[:100])]
    except Exception:
        g = torch.Generator().manual_seed(0)
        return [(torch.randn(100, 1, 28, 28, generator=g), torch.arange(100) % 10)]


def test_first_collapse_density_on_a_constructed_case() -> None:
    """Layer 0 has tiny weights: magnitude (global) empties it once the budget fits in layer 1 (12 weights)."""
    model = linear2(4, 3, 4, dtype=torch.float32)
    with torch.no_grad():
        model[0].weight.fill_(0.01)
        model[1].weight.fill_(1.0)
    # 24 weights in all: density 0.5 keeps 12 = all of layer 1 and nothing of layer 0
    dens = [0.9, 0.75, 0.6, 0.5, 0.25]
    assert first_collapse_density(SCORERS.get("magnitude")(), model, [], hp("magnitude"), dens) == 0.5
    assert first_collapse_density(SCORERS.get("magnitude")(), model, [], hp("magnitude"), [0.9, 0.6]) is None


# -- one selection rule for all --------------------------------------------------------------------------
def test_same_scores_give_the_same_mask_whoever_produced_them() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(MaskedConv2d(1, 3, 3), nn.Flatten(), MaskedLinear(3 * 4 * 4, 5))
    fixed = {n: p.detach().abs().clone() for n, p in prunable_parameters(model).items()}

    class Fixed(Scorer):
        name = "fixed"

        def score(self, model, batches, *, hparams, context=None):
            return {k: v.clone() for k, v in fixed.items()}

    for kw in ({"scope": "global"}, {"scope": "layerwise"}, {"scope": "layerwise", "distribution": "erk"}):
        a, _ = find_mask(Fixed(), model, [], hp("fixed", density=0.2, **kw))
        b, _ = find_mask(SCORERS.get("magnitude")(), model, [], hp("magnitude", density=0.2, **kw))
        assert a.equals(b)
        assert a.equals(select(fixed, 0.2, **kw))


# -- models untouched, masks respected, cost --------------------------------------------------------------
@pytest.mark.parametrize("name", ["snip", "grasp", "synflow", "random", "magnitude"])
def test_find_mask_leaves_a_batchnorm_model_bitwise_untouched(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        MaskedConv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), MaskedLinear(3 * 4 * 4, 3)
    )
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(6, 1, 6, 6), torch.arange(6) % 3)]
    find_mask(SCORERS.get(name)(), model, batches, hp(name, density=0.3, rounds=2))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training and all(p.grad is None for p in model.parameters())


def test_existing_mask_is_the_starting_point() -> None:
    model = linear2(6, 5, 3, dtype=torch.float32)
    old = Mask({n: torch.rand(s) < 0.5 for n, s in prunable_shapes(model).items()})
    apply_mask(model, old)
    mask, _ = find_mask(SCORERS.get("magnitude")(), model, [], hp("magnitude", density=0.2, rounds=3))
    assert mask.is_subset_of(old) and mask.num_kept == exact_count(0.2, 6 * 5 + 5 * 3)
    with pytest.raises(ConfigError, match="already pruned"):
        find_mask(SCORERS.get("magnitude")(), model, [], hp("magnitude", density=0.9))


def test_cost_record_counts_passes() -> None:
    model = linear2(4, 3, 2, dtype=torch.float32)
    batches = batches_for(4, 2, sizes=(5, 3, 2), dtype=torch.float32)
    _, cost = find_mask(SCORERS.get("snip")(), model, batches, hp("snip", density=0.5, rounds=2))
    assert cost["forward_passes"] == 6 and cost["examples_forward"] == 20 and cost["backward_passes"] == 6
    _, cost = find_mask(SCORERS.get("grasp")(), model, batches, hp("grasp", density=0.5))
    assert cost["forward_passes"] == 6 and cost["hessian_vector_products"] == 3
    _, cost = find_mask(SCORERS.get("magnitude")(), model, batches, hp("magnitude", density=0.5))
    assert cost["forward_passes"] == 0 and cost["wall_time"] >= 0


def test_random_scorer_is_seeded_by_the_context_and_spares_pruned_weights() -> None:
    model = linear2(6, 5, 3, dtype=torch.float32)
    sc = SCORERS.get("random")()
    a = sc.score(model, [], hparams=hp("random"), context=ScoringContext(seed=1))
    torch.manual_seed(123)
    b = sc.score(model, [], hparams=hp("random"), context=ScoringContext(seed=1))
    c = sc.score(model, [], hparams=hp("random"), context=ScoringContext(seed=2))
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)
    apply_mask(model, Mask({n: torch.rand(s) < 0.5 for n, s in prunable_shapes(model).items()}))
    s = sc.score(model, [], hparams=hp("random"), context=ScoringContext(seed=1))
    for n, m in get_mask(model).items():
        assert bool((s[n][~m] == 0).all()) and bool((s[n][m] > 0).all())


# -- bad input --------------------------------------------------------------------------------------------
def test_unknown_method_suggests_closest() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'snip'"):
        SCORERS.get("snp")


def test_registering_a_taken_name_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):

        @register_scorer("snip")
        class Other(Scorer):  # noqa: F811
            def score(self, model, batches, *, hparams, context=None):
                return {}


def _bad_scorer(fn):
    class Bad(Scorer):
        name = "bad"

        def score(self, model, batches, *, hparams, context=None):
            return fn({n: p.detach().abs().clone() for n, p in prunable_parameters(model).items()})

    return Bad()


@pytest.mark.parametrize(
    "fn, match",
    [
        (lambda s: {k: v for k, v in s.items() if k != "1.weight"}, "no score for parameter.*1.weight"),
        (lambda s: {**s, "2.weight": torch.ones(2)}, "unknown parameter.*2.weight"),
        (lambda s: {**s, "0.weight": s["0.weight"].flatten()}, "'0.weight' has shape"),
        (lambda s: {**s, "1.weight": s["1.weight"] * float("nan")}, "NaN scores for parameter '1.weight'"),
        (
            lambda s: {**s, "0.weight": s["0.weight"] + float("inf")},
            "infinite scores for parameter '0.weight'",
        ),
    ],
)
def test_bad_scorer_output_names_the_parameter(fn, match) -> None:
    model = linear2(dtype=torch.float32)
    with pytest.raises(MaskMismatchError, match=match) as info:
        find_mask(_bad_scorer(fn), model, [], hp("bad", density=0.5))
    assert "scorer 'bad'" in str(info.value) and "\n" not in str(info.value)


def test_min_layer_density_guard_raises_when_density_cannot_cover_it() -> None:
    model = linear2(8, 8, 2, dtype=torch.float32)
    # 80 weights; min_layer_density 0.5 needs ≥ 32 + 8 = 40 but density 0.1 allows only 8
    with pytest.raises(ConfigError, match="min-layer-density"):
        find_mask(SCORERS.get("magnitude")(), model, [], hp("magnitude", density=0.1, min_layer_density=0.5))
    mask, _ = find_mask(
        SCORERS.get("magnitude")(), model, [], hp("magnitude", density=0.6, min_layer_density=0.5)
    )
    assert all(d >= 0.5 for d in mask.layer_density().values())


def test_bad_knobs_and_missing_data_are_config_errors() -> None:
    model = linear2(dtype=torch.float32)
    batches = batches_for(4, 2, dtype=torch.float32)
    with pytest.raises(ConfigError, match="no batches"):
        score("snip", model, [])
    with pytest.raises(ConfigError, match="temperature"):
        score("grasp", model, batches, args={"temperature": -1})
    with pytest.raises(ConfigError, match="temperature"):
        score("grasp", model, batches, args={"temperature": "hot"})
    with pytest.raises(ConfigError, match="rounds"):
        find_mask(SCORERS.get("magnitude")(), model, [], hp("magnitude", rounds=-2))
    with pytest.raises(ConfigError, match="density"):
        find_mask(SCORERS.get("magnitude")(), model, [], hp("magnitude", density=0.0))


def test_plugin_entry_that_is_not_a_scorer_is_listed_as_broken() -> None:
    from ticketsearch.scorers.base import ScorerRegistry

    reg = ScorerRegistry("method")
    reg.add("notascorer", 42, source="some-plugin")
    assert reg.names() == [] and "not a scorer class" in reg.broken()[0].error
    with pytest.raises(TypeError):
        reg.add("builtin", 42)
