"""The Triton masked linears (bool and bit-packed mask) against F.linear(x, W ⊙ M) over odd shapes,
densities, empty rows and columns, bias on and off.

Runs on CUDA, or on CPU in Triton's interpreter (``TRITON_INTERPRET=1``, set by ``make test``); skipped
with the kernel's reason elsewhere. Shapes stay small: the interpreter runs each tile in numpy.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ticketsearch.sparse.kernels import MASKED, find_kernel
from ticketsearch.sparse.kernels.triton_bits import pack_bits, unpack_bits

KERNEL = find_kernel(MASKED, "triton")
REASON = KERNEL.unavailable_reason(build=False) if KERNEL is not None else "not registered"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    REASON is not None or not KERNEL.supports(DEVICE, torch.float32), reason=f"triton kernel: {REASON}"
)
LAYOUTS = ["bool", "bits"]


def _linear(layout: str):
    from ticketsearch.sparse.kernels.triton_masked import masked_linear, masked_linear_packed

    if layout == "bool":
        return masked_linear
    return lambda x, w, mask, b: masked_linear_packed(x, w, pack_bits(mask), b)


def _check(M: int, K: int, N: int, mask: torch.Tensor, bias: bool, layout: str, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(DEVICE).requires_grad_()
    w = torch.randn(N, K, generator=g).to(DEVICE).requires_grad_()
    b = torch.randn(N, generator=g).to(DEVICE).requires_grad_() if bias else None
    mask = mask.to(DEVICE)
    y = _linear(layout)(x, w, mask, b)
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


def test_pack_bits_layout_by_hand():
    mask = torch.zeros(2, 40, dtype=torch.bool)
    mask[0, [0, 3, 31]] = True  # word 0 of row 0: bits 0, 3, 31
    mask[1, [32, 39]] = True  # word 1 of row 1: bits 0 and 7
    packed = pack_bits(mask)
    assert packed.dtype == torch.int32 and packed.shape == (2, 2)
    assert packed.tolist() == [[1 + 8 - 2**31, 0], [0, 1 + 128]]  # bit 31 is int32's sign bit
    g = torch.Generator().manual_seed(0)
    for k in (1, 31, 32, 33, 1023):
        m = torch.rand(5, k, generator=g) < 0.5
        assert torch.equal(unpack_bits(pack_bits(m), k), m)


@needs_triton
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("M,K,N", [(1, 7, 1), (7, 300, 7), (1, 784, 300), (7, 1023, 33)])
@pytest.mark.parametrize("bias", [True, False])
def test_odd_shapes(M, K, N, bias, layout):
    _check(M, K, N, torch.rand(N, K, generator=torch.Generator().manual_seed(1)) < 0.3, bias, layout)


@needs_triton
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("density", [0.001, 0.05, 0.5, 1.0])
def test_densities(density, layout):
    from ticketsearch.core.select import select

    mask = select({"w": torch.rand(33, 300, generator=torch.Generator().manual_seed(2))}, density)["w"]
    _check(7, 300, 33, mask, True, layout)


@needs_triton
@pytest.mark.parametrize("layout", LAYOUTS)
def test_all_zero_rows_and_columns(layout):
    mask = torch.rand(40, 70, generator=torch.Generator().manual_seed(3)) < 0.5
    mask[[0, 5, 39]] = False  # output units with no input
    mask[:, [0, 33, 69]] = False  # inputs no unit reads (33: the first bit of a row's second word)
    _check(9, 70, 40, mask, True, layout)
    _check(9, 70, 40, torch.zeros(40, 70, dtype=torch.bool), False, layout)  # nothing kept


@needs_triton
@pytest.mark.parametrize("backend", ["triton", "triton_bits"])
def test_a_masked_layer_routes_through_it(backend):
    from ticketsearch.core.select import select
    from ticketsearch.sparse import MaskedLinear, apply_mask

    torch.manual_seed(0)
    layer = torch.nn.Sequential(MaskedLinear(50, 20)).to(DEVICE)
    mask = select({"0.weight": torch.rand(20, 50)}, 0.2)
    apply_mask(layer, mask, backend=backend)
    x = torch.randn(3, 4, 50, device=DEVICE)  # leading dimensions are kept
    ref = F.linear(x, layer[0].weight * layer[0].weight_mask, layer[0].bias)
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)
    if backend == "triton_bits":  # packed once per mask, rebuilt when the mask changes
        packed = layer[0].derived_mask("bits32", pack_bits)
        assert layer[0].derived_mask("bits32", pack_bits) is packed
        apply_mask(layer, select({"0.weight": torch.rand(20, 50)}, 0.5))
        assert layer[0].derived_mask("bits32", pack_bits) is not packed
        ref = F.linear(x, layer[0].weight * layer[0].weight_mask, layer[0].bias)
        torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)
