"""Every registered kernel against its op's reference kernel, on every device it supports here.

Parametrised over the registry (``ticketsearch.sparse.kernels.KERNELS``): a new kernel module is tested here
without editing this file. A kernel that cannot run on this machine is skipped with its probe's reason. The
compiled CPU kernel is built at collection if a C++ compiler is available (about a minute, once per machine
and source version, cached).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from nets import MLP, BNConv, masked_net, one_thread, random_mask  # noqa: F401  (autouse fixture)

from ticketsearch.core.errors import ConfigError, DivergenceError
from ticketsearch.core.mask import exact_count
from ticketsearch.core.select import select
from ticketsearch.sparse import (
    BACKENDS,
    MaskedLinear,
    apply_mask,
    mask_gradients,
    prunable_parameters,
    register_backend,
    set_backend,
)
from ticketsearch.sparse.kernels import (
    FAST,
    KERNELS,
    MASKED,
    TOPK,
    ExactTopK,
    Kernel,
    ReferenceTopK,
    find_kernel,
    kernels,
    resolve_topk,
)
from ticketsearch.sparse.kernels.compiled import SOURCE
from ticketsearch.sparse.supermask import (
    SUPERMASK_KERNELS,
    check_scores_finite,
    current_mask,
    keep_scores,
    to_supermask,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _cases(op: str) -> list:
    """(kernel name, device, dtype) for each registered kernel of ``op`` and each device it supports here."""
    out = []
    for k in kernels(op):
        reason = k.unavailable_reason(build=True)
        for dev in DEVICES:
            dtype = torch.float32 if k.dtypes is None or torch.float32 in k.dtypes else k.dtypes[0]
            if not k.supports(dev, dtype):
                continue
            marks = [pytest.mark.skip(reason=f"kernel {k.key} unavailable here: {reason}")] if reason else []
            out.append(pytest.param(k.name, dev, dtype, id=f"{k.name}-{dev}", marks=marks))
    return out


TOPK_CASES = _cases(TOPK)
MASKED_CASES = _cases(MASKED)


# -- the registry -----------------------------------------------------------------------------------------
def test_one_registry_one_vocabulary():
    assert [k.name for k in kernels(MASKED)][:2] == ["inplace", "reference"]
    assert list(BACKENDS)[:2] == ["inplace", "reference"]
    assert SUPERMASK_KERNELS[:4] == ("fast", "compiled", "torch", "reference")
    for k in kernels(MASKED) + kernels(TOPK):
        assert KERNELS.get(k.key) is k and k.description
    assert find_kernel(TOPK, "reference").selector is ReferenceTopK
    assert SOURCE.is_file() and SOURCE.suffix == ".cpp"  # the compiled kernel's source ships as a file
    with pytest.raises(ValueError, match="already registered"):
        KERNELS.register_kernel(find_kernel(TOPK, "torch"))
    with pytest.raises(ValueError, match="bad kernel name"):
        Kernel(name=FAST, op=TOPK, description="x", selector=ExactTopK)


def test_fast_picks_the_best_ready_kernel_and_never_builds():
    assert resolve_topk(FAST, "cpu", torch.float64).name == "torch"  # compiled is float32-only
    compiled = find_kernel(TOPK, "compiled")
    want = "compiled" if compiled.available(build=False) else "torch"
    assert resolve_topk(FAST, "cpu", torch.float32).name == want
    calls = []

    def probe(build: bool) -> str | None:
        calls.append(build)
        return None if build else "not built"

    slow = Kernel(
        name="slow",
        op=TOPK,
        description="needs a build",
        priority=99,
        auto=True,
        probe=probe,
        selector=ExactTopK,
    )
    ready = Kernel(name="ready", op=TOPK, description="ready", priority=98, auto=True, selector=ExactTopK)
    KERNELS.register_kernel(slow)
    KERNELS.register_kernel(ready)
    try:
        assert resolve_topk(FAST, "cpu", torch.float32).name == "ready"  # `slow` is skipped: not built
        assert calls == [False]
        assert resolve_topk("slow", "cpu", torch.float32).name == "slow"  # asked for by name: it builds
        assert calls[-1] is True
    finally:
        KERNELS.unregister(slow.key)
        KERNELS.unregister(ready.key)
    assert find_kernel(TOPK, "slow") is None


def test_unknown_and_unusable_kernels_say_why():
    with pytest.raises(ConfigError, match=r"unknown supermask kernel 'trition'.*fast, compiled, torch"):
        to_supermask(MLP(), density=0.5, kernel="trition")
    with pytest.raises(ConfigError, match="needs float32 CPU tensors, got float64 on cpu"):
        resolve_topk("compiled", "cpu", torch.float64)
    broken = Kernel(
        name="broken", op=MASKED, description="never runs", probe=lambda build: "no such accelerator"
    )
    KERNELS.register_kernel(broken)
    try:
        with pytest.raises(ConfigError, match=r"'broken' is unavailable here \(no such accelerator\)"):
            set_backend(masked_net(), "broken")
    finally:
        KERNELS.unregister(broken.key)
    with pytest.raises(ConfigError, match="unknown sparse backend 'nope'.*inplace, reference"):
        set_backend(masked_net(), "nope")


def test_register_backend_adds_a_masked_kernel():
    calls = []

    def doubled(layer, x):
        """Twice the reference output."""
        calls.append(type(layer).__name__)
        return 2 * find_kernel(MASKED, "reference").forward(layer, x)

    register_backend("doubled", doubled)
    try:
        assert BACKENDS["doubled"] is doubled and find_kernel(MASKED, "doubled").description.startswith(
            "Twice"
        )
        lin = MaskedLinear(4, 3)
        apply_mask(lin, {"weight": torch.rand(3, 4) > 0.5}, backend="reference")
        x = torch.randn(2, 4)
        ref = lin(x)
        set_backend(lin, "doubled")
        torch.testing.assert_close(lin(x), 2 * ref)
        assert calls == ["MaskedLinear"]
    finally:
        KERNELS.unregister("masked/doubled")
    assert "doubled" not in BACKENDS


# -- topk kernels against the reference, at the selector ----------------------------------------------------
def _drifting_scores(shapes, steps, *, device, dtype, seed=0, ties=False):
    """Score sequences as training makes them: small drift, occasional jumps (they force band misses)."""
    g = torch.Generator().manual_seed(seed)
    scores = [torch.randn(s, generator=g) * 0.05 for s in shapes]
    for step in range(steps):
        scale = 0.05 if step % 7 == 3 else 1e-3
        scores = [s + torch.randn(s.shape, generator=g) * scale * 0.05 for s in scores]
        if ties:  # coarse values: many ties, which must go to the lower flat index
            scores = [torch.round(s * 200) / 200 for s in scores]
        yield [s.to(device=device, dtype=dtype) for s in scores]


@pytest.mark.parametrize(("kernel", "device", "dtype"), TOPK_CASES)
@pytest.mark.parametrize("scope", ["layerwise", "global"])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_topk_kernel_selects_exactly_the_reference(kernel, device, dtype, scope, ties):
    shapes = [(50, 80), (30, 50), (7, 30)]
    sizes = [math.prod(s) for s in shapes]
    if scope == "layerwise":
        groups, ks = [0, 1, 2], [exact_count(0.2, n) for n in sizes]
    else:
        groups, ks = [0, 0, 0], [exact_count(0.2, sum(sizes))]
    k = find_kernel(TOPK, kernel)
    sel = k.selector(shapes, groups, ks, device=torch.device(device), dtype=dtype)
    ref = ReferenceTopK(shapes, groups, ks, device=device, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    # nonzero weights of both signs: W ⊙ M != 0 exactly where M keeps
    weights = [
        ((torch.rand(s, generator=g) + 0.5) * torch.sign(torch.randn(s, generator=g))).to(device, dtype)
        for s in shapes
    ]
    for step, scores in enumerate(_drifting_scores(shapes, 25, device=device, dtype=dtype, ties=ties)):
        out, want = sel.forward(scores, weights), ref.forward(scores, weights)
        kept = [o != 0 for o in out]
        for t, (o, w) in enumerate(zip(out, want)):
            assert torch.equal(o != 0, w != 0), (step, t)  # the same indices, ties to the lower index
            assert torch.equal(o, w), (step, t)  # and exactly W where kept
        for grp, kk in enumerate(ks):
            assert sum(int(m.sum()) for m, gg in zip(kept, groups) if gg == grp) == kk, step


@pytest.mark.parametrize(("kernel", "device", "dtype"), TOPK_CASES)
def test_topk_kernel_trivial_groups_and_all_ties(kernel, device, dtype):
    shapes = [(3, 4), (5,), (2, 2), (6, 7)]
    groups, ks = [0, 1, 2, 3], [0, 5, 1, 20]
    sel = find_kernel(TOPK, kernel).selector(shapes, groups, ks, device=torch.device(device), dtype=dtype)
    ref = ReferenceTopK(shapes, groups, ks)
    ones = [torch.ones(s, device=device, dtype=dtype) for s in shapes]
    for scores in (
        [torch.full(s, 0.25, device=device, dtype=dtype) for s in shapes],  # every value tied
        [torch.linspace(-1, 1, math.prod(s), device=device, dtype=dtype).view(s) for s in shapes],
        [torch.zeros(s, device=device, dtype=dtype) for s in shapes],
    ):
        for o, w in zip(sel.forward(scores, ones), ref.forward(scores, ones)):
            assert torch.equal(o, w)
    flat = sel.forward([torch.full(s, 0.25, device=device, dtype=dtype) for s in shapes], ones)[3].flatten()
    assert torch.equal(flat.nonzero().flatten().cpu(), torch.arange(20))  # all tied: the first 20 win


@pytest.mark.parametrize(("kernel", "device", "dtype"), TOPK_CASES)
def test_topk_kernel_straight_through_gradient_equals_reference(kernel, device, dtype):
    shapes = [(9, 11), (4, 9)]
    g = torch.Generator().manual_seed(2)
    scores = [torch.randn(s, generator=g).to(device, dtype) for s in shapes]
    scores[0][0, :3] = 0.0  # sign(0) = 0: no gradient
    weights = [torch.randn(s, generator=g).to(device, dtype) for s in shapes]
    grads = [torch.randn(s, generator=g).to(device, dtype) for s in shapes]
    sel = find_kernel(TOPK, kernel).selector(
        shapes, [0, 1], [40, 10], device=torch.device(device), dtype=dtype
    )
    sel.forward(scores, weights)
    got = sel.backward(grads, weights, scores)
    want = ReferenceTopK(shapes, [0, 1], [40, 10]).backward(grads, weights, scores)
    for a, b, s, w, gr in zip(got, want, scores, weights, grads):
        assert torch.equal(a, b)
        assert torch.equal(b, gr * w * torch.sign(s))  # sign(s) ⊙ ∂L/∂W_eff ⊙ W, pruned or not


# -- topk kernels inside a supermask model --------------------------------------------------------------------
@pytest.mark.parametrize(("kernel", "device", "dtype"), TOPK_CASES)
def test_score_gradient_is_hand_derived_straight_through(kernel, device, dtype):
    torch.manual_seed(0)
    layer = MaskedLinear(6, 3).to(device, dtype)
    model = nn.Sequential(layer)
    w = layer.weight.detach().clone()
    b = layer.bias.detach().clone()
    ctrl = to_supermask(model, density=0.5, kernel=kernel, generator=torch.Generator().manual_seed(1))
    assert ctrl.backend == kernel
    s = layer.scores.detach().clone()
    x = torch.randn(4, 6).to(device, dtype)
    c = torch.randn(4, 3).to(device, dtype)
    (model(x) * c).sum().backward()
    # forward: y = x (W ⊙ M)ᵀ + b with M the top 9 of |s|; by hand dL/dW_eff = cᵀ x
    m = torch.zeros(18, device=device, dtype=dtype)
    m[torch.sort(s.abs().flatten(), descending=True, stable=True).indices[:9]] = 1
    m = m.view(3, 6)
    assert torch.allclose(model(x), x @ (w * m).T + b, atol=1e-6)
    expected = torch.sign(s) * (c.T @ x) * w  # straight through |s|: sign(s) ⊙ ∂L/∂W_eff ⊙ W
    assert torch.allclose(layer.scores.grad, expected, atol=1e-6)
    assert layer.weight.grad is None and not layer.weight.requires_grad
    assert ctrl.ks == [9]


@pytest.mark.parametrize(("kernel", "device", "dtype"), TOPK_CASES)
def test_pruned_weights_scores_still_get_gradient(kernel, device, dtype):
    torch.manual_seed(0)
    layer = MaskedLinear(12, 6).to(device, dtype)
    model = nn.Sequential(layer)  # one layer: no downstream mask can zero a path
    to_supermask(model, density=0.3, kernel=kernel)
    x, y = torch.randn(16, 12).to(device, dtype), torch.randint(0, 6, (16,)).to(device)
    F.cross_entropy(model(x), y).backward()
    pruned = ~current_mask(model)["0.weight"]
    assert pruned.sum() > 0.6 * pruned.numel()
    assert bool((layer.scores.grad[pruned] != 0).all())  # the straight-through gradient ignores the mask


@pytest.mark.parametrize(("kernel", "device", "dtype"), TOPK_CASES)
@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_exactly_k_kept_and_ties_to_lower_index(kernel, device, dtype, scope):
    torch.manual_seed(0)
    model = MLP((30, 40, 20, 7)).to(device, dtype)
    # coarse scores: many ties, which must go to the lower flat index exactly as core.select breaks them
    scores = [torch.randint(-4, 5, lay.weight.shape).to(device, dtype) / 4 for lay in model.layers]
    to_supermask(model, density=0.37, kernel=kernel, scope=scope, scores=scores)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    shapes = {n: tuple(p.shape) for n, p in prunable_parameters(model).items()}
    for step in range(8):
        x = torch.randn(8, 30).to(device, dtype)
        out = model(x)
        want = select(keep_scores(model), 0.37, scope=scope)
        mask = current_mask(model)
        assert mask.equals(want), step
        if scope == "layerwise":
            for n, t in mask.items():
                assert int(t.sum()) == exact_count(0.37, math.prod(shapes[n]))
        else:
            assert mask.num_kept == exact_count(0.37, mask.num_total)
        # the forward really uses that mask
        h = x
        for i, layer in enumerate(model.layers):
            keep = want[f"layers.{i}.weight"].to(device=device, dtype=dtype)
            h = F.linear(h, layer.weight * keep, layer.bias)
            h = F.relu(h) if i < 2 else h
        assert torch.allclose(out, h, atol=1e-5)
        opt.zero_grad()
        F.cross_entropy(out, torch.randint(0, 7, (8,)).to(device)).backward()
        opt.step()
        with torch.no_grad():  # keep the scores coarse so ties keep happening
            for layer in model.layers:
                layer.scores.copy_(torch.round(layer.scores * 4) / 4)


@pytest.mark.parametrize(("kernel", "device", "dtype"), TOPK_CASES)
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_kernel_trains_like_the_reference(kernel, device, dtype, arch):
    torch.manual_seed(0)
    base = (MLP((64, 48, 32, 10)) if arch == "mlp" else BNConv()).to(device, dtype)
    models = {}
    for k in ("reference", kernel):
        m = copy.deepcopy(base)
        to_supermask(m, density=0.25, kernel=k, generator=torch.Generator().manual_seed(3))
        models[k] = (m, torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1, momentum=0.9))
    for _ in range(15):
        x, y = torch.randn(32, 1, 8, 8).to(device, dtype), torch.randint(0, 10, (32,)).to(device)
        outs = {}
        for k, (m, opt) in models.items():
            out = m(x)
            opt.zero_grad()
            F.cross_entropy(out, y).backward()
            outs[k] = (out.detach(), [p.grad.clone() for p in m.parameters() if p.requires_grad])
            opt.step()
        assert torch.allclose(outs[kernel][0], outs["reference"][0], atol=1e-5)
        for a, b in zip(outs[kernel][1], outs["reference"][1]):
            assert torch.allclose(a, b, atol=1e-5)
        assert current_mask(models[kernel][0]).equals(current_mask(models["reference"][0]))


@pytest.mark.parametrize(("kernel", "device", "dtype"), TOPK_CASES)
def test_nan_scores_stop_with_divergence_error(kernel, device, dtype):
    model = MLP().to(device, dtype)
    to_supermask(model, density=0.5, kernel=kernel)
    with torch.no_grad():
        model.layers[1].scores[0, 0] = float("nan")
    with pytest.raises(DivergenceError, match="layers.1.weight"):
        check_scores_finite(model)


def test_torch_kernel_warm_start_refits_when_scores_jump():
    shapes = [(50, 80), (30, 50), (7, 30)]
    ks = [exact_count(0.2, math.prod(s)) for s in shapes]
    sel = ExactTopK(shapes, [0, 1, 2], ks)
    ref = ReferenceTopK(shapes, [0, 1, 2], ks)
    for scores in _drifting_scores(shapes, 40, device="cpu", dtype=torch.float32):
        for m, r in zip(sel.select(scores), ref.select(scores)):
            assert torch.equal(m, r)
    assert sel.stats["kthvalue"] >= 3  # cold start of each layer
    assert sel.stats["refits"] >= 1  # the jumps missed the band at least once


# -- masked (fixed-mask) kernels against the reference ---------------------------------------------------------
OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "sgd_nesterov_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam_wd": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
    "adamw_wd": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize(("kernel", "device", "dtype"), MASKED_CASES)
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_masked_kernel_trains_like_the_reference(kernel, device, dtype, opt_name):
    torch.manual_seed(1)
    a = masked_net().to(device, dtype)
    mask = random_mask(a, 0.5, seed=3)
    b = copy.deepcopy(a)
    apply_mask(a, mask, backend=kernel)
    apply_mask(b, mask, backend="reference")
    oa, ob = OPTIMIZERS[opt_name](a.parameters()), OPTIMIZERS[opt_name](b.parameters())
    x, y = torch.randn(8, 1, 6, 6).to(device, dtype), torch.randint(0, 3, (8,)).to(device)
    for step in range(4):
        outs, grads = [], []
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            out = m(x)
            F.cross_entropy(out, y).backward()
            mask_gradients(m)  # a no-op for kernels that enforce the mask in the forward
            outs.append(out.detach())
            grads.append([p.grad.clone() for p in m.parameters()])
            o.step()
        torch.testing.assert_close(outs[0], outs[1], msg=f"forward, step {step}")
        for (n, _), ga, gb in zip(a.named_parameters(), grads[0], grads[1]):
            torch.testing.assert_close(ga, gb, msg=f"grad {n}, step {step}")
        for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(pa, pb, msg=f"{n} after step {step}")
        for n, p in prunable_parameters(a).items():  # pruned weights stay exactly zero
            assert torch.count_nonzero(p.detach()[~mask[n].to(device)]) == 0, (n, step)
    for n, p in prunable_parameters(a).items():
        m = mask[n].to(device)
        assert torch.count_nonzero(p.detach()[m]) == int(m.sum())  # kept weights do train
