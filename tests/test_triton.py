"""The Triton masked linear against F.linear(x, W ⊙ M) over odd shapes, densities, empty rows and columns.

Runs on CUDA, or on CPU in Triton's interpreter (``TRITON_INTERPRET=1``, set by ``make test``); skipped
with the kernel's reason elsewhere. Shapes stay small: the interpreter runs each tile in numpy.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ticketsearch.sparse.kernels import MASKED, find_kernel

KERNEL = find_kernel(MASKED, "triton")
REASON = KERNEL.unavailable_reason(build=False) if KERNEL is not None else "not registered"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    REASON is not None or not KERNEL.supports(DEVICE, torch.float32), reason=f"triton kernel: {REASON}"
)


def _check(M: int, K: int, N: int, mask: torch.Tensor, bias: bool, seed: int = 0) -> None:
    from ticketsearch.sparse.kernels.triton_masked import masked_linear

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(DEVICE).requires_grad_()
    w = torch.randn(N, K, generator=g).to(DEVICE).requires_grad_()
    b = torch.randn(N, generator=g).to(DEVICE).requires_grad_() if bias else None
    mask = mask.to(DEVICE)
    y = masked_linear(x, w, mask, b)
    up = torch.randn(M, N, generator=g).to(DEVICE)
    y.backward(up)
    got = (y.detach(), x.grad.clone(), w.grad.clone(), None if b is None else b.grad.clone())
    x.grad = w.grad = None
    if b is not None:
        b.grad = None
    ref = F.linear(x, w * mask, b)  # the oracle: the reference kernel's W ⊙ M through autograd
    ref.backward(up)
    torch.testing.assert_close(got[0], ref.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got[1], x.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got[2], w.grad, rtol=1e-5, atol=1e-4)
    assert torch.count_nonzero(got[2][~mask]) == 0  # pruned weights: exactly zero gradient
    if b is not None:
        torch.testing.assert_close(got[3], b.grad)


@pytest.mark.parametrize("M,K,N", [(1, 7, 1), (7, 300, 7), (1, 784, 300), (7, 1023, 33)])
@pytest.mark.parametrize("bias", [True, False])
def test_odd_shapes(M, K, N, bias):
    _check(M, K, N, torch.rand(N, K, generator=torch.Generator().manual_seed(1)) < 0.3, bias)


@pytest.mark.parametrize("density", [0.001, 0.05, 0.5, 1.0])
def test_densities(density):
    from ticketsearch.core.select import select

    mask = select({"w": torch.rand(33, 300, generator=torch.Generator().manual_seed(2))}, density)["w"]
    _check(7, 300, 33, mask, True)


def test_all_zero_rows_and_columns():
    mask = torch.rand(40, 70, generator=torch.Generator().manual_seed(3)) < 0.5
    mask[[0, 5, 39]] = False  # output units with no input
    mask[:, [0, 33, 69]] = False  # inputs no unit reads
    _check(9, 70, 40, mask, True)
    _check(9, 70, 40, torch.zeros(40, 70, dtype=torch.bool), False)  # nothing kept


def test_a_masked_layer_routes_through_it():
    from ticketsearch.core.select import select
    from ticketsearch.sparse import MaskedLinear, apply_mask

    torch.manual_seed(0)
    layer = torch.nn.Sequential(MaskedLinear(50, 20)).to(DEVICE)
    mask = select({"0.weight": torch.rand(20, 50)}, 0.2)
    apply_mask(layer, mask, backend="triton")
    x = torch.randn(3, 4, 50, device=DEVICE)  # leading dimensions are kept
    ref = F.linear(x, layer[0].weight * layer[0].weight_mask, layer[0].bias)
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)
