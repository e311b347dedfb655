"""The Triton kernels on CUDA against the reference, in float32 and bfloat16, at the benchmark's sizes.

The interpreter tests (``tests/test_triton*.py``, ``tests/test_kernels.py``) also run on CUDA where it is
present; these add what only a GPU shows: autotuned tiles at real layer sizes, bf16 inputs and autocast,
``--backend auto`` picking triton after its self-check, whole models trained beside the reference, and a
population on the GPU equal to separate runs.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ticketsearch.core import select
from ticketsearch.models import create_model
from ticketsearch.sparse import apply_mask, mask_gradients, prunable_parameters, resolve_backend, self_check
from ticketsearch.sparse.kernels.reference import straight_through_topk
from ticketsearch.sparse.kernels.triton_bits import pack_bits
from ticketsearch.sparse.kernels.triton_masked import masked_linear, masked_linear_packed
from ticketsearch.sparse.kernels.triton_supermask import TritonTopK
from ticketsearch.sparse.supermask import current_mask, to_supermask

pytestmark = pytest.mark.gpu  # TF32 off for every test: tests/gpu/conftest.py


def _mask(shape, density, seed=0):
    return select({"w": torch.rand(shape, generator=torch.Generator().manual_seed(seed))}, density)[
        "w"
    ].cuda()


@pytest.mark.parametrize("layout", ["bool", "bits"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M,K,N", [(60, 784, 300), (128, 1023, 100), (1, 300, 7)])
def test_masked_linear_on_cuda(layout, dtype, M, K, N):
    mask = _mask((N, K), 0.2)
    mask[:3] = False
    x = torch.randn(M, K, device="cuda", dtype=dtype, requires_grad=True)
    w = torch.randn(N, K, device="cuda", dtype=dtype, requires_grad=True)
    b = torch.randn(N, device="cuda", dtype=dtype, requires_grad=True)
    up = torch.randn(M, N, device="cuda", dtype=dtype)
    y = masked_linear(x, w, mask, b) if layout == "bool" else masked_linear_packed(x, w, pack_bits(mask), b)
    y.backward(up)
    assert y.dtype == dtype and x.grad.dtype == dtype and w.grad.dtype == dtype
    got = [y.detach().float(), x.grad.float(), w.grad.float()]
    # the oracle in float32 on the same (rounded) inputs: the kernels accumulate in float32
    xr, wr = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    yr = F.linear(xr, wr * mask, b.detach().float())
    yr.backward(up.float())
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-2, atol=5e-2)
    for a, r in zip(got, [yr.detach(), xr.grad, wr.grad]):
        torch.testing.assert_close(a, r, **tol)
    assert torch.count_nonzero(w.grad[~mask]) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_backend_under_autocast(dtype):
    """Under bf16 autocast the Triton linears take their inputs as they come and accumulate in float32
    (they are not autocast ops), so a LeNet of them matches the float32 reference closely."""
    torch.manual_seed(0)
    ref = create_model("lenet_300_100", (1, 28, 28), 10).cuda()
    g = torch.Generator().manual_seed(0)
    mask = select({n: torch.rand(p.shape, generator=g) for n, p in prunable_parameters(ref).items()}, 0.2)
    tri = copy.deepcopy(ref)
    apply_mask(ref, mask, backend="reference")
    apply_mask(tri, mask, backend="triton")
    x, y = torch.randn(60, 1, 28, 28, device="cuda"), torch.randint(0, 10, (60,), device="cuda")
    outs = []
    for m, amp in ((tri, dtype != torch.float32), (ref, False)):
        with torch.autocast("cuda", dtype=dtype, enabled=amp):
            loss = F.cross_entropy(m(x), y)
        loss.backward()
        mask_gradients(m)
        outs.append((loss.detach().float(), [p.grad.float() for p in prunable_parameters(m).values()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-5)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_auto_picks_triton_after_its_self_check():
    assert self_check("triton", "cuda") is None
    assert self_check("triton_bits", "cuda") is None
    assert resolve_backend("auto", "cuda") == "triton"
    assert resolve_backend("auto", "cpu") == "inplace"


@pytest.mark.parametrize("model", ["lenet_300_100", "conv6"])
@pytest.mark.parametrize("backend", ["triton", "triton_bits"])
def test_masked_model_trains_like_the_reference_on_cuda(model, backend):
    shape = (1, 28, 28) if model == "lenet_300_100" else (3, 32, 32)
    torch.manual_seed(0)
    a = create_model(model, shape, 10).cuda()
    g = torch.Generator().manual_seed(0)
    mask = select({n: torch.rand(p.shape, generator=g) for n, p in prunable_parameters(a).items()}, 0.2)
    b = copy.deepcopy(a)
    apply_mask(a, mask, backend=backend)
    apply_mask(b, mask, backend="reference")
    oa = torch.optim.SGD(a.parameters(), lr=0.05, momentum=0.9)
    ob = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(60, *shape, device="cuda"), torch.randint(0, 10, (60,), device="cuda")
    for _ in range(5):
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            mask_gradients(m)
            o.step()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-3, atol=1e-5, msg=n)
    for n, p in prunable_parameters(a).items():
        assert torch.count_nonzero(p.detach()[~mask[n].cuda()]) == 0


@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_supermask_triton_selects_and_trains_like_the_reference_on_cuda(scope):
    models = {}
    for kernel in ("reference", "triton"):
        torch.manual_seed(0)
        m = create_model("conv6", (3, 32, 32), 10).cuda()
        to_supermask(m, density=0.2, kernel=kernel, scope=scope, generator=torch.Generator().manual_seed(1))
        models[kernel] = (m, torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1))
    x, y = torch.randn(60, 3, 32, 32, device="cuda"), torch.randint(0, 10, (60,), device="cuda")
    for step in range(5):
        for m, o in models.values():
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()
        assert current_mask(models["triton"][0]).equals(current_mask(models["reference"][0])), step


def test_cut_on_a_large_layer_with_ties_is_the_reference_selection():
    s = torch.round(torch.randn(512, 4608, device="cuda") * 8) / 8  # VGG-sized, heavily tied
    k = int(0.2 * s.numel())
    sel = TritonTopK([tuple(s.shape)], [0], [k], device="cuda")
    assert torch.equal(sel.select([s])[0], straight_through_topk(s.abs(), k))


def test_population_on_cuda_equals_separate_steps():
    from ticketsearch.core.hparams import TrainingHparams
    from ticketsearch.training.population import PopulationTrainer

    hp = TrainingHparams(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4)
    members = []
    for i in range(4):
        torch.manual_seed(i)
        m = create_model("lenet_300_100", (1, 28, 28), 10).cuda()
        g = torch.Generator().manual_seed(10 + i)
        apply_mask(
            m, select({n: torch.rand(p.shape, generator=g) for n, p in prunable_parameters(m).items()}, 0.2)
        )
        members.append(m)
    trainer = PopulationTrainer(members, hp)
    xs, ys = torch.randn(4, 60, 1, 28, 28, device="cuda"), torch.randint(0, 10, (4, 60), device="cuda")
    from ticketsearch.sparse import mask_pairs
    from ticketsearch.training.optim import make_optimizer

    opts = []
    for m in members:
        o = make_optimizer(m.parameters(), hp)
        o.set_grad_masks({id(p): mk for p, mk in mask_pairs(m)})
        opts.append(o)
    for _ in range(5):
        pop_losses = trainer.step(xs, ys, hp.lr)
        for i, (m, o) in enumerate(zip(members, opts)):
            loss = F.cross_entropy(m(xs[i]), ys[i])
            o.zero_grad()
            loss.backward()
            o.step()
            torch.testing.assert_close(pop_losses[i], loss.detach(), rtol=1e-4, atol=1e-5)
    for i, m in enumerate(members):
        st = trainer.pop.state(i)
        for n, p in m.named_parameters():
            torch.testing.assert_close(st[n], p.detach(), rtol=1e-3, atol=1e-5)
