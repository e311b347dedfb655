"""The fused Triton edge-popup kernel against the reference: the cut, the fused linear's output, its input
and score gradients, over odd shapes, densities, ties, bias on and off.

The oracle is the reference kernel: ``F.linear(x, W ⊙ GetSubnet(|s|, k))`` through autograd (a full stable
sort). Runs on CUDA or in Triton's interpreter (``TRITON_INTERPRET=1``); small shapes for the interpreter.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from nets import MLP, BNConv

from ticketsearch.core.mask import exact_count
from ticketsearch.sparse.kernels import TOPK, find_kernel
from ticketsearch.sparse.kernels import triton_supermask as ts
from ticketsearch.sparse.kernels.reference import straight_through_topk
from ticketsearch.sparse.supermask import current_mask, to_supermask

KERNEL = find_kernel(TOPK, "triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REASON = KERNEL.unavailable_reason(build=False)
needs_triton = pytest.mark.skipif(
    REASON is not None or not KERNEL.supports(DEVICE, torch.float32), reason=f"triton kernel: {REASON}"
)


@pytest.mark.parametrize("n,k", [(1, 1), (7, 1), (7, 7), (300, 4), (1023, 512), (1023, 1000)])
@pytest.mark.parametrize("ties", [False, True])
def test_kth_largest_both_methods_equal_a_sort(n, k, ties):
    g = torch.Generator().manual_seed(n + k)
    a = torch.rand(n, generator=g)
    if ties:
        a = torch.round(a * 4) / 4
    want = torch.sort(a, descending=True).values[k - 1]
    for method in ("kthvalue", "topk"):
        assert ts.kth_largest(a, k, method=method) == want, method


def _fused_vs_reference(M, K, N, density, bias, *, ties=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(DEVICE)
    w = torch.randn(N, K, generator=g).to(DEVICE)
    s = torch.randn(N, K, generator=g)
    if ties:
        s = torch.round(s * 2) / 2  # a handful of values: the cut falls inside a run of ties
    s = s.to(DEVICE)
    b = torch.randn(N, generator=g).to(DEVICE) if bias else None
    up = torch.randn(M, N, generator=g).to(DEVICE)
    k = exact_count(density, N * K)
    sel = ts.TritonTopK([(N, K)], [0], [k], device=DEVICE)
    xs, ss = x.clone().requires_grad_(), s.clone().requires_grad_()
    bs = b.clone().requires_grad_() if bias else None
    y = sel.linear(0, xs, w, [ss], bs)
    y.backward(up)
    xr, sr = x.clone().requires_grad_(), s.clone().requires_grad_()
    br = b.clone().requires_grad_() if bias else None
    yr = F.linear(xr, w * straight_through_topk(sr.abs(), k), br)  # the reference edge-popup layer
    yr.backward(up)
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ss.grad, sr.grad, rtol=1e-5, atol=1e-4)
    if bias:
        torch.testing.assert_close(bs.grad, br.grad)
    # the selection itself: bitwise the reference's, exactly k kept
    mask = sel.select([s])[0]
    ref = straight_through_topk(s.abs(), k)
    assert torch.equal(mask, ref) and int(mask.sum()) == k


@needs_triton
@pytest.mark.parametrize("M,K,N", [(1, 7, 1), (7, 300, 7), (1, 784, 300), (7, 1023, 33)])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_linear_odd_shapes(M, K, N, bias):
    _fused_vs_reference(M, K, N, 0.3, bias)


@needs_triton
@pytest.mark.parametrize("density", [0.001, 0.05, 0.5, 1.0])
@pytest.mark.parametrize("ties", [False, True])
def test_fused_linear_densities_and_ties(density, ties):
    _fused_vs_reference(7, 300, 33, density, True, ties=ties)


@needs_triton
def test_nothing_kept_and_all_zero_scores():
    sel = ts.TritonTopK([(5, 9), (3, 5)], [0, 1], [0, 4], device=DEVICE)
    s = [torch.randn(5, 9, device=DEVICE), torch.zeros(3, 5, device=DEVICE)]  # all tied at 0
    m = sel.select(s)
    assert int(m[0].sum()) == 0
    assert m[1].flatten().nonzero().flatten().tolist() == [0, 1, 2, 3]  # ties to the lowest indices


@needs_triton
def test_global_cut_spans_layers_like_the_reference():
    shapes = [(4, 5), (6, 3), (2, 2)]
    scores = [torch.full(s, 0.5, device=DEVICE) for s in shapes]  # every value tied, across layers
    scores[1][0, 0] = 2.0
    sel = ts.TritonTopK(shapes, [0, 0, 0], [25], device=DEVICE)
    m = sel.select(scores)
    assert [int(t.sum()) for t in m] == [20, 5, 0]  # the first 24 ties in flat order, plus the 2.0
    assert bool(m[1].flatten()[0]) and int(m[1].flatten()[:4].sum()) == 4
    cut_calls = sel.stats["cuts"]
    sel.select(scores)
    assert sel.stats["cuts"] == cut_calls  # unchanged scores: the cut is reused, not recomputed


@needs_triton
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_model_never_forms_w_times_m_for_linear_layers(arch, monkeypatch):
    torch.manual_seed(0)
    model = (MLP((64, 48, 32, 10)) if arch == "mlp" else BNConv()).to(DEVICE)
    to_supermask(model, density=0.25, kernel="triton", generator=torch.Generator().manual_seed(3))
    formed = []
    real = ts._weff
    monkeypatch.setattr(ts, "_weff", lambda w, *a: formed.append(tuple(w.shape)) or real(w, *a))
    x = torch.randn(8, 1, 8, 8, device=DEVICE)
    F.cross_entropy(model(x), torch.randint(0, 10, (8,), device=DEVICE)).backward()
    convs = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert formed == convs  # W ⊙ M only for convolutions (cuDNN needs it), never for a Linear
    assert all(m.scores.grad is not None for m in model.modules() if hasattr(m, "scores"))
    assert current_mask(model).num_kept == sum(
        exact_count(0.25, m.weight.numel()) for m in model.modules() if hasattr(m, "scores")
    )
